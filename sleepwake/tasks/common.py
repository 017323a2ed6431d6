"""What every stage task shares: no caching, retries for transient errors only, artifacts, logs.

A live model is never a task argument: tasks receive the run id and find the session the flow
bound (``sleep.session.current``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Iterator
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact,
)
from prefect.logging.handlers import APILogHandler
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


class ProgressArtifact:
    """A stage's Prefect progress artifact, created at its first report and updated as it goes."""

    def __init__(self, kind: str):
        self.kind = kind
        self.ids: dict[str, UUID] = {}

    def __call__(self, stage: str, done: int, total: int, note: str) -> None:
        percent = round(100.0 * done / max(total, 1), 1)
        description = f"{stage}: {note}" if note else stage
        if stage not in self.ids:
            key = f"{self.kind}-{stage}-progress".replace("_", "-").lower()
            self.ids[stage] = create_progress_artifact(progress=percent, key=key, description=description)
        else:
            update_progress_artifact(self.ids[stage], progress=percent, description=description)


@contextlib.contextmanager
def stage_logs() -> Iterator[None]:
    """Inside a task: what sleepwake's modules log at INFO (LoRA progress, refreshes, gate
    verdicts) also reaches the task run's logs in the UI, through the API handler only: a terminal
    running the flow neither prints each line twice nor, under -q, starts printing them."""
    handler = APILogHandler(level=logging.INFO)
    logger = logging.getLogger("sleepwake")
    before, threshold = logger.level, logger.getEffectiveLevel()
    consoles = logging.getLogger().handlers if threshold > logging.INFO else []

    def as_before(record: logging.LogRecord) -> bool:
        return not (record.name.startswith("sleepwake") and record.levelno < threshold)

    for console in consoles:
        console.addFilter(as_before)
    logger.addHandler(handler)
    logger.setLevel(min(threshold, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
        for console in consoles:
            console.removeFilter(as_before)
