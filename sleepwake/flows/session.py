"""The part of a flow run that owns the model: settings, the write lock, the memory, the run id."""

from __future__ import annotations

import contextlib
from typing import Iterator

from sleepwake.config import Settings, load_settings
from sleepwake.sleep.run import SleepRun, register, release


def flow_settings(config: str | None, overrides: list[str] | None, **sections) -> Settings:
    """The preset plus ``--set`` overrides, then any section given as a typed flow parameter
    (the Prefect UI form) replaces that whole section."""
    settings = load_settings(config, overrides or [])
    given = {("validate_" if name == "validate" else name): value for name, value in sections.items() if value is not None}
    return settings.model_copy(update=given) if given else settings


@contextlib.contextmanager
def sleep_session(home: str | None, settings: Settings, kind: str) -> Iterator[SleepRun]:
    """Hold the home's write lock for the whole flow (inject/forget wait their turn), open the
    memory, register the run so tasks can find it by id, and release everything at the end."""
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    home_obj = Home.open(home)
    with home_obj.write_lock(settings.sleep.lock_wait_s):
        memory = Memory.open(home_obj, settings)
        run = SleepRun(memory, kind)
        register(run)
        try:
            yield run
        finally:
            release(run.run_id)
