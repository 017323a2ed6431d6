"""What the ledger keeps of a forgotten fact: enough to prove it stays gone, never the object.

A row holds the subject and relation (what was asked to be forgotten), the sha256 of the
normalised object's words and their count, why (``forget`` or ``update`` to a new object), the
base model's own answers to the fact's prompts (``targets``: what the model says had it never
learned the fact; they never contain the object) and a consolidation stage like a fact's: sleep
trains the targets until the adapters alone no longer produce the object.

Checking an answer needs no object: every run of ``object_words`` consecutive normalised words
of the answer is hashed and compared (:func:`produces`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sleepwake.facts import Fact, normalize_answer, normalize_key
from sleepwake.storage.ledger import Ledger

FORGOTTEN_COLS = "forget_id, subject, relation, object_sha, object_words, reason, targets, stage, created_at, updated_at"


@dataclass(frozen=True)
class ForgottenRow:
    forget_id: int
    subject: str
    relation: str
    object_sha: str
    object_words: int
    reason: str  # "forget" | "update"
    targets: dict | None  # {"raw": [(prompt, base continuation)...], "chat": [(question, base reply)]}
    stage: int
    created_at: datetime | None
    updated_at: datetime | None

    def probe_fact(self) -> Fact:
        """The fact's subject and relation with a placeholder object (for prompts and questions)."""
        return Fact(subject=self.subject, relation=self.relation, object="-")


def object_hash(obj: str) -> tuple[str, int]:
    words = normalize_answer(obj).split()
    return hashlib.sha256(" ".join(words).encode("utf-8")).hexdigest(), len(words)


def produces(text: str, row: ForgottenRow) -> bool:
    """Whether ``text`` contains the forgotten object (word-bounded, normalised like recall)."""
    words = normalize_answer(text).split()
    n = row.object_words
    return any(hashlib.sha256(" ".join(words[i:i + n]).encode("utf-8")).hexdigest() == row.object_sha
               for i in range(len(words) - n + 1))


def list_forgotten(ledger: Ledger) -> list[ForgottenRow]:
    with ledger._connect() as con:
        rows = con.execute(f"SELECT {FORGOTTEN_COLS} FROM forgotten ORDER BY forget_id").fetchall()
    return [_row(r) for r in rows]


def insert(con, subject: str, relation: str, obj: str, reason: str, targets: dict | None) -> int:
    """Inside the caller's transaction (the forget commits everything together)."""
    sha, words = object_hash(obj)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    forget_id = int(con.execute("SELECT nextval('forget_id_seq')").fetchone()[0])
    con.execute(f"INSERT INTO forgotten ({FORGOTTEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                [forget_id, subject, relation, sha, words, reason, json.dumps(targets) if targets else None, now, now])
    return forget_id


def on_store(con, subject: str, relation: str, new_object: str, old: tuple[str, int] | None) -> None:
    """Inside the transaction that stores a fact: an update of a fact the adapters already learned
    (stage > 0) leaves a ``forgotten`` row for the old object; a forgotten row for the object now
    being stored (the person changed their mind back) is dropped."""
    keys = (normalize_key(subject), normalize_key(relation))
    sha, _ = object_hash(new_object)
    for forget_id, row_subject, row_relation, row_sha in con.execute(
            "SELECT forget_id, subject, relation, object_sha FROM forgotten").fetchall():
        if (normalize_key(row_subject), normalize_key(row_relation)) == keys and row_sha == sha:
            con.execute("DELETE FROM forgotten WHERE forget_id = ?", [forget_id])
    if old is not None and old[1] > 0 and normalize_answer(old[0]) != normalize_answer(new_object):
        insert(con, subject, relation, old[0], "update", None)


def _row(r: tuple) -> ForgottenRow:
    return ForgottenRow(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], json.loads(r[6]) if r[6] else None, int(r[7]), r[8], r[9])


def commit_forget(ledger: Ledger, row, remove_edit_ids, new_edits, adapter, targets: dict | None) -> tuple[int, int]:
    """ONE transaction: the fact row and its edit deleted, the same subject's other facts stored in
    their re-solved edits, the unlearning adapter (if any) recorded, a ``forgotten`` row inserted,
    and the object redacted from the conversation log. Returns (forget id, redacted turns)."""
    from sleepwake.storage.adapters import insert_adapter
    from sleepwake.storage.conversations import redact
    from sleepwake.storage.ledger import insert_edits

    with ledger._transaction() as con:
        con.execute("DELETE FROM facts WHERE fact_id = ?", [row.fact_id])
        insert_edits(con, new_edits, remove_edit_ids, source="forget")
        if adapter is not None:
            insert_adapter(con, adapter)
        forget_id = insert(con, row.subject, row.relation, row.object, "forget", targets)
        redacted = redact(con, row.object)
    return forget_id, redacted
