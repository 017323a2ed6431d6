"""Screen consolidation settings cheaply: one SWS pass per variant on copies of the same home.

Each variant's sleep is the real full-sleep pipeline with REM off and the locality and leak limits
at measure-only (``validate.min_locality=0``, ``validate.max_leak=1``), so the row shows what the
pass does to the model instead of the pass being undone. Per variant it prints one JSON line:
the SWS pass's teacher-forced locality and leak on the validate sample (64 unrelated prompts),
facts advanced, the adapters' own chat and raw recall (every trained fact's MEMIT edit at 0),
the last training loss and seconds; and, for the facts a pass leaves waiting (``sws.max_trained``
below the stage-0 count), how their objects' log-probability on the raw prompt moved.

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
from sleepwake.sleep.sws import waiting_longest
from sleepwake.storage.home import Home
from wake import token_logprobs  # benchmarks/wake.py: this script runs from benchmarks/, beside it

MEASURE_ONLY = ["validate.min_locality=0.0", "validate.max_leak=1.0", "rem.enabled=false"]
KEYS = ("accepted", "trained", "gated", "advanced", "repaired", "locality", "leak", "lora_chat_recall", "lora_raw_recall",
        "train_loss_last", "seconds")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    return name, [o for o in overrides.split(",") if o]


def sws_metrics(home: Path) -> dict:
    with duckdb.connect(str(home / "ledger.duckdb"), read_only=True) as con:
        rows = con.execute("select name, value from metrics where stage = 'sws'").fetchall()
    found = dict(rows)
    return {key: found.get(key) for key in KEYS}


def object_logprobs(backend, facts) -> list[float]:
    """Teacher-forced log-probability of each fact's object after its raw prompt (nats, summed over
    the object's tokens): a continuous measure of what a pass did to facts it did not train, where
    greedy recall only shows the ones it flipped."""
    return [float(token_logprobs(backend, fact.prompt(), f" {fact.object}").sum()) for fact in facts]


def waiting_facts(memory, cap: int) -> list:
    """The seed home's stage-0 facts a pass with ``sws.max_trained`` = ``cap`` leaves waiting."""
    rows = waiting_longest([r for r in memory.ledger.list_facts() if r.stage == 0], 0)
    return [r.fact for r in rows[cap:]] if cap else []


def waiting_change(memory, facts, before: list[float]) -> dict:
    """Mean change of the waiting facts' object log-probability, and how many fell by over 1 nat."""
    after = object_logprobs(memory.backend, facts)
    change = [a - b for a, b in zip(after, before)]
    return {"waiting": len(facts), "mean_logprob_change": round(sum(change) / len(change), 4) if change else None,
            "fell_over_1_nat": sum(c < -1.0 for c in change)}


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
            waiting = waiting_facts(memory, memory.settings.sws.max_trained)
            before = object_logprobs(backend, waiting)
            started = time.perf_counter()
            report = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
            seconds = round(time.perf_counter() - started)
            memory.reload()  # the weights the sleep left, as stored
            print(json.dumps({"variant": name, "settings": overrides, "sws": sws_metrics(home),
                              "chat_after": report.chat_recall_after, "raw_after": report.raw_recall_after,
                              "waiting": waiting_change(memory, waiting, before), "sleep_seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
