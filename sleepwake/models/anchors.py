"""KL anchors: what keeps a consolidation LoRA from changing anything but the facts it learns.

An anchor is a token sequence plus the BASE model's next-token distribution at each of its
positions (top ``k`` log-probabilities; the rest of the mass as one bucket). Training adds
``KL(base || adapted)`` over a few anchors per step, so the adapter is pulled back towards the
base model everywhere it has no reason to differ, and drift cannot pile up over many nights (each
night anchors to the base, not to the night before).

The sequences are the base model's OWN text in the formats people use (never the locality probe
set or the perplexity reference, which measure the result):

- ``prose``: continuations of neutral openings;
- ``question``: questions the model writes itself, with its own raw continuation;
- ``chat``: a question the model wrote, asked through the chat template, and its own reply;
- ``instruction``: an instruction the model wrote, through the chat template, and its reply.

``contrast`` anchors are built per pass: each trained fact's raw prompt and chat question for a
look-alike subject (``entities.contrast_subjects``), so the adapter learns that the fact belongs to
its subject and nobody else (what the leak metric catches).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

QUESTION_STARTS = ("What is", "How do", "Why does", "Can you", "Where is", "Who was", "When did", "Which")
INSTRUCTION_STARTS = ("Write a", "Give me", "List three", "Explain how", "Describe the", "Summarize", "Tell me")
PROSE_STARTS = ("The", "In", "A", "It", "When", "This", "We", "One", "After", "My", "There", "If")
FORMATS = ("prose", "question", "chat", "instruction")


@dataclass
class Anchor:
    ids: list[int]
    start: int  # first position whose next-token distribution is anchored
    top_ids: torch.Tensor  # (len(ids) - start, k) long: the base model's top-k next tokens
    top_logp: torch.Tensor  # (len(ids) - start, k) float: their log-probabilities
    held: bool = False  # a consolidated fact's answer (``lora.memory_anchor_batch`` draws these apart)

    def as_json(self) -> dict:
        return {"ids": self.ids, "start": self.start, "top_ids": self.top_ids.tolist(),
                "top_logp": [[round(x, 5) for x in row] for row in self.top_logp.tolist()]}

    @classmethod
    def from_json(cls, data: dict) -> "Anchor":
        return cls(data["ids"], data["start"], torch.tensor(data["top_ids"], dtype=torch.long),
                   torch.tensor(data["top_logp"], dtype=torch.float32))


def anchor_texts(backend, formats: Sequence[str], per_format: int, tokens: int, seed: int) -> list[tuple[list[int], int]]:
    """(ids, anchored-from position) of the base model's own text in ``formats`` (sampled, seeded)."""
    rng = random.Random(seed)
    out: list[tuple[list[int], int]] = []
    for fmt in formats:
        if fmt == "prose":
            prompts = [backend.encode(rng.choice(PROSE_STARTS)) for _ in range(per_format)]
            out += [(p + c, 1) for p, c in zip(prompts, backend.sample_ids(prompts, tokens, seed))]
        elif fmt == "question":
            asked = own_lines(backend, QUESTION_STARTS, per_format, rng, seed, "?")
            prompts = [backend.encode(q) for q in asked]
            out += [(p + c, 1) for p, c in zip(prompts, backend.sample_ids(prompts, tokens, seed + 1))]
        elif fmt in ("chat", "instruction"):
            starts = QUESTION_STARTS if fmt == "chat" else INSTRUCTION_STARTS
            asked = own_lines(backend, starts, per_format, rng, seed + 2, "?" if fmt == "chat" else ".")
            prompts = [backend.chat_messages_ids([{"role": "user", "content": q}]) for q in asked]
            out += [(p + c, 1) for p, c in zip(prompts, backend.sample_ids(prompts, tokens, seed + 3))]
        else:
            raise ValueError(f"unknown anchor format {fmt!r}; known: {', '.join(FORMATS)}")
    return out


def own_lines(backend, starts: Sequence[str], count: int, rng: random.Random, seed: int, end: str) -> list[str]:
    """Short lines the model writes itself from the given openings, cut at ``end`` or a newline."""
    openings = [rng.choice(starts) for _ in range(count)]
    texts = [backend.decode(ids) for ids in backend.sample_ids([backend.encode(o) for o in openings], 24, seed)]
    lines = []
    for opening, text in zip(openings, texts):
        line = (opening + text).split("\n")[0]
        cut = line.find(end)
        lines.append((line[: cut + 1] if cut > 0 else line).strip() or opening)
    return lines


@torch.no_grad()
def teacher(backend, texts: Sequence[tuple[list[int], int]], k: int, tokens: int = 256) -> list[Anchor]:
    """The current weights' (the caller composes the base model) top-k next-token log-probs, in the order of
    ``texts``. Texts of like length share a forward of at most ``tokens`` padded tokens: a night's anchor sets are
    hundreds of short answers, and one forward each was a few percent of the night; the bound keeps the
    (rows, longest, vocab) logits near 50 MB on a 49k vocabulary, and each row's softmax is taken apart."""
    anchors: dict[int, Anchor] = {}
    for run in length_runs([len(ids) for ids, _ in texts], tokens):
        logits = backend.next_token_logits([texts[i][0] for i in run])  # (rows, longest, vocab)
        for row, i in zip(logits, run):
            ids, start = texts[i]
            top = row[start - 1 : len(ids) - 1].log_softmax(-1).topk(k, dim=-1)  # (n, k)
            anchors[i] = Anchor(list(ids), start, top.indices.cpu(), top.values.float().cpu())
    return [anchors[i] for i in range(len(texts))]


def length_runs(lengths: Sequence[int], tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length, in runs whose rows times longest stay within ``tokens`` (a longer
    row runs alone)."""
    runs: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        if runs and (len(runs[-1]) + 1) * lengths[i] <= tokens:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def kl_to_teacher(student_logp: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position with a top-k teacher; the teacher's remaining mass is
    one bucket against the student's remaining mass. student_logp (n, V); top_* (n, k)."""
    q_top = student_logp.gather(-1, top_ids)  # (n, k)
    p_top = top_logp.exp()
    p_rest = (1.0 - p_top.sum(-1)).clamp_min(1e-6)
    q_rest = torch.log((1.0 - q_top.exp().sum(-1)).clamp_min(1e-6))
    return (p_top * (top_logp - q_top)).sum(-1) + p_rest * (torch.log(p_rest) - q_rest)  # (n,)


def contrast_texts(backend, facts, per_fact: int, question_of) -> list[tuple[list[int], int]]:
    """Raw prompts and chat questions of each fact's relation for look-alike subjects."""
    from sleepwake.facts import Fact
    from sleepwake.models.entities import contrast_subjects

    out = []
    for fact in facts:
        for other in contrast_subjects(fact.subject, per_fact):
            twin = Fact(subject=other, relation=fact.relation, object=fact.object)
            out.append((backend.encode(twin.prompt()), 1))
            out.append((backend.chat_messages_ids([{"role": "user", "content": question_of(twin)}]), 1))
    return out
