"""What a memory holds, declared once for the parts that work on it (``weights``, ``wake``).

``Memory`` sets these attributes when it opens; the mixins read them. Declaring them here lets
the type checker see one shape instead of attributes that appear from nowhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, ContextManager, Mapping

import torch

from sleepwake.config import Settings
from sleepwake.models.covariance import LayerStats
from sleepwake.storage.adapters import AdapterRow
from sleepwake.storage.deltas import DeltaStore
from sleepwake.storage.home import Home
from sleepwake.storage.ledger import EditRow, Ledger


class MemoryState:
    home: Home
    settings: Settings
    backend: Any  # a models.backend.Backend (torch or MLX)
    ledger: Ledger
    deltas: DeltaStore
    cache_dir: Path
    edits: list[EditRow]
    adapters: list[AdapterRow]
    corrupted: set[int]
    tolerate_corrupt: bool
    recovered: list[str]
    orphans_removed: list[str]
    composed_as: tuple[tuple[int, ...], bool, dict[int, float]]
    _factors: dict[int, dict[str, torch.Tensor]]
    _adapter_factors: dict[int, dict[str, torch.Tensor]]

    def stats(self) -> dict[int, LayerStats]:
        raise NotImplementedError  # Memory provides it

    def stats_for(self, n_facts: int) -> None:
        raise NotImplementedError  # Memory provides it

    def contexts(self) -> list[str]:
        raise NotImplementedError  # Memory provides it

    def reload(self) -> None:
        raise NotImplementedError  # Memory provides it

    def compose(self, skip: Collection[int] = (), with_adapters: bool = True,
                scales: Mapping[int, float] | None = None) -> None:
        raise NotImplementedError  # weights.Composition provides it

    def factors(self, edit: EditRow) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # weights.Composition provides it

    def base_anchors(self) -> list:
        raise NotImplementedError  # Memory provides it

    def base_weights(self) -> ContextManager[None]:
        raise NotImplementedError  # weights.Composition provides it
