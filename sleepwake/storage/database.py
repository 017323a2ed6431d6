"""The ledger's database: short DuckDB connections, transactions, lock retries and migrations.

Connections are short on purpose: DuckDB lets only one process hold a file open for writing,
so every public method connects, does its work and closes, and the sleep flow and the CLI can
take turns. A lock conflict is retried for ``busy_timeout_s`` and then reported as
``HomeBusyError``; raw DuckDB lock errors never reach the user.

A read-only database never creates the file: while it does not exist, reads run against an
empty in-memory database with the same schema. A read-only open of an older schema upgrades the
file once through a short write connection. All timestamps are naive UTC.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from sleepwake.errors import CorruptedStateError, HomeBusyError, SleepwakeError
from sleepwake.storage.schema import LATEST_VERSION, MIGRATIONS


def _record_absent_pandas() -> None:
    """Make DuckDB's per-parameter ``import pandas`` fail at once where pandas is not installed.

    DuckDB's Python client tries to import pandas twice for every bound parameter (to recognise
    pandas values). Python caches only imports that succeed, so without pandas each try searches
    ``sys.path`` and every import hook again (~0.3 ms a statement in a plain process, more under
    pytest's import hook: a quarter of the ledger's time in the simulated year).
    ``sys.modules[name] = None`` is Python's own record of "not importable"; with pandas installed
    nothing changes.
    """
    if "pandas" not in sys.modules and importlib.util.find_spec("pandas") is None:
        sys.modules["pandas"] = None  # type: ignore[assignment]


_record_absent_pandas()

# Substrings of DuckDB errors that mean "someone else has the file", not "the file is bad".
_LOCK_MARKERS = ("Conflicting lock", "Could not set lock", "different configuration")

def wal_path(db_path: Path) -> Path:
    """DuckDB's write-ahead log beside ``db_path``: committed transactions not yet folded into the file."""
    return db_path.with_name(db_path.name + ".wal")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def scalar(cursor: duckdb.DuckDBPyConnection):
    """The first column of the first row (the queries it serves always return one)."""
    row = cursor.fetchone()
    if row is None:
        raise CorruptedStateError("the database returned no row where one was expected")
    return row[0]


def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = scalar(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = 'schema_version'"))
    if not exists:
        return 0
    return int(scalar(con.execute("SELECT coalesce(max(version), 0) FROM schema_version")))


class Database:
    """The home's DuckDB file; every method is one short connection.

    ``hold=True`` keeps one writer connection open instead (about 10 ms saved per call), for a
    process that knows nobody else reads the home meanwhile (an experiment's private homes, the
    simulated-year test); :meth:`release` closes it, and the journal releases it before it puts
    an older copy of the file in place.
    """

    def __init__(self, path: Path, read_only: bool = False, busy_timeout_s: float = 10.0, hold: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_s
        self.hold = hold and not read_only
        self._held: duckdb.DuckDBPyConnection | None = None
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.migrate()

    # -- connections -------------------------------------------------------------------------

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Connect, retrying lock conflicts with backoff until ``busy_timeout_s`` has passed."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                message = str(exc)
                if not any(marker in message for marker in _LOCK_MARKERS):
                    raise CorruptedStateError(
                        f"database {self.path} cannot be opened ({_one_line(message)}); "
                        "restore the home from a backup"
                    ) from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pid = re.search(r"PID (\d+)", message)
                    who = f" (pid {pid.group(1)})" if pid else ""
                    raise HomeBusyError(
                        f"database {self.path} is in use by another sleepwake process{who}; "
                        "try again when it finishes"
                    ) from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if write and self.read_only:
            raise RuntimeError(f"ledger {self.path} was opened read-only")
        if self._held is not None:
            yield self._held
            return
        if self.hold:
            self._held = self._open(False)
            yield self._held
            return
        if self.read_only and not self.path.exists():
            con = duckdb.connect(":memory:")
            self._apply_migrations(con, 0)
        else:
            con = self._open(self.read_only)
            try:
                version = _schema_version(con) if self.read_only else LATEST_VERSION
            except BaseException:
                con.close()
                raise
            if version != LATEST_VERSION:
                con.close()
                self._refuse_newer(version)
                self.migrate()  # a brief write open upgrades the older file once
                con = self._open(True)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: everything inside commits together or not at all."""
        with self._connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def release(self) -> None:
        """Close a held connection (the next call opens a new one)."""
        if self._held is not None:
            self._held.close()
            self._held = None

    # -- migrations ---------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; return the schema version."""
        con = self._held or self._open(read_only=False)
        keep = False
        try:
            current = _schema_version(con)
            self._refuse_newer(current)
            version = self._apply_migrations(con, current)
            keep = self.hold  # a held ledger keeps this connection: one connect per open, not two
            return version
        finally:
            if keep:
                self._held = con
            elif con is not self._held:
                con.close()

    def _refuse_newer(self, version: int) -> None:
        if version > LATEST_VERSION:
            raise SleepwakeError(
                f"database {self.path} has schema version {version} but this sleepwake knows only up "
                f"to {LATEST_VERSION}; upgrade sleepwake to use this home"
            )

    @staticmethod
    def _apply_migrations(con: duckdb.DuckDBPyConnection, current: int) -> int:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)")
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                for statement in statements:
                    con.execute(statement)
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _now()])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            current = version
        return current

    def schema_version(self) -> int:
        with self._connect() as con:
            return _schema_version(con)

    def checkpoint(self, min_wal_bytes: int = 0) -> bool:
        """Fold the write-ahead log into the file when it holds more than ``min_wal_bytes``; returns
        whether it did. Every committed transaction is in the file plus its WAL, so a snapshot that
        copies both is whole either way: folding only keeps the WAL a snapshot copies and hashes small."""
        wal = wal_path(self.path)
        if min_wal_bytes and (not wal.exists() or wal.stat().st_size <= min_wal_bytes):
            return False
        with self._connect(write=True) as con:
            con.execute("CHECKPOINT")
        return True

