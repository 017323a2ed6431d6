"""Fold: every adapter becomes ONE consolidated adapter, so a home's state stays bounded.

Each sleep adds up to two LoRA adapters (SWS, REM); kept apart, a year of nights would be
hundreds of files that every open composes. After REM, all adapters are summed per module in
factor space and re-factored at the smallest rank that keeps ``lora.fold_energy`` of the sum's
squared singular values, at most ``lora.fold_max_rank`` (exact when the sum's rank fits):

    sum_a U_a V_a^T = Q_u (R_u R_v^T) Q_v^T = (Q_u A) S (Q_v B)^T   ->   keep the top-k of S

So the number of adapters is 1 after every kept sleep, and the bytes are bounded by the rank
budget (never more than a dense copy of the adapted modules). The fold runs under its own
journal snapshot and before ``validate``, whose gates judge the folded weights; a rollback
restores the unfolded adapters byte for byte.
"""

from __future__ import annotations

import time

from sleepwake.faults import crash_point
from sleepwake.models.lowrank import refactor
from sleepwake.sleep import journal
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import FoldResult
from sleepwake.sleep.session import SleepSession


def fold(session: SleepSession) -> FoldResult:
    started = time.perf_counter()
    memory, cfg = session.memory, session.settings.lora
    adapters = list(memory.adapters)
    before = sum(a.nbytes for a in adapters)
    if len(adapters) < 2:
        result = FoldResult(skipped=True, adapters_before=len(adapters), adapters_after=len(adapters),
                            bytes_before=before, bytes_after=before, rank=max((a.rank for a in adapters), default=0))
        return finish(session, result, started)
    with journal.stage(session, "fold"):
        factors, kept = {}, []
        for name, parts in memory.adapter_parts(adapters).items():
            u, v, energy = refactor(parts, cfg.fold_energy, cfg.fold_max_rank)
            factors[name] = (u, v)
            kept.append(energy)
        adapter_id = memory.store_adapter("consolidated", session.run_id, factors, replaces=[a.adapter_id for a in adapters])
        crash_point("fold:after-adapter")
        after = memory.adapters[0].nbytes if memory.adapters else 0
        result = FoldResult(adapters_before=len(adapters), adapters_after=len(memory.adapters),
                            rank=max(u.shape[1] for u, _ in factors.values()), energy_kept=round(min(kept), 6),
                            bytes_before=before, bytes_after=after)
        result.rows = [{"adapter": a.adapter_id, "kind": a.kind, "run": a.run_id, "rank": a.rank, "bytes": a.nbytes}
                       for a in adapters] + [{"adapter": adapter_id, "kind": "consolidated (new)", "run": session.run_id,
                                              "rank": result.rank, "bytes": after}]
        return finish(session, result, started)
