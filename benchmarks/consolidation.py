"""Consolidation benchmark: SWS and REM on the bundled model, in the papers' table shape.

Injects N synthetic facts (MEMIT, one edit each), then runs full sleeps through the real Prefect
flow and prints after each step: perplexity (and drift from the base model), raw recall, chat
recall (the probe's question), held-out chat recall (a wording no training example used),
facts per stage, seconds.

    .venv/bin/python benchmarks/consolidation.py --facts 20 --sleeps 2 --seed 1
    .venv/bin/python benchmarks/consolidation.py --facts 20 --compare --seed 1   # SWS-only vs SWS+REM

Seed 0 is the tuning pool; report numbers on another seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
HELD_OUT = "I was wondering about something. {}"  # a chat wording no curriculum example uses


def measure(home_dir: str, pool, config, overrides, label: str, base_ppl: float | None = None) -> dict:
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.models import probes
    from sleepwake.storage.home import Home

    settings = load_settings(config, overrides)
    memory = Memory.open(Home.open(home_dir), settings, writable=False)
    facts = [p.fact for p in pool]
    cfg = settings.probes.model_copy(update={"paraphrases": False})
    results = probes.probe_facts(memory.backend, facts, cfg)
    held = memory.backend.chat([HELD_OUT.format(p.question()) for p in pool], cfg.chat_max_new_tokens)
    ppl = memory.perplexity()
    counts = memory.ledger.counts()["facts_per_stage"]
    row = {"step": label, "ppl": round(ppl, 3), "drift": round(ppl / base_ppl - 1, 4) if base_ppl else 0.0,
           "raw": round(sum(r.raw for r in results) / len(facts), 3),
           "chat": round(sum(bool(r.chat) for r in results) / len(facts), 3),
           "chat_held_out": round(sum(probes.answer_matches(t, p.object) for t, p in zip(held, pool)) / len(facts), 3),
           "stages": [counts[s] for s in sorted(counts)]}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def full_sleep_once(home_dir: str, config, overrides) -> dict:
    from sleepwake.flows.full_sleep import full_sleep

    start = time.perf_counter()
    report = full_sleep(home=home_dir, config=config, overrides=overrides)
    return {"outcome": report["outcome"], "sws_accepted": report["sws_accepted"], "sws_advanced": report["sws_advanced"],
            "rem_accepted": report["rem_accepted"], "seconds": round(time.perf_counter() - start, 1),
            "stage_seconds": report["stage_seconds"]}


def base_perplexity(home_dir: str, config, overrides) -> float:
    from sleep import base_perplexity as measure_base

    return measure_base(home_dir, config, overrides)


def run_sleeps(home: str, pool, args, overrides, base_ppl: float, tag: str = "") -> list[dict]:
    rows = []
    for cycle in range(1, args.sleeps + 1):
        info = full_sleep_once(home, args.config, overrides)
        rows.append({**measure(home, pool, args.config, overrides, f"{tag}sleep {cycle}", base_ppl), **info})
    return rows


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(rows: list[dict]) -> None:
    print("| step | PPL (drift) | raw | chat | chat, held-out wording | facts per stage 0/1/2/3 | outcome | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        outcome = r.get("outcome", "-")
        if "sws_accepted" in r:
            outcome += f" (SWS {r['sws_accepted']}, +{r['sws_advanced']} staged; REM {r['rem_accepted']})"
        print(f"| {r['step']} | {r['ppl']:.2f} ({r['drift']:+.1%}) | {fmt(r['raw'])} | {fmt(r['chat'])} | "
              f"{fmt(r['chat_held_out'])} | {'/'.join(map(str, r['stages']))} | {outcome} | {r.get('seconds', '-')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=20)
    parser.add_argument("--sleeps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="fact pool seed (0 = tuning pool)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="settings for the sleeps")
    parser.add_argument("--compare", action="store_true", help="one sleep SWS-only vs SWS+REM on copies of one home")
    parser.add_argument("--home", default=None, help="keep the home here (default: a temporary folder)")
    args = parser.parse_args()

    from sleep import inject_pool

    from sleepwake.factpool import generate_pool

    root = Path(args.home or tempfile.mkdtemp(prefix="sleepwake-consolidation-"))
    home = str(root / "home")
    pool = generate_pool(args.facts, seed=args.seed)
    start = time.perf_counter()
    inject_pool(home, args.facts, args.seed, args.config, [], trajectory=False)
    print(f"injected {args.facts} facts in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    base = base_perplexity(home, args.config, [])
    rows = [{"step": "base model", "ppl": round(base, 3), "drift": 0.0, "raw": None, "chat": None,
             "chat_held_out": None, "stages": ["-"] * 4}]
    rows.append(measure(home, pool, args.config, [], f"after MEMIT ({args.facts} facts)", base))
    if args.compare:
        for tag, rem in (("SWS only: ", "false"), ("SWS+REM: ", "true")):
            copy = str(root / f"home-{rem}")
            shutil.copytree(home, copy)
            rows += run_sleeps(copy, pool, argparse.Namespace(**{**vars(args), "sleeps": 1}),
                               [*args.overrides, f"rem.enabled={rem}"], base, tag)
    else:
        rows += run_sleeps(home, pool, args, args.overrides, base)
    print_table(rows)
    print(f"(home: {root})")


if __name__ == "__main__":
    main()
