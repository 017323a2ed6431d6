"""Key statistics MEMIT needs, estimated once per model and cached on disk.

- The key covariance C per edited layer, from tens of thousands of tokens of the model's own
  samples (works for any model, no dataset needed). A covariance from a few hundred tokens is
  rank-deficient at d_ff=1536 and blew perplexity up 15x in an early probe, hence the volume.
- The prefix contexts keys and targets are averaged over (MEMIT's "context templates").

The estimate grows: the first edit samples one slice of ``covariance_tokens`` (a first run in
about a minute), and each full sleep adds one more slice, drawn with its own seed, until
``covariance_max_tokens``; C is the token-weighted mean of the slices there are. On the bundled
model 4096 tokens drifted +3.0 % on a 50-fact batch, 16384 +1.8 %, at the same recall.

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
from safetensors import safe_open
from safetensors.torch import load_file, save

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


def slice_count(cfg: MemitConfig) -> int:
    """Slices of ``covariance_tokens`` the estimate grows to (1: no growth)."""
    return max(1, -(-cfg.covariance_max_tokens // cfg.covariance_tokens))


def target_slices(cfg: MemitConfig, upto: int | None = None) -> int:
    """Slices ``grow`` stops at: ``upto`` when given, never past ``slice_count``."""
    return min(slice_count(cfg), upto) if upto else slice_count(cfg)


def slices_for(cfg: MemitConfig, n_facts: int) -> int:
    """Slices a solve of ``n_facts`` facts should have: one per ``covariance_facts_per_slice``,
    within ``slice_count`` (a batch's n x n system separates its keys only as well as C is
    estimated; 0 turns the rule off)."""
    if cfg.covariance_facts_per_slice <= 0:
        return 1
    return min(slice_count(cfg), max(1, -(-n_facts // cfg.covariance_facts_per_slice)))


def slice_path(folder: Path, cfg: MemitConfig, seed: int, part: int, layer: int) -> Path:
    """Slice 0 keeps the name caches had before the estimate could grow."""
    tag = f"{cfg.covariance_tokens}-{cfg.covariance_sample_length}-{seed}" + (f"-s{part}" if part else "")
    return folder / f"cov-{tag}-layer{layer}.safetensors"


def slice_tokens(path: Path) -> int | None:
    """Tokens behind one cached slice, or None when it is missing or unreadable (the header is
    checked against the file's size, so a truncated write fails here)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return max(int((handle.metadata() or {}).get("tokens", "0")), 1)
    except Exception:
        return None


def estimate_slice(backend, cfg: MemitConfig, cache_dir: Path, seed: int, part: int, layers: list[int]) -> None:
    """Sample slice ``part`` of the model's own text and cache its per-layer second moments.
    Slice 0's samples are kept (the LoRA protection reuses them); later slices keep moments only."""
    folder = stats_dir(cache_dir, backend.fingerprint)
    if part == 0:
        sequences = load_or_sample_sequences(backend, cfg, cache_dir, seed)
    else:
        log.info("sampling %d more tokens of the model's own text for key statistics (slice %d of %d)",
                 cfg.covariance_tokens, part + 1, slice_count(cfg))
        sequences = backend.sample_sequences(cfg.covariance_tokens, cfg.covariance_sample_length, seed + 1000 * part)
    sums, count = backend.key_second_moments(sequences, layers, cfg.batch_size)
    for layer in layers:
        moment = (sums[layer] / max(count, 1)).float().contiguous()
        atomic_write_bytes(slice_path(folder, cfg, seed, part, layer),
                           save({"cov": moment}, metadata={"tokens": str(count)}))


def slices_done(backend, cfg: MemitConfig, cache_dir: Path, seed: int, layers=None) -> int:
    """Complete slices cached for ``layers`` (default: the edit layers): headers only, milliseconds."""
    layers = list(layers if layers is not None else cfg.edit_layers())
    return complete_slices(stats_dir(cache_dir, backend.fingerprint), cfg, seed, layers)


def complete_slices(folder: Path, cfg: MemitConfig, seed: int, layers: list[int]) -> int:
    """How many slices, from 0 on without a gap, are cached and readable for every one of
    ``layers``. An unreadable file is removed, so the slice is sampled again (never trusted)."""
    done = 0
    while done < slice_count(cfg):
        paths = [slice_path(folder, cfg, seed, done, layer) for layer in layers]
        bad = [path for path in paths if slice_tokens(path) is None]
        for path in bad:
            if path.exists():
                log.warning("key statistics %s unreadable; removed, to be sampled again", path.name)
                path.unlink(missing_ok=True)
        if bad:
            break
        done += 1
    return done


def ensure_first_slice(backend, cfg: MemitConfig, cache_dir: Path, seed: int, layers: list[int]) -> int:
    """Estimate slice 0 for the layers that lack it (its samples are cached, so a partial slice is
    completed from the same text). Returns the number of complete slices: 1."""
    folder = stats_dir(cache_dir, backend.fingerprint)
    missing = [layer for layer in layers if slice_tokens(slice_path(folder, cfg, seed, 0, layer)) is None]
    estimate_slice(backend, cfg, cache_dir, seed, 0, missing)
    return 1


def grow(backend, cfg: MemitConfig, cache_dir: Path, seed: int, layers=None, upto: int | None = None) -> tuple[int, int]:
    """Add the next missing slice (one per call; none once the estimate has ``upto`` slices, by
    default all ``slice_count``).

    Returns (tokens added, tokens in the estimate now). Call it with the base weights composed:
    the statistics describe the unedited model."""
    layers = list(layers if layers is not None else cfg.edit_layers())
    done = slices_done(backend, cfg, cache_dir, seed, layers)
    if done == 0:  # no first slice yet (a cleared cache): the next edit would estimate it anyway
        ensure_first_slice(backend, cfg, cache_dir, seed, layers)
        return cfg.covariance_tokens, cfg.covariance_tokens
    if done >= target_slices(cfg, upto):
        return 0, done * cfg.covariance_tokens
    estimate_slice(backend, cfg, cache_dir, seed, done, layers)  # every layer: one sample behind a slice
    return cfg.covariance_tokens, (done + 1) * cfg.covariance_tokens


def load_or_estimate(backend, cfg: MemitConfig, cache_dir: Path, seed: int, layers=None) -> dict[int, LayerStats]:
    """Per-layer covariance stats for ``layers`` (default: the configured edit layers): slice 0,
    estimated now when missing, averaged with the later slices past sleeps have added."""
    layers = list(layers if layers is not None else cfg.edit_layers())
    folder = stats_dir(cache_dir, backend.fingerprint)
    parts = complete_slices(folder, cfg, seed, layers) or ensure_first_slice(backend, cfg, cache_dir, seed, layers)
    stats = {}
    for layer in layers:
        total, tokens = None, 0
        for part in range(parts):
            path = slice_path(folder, cfg, seed, part, layer)
            count = slice_tokens(path)
            assert count is not None  # complete_slices read every header
            moment = load_file(str(path))["cov"].double()
            total = moment.mul_(count) if total is None else total.add_(moment, alpha=count)
            tokens += count
            del moment
        assert total is not None
        stats[layer] = LayerStats(cov=shrink_covariance(total.div_(tokens), cfg.covariance_shrinkage).float())
        del total
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
