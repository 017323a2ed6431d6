"""Where a wake's time goes: v* against the rest, batched and one by one, and v* in bfloat16.

Prints one JSON document, all from one process on the same held-out facts (pool seed 3):

- ``inject`` of N facts into a fresh home batched, then the same facts one by one into another,
  each split into the v* optimisation (``editor.optimize_targets``, timed around every call) and
  everything else (keys, contrast keys, the solves, factor files, ledger, recompose);
- the v* of those facts alone, float32 against ``torch.autocast(bfloat16)`` on the same rows, with
  its steps, the two deltas' cosine similarity and the five ops with the most CPU time in each
  (``torch.profiler``, on the first chunk of facts): a CPU with bfloat16 matrix units (AMX)
  multiplies faster in bfloat16, and this shows whether that reaches the optimisation as a whole.

The key statistics and contexts are loaded (or built) before any clock starts.

    .venv/bin/python benchmarks/wake_profile.py --facts 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time

import torch


def timed_inject(memory, facts, one_by_one: bool) -> dict:
    """Seconds of ``memory.inject`` and of the v* inside it."""
    from sleepwake.models import editor

    spent = [0.0]
    original = editor.optimize_targets

    def clocked(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    editor.optimize_targets = clocked
    try:
        start = time.perf_counter()
        memory.inject(facts, one_by_one=one_by_one)
        total = time.perf_counter() - start
    finally:
        editor.optimize_targets = original
    n = len(facts)
    return {"seconds_per_fact": round(total / n, 3), "vstar_seconds_per_fact": round(spent[0] / n, 3),
            "rest_seconds_per_fact": round((total - spent[0]) / n, 3), "vstar_share": round(spent[0] / total, 3)}


def vstar_run(memory, facts, precision: str) -> tuple[torch.Tensor, dict]:
    """v* of ``facts`` on the memory's weights in ``precision``: timed over all of them, then
    profiled on the first chunk only (a profile of the whole run holds every op's record: GBs)."""
    from torch.profiler import ProfilerActivity, profile

    from sleepwake.models.editor import key_groups, optimize_targets, vstar_rows

    cfg = memory.settings.memit
    reps, owner = key_groups(facts)
    rows = vstar_rows(memory.backend, facts, memory.contexts(), owner)
    layer = cfg.edit_layers()[-1]
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    with autocast:
        start = time.perf_counter()
        deltas, _, stats = optimize_targets(memory.backend, rows, len(reps), layer, cfg)
        seconds = time.perf_counter() - start
        first = [row for row in rows if row.fact < cfg.vstar_facts]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            optimize_targets(memory.backend, first, min(cfg.vstar_facts, len(reps)), layer, cfg)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
    return deltas, {"seconds_per_fact": round(seconds / len(facts), 3), "mean_steps": stats["mean_steps"],
                    "max_final_nll": round(max(stats["nll"]), 4),
                    "first_chunk_top_ops_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--seed", type=int, default=3, help="fact pool seed (tuning used 0)")
    args = parser.parse_args()

    from sleepwake.config import load_settings
    from sleepwake.factpool import generate_pool
    from sleepwake.memory import Memory, load_backend
    from sleepwake.storage.home import Home

    settings = load_settings(None, [])
    backend = load_backend(settings)
    facts = [p.fact for p in generate_pool(args.facts, seed=args.seed)]
    report: dict = {"facts": args.facts, "threads": torch.get_num_threads(),
                    "bfloat16_matrix_units": bool(torch.cpu._is_amx_tile_supported())}
    for name, one_by_one in (("batched", False), ("one_by_one", True)):
        memory = Memory.open(Home.open(tempfile.mkdtemp(prefix=f"wake-profile-{name}-")), settings, backend=backend)
        memory.stats()  # the key statistics and contexts are built or loaded before the clock
        memory.contexts()
        report[name] = timed_inject(memory, facts, one_by_one)
    report["speedup"] = round(report["one_by_one"]["seconds_per_fact"] / report["batched"]["seconds_per_fact"], 2)
    print(json.dumps(report), file=sys.stderr, flush=True)  # the inject figures, should the rest fail
    memory = Memory.open(Home.open(tempfile.mkdtemp(prefix="wake-profile-vstar-")), settings, backend=backend)
    memory.stats()
    memory.contexts()
    deltas = {}
    for precision in ("float32", "bfloat16"):
        deltas[precision], report[f"vstar_{precision}"] = vstar_run(memory, facts, precision)
    cosine = torch.nn.functional.cosine_similarity(deltas["float32"], deltas["bfloat16"], dim=-1)
    report["vstar_bfloat16_cosine_to_float32"] = {"min": round(float(cosine.min()), 4), "mean": round(float(cosine.mean()), 4)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
