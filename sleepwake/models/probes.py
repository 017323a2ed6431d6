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
import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Sequence

from sleepwake.config import ProbeConfig
from sleepwake.facts import Fact, normalize_answer
from sleepwake.models.backend import length_batches
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


def greedy_ids(backend, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy new tokens for many token prompts, batched by similar length, in input order."""
    out: list[list[int]] = [[] for _ in prompts]
    for picked in length_batches(prompts, max_new_tokens):
        for index, row in zip(picked, backend.generate_ids([prompts[i] for i in picked], max_new_tokens)):
            out[index] = list(row)
    return out


# A match followed by one of these can no longer be undone by the tokens after it (a letter could
# glue on: "Oslo" -> "Oslofjord"); a cut multi-byte character decodes to U+FFFD, not one of these.
_SETTLED_END = frozenset(string.whitespace + string.punctuation)


def answer_seen(backend, answers: Sequence[Sequence[str]]) -> Callable[[int, list[int]], bool]:
    """``done`` for ``generate_texts``: row i may stop once its text holds one of ``answers[i]``,
    word-bounded and settled (the match is then the same however the reply goes on)."""
    def done(row: int, tokens: list[int]) -> bool:
        text = backend.decode(tokens)
        return bool(text) and text[-1] in _SETTLED_END and any(answer_matches(text, a) for a in answers[row])
    return done


def generate_probes(backend, prompts: Sequence[str], max_new_tokens: int, answers: Sequence[Sequence[str]]) -> list[str]:
    """Greedy continuations of raw prompts, each allowed to stop once it holds one of its answers."""
    return backend.generate_texts([backend.encode(p) for p in prompts], max_new_tokens, done=answer_seen(backend, answers))


def chat_probes(backend, questions: Sequence[str], max_new_tokens: int, answers: Sequence[Sequence[str]]) -> list[str]:
    """Greedy chat replies to single questions, each allowed to stop once it holds one of its answers."""
    return backend.generate_texts([backend.chat_ids(q) for q in questions], max_new_tokens, done=answer_seen(backend, answers))


def raw_recall(backend, facts: Sequence[Fact], cfg: ProbeConfig) -> list[tuple[bool, str]]:
    budget = max(answer_budget(backend, f.object, cfg.extra_new_tokens) for f in facts)
    texts = generate_probes(backend, [f.prompt() for f in facts], budget, [[f.object] for f in facts])
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
    texts = generate_probes(backend, prompts, budget, [[facts[owner].object] for owner in owners])
    probes = [FactProbe(raw=answer_matches(text, f.object), raw_text=text) for text, f in zip(texts, facts)]
    if cfg.paraphrases:
        hits: dict[int, list[bool]] = {}
        for owner, text in zip(owners[len(facts):], texts[len(facts):]):
            hits.setdefault(owner, []).append(answer_matches(text, facts[owner].object))
        for index, probe in enumerate(probes):
            probe.paraphrase = sum(hits[index]) / len(hits[index])
    if cfg.chat:
        replies = chat_probes(backend, [chat_question(f) for f in facts], cfg.chat_max_new_tokens, [[f.object] for f in facts])
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
    replies = chat_probes(backend, [q["question"] for q in questions], cfg.chat_max_new_tokens, [q["answers"] for q in questions])
    hits = [any(answer_matches(reply, a) for a in q["answers"]) for q, reply in zip(questions, replies)]
    return sum(hits) / len(hits), hits
