"""Wake settings side by side on one batch: recall and drift per variant, two runs at a time.

Each variant injects the same N facts (``--seed``: 0 is the tuning pool, 3 held out) with
``inject --facts`` into a fresh home and reads raw and paraphrase recall (``recall --json``) and
perplexity drift (``status --json``) from fresh processes, through ``fast_wake.wake``. Two variants
run at once with one thread each (2 cores), so the seconds are contended; the results file is
rewritten after each variant and a rerun skips the variants it holds (resumable).

    .venv/bin/python benchmarks/settings_sweep.py --seed 0 --facts 50 --out runs/sweep-0.json \\
        --variant defaults --variant 'ridge 0.5=memit.relative_lambda=5.0e-1'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_wake import facts_file, wake  # noqa: E402  (a sibling script, not a package)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name=key=value;key=value' (or just 'name': the defaults) -> (name, --set arguments)."""
    name, _, settings = text.partition("=")
    return name, [arg for item in filter(None, settings.split(";")) for arg in ("--set", item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="fact pool seed (0 tunes, 3 is held out)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (resumed when present)")
    parser.add_argument("--variant", action="append", required=True, help="'name' or 'name=key=value;key=value'")
    args = parser.parse_args()
    folder = args.out.parent / f"homes-{args.out.stem}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    facts = facts_file(folder, args.facts, args.seed)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    lock = threading.Lock()

    def run(variant: tuple[str, list[str]]) -> None:
        name, extra = variant
        if name in results:
            return
        outcome = {"settings": extra, "seed": args.seed, **wake(folder, name, facts, env, extra)}
        with lock:
            results[name] = outcome
            args.out.write_text(json.dumps(results, indent=1))
        print(name, json.dumps(outcome), flush=True)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, [parse_variant(v) for v in args.variant]))


if __name__ == "__main__":
    main()
