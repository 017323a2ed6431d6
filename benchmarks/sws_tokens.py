"""Tokens in one SWS training step on a home: examples, pool anchors, memory anchors, and the chat template's share.

SWS's steps are compute-bound on a CPU, so a night's training costs what its tokens cost. This opens a home
(a copy: nothing is written to it) and counts, with the tokenizer only (no forward pass), what a step of the
default recipe carries: ``lora.batch_size`` examples (the newest ``--facts`` facts' chat, subject and raw
examples mixed with the night's replay as a pass draws them), ``lora.anchor_batch`` pool anchors and
``lora.memory_anchor_batch`` memory anchors (consolidated facts in chat and, with ``lora.memory_anchor_raw``,
raw form), and how many of those tokens are the chat template's opening (its system prompt and user tag,
repeated at the head of every chat sequence), which ``lora.shared_opening`` computes once a step.

    .venv/bin/python benchmarks/sws_tokens.py --home /path/to/home --facts 64
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from sleepwake.config import load_settings
from sleepwake.memory import Memory
from sleepwake.sleep import curriculum, replay
from sleepwake.sleep.session import SleepSession
from sleepwake.storage.home import Home


def opening(backend) -> list[int]:
    """The chat template's tokens before the user's words: what every chat sequence starts with."""
    first, second = backend.chat_ids("A"), backend.chat_ids("B")
    return first[: next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)]


def mean_lengths(sequences: list[list[int]], head: list[int]) -> tuple[float, float]:
    """(mean tokens, mean tokens of ``head`` they start with) over ``sequences``."""
    starts = [len(head) if seq[: len(head)] == head else 0 for seq in sequences]
    return statistics.mean(len(s) for s in sequences), statistics.mean(starts)


def count(home: str, facts: int, overrides: list[str]) -> dict:
    settings = load_settings(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "home"
        shutil.copytree(home, copy, ignore=shutil.ignore_patterns("snapshots", "write.lock"))
        memory = Memory.open(Home.open(copy), settings)
        backend, cfg, rows = memory.backend, settings.lora, memory.ledger.list_facts()
        newest = [r.fact for r in sorted(rows, key=lambda r: r.fact_id)[-facts:]]
        examples = curriculum.fact_examples(backend, newest, settings.sws.train_raw)
        examples += replay.shared_examples(SleepSession(memory, "count"))[0]
        kept = [r.fact for r in rows if r.stage >= 1][: cfg.memory_anchors]
        held = [curriculum.rehearsal_example(backend, f) for f in kept]
        held += [curriculum.raw_example(backend, f) for f in kept] if cfg.memory_anchor_raw else []
        head = opening(backend)
        parts = {"examples": (cfg.batch_size, mean_lengths([x.prompt + x.target for x in examples], head)),
                 "pool anchors": (cfg.anchor_batch, mean_lengths([a.ids for a in memory.base_anchors()], head)),
                 "memory anchors": (cfg.memory_anchor_batch if held else 0,
                                    mean_lengths([x.prompt + x.target for x in held], head) if held else (0.0, 0.0))}
    step = {name: round(n * length, 1) for name, (n, (length, _)) in parts.items()}
    total, template = sum(step.values()), sum(n * start for n, (_, start) in parts.values())
    return {"facts": len(rows), "step_tokens": round(total, 1), **step,
            "template_tokens": round(template, 1), "template_share": round(template / total, 3),
            "without_memory_anchors": round(total - step["memory anchors"], 1), "opening_tokens": len(head),
            # what a step computes with lora.shared_opening: the opening once, not at the head of every chat row
            "computed_with_shared_opening": round(total - template + len(head), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="the home to count on (copied; the original is not touched)")
    parser.add_argument("--facts", type=int, default=64, help="newest facts standing for a night's trained ones "
                        "(sws.max_trained's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a settings override")
    args = parser.parse_args()
    for name, value in count(args.home, args.facts, args.set).items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
