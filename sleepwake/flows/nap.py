"""The nap: health check, audit of recent (and previously degraded) facts, report. No weight change."""

from __future__ import annotations

from prefect import flow

from sleepwake.flows.session import flow_settings, sleep_session
from sleepwake.sleep.audit import nap_selection
from sleepwake.tasks.audit import audit
from sleepwake.tasks.health import health_check
from sleepwake.tasks.report import report


@flow(name="nap", persist_result=False, log_prints=True)
def nap(home: str | None = None, config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Audit what changed since the last sleep; a drowsiness check without touching weights.

    home: the sleepwake home (default $SLEEPWAKE_HOME); config: preset or YAML; overrides: key=value.
    """
    settings = flow_settings(config, overrides)
    with sleep_session(home, settings, "nap") as run:
        health_check(run.run_id)
        audit(run.run_id, nap_selection(run))
        return report(run.run_id, "no_change")
