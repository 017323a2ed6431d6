"""Locality: does the rest of the model stay as it was? Measured on prompts unrelated to any fact.

``sleepwake/data/locality.jsonl`` holds 256 prompts the project owns, 64 in each format users
send: raw questions, chat questions, instructions (both through the chat template) and prose to
continue. The base model's own greedy answers (``answer_tokens`` tokens) are recorded once per
model and cached. Three metrics compare the current weights with them:

- ``locality``: teacher-forced, the share of the base answers' tokens that are still the argmax
  after the same prefix (EasyEdit's locality; 1.0 = unchanged);
- ``greedy_unchanged``: the share of prompts whose greedy answer is still token-for-token the same;
- ``leak``: the share of prompts whose answer now contains a stored fact's object that the base
  answer did not (a memory bleeding into unrelated answers).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from sleepwake.models import probes
from sleepwake.models.probes import answer_matches

log = logging.getLogger(__name__)
CHAT_FORMATS = ("chat", "instruction")


@dataclass(frozen=True)
class LocalityPrompt:
    format: str  # "raw" | "chat" | "instruction" | "prose"
    prompt: str


def _text() -> str:
    return resources.files("sleepwake").joinpath("data/locality.jsonl").read_text(encoding="utf-8")


def load_prompts() -> list[LocalityPrompt]:
    return [LocalityPrompt(**json.loads(line)) for line in _text().splitlines() if line.strip()]


def sample(prompts: Sequence[LocalityPrompt], size: int) -> list[int]:
    """Indices of a fixed, evenly spread sample (the same every night: a gate compares like with like)."""
    if size >= len(prompts):
        return list(range(len(prompts)))
    return [round(i * len(prompts) / size) for i in range(size)]


def prompt_ids(backend, item: LocalityPrompt) -> list[int]:
    if item.format in CHAT_FORMATS:
        return backend.chat_messages_ids([{"role": "user", "content": item.prompt}])
    return backend.encode(item.prompt)


def cache_path(cache_dir: Path, fingerprint: str, answer_tokens: int) -> Path:
    digest = hashlib.sha256(_text().encode("utf-8")).hexdigest()[:12]
    return cache_dir / "stats" / fingerprint / f"locality-{digest}-{answer_tokens}.json"


def record_base(backend, prompts: Sequence[LocalityPrompt], answer_tokens: int) -> list[list[int]]:
    """The greedy answer ids of the weights as composed now (the caller composes the base model)."""
    ids = [prompt_ids(backend, p) for p in prompts]
    return [trim(row, backend) for row in probes.greedy_ids(backend, ids, answer_tokens)]


def trim(row: list[int], backend) -> list[int]:
    """Cut an answer after its end-of-sequence token (the padding after it is not an answer)."""
    eos = backend.tokenizer.eos_token_id
    return row[: row.index(eos) + 1] if eos in row else row


def measure(backend, prompts: Sequence[LocalityPrompt], base: Sequence[list[int]], objects: Sequence[str]) -> dict:
    """The three metrics of the module doc on the weights as composed now."""
    ids = [prompt_ids(backend, p) for p in prompts]
    argmax = backend.argmax_tokens([i + b for i, b in zip(ids, base)], [len(i) for i in ids])
    same = sum(sum(int(a == t) for a, t in zip(got, want)) for got, want in zip(argmax, base))
    total = sum(len(b) for b in base)
    answers = [trim(row, backend) for row in probes.greedy_ids(backend, ids, max((len(b) for b in base), default=1))]
    greedy = sum(1 for a, b in zip(answers, base) if a == b)
    leaked = [i for i, (a, b) in enumerate(zip(answers, base)) if leaks(backend.decode(a), backend.decode(b), objects)]
    return {"locality": round(same / max(total, 1), 4), "greedy_unchanged": round(greedy / max(len(base), 1), 4),
            "leak": round(len(leaked) / max(len(base), 1), 4), "prompts": len(base),
            "leaked_prompts": [prompts[i].prompt for i in leaked]}


def leaks(answer: str, base_answer: str, objects: Sequence[str]) -> bool:
    return any(answer_matches(answer, o) and not answer_matches(base_answer, o) for o in objects)
