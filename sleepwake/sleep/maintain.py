"""Maintain: refresh degraded facts under null-space constraints (paper 5, lines 6-10).

The degraded facts of the audit (at most ``maintain.max_refresh``; facts whose edit is missing
first, then the oldest) are re-solved as ONE MEMIT batch on the current weights with a HARD
constraint that the outputs at every other stored edit's keys stay unchanged, and each one's new
edit replaces its old one in one ledger transaction (``Memory.refresh_many``). A consolidated fact
the LoRA lost (stage 3, no edit) is woken again: it gets a fresh edit at stage 0 and SWS will
consolidate it anew. A consolidated fact that still completes raw but lost its chat answer has no
edit to refresh: it goes back to stage 0 (``maintain.max_reconsolidate`` a night, stage 3 first) and
tonight's SWS trains it again. Facts the audit did not look at tonight are protected like the healthy ones.
First, MEMIT's key statistics grow by one slice until ``memit.covariance_max_tokens``.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from sleepwake.faults import crash_point
from sleepwake.models import probes
from sleepwake.sleep import journal, locality as locality_stage
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import AuditResult, MaintainResult
from sleepwake.sleep.session import SleepSession
from sleepwake.storage import adapters as adapter_rows

log = logging.getLogger(__name__)


def choose_targets(session: SleepSession, degraded_ids: Sequence[int], missing_ids: Sequence[int]) -> list:
    rows = {r.fact_id: r for r in session.ledger.list_facts()}
    ordered = [fid for fid in missing_ids if fid in rows]
    ordered += sorted(fid for fid in degraded_ids if fid in rows and fid not in ordered)
    return [rows[fid] for fid in ordered[: session.settings.maintain.max_refresh]]


def grow_statistics(memory) -> dict:
    """One more slice of key statistics; a cache that cannot be written (a full disk) costs the
    night nothing: the wake keeps solving with the estimate it has."""
    try:
        added, tokens = memory.grow_stats()
    except OSError as exc:
        log.warning("key statistics not grown tonight: %s", exc)
        return {}
    return {"statistics_tokens_added": added, "statistics_tokens": tokens}


def maintain(session: SleepSession, before: AuditResult, missing_ids: Sequence[int] = ()) -> MaintainResult:
    started = time.perf_counter()
    memory, cfg = session.memory, session.settings.maintain
    with journal.stage(session, "maintain"):
        targets = choose_targets(session, before.degraded_ids, missing_ids)
        pending = len(set(before.degraded_ids) | set(missing_ids))
        # The key statistics grow by one slice a night (a cache beside the home, not the home's
        # state, so a rollback leaves it): tonight's refresh and tomorrow's wake solve with it.
        grown = grow_statistics(memory) if cfg.enabled else {}
        again = reconsolidate(session, before.chat_lost_ids) if cfg.enabled else 0
        if not cfg.enabled or not targets:
            return finish(session, MaintainResult(skipped=not cfg.enabled, pending=pending, reconsolidating=again, **grown),
                          started)
        refreshed = {r.fact_id for r in targets}
        new_edits = memory.refresh_many(targets)  # every other edit's outputs held
        crash_point("maintain:after-refresh")
        hits = probes.raw_recall(memory.backend, [r.fact for r in targets], session.settings.probes)
        table = [{"fact_id": r.fact_id, "fact": f"{r.fact.prompt()} -> {r.object}", "stage_before": r.stage,
                  "old_edit": r.edit_id, "new_edit": new_edits[r.fact_id], "recalled_after": ok}
                 for r, (ok, _) in zip(targets, hits)]
        for row in table:
            session.record("maintain", {"refresh_recalled": row["recalled_after"]}, fact_id=row["fact_id"])
        recovered = sum(1 for row in table if row["recalled_after"])
        result = MaintainResult(refreshed=len(refreshed), recovered=recovered, still_degraded=len(table) - recovered,
                                rewoken=sum(1 for r in targets if r.stage == 3), pending=pending - len(refreshed),
                                reconsolidating=again, rows=table, **grown)
        # Refreshing re-stores facts the day stored, like wake: validate's locality floor (and leak
        # ceiling) start from here.
        result.locality, result.leak = locality_stage.start_locality(session), locality_stage.start_leak(session)
        return finish(session, result, started)


def reconsolidate(session: SleepSession, chat_lost_ids: Sequence[int]) -> int:
    """Send up to ``maintain.max_reconsolidate`` consolidated facts (stages 1-3) that lost their chat
    answer back to stage 0, stage 3 first, then the oldest, in one transaction; returns how many. Their
    edits keep their scales (an edit may carry other facts; SWS sets the scale when the fact passes again).
    Inside maintain's snapshot: a rolled-back night restores their stages."""
    rows = {r.fact_id: r for r in session.ledger.list_facts()}
    lost = [fid for fid in chat_lost_ids if fid in rows and rows[fid].stage >= 1]
    # Stage 3 first: its edit is pruned and SWS checks only sws.settled_checked of them a night, where
    # every stage-1/2 fact is gated tonight and relearned by SWS's further round (sws.max_relearned).
    lost = sorted(lost, key=lambda fid: (-rows[fid].stage, fid))[: session.settings.maintain.max_reconsolidate]
    if lost:
        adapter_rows.commit_consolidation(session.ledger, {fid: 0 for fid in lost}, {})
        session.memory.reload()
    return len(lost)
