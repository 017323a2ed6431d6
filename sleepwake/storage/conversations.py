"""The conversation log: every chat turn in the ledger's ``conversations`` table (schema migration 2).

One row per message: ``role`` is ``user``, ``assistant``, ``summary`` (what a compaction put in
place of older turns) or ``command`` (a slash command and its outcome); ``facts`` is the JSON
list of facts extracted from a user turn with what happened to each. Like every ledger access,
each call is one short connection, so a sleep flow can open the same file between turns.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from sleepwake.storage.database import scalar
from sleepwake.storage.ledger import Ledger

ROLES = ("user", "assistant", "summary", "command")
# Written out in every query (no spliced SQL: tests/test_robustness.py scans for it).


def log_turn(ledger: Ledger, session_id: str, role: str, content: str, facts: list[dict] | None = None) -> int:
    """Append one message; returns its turn id."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    payload = json.dumps(facts, ensure_ascii=False) if facts is not None else None
    # nextval inside an explicit transaction: DuckDB does not persist an autocommit nextval.
    with ledger._transaction() as con:
        turn_id = int(scalar(con.execute("SELECT nextval('turn_id_seq')")))
        con.execute("INSERT INTO conversations (turn_id, session_id, ts, role, content, facts) VALUES (?, ?, ?, ?, ?, ?)",
                    [turn_id, session_id, now, role, content, payload])
    return turn_id


def session_turns(ledger: Ledger, session_id: str) -> list[dict]:
    """Every message of one session, oldest first, ``facts`` parsed."""
    with ledger._connect() as con:
        rows = con.execute("SELECT turn_id, session_id, ts, role, content, facts FROM conversations "
                           "WHERE session_id = ? ORDER BY turn_id", [session_id]).fetchall()
    return [_row(r) for r in rows]


def recent_turns(ledger: Ledger, limit: int = 50) -> list[dict]:
    """The newest ``limit`` messages across sessions, oldest first."""
    with ledger._connect() as con:
        rows = con.execute("SELECT * FROM (SELECT turn_id, session_id, ts, role, content, facts FROM conversations "
                           "ORDER BY turn_id DESC LIMIT ?) ORDER BY turn_id", [int(limit)]).fetchall()
    return [_row(r) for r in rows]


def _row(row: tuple) -> dict:
    turn_id, session_id, ts, role, content, facts = row
    return {"turn_id": int(turn_id), "session_id": session_id, "ts": ts.isoformat() if ts else None,
            "role": role, "content": content, "facts": json.loads(facts) if facts else None}


def redact(con, text: str, replacement: str = "[forgotten]") -> int:
    """Inside the caller's transaction: replace ``text`` (whole words, any case) in every logged
    message and its extracted facts. Returns how many messages changed."""
    # RE2 (DuckDB's regex engine) escapes only its metacharacters; Python's re.escape does more.
    literal = re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text.strip())
    pattern = r"(?i)\b" + literal + r"\b"
    changed = con.execute("SELECT count(*) FROM conversations WHERE regexp_matches(content, ?) "
                          "OR regexp_matches(coalesce(facts, ''), ?)", [pattern, pattern]).fetchone()[0]
    if changed:
        con.execute("UPDATE conversations SET content = regexp_replace(content, ?, ?, 'g'), "
                    "facts = regexp_replace(facts, ?, ?, 'g') WHERE regexp_matches(content, ?) "
                    "OR regexp_matches(coalesce(facts, ''), ?)",
                    [pattern, replacement, pattern, replacement, pattern, pattern])
    return int(changed)
