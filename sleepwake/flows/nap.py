"""The nap: health check, audit of recent (and previously degraded) facts, [reinforce], report.

Without ``nap.reinforce`` a nap changes no weights; with it, a gated LoRA pass strengthens the
chat pathway of MEMIT-held facts (undone from its own journal snapshot when its gate fails)."""

from __future__ import annotations

from prefect import flow

from sleepwake.flows.session import flow_settings, sleep_session, task_stages
from sleepwake.sleep import pipeline
from sleepwake.sleep.select import nap_selection


@flow(name="nap", persist_result=False, log_prints=True)
def nap(home: str | None = None, config: str | None = None, overrides: list[str] | None = None,
        reinforce: bool | None = None) -> dict:
    """Audit what changed since the last sleep; optionally reinforce the chat pathway with LoRA.

    Args:
        home: The sleepwake home folder on the worker (empty: the worker's $SLEEPWAKE_HOME). It must
            already hold a memory.
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value (one per row).
        reinforce: Run the gated LoRA reinforcement (empty: the nap.reinforce setting).
    """
    settings = flow_settings(config, overrides)
    if reinforce is not None:
        settings = settings.model_copy(update={"nap": settings.nap.model_copy(update={"reinforce": reinforce})})
    with sleep_session(home, settings, "nap") as session:
        return pipeline.nap(task_stages(session), nap_selection(session), settings.nap.reinforce).summary()
