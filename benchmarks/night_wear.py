"""Which consolidated facts one night cost their chat answers, and whether they sat near its new facts.

Given a home before a night and the same home after it (two kept night folders of a longevity
run), every fact consolidated before the night (stage >= 1) is asked its chat question through
both homes' weights. Facts that answered before and not after are grouped by their stage and MEMIT
edit before and after, and by how close their subject key is to the night's new facts' keys (the
centred cosine of the MLP key at the first edited layer, the measure the audit's "near" set uses):
an edit or adapter that overwrites its neighbours would lose the near facts first.

    .venv/bin/python benchmarks/night_wear.py --before RUN-night9/homes/longevity \\
        --after RUN-night10/homes/longevity --new 50 --set seed=1

Prints one JSON document. Both homes are read from copies. About five minutes a home of ~400
consolidated facts on one thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path


def open_copy(home: str, scratch: str, name: str, overrides):
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    work = Path(scratch) / name
    shutil.copytree(home, work, ignore=shutil.ignore_patterns("write.lock", "snapshots"))
    return Memory.open(Home.open(work), load_settings(None, overrides))


def stage_label(row) -> str:
    """A ledger row's stage, and "+edit" where a MEMIT edit still holds the fact."""
    return f"stage {row.stage}{' +edit' if row.edit_id is not None else ''}"


def chat_hits(memory, facts) -> list[bool]:
    from sleepwake.models import probes

    replies = memory.backend.chat([probes.chat_question(f) for f in facts], memory.settings.probes.chat_max_new_tokens)
    return [probes.answer_matches(text, fact.object) for text, fact in zip(replies, facts)]


def nearness(memory, old, new) -> list[float]:
    """Each old fact's highest centred cosine to a new fact's subject key (first edited layer)."""
    from sleepwake.models.editor import lookup_row

    layer = memory.settings.memit.edit_layers()[0]
    rows = [lookup_row(memory.backend, "", f) for f in [*old, *new]]
    keys, _ = memory.backend.layer_states(rows, layer, layer, 64)
    keys = keys.float() - keys.float().mean(dim=0, keepdim=True)
    keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return (keys[: len(old)] @ keys[len(old):].T).max(dim=1).values.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the home before the night (never written)")
    parser.add_argument("--after", required=True, help="the same home after the night (never written)")
    parser.add_argument("--new", type=int, default=50, help="the night's new facts: the last N fact ids (default 50)")
    parser.add_argument("--set", action="append", default=[], help="settings override key=value (the run's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        before = open_copy(args.before, scratch, "before", args.set)
        rows = [r for r in before.ledger.list_facts() if r.stage >= 1]
        facts = [r.fact for r in rows]
        hits_before = chat_hits(before, facts)
        del before
        after = open_copy(args.after, scratch, "after", args.set)
        now = {r.fact.key: r for r in after.ledger.list_facts()}
        new = [r.fact for r in sorted(now.values(), key=lambda r: r.fact_id)[-args.new:]]
        hits_after = chat_hits(after, facts)
        near = nearness(after, facts, new)
    groups: Counter = Counter()
    lost: Counter = Counter()
    by_near: dict[str, list[int]] = {"under 0.2": [0, 0], "0.2-0.5": [0, 0], "0.5 and over": [0, 0]}
    for row, was, is_, sim in zip(rows, hits_before, hits_after, near):
        if not was:
            continue
        later = now.get(row.fact.key)
        group = f"{stage_label(row)} -> {'gone' if later is None else stage_label(later)}"
        groups[group] += 1
        lost[group] += not is_
        band = "under 0.2" if sim < 0.2 else "0.2-0.5" if sim < 0.5 else "0.5 and over"
        by_near[band][0] += 1
        by_near[band][1] += not is_
    print(json.dumps({
        "consolidated": len(facts), "answered_before": sum(hits_before),
        "lost": sum(b and not a for b, a in zip(hits_before, hits_after)),
        "gained": sum(a and not b for b, a in zip(hits_before, hits_after)),
        "by_transition": {g: {"answered": groups[g], "lost": lost[g]} for g in sorted(groups)},
        "by_nearness_to_new": {band: {"answered": n, "lost": k} for band, (n, k) in by_near.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
