"""The ledger's schema: versioned migrations, column lists and row types.

Kept apart from ``ledger`` (connections, transactions, queries) so each stays readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from sleepwake.facts import Fact

# Migration 1: the initial schema. Later migrations append (version, statements); never edit
# a released one, since homes that already applied it will not run it again.
_SCHEMA_V1 = [
    "CREATE SEQUENCE fact_id_seq START 1",
    "CREATE SEQUENCE edit_id_seq START 1",
    "CREATE SEQUENCE audit_id_seq START 1",
    """CREATE TABLE facts (
        fact_id BIGINT PRIMARY KEY, subject VARCHAR NOT NULL, relation VARCHAR NOT NULL,
        object VARCHAR NOT NULL, subject_key VARCHAR NOT NULL, relation_key VARCHAR NOT NULL,
        stage INTEGER NOT NULL DEFAULT 0, edit_id BIGINT, source VARCHAR,
        created_at TIMESTAMP, updated_at TIMESTAMP, UNIQUE (subject_key, relation_key))""",
    """CREATE TABLE edits (
        edit_id BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, scale DOUBLE NOT NULL,
        layers VARCHAR NOT NULL, rank INTEGER NOT NULL, file VARCHAR NOT NULL,
        checksum VARCHAR NOT NULL, nbytes BIGINT NOT NULL, model_fingerprint VARCHAR NOT NULL,
        created_at TIMESTAMP)""",
    """CREATE TABLE audits (
        audit_id BIGINT PRIMARY KEY, run_id VARCHAR, fact_id BIGINT, ts TIMESTAMP,
        raw_recall DOUBLE, paraphrase_recall DOUBLE, chat_recall DOUBLE, healthy BOOLEAN)""",
    """CREATE TABLE metrics (
        ts TIMESTAMP, run_id VARCHAR, stage VARCHAR, name VARCHAR, value DOUBLE,
        fact_id BIGINT, detail VARCHAR)""",
    "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
]
# Migration 2: consolidation adapters (sleep's LoRA weights, stored as factors like edits) and
# the wake conversation log.
_SCHEMA_V2 = [
    "CREATE SEQUENCE adapter_id_seq START 1",
    "CREATE SEQUENCE turn_id_seq START 1",
    """CREATE TABLE adapters (
        adapter_id BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, run_id VARCHAR, modules VARCHAR NOT NULL,
        rank INTEGER NOT NULL, file VARCHAR NOT NULL, checksum VARCHAR NOT NULL, nbytes BIGINT NOT NULL,
        model_fingerprint VARCHAR NOT NULL, created_at TIMESTAMP)""",
    """CREATE TABLE conversations (
        turn_id BIGINT PRIMARY KEY, session_id VARCHAR NOT NULL, ts TIMESTAMP, role VARCHAR NOT NULL,
        content VARCHAR NOT NULL, facts VARCHAR)""",
]
# Migration 3: what forgetting keeps (never the forgotten object itself: a salted-free sha256 of
# its normalised words, so later sleeps can verify it stays gone), and the link between a sleep's
# ledger run id and the Prefect flow run that drove it.
_SCHEMA_V3 = [
    "CREATE SEQUENCE forget_id_seq START 1",
    """CREATE TABLE forgotten (
        forget_id BIGINT PRIMARY KEY, subject VARCHAR NOT NULL, relation VARCHAR NOT NULL,
        object_sha VARCHAR NOT NULL, object_words INTEGER NOT NULL, reason VARCHAR NOT NULL,
        targets VARCHAR, stage INTEGER NOT NULL DEFAULT 0, created_at TIMESTAMP, updated_at TIMESTAMP)""",
    """CREATE TABLE sleep_runs (
        run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, flow_run_id VARCHAR, started_at TIMESTAMP,
        finished_at TIMESTAMP, outcome VARCHAR)""",
]
MIGRATIONS: list[tuple[int, list[str]]] = [(1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3)]
LATEST_VERSION = MIGRATIONS[-1][0]

FACT_COLS = "fact_id, subject, relation, object, stage, edit_id, source, created_at, updated_at"
EDIT_COLS = "edit_id, kind, scale, layers, rank, file, checksum, nbytes, model_fingerprint, created_at"
# Insertable audit/metric columns and their SQL types (used to type the bulk-insert lists).
AUDIT_COLS = {
    "run_id": "VARCHAR", "fact_id": "BIGINT", "ts": "TIMESTAMP", "raw_recall": "DOUBLE",
    "paraphrase_recall": "DOUBLE", "chat_recall": "DOUBLE", "healthy": "BOOLEAN",
}
METRIC_COLS = {
    "ts": "TIMESTAMP", "run_id": "VARCHAR", "stage": "VARCHAR", "name": "VARCHAR",
    "value": "DOUBLE", "fact_id": "BIGINT", "detail": "VARCHAR",
}
STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class FactRow:
    """One stored fact. ``stage`` 0 is freshly edited (MEMIT scale 1.0) ... 3 consolidated."""

    fact_id: int
    subject: str
    relation: str
    object: str
    stage: int
    edit_id: int | None
    source: str | None
    created_at: datetime | None
    updated_at: datetime | None

    @cached_property
    def fact(self) -> Fact:
        # Validated when it was stored; re-validating every row of every list_facts (a night asks
        # for them hundreds of times) was 5 % of the simulated year's time at 730 facts.
        return Fact.model_construct(subject=self.subject, relation=self.relation, object=self.object)


@dataclass(frozen=True)
class EditRow:
    """One weight edit; its low-rank factors live in ``file`` (relative to the home)."""

    edit_id: int
    kind: str
    scale: float
    layers: list[int]
    rank: int
    file: str
    checksum: str
    nbytes: int
    model_fingerprint: str
    created_at: datetime | None = None


def edit_from_row(row: tuple) -> EditRow:
    return EditRow(row[0], row[1], row[2], [int(x) for x in json.loads(row[3])], *row[4:])


