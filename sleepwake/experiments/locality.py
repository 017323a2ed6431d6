"""locality: which consolidation settings keep the rest of the model in place. N facts are injected
(one batch); copies of that home sleep ``cycles`` times under each variant of
``experiment.locality_variants`` (settings overrides), and each is measured like the issue asks:
raw and chat recall of the facts, perplexity drift, and on the 256 unrelated prompts teacher-forced
locality, greedy answers unchanged and leak (a stored object in an unrelated answer).

The sleeps measure without gating on locality and leak (``UNGATED``): the ablation shows what each
variant does to the model, where the real sleep would undo the pass that breaks the limits."""

from __future__ import annotations

from sleepwake.experiments.lab import Lab, measure, sleep_row, stage_counts
from sleepwake.experiments.result import ExperimentResult
from sleepwake.sleep.locality import measure_memory

UNGATED = ["validate.min_locality=0.0", "validate.max_leak=1.0"]


def score(memory, pool, base: float) -> dict:
    row = measure(memory, pool, base)
    local = measure_memory(memory)
    return {**row, "locality": local["locality"], "greedy_unchanged": local["greedy_unchanged"], "leak": local["leak"]}


def run_locality(lab: Lab) -> ExperimentResult:
    cfg = lab.cfg
    pool = lab.pool(cfg.locality_facts)
    home_dir = lab.home_dir("locality-wake")
    memory = lab.open(home_dir)
    base = memory.perplexity(base=True)
    memory.inject([p.fact for p in pool], source="experiment")
    rows = [{"variant": "MEMIT only (no sleep)", "cycle": 0, **score(memory, pool, base)}]
    lab.progress("variants", rows[-1])
    for name, extra in cfg.locality_variants.items():
        home = lab.copy_home(home_dir, f"locality-{name}")
        for cycle in range(1, cfg.cycles + 1):
            slept = sleep_row(lab.sleep(home, [*UNGATED, *extra]))
            memory = lab.open(home, extra)
            rows.append({"variant": name, "cycle": cycle, "settings": " ".join(extra) or "(defaults)",
                         **score(memory, pool, base), **stage_counts(memory), "outcome": slept["outcome"],
                         "sleep_seconds": slept["seconds"], "stage_seconds": slept["stage_seconds"]})
            lab.progress("variants", rows[-1])
    last = {r["variant"]: r for r in rows}
    summary = {"facts": len(pool), "cycles": cfg.cycles, "base_perplexity": round(base, 4),
               **{f"{v}|{k}": r.get(k) for v, r in last.items() for k in ("raw", "chat", "drift", "locality", "leak")}}
    return ExperimentResult("locality", summary, {"variants": rows})
