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

from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

from sleepwake.config import ProbeConfig
from sleepwake.factpool import RELATIONS
from sleepwake.facts import Fact, normalize_answer

GENERIC_LEADS = ("Here is a fact: {}", "As most people know, {}")
_BY_TEMPLATE = {relation.template: relation for relation in RELATIONS}


def answer_matches(continuation: str, obj: str) -> bool:
    """Word-bounded match of the normalised object inside the normalised continuation."""
    target = normalize_answer(obj)
    return bool(target) and f" {target} " in f" {normalize_answer(continuation)} "


def paraphrase_prompts(fact: Fact) -> list[str]:
    relation = _BY_TEMPLATE.get(fact.relation)
    if relation is not None:
        return [template.replace("{}", fact.subject) for template in relation.paraphrases]
    prompt = fact.prompt()
    return [lead.format(prompt) for lead in GENERIC_LEADS]


def chat_question(fact: Fact) -> str:
    relation = _BY_TEMPLATE.get(fact.relation)
    if relation is not None:
        return relation.question.replace("{}", fact.subject)
    return f'Complete this sentence with the right fact: "{fact.prompt()} ..."'


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


def raw_recall(backend, facts: Sequence[Fact], cfg: ProbeConfig) -> list[tuple[bool, str]]:
    budget = max(answer_budget(backend, f.object, cfg.extra_new_tokens) for f in facts)
    texts = backend.generate([f.prompt() for f in facts], budget)
    return [(answer_matches(text, f.object), text) for text, f in zip(texts, facts)]


def probe_facts(backend, facts: Sequence[Fact], cfg: ProbeConfig) -> list[FactProbe]:
    """Raw, paraphrase and chat recall of every fact (batched generation)."""
    if not facts:
        return []
    probes = [FactProbe(raw=ok, raw_text=text) for ok, text in raw_recall(backend, facts, cfg)]
    if cfg.paraphrases:
        prompts, owners = [], []
        for index, fact in enumerate(facts):
            for prompt in paraphrase_prompts(fact):
                prompts.append(prompt)
                owners.append(index)
        budget = max(answer_budget(backend, f.object, cfg.extra_new_tokens) for f in facts)
        hits: dict[int, list[bool]] = {}
        for owner, text in zip(owners, backend.generate(prompts, budget)):
            hits.setdefault(owner, []).append(answer_matches(text, facts[owner].object))
        for index, probe in enumerate(probes):
            probe.paraphrase = sum(hits[index]) / len(hits[index])
    if cfg.chat:
        replies = backend.chat([chat_question(f) for f in facts], cfg.chat_max_new_tokens)
        for probe, reply, fact in zip(probes, replies, facts):
            probe.chat, probe.chat_text = answer_matches(reply, fact.object), reply
    return probes


def reference_texts() -> list[str]:
    text = resources.files("sleepwake").joinpath("data/reference.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def perplexity(backend, cfg: ProbeConfig) -> float:
    return backend.perplexity(reference_texts(), cfg.perplexity_chunk_tokens, cfg.perplexity_max_chunks)


def neighbour_answers(backend, prompts: Sequence[str], max_new_tokens: int = 4) -> list[str]:
    """Greedy short answers, normalised: the unit specificity compares before and after edits."""
    return [normalize_answer(text) for text in backend.generate(list(prompts), max_new_tokens)]
