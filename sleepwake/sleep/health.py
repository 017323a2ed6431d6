"""Health check: the first stage of every sleep.

Perplexity (and its base-model baseline), ledger/weights consistency, and the reconciliation of
an interrupted run (done when the memory was opened for writing; reported here). Perplexity is
cached by (model, composed-weights digest, corpus), so an unchanged home costs no forward pass.
"""

from __future__ import annotations

import time

from sleepwake.errors import CorruptedStateError
from sleepwake.resources import peak_rss_gb, reset_peak_rss
from sleepwake.sleep import locality as locality_stage
from sleepwake.sleep.results import HealthResult
from sleepwake.sleep.session import SleepSession


def check_consistency(memory) -> dict:
    """Every factor file verifies against the ledger, recomposition is deterministic, and no edit
    is left without a fact (orphan edits are removed: nothing needs them)."""
    # Factor files are verified against their checksums once per open, when first composed;
    # only those the composition skipped (edits at scale 0) are read here.
    for edit in memory.edits:
        memory.factors(edit)  # raises CorruptedStateError with the file named
    for adapter in memory.adapters:
        memory.adapter_factors(adapter)
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


def health_check(session: SleepSession) -> HealthResult:
    started = time.perf_counter()
    memory = session.memory
    consistency = check_consistency(memory)
    baseline = memory.perplexity(base=True)
    current = memory.perplexity()
    counts = memory.ledger.counts()
    result = HealthResult(
        facts=counts["facts"], edits=counts["edits"], adapters=len(memory.adapters),
        perplexity=current, perplexity_baseline=baseline,  # unrounded: the gates compare with them
        perplexity_drift=round(current / baseline - 1.0, 6),
        locality=locality_stage.start_locality(session) if session.kind == "full_sleep" else None,
        leak=locality_stage.start_leak(session) if session.kind == "full_sleep" else None,
        recovered_snapshots=len(memory.recovered), orphan_files_removed=len(memory.orphans_removed),
        **consistency)
    result.rows = [{"check": k, "value": str(v)} for k, v in result.summary().items() if k not in ("stage", "seconds")]
    if memory.recovered:
        result.rows.append({"check": "recovered_from", "value": ", ".join(memory.recovered)})
        result.note = (f"An interrupted sleep was undone before this one began (snapshot {memory.recovered[0]}): "
                       "the home is exactly as it was before that sleep.")
    return finish(session, result, started)


def finish(session: SleepSession, result, started: float):
    """Time a stage, note its peak memory, and record its figures under the run id (every stage
    ends with this; the peak restarts here, so the next stage measures its own)."""
    result.seconds = round(time.perf_counter() - started, 3)
    result.peak_rss_gb = peak_rss_gb()
    reset_peak_rss()
    result.part_seconds = session.take_parts(result.seconds)
    parts = {f"{name}_seconds": secs for name, secs in result.part_seconds.items()}
    session.record(result.stage, {**result.figures(), **parts, "seconds": result.seconds})
    return result
