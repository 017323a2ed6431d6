"""forgetting: does a forgotten fact stay forgotten, and does an update replace the old answer?

N facts are injected (one batch) and slept on ``forget_sleeps`` times, so most reach the adapters
(stage >= 1). Then ``forget_count`` facts are forgotten (the most consolidated first) and probed
at once, and again after ``forget_sleeps`` more sleeps: for each forgotten fact its raw prompt,
paraphrases and chat question must never produce its object; the others keep their recall; the
forget's own perplexity drift is recorded. Last, ``forget_count`` consolidated facts get new
objects (another object of the same relation), one sleep runs, and the new and old objects are
counted in raw and chat answers.
"""

from __future__ import annotations

import random

from sleepwake.experiments.lab import Lab, measure, sleep_row, stage_counts
from sleepwake.experiments.result import ExperimentResult
from sleepwake.facts import Fact
from sleepwake.models import probes
from sleepwake.sleep.forget import forget, forget_probes


def probe_forgotten(memory, facts: list[Fact]) -> dict:
    """How often each kind of probe still produces a forgotten object (all should be 0)."""
    counts = {"raw": 0, "paraphrase": 0, "chat": 0, "probes": 0}
    for fact in facts:
        for probe in forget_probes(memory, fact):
            counts["probes"] += 1
            counts[probe["kind"]] += probe["produced"]
    return {f"forgotten_{k}_hits" if k != "probes" else "forgotten_probes": v for k, v in counts.items()}


def updated_objects(facts: list, seed: int) -> list[Fact]:
    """Each fact with another object of its relation (deterministic)."""
    rng = random.Random(seed)
    return [Fact(subject=p.fact.subject, relation=p.fact.relation,
                 object=rng.choice([o for o in p.relation.objects if o != p.object])) for p in facts]


def answers_with(memory, facts: list[Fact], objects: list[str]) -> dict:
    """Share of raw and chat answers to ``facts`` that contain ``objects`` (one per fact)."""
    cfg = memory.settings.probes
    if not facts:
        return {"raw": 0.0, "chat": 0.0}
    raw = memory.backend.generate([f.prompt() for f in facts], max(probes.answer_budget(memory.backend, o, cfg.extra_new_tokens)
                                                                   for o in objects))
    chat = memory.backend.chat([probes.chat_question(f) for f in facts], cfg.chat_max_new_tokens)
    n = max(len(facts), 1)
    return {"raw": round(sum(probes.answer_matches(a, o) for a, o in zip(raw, objects)) / n, 4),
            "chat": round(sum(probes.answer_matches(a, o) for a, o in zip(chat, objects)) / n, 4)}


def run_forgetting(lab: Lab) -> ExperimentResult:
    cfg = lab.cfg
    pool = lab.pool(cfg.forget_facts)
    home = lab.home_dir("forgetting")
    memory = lab.open(home)
    base = memory.perplexity(base=True)
    memory.inject([p.fact for p in pool], source="experiment")
    rows: list[dict] = []

    def point(step: str, kept: list, forgotten: list[Fact], **extra) -> None:
        memory = lab.open(home)
        row = {"step": step, **measure(memory, kept, base), **stage_counts(memory), **extra}
        if forgotten:
            row.update(probe_forgotten(memory, forgotten))
        rows.append(row)
        lab.progress("steps", row)

    for night in range(1, cfg.forget_sleeps + 1):
        point(f"sleep {night}", pool, [], **sleep_row(lab.sleep(home)))
    memory = lab.open(home)
    stages = {r.fact.key: r.stage for r in memory.ledger.list_facts()}
    ranked = sorted(pool, key=lambda p: -stages.get(p.fact.key, 0))
    gone, kept = ranked[:cfg.forget_count], ranked[cfg.forget_count:]
    before = memory.perplexity()
    for item in gone:
        forget(memory, item.fact.subject, item.fact.relation)
    drift = round(memory.perplexity() / before - 1.0, 5)
    forgotten = [p.fact for p in gone]
    point("forgotten", kept, forgotten, forget_drift=drift,
          forgotten_stages=sorted(stages.get(p.fact.key, 0) for p in gone))
    for night in range(1, cfg.forget_sleeps + 1):
        point(f"sleep {night} after forgetting", kept, forgotten, **sleep_row(lab.sleep(home)))
    memory = lab.open(home)
    stages = {r.fact.key: r.stage for r in memory.ledger.list_facts()}
    # The most consolidated kept facts get new objects: the hard case, where the adapters hold the old one.
    changed = sorted(kept, key=lambda p: -stages.get(p.fact.key, 0))[:cfg.forget_count]
    new = updated_objects(changed, cfg.seed)
    memory.inject(new, source="experiment")
    slept = sleep_row(lab.sleep(home))
    memory = lab.open(home)
    update = {"updated": len(new), "updated_consolidated": sum(stages.get(p.fact.key, 0) >= 1 for p in changed),
              **{f"new_{k}": v for k, v in answers_with(memory, new, [f.object for f in new]).items()},
              **{f"old_{k}": v for k, v in answers_with(memory, new, [p.object for p in changed]).items()}}
    current = {f.key: f for f in new}
    point("updated, slept", [current.get(p.fact.key, p.fact) for p in kept], forgotten, **update, **slept)
    summary = forgetting_summary(rows, cfg.forget_sleeps, facts=len(pool), forgotten=len(gone))
    return ExperimentResult("forgetting", summary, {"steps": rows})


def forgetting_summary(rows: list[dict], sleeps: int, facts: int, forgotten: int) -> dict:
    """The headline figures: rows[sleeps] is the step right after forgetting, the rows after it
    the sleeps that follow (where a forgotten fact could come back from the adapters)."""
    last = rows[-1]

    def hits(row: dict) -> int:
        return sum(row[f"forgotten_{k}_hits"] for k in ("raw", "paraphrase", "chat"))

    return {"facts": facts, "forgotten": forgotten, "forget_drift": rows[sleeps]["forget_drift"],
            "forgotten_hits_at_once": hits(rows[sleeps]),
            "forgotten_hits_after_sleeps": max(hits(r) for r in rows[sleeps + 1:]),
            "kept_raw": last.get("raw"), "kept_chat": last.get("chat"),
            **{k: last[k] for k in ("new_raw", "new_chat", "old_raw", "old_chat")}}
