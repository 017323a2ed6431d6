"""Maintain: refresh degraded edits in place under null-space constraints (paper 5, lines 6-10).

For each degraded fact (at most ``maintain.max_refresh`` per cycle, facts whose edit is missing
first, then oldest first): revert its edit, re-solve MEMIT on the weights without it with a HARD
constraint that the outputs at every healthy fact's stored keys stay unchanged, and replace the
old edit with the new one in one ledger transaction. With ``protect_refreshed`` the facts refreshed
earlier in the cycle are protected too, so refreshes cannot undo each other within a cycle.

The stage guards itself with a snapshot: a retry (Prefect, after a transient error) first puts the
home back as it was when the stage began, so a half-done attempt is never built upon.
"""

from __future__ import annotations

import time

from sleepwake.faults import crash_point
from sleepwake.models import probes
from sleepwake.sleep.run import SleepRun, StageResult
from sleepwake.storage.snapshots import SnapshotStore


def stage_snapshot(run: SleepRun, stage: str):
    """Take this stage's snapshot, or, when an earlier attempt left one open, restore it first."""
    store = SnapshotStore(run.memory.home.root)
    name = f"{run.run_id}-{stage}"
    earlier = store.get(name)
    if earlier is not None:
        store.restore(earlier)
        run.memory.reload()
        return earlier
    run.ledger.checkpoint()
    return store.take(name, {"run_id": run.run_id, "stage": stage, "weights_digest": run.memory.weights_digest(),
                             "history_mark": [len(run.metric_log), len(run.audit_log)]})


def choose_targets(run: SleepRun, degraded_ids, missing_ids) -> list:
    rows = {r.fact_id: r for r in run.memory.ledger.list_facts()}
    ordered = [fid for fid in missing_ids if fid in rows]
    ordered += sorted(fid for fid in degraded_ids if fid in rows and fid not in ordered and rows[fid].stage < 3)
    return [rows[fid] for fid in ordered[: run.settings.maintain.max_refresh]]


def maintain(run: SleepRun, healthy_ids, degraded_ids, missing_ids=()) -> StageResult:
    started = time.perf_counter()
    memory, cfg = run.memory, run.settings.maintain
    snapshot = stage_snapshot(run, "maintain")  # first, so a retry starts from the same state
    targets = choose_targets(run, degraded_ids, missing_ids)
    if not cfg.enabled or not targets:
        summary = {"refreshed": 0, "recovered": 0, "still_degraded": 0, "skipped": not cfg.enabled,
                   "pending": len(set(degraded_ids) | set(missing_ids))}
        return close_after(run, snapshot, run.finish(StageResult("maintain", summary), started))
    facts = {r.fact_id: r for r in memory.ledger.list_facts()}
    protected = {facts[fid].edit_id for fid in healthy_ids if fid in facts and facts[fid].edit_id is not None}
    table = []
    for row in targets:
        begin = time.perf_counter()
        new_edit = memory.refresh(row, protected)
        if cfg.protect_refreshed:
            protected.add(new_edit)
        ok = probes.raw_recall(memory.backend, [row.fact], run.settings.probes)[0][0]
        table.append({"fact_id": row.fact_id, "fact": f"{row.fact.prompt()} -> {row.object}",
                      "old_edit": row.edit_id, "new_edit": new_edit, "recalled_after": ok,
                      "protected_edits": len(protected), "seconds": round(time.perf_counter() - begin, 2)})
        run.record("maintain", {"refresh_recalled": ok}, fact_id=row.fact_id)
        crash_point("maintain:after-refresh")
    recovered = sum(1 for r in table if r["recalled_after"])
    pending = len(set(degraded_ids) | set(missing_ids)) - len(targets)
    summary = {"refreshed": len(table), "recovered": recovered, "still_degraded": len(table) - recovered,
               "pending": pending, "skipped": False}
    return close_after(run, snapshot, run.finish(StageResult("maintain", summary, table), started))


def close_after(run: SleepRun, snapshot, result: StageResult) -> StageResult:
    """Close the stage snapshot only once everything the stage writes is written (a retry after
    a failure anywhere before this point restores it and starts over)."""
    SnapshotStore(run.memory.home.root).close(snapshot, outcome="done")
    return result
