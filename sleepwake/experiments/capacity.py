"""capacity: facts injected one at a time with no constraint from the stored ones (paper 5's
unconstrained wake), raw recall of all facts after each; the wake capacity is the largest count
whose recall never fell below ``experiment.recall_threshold`` (paper 5, 8B: 0.92 at 13, 0.57 at 14)."""

from __future__ import annotations

from sleepwake.experiments.lab import Lab, inject_one_by_one, measure
from sleepwake.experiments.result import ExperimentResult

UNCONSTRAINED = ["memit.protect_related=false"]


def wake_overrides(lab: Lab) -> list[str]:
    return UNCONSTRAINED if lab.cfg.unconstrained_wake else []


def capacity_threshold(points: list[dict], threshold: float) -> int | None:
    """The largest fact count n with recall >= threshold at every count up to n (None: the very
    first fact already failed). Equal to the last point when recall never fell."""
    best = None
    for point in points:
        if point["recall"] < threshold:
            break
        best = point["facts"]
    return best


def run_capacity(lab: Lab) -> ExperimentResult:
    cfg = lab.cfg
    memory = lab.open(lab.home_dir("capacity"), wake_overrides(lab))
    base = memory.perplexity(base=True)
    pool = lab.pool(cfg.max_facts)
    points = inject_one_by_one(memory, pool, track=(), on_point=lambda p: lab.progress("trajectory", p))
    final = measure(memory, pool, base, chat=False)
    capacity = capacity_threshold(points, cfg.recall_threshold)
    summary = {"facts": cfg.max_facts, "capacity": capacity, "threshold": cfg.recall_threshold,
               "never_fell": capacity == cfg.max_facts, "final_recall": points[-1]["recall"],
               "min_recall": min(p["recall"] for p in points), "base_perplexity": round(base, 4),
               "perplexity": final["perplexity"], "drift": final["drift"],
               "median_seconds_per_fact": sorted(p["seconds"] for p in points)[len(points) // 2]}
    return ExperimentResult("capacity", summary, {"trajectory": points})
