"""``results.duckdb`` in an experiment's output folder: every run of every experiment, and every
cell of its tables in long form, so results compare across runs by SQL, e.g.

    SELECT run_id, row_index, value FROM experiment_cells
    WHERE experiment = 'capacity' AND tbl = 'trajectory' AND col = 'recall' ORDER BY run_id, row_index;
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import duckdb

from sleepwake.errors import HomeBusyError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS experiment_runs (
        run_id VARCHAR PRIMARY KEY, experiment VARCHAR, finished TIMESTAMP, seconds DOUBLE,
        summary VARCHAR, settings VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS experiment_cells (
        run_id VARCHAR, experiment VARCHAR, tbl VARCHAR, row_index INTEGER, col VARCHAR,
        value DOUBLE, text VARCHAR)""",
)


def record_run(path: Path, run_id: str, experiment: str, seconds: float, summary: dict, settings: dict,
               cells: Sequence[tuple]) -> None:
    """Add one run and its cells in one transaction (a failure leaves no half-written run)."""
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        raise HomeBusyError(f"results database {path} is in use by another process ({exc})") from None
    began = False
    try:
        for statement in SCHEMA:
            con.execute(statement)
        con.execute("BEGIN TRANSACTION")
        began = True
        con.execute("INSERT INTO experiment_runs VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, experiment, datetime.now(timezone.utc).replace(tzinfo=None), seconds,
                     json.dumps(summary, default=str), json.dumps(settings, default=str)])
        if cells:
            con.executemany("INSERT INTO experiment_cells VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(run_id, experiment, *cell) for cell in cells])
        con.execute("COMMIT")
    except BaseException:
        if began:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def runs(path: Path) -> list[dict]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cursor = con.execute("SELECT run_id, experiment, seconds, summary FROM experiment_runs ORDER BY finished")
        return [{"run_id": r[0], "experiment": r[1], "seconds": r[2], "summary": json.loads(r[3])} for r in cursor.fetchall()]
    finally:
        con.close()
