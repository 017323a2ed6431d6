"""One sleep (or nap) run: the open memory, its id, and what each stage hands on.

Stage functions take a :class:`SleepRun` and return a :class:`StageResult`; Prefect tasks wrap
them and turn ``rows``/``markdown`` into artifacts. Every figure a stage reports also goes to the
ledger's ``metrics`` table under the run id, so sleep history is queryable by SQL.

Live runs are found through :func:`lookup` by their id: a loaded model never travels through a
Prefect task's arguments or results (Prefect would hash or pickle it).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sleepwake.errors import SleepwakeError

_LIVE: dict[str, "SleepRun"] = {}


@dataclass
class StageResult:
    """What a stage did: a flat summary (numbers, short lists), table rows and optional markdown."""

    stage: str
    summary: dict
    rows: list[dict] = field(default_factory=list)
    markdown: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"stage": self.stage, "seconds": round(self.seconds, 3), **self.summary}


@dataclass
class SleepRun:
    memory: object  # sleepwake.memory.Memory (not imported: keeps this module light)
    kind: str  # "nap" | "full_sleep"
    run_id: str = field(default_factory=lambda: new_run_id())
    started: float = field(default_factory=time.perf_counter)
    results: dict[str, StageResult] = field(default_factory=dict)
    # History written so far: a rollback restores the ledger file, and then writes it back
    # (a rolled-back sleep keeps its audits and metrics; only its state changes are undone).
    metric_log: list[dict] = field(default_factory=list)
    audit_log: list[dict] = field(default_factory=list)
    pending_audits: list[dict] = field(default_factory=list)  # post-sleep verdicts, saved if kept
    history_mark: tuple[int, int] = (0, 0)  # lengths of the logs when the pre-sleep snapshot was taken

    @property
    def settings(self):
        return self.memory.settings

    @property
    def ledger(self):
        return self.memory.ledger

    def record(self, stage: str, figures: dict, fact_id: int | None = None, detail=None) -> None:
        """Write numeric figures of a stage to the metrics table (non-numbers are skipped)."""
        now = _now()
        rows = [{"ts": now, "run_id": self.run_id, "stage": stage, "name": name, "value": float(value),
                 "fact_id": fact_id, "detail": detail}
                for name, value in figures.items()
                if isinstance(value, (int, float))]  # bools count as 0/1
        self.ledger.record_metrics(rows)
        self.metric_log += rows

    def save_audits(self, rows: list[dict]) -> None:
        """Record per-fact audit verdicts (the latest one per fact drives drowsiness and nap)."""
        now = _now()
        rows = [{"ts": now, **row} for row in rows]
        self.ledger.record_audits(rows)
        self.audit_log += rows

    def mark_history(self) -> None:
        """Called when the pre-sleep snapshot is taken: rows before it are inside the snapshot."""
        self.history_mark = (len(self.metric_log), len(self.audit_log))

    def replay_history(self) -> None:
        """After a restore: write back the audits and metrics recorded since the snapshot."""
        self.ledger.record_audits(self.audit_log[self.history_mark[1]:])
        self.ledger.record_metrics(self.metric_log[self.history_mark[0]:])

    def replay_history_since(self, mark) -> None:
        """After restoring a stage snapshot taken at history ``mark`` (metrics, audits): write back
        what was recorded since, so an undone pass keeps its figures."""
        if mark is None:
            return
        self.ledger.record_audits(self.audit_log[mark[1]:])
        self.ledger.record_metrics(self.metric_log[mark[0]:])

    def finish(self, result: StageResult, started: float) -> StageResult:
        """Time the stage, keep its result, and record its summary figures and duration."""
        result.seconds = time.perf_counter() - started
        self.results[result.stage] = result
        self.record(result.stage, {**result.summary, "seconds": result.seconds})
        return result


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def register(run: SleepRun) -> str:
    _LIVE[run.run_id] = run
    return run.run_id


def lookup(run_id: str) -> SleepRun:
    try:
        return _LIVE[run_id]
    except KeyError:
        raise SleepwakeError(f"sleep run {run_id} is not live in this process (tasks must run in the flow's process)") from None


def release(run_id: str) -> None:
    _LIVE.pop(run_id, None)
