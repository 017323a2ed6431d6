"""One sleep (or nap) in progress: the open memory, its run id, and the history it has written.

Stage functions take a :class:`SleepSession` plus typed inputs and return typed results
(``sleep.results``). Prefect tasks receive the run id instead of the session (a loaded model
never travels through task arguments or results) and find the session through :func:`current`,
which the flow binds for exactly the span of the run with :func:`active` (a context variable,
so a task thread sees the session of the flow that called it, and nothing else).

Every figure a stage reports also goes to the ledger's ``metrics`` table under the run id, so
sleep history is queryable by SQL; ``history`` keeps what was written so that a restored
snapshot (which rewinds the ledger file) can write it back.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterator

from sleepwake.errors import SleepwakeError
from sleepwake.resources import reset_peak_rss

if TYPE_CHECKING:  # the session only holds the memory; importing it for real would load torch here
    from sleepwake.config import Settings
    from sleepwake.memory import Memory

_CURRENT: ContextVar["SleepSession | None"] = ContextVar("sleepwake_sleep_session", default=None)


@dataclass
class History:
    """Metric and audit rows this run wrote, in order (replayed after a snapshot restore)."""

    metrics: list[dict] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)

    def mark(self) -> tuple[int, int]:
        return len(self.metrics), len(self.audits)


@dataclass
class SleepSession:
    memory: "Memory"
    kind: str  # "nap" | "full_sleep" | "forget" ...
    run_id: str = field(default_factory=lambda: new_run_id())
    flow_run_id: str | None = None  # the Prefect flow run, when a flow drives this session
    started: float = field(default_factory=time.perf_counter)
    history: History = field(default_factory=History)
    # Where long stages report how far they are (stage, done, total, note): the flow's tasks turn
    # it into a Prefect progress artifact; plain calls leave it unset.
    on_progress: Callable[[str, int, int, str], None] | None = None
    # Locality figures by (weights digest, stored objects, sample size): a night measures the same
    # weights more than once (health, the start of SWS, the start of REM after a kept SWS).
    locality_seen: dict[tuple, dict] = field(default_factory=dict)
    # Seconds of the running stage's named parts (``timed``), taken by its ``finish``: a night that
    # grows says which part grew. ``timing`` is the part running now (a nested part counts in it).
    parts: dict[str, float] = field(default_factory=dict)
    timing: str | None = None

    def __post_init__(self) -> None:
        reset_peak_rss()  # the first stage's peak memory is its own, not the process's so far

    @property
    def settings(self):
        return self.memory.settings

    @property
    def ledger(self):
        return self.memory.ledger

    def night_seed(self) -> int:
        """The seed of this sleep's own draws (replay, REM's older facts): the settings' seed and
        the number of sleeps started in this home. With one fixed seed every position of the list of
        old facts got the same random key each night, so a list that only grows at its end replayed
        mostly the same items night after night."""
        return self.settings.seed * 100_003 + self.ledger.count_runs()

    def progress(self, stage: str, done: int, total: int, note: str = "") -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total, note)

    def record(self, stage: str, figures: dict, fact_id: int | None = None, detail=None) -> None:
        """Write numeric figures of a stage to the metrics table (non-numbers are skipped)."""
        now = _now()
        rows = [{"ts": now, "run_id": self.run_id, "stage": stage, "name": name, "value": float(value),
                 "fact_id": fact_id, "detail": detail}
                for name, value in figures.items()
                if isinstance(value, (int, float))]  # bools count as 0/1
        self.ledger.record_metrics(rows)
        self.history.metrics += rows

    def save_audits(self, rows: list[dict]) -> None:
        """Record per-fact audit verdicts (the latest one per fact drives drowsiness and the
        audit selection of later sleeps)."""
        now = _now()
        rows = [{"ts": now, **row} for row in rows]
        self.ledger.record_audits(rows)
        self.history.audits += rows

    def replay_since(self, mark: tuple[int, int] | list[int] | None) -> None:
        """After restoring a snapshot taken at history ``mark``: write back what was recorded
        since, so an undone pass (or a rolled-back sleep) keeps its figures."""
        if mark is None:
            return
        self.ledger.record_audits(self.history.audits[mark[1]:])
        self.ledger.record_metrics(self.history.metrics[mark[0]:])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def take_parts(self, seconds: float) -> dict[str, float]:
        """The finished stage's parts (and ``other``: its ``seconds`` outside them), then none; {} when
        a part is still running (the finish of a stage called inside another's part) or none ran. A stage
        that raised leaves its parts to the next finish (its retry's, where the seconds were spent too)."""
        if self.timing is not None or not self.parts:
            return {}
        parts = {name: round(secs, 2) for name, secs in self.parts.items()}
        parts["other"] = round(max(seconds - sum(self.parts.values()), 0.0), 2)
        self.parts = {}
        return parts


def timed(part: str):
    """Decorator for a stage's part ``fn(session, ...)``: its seconds add up under ``part`` in the
    session's ``parts`` (a part called inside another counts in the outer one, never twice)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(session: SleepSession, *args, **kwargs):
            if session.timing is not None:
                return fn(session, *args, **kwargs)
            session.timing, started = part, time.perf_counter()
            try:
                return fn(session, *args, **kwargs)
            finally:
                session.timing = None
                session.parts[part] = session.parts.get(part, 0.0) + time.perf_counter() - started
        return run
    return wrap


@contextlib.contextmanager
def active(session: SleepSession) -> Iterator[SleepSession]:
    """Bind ``session`` as the current one for the code (and the task threads) inside."""
    token = _CURRENT.set(session)
    try:
        yield session
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def opened(home: "str | None", settings: "Settings", kind: str, create: bool = False,
           flow_run_id: str | None = None) -> Iterator[SleepSession]:
    """Hold the home's write lock for the whole run (inject/forget wait their turn), open the
    memory, record the run, bind the session, and release everything at the end. The flows pass
    their Prefect run id; a plain caller (``benchmarks/experiment_plain.py``) passes none."""
    import gc

    from sleepwake.memory import Memory
    from sleepwake.resources import trim_heap
    from sleepwake.storage.home import Home

    home_obj = Home.existing(home, create)
    with home_obj.write_lock(settings.sleep.lock_wait_s):
        # A long-lived process (serve's auto-sleep, an experiment's nights) starts each sleep from
        # its live memory, not from the heap the last sleep's freed tensors left resident.
        gc.collect()
        trim_heap()
        memory = Memory.open(home_obj, settings)
        session = SleepSession(memory, kind, flow_run_id=flow_run_id)
        memory.ledger.start_run(session.run_id, kind, session.flow_run_id)
        with active(session):
            yield session


def current(run_id: str) -> SleepSession:
    """The session the calling flow bound, checked against the run id the task was given."""
    session = _CURRENT.get()
    if session is None or session.run_id != run_id:
        raise SleepwakeError(f"sleep run {run_id} is not active here (a stage task must be called from its flow)")
    return session


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"
