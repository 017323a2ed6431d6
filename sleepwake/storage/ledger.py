"""The ledger: a DuckDB file recording facts, edits, audits, metrics and settings.

Connections, transactions, lock retries and migrations are ``storage.database``; the history
(audits, metrics, meta, sleep runs) is ``storage.history``; facts and edits are here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

import duckdb

from sleepwake.errors import (
    InvalidInputError,
    NotFoundError,
)
from sleepwake.facts import Fact, normalize_key
from sleepwake.storage.database import _now, scalar
from sleepwake.storage.history import History
from sleepwake.storage.schema import (
    EDIT_COLS,
    FACT_COLS,
    LATEST_VERSION,
    MIGRATIONS,
    STAGES,
    EditRow,
    FactRow,
    edit_from_row,
)

__all__ = ["Ledger", "FactRow", "EditRow", "MIGRATIONS", "LATEST_VERSION"]


class Ledger(History):
    """Typed access to the home's DuckDB file: facts and edits here, history in ``History``,
    connections in ``Database``."""

    # -- facts and edits ----------------------------------------------------------------------

    def next_edit_id(self) -> int:
        """Reserve an edit id (before the delta file is written under that id)."""
        return self.next_edit_ids(1)[0]

    def next_edit_ids(self, n: int) -> list[int]:
        """Reserve ``n`` edit ids in one transaction (a batch writes its factor files first)."""
        # An autocommit SELECT nextval is not persisted by DuckDB 1.x; an explicit transaction is.
        with self._transaction() as con:
            return [int(row[0]) for row in con.execute("SELECT nextval('edit_id_seq') FROM range(?)", [int(n)]).fetchall()]

    def commit_edit(
        self, edit: EditRow, facts: Sequence[Fact], remove_edit_ids: Iterable[int] = (), source: str = "cli"
    ) -> list[int]:
        """Record an edit, upsert its facts and drop replaced edits in one transaction."""
        return self.commit_edits([(edit, facts)], remove_edit_ids, source)

    def commit_edits(
        self, edits: Sequence[tuple[EditRow, Sequence[Fact]]], remove_edit_ids: Iterable[int] = (), source: str = "cli"
    ) -> list[int]:
        """Record several edits, upsert each one's facts and drop replaced edits, all in ONE
        transaction (a batched inject is stored whole or not at all). Returns the fact ids."""
        with self._transaction() as con:
            return insert_edits(con, edits, remove_edit_ids, source)

    def find_fact(self, subject: str, relation: str) -> FactRow | None:
        with self._connect() as con:
            row = con.execute(
                f"SELECT {FACT_COLS} FROM facts WHERE subject_key = ? AND relation_key = ?",
                [normalize_key(subject), normalize_key(relation)],
            ).fetchone()
        return FactRow(*row) if row else None

    def list_facts(self) -> list[FactRow]:
        with self._connect() as con:
            rows = con.execute(f"SELECT {FACT_COLS} FROM facts ORDER BY fact_id").fetchall()
        return [FactRow(*r) for r in rows]

    def count_facts_since(self, iso_ts: str | None) -> int:
        """Facts created or changed after the given naive-UTC ISO time (all facts when None)."""
        with self._connect() as con:
            if iso_ts is None:
                return int(scalar(con.execute("SELECT count(*) FROM facts")))
            return int(scalar(con.execute("SELECT count(*) FROM facts WHERE updated_at > ?::TIMESTAMP", [iso_ts])))

    def facts_of_edit(self, edit_id: int) -> list[FactRow]:
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {FACT_COLS} FROM facts WHERE edit_id = ? ORDER BY fact_id", [edit_id]
            ).fetchall()
        return [FactRow(*r) for r in rows]

    def list_edits(self) -> list[EditRow]:
        with self._connect() as con:
            rows = con.execute(f"SELECT {EDIT_COLS} FROM edits ORDER BY edit_id").fetchall()
        return [edit_from_row(r) for r in rows]

    def get_edit(self, edit_id: int) -> EditRow:
        with self._connect() as con:
            row = con.execute(f"SELECT {EDIT_COLS} FROM edits WHERE edit_id = ?", [edit_id]).fetchone()
        if row is None:
            raise NotFoundError(f"edit {edit_id} does not exist")
        return edit_from_row(row)

    def forget_fact(self, fact_id: int, remove_edit_ids: Iterable[int] = ()) -> None:
        """Delete a fact and the edits that carried it, together."""
        with self._transaction() as con:
            if not con.execute("DELETE FROM facts WHERE fact_id = ? RETURNING fact_id", [fact_id]).fetchall():
                raise NotFoundError(f"fact {fact_id} does not exist")
            _delete_edits(con, remove_edit_ids)

    def remove_edits(self, edit_ids: Iterable[int]) -> None:
        with self._transaction() as con:
            _delete_edits(con, edit_ids)

    def prune_edits(self, edit_ids: Iterable[int]) -> None:
        """Drop edits but keep their facts (edit_id set to NULL): for consolidated facts."""
        ids = [int(i) for i in edit_ids]
        with self._transaction() as con:
            if ids:
                con.execute("UPDATE facts SET edit_id = NULL, updated_at = ? "
                            "WHERE edit_id IN (SELECT unnest(?::BIGINT[]))", [_now(), ids])
            _delete_edits(con, ids)

    def set_scale(self, edit_id: int, scale: float) -> None:
        with self._connect(write=True) as con:
            done = con.execute(
                "UPDATE edits SET scale = ? WHERE edit_id = ? RETURNING edit_id", [float(scale), edit_id]
            ).fetchall()
        if not done:
            raise NotFoundError(f"edit {edit_id} does not exist")

    def set_stage(self, fact_id: int, stage: int) -> None:
        if stage not in STAGES:
            raise InvalidInputError(f"stage {stage} is not one of {list(STAGES)}")
        with self._connect(write=True) as con:
            done = con.execute(
                "UPDATE facts SET stage = ?, updated_at = ? WHERE fact_id = ? RETURNING fact_id",
                [stage, _now(), fact_id],
            ).fetchall()
        if not done:
            raise NotFoundError(f"fact {fact_id} does not exist")

    def counts(self) -> dict:
        """{'facts': n, 'edits': n, 'facts_per_stage': {0: n, 1: n, 2: n, 3: n}}."""
        with self._connect() as con:
            n_facts = scalar(con.execute("SELECT count(*) FROM facts"))
            n_edits = scalar(con.execute("SELECT count(*) FROM edits"))
            per_stage = dict(con.execute("SELECT stage, count(*) FROM facts GROUP BY stage").fetchall())
        stages = {stage: 0 for stage in STAGES} | {int(k): int(v) for k, v in per_stage.items()}
        return {"facts": int(n_facts), "edits": int(n_edits), "facts_per_stage": stages}


def insert_edits(con: duckdb.DuckDBPyConnection, edits: Sequence[tuple[EditRow, Sequence[Fact]]],
                 remove_edit_ids: Iterable[int], source: str) -> list[int]:
    """Inside a transaction: drop replaced edits, insert new ones and upsert their facts."""
    now = _now()
    fact_ids = []
    _delete_edits(con, remove_edit_ids)
    for edit, facts in edits:
        con.execute(
            f"INSERT INTO edits ({EDIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [edit.edit_id, edit.kind, float(edit.scale), json.dumps([int(x) for x in edit.layers]),
             edit.rank, edit.file, edit.checksum, edit.nbytes, edit.model_fingerprint, edit.created_at or now],
        )
        fact_ids += [_upsert_fact(con, fact, edit.edit_id, source, now) for fact in facts]
    return fact_ids


def _upsert_fact(con: duckdb.DuckDBPyConnection, fact: Fact, edit_id: int, source: str, now: datetime) -> int:
    """Update the row with the same normalised (subject, relation), or insert a new one."""
    from sleepwake.storage.forgotten import on_store  # forgotten builds on this module

    subject_key, relation_key = normalize_key(fact.subject), normalize_key(fact.relation)
    row = con.execute(
        "SELECT fact_id, object, stage FROM facts WHERE subject_key = ? AND relation_key = ?", [subject_key, relation_key]
    ).fetchone()
    on_store(con, fact.subject, fact.relation, fact.object, (row[1], row[2]) if row else None)
    if row is not None:
        # Only non-key columns change, so DuckDB updates in place (no unique-index churn).
        con.execute(
            "UPDATE facts SET subject = ?, relation = ?, object = ?, edit_id = ?, stage = 0, updated_at = ? "
            "WHERE fact_id = ?",
            [fact.subject, fact.relation, fact.object, edit_id, now, row[0]],
        )
        return int(row[0])
    fact_id = int(scalar(con.execute("SELECT nextval('fact_id_seq')")))
    con.execute(
        "INSERT INTO facts (fact_id, subject, relation, object, subject_key, relation_key, stage, edit_id, "
        "source, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
        [fact_id, fact.subject, fact.relation, fact.object, subject_key, relation_key,
         edit_id, source, now, now],
    )
    return fact_id


def _delete_edits(con: duckdb.DuckDBPyConnection, edit_ids: Iterable[int]) -> None:
    ids = [int(i) for i in edit_ids]
    if ids:
        con.execute("DELETE FROM edits WHERE edit_id IN (SELECT unnest(?::BIGINT[]))", [ids])
