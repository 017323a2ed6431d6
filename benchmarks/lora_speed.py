"""SWS training speed: seconds per LoRA step and peak RSS under memory-saving variants, one run.

A night's sleep is mostly SWS, and SWS is mostly LoRA steps (night 1 of the 500-fact run with the
adapter on layers 4-11: 2,431 of 2,832 s). Gradient checkpointing and micro-batches change how a
step is computed, not what it computes, so the variants here should train the same adapter; this
prints, per variant, the median seconds per step (the first step left out), the process's peak
RSS, and how far its adapter is from the first variant's (max relative difference of the factors),
so a faster setting is only taken where it trains the same thing within the 2 GB night budget.

Each variant runs in its own process (its own peak RSS) on the same facts (pool seed 3, held out),
the same examples, anchors and protected subspaces as a real SWS pass on a fresh memory.

    .venv/bin/python benchmarks/lora_speed.py --facts 25 --steps 8 \\
        --variant default= --variant "no checkpointing=lora.checkpointing=false"
    .venv/bin/python benchmarks/lora_speed.py --facts 25 --kept 64 --steps 8 \\
        --variant default= --variant "memory anchors in the pool draw=lora.memory_anchor_batch=0"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(facts_n: int, seed: int, steps: int, overrides: list[str], out: Path, kept_n: int = 0) -> dict:
    """Train ``steps`` LoRA steps as SWS would; returns the figures and saves the factors to ``out``."""
    from safetensors.torch import save_file

    from sleepwake.config import load_settings
    from sleepwake.factpool import generate_pool
    from sleepwake.memory import Memory, lending, load_backend
    from sleepwake.sleep import consolidate, curriculum
    from sleepwake.storage.home import Home

    settings = load_settings(None, overrides)
    backend = load_backend(settings)
    pool = [p.fact for p in generate_pool(facts_n + kept_n, seed=seed)]
    facts, kept = pool[:facts_n], pool[facts_n:]  # kept: consolidated facts the memory anchors hold
    with lending(settings, backend), tempfile.TemporaryDirectory() as home:
        memory = Memory.open(Home.open(Path(home)), settings, backend=backend)
        settings = memory.settings  # lora.layers resolved for the model
        examples = curriculum.fact_examples(backend, facts, settings.sws.train_raw)
        examples += curriculum.identity_examples(backend, settings.sws.identity_weight)
        recipe = dataclasses.replace(consolidate.recipe(settings), max_steps=steps)
        anchored = consolidate.anchor_set(memory, facts, kept)
        protect = memory.lora_protection(recipe) if settings.lora.protect_energy > 0 else None
        stamps: list[float] = []
        started = time.perf_counter()
        outcome = backend.train_lora(examples, recipe, anchors=anchored, protect=protect,
                                     progress=lambda step, total, loss: stamps.append(time.perf_counter()))
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    save_file({f"{name}.{part}": t for name, (u, v) in outcome.factors.items() for part, t in (("u", u), ("v", v))},
              str(out))
    return {"examples": len(examples), "steps": outcome.steps, "first_step_s": round(stamps[0] - started, 2),
            "median_step_s": round(statistics.median(per_step), 2) if per_step else None,
            "last_loss": round(outcome.last_loss, 4),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def max_relative_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    return max(float((left[k] - right[k]).norm() / left[k].norm().clamp_min(1e-12)) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=25, help="facts whose SWS examples are trained")
    parser.add_argument("--seed", type=int, default=3, help="fact pool seed (3: held out)")
    parser.add_argument("--steps", type=int, default=8, help="LoRA steps per variant")
    parser.add_argument("--kept", type=int, default=0, help="more pool facts whose chat answers the memory "
                        "anchors hold (lora.memory_anchors), as SWS's consolidated facts (default 0)")
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDE[,OVERRIDE...]")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant here
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        overrides = [o for o in args.one.split(",") if o]
        print(json.dumps(run_one(args.facts, args.seed, args.steps, overrides, Path(args.out), args.kept)), flush=True)
        return
    folder = Path(tempfile.mkdtemp(prefix="lora-speed-"))
    first: Path | None = None
    for text in args.variant:
        name, _, overrides = text.partition("=")
        out = folder / f"{len(list(folder.iterdir()))}.safetensors"
        proc = subprocess.run([sys.executable, __file__, "--facts", str(args.facts), "--seed", str(args.seed),
                               "--steps", str(args.steps), "--kept", str(args.kept), "--variant", text, "--one",
                               overrides, "--out", str(out)],
                              capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            print(json.dumps({"variant": name, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        first = first or out
        row["factor_difference"] = round(max_relative_difference(first, out), 6)
        print(json.dumps({"variant": name, "settings": overrides, **row}), flush=True)


if __name__ == "__main__":
    main()
