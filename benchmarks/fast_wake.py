"""Fast-wake benchmark: batched MEMIT against one edit per fact, the first run on an empty cache,
health on an unchanged home, and peak memory, all in one run (ratios on the same machine state).

Prints one JSON document. Every figure comes from the real CLI run as a subprocess (each one's
own peak RSS, read at its exit):

- first run: ``sleepwake inject S R O`` with an empty ``$SLEEPWAKE_CACHE`` (GGUF conversion, key
  statistics, contexts, the edit), its seconds, whether progress reached stderr, peak RSS;
- ``inject --facts`` of N held-out facts (pool seed 3; tuning used seed 0) batched and
  ``--one-by-one`` on fresh homes: seconds per fact, raw recall from a fresh process
  (``recall --json``) and perplexity drift (``status --json``);
- median seconds per fact for batches of 1, 10 and N;
- the same N facts with the key statistics of the previous default (32768 tokens) beside today's;
- ``health_check`` of an unchanged 20-fact home (a second nap: both perplexities come from the cache).

    .venv/bin/python benchmarks/fast_wake.py --facts 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAP = ("import resource, runpy, sys; sys.argv = ['sleepwake'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('sleepwake.cli', run_name='__main__')\n"
        "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
OLD_STATS = ["--set", "memit.covariance_tokens=32768", "--set", "memit.covariance_sample_length=128",
             "--set", "memit.covariance_shrinkage=1.0e-2"]


def cli(args: list[str], env: dict) -> tuple[dict | None, float, float, str]:
    """(JSON result or None, seconds, peak RSS in GB, stderr) of one sleepwake command."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAP, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"sleepwake {' '.join(args)} failed: {out.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in out.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    result = json.loads(out.stdout) if "--json" in args else None
    return result, seconds, round(peak / 1e6, 3), out.stderr


def facts_file(folder: Path, n: int, seed: int) -> Path:
    from sleepwake.factpool import generate_pool

    path = folder / f"facts-{n}-{seed}.jsonl"
    path.write_text("".join(json.dumps(p.fact.model_dump()) + "\n" for p in generate_pool(n, seed=seed)))
    return path


def wake(folder: Path, name: str, facts: Path, env: dict, extra: list[str]) -> dict:
    home = str(folder / name)
    result, seconds, peak, _ = cli(["inject", "--facts", str(facts), "--home", home, "--json", *extra], env)
    per_fact = [r["seconds"] for r in result["injected"]]
    settings = [arg for arg in extra if arg != "--one-by-one"]  # --set options; --one-by-one is inject's own
    recall, _, _, _ = cli(["recall", "--home", home, "--json", "--set", "probes.chat=false", *settings], env)
    status, _, _, _ = cli(["status", "--home", home, "--json", *settings], env)
    return {"facts": len(per_fact), "wall_seconds": round(seconds, 1), "seconds_per_fact": round(statistics.median(per_fact), 3),
            "raw_recall": recall["summary"]["raw"], "paraphrase_recall": round(recall["summary"].get("paraphrase", 0), 3),
            "drift": status["perplexity_drift"], "peak_rss_gb": peak, "home": home}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--skip-first-run", action="store_true", help="reuse the current cache")
    parser.add_argument("--skip-old-statistics", action="store_true",
                        help="leave out the run with the previous default key statistics (32768 tokens: minutes of sampling)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sleepwake-fast-wake-"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    report: dict = {}
    if not args.skip_first_run:
        cold = {**env, "SLEEPWAKE_CACHE": str(folder / "empty-cache")}
        _, seconds, peak, err = cli(["inject", "Aria Nakamura", "lives in", "Thessaloniki", "--home", str(folder / "first")], cold)
        report["first_run"] = {"seconds": round(seconds, 1), "peak_rss_gb": peak,
                               "progress_on_stderr": "sampling the model's own text" in err and "%" in err}
        env = {**env, "SLEEPWAKE_CACHE": str(folder / "empty-cache")}  # warm from here on
    big = facts_file(folder, args.facts, args.seed)
    report["batched"] = wake(folder, "batched", big, env, [])
    report["one_by_one"] = wake(folder, "one-by-one", big, env, ["--one-by-one"])
    report["batch_10"] = wake(folder, "batch-10", facts_file(folder, 10, args.seed), env, [])
    report["speedup"] = round(report["one_by_one"]["seconds_per_fact"] / report["batched"]["seconds_per_fact"], 2)
    report["seconds_per_fact_by_batch"] = {"1": report["one_by_one"]["seconds_per_fact"],
                                           "10": report["batch_10"]["seconds_per_fact"],
                                           str(args.facts): report["batched"]["seconds_per_fact"]}
    if not args.skip_old_statistics:
        report["batched_old_statistics"] = wake(folder, "batched-old-stats", big, env, OLD_STATS)
    home20 = str(folder / "health-20")
    cli(["inject", "--facts", str(facts_file(folder, 20, args.seed + 1)), "--home", home20], env)
    cli(["nap", "--home", home20, "--json"], env)  # measures and caches the perplexities
    nap, _, _, _ = cli(["nap", "--home", home20, "--json"], env)
    report["health_check_unchanged_20_facts_seconds"] = nap["stage_seconds"]["health"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
