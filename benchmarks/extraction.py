"""Extraction benchmark: precision, recall and F1 of chat fact extraction on the labelled turns.

    .venv/bin/python benchmarks/extraction.py             # rules (the default extractor)
    .venv/bin/python benchmarks/extraction.py --model     # also model-only and rules+model (loads the model)

Three labelled sets: ``tests/data/extraction_turns.jsonl`` (the development set, incl. probes of
ordinary chat lines), ``tests/data/extraction_heldout.jsonl`` (written after the rules) and
``tests/data/extraction_heldout2.jsonl`` (60 messages written later by someone who had not read the
rules); their first-pass scores are in docs/chat.md. Labels and matching: ``sleepwake/chat/scoring.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = {"dev": ROOT / "tests/data/extraction_turns.jsonl", "heldout": ROOT / "tests/data/extraction_heldout.jsonl",
        "heldout2": ROOT / "tests/data/extraction_heldout2.jsonl"}


def model_extractors(turns: list[dict], args) -> dict:
    """Model-only and rules+model extractors over completions computed once, in batches."""
    from sleepwake.chat.clauses import own_words
    from sleepwake.chat.extract import extract
    from sleepwake.chat.model_extract import ModelExtractor, parse
    from sleepwake.config import load_settings
    from sleepwake.memory import load_backend

    texts = [own_words(t["text"]) for t in turns]  # what extract() hands the model
    cache = Path(args.completions) if args.completions else None
    if cache and cache.exists():  # re-score without generating again (same model and prompt)
        completions = json.loads(cache.read_text(encoding="utf-8"))
    else:
        backend = load_backend(load_settings(args.config, args.overrides))
        start = time.perf_counter()
        completions = dict(zip(texts, ModelExtractor(backend).complete_many(texts)))
        print(f"model completions: {len(turns)} turns in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        if cache:
            cache.write_text(json.dumps(completions, ensure_ascii=False, indent=1), encoding="utf-8")
    model = lambda turn, subject: parse(completions[turn], subject)  # noqa: E731
    return {"model": lambda text, name: extract(text, name, model=model, use_rules=False),
            "rules+model": lambda text, name: extract(text, name, model=model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="store_true", help="also score the model-based extractor")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--completions", metavar="FILE", help="cache of the model's completions (written once, then reused)")
    args = parser.parse_args()
    from sleepwake.chat.extract import extract
    from sleepwake.chat.scoring import load_turns, score

    data = {name: load_turns(path) for name, path in SETS.items()}
    extractors = {"rules": lambda text, name: extract(text, name)}
    if args.model:
        extractors.update(model_extractors([t for turns in data.values() for t in turns], args))
    results = {f"{kind}/{name}": score(turns, fn) for kind, fn in extractors.items() for name, turns in data.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'extractor/set':20s} {'turns':>5s} {'items':>5s} {'tp':>4s} {'fp':>4s} {'fn':>4s} {'P':>6s} {'R':>6s} {'F1':>6s}")
    for key, r in results.items():
        print(f"{key:20s} {r['turns']:5d} {r['items']:5d} {r['tp']:4d} {r['fp']:4d} {r['fn']:4d} "
              f"{r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}")
    for key, r in results.items():
        for category, rows in sorted(r["misses"].items()):
            for row in rows:
                print(f"  {key} [{category}] {row['text']!r}: missed {row['missed']} wrong {row['wrong']}")


if __name__ == "__main__":
    main()
