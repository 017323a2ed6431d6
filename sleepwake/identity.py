"""The assistant's identity: a short fixed set of question/answer pairs it keeps.

Consolidation trains on them beside the facts (so sleep does not wash out who the assistant
says it is) and the chat uses them as its self-description. A user file may replace the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sleepwake.errors import InvalidInputError


@dataclass(frozen=True)
class IdentityPair:
    question: str
    answer: str


def load_identity(path: str | Path | None = None) -> list[IdentityPair]:
    """The bundled identity set, or the JSONL file at ``path`` ({"question", "answer"} per line)."""
    if path is None:
        text = resources.files("sleepwake").joinpath("data/identity.jsonl").read_text(encoding="utf-8")
        where = "bundled identity set"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(f"cannot read identity file {path}: {exc.strerror or exc}") from None
        where = str(path)
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            pairs.append(IdentityPair(str(data["question"]).strip(), str(data["answer"]).strip()))
        except (ValueError, KeyError, TypeError):
            raise InvalidInputError(f"{where}, line {number}: expected {{\"question\": ..., \"answer\": ...}}") from None
    return pairs
