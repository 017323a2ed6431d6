"""Probes: does the model know a fact, through which pathway, and what did an edit cost?

- raw recall: greedy completion of the fact's prompt contains the object (word-bounded,
  accent/case/punctuation-insensitive). Greedy, never sampled: sampling made the reference
  project's recall numbers noisy.
- paraphrase recall: the same on other phrasings (the synthetic pool's relation paraphrases,
  or neutral lead-ins for free-form relations).
- chat recall: a question through the chat template, empty context.
- specificity: prompts about OTHER subjects with the same relation keep their greedy answer.
- perplexity: on ``sleepwake/data/reference.txt``, held-out prose the project owns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

from sleepwake.config import ProbeConfig
from sleepwake.facts import Fact, normalize_answer
from sleepwake.relations import chat_question, paraphrase_prompts  # noqa: F401  (re-exported)

def answer_matches(continuation: str, obj: str) -> bool:
    """Word-bounded match of the normalised object inside the normalised continuation."""
    target = normalize_answer(obj)
    return bool(target) and f" {target} " in f" {normalize_answer(continuation)} "


@dataclass
class FactProbe:
    """Outcome of probing one fact."""

    raw: bool
    raw_text: str
    paraphrase: float | None = None  # share of paraphrases recalled
    chat: bool | None = None
    chat_text: str | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"raw": self.raw, "raw_text": self.raw_text, "paraphrase": self.paraphrase,
                "chat": self.chat, "chat_text": self.chat_text}


def answer_budget(backend, obj: str, extra: int) -> int:
    return len(backend.encode(" " + obj, special=False)) + extra


def greedy_ids(backend, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int = 32) -> list[list[int]]:
    """Greedy new tokens for many token prompts, batched by similar length, in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        picked = order[start:start + batch_size]
        for index, row in zip(picked, backend.generate_ids([prompts[i] for i in picked], max_new_tokens)):
            out[index] = list(row)
    return out


def raw_recall(backend, facts: Sequence[Fact], cfg: ProbeConfig) -> list[tuple[bool, str]]:
    budget = max(answer_budget(backend, f.object, cfg.extra_new_tokens) for f in facts)
    texts = backend.generate([f.prompt() for f in facts], budget)
    return [(answer_matches(text, f.object), text) for text, f in zip(texts, facts)]


def probe_facts(backend, facts: Sequence[Fact], cfg: ProbeConfig) -> list[FactProbe]:
    """Raw, paraphrase and chat recall of every fact: raw prompts and paraphrases in ONE batched
    greedy generation (same short budget), chat questions in another (a reply needs more tokens)."""
    if not facts:
        return []
    prompts, owners = [f.prompt() for f in facts], list(range(len(facts)))
    if cfg.paraphrases:
        for index, fact in enumerate(facts):
            for prompt in paraphrase_prompts(fact):
                prompts.append(prompt)
                owners.append(index)
    budget = max(answer_budget(backend, f.object, cfg.extra_new_tokens) for f in facts)
    texts = backend.generate(prompts, budget)
    probes = [FactProbe(raw=answer_matches(text, f.object), raw_text=text) for text, f in zip(texts, facts)]
    if cfg.paraphrases:
        hits: dict[int, list[bool]] = {}
        for owner, text in zip(owners[len(facts):], texts[len(facts):]):
            hits.setdefault(owner, []).append(answer_matches(text, facts[owner].object))
        for index, probe in enumerate(probes):
            probe.paraphrase = sum(hits[index]) / len(hits[index])
    if cfg.chat:
        replies = backend.chat([chat_question(f) for f in facts], cfg.chat_max_new_tokens)
        for probe, reply, fact in zip(probes, replies, facts):
            probe.chat, probe.chat_text = answer_matches(reply, fact.object), reply
    return probes


def _reference_text() -> str:
    return resources.files("sleepwake").joinpath("data/reference.txt").read_text(encoding="utf-8")


def reference_texts() -> list[str]:
    return [p.strip() for p in _reference_text().split("\n\n") if p.strip()]


def reference_digest() -> str:
    """Short sha256 of the perplexity corpus (part of the perplexity cache key)."""
    return hashlib.sha256(_reference_text().encode("utf-8")).hexdigest()[:12]


def perplexity(backend, cfg: ProbeConfig) -> float:
    return backend.perplexity(reference_texts(), cfg.perplexity_chunk_tokens, cfg.perplexity_max_chunks)


def neighbour_answers(backend, prompts: Sequence[str], max_new_tokens: int = 4) -> list[str]:
    """Greedy short answers, normalised: the unit specificity compares before and after edits."""
    return [normalize_answer(text) for text in backend.generate(list(prompts), max_new_tokens)]


def benchmark_questions() -> list[dict]:
    """The fixed general-knowledge set SWS's benchmark gate asks ({"question", "answers"})."""
    text = resources.files("sleepwake").joinpath("data/benchmark.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def benchmark(backend, cfg: ProbeConfig) -> tuple[float, list[bool]]:
    """Share of the fixed questions answered correctly through the chat template (greedy)."""
    questions = benchmark_questions()
    replies = backend.chat([q["question"] for q in questions], cfg.chat_max_new_tokens)
    hits = [any(answer_matches(reply, a) for a in q["answers"]) for q, reply in zip(questions, replies)]
    return sum(hits) / len(hits), hits
