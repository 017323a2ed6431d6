"""lambda-sweep and consolidation-sweep: grids of independent points, one fresh home each.

A point is a plain function of (lab, value, extra overrides); ``lab.fan_out`` (set by the
Prefect flow when ``experiment.devices`` names several devices) may run points concurrently,
each with ``model.device=<its device>`` in ``extra``; otherwise they run here one after another.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

from sleepwake.experiments.lab import Lab, inject_one_by_one, measure, sleep_row, stage_counts
from sleepwake.experiments.result import ExperimentResult

Point = Callable[[Lab, float, Sequence[str]], list[dict]]


def run_points(lab: Lab, point: Point, values: Sequence) -> list[dict]:
    """Every value's rows, in grid order (fanned out when the lab can, else sequential)."""
    if lab.fan_out is not None:  # set only when experiment.devices names several devices
        return [row for rows in lab.fan_out(lab, point, list(values)) for row in rows]
    rows = []
    for value in values:
        rows += point(lab, value, [])
    return rows


def run_point_on(lab: Lab, point_name: str, value, device: str) -> list[dict]:
    """One fanned-out point on ``device``: its own model copy, lent to the point's sleeps."""
    from sleepwake.config import load_settings
    from sleepwake.memory import lending

    point = POINTS[point_name]
    extra = [f"model.device={device}"]
    settings = load_settings(lab.config, [*lab.overrides, *extra])
    with lending(settings, lab.backend_for(settings)):
        return point(lab, value, extra)


def lambda_point(lab: Lab, lam: float, extra: Sequence[str]) -> list[dict]:
    """One lambda: ``sweep_facts`` facts injected one at a time, then recall and perplexity."""
    extra = [*extra, f"memit.lambda_reg={lam!r}"]
    memory = lab.open(lab.home_dir(f"lambda-{lam:g}"), extra)
    base = memory.perplexity(base=True)
    pool = lab.pool(lab.cfg.sweep_facts)
    points = inject_one_by_one(memory, pool)
    row = {"lambda": lam, **measure(memory, pool, base),
           "median_seconds_per_fact": round(statistics.median(p["seconds"] for p in points), 2)}
    lab.progress("points", row)
    return [row]


def run_lambda_sweep(lab: Lab) -> ExperimentResult:
    rows = run_points(lab, lambda_point, lab.cfg.lambdas)
    best = max(rows, key=lambda r: (r["raw"], -abs(r.get("drift", 0.0))))
    summary = {"lambdas": lab.cfg.lambdas, "facts": lab.cfg.sweep_facts, "best_lambda": best["lambda"],
               "best_raw": best["raw"], "best_drift": best.get("drift")}
    return ExperimentResult("lambda-sweep", summary, {"points": rows})


def consolidation_point(lab: Lab, count: float, extra: Sequence[str]) -> list[dict]:
    """One fact count: inject, then ``cycles`` full sleeps (SWS and REM on), measured after each."""
    count = int(count)
    home_dir = lab.home_dir(f"consolidate-{count}")
    memory = lab.open(home_dir, extra)
    base = memory.perplexity(base=True)
    pool = lab.pool(count)
    inject_one_by_one(memory, pool)
    rows = [{"facts": count, "cycle": 0, **measure(memory, pool, base), **stage_counts(memory)}]
    lab.progress("counts", rows[-1])
    for cycle in range(1, lab.cfg.cycles + 1):
        report = sleep_row(lab.sleep(home_dir, extra))
        memory = lab.open(home_dir, extra)
        rows.append({"facts": count, "cycle": cycle, **measure(memory, pool, base), **stage_counts(memory),
                     **{k: report[k] for k in ("outcome", "sws_accepted", "sws_advanced", "rem_accepted",
                                               "seconds", "stage_seconds")}})
        rows[-1]["advanced_2plus"] = _share_at_least(rows[-1], 2, count)
        lab.progress("counts", rows[-1])
    return rows


def _share_at_least(row: dict, stage: int, total: int) -> float:
    return round(sum(v for k, v in row.items() if k.startswith("stage_") and k[6:].isdigit() and int(k[6:]) >= stage) / total, 4)


def run_consolidation_sweep(lab: Lab) -> ExperimentResult:
    rows = run_points(lab, consolidation_point, lab.cfg.fact_counts)
    finals = [r for r in rows if r["cycle"] == lab.cfg.cycles]
    summary = {"fact_counts": lab.cfg.fact_counts, "cycles": lab.cfg.cycles,
               **{f"chat_{r['facts']}": r["chat"] for r in finals},
               **{f"stage2plus_{r['facts']}": r["advanced_2plus"] for r in finals},
               **{f"drift_{r['facts']}": r.get("drift") for r in finals}}
    return ExperimentResult("consolidation-sweep", summary, {"counts": rows})


POINTS: dict[str, Point] = {"lambda_point": lambda_point, "consolidation_point": consolidation_point}
