"""longevity: many days of wake and sleep. Each day ``facts_per_day`` new facts are injected one at
a time (unconstrained), then one sleep runs; raw recall of everything stored is measured before
and after it. Paper 5's reference system entered a death spiral at 35 facts (pruning to an edit
cap deleted working facts faster than sleep repaired them): here the edit count must stay equal to
the fact count and recall must not decline day over day."""

from __future__ import annotations

from sleepwake.experiments.capacity import wake_overrides
from sleepwake.experiments.lab import Lab, inject_one_by_one, measure, sleep_row, stage_counts
from sleepwake.experiments.result import ExperimentResult


def run_day(lab: Lab, home_dir: str, day: int, base: float) -> dict:
    cfg = lab.cfg
    memory = lab.open(home_dir, wake_overrides(lab))
    pool = lab.pool(cfg.days * cfg.facts_per_day)
    inject_one_by_one(memory, pool[(day - 1) * cfg.facts_per_day:day * cfg.facts_per_day])
    stored = pool[:day * cfg.facts_per_day]
    before = measure(memory, stored, chat=False)
    report = sleep_row(lab.sleep(home_dir, cfg.maintenance_sleep))
    after = measure(lab.open(home_dir), stored, base, chat=False)
    return {"day": day, "facts": len(stored), "recall_before": before["raw"], "degraded_before": before["degraded"],
            "recall_after": after["raw"], "degraded_after": after["degraded"], "perplexity": after["perplexity"],
            "drift": after["drift"], **stage_counts(lab.open(home_dir)), "refreshed": report["refreshed"],
            "pruned": report["pruned"], "outcome": report["outcome"], "seconds": report["seconds"],
            "stage_seconds": report["stage_seconds"]}


def declining(values: list[float], run: int = 3) -> bool:
    """True when the last ``run`` values each fell (a spiral, not noise around a level)."""
    tail = values[-(run + 1):]
    return len(tail) == run + 1 and all(b < a for a, b in zip(tail, tail[1:]))


def run_longevity(lab: Lab) -> ExperimentResult:
    home_dir = lab.home_dir("longevity")
    base = lab.open(home_dir).perplexity(base=True)
    days = []
    for day in range(1, lab.cfg.days + 1):
        days.append(run_day(lab, home_dir, day, base))
        lab.progress("days", days[-1])
    recall = [d["recall_after"] for d in days]
    last = days[-1]
    summary = {"days": lab.cfg.days, "facts": last["facts"], "final_recall": last["recall_after"],
               "min_recall_after_sleep": min(recall), "edits": last["edits"],
               "edits_per_fact": round(last["edits"] / last["facts"], 4), "pruned": sum(d["pruned"] or 0 for d in days),
               "max_drift": max(d["drift"] for d in days), "recall_declining": declining(recall),
               "death_spiral": declining(recall) or last["edits"] < last["facts"] * lab.cfg.recall_threshold,
               "base_perplexity": round(base, 4)}
    return ExperimentResult("longevity", summary, {"days": days})
