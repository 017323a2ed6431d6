"""The home: the state folder holding the ledger, edit factors, snapshots and caches.

Layout::

    <home>/ledger.duckdb        facts, edits, audits, metrics (DuckDB)
    <home>/deltas/              one safetensors file of low-rank factors per edit
    <home>/snapshots/           weight snapshots taken before weight-changing sleep stages
    <home>/write.lock           held (flock) by the one process allowed to change the home

One writer at a time: mutating commands take ``write.lock`` and fail with a clear message if
another process holds it; readers never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sleepwake.errors import HomeBusyError, InvalidInputError


def default_home() -> Path:
    """$SLEEPWAKE_HOME, else the per-user data folder (XDG_DATA_HOME/sleepwake)."""
    env = os.environ.get("SLEEPWAKE_HOME")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "sleepwake"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def open(cls, path: str | Path | None = None, create: bool = True) -> "Home":
        root = Path(path).expanduser() if path else default_home()
        if root.exists() and not root.is_dir():
            raise InvalidInputError(f"home {root} exists and is not a folder")
        if create:
            try:
                (root / "deltas").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidInputError(f"cannot create home {root}: {exc.strerror}") from None
        return cls(root.resolve())

    @classmethod
    def existing(cls, path: str | Path | None = None, create: bool = False) -> "Home":
        """A home that already holds a memory (a ledger). Without ``create`` a path without one is
        an error: a mistyped home must never become a new, empty memory that looks healthy forever."""
        found = cls.open(path, create=create)
        if not create and not found.db_path.is_file():
            from sleepwake.errors import NotFoundError

            raise NotFoundError(f"no sleepwake home at {found.root} (no ledger.duckdb there); check the path, or "
                                "create it by storing a fact (sleepwake inject, or the wake flow with create=true)")
        return found

    @property
    def db_path(self) -> Path:
        return self.root / "ledger.duckdb"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def inside(self, relpath: str) -> Path:
        """Resolve a path stored in the ledger, refusing anything that escapes the home."""
        candidate = (self.root / relpath).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise InvalidInputError(f"path {relpath!r} escapes the home {self.root}")
        return candidate

    @contextlib.contextmanager
    def write_lock(self, wait_s: float = 0.0):
        """Exclusive. By default non-blocking (a second writer is told who holds the home);
        ``wait_s`` > 0 polls for that long first (scheduled sleeps queue behind an inject)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "write.lock"
        handle = open(path, "a+")
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(min(0.1, max(0.01, deadline - time.monotonic())))  # short holders (a served turn) come and go
                        continue
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise HomeBusyError(
                        f"home {self.root} is busy: {holder} is changing it; try again when it finishes"
                    ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"sleepwake pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.close()  # closing releases the flock
