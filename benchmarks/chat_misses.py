"""Where a longevity home's chat misses sit: by the fact's stage (and whether a MEMIT edit still holds it) and by the
night it was injected.

Every stored fact is asked its chat question once, through the home's composed weights (a copy: the home is never
written). A miss spread evenly over the nights points at wear of what the adapter holds; misses among one night's
facts, or one stage's, point at that night's or stage's work.

    .venv/bin/python benchmarks/chat_misses.py --home RUN/homes/longevity --per-night 50

Prints one JSON document. About two minutes for 500 facts on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from night_wear import chat_hits, open_copy, stage_label  # noqa: E402  (a sibling script, not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="the home to read (copied first, never written)")
    parser.add_argument("--per-night", type=int, default=50, help="facts injected each night, in fact-id order")
    parser.add_argument("--set", action="append", default=[], help="settings override key=value (the run's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        memory = open_copy(args.home, scratch, "home", args.set)
        rows = memory.ledger.list_facts()  # in fact-id order: the order they were injected
        hits = chat_hits(memory, [r.fact for r in rows])
    asked: dict[str, Counter] = {"by_stage": Counter(), "by_night": Counter()}
    missed: dict[str, Counter] = {"by_stage": Counter(), "by_night": Counter()}
    for index, (row, hit) in enumerate(zip(rows, hits)):
        groups = {"by_stage": stage_label(row),
                  "by_night": f"night {index // args.per_night + 1}"}
        for table, group in groups.items():
            asked[table][group] += 1
            missed[table][group] += not hit
    print(json.dumps({
        "facts": len(rows), "chat": round(sum(hits) / max(len(rows), 1), 4),
        **{table: {g: {"facts": asked[table][g], "missed": missed[table][g]} for g in asked[table]}
           for table in asked},
    }, indent=1))


if __name__ == "__main__":
    main()
