"""What ``sleepwake status`` reports: counts, perplexity vs baseline, drowsiness, digest, bytes."""

from __future__ import annotations

from sleepwake.config import HealthConfig
from sleepwake.storage.snapshots import SnapshotStore


LAST_SLEEP_KEY = "last_full_sleep"


def drowsiness(latest_audits: dict[int, dict], unslept_facts: int, cfg: HealthConfig) -> dict:
    """Sleep pressure in [0, 1]: the worse of the degraded share at the last audit (paper 5,
    eq. 3) and the edit pressure: facts stored or changed since the last full sleep, relative to
    the wake capacity (paper 5: the wake/sleep capacity ratio sets how often to sleep)."""
    audited = list(latest_audits.values())
    degraded = sum(1 for row in audited if row.get("healthy") is False)
    degraded_share = degraded / len(audited) if audited else 0.0
    edit_pressure = min(1.0, unslept_facts / cfg.wake_capacity)
    level = max(degraded_share, edit_pressure)
    advice = "sleep" if level >= cfg.sleep_threshold else "nap" if level >= cfg.nap_threshold else "awake"
    return {"level": round(level, 4), "degraded_share": round(degraded_share, 4),
            "edit_pressure": round(edit_pressure, 4), "advice": advice}


def current_drowsiness(ledger, cfg: HealthConfig) -> dict:
    """Drowsiness from the ledger: latest audits, and facts changed since the last full sleep."""
    return drowsiness(ledger.latest_audits(), unslept_facts(ledger), cfg)


def unslept_facts(ledger) -> int:
    """Facts stored or changed since the last full sleep (all of them before the first)."""
    return ledger.count_facts_since(ledger.get_meta(LAST_SLEEP_KEY))


def waiting_warning(waiting: int, cfg: HealthConfig) -> str | None:
    """Why to sleep now, when more facts wait for sleep than one wake holds well
    (``health.wake_capacity``): edits past it raise perplexity and move unrelated answers (500
    facts in one wake, no sleep: perplexity +113 %, neighbour specificity 0.05, docs/results.md)."""
    if waiting <= cfg.wake_capacity:
        return None
    return (f"{waiting} facts wait for sleep, over health.wake_capacity ({cfg.wake_capacity}): edits past it raise "
            "perplexity and change unrelated answers; run `sleepwake sleep` (or set sleep.auto=true)")


def collect_status(memory, with_perplexity: bool = True) -> dict:
    ledger = memory.ledger
    counts = ledger.counts()
    status = {
        "home": str(memory.home.root),
        "model": memory.settings.model.source,
        "model_fingerprint": memory.backend.fingerprint,
        "backend": memory.settings.backend,
        "layers": memory.layers,
        "facts": counts["facts"],
        "edits": counts["edits"],
        "stages": {str(k): v for k, v in counts["facts_per_stage"].items()},
        "delta_bytes": sum(edit.nbytes for edit in memory.edits),
        "adapters": len(memory.adapters),
        "adapter_bytes": sum(adapter.nbytes for adapter in memory.adapters),
        "weights_digest": memory.weights_digest(),
        "drowsiness": current_drowsiness(ledger, memory.settings.health),
        # An interrupted sleep's journal: the next writing command restores it (readers see the
        # consistent intermediate state until then).
        "pending_repair": [s.name for s in SnapshotStore(memory.home.root).open_snapshots()],
    }
    if with_perplexity:
        baseline = memory.perplexity(base=True)
        current = memory.perplexity()
        status.update(perplexity=round(current, 4), perplexity_baseline=round(baseline, 4),
                      perplexity_drift=round(current / baseline - 1.0, 6))
    return status
