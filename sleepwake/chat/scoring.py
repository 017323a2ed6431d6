"""Precision and recall of fact extraction on labelled user turns (tests and benchmarks/extraction.py).

A labelled turn is one JSON line: ``text``, ``known_name`` (the user's name before the turn, or
null), ``expected_name`` (a name the turn establishes, or null), ``expected`` (facts, with the
subject the extractor should use) and a ``category``. A name counts as one item like a fact.
Items match on normalised subject and relation and on the object as recall probes compare it
(case, accents and punctuation folded): "a software engineer" != "software engineer".
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

from sleepwake.chat.extract import Extraction
from sleepwake.facts import normalize_answer, normalize_key


def load_turns(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def items(facts: list[dict], name: str | None) -> set[tuple[str, str, str]]:
    out = {(normalize_key(f["subject"]), normalize_key(f["relation"]), normalize_answer(f["object"])) for f in facts}
    if name:
        out.add(("", "name", normalize_answer(name)))
    return out


def score(turns: list[dict], extractor: Callable[[str, str | None], Extraction]) -> dict:
    """Micro precision/recall/F1 over all items, and every miss and false item by category."""
    tp = fp = fn = 0
    misses: dict[str, list] = defaultdict(list)
    for turn in turns:
        result = extractor(turn["text"], turn["known_name"])
        predicted = items([f.model_dump() for f in result.facts], result.name)
        expected = items(turn["expected"], turn["expected_name"])
        tp += len(predicted & expected)
        fp += len(predicted - expected)
        fn += len(expected - predicted)
        if predicted != expected:
            misses[turn["category"]].append({"id": turn["id"], "text": turn["text"],
                                             "missed": sorted(expected - predicted), "wrong": sorted(predicted - expected)})
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"turns": len(turns), "items": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1, "misses": dict(misses)}
