"""longevity: many nights of wake and the real full sleep (SWS, REM, fold: the defaults).

Each night ``facts_per_day`` new facts are injected in one batch, then one full sleep runs, then
every fact stored so far is measured (raw and chat recall, perplexity drift, locality and leak on
the 256 unrelated prompts) with what the night cost: sleep seconds per stage, peak resident
memory, home bytes, adapters and edits; and what its stages did, from the sleep's metrics in the
ledger (``STAGE_FIGURES``: SWS trained, relearned, repaired, gated, steps, chat recall through the
adapters alone; maintain's reconsolidated; validate's repairs). Paper 5's MEMIT-only system
spiralled at 35 facts; a lifetime memory must hold recall while its state and nights stay bounded.

Resumable: every finished night is in ``results.partial.json`` at once; ``--resume`` continues
after the last finished night on the same home (a night killed mid-sleep is undone by the
journal when the home is next opened, then run again).
"""

from __future__ import annotations

import time
from pathlib import Path

from sleepwake.experiments.lab import Lab, measure, sleep_row, stage_counts
from sleepwake.experiments.result import ExperimentResult
from sleepwake.resources import peak_rss_gb, reset_peak_rss
from sleepwake.sleep.locality import measure_memory


def home_bytes(home_dir: str) -> int:
    return sum(p.stat().st_size for p in Path(home_dir).rglob("*") if p.is_file())


# What each night's stages did, from the sleep's metrics in the ledger: {row column: "stage.metric"}.
STAGE_FIGURES = {"sws_trained": "sws.trained", "sws_relearned": "sws.relearned", "sws_repaired": "sws.repaired",
                 "settled_relearned": "sws.settled_relearned", "settled_held": "sws.settled_held",
                 "sws_gated": "sws.gated", "sws_train_steps": "sws.train_steps", "lora_chat": "sws.lora_chat_recall",
                 "reconsolidated": "maintain.reconsolidating", "validate_repaired": "validate.repaired"}


def stage_figures(memory, run_id: str | None) -> dict:
    metrics = memory.ledger.run_metrics(run_id) if run_id else {}
    return {column: metrics.get(name) for column, name in STAGE_FIGURES.items()}


def run_night(lab: Lab, home_dir: str, night: int, base: float) -> dict:
    cfg = lab.cfg
    pool = lab.pool(cfg.days * cfg.facts_per_day)
    new = pool[(night - 1) * cfg.facts_per_day:night * cfg.facts_per_day]
    memory = lab.open(home_dir)
    started = time.perf_counter()
    memory.inject([p.fact for p in new], source="experiment")
    inject_s = time.perf_counter() - started
    del memory  # the sleep opens its own; this one's caches (factors, key statistics) must not ride along
    reset_peak_rss()
    report = sleep_row(lab.sleep(home_dir, cfg.longevity_sleep))
    peak = max([peak_rss_gb() or 0.0, *(report.get("stage_peak_rss_gb") or {}).values()])  # stages restart it
    memory = lab.open(home_dir)
    stored = pool[:night * cfg.facts_per_day]
    after = measure(memory, stored, base)
    local = measure_memory(memory)
    return {"night": night, "facts": len(stored), "raw": after["raw"], "chat": after["chat"],
            "chat_held_out": after["chat_held_out"], "degraded": after["degraded"], "perplexity": after["perplexity"],
            "drift": after["drift"], "locality": local["locality"], "greedy_unchanged": local["greedy_unchanged"],
            "leak": local["leak"], "inject_seconds": round(inject_s, 1), "sleep_seconds": report["seconds"],
            "peak_rss_gb": peak, "home_bytes": home_bytes(home_dir), "adapters": len(memory.adapters),
            **stage_counts(memory), "outcome": report["outcome"], "refreshed": report["refreshed"],
            "pruned": report["pruned"], "audited": report.get("audited"), "stage_seconds": report["stage_seconds"],
            "stage_peak_rss_gb": report.get("stage_peak_rss_gb") or {}, "part_seconds": report.get("stage_part_seconds") or {},
            # why a night was rolled back or a pass undone (night 2 of the 500-fact run left only figures)
            "failures": report.get("failures") or [], "sws_reason": report.get("sws_reason"),
            "sws_scale": report.get("sws_scale"), "rem_reason": report.get("rem_reason"),
            **stage_figures(memory, report.get("run_id"))}


def declining(values: list[float], run: int = 3) -> bool:
    """True when the last ``run`` values each fell (a spiral, not noise around a level)."""
    tail = values[-(run + 1):]
    return len(tail) == run + 1 and all(b < a for a, b in zip(tail, tail[1:]))


def run_longevity(lab: Lab) -> ExperimentResult:
    nights = list(lab.resumed("nights"))
    home_dir = lab.home_dir("longevity", keep=bool(nights))
    base = lab.open(home_dir).perplexity(base=True)
    for night in range(len(nights) + 1, lab.cfg.days + 1):
        nights.append(run_night(lab, home_dir, night, base))
        lab.progress("nights", nights[-1])
    first, last = nights[0], nights[-1]
    summary = {"nights": len(nights), "facts": last["facts"], "final_raw": last["raw"], "final_chat": last["chat"],
               "min_raw_after_sleep": min(n["raw"] for n in nights), "min_chat_after_sleep": min(n["chat"] for n in nights),
               "final_drift": last["drift"], "max_drift": max(n["drift"] for n in nights),
               "final_locality": last["locality"], "max_leak": max(n["leak"] for n in nights),
               "last_over_first_sleep_seconds": round(last["sleep_seconds"] / max(first["sleep_seconds"], 1e-9), 3),
               "adapters_night_2": nights[1]["adapters"] if len(nights) > 1 else None, "adapters_last": last["adapters"],
               "max_peak_rss_gb": max(n["peak_rss_gb"] for n in nights), "home_bytes_last": last["home_bytes"],
               "rolled_back": sum(n["outcome"] == "rolled_back" for n in nights),
               "recall_declining": declining([n["raw"] for n in nights]), "base_perplexity": round(base, 4)}
    return ExperimentResult("longevity", summary, {"nights": nights})
