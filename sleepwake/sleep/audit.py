"""Audit: greedy raw, paraphrase and chat recall of every selected fact (paper 5, line 3).

A fact is healthy when its own prompt completes to its object (raw recall, greedy); the
paraphrase share and chat recall are measured and stored too (the sleep gates and SWS use them).
Each fact's outcome is an ``audits`` row under the run id, so ``drowsiness`` and later sleeps can
read the latest verdict per fact.
"""

from __future__ import annotations

import time
from typing import Sequence

from sleepwake.models import probes
from sleepwake.sleep.run import SleepRun, StageResult


def audit(run: SleepRun, fact_ids: Sequence[int] | None = None, label: str = "audit") -> StageResult:
    """Probe the given facts (all facts when None). ``label`` names the stage ("audit", "validate-audit")."""
    started = time.perf_counter()
    memory = run.memory
    rows = memory.ledger.list_facts()
    if fact_ids is not None:
        wanted = set(fact_ids)
        rows = [r for r in rows if r.fact_id in wanted]
    results = probes.probe_facts(memory.backend, [r.fact for r in rows], run.settings.probes)
    audits, table = [], []
    for row, probe in zip(rows, results):
        audits.append({"run_id": run.run_id, "fact_id": row.fact_id, "raw_recall": float(probe.raw),
                       "paraphrase_recall": probe.paraphrase,
                       "chat_recall": None if probe.chat is None else float(probe.chat),
                       "healthy": probe.raw})
        table.append({"fact_id": row.fact_id, "fact": f"{row.fact.prompt()} -> {row.object}", "stage": row.stage,
                      "raw": probe.raw, "paraphrase": probe.paraphrase, "chat": probe.chat,
                      "completion": probe.raw_text.strip()[:60]})
    if label == "audit":
        run.save_audits(audits)
    else:  # a post-change re-measurement becomes the verdict of record only if the change is kept
        run.pending_audits = audits
    summary = summarize(rows, results)
    return run.finish(StageResult(label, summary, table), started)


def summarize(rows, results) -> dict:
    n = len(rows)
    healthy = [r.fact_id for r, p in zip(rows, results) if p.raw]
    degraded = [r.fact_id for r, p in zip(rows, results) if not p.raw]
    paraphrase = [p.paraphrase for p in results if p.paraphrase is not None]
    chat = [p.chat for p in results if p.chat is not None]
    return {
        "n": n,
        "raw_recall": round(len(healthy) / n, 4) if n else None,
        "paraphrase_recall": round(sum(paraphrase) / len(paraphrase), 4) if paraphrase else None,
        "chat_recall": round(sum(chat) / len(chat), 4) if chat else None,
        "degraded": len(degraded),
        "healthy_ids": healthy,
        "degraded_ids": degraded,
    }


def nap_selection(run: SleepRun) -> list[int]:
    """A nap's audit: the most recently stored facts plus every fact degraded at the last audit."""
    rows = run.memory.ledger.list_facts()
    recent = sorted(rows, key=lambda r: (r.updated_at or r.created_at, r.fact_id))
    recent_ids = [r.fact_id for r in recent[-run.settings.audit.recent_facts:]] if run.settings.audit.recent_facts else []
    latest = run.memory.ledger.latest_audits()
    degraded = [fid for fid, row in latest.items() if row.get("healthy") is False]
    known = {r.fact_id for r in rows}
    return sorted(set(recent_ids) | (set(degraded) & known))
