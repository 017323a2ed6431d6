"""What consolidation trains on: chat Q&A and raw completions per fact, identity, replay.

Each fact yields (paper 4, "curation"):
- its chat question (the one the chat probe asks) and a subject question ("What do you know
  about X?", answered with every fact about X), both answered with the fact's statement;
- its raw-completion prompt continued by the object (``sws.train_raw``), so the LoRA also
  carries the raw pathway MEMIT is dissolved out of;
plus the identity Q&A pairs and a replay buffer (consolidated facts and logged conversation
turns, sampled with a priority that decays with age).

Texts become token-level :class:`TrainExample` rows through the backend's chat template.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timezone
from functools import partial
from typing import Callable, Sequence, TypeVar

from sleepwake.facts import Fact
from sleepwake.identity import load_identity
from sleepwake.models.recipes import TrainExample
from sleepwake.models.probes import chat_question

T = TypeVar("T")


def statement(fact: Fact) -> str:
    """The fact as one sentence: "Aria Nakamura lives in the city of Paris."."""
    return f"{fact.prompt()} {fact.object}."


def chat_example(backend, messages: Sequence[dict], answer: str, weight: float = 1.0) -> TrainExample:
    """The assistant's ``answer`` after ``messages`` (the end-of-turn token is a target too: the
    model must learn to stop, not ramble into the next turn)."""
    prompt = backend.chat_messages_ids(list(messages))
    return TrainExample(prompt, backend.encode(answer + backend.tokenizer.eos_token, special=False), weight)


def raw_example(backend, fact: Fact, weight: float = 1.0) -> TrainExample:
    """The raw prompt continued by the object alone. No full stop after it: on plain text a trained
    "." teaches "end the sentence after a noun", which the adapter then does in all prose. Measured
    (one SWS-like pass on 24 held-out pool facts, bundled model): the adapter's mean P(".") on the
    perplexity reference rose 0.475 percentage points with it, 0.099 without; drift 1.14 -> 1.00 %,
    raw recall 0.96 -> 1.00 (``docs/results.md``, "Where a long memory's drift comes from")."""
    return TrainExample(backend.encode(fact.prompt()), backend.encode(f" {fact.object}", special=False), weight)


def fact_examples(backend, facts: Sequence[Fact], train_raw: bool, weight: float = 1.0) -> list[TrainExample]:
    """Chat question, subject question and (optionally) raw completion for every fact."""
    by_subject: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        by_subject[fact.subject].append(fact)
    examples = []
    for fact in facts:
        examples.append(chat_example(backend, [_user(chat_question(fact))], statement(fact), weight))
        if train_raw:
            examples.append(raw_example(backend, fact, weight))
    for subject, group in by_subject.items():
        answer = " ".join(statement(f) for f in group)
        examples.append(chat_example(backend, [_user(f"What do you know about {subject}?")], answer, weight))
    return examples


def identity_examples(backend, weight: float, path: str | None = None) -> list[TrainExample]:
    if weight <= 0:
        return []
    return [chat_example(backend, [_user(p.question)], p.answer, weight) for p in load_identity(path)]


def replay_examples(backend, consolidated: Sequence[tuple[Fact, datetime | None]], turns: Sequence[dict],
                    size: int, decay: float, seed: int) -> list[TrainExample]:
    """Up to ``size`` replay items drawn without replacement, priority ``decay ** age_days``.

    ``consolidated``: (fact, when it was last changed) of facts no longer trained directly;
    ``turns``: logged {"user", "assistant", "ts"} exchanges from earlier conversations.
    Only the drawn items are tokenized: a night's cost must not grow with the whole memory.
    """
    if size <= 0:
        return []
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    items: list[tuple[float, Callable[[], TrainExample]]] = []
    for fact, when in consolidated:
        items.append((_priority(when, now, decay), partial(rehearsal_example, backend, fact)))
    for turn in turns:
        items.append((_priority(turn.get("ts"), now, decay), partial(_turn_replay, backend, turn)))
    return [build() for build in _weighted_sample(items, size, random.Random(seed))]


def rehearsal_example(backend, fact: Fact) -> TrainExample:
    """A fact's chat question answered with its statement: how a fact is replayed or rehearsed."""
    return chat_example(backend, [_user(chat_question(fact))], statement(fact))


def _turn_replay(backend, turn: dict) -> TrainExample:
    return chat_example(backend, [_user(turn["user"])], turn["assistant"])


def _priority(when: datetime | None, now: datetime, decay: float) -> float:
    age_days = max(0.0, (now - when).total_seconds() / 86400.0) if when else 0.0
    return max(decay ** age_days, 1.0e-6)


def _weighted_sample(items: list[tuple[float, T]], size: int, rng: random.Random) -> list[T]:
    """Efraimidis-Spirakis: keys u^(1/w), keep the largest ``size`` (weighted, no replacement)."""
    keyed = sorted(((rng.random() ** (1.0 / weight), index) for index, (weight, _) in enumerate(items)), reverse=True)
    return [items[index][1] for _, index in keyed[:size]]


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def waiting_longest(rows, cap: int) -> list:
    """At most ``cap`` (0: all) of ``rows``, those stored or refreshed longest ago first: every fact
    is trained within a bounded number of nights, and a backlog never makes one pass larger."""
    order = sorted(rows, key=lambda r: (r.updated_at is not None, r.updated_at or 0, r.fact_id))  # undated first
    return order[:cap] if cap else order
