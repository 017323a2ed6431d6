"""What every stage task shares: no caching, retries for transient errors only, artifacts.

A live model is never a task argument: tasks receive the run id and look the run up in-process.
"""

from __future__ import annotations

import os

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sleepwake.errors import HomeBusyError
from sleepwake.sleep.run import StageResult

# Errors worth another attempt: a briefly locked ledger, an interrupted disk or network call.
# Bad input, corrupted state and bugs fail at once: repeating them changes nothing.
TRANSIENT = (HomeBusyError, TimeoutError, ConnectionError, InterruptedError)
RETRIES = int(os.environ.get("SLEEPWAKE_TASK_RETRIES", "2"))


def is_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry only the errors in :data:`TRANSIENT`."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(error, TRANSIENT)


def stage_task(name: str):
    """The decorator every stage uses (``cache_policy=NO_CACHE``: inputs are ids, results are small)."""
    return task(name=name, cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=1,
                retry_condition_fn=is_transient, persist_result=False)


def publish(result: StageResult, kind: str) -> dict:
    """Turn a stage result into artifacts (a table and/or markdown) and return its summary."""
    key = f"{kind}-{result.stage}".replace("_", "-")
    summary = result.as_dict()
    if result.rows:
        create_table_artifact(key=key, table=result.rows, description=_describe(summary))
    else:
        create_table_artifact(key=key, table=[{"figure": k, "value": str(v)} for k, v in summary.items()
                                              if not isinstance(v, list)], description=result.stage)
    if result.markdown:
        create_markdown_artifact(key=f"{key}-note", markdown=result.markdown, description=result.stage)
    return summary


def _describe(summary: dict) -> str:
    shown = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    return ", ".join(f"{k} {v}" for k, v in shown.items())[:500]
