"""Curate: which facts the sleep looks after, what needs work, and pruning that cannot spiral.

Every fact stays in the ledger and auditable; facts whose MEMIT edit is missing are listed for
re-injection; only consolidated edits (scale 0, every fact on them at stage 3, the LoRA carries
them) are pruned; over ``curate.max_active_facts`` it warns and drops nothing.
"""

from __future__ import annotations

import time

from sleepwake.sleep.health import finish
from sleepwake.sleep.results import CurateResult
from sleepwake.sleep.session import SleepSession


def curate(session: SleepSession) -> CurateResult:
    started = time.perf_counter()
    memory, cfg = session.memory, session.settings.curate
    pruned = prunable_edits(memory) if cfg.prune_consolidated else []
    if pruned:
        memory.ledger.prune_edits(pruned)
        memory.apply_ledger_change(removed=pruned)
    rows = memory.ledger.list_facts()
    live = {e.edit_id for e in memory.edits}
    missing = [r.fact_id for r in rows if r.stage < 3 and r.edit_id not in live]
    active = [r.fact_id for r in rows if r.stage < 3]
    over_cap = max(0, len(active) - cfg.max_active_facts)
    result = CurateResult(facts=len(rows), active=len(active), consolidated=len(rows) - len(active),
                          missing_edit=len(missing), pruned=len(pruned), over_cap=over_cap, missing_ids=missing)
    if over_cap:
        result.note = (f"**Over the cap**: {len(active)} facts are held by MEMIT, cap {cfg.max_active_facts}. "
                       "No healthy fact is dropped; consolidate (SWS) or raise `curate.max_active_facts`.")
    result.rows = [{"fact_id": r.fact_id, "subject": r.subject, "relation": r.relation, "object": r.object,
                    "stage": r.stage, "edit_id": r.edit_id, "needs": "re-inject" if r.fact_id in missing else ""}
                   for r in rows if r.stage < 3 or r.fact_id in missing][:500]
    return finish(session, result, started)


def prunable_edits(memory) -> list[int]:
    """Edits at scale 0 whose every fact is consolidated (stage 3): nothing reads them any more."""
    facts_by_edit: dict[int, list] = {}
    for row in memory.ledger.list_facts():
        if row.edit_id is not None:
            facts_by_edit.setdefault(row.edit_id, []).append(row)
    return [e.edit_id for e in memory.edits
            if e.scale == 0.0 and e.edit_id in facts_by_edit and all(r.stage == 3 for r in facts_by_edit[e.edit_id])]
