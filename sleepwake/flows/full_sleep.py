"""The full-sleep flow: every stage a Prefect task (retries on transient errors, an artifact each),
in the order ``sleep.pipeline.full_sleep`` fixes: health -> snapshot -> curate -> select -> audit ->
maintain -> sws -> rem -> fold -> validate -> [rollback] -> report.

The pre-sleep snapshot is the journal: until the report closes it, any failure (an exception
here, or a killed process found by the next writer) restores it byte for byte.
"""

from __future__ import annotations

from prefect import flow

from sleepwake.flows.session import flow_settings, sleep_session, task_stages
from sleepwake.sleep import pipeline
from sleepwake.settings.sleep import MaintainConfig, RemConfig, SwsConfig, ValidateConfig


@flow(name="full-sleep", persist_result=False, log_prints=True)
def full_sleep(home: str | None = None, config: str | None = None, overrides: list[str] | None = None,
               maintain: MaintainConfig | None = None, sws: SwsConfig | None = None, rem: RemConfig | None = None,
               gates: ValidateConfig | None = None) -> dict:
    """Audit what is at risk, refresh degraded facts, consolidate (SWS, REM), fold, gate, report.

    Args:
        home: The sleepwake home folder on the worker (empty: the worker's $SLEEPWAKE_HOME). It must
            already hold a memory: a path without one fails at once instead of creating an empty one.
        config: A preset name (default, llama-3.2-3b, ...) or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, e.g. "validate.max_ppl_increase=0.05" (one per row).
        maintain: Replaces the 'maintain' settings for this run (constrained MEMIT refresh).
        sws: Replaces the 'sws' settings for this run (e.g. enabled=false skips consolidation).
        rem: Replaces the 'rem' settings for this run (dreamed conversations).
        gates: Replaces the 'validate' settings for this run (the rollback gates).
    """
    settings = flow_settings(config, overrides, maintain=maintain, sws=sws, rem=rem, validate=gates)
    with sleep_session(home, settings, "full_sleep") as session:
        return pipeline.full_sleep(task_stages(session)).summary()
