"""What every stage task shares: no caching, retries for transient errors only, artifacts, logs.

A live model is never a task argument: tasks receive the run id and find the session the flow
bound (``sleep.session.current``).
"""

from __future__ import annotations

import json
import os

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sleepwake.errors import HomeBusyError
from sleepwake.sleep.results import StageResult

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


def publish(result: StageResult, kind: str) -> None:
    """The stage's artifacts (its table, or its figures; its note) and a log line that says what
    it did. Artifacts are created as the stages finish, so they appear in stage order."""
    key = f"{kind}-{result.stage}".replace("_", "-")
    summary = {k: v for k, v in result.summary().items() if k != "stage"}
    headline = describe(result.stage, summary)
    get_run_logger().info(headline)
    table = result.rows or [{"figure": k, "value": _cell(v)} for k, v in summary.items()]
    create_table_artifact(key=key, table=[{k: _cell(v) for k, v in row.items()} for row in table], description=headline)
    if result.note:
        create_markdown_artifact(key=f"{key}-note", markdown=result.note, description=headline)


def describe(stage: str, summary: dict) -> str:
    """One line in one style for every stage: 'stage: figure value, figure value, ...'."""
    shown = [f"{k.replace('_', ' ')} {_cell(v)}" for k, v in summary.items()
             if v is not None and not isinstance(v, (list, dict)) and k != "seconds"]
    return f"{stage} ({summary.get('seconds', 0):.1f} s): " + ", ".join(shown)[:450]


def _cell(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:200]
    return value
