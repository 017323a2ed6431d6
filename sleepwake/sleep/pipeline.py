"""The order of a sleep's stages, written once for the Prefect flows and for plain calls.

``full_sleep(stages)`` runs health -> snapshot -> curate -> select -> audit -> maintain -> sws ->
rem -> fold -> validate -> [rollback] -> report, handing each stage's typed result to the stages
that need it. ``stages`` is a namespace of callables with the stage functions' signatures minus
the session: :func:`plain` binds the stage functions to a session (tests, experiments and the
simulated year call them so), and ``flows.full_sleep`` binds the Prefect tasks to the run id, so
the run history records every stage's real inputs and outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any
from types import SimpleNamespace

from sleepwake.faults import crash_point
from sleepwake.sleep import journal
from sleepwake.sleep.audit import audit
from sleepwake.sleep.curate import curate
from sleepwake.sleep.fold import fold
from sleepwake.sleep.health import finish, health_check
from sleepwake.sleep.maintain import maintain
from sleepwake.sleep.reinforce import reinforce
from sleepwake.sleep.rem import rem
from sleepwake.sleep.report import Report, report
from sleepwake.sleep.results import RollbackResult, SnapshotResult, StageResult
from sleepwake.sleep.select import select_facts
from sleepwake.sleep.session import SleepSession
from sleepwake.sleep.sws import sws
from sleepwake.sleep.validate import validate


def take_snapshot(session: SleepSession) -> SnapshotResult:
    started = time.perf_counter()
    return finish(session, journal.begin(session), started)


def rollback(session: SleepSession, pre: SnapshotResult) -> RollbackResult:
    started = time.perf_counter()
    return finish(session, journal.rollback(session, pre), started)


def conclude(session: SleepSession, outcome: str, *results: StageResult | None) -> Report:
    """The report, then the journal entry closes: from here on the sleep is over."""
    result = report(session, outcome, *results)
    crash_point("report:before-close")
    journal.close(session, outcome)
    return result


STAGES: dict[str, Callable[..., Any]] = {
    "health_check": health_check, "snapshot": take_snapshot, "curate": curate, "select": select_facts,
    "audit": audit, "maintain": maintain, "sws": sws, "rem": rem, "fold": fold, "validate": validate,
    "rollback": rollback, "report": conclude, "reinforce": reinforce,
}


def plain(session: SleepSession) -> SimpleNamespace:
    """The stage functions bound to ``session`` (no Prefect)."""
    return SimpleNamespace(**{name: partial(fn, session) for name, fn in STAGES.items()},
                           abandon=partial(journal.abandon, session))


def full_sleep(stages) -> Report:
    health = stages.health_check()
    pre = stages.snapshot()
    try:
        plan = stages.curate()
        picked = stages.select(plan)
        before = stages.audit(picked.fact_ids)
        maintained = stages.maintain(before, plan.missing_ids)
        consolidated = stages.sws()
        dreamed = stages.rem()
        folded = stages.fold()
        verdict = stages.validate(before, health, maintained)
        undone = None if verdict.passed else stages.rollback(pre)
    except BaseException:
        stages.abandon(pre)  # a stage failed for good: the pre-sleep state comes back now
        raise
    outcome = "kept" if verdict.passed else "rolled_back"
    return stages.report(outcome, health, pre, plan, picked, before, maintained, consolidated, dreamed, folded, verdict,
                         undone)


def nap(stages, fact_ids: list[int], reinforcing: bool) -> Report:
    """Health, an audit of recent and degraded facts, optionally a gated reinforcing LoRA pass."""
    health = stages.health_check()
    before = stages.audit(fact_ids)
    if not reinforcing:
        return stages.report("no_change", health, before)
    result = stages.reinforce()
    return stages.report("reinforced" if result.accepted else "no_change", health, before, result)
