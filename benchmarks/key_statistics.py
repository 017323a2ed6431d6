"""How many tokens MEMIT's key statistics need: one batch of N held-out facts per estimate size.

Each setting injects the same N facts (pool seed 3; tuning used seed 0) with ``inject --facts``
into a fresh home and reads raw and paraphrase recall (``recall --json``) and perplexity drift
(``status --json``) from fresh processes, through ``fast_wake.wake``:

- ``--tokens``: one sample of that many tokens (``memit.covariance_tokens``, no growth);
- ``--grown``: the default first slice grown by ``memit.covariance_max_tokens`` worth of slices, as
  that many sleeps would (``Memory.grow_stats`` on a cache of its own); prints the seconds per slice.

    .venv/bin/python benchmarks/key_statistics.py --facts 50 --tokens 4096 8192 16384 --grown
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_wake import facts_file, wake  # noqa: E402  (a sibling script, not a package)


def grow_cache(cache: Path, home: Path) -> list[dict]:
    """Slice 0 and then every further slice, in this process, timed: what the first sleeps add."""
    os.environ["SLEEPWAKE_CACHE"] = str(cache)
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    memory = Memory.open(Home.open(home), load_settings(None, []))
    started = time.perf_counter()
    memory.stats()
    slices = [{"slice": 1, "tokens": memory.settings.memit.covariance_tokens,
               "seconds": round(time.perf_counter() - started, 1)}]
    while True:
        started = time.perf_counter()
        added, total = memory.grow_stats()
        if not added:
            return slices
        slices.append({"slice": len(slices) + 1, "tokens": total, "seconds": round(time.perf_counter() - started, 1)})


def default_cache() -> Path:
    from sleepwake.models.bundled import default_cache_dir

    return default_cache_dir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="*", default=[4096, 16384],
                        help="estimate sizes, each one sample (default: 4096 16384)")
    parser.add_argument("--grown", action="store_true", help="also the default estimate grown slice by slice")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sleepwake-key-statistics-"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    facts = facts_file(folder, args.facts, args.seed)
    report: dict = {"facts": args.facts, "seed": args.seed, "runs": {}}
    for tokens in args.tokens:
        settings = ["--set", f"memit.covariance_tokens={tokens}", "--set", f"memit.covariance_max_tokens={tokens}"]
        report["runs"][str(tokens)] = wake(folder, f"tokens-{tokens}", facts, env, settings)
        print(json.dumps({str(tokens): report["runs"][str(tokens)]}), file=sys.stderr, flush=True)
    if args.grown:
        cache = folder / "grown-cache"
        (cache / "models").parent.mkdir(parents=True, exist_ok=True)
        (cache / "models").symlink_to(default_cache() / "models")  # the converted model, not its statistics
        report["grown_slices"] = grow_cache(cache, folder / "grow-home")
        report["runs"]["grown"] = wake(folder, "grown", facts, {**env, "SLEEPWAKE_CACHE": str(cache)}, [])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
