"""Recall probes against the generation batch's token budget (``GENERATION_BATCH_TOKENS``): chat and raw
probes of the same facts on the bundled model, each budget twice (the second pass in reverse order), and
whether the answers stay the same.

A night audits, gates and validates by such probes (night 10 of the 500-fact run: about 420 s of its 2,034),
so a larger batch would be a free speed-up if the cores had room for it.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_batch.py --facts 200 --budgets 2048 4096 8192 16384

Prints one line per pass and a JSON summary: the best of two seconds per budget, answers equal to the first
budget's. About eight minutes with the defaults on two cores.
"""

from __future__ import annotations

import argparse
import json
import time

import sleepwake.models.backend as backend_module
from sleepwake.config import load_settings
from sleepwake.factpool import generate_pool
from sleepwake.memory.core import load_backend
from sleepwake.models import probes
from sleepwake.relations import chat_question


def timed(backend, facts, cfg, budget: int) -> tuple[float, float, list[str], list[str]]:
    backend_module.length_batches.__defaults__ = (budget,)  # the budget every probe batch is cut to
    start = time.perf_counter()
    replies = probes.chat_probes(backend, [chat_question(f) for f in facts], cfg.chat_max_new_tokens,
                                 [[f.object] for f in facts])
    chat_s = time.perf_counter() - start
    start = time.perf_counter()
    raws = [text for _, text in probes.raw_recall(backend, facts, cfg)]
    return chat_s, time.perf_counter() - start, replies, raws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=200, help="synthetic pool facts probed (unknown to the model)")
    parser.add_argument("--seed", type=int, default=7, help="pool seed")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 8192, 16384], help="tokens per batch")
    args = parser.parse_args()
    settings = load_settings(None, [])
    backend = load_backend(settings)
    facts = [p.fact for p in generate_pool(args.facts, seed=args.seed)]
    default = backend_module.length_batches.__defaults__
    seconds: dict[int, list[tuple[float, float]]] = {b: [] for b in args.budgets}
    answers: dict[int, tuple[list[str], list[str]]] = {}
    try:
        for order in (args.budgets, args.budgets[::-1]):
            for budget in order:
                chat_s, raw_s, replies, raws = timed(backend, facts, settings.probes, budget)
                seconds[budget].append((chat_s, raw_s))
                answers.setdefault(budget, (replies, raws))
                print(f"budget {budget}: chat {chat_s:.1f} s, raw {raw_s:.1f} s", flush=True)
    finally:
        backend_module.length_batches.__defaults__ = default
    first = answers[args.budgets[0]]
    print(json.dumps({str(b): {"chat_s": round(min(c for c, _ in seconds[b]), 2), "raw_s": round(min(r for _, r in seconds[b]), 2),
                               "same_chat": sum(x == y for x, y in zip(answers[b][0], first[0])),
                               "same_raw": sum(x == y for x, y in zip(answers[b][1], first[1]))}
                      for b in args.budgets}, indent=1))


if __name__ == "__main__":
    main()
