"""SWS's gate (per-fact recall through the weights as composed) and the settled facts in it: stage-3
facts (edit pruned, only the folded adapters hold them) checked the same night as tonight's training
and, where it overwrote them, relearned in SWS's further round.

The stage-1/2 facts are gated every night and relearned at once (``sws.max_relearned``); a stage-3
fact was never looked at by SWS, so one that tonight's adapter overwrote waited for a later audit,
maintain's reconsolidation (10 a night) or validate's MEMIT repair (whose edits drift the model).
The 500-fact run lost 16-26 % of its stage-3 facts in chat by nights 5-7 while stages 1-2 held at
3-6 % (docs/results.md). Checking costs one chat probe per sampled fact and round; relearning needs
no edit: the fact's ledger row is its training text.
"""

from __future__ import annotations

import random

from sleepwake.models import probes
from sleepwake.sleep.session import SleepSession, timed


def gate_probes(session: SleepSession):
    """The probe settings of every SWS gate: the fact's own question in chat and its raw prompt."""
    return session.settings.probes.model_copy(update={"paraphrases": False, "chat": True})


def sample(session: SleepSession, rows) -> list:
    """Up to ``sws.settled_checked`` stage-3 rows: those whose latest audit lost an answer the gate
    checks first (chat; raw too with ``sws.gate_raw``), then those never audited, then those audited
    longest ago (a rotation over the nights). None with ``sws.rounds`` 1: without a further round
    nothing could relearn them. A fact that lost only its raw answer counts: the audit sees it every
    night (it is degraded), so by age alone it would come last and never be checked (night 9 of the
    500-fact run ended with 15 such stage-3 facts, against 17 that lost chat)."""
    cfg = session.settings.sws
    settled = [r for r in rows if r.stage >= 3]
    if not cfg.settled_checked or cfg.rounds < 2 or not settled:
        return []
    latest = session.ledger.latest_audits()

    def lost_answer(row) -> bool:
        audit = latest.get(row.fact_id, {})
        chat, raw = audit.get("chat_recall"), audit.get("raw_recall")
        return (chat is not None and chat < 0.5) or (cfg.gate_raw and raw is not None and raw < 0.5)

    unaudited = [r for r in settled if r.fact_id not in latest]
    audited = sorted((r for r in settled if r.fact_id in latest),
                     key=lambda r: (not lost_answer(r), latest[r.fact_id]["ts"], r.fact_id))
    lost = [r for r in audited if lost_answer(r)]
    ordered = lost + unaudited + audited[len(lost):]
    return ordered[:cfg.settled_checked]


def anchored(session: SleepSession, exclude=()) -> list:
    """Up to ``lora.memory_anchors`` consolidated facts (stage >= 1) not among ``exclude`` (the pass's own),
    drawn with the sleep's own seed: what an SWS pass's anchor term holds where it is (``consolidate.anchor_set``).
    A fact one night's adapter no longer trains is overwritten by later ones; the 500-fact run's stage-3
    facts lost a fifth to a half of their chat answers each night (docs/results.md)."""
    count = session.settings.lora.memory_anchors
    if not count:
        return []
    skip = {fact.key for fact in exclude}
    rows = [r for r in session.ledger.list_facts() if r.stage >= 1 and r.fact.key not in skip]
    return [r.fact for r in random.Random(session.night_seed()).sample(rows, min(count, len(rows)))]


def holding(session: SleepSession, rows) -> dict[int, bool]:
    """Fact id -> whether the weights as composed answer it (chat; and raw with ``sws.gate_raw``)."""
    return {entry["fact_id"]: entry["passed"] for entry in gate_facts(session, rows)[0]} if rows else {}


@timed("gate")
def gate_facts(session: SleepSession, rows) -> tuple[list[dict], dict[int, int]]:
    """Per-fact recall through the adapters alone (gated edits at 0) -> (table, proposed stages)."""
    cfg = session.settings.sws
    results = probes.probe_facts(session.memory.backend, [r.fact for r in rows], gate_probes(session))
    table, stages = [], {}
    for row, probe in zip(rows, results):
        passed = bool(probe.chat) and (probe.raw or not cfg.gate_raw)
        stages[row.fact_id] = min(row.stage + 1, 3) if passed else row.stage
        table.append({"fact_id": row.fact_id, "fact": f"{row.fact.prompt()} -> {row.object}", "chat": bool(probe.chat),
                      "raw": probe.raw, "passed": passed, "stage_before": row.stage, "edit_id": row.edit_id,
                      "answer": (probe.chat_text or "").strip()[:60]})
    return table, stages
