"""The ledger's history: audit verdicts, metrics, key-value meta and the record of sleep runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone

import duckdb

from sleepwake.storage.database import Database, _dicts, _now, scalar
from sleepwake.storage.schema import AUDIT_COLS, METRIC_COLS


class History(Database):
    """The history part of :class:`sleepwake.storage.ledger.Ledger`."""

    # -- audits, metrics, meta ----------------------------------------------------------------

    def record_audits(self, rows: Sequence[dict]) -> None:
        """Insert audit rows (keys = column names; audit_id is assigned, ts defaults to now)."""
        with self._transaction() as con:
            _bulk_insert(con, "audits", AUDIT_COLS, rows, id_expr=("audit_id", "nextval('audit_id_seq')"))

    def record_metrics(self, rows: Sequence[dict]) -> None:
        """Insert metric rows; a non-string ``detail`` is stored as JSON."""
        with self._transaction() as con:
            _bulk_insert(con, "metrics", METRIC_COLS, rows)

    def latest_audits(self) -> dict[int, dict]:
        """fact_id -> its most recent audit row."""
        with self._connect() as con:
            rows = _dicts(con.execute(
                "SELECT * FROM audits WHERE fact_id IN (SELECT fact_id FROM facts) "
                "QUALIFY row_number() OVER (PARTITION BY fact_id ORDER BY ts DESC, audit_id DESC) = 1"
            ))
        return {row["fact_id"]: row for row in rows}

    def metric_history(self, name: str, limit: int = 100) -> list[dict]:
        """The newest ``limit`` rows of metric ``name``, oldest first."""
        with self._connect() as con:
            return _dicts(con.execute(
                "SELECT * EXCLUDE (_rid) FROM (SELECT rowid AS _rid, * FROM metrics WHERE name = ? "
                "ORDER BY ts DESC, _rid DESC LIMIT ?) ORDER BY ts, _rid",
                [name, int(limit)],
            ))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """One run's scalar metrics (no fact), as ``{"stage.name": value}``; the last recorded wins."""
        with self._connect() as con:
            rows = con.execute("SELECT stage, name, value FROM metrics WHERE run_id = ? AND fact_id IS NULL "
                               "AND value IS NOT NULL ORDER BY ts, rowid", [run_id]).fetchall()
        return {f"{stage}.{name}": float(value) for stage, name, value in rows}

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._connect(write=True) as con:
            con.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, str(value)],
            )

    def start_run(self, run_id: str, kind: str, flow_run_id: str | None) -> None:
        """Record a sleep run beside the Prefect flow run that drives it (one id links both)."""
        with self._connect(write=True) as con:
            con.execute("INSERT INTO sleep_runs (run_id, kind, flow_run_id, started_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (run_id) DO NOTHING", [run_id, kind, flow_run_id, _now()])

    def finish_run(self, run_id: str, kind: str, flow_run_id: str | None, outcome: str) -> None:
        """Record how a run ended (inserting it when nothing started it, as in plain calls)."""
        now = _now()
        with self._connect(write=True) as con:
            con.execute("INSERT INTO sleep_runs (run_id, kind, flow_run_id, started_at, finished_at, outcome) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET finished_at = excluded.finished_at, "
                        "outcome = excluded.outcome", [run_id, kind, flow_run_id, now, now, outcome])

    def count_runs(self) -> int:
        """How many sleep runs were ever started here, this one included."""
        with self._connect() as con:
            return int(scalar(con.execute("SELECT count(*) FROM sleep_runs")))

    def runs(self, limit: int = 20) -> list[dict]:
        """The newest sleep runs, newest first (run id, kind, Prefect flow run id, outcome)."""
        with self._connect() as con:
            return _dicts(con.execute("SELECT * FROM sleep_runs ORDER BY started_at DESC LIMIT ?", [int(limit)]))

def _json_value(value: object) -> object:
    """JSON form of a cell: naive-UTC ISO timestamps, numpy/torch scalars as Python numbers."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the ledger")


def _bulk_insert(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: dict[str, str],
    rows: Sequence[dict],
    id_expr: tuple[str, str] | None = None,
) -> None:
    """Insert dict rows in one statement; missing columns are NULL and ts defaults to now.

    The rows travel as ONE JSON string parameter that DuckDB parses and unnests into typed
    columns: DuckDB's Python binding converts list parameters element by element (~0.1 ms each),
    while its JSON reader handles thousands of rows in milliseconds. NaN/Infinity survive.
    """
    if not rows:
        return
    now = _now()
    records = []
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"unknown {table} columns: {sorted(unknown)}")
        record = {name: row.get(name) for name in columns}
        if "ts" in record and record["ts"] is None:
            record["ts"] = now
        if record.get("detail") is not None and not isinstance(record["detail"], str):
            record["detail"] = json.dumps(record["detail"], sort_keys=True, default=str)
        records.append(record)
    names = ([id_expr[0]] if id_expr else []) + list(columns)
    ids = [id_expr[1]] if id_expr else []
    shape = json.dumps([columns])  # from_json's type spec: a list of structs of these columns
    con.execute(
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(ids + list(columns))} "
        f"FROM (SELECT unnest(from_json(?, '{shape}'), recursive := true))",
        [json.dumps(records, default=_json_value)],
    )
