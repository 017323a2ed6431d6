"""What every SWS round trains beside tonight's facts: identity pairs and a bounded replay.

The replay mixes older (consolidated) facts and logged wake conversation turns, sampled by a
priority that decays with age (``sws.replay_size``, ``sws.replay_decay``), so a night's training
stays the same size however large the memory grows.
"""

from __future__ import annotations

from datetime import datetime

from sleepwake.sleep import curriculum
from sleepwake.sleep.session import SleepSession
from sleepwake.storage import conversations


def shared_examples(session: SleepSession) -> tuple[list, int]:
    """Identity pairs and the bounded replay buffer, as token examples; returns (examples, replay items)."""
    replay = replay_examples(session)
    return curriculum.identity_examples(session.memory.backend, session.settings.sws.identity_weight) + replay, len(replay)


def replay_examples(session: SleepSession) -> list:
    """The bounded replay of older (consolidated) facts and logged turns (seeded)."""
    memory, cfg = session.memory, session.settings.sws
    older = [(r.fact, r.updated_at) for r in memory.ledger.list_facts() if r.stage >= 1]
    turns = conversation_turns(memory.ledger)
    return curriculum.replay_examples(memory.backend, older, turns, cfg.replay_size, cfg.replay_decay, session.night_seed())


def conversation_turns(ledger, limit: int = 200) -> list[dict]:
    """The latest logged (user, assistant) exchanges of the wake conversation, for replay."""
    rows = conversations.recent_turns(ledger, limit * 2)
    turns = []
    for message, reply in zip(rows, rows[1:]):
        if (message["role"] == "user" and reply["role"] == "assistant"
                and message["session_id"] == reply["session_id"] and reply["content"].strip()):
            turns.append({"user": message["content"], "assistant": reply["content"], "ts": message["ts"] and datetime.fromisoformat(message["ts"])})
    return turns[-limit:]
