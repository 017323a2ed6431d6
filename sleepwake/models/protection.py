"""Null-space-constrained LoRA: an adapter that cannot move what the model does on ordinary text.

Consolidation adds a LoRA update dW = B A to linear modules that every token passes through. On
an input x the change is B (A x); if every row of A is orthogonal to the directions ordinary
inputs occupy, dW x ~ 0 for them and the model's behaviour there is left alone, while the
directions that tell one subject's question from another's stay free to learn. The same idea
as MEMIT's null-space constraint for edits (AlphaEdit, Fang et al. 2025), applied to the adapter's
input side ("LoRA-Null"-style), with the subspace taken from the inputs' second moment:

    K K^T / n = U diag(lambda) U^T            (per adapted module; K = its inputs on ordinary text)
    U_k = the top eigenvectors holding ``energy`` of trace(K K^T)
    A <- A (I - U_k U_k^T) = A - (A U_k) U_k^T  (r, in): every row of A kept out of span(U_k)

Only U_k (in, k) is kept, never the (in, in) projector: on the bundled model the 56 adapted
modules' projectors are 139 MB, their bases 58 MB (k is 164-916 of 576-1536 at energy 0.9), and
building them from the cached moments raised a REM stage's peak resident memory by 0.37 GB. The
bases are cached per model and energy, so a night's passes do not repeat the eigendecompositions
(15 s each pass on one core).

Measured on the bundled model before this: 6 REM steps (lr 1.0e-3) moved 4.4 % of the base
model's next tokens on the unrelated probe set (teacher-forced locality 0.924 -> 0.880).

The ordinary text is the model's own samples (the covariance corpus) plus the KL anchors in every
format (prose, questions, chat, instructions), so chat-template tokens are covered too. Second
moments are cached per model beside the covariance statistics.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from safetensors.torch import load_file, save

from sleepwake.models.covariance import atomic_write_bytes

log = logging.getLogger(__name__)


def top_subspace(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """U_k (in, k): the fewest top eigenvectors of ``moment`` (in, in) holding ``energy`` of its trace."""
    values, vectors = torch.linalg.eigh(moment.double())  # ascending
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
    share = values.cumsum(0) / values.sum().clamp_min(1e-30)
    k = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    return vectors[:, : min(k, vectors.shape[1])].float()


def project(a: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """A (I - U_k U_k^T) for A (r, in) and U_k (in, k), without forming the (in, in) projector."""
    return a - (a @ basis) @ basis.T


def bases(moments: dict[str, torch.Tensor], energy: float) -> dict[str, torch.Tensor]:
    """Module name -> U_k for every module (``energy`` <= 0: none, the adapter is unconstrained).
    Each moment is dropped from ``moments`` once its basis is made, so at most one (in, in) pair
    of the eigendecomposition is alive beside the moments not yet done."""
    if energy <= 0:
        return {}
    return {name: top_subspace(moments.pop(name), energy) for name in list(moments)}


def cache_file(folder: Path, tag: str, name: str, kind: str = "inputs") -> Path:
    return folder / f"{kind}-{tag}-{name}.safetensors"


def load_or_build(backend, names: list[str], sequences_fn, folder: Path, tag: str, energy: float,
                  batch_size: int, under: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """U_k of each module (name -> (in, k) float32) at ``energy``, cached in ``folder`` beside the
    moments they come from (those are loaded, or estimated by :func:`load_or_estimate` inside
    ``under()``, only for modules whose basis is not cached yet)."""
    if energy <= 0:
        return {}
    kind = f"basis{energy:.6g}"
    found = {name: tensor for name in names if (tensor := read_cached(cache_file(folder, tag, name, kind), "basis")) is not None}
    missing = [n for n in names if n not in found]
    if missing:
        built = bases(load_or_estimate(backend, missing, sequences_fn, folder, tag, batch_size, under), energy)
        for name, basis in built.items():
            write_cached(cache_file(folder, tag, name, kind), "basis", basis.contiguous(), {"energy": str(energy)})
        found.update(built)
    return found


def read_cached(path: Path, key: str) -> torch.Tensor | None:
    """A cached tensor, or None when absent or unreadable (a truncated file is rebuilt, never trusted)."""
    try:
        if path.is_file():
            return load_file(str(path))[key]
    except Exception:  # noqa: BLE001
        log.warning("cached statistics %s unreadable; building them again", path)
    return None


def write_cached(path: Path, key: str, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    """Through a temporary file and a rename (``covariance.atomic_write_bytes``): a reader never sees half a file."""
    atomic_write_bytes(path, save({key: tensor}, metadata=metadata))


def load_or_estimate(backend, names: list[str], sequences_fn, folder: Path, tag: str, batch_size: int,
                     under: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """Second moment of each module's input (name -> (in, in) float32), cached in ``folder``;
    ``sequences_fn()`` gives the token sequences to estimate from, run inside ``under()`` (the base
    weights), both only when needed."""
    found = {name: tensor for name in names if (tensor := read_cached(cache_file(folder, tag, name), "moment")) is not None}
    missing = [n for n in names if n not in found]
    if missing:
        log.info("estimating the inputs of %d adapted modules (once per model)", len(missing))
        with under():
            sums, count = backend.input_second_moments(sequences_fn(), missing, batch_size)
        for name in missing:
            found[name] = (sums.pop(name) / max(count, 1)).float().contiguous()
            write_cached(cache_file(folder, tag, name), "moment", found[name], {"tokens": str(count)})
    return found


class Projection:
    """Keeps each adapted module's A out of its protected subspace: A <- A (I - U_k U_k^T)
    (:func:`project`), at the start and after every optimizer step (projected gradient descent)."""

    def __init__(self, peft_model, protect: dict[str, torch.Tensor] | None):
        from peft.tuners.lora import LoraLayer

        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        module: Any
        for name, module in peft_model.base_model.model.named_modules():
            if protect and name in protect and isinstance(module, LoraLayer) and "default" in module.lora_A:
                weight: Any = module.lora_A["default"].weight  # (r, in)
                self.pairs.append((weight, protect[name].to(device=weight.device, dtype=weight.dtype)))
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for weight, basis in self.pairs:  # weight: A (r, in); basis: U_k (in, k)
            weight.copy_(project(weight, basis))
