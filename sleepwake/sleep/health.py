"""Health check and curation: the first two stages of every sleep.

health_check: perplexity (and its base-model baseline), ledger/weights consistency, and the
reconciliation of an interrupted run (done when the memory was opened for writing; reported here).
curate: which facts the sleep looks after, what needs work, and pruning that cannot spiral.
"""

from __future__ import annotations

import time

from sleepwake.errors import CorruptedStateError
from sleepwake.sleep.run import SleepRun, StageResult


def check_consistency(memory) -> dict:
    """Every edit's factor file verifies against the ledger, recomposition is deterministic,
    and no edit is left without a fact. Orphan edits (no fact) are removed: nothing needs them."""
    for entry in [*memory.edits, *memory.adapters]:
        memory.deltas.load(entry.file, entry.checksum)  # raises CorruptedStateError with the file named
    held = {row.edit_id for row in memory.ledger.list_facts() if row.edit_id is not None}
    orphan_edits = [e.edit_id for e in memory.edits if e.edit_id not in held]
    if orphan_edits:
        memory.ledger.remove_edits(orphan_edits)
        memory.apply_ledger_change(removed=orphan_edits)
    digest = memory.weights_digest()
    memory.compose()
    if memory.weights_digest() != digest:
        raise CorruptedStateError("recomposing the weights twice gave different bytes; refusing to sleep")
    return {"orphan_edits_removed": len(orphan_edits), "weights_digest": digest}


def health_check(run: SleepRun) -> StageResult:
    started = time.perf_counter()
    memory = run.memory
    consistency = check_consistency(memory)
    baseline = memory.perplexity(base=True)
    current = memory.perplexity()
    counts = memory.ledger.counts()
    summary = {
        "facts": counts["facts"], "edits": counts["edits"],
        "perplexity": current, "perplexity_baseline": baseline,  # unrounded: the gate compares with it
        "perplexity_drift": round(current / baseline - 1.0, 6),
        "recovered_snapshots": len(memory.recovered), "orphan_files_removed": len(memory.orphans_removed),
        **consistency,
    }
    rows = [{"check": k, "value": str(v)} for k, v in summary.items()]
    if memory.recovered:
        rows.append({"check": "recovered_from", "value": ", ".join(memory.recovered)})
    return run.finish(StageResult("health", summary, rows), started)


def curate(run: SleepRun) -> StageResult:
    """Select the facts to audit (all of them: no fact ever leaves the audit), list those whose
    MEMIT edit is missing, and prune only consolidated edits (scale 0, LoRA carries the fact)."""
    started = time.perf_counter()
    memory, cfg = run.memory, run.settings.curate
    edits = {e.edit_id: e for e in memory.edits}
    pruned = []
    if cfg.prune_consolidated:
        facts_by_edit: dict[int, list] = {}
        for row in memory.ledger.list_facts():
            if row.edit_id is not None:
                facts_by_edit.setdefault(row.edit_id, []).append(row)
        pruned = [eid for eid, e in edits.items()
                  if e.scale == 0.0 and all(r.stage == 3 for r in facts_by_edit.get(eid, []))]
        if pruned:
            memory.ledger.prune_edits(pruned)
            memory.apply_ledger_change(removed=pruned)
    rows = memory.ledger.list_facts()
    live = {e.edit_id for e in memory.edits}
    missing = [r.fact_id for r in rows if r.stage < 3 and r.edit_id not in live]
    active = [r.fact_id for r in rows if r.stage < 3]
    over_cap = max(0, len(active) - cfg.max_active_facts)
    summary = {"facts": len(rows), "active": len(active), "consolidated": len(rows) - len(active),
               "missing_edit": len(missing), "pruned": len(pruned), "over_cap": over_cap,
               "audit_ids": [r.fact_id for r in rows], "missing_ids": missing}
    markdown = None
    if over_cap:
        markdown = (f"**Over the cap**: {len(active)} facts are held by MEMIT, cap {cfg.max_active_facts}. "
                    "No healthy fact is dropped; consolidate (SWS) or raise `curate.max_active_facts`.")
    table = [{"fact_id": r.fact_id, "subject": r.subject, "relation": r.relation, "object": r.object,
              "stage": r.stage, "edit_id": r.edit_id, "needs": "re-inject" if r.fact_id in missing else ""}
             for r in rows]
    return run.finish(StageResult("curate", summary, table, markdown), started)
