"""Sleep benchmark: damage by unconstrained wake injection, then repair by full-sleep flows.

Convergence mode (default) prints, for the configured model (default: the bundled SmolLM2-135M):
- the injection trajectory (raw recall of all facts so far after each injection);
- per full-sleep cycle (the real Prefect flow, ephemeral API): raw recall, degraded, refreshed,
  pruned, perplexity and its drift from the base model, outcome, seconds.

    .venv/bin/python benchmarks/sleep.py --facts 30 --cycles 4 --seed 1
    .venv/bin/python benchmarks/sleep.py --facts 30 --wake-set memit.protect_related=false   # fully unconstrained wake

Cost mode prints seconds per full sleep for several fact counts (one fresh home each):

    .venv/bin/python benchmarks/sleep.py --cost 10,20,40 --seed 2

Seed 0 is the tuning pool; report numbers on another seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def inject_pool(home_dir: str, n: int, seed: int, config, overrides, trajectory: bool) -> list[float]:
    from sleepwake.config import load_settings
    from sleepwake.factpool import generate_pool
    from sleepwake.memory import Memory
    from sleepwake.models.probes import raw_recall
    from sleepwake.storage.home import Home

    settings = load_settings(config, overrides)
    pool = generate_pool(n, seed=seed)
    memory = Memory.open(Home.open(home_dir), settings)
    points = []
    for i, item in enumerate(pool, 1):
        outcome = memory.inject([item.fact], source="benchmark")[0]
        if trajectory:
            hits = raw_recall(memory.backend, [p.fact for p in pool[:i]], settings.probes)
            points.append(round(sum(ok for ok, _ in hits) / i, 4))
            print(f"fact {i:3d} {outcome.seconds:5.1f} s  recall so far {points[-1]:.3f}  {item.fact.prompt()} -> {item.object}",
                  file=sys.stderr)
    return points


def sleep_cycles(home_dir: str, cycles: int, config, overrides) -> list[dict]:
    from sleepwake.flows.full_sleep import full_sleep

    rows = []
    for cycle in range(1, cycles + 1):
        start = time.perf_counter()
        report = full_sleep(home=home_dir, config=config, overrides=overrides)
        rows.append({"cycle": cycle, "recall_before": report["raw_recall_before"], "recall_after": report["raw_recall_after"],
                     "degraded_before": report["degraded_before"], "degraded_after": report["degraded_after"],
                     "refreshed": report["refreshed"], "pruned": report["pruned"], "edits": report["edits"],
                     "ppl_before": report["perplexity_before"], "ppl_after": report["perplexity_after"],
                     "outcome": report["outcome"], "convergence": report["convergence"],
                     "seconds": round(time.perf_counter() - start, 1), "stage_seconds": report["stage_seconds"]})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def base_perplexity(home_dir: str, config, overrides) -> float:
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    memory = Memory.open(Home.open(home_dir), load_settings(config, overrides), writable=False)
    return memory.perplexity(base=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=30)
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="fact pool seed (0 = tuning pool)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="settings for wake and sleep")
    parser.add_argument("--wake-set", dest="wake_overrides", action="append", default=[], help="settings for the injection only")
    parser.add_argument("--cost", default=None, help="comma-separated fact counts: time one full sleep for each")
    parser.add_argument("--home", default=None)
    parser.add_argument("--resume", action="store_true", help="--home already holds the injected facts: only sleep")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    if args.cost:
        for n in [int(x) for x in args.cost.split(",")]:
            home_dir = tempfile.mkdtemp(prefix=f"sleepwake-cost{n}-")
            inject_pool(home_dir, n, args.seed, args.config, args.overrides + args.wake_overrides, trajectory=False)
            [row] = sleep_cycles(home_dir, 1, args.config, args.overrides)
            print(json.dumps({"facts": n, "sleep_seconds": row["seconds"], "refreshed": row["refreshed"],
                              "stage_seconds": row["stage_seconds"]}))
        return

    home_dir = args.home or tempfile.mkdtemp(prefix="sleepwake-sleep-")
    if args.resume:
        trajectory = None
    else:
        trajectory = inject_pool(home_dir, args.facts, args.seed, args.config, args.overrides + args.wake_overrides, True)
    rows = sleep_cycles(home_dir, args.cycles, args.config, args.overrides)
    base = base_perplexity(home_dir, args.config, args.overrides)
    for row in rows:
        row["drift_after"] = round(row["ppl_after"] / base - 1.0, 5)
    print(json.dumps({"facts": args.facts, "seed": args.seed, "trajectory": trajectory, "base_perplexity": round(base, 4),
                      "cycles": rows}, indent=1))


if __name__ == "__main__":
    main()
