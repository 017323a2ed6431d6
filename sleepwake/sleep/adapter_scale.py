"""Tonight's consolidation adapters at a smaller scale: SWS's retry before it undoes a pass.

A pass that consolidated its facts but moved unrelated answers too far (the locality or leak
limit, or the benchmark) is not all-or-nothing: the adapter's change is ``U V^T`` and its reach
shrinks with its scale, while the answers it was trained on to a margin survive a small cut. So
before undoing the pass SWS tries the same adapters at ``sws.retry_scales`` (re-gating every fact
there: a fact that no longer passes keeps its stage and its edit's scale). Measured on one 50-fact
pass (benchmarks/adapter_scale.py): at 0.85 locality 0.902 -> 0.923 with 44 facts passing
against 45; at 0.7 29 pass, at 0.5 9. Night 1 of the 500-fact run on a GPU lost its whole pass to
locality 0.874 against a 0.900 floor; the CPU's two draws of it kept theirs (one gate measured 0.915).
"""

from __future__ import annotations

import torch

from sleepwake.memory.weights import side_by_side


def merged_factors(memory, adapter_ids: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The adapters ``adapter_ids`` as one (``side_by_side``: U V^T of the merge is exactly their sum).
    Returns module -> (U (out, r), V (in, r))."""
    return side_by_side(memory.adapter_parts([a for a in memory.adapters if a.adapter_id in set(adapter_ids)]))


def store_scaled(memory, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float,
                 replaces: list[int], run_id: str | None) -> int:
    """Store ``scale`` * the merged adapter in place of ``replaces`` (one ledger transaction; the
    pass's journal snapshot undoes it byte for byte). Returns the new adapter's id."""
    scaled = {name: (u * scale, v) for name, (u, v) in factors.items()}
    return memory.store_adapter("sws", run_id, scaled, replaces=replaces)  # its crash points: adapter:*
