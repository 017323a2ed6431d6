"""The part of a flow run that owns the model: settings, the write lock, the memory, the session."""

from __future__ import annotations

import contextlib
import gc
from functools import partial
from types import SimpleNamespace
from typing import Iterator

from sleepwake.config import Settings, load_settings
from sleepwake.resources import trim_heap
from sleepwake.sleep import journal
from sleepwake.sleep.session import SleepSession, active


def flow_settings(config: str | None, overrides: list[str] | None, **sections) -> Settings:
    """The preset plus ``--set`` overrides, then any section given as a typed flow parameter
    (the Prefect UI form) replaces that whole section."""
    settings = load_settings(config, overrides or [])
    given = {("validate_" if name == "validate" else name): value for name, value in sections.items() if value is not None}
    return settings.model_copy(update=given) if given else settings


@contextlib.contextmanager
def sleep_session(home: str | None, settings: Settings, kind: str, create: bool = False) -> Iterator[SleepSession]:
    """Hold the home's write lock for the whole flow (inject/forget wait their turn), open the
    memory, bind the session for the flow's tasks, and release everything at the end."""
    from prefect.runtime import flow_run

    from sleepwake.memory import Memory

    from sleepwake.storage.home import Home

    home_obj = Home.existing(home, create)
    with home_obj.write_lock(settings.sleep.lock_wait_s):
        # A long-lived process (serve's auto-sleep, an experiment's nights) starts each sleep from
        # its live memory, not from the heap the last sleep's freed tensors left resident.
        gc.collect()
        trim_heap()
        memory = Memory.open(home_obj, settings)
        session = SleepSession(memory, kind, flow_run_id=flow_run.id)
        memory.ledger.start_run(session.run_id, kind, session.flow_run_id)
        with active(session):
            yield session


def task_stages(session: SleepSession) -> SimpleNamespace:
    """The stage tasks bound to the session's run id, for ``sleep.pipeline``."""
    from sleepwake.tasks import stages

    names = ("health_check", "snapshot", "curate", "select", "audit", "maintain", "sws", "rem", "fold",
             "validate", "rollback", "report", "reinforce")
    return SimpleNamespace(**{name: partial(getattr(stages, name), session.run_id) for name in names},
                           abandon=partial(journal.abandon, session))
