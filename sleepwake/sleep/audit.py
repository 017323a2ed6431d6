"""Audit: greedy raw, paraphrase and chat recall of the selected facts (paper 5, line 3).

A fact is healthy when its own prompt completes to its object (raw recall, greedy); the
paraphrase share and chat recall are measured too (the gates and SWS use them). The verdicts of
the audit are saved at once; those of the post-change re-audit (``label="validate-audit"``) only
if the sleep is kept (the report saves them), so a rolled-back sleep leaves the verdicts of record.
"""

from __future__ import annotations

import time
from typing import Sequence

from sleepwake.models import probes
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import AuditResult
from sleepwake.sleep.session import SleepSession


def audit(session: SleepSession, fact_ids: Sequence[int] | None = None, label: str = "audit",
          standing: AuditResult | None = None) -> AuditResult:
    """Probe the given facts (all facts when None). With ``standing`` (an earlier audit of the same
    weights but a few changed edits), its verdicts stand for the facts not probed again."""
    started = time.perf_counter()
    rows = session.ledger.list_facts()
    if fact_ids is not None:
        wanted = set(fact_ids)
        rows = [r for r in rows if r.fact_id in wanted]
    results = probes.probe_facts(session.memory.backend, [r.fact for r in rows], session.settings.probes)
    verdicts, table = [], []
    for row, probe in zip(rows, results):
        verdicts.append({"run_id": session.run_id, "fact_id": row.fact_id, "raw_recall": float(probe.raw),
                         "paraphrase_recall": probe.paraphrase,
                         "chat_recall": None if probe.chat is None else float(probe.chat), "healthy": probe.raw})
        table.append({"fact_id": row.fact_id, "fact": f"{row.fact.prompt()} -> {row.object}", "stage": row.stage,
                      "raw": probe.raw, "paraphrase": probe.paraphrase, "chat": probe.chat,
                      "completion": probe.raw_text.strip()[:60]})
    if standing is not None:
        probed = {r.fact_id for r in rows}
        verdicts = sorted(verdicts + [v for v in standing.verdicts if v["fact_id"] not in probed], key=_by_fact)
        table = sorted(table + [t for t in standing.rows if t["fact_id"] not in probed], key=_by_fact)
    result = AuditResult(stage=label, verdicts=verdicts, rows=table, **summarize(table))
    if label == "audit":
        session.save_audits(verdicts)
    return finish(session, result, started)


def _by_fact(entry: dict) -> int:
    return entry["fact_id"]


def summarize(table: list[dict]) -> dict:
    """The audit's figures from its per-fact rows (fact_id, stage, raw, paraphrase, chat)."""
    n = len(table)
    healthy = [t["fact_id"] for t in table if t["raw"]]
    paraphrase = [t["paraphrase"] for t in table if t["paraphrase"] is not None]
    chat = [t["chat"] for t in table if t["chat"] is not None]
    return {
        "n": n,
        "raw_recall": round(len(healthy) / n, 4) if n else None,
        "paraphrase_recall": round(sum(paraphrase) / len(paraphrase), 4) if paraphrase else None,
        "chat_recall": round(sum(chat) / len(chat), 4) if chat else None,
        "degraded": n - len(healthy),
        "healthy_ids": healthy,
        "degraded_ids": [t["fact_id"] for t in table if not t["raw"]],
        # Facts consolidated at least once (the adapter carries their chat answer; their edit is scaled
        # down or gone) that still complete raw but no longer answer in chat: a later night's training
        # overwrote them in the adapter.
        "chat_lost_ids": [t["fact_id"] for t in table if t["stage"] >= 1 and t["raw"] and t["chat"] is False],
    }
