"""The ledger's record of consolidation adapters, and the SWS stage/scale commit.

An adapter is one LoRA training pass of a sleep (SWS, REM or a reinforcing nap), stored like an
edit: factor pairs per adapted module in ``deltas/adapter-XXXXXXXX.safetensors`` and one row in
the ``adapters`` table. The weights are base + every adapter + every scaled edit, so an adapter
row and its file are all that a restart needs, and a snapshot of ledger + deltas/ covers them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

from sleepwake.errors import InvalidInputError
from sleepwake.storage.database import scalar
from sleepwake.storage.ledger import Ledger
from sleepwake.storage.schema import STAGES

ADAPTER_COLS = "adapter_id, kind, run_id, modules, rank, file, checksum, nbytes, model_fingerprint, created_at"
KINDS = ("sws", "rem", "nap", "consolidated", "forget")


@dataclass(frozen=True)
class AdapterRow:
    adapter_id: int
    kind: str
    run_id: str | None
    modules: list[str]
    rank: int
    file: str
    checksum: str
    nbytes: int
    model_fingerprint: str
    created_at: datetime | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def next_adapter_id(ledger: Ledger) -> int:
    """Reserve an adapter id (before its factor file is written under that id)."""
    # An autocommit SELECT nextval is not persisted by DuckDB 1.x; an explicit transaction is.
    with ledger._transaction() as con:
        return int(scalar(con.execute("SELECT nextval('adapter_id_seq')")))


def commit_adapter(ledger: Ledger, row: AdapterRow, replaces: Iterable[int] = ()) -> None:
    """Record an adapter and drop the ``replaces`` adapters it stands for, in ONE transaction
    (a fold replaces every adapter by their consolidated sum, all or nothing)."""
    if row.kind not in KINDS:
        raise InvalidInputError(f"adapter kind {row.kind!r} is not one of {list(KINDS)}")
    ids = [int(i) for i in replaces]
    with ledger._transaction() as con:
        if ids:
            con.execute("DELETE FROM adapters WHERE adapter_id IN (SELECT unnest(?::BIGINT[]))", [ids])
        insert_adapter(con, row)


def insert_adapter(con, row: AdapterRow) -> None:
    """Inside the caller's transaction."""
    if row.kind not in KINDS:
        raise InvalidInputError(f"adapter kind {row.kind!r} is not one of {list(KINDS)}")
    con.execute(f"INSERT INTO adapters ({ADAPTER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row.adapter_id, row.kind, row.run_id, json.dumps(row.modules), row.rank, row.file,
                 row.checksum, row.nbytes, row.model_fingerprint, _now()])


def list_adapters(ledger: Ledger) -> list[AdapterRow]:
    """Every adapter, oldest first (the composition order)."""
    with ledger._connect() as con:
        rows = con.execute(f"SELECT {ADAPTER_COLS} FROM adapters ORDER BY adapter_id").fetchall()
    return [AdapterRow(r[0], r[1], r[2], list(json.loads(r[3])), *r[4:]) for r in rows]


def remove_adapters(ledger: Ledger, adapter_ids: Iterable[int]) -> None:
    ids = [int(i) for i in adapter_ids]
    if ids:
        with ledger._transaction() as con:
            con.execute("DELETE FROM adapters WHERE adapter_id IN (SELECT unnest(?::BIGINT[]))", [ids])


def commit_consolidation(ledger: Ledger, stages: Mapping[int, int], scales: Mapping[int, float],
                         forget_stages: Mapping[int, int] | None = None) -> None:
    """New fact stages, edit scales and forgotten facts' stages of one SWS pass, in ONE
    transaction (all or nothing)."""
    bad = {fid: s for fid, s in stages.items() if s not in STAGES}
    if bad:
        raise InvalidInputError(f"stages {bad} are not in {list(STAGES)}")
    now = _now()
    # One statement per table (unnest of parallel lists), not one per row: a night commits
    # hundreds of stages at once.
    with ledger._transaction() as con:
        if stages:
            con.execute("UPDATE facts SET stage = s.stage, updated_at = $1 FROM (SELECT unnest($2::BIGINT[]) AS id, "
                        "unnest($3::INTEGER[]) AS stage) AS s WHERE facts.fact_id = s.id",
                        [now, [int(k) for k in stages], [int(v) for v in stages.values()]])
        if scales:
            con.execute("UPDATE edits SET scale = s.scale FROM (SELECT unnest($1::BIGINT[]) AS id, "
                        "unnest($2::DOUBLE[]) AS scale) AS s WHERE edits.edit_id = s.id",
                        [[int(k) for k in scales], [float(v) for v in scales.values()]])
        for forget_id, stage in (forget_stages or {}).items():
            con.execute("UPDATE forgotten SET stage = ?, updated_at = ? WHERE forget_id = ?", [int(stage), now, int(forget_id)])
