"""ablation: which pathway holds the facts. N facts are injected with MEMIT; copies of that home
sleep once with SWS only and with SWS+REM. Each is then measured with MEMIT only (edits at their
scales, no adapters), LoRA only (adapters, every edit off) and both (as composed), next to the
MEMIT-only home before any sleep (paper 4 table 7; SWS vs SWS+REM: paper 4 table 5)."""

from __future__ import annotations

from sleepwake.experiments.lab import Lab, inject_one_by_one, measure, sleep_row, stage_counts
from sleepwake.experiments.result import ExperimentResult

VARIANTS = {"SWS": ["rem.enabled=false"], "SWS+REM": ["rem.enabled=true"]}


def pathways(memory, pool, base: float) -> list[dict]:
    """Measure the three compositions of one home; leaves it composed as stored."""
    edits = [e.edit_id for e in memory.edits]
    rows = []
    for pathway, skip, adapters in (("MEMIT only", [], False), ("LoRA only", edits, True), ("both", [], True)):
        memory.compose(skip=skip, with_adapters=adapters)
        try:
            rows.append({"pathway": pathway, **measure(memory, pool, base)})
        finally:
            memory.compose()
    return rows


def run_ablation(lab: Lab) -> ExperimentResult:
    pool = lab.pool(lab.cfg.ablation_facts)
    home_dir = lab.home_dir("ablation-wake")
    memory = lab.open(home_dir)
    base = memory.perplexity(base=True)
    inject_one_by_one(memory, pool)
    rows = [{"sleep": "none", "pathway": "MEMIT only", **measure(memory, pool, base)}]
    lab.progress("pathways", rows[-1])
    sleeps = []
    for variant, extra in VARIANTS.items():
        copy = lab.copy_home(home_dir, f"ablation-{variant.lower().replace('+', '-')}")
        sleeps.append({"sleep": variant, **sleep_row(lab.sleep(copy, extra))})
        memory = lab.open(copy, extra)
        sleeps[-1].update(stage_counts(memory))
        for row in pathways(memory, pool, base):
            rows.append({"sleep": variant, **row})
            lab.progress("pathways", rows[-1])
    pick = {(r["sleep"], r["pathway"]): r for r in rows}
    summary = {"facts": len(pool), "base_perplexity": round(base, 4),
               **{f"{s}|{p}|{k}": pick[(s, p)].get(k) for (s, p) in pick for k in ("raw", "chat", "drift")}}
    return ExperimentResult("ablation", summary, {"pathways": rows, "sleeps": sleeps})
