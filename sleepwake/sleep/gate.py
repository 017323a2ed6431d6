"""The pre-sleep snapshot, the validation gates and the byte-exact rollback.

The pre-sleep snapshot is taken before anything in a full sleep changes weights or ledger, and
stays "open" (the journal) until the sleep ends: a process killed mid-sleep leaves it open and
the next writer restores it (see ``Memory.open``). A failed gate restores it at once.
"""

from __future__ import annotations

import time

from sleepwake.errors import CorruptedStateError
from sleepwake.faults import crash_point
from sleepwake.sleep.audit import audit
from sleepwake.sleep.run import SleepRun, StageResult
from sleepwake.storage.snapshots import SnapshotStore


def snapshot_name(run: SleepRun) -> str:
    return f"{run.run_id}-pre-sleep"


def facts_fingerprint(memory) -> list[tuple]:
    """What "facts identical" means for a rollback: every ledger fact column that sleep may change."""
    return [(r.fact_id, r.subject, r.relation, r.object, r.stage, r.edit_id) for r in memory.ledger.list_facts()]


def take_snapshot(run: SleepRun) -> StageResult:
    started = time.perf_counter()
    memory = run.memory
    digest = memory.weights_digest()
    memory.ledger.checkpoint()
    snap = SnapshotStore(memory.home.root).take(
        snapshot_name(run), {"run_id": run.run_id, "weights_digest": digest, "facts": len(memory.ledger.list_facts())})
    run.mark_history()
    summary = {"snapshot": snap.name, "weights_digest": digest}
    return run.finish(StageResult("snapshot", summary), started)


def validate(run: SleepRun, before: dict, perplexity_before: float) -> tuple[StageResult, dict]:
    """Re-measure recall of every fact and perplexity; gate on both. Returns (result, after-audit summary)."""
    started = time.perf_counter()
    cfg = run.settings.validate_
    after = audit(run, None, label="validate-audit").summary
    ppl = run.memory.perplexity()
    crash_point("validate:before-verdict")
    increase = ppl / perplexity_before - 1.0
    health = run.results.get("health")
    baseline = health.summary.get("perplexity_baseline") if health else None
    drift = ppl / baseline - 1.0 if baseline else None
    recall_before, recall_after = before.get("raw_recall") or 0.0, after.get("raw_recall") or 0.0
    failures = []
    if cfg.enabled and increase > cfg.max_ppl_increase + 1e-9:  # float noise is not a rise
        failures.append(f"perplexity rose {increase:+.2%} (limit {cfg.max_ppl_increase:+.2%})")
    if cfg.enabled and drift is not None and drift > cfg.max_drift + 1e-9:
        failures.append(f"perplexity drifted {drift:+.2%} from the base model (limit {cfg.max_drift:+.2%})")
    if cfg.enabled and recall_after < recall_before - cfg.max_recall_drop - 1e-9:
        failures.append(f"raw recall fell {recall_before:.3f} -> {recall_after:.3f} (limit -{cfg.max_recall_drop:.3f})")
    summary = {"passed": not failures, "gated": cfg.enabled, "perplexity_before": round(perplexity_before, 4),
               "perplexity_after": round(ppl, 4), "perplexity_increase": round(increase, 6),
               "perplexity_drift": None if drift is None else round(drift, 6),
               "raw_recall_before": recall_before, "raw_recall_after": recall_after,
               "chat_recall_after": after.get("chat_recall"), "degraded_after": after.get("degraded"),
               "failures": failures}
    rows = [{"gate": "perplexity", "before": round(perplexity_before, 4), "after": round(ppl, 4),
             "limit": f"+{cfg.max_ppl_increase:.2%}", "passed": not any("perplexity rose" in f for f in failures)},
            {"gate": "drift from base", "before": baseline and round(baseline, 4), "after": round(ppl, 4),
             "limit": f"+{cfg.max_drift:.2%}", "passed": not any("drifted" in f for f in failures)},
            {"gate": "raw recall", "before": recall_before, "after": recall_after,
             "limit": f"-{cfg.max_recall_drop:.3f}", "passed": not any("recall" in f for f in failures)}]
    return run.finish(StageResult("validate", summary, rows), started), after


def rollback(run: SleepRun, expected_facts: list[tuple] | None = None) -> StageResult:
    """Restore ledger and factor files from the pre-sleep snapshot; prove the weights are the same bytes."""
    started = time.perf_counter()
    memory = run.memory
    store = SnapshotStore(memory.home.root)
    snap = store.get(snapshot_name(run))
    if snap is None:
        raise CorruptedStateError(f"pre-sleep snapshot of run {run.run_id} is missing; cannot roll back")
    store.restore(snap)
    drop_stage_snapshots(run, store)  # superseded: the pre-sleep state is back
    memory.reload()
    run.pending_audits = []
    run.replay_history()
    digest = memory.weights_digest()
    if digest != snap.manifest["weights_digest"]:
        raise CorruptedStateError(f"rollback of run {run.run_id} did not restore the weights byte for byte")
    if expected_facts is not None and facts_fingerprint(memory) != expected_facts:
        raise CorruptedStateError(f"rollback of run {run.run_id} did not restore the facts exactly")
    summary = {"rolled_back": True, "weights_digest": digest, "byte_exact": True}
    return run.finish(StageResult("rollback", summary), started)


def drop_stage_snapshots(run: SleepRun, store: SnapshotStore) -> None:
    """Drop this run's open stage snapshots (never its pre-sleep one: the report closes that)."""
    for snap in reversed(store.open_snapshots()):
        if snap.name.startswith(f"{run.run_id}-") and snap.name != snapshot_name(run):
            store.close(snap, outcome="superseded", keep=False)


def close_snapshot(run: SleepRun, outcome: str) -> None:
    """End the journal entry: the sleep finished (kept or rolled back) and the home is consistent."""
    store = SnapshotStore(run.memory.home.root)
    drop_stage_snapshots(run, store)  # a failed stage may have left its own open
    snap = store.get(snapshot_name(run))
    if snap is not None:
        keep = run.settings.sleep.keep_snapshots > 0
        store.close(snap, outcome, keep=keep)
        store.prune_closed(run.settings.sleep.keep_snapshots)
