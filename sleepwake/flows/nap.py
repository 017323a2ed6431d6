"""The nap: health check, audit of recent (and previously degraded) facts, [reinforce], report.

Without ``nap.reinforce`` a nap changes no weights; with it, a gated LoRA pass strengthens the
chat pathway of MEMIT-held facts (undone from its own stage snapshot when its gate fails)."""

from __future__ import annotations

from prefect import flow

from sleepwake.flows.session import flow_settings, sleep_session
from sleepwake.sleep.audit import nap_selection
from sleepwake.tasks.audit import audit
from sleepwake.tasks.health import health_check
from sleepwake.tasks.reinforce import reinforce as reinforce_task
from sleepwake.tasks.report import report


@flow(name="nap", persist_result=False, log_prints=True)
def nap(home: str | None = None, config: str | None = None, overrides: list[str] | None = None,
        reinforce: bool | None = None) -> dict:
    """Audit what changed since the last sleep; optionally reinforce the chat pathway with LoRA.

    home: the sleepwake home (default $SLEEPWAKE_HOME); config: preset or YAML; overrides: key=value;
    reinforce: run the gated LoRA reinforcement (default: the nap.reinforce setting).
    """
    settings = flow_settings(config, overrides)
    if reinforce is not None:
        settings = settings.model_copy(update={"nap": settings.nap.model_copy(update={"reinforce": reinforce})})
    with sleep_session(home, settings, "nap") as run:
        health_check(run.run_id)
        audit(run.run_id, nap_selection(run))
        if not settings.nap.reinforce:
            return report(run.run_id, "no_change")
        result = reinforce_task(run.run_id)
        return report(run.run_id, "reinforced" if result["accepted"] else "no_change")
