"""Key statistics MEMIT needs, estimated once per model and cached on disk.

- The key covariance C per edited layer, from tens of thousands of tokens of the model's own
  samples (works for any model, no dataset needed). A covariance from a few hundred tokens is
  rank-deficient at d_ff=1536 and blew perplexity up 15x in an early probe, hence the volume.
- The prefix contexts keys and targets are averaged over (MEMIT's "context templates").

Caches live under ``<cache>/stats/<model fingerprint>/`` so two models never share them, and are
written atomically (tmp + rename); a corrupted cache file is recomputed, not trusted.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sleepwake.config import MemitConfig
from sleepwake.models.memit import constrain_metric_, null_space_basis, shrink_covariance

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    """C (shrunk) for one layer, and its Cholesky factor once something asks for it (with the
    default look-alike contrast every edit factors its own metric, so the plain factor would be
    ~19 MB of float64 per layer held for nothing)."""

    cov: torch.Tensor  # (d_ff, d_ff)
    chol: torch.Tensor | None = None  # (d_ff, d_ff) lower, float64

    def cholesky(self) -> torch.Tensor:
        if self.chol is None:
            self.chol = torch.linalg.cholesky(self.cov.double())
        return self.chol

    def metric_for(
        self, protect: torch.Tensor | None, contrast: torch.Tensor | None = None, weight: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cholesky factor of the metric for one edit, and the null-space basis Q (or None).

        ``contrast`` keys (m, d_ff) add ``weight * tr(C)/tr(M) * M`` to C with M = mean(k k^T)
        (soft: those directions cost more; the trace ratio makes ``weight`` independent of the
        model's key scale); ``protect`` keys are a hard constraint (dW k_p = 0, metric P C P + Q Q^T).
        """
        cov = self.cov.to(torch.float64, copy=True)  # a copy: the add below is in place
        if contrast is not None and contrast.numel() and weight > 0:
            c = contrast.double()  # (m, d_ff)
            # M = c^T c / m is added in place, never formed: each (d_ff, d_ff) float64 temporary is
            # ~19 MB at d_ff=1536, and this metric is the peak of a wake's resident memory.
            # tr(M) = ||c||_F^2 / m.
            trace_m = (c * c).sum() / c.shape[0]
            cov.addmm_(c.T, c, alpha=float(weight * cov.trace() / trace_m.clamp_min(1e-12)) / c.shape[0])
        elif protect is None or protect.numel() == 0:
            return self.cholesky(), None
        basis = None
        if protect is not None and protect.numel():
            basis = null_space_basis(protect.to(self.cov)).double()
            cov = constrain_metric_(cov, basis)  # cov is this call's own copy
        return torch.linalg.cholesky(cov), basis


def stats_dir(cache_dir: Path, fingerprint: str) -> Path:
    return cache_dir / "stats" / fingerprint


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_or_sample_sequences(backend, cfg: MemitConfig, cache_dir: Path, seed: int) -> list[list[int]]:
    path = stats_dir(cache_dir, backend.fingerprint) / f"samples-{cfg.covariance_tokens}-{cfg.covariance_sample_length}-{seed}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("sample cache %s unreadable; resampling", path)
    log.info("sampling %d tokens of the model's own text for key statistics", cfg.covariance_tokens)
    sequences = backend.sample_sequences(cfg.covariance_tokens, cfg.covariance_sample_length, seed)
    atomic_write_bytes(path, json.dumps(sequences).encode())
    return sequences


def load_or_estimate(backend, cfg: MemitConfig, cache_dir: Path, seed: int, layers=None) -> dict[int, LayerStats]:
    """Per-layer covariance stats for ``layers`` (default: the configured edit layers)."""
    layers = list(layers if layers is not None else cfg.edit_layers())
    folder = stats_dir(cache_dir, backend.fingerprint)
    tag = f"{cfg.covariance_tokens}-{cfg.covariance_sample_length}-{seed}"
    raw: dict[int, torch.Tensor | None] = {}
    missing = []
    for layer in layers:
        path = folder / f"cov-{tag}-layer{layer}.safetensors"
        try:
            raw[layer] = load_file(str(path))["cov"] if path.is_file() else None
        except Exception:  # truncated or corrupted cache: recompute rather than trust it
            raw[layer] = None
        if raw[layer] is None:
            missing.append(layer)
    if missing:
        sequences = load_or_sample_sequences(backend, cfg, cache_dir, seed)
        sums, count = backend.key_second_moments(sequences, missing, cfg.batch_size)
        for layer in missing:
            raw[layer] = (sums[layer] / max(count, 1)).float()
            path = folder / f"cov-{tag}-layer{layer}.safetensors"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"cov": (sums[layer] / max(count, 1)).float().contiguous()}, str(tmp), metadata={"tokens": str(count)})
            os.replace(tmp, path)
    stats = {}
    for layer in layers:
        measured = raw.pop(layer)  # dropped as it goes: the raw and shrunk copies never all coexist
        assert measured is not None  # every missing layer was estimated above
        stats[layer] = LayerStats(cov=shrink_covariance(measured.double(), cfg.covariance_shrinkage).float())
        del measured
    return stats


def load_or_make_contexts(backend, cfg: MemitConfig, cache_dir: Path, seed: int) -> list[str]:
    """Prefixes the edit is averaged over: "" (the bare prompt) plus short self-generated texts."""
    path = stats_dir(cache_dir, backend.fingerprint) / f"contexts-{cfg.context_count}-{cfg.context_length}-{seed}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    contexts = [""]
    if cfg.context_count:
        sequences = backend.sample_sequences(cfg.context_count * cfg.context_length, cfg.context_length, seed + 1)
        for ids in sequences[: cfg.context_count]:
            # MEMIT's trick: braces are stripped so the text can never act as a template.
            text = backend.decode(ids).replace("{", " ").replace("}", " ").replace("\n", " ").strip()
            contexts.append(f"{text}. " if text else "")
    atomic_write_bytes(path, json.dumps(contexts).encode())
    return contexts
