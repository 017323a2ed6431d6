"""Screen consolidation settings cheaply: one SWS pass per variant on copies of the same home.

Each variant's sleep is the real full-sleep pipeline with REM off and the locality and leak limits
at measure-only (``validate.min_locality=0``, ``validate.max_leak=1``), so the row shows what the
pass does to the model instead of the pass being undone. Per variant it prints one JSON line:
the SWS pass's teacher-forced locality and leak on the validate sample (64 unrelated prompts),
facts advanced, the adapters' own chat and raw recall (every trained fact's MEMIT edit at 0),
the last training loss and seconds.

    .venv/bin/python benchmarks/sws_screen.py --facts facts.jsonl \\
        --variant default= --variant "no protection=lora.protect_energy=0.0" ...

A variant is NAME=OVERRIDE[,OVERRIDE...]. ``--facts`` is injected once (batched) into a seed home.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from sleepwake.config import load_settings
from sleepwake.facts import load_facts
from sleepwake.memory import Memory, lending, load_backend
from sleepwake.sleep import pipeline
from sleepwake.sleep.session import SleepSession
from sleepwake.storage.home import Home

MEASURE_ONLY = ["validate.min_locality=0.0", "validate.max_leak=1.0", "rem.enabled=false"]
KEYS = ("accepted", "advanced", "locality", "leak", "lora_chat_recall", "lora_raw_recall", "train_loss_last", "seconds")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    return name, [o for o in overrides.split(",") if o]


def sws_metrics(home: Path) -> dict:
    with duckdb.connect(str(home / "ledger.duckdb"), read_only=True) as con:
        rows = con.execute("select name, value from metrics where stage = 'sws'").fetchall()
    found = dict(rows)
    return {key: found.get(key) for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", required=True, help="JSONL or JSON list of facts")
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDE[,OVERRIDE...]")
    parser.add_argument("--work", default=None, help="folder for the homes (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.work or tempfile.mkdtemp(prefix="sws-screen-"))
    settings = load_settings(None, MEASURE_ONLY)
    backend = load_backend(settings)
    with lending(settings, backend):
        seed = root / "seed"
        if not (seed / "ledger.duckdb").exists():
            Memory.open(Home.open(seed), settings).inject(load_facts(args.facts))
        for name, overrides in map(parse_variant, args.variant):
            home = root / name.replace(" ", "_")
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(seed, home)
            memory = Memory.open(Home.open(home), load_settings(None, [*MEASURE_ONLY, *overrides]), backend=backend)
            started = time.perf_counter()
            report = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
            print(json.dumps({"variant": name, "settings": overrides, "sws": sws_metrics(home),
                              "chat_after": report.chat_recall_after, "raw_after": report.raw_recall_after,
                              "sleep_seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
