"""One SWS pass at several adapter scales: what a smaller adapter gives back and what it costs.

The measurement behind ``sws.retry_scales``. One real SWS pass (``sleep.sws.sws``, the production
code) on a fresh home of ``--facts`` pool facts injected in one batch (or on a copy of ``--home``,
e.g. a longevity home after a night's inject), with its locality gate made to fail after it has
measured, so the pass runs its retry at every ``--scales`` (tonight's adapters merged and stored at
that scale, every fact gated again) and is undone at the end. At every scale, on the weights the
pass would leave there (facts that pass at that scale with their edits at ``sws.schedule[1]``, the
rest at full scale), it records: facts passing SWS's gate, locality, greedy unchanged, leak,
benchmark, raw and chat recall over the facts (trained wording and a held-out one) and drift::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/adapter_scale.py --facts 24 --scales 0.85 0.7 0.5 0.35

One JSON line per scale (scale 1.0 first; ``pass_seconds`` on it is the whole pass, every scale's
gating included), then a summary line. At 50 facts on 2 cores: inject 262 s, pass 1,148 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=24, help="pool facts injected into a fresh home (default 24)")
    parser.add_argument("--seed", type=int, default=3, help="fact pool seed (default 3)")
    parser.add_argument("--home", default=None, help="measure a copy of this home instead (its facts at stage 0 are tonight's)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.85, 0.7, 0.5, 0.35], help="retry scales, in order")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sleepwake-scale-") as tmp:
        home = Path(tmp) / "home"
        rows = measure_scales(prepare(home, args), args.scales, args.overrides)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"summary": summarise(rows)}), flush=True)


def prepare(home: Path, args) -> Path:
    """A copy of ``--home`` (its write lock left behind), or a fresh home with ``--facts`` injected."""
    from sleepwake.config import load_settings
    from sleepwake.factpool import generate_pool
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    if args.home:
        shutil.copytree(args.home, home, ignore=shutil.ignore_patterns("write.lock"))
        return home
    memory = Memory.open(Home.open(str(home)), load_settings(None, args.overrides))
    started = time.perf_counter()
    memory.inject([entry.fact for entry in generate_pool(args.facts, seed=args.seed)], source="benchmark")
    print(json.dumps({"injected": args.facts, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return home


def measure_scales(home: Path, scales: list[float], overrides: list[str]) -> list[dict]:
    """Run one SWS pass whose locality gate always fails after measuring (so every scale is tried);
    returns one row per scale tried."""
    from sleepwake.config import load_settings
    from sleepwake.experiments.lab import measure
    from sleepwake.sleep import locality as locality_stage, sws as sws_stage
    from sleepwake.sleep.session import opened

    # The benchmark gate off, so every scale reaches the locality gate (and is measured there).
    settings = load_settings(None, [*overrides, f"sws.retry_scales={json.dumps(scales)}", "sws.benchmark_max_drop=1.0"])
    real_failure, measured = locality_stage.pass_failure, []

    def measure_then_fail(session, before, leak_before=None):
        local, why = real_failure(session, before, leak_before)
        memory = session.memory
        base = memory.perplexity(base=True)
        facts = [r.fact for r in memory.ledger.list_facts()]
        measured.append({"greedy_unchanged": local.get("greedy_unchanged"), **measure(memory, facts, base), "real_gate": why})
        return local, why or "measured; every scale is tried"

    locality_stage.pass_failure = measure_then_fail
    started = time.perf_counter()
    try:
        with opened(str(home), settings, "full_sleep") as session:
            result = sws_stage.sws(session)
    finally:
        locality_stage.pass_failure = real_failure
    rows = []
    for tried, seen in zip(result.scale_tries, measured):
        rows.append({**{k: tried[k] for k in ("scale", "passed", "benchmark", "locality", "leak")},
                     "gated": result.gated, **seen})
    rows[0]["pass_seconds"] = round(time.perf_counter() - started, 1)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per scale, what it gave back (locality) and cost (facts passing, chat) against scale 1.0."""
    first = rows[0]
    return {str(r["scale"]): {"locality_gain": round((r["locality"] or 0) - (first["locality"] or 0), 4),
                              "passed_share": round(r["passed"] / max(first["passed"], 1), 3),
                              "chat": r.get("chat"), "drift": r.get("drift")} for r in rows}


if __name__ == "__main__":
    main()
