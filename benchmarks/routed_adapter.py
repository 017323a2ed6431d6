"""Routed against merged adapter on one home: drift, recall, leak, and where the router fires.

Opens HOME read-only three ways - the adapter merged into the weights (``lora.routing=off``),
routed by subject (``lora.routing=subject``), and no adapter at all (base + MEMIT edits) - and
prints one JSON document: perplexity drift against the base model, raw and chat recall over every
stored fact, the look-alike leak (a look-alike subject's chat question answered with the fact's object), and
the router's similarity on the model's own text (its calibration), the reference corpus, the
stored facts' chat questions, their look-alikes and the locality prompts.

    .venv/bin/python benchmarks/routed_adapter.py HOME
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sleepwake.config import load_settings
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models import locality, probes
from sleepwake.models.backend import text_chunks
from sleepwake.models.entities import contrast_subjects
from sleepwake.models.routing import block_inputs
from sleepwake.relations import chat_question
from sleepwake.storage.home import Home


def measure(memory: Memory, base_ppl: float, others: list[tuple[Fact, Fact]]) -> dict:
    start = time.perf_counter()
    backend, cfg = memory.backend, memory.settings.probes
    ppl = probes.perplexity(backend, cfg)
    found = probes.probe_facts(backend, memory.facts(), cfg.model_copy(update={"paraphrases": False}))
    replies = backend.chat([chat_question(other) for other, _ in others], cfg.chat_max_new_tokens)
    leak = sum(probes.answer_matches(r, fact.object) for r, (_, fact) in zip(replies, others)) / max(len(others), 1)
    return {"drift_pct": round(100 * (ppl / base_ppl - 1), 2), "raw": round(sum(p.raw for p in found) / len(found), 3),
            "chat": round(sum(bool(p.chat) for p in found) / len(found), 3), "lookalike_leak": round(leak, 3),
            "seconds": round(time.perf_counter() - start, 1)}


def highest(memory: Memory, sequences: list[list[int]]) -> torch.Tensor:
    """Per sequence, the router's highest similarity over its positions."""
    router = memory.backend.routed.router
    return torch.stack([router.similarity(s).max() for s in block_inputs(memory.backend, sequences, router.layer)])


def spread(values: torch.Tensor, threshold: float) -> dict:
    return {"min": round(float(values.min()), 3), "median": round(float(values.median()), 3),
            "max": round(float(values.max()), 3), "share_routed": round(float((values >= threshold).float().mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--set", action="append", default=[], help="extra settings (key=value)")
    args = parser.parse_args()
    routed = Memory.open(Home(args.home), load_settings(None, [*args.set, "lora.routing=subject"]), writable=False)
    backend, threshold = routed.backend, routed.settings.lora.route_threshold
    if getattr(backend, "routed", None) is None:
        raise SystemExit(f"{args.home} holds no adapter to route (a home after at least one full sleep)")
    facts = routed.facts()
    others = [(Fact(subject=o, relation=f.relation, object=f.object), f) for f in facts for o in contrast_subjects(f.subject, 1)]
    cfg = routed.settings.probes
    where = {
        "model_own_text": [a.ids for a in routed.base_anchors()],
        "reference_chunks": text_chunks(backend, probes.reference_texts(), cfg.perplexity_chunk_tokens, cfg.perplexity_max_chunks),
        "stored_chat_questions": [backend.chat_ids(chat_question(f)) for f in facts],
        "lookalike_chat_questions": [backend.chat_ids(chat_question(o)) for o, _ in others],
        "locality_prompts": [backend.chat_ids(p.prompt) if p.format in ("chat", "instruction") else backend.encode(p.prompt)
                             for p in locality.load_prompts()],
    }
    report: dict = {"home": str(args.home), "facts": len(facts), "threshold": threshold,
                    "router_layer": backend.routed.router.layer, "keys": len(backend.routed.router.keys),
                    "similarity": {k: spread(highest(routed, v), threshold) for k, v in where.items()}}
    routed.compose(skip=[e.edit_id for e in routed.edits], with_adapters=False)
    base_ppl = probes.perplexity(backend, cfg)
    routed.compose()
    report["routed"] = measure(routed, base_ppl, others)
    routed.compose(with_adapters=False)
    report["no_adapter"] = measure(routed, base_ppl, others)
    merged = Memory.open(Home(args.home), load_settings(None, [*args.set, "lora.routing=off"]), writable=False, backend=backend)
    report["merged"] = measure(merged, base_ppl, others)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
