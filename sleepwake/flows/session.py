"""The part of a flow run that owns the model: settings, the write lock, the memory, the session."""

from __future__ import annotations

import contextlib
from functools import partial
from types import SimpleNamespace
from typing import Iterator

from sleepwake.config import Settings, load_settings
from sleepwake.sleep import journal
from sleepwake.sleep.session import SleepSession, opened


def flow_settings(config: str | None, overrides: list[str] | None, **sections) -> Settings:
    """The preset plus ``--set`` overrides, then any section given as a typed flow parameter
    (the Prefect UI form) replaces that whole section."""
    settings = load_settings(config, overrides or [])
    given = {("validate_" if name == "validate" else name): value for name, value in sections.items() if value is not None}
    return settings.model_copy(update=given) if given else settings


@contextlib.contextmanager
def sleep_session(home: str | None, settings: Settings, kind: str, create: bool = False) -> Iterator[SleepSession]:
    """``sleep.session.opened`` with this flow run's id recorded on the run."""
    from prefect.runtime import flow_run

    with opened(home, settings, kind, create, flow_run_id=flow_run.id) as session:
        yield session


def task_stages(session: SleepSession) -> SimpleNamespace:
    """The stage tasks bound to the session's run id, for ``sleep.pipeline``."""
    from sleepwake.tasks import stages

    names = ("health_check", "snapshot", "curate", "select", "audit", "maintain", "sws", "rem", "fold",
             "validate", "rollback", "report", "reinforce")
    return SimpleNamespace(**{name: partial(getattr(stages, name), session.run_id) for name in names},
                           abandon=partial(journal.abandon, session))
