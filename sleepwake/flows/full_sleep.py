"""The full sleep: health -> snapshot -> curate -> audit -> maintain -> SWS -> REM -> validate
-> [rollback] -> report. Each arrow is a Prefect task with an artifact and DuckDB metrics.

The pre-sleep snapshot is the journal: until the report closes it, any failure (an exception
here, or a killed process found by the next writer) restores it byte for byte.
"""

from __future__ import annotations

import logging

from prefect import flow

from sleepwake.flows.session import flow_settings, sleep_session
from sleepwake.sleep import gate
from sleepwake.sleep.settings import MaintainConfig, RemConfig, SwsConfig, ValidateConfig
from sleepwake.tasks.audit import audit
from sleepwake.tasks.curate import curate
from sleepwake.tasks.health import health_check
from sleepwake.tasks.maintain import maintain as maintain_task
from sleepwake.tasks.rem import rem as rem_task
from sleepwake.tasks.report import report
from sleepwake.tasks.rollback import rollback
from sleepwake.tasks.snapshot import snapshot
from sleepwake.tasks.sws import sws as sws_task
from sleepwake.tasks.validate import validate as validate_task


@flow(name="full-sleep", persist_result=False, log_prints=True)
def full_sleep(home: str | None = None, config: str | None = None, overrides: list[str] | None = None,
               maintain: MaintainConfig | None = None, sws: SwsConfig | None = None, rem: RemConfig | None = None,
               gates: ValidateConfig | None = None) -> dict:
    """Audit every fact, refresh degraded ones, consolidate (SWS, REM), gate, report.

    home: the sleepwake home (default $SLEEPWAKE_HOME); config: preset or YAML; overrides:
    key=value settings; maintain / sws / rem / gates: replace those settings sections (UI forms;
    e.g. sws.enabled=false switches consolidation off for one run).
    """
    settings = flow_settings(config, overrides, maintain=maintain, sws=sws, rem=rem, validate=gates)
    with sleep_session(home, settings, "full_sleep") as run:
        health = health_check(run.run_id)
        facts_before = [list(row) for row in gate.facts_fingerprint(run.memory)]
        snapshot(run.run_id)
        try:
            outcome = sleep_stages(run.run_id, health["perplexity"], facts_before)
        except BaseException:
            _undo(run)
            raise
        return report(run.run_id, outcome)


def sleep_stages(run_id: str, perplexity_before: float, facts_before: list) -> str:
    """The weight-changing middle of the sleep; returns "kept" or "rolled_back"."""
    plan = curate(run_id)
    before = audit(run_id, plan["audit_ids"])
    maintain_task(run_id, before["healthy_ids"], before["degraded_ids"], plan["missing_ids"])
    sws_task(run_id)  # self-gated (benchmark) and self-undoing; validate gates the whole sleep
    rem_task(run_id)  # kept only if its own perplexity/recall gate passes
    verdict = validate_task(run_id, before, perplexity_before)
    if verdict["passed"]:
        return "kept"
    rollback(run_id, facts_before)
    return "rolled_back"


def _undo(run) -> None:
    """A stage failed for good: restore the pre-sleep state now rather than at the next open."""
    try:
        gate.rollback(run)
        gate.close_snapshot(run, "failed")
    except Exception as exc:  # the open snapshot stays: the next writer restores it
        logging.getLogger(__name__).error("could not roll back run %s now (%s); the next command will", run.run_id, exc)
