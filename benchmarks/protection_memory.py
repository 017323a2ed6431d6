"""Peak memory and seconds of the one-time estimate behind the consolidation LoRA's protection.

The first sleep on a new machine estimates the inputs' second moments of every module the LoRA
adapts (``Memory.lora_protection``, once per model, then cached); it runs inside SWS, so its peak
is that night's peak. This measures it alone: a copy of the current cache (``$SLEEPWAKE_CACHE``)
without the cached moments and bases, a new home, then the estimate, printing one JSON line with
the resident memory after opening the model and the estimate's peak (Linux ``VmHWM``) and seconds.

    .venv/bin/python benchmarks/protection_memory.py

Run it after any command that filled the cache (``sleepwake inject``), so the model conversion
and key statistics are not part of what it measures.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    from sleepwake.models.bundled import default_cache_dir

    source = default_cache_dir()
    with tempfile.TemporaryDirectory(prefix="sleepwake-protection-") as tmp:
        cache = Path(tmp) / "cache"
        # Links, not copies: the cache holds the converted model (hundreds of MB), only read here.
        shutil.copytree(source, cache, ignore=shutil.ignore_patterns("inputs-*", "basis*"), copy_function=os.symlink)
        os.environ["SLEEPWAKE_CACHE"] = str(cache)  # before sleepwake reads it
        print(json.dumps(measure(Path(tmp) / "home")))


def measure(home_path: Path) -> dict:
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.resources import peak_rss_gb, reset_peak_rss
    from sleepwake.sleep import consolidate
    from sleepwake.storage.home import Home

    memory = Memory.open(Home.open(home_path), load_settings(None, []))
    memory.base_anchors()  # cached with the model's other statistics: not part of the estimate
    opened = peak_rss_gb()
    reset_peak_rss()
    started = time.perf_counter()
    bases = memory.lora_protection(consolidate.recipe(memory.settings))
    return {"modules": len(bases), "open_rss_gb": opened, "estimate_peak_rss_gb": peak_rss_gb(),
            "estimate_seconds": round(time.perf_counter() - started, 1),
            "threads": os.environ.get("OMP_NUM_THREADS", "all")}


if __name__ == "__main__":
    main()
