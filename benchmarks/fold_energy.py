"""What the fold's energy truncation costs a long memory: the consolidated adapter re-folded.

Each full sleep folds every adapter into one consolidated adapter per module, keeping the
smallest rank that holds ``lora.fold_energy`` of the squared singular values (``sleep/fold.py``).
Whether that truncation is part of why old facts lose their chat answers night after night is
measured here on a real home: a copy of it (the original is never written) gets its consolidated
adapter re-folded at each ``--energy`` in turn, nothing new added (each fold starts from the
previous one's result, as a night's would), and after each the chat answers of every
consolidated fact (stage >= 1) are compared with those before:

    .venv/bin/python benchmarks/fold_energy.py --home RUN/homes/longevity --energy 0.999 --energy 0.99

One JSON line per energy (rank, chat recall, answers lost and gained, and those of stage-3 facts
without a MEMIT edit, which only the adapter holds). About 2.5 minutes a probe of 380 facts on one
thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from night_wear import chat_hits, open_copy  # the sibling benchmark's home copy and chat probe


def refold(memory, energy: float) -> int:
    """Re-fold the home's one adapter at ``energy`` (no rank cap); returns the largest rank kept."""
    from sleepwake.models.lowrank import refactor

    adapters = list(memory.adapters)
    factors = {}
    for name, parts in memory.adapter_parts(adapters).items():
        u, v, _ = refactor(parts, energy, None)
        factors[name] = (u, v)
    memory.store_adapter("consolidated", None, factors, replaces=[a.adapter_id for a in adapters])
    return max(u.shape[1] for u, _ in factors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="a sleepwake home with one consolidated adapter (copied, never written)")
    parser.add_argument("--energy", type=float, action="append", help="fold energy; repeat for a sequence (default 0.999, 0.99)")
    parser.add_argument("--set", action="append", default=[], help="settings override key=value (the run's, e.g. seed=1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        memory = open_copy(args.home, scratch, "home", args.set)
        if len(memory.adapters) != 1:
            raise SystemExit(f"{args.home}: expected one consolidated adapter, found {len(memory.adapters)}")
        rows = [r for r in memory.ledger.list_facts() if r.stage >= 1]
        facts = [r.fact for r in rows]
        adapter_only = [i for i, r in enumerate(rows) if r.stage == 3 and r.edit_id is None]
        started = time.perf_counter()
        before = chat_hits(memory, facts)
        print(json.dumps({"energy": None, "rank": memory.adapters[0].rank, "facts": len(facts),
                          "chat": round(sum(before) / len(facts), 4), "adapter_only": len(adapter_only),
                          "adapter_only_answered": sum(before[i] for i in adapter_only),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        for energy in args.energy or [0.999, 0.99]:
            started = time.perf_counter()
            rank = refold(memory, energy)
            after = chat_hits(memory, facts)
            print(json.dumps({
                "energy": energy, "rank": rank, "chat": round(sum(after) / len(facts), 4),
                "lost": sum(b and not a for b, a in zip(before, after)),
                "gained": sum(a and not b for b, a in zip(before, after)),
                "adapter_only_lost": sum(before[i] and not after[i] for i in adapter_only),
                "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
