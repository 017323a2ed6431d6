"""convergence: paper 5's damage/recovery protocol.

Phase A injects facts one at a time (unconstrained) until at least ``degraded_to_sleep`` are
degraded, then sleeps until no fact is degraded two sleeps running (or ``max_cycles``). Phase B
injects a second wave on top and sleeps again by the same rule. Every sleep is the real
full-sleep flow with ``experiment.maintenance_sleep`` (default: paper 5's sleep, no consolidation).
"""

from __future__ import annotations

from sleepwake.experiments.capacity import wake_overrides
from sleepwake.experiments.lab import Lab, inject_one_by_one, sleep_row
from sleepwake.experiments.result import ExperimentResult


def convergence_pool(lab: Lab) -> list:
    """Phase A's facts then phase B's, one pool (phase B is at most as large as phase A's cap)."""
    cfg = lab.cfg
    return lab.pool(cfg.phase_a_max_facts + (cfg.wave_facts or cfg.phase_a_max_facts))


def reporter(lab: Lab, phase: str):
    """``on_point`` for a phase's wake: tag the point with its phase and report it."""
    def report(point: dict) -> None:
        point["phase"] = phase
        lab.progress("trajectory", point)
    return report


def inject_until_degraded(lab: Lab, memory, trajectory: list[dict]) -> int:
    """Phase A's wake: one fact at a time until enough are degraded; returns the count injected."""
    cfg, pool = lab.cfg, convergence_pool(lab)
    for count, item in enumerate(pool[:cfg.phase_a_max_facts], 1):
        [point] = inject_one_by_one(memory, [item], track=pool[:count - 1], on_point=reporter(lab, "A"))
        trajectory.append(point)
        if point["degraded"] >= cfg.degraded_to_sleep:
            return count
    return cfg.phase_a_max_facts


def sleep_until_converged(lab: Lab, home_dir: str, phase: str, base_ppl: float, cycles: list[dict]) -> bool:
    """Sleep until degraded_after == 0 twice running; True if that happened within max_cycles."""
    clean_in_a_row = 0
    for cycle in range(1, lab.cfg.max_cycles + 1):
        row = {"phase": phase, "cycle": cycle, **sleep_row(lab.sleep(home_dir, lab.cfg.maintenance_sleep))}
        row["drift_after"] = round(row["perplexity_after"] / base_ppl - 1.0, 5) if row["perplexity_after"] else None
        cycles.append(row)
        lab.progress("cycles", row)
        clean_in_a_row = clean_in_a_row + 1 if row["degraded_after"] == 0 else 0
        if clean_in_a_row >= 2:
            return True
    return False


def run_convergence(lab: Lab) -> ExperimentResult:
    home_dir = lab.home_dir("convergence")
    memory = lab.open(home_dir, wake_overrides(lab))
    base = memory.perplexity(base=True)
    trajectory, cycles = [], []
    phase_a = inject_until_degraded(lab, memory, trajectory)
    converged_a = sleep_until_converged(lab, home_dir, "A", base, cycles)
    wave = lab.cfg.wave_facts or phase_a
    memory = lab.open(home_dir, wake_overrides(lab))  # re-read what the sleeps changed
    pool = convergence_pool(lab)
    trajectory += inject_one_by_one(memory, pool[phase_a:phase_a + wave], track=pool[:phase_a],
                                    on_point=reporter(lab, "B"))
    converged_b = sleep_until_converged(lab, home_dir, "B", base, cycles)
    summary = {"phase_a_facts": phase_a, "phase_b_facts": wave,
               "recall_before_sleep_a": _recall_at(trajectory, "A"), "recall_before_sleep_b": _recall_at(trajectory, "B"),
               **_phase_summary(cycles, "A", converged_a), **_phase_summary(cycles, "B", converged_b),
               "base_perplexity": round(base, 4)}
    return ExperimentResult("convergence", summary, {"trajectory": trajectory, "cycles": cycles})


def _recall_at(trajectory: list[dict], phase: str) -> float | None:
    points = [p for p in trajectory if p["phase"] == phase]
    return points[-1]["recall"] if points else None


def _phase_summary(cycles: list[dict], phase: str, converged: bool) -> dict:
    rows = [r for r in cycles if r["phase"] == phase]
    first_clean = next((r["cycle"] for r in rows if r["degraded_after"] == 0), None)
    key = phase.lower()
    return {f"converged_{key}": converged, f"cycles_{key}": len(rows), f"first_clean_cycle_{key}": first_clean,
            f"final_recall_{key}": rows[-1]["raw_recall_after"] if rows else None,
            f"refreshed_{key}": sum(r["refreshed"] or 0 for r in rows),
            f"drift_{key}": rows[-1]["drift_after"] if rows else None}
