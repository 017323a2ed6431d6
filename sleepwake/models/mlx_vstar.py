"""MEMIT's v* target optimisation for the MLX backend, by MLX autodiff.

The same objective, optimiser and early stop as ``torch_vstar`` (so both backends find the same
delta to float tolerance), and the same saving: nothing before the lookup (the subject's last
token) nor any block up to the edited one depends on the delta. So one forward over the whole
rows records block L's output and every block's keys/values; each step then runs only the
blocks above L, only on the suffix (lookup .. end), attending to the recorded prefix.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

from sleepwake.models import mlx_blas  # noqa: F401  (first: MLX must find the fast BLAS)

import mlx.core as mx
import numpy as np

from sleepwake.models.backend import VStarRow, VStarSettings
from sleepwake.models.memit import clamp_delta
from sleepwake.models.mlx_internals import (
    attention_mask, block_forward, decoder, head, log_softmax, right_pad, run_blocks, to_mlx, to_torch,
)


class Suffix:
    """The rows' suffixes above block L, with the recorded prefix as cache (see the module doc)."""

    def __init__(self, backend, rows: Sequence[VStarRow], layer: int):
        self.net, self.layer = backend.net, layer
        ids, valid = right_pad([r.ids for r in rows], backend.pad_id)
        embedded = decoder(self.net).embed_tokens(ids)
        _, _, hidden, cache = run_blocks(self.net, embedded, 0, valid, 0, len(decoder(self.net).layers),
                                         hidden_at={layer})
        self.cache = {index: kv for index, kv in cache.items() if index > layer}  # only these are replayed
        lookups = np.array([r.lookup for r in rows], dtype=np.int32)
        lengths = np.array([len(r.ids) for r in rows], dtype=np.int32)
        width, span = ids.shape[1], int((lengths - lookups).max())
        index = np.minimum(lookups[:, None] + np.arange(span)[None, :], width - 1).astype(np.int32)
        self.base = mx.take_along_axis(hidden[layer], mx.array(index)[..., None], axis=1)  # (B, S, d)
        prefix = np.arange(width)[None, :] < lookups[:, None]  # a row's own tokens before its lookup
        suffix = np.arange(span)[None, :] < (lengths - lookups)[:, None]
        self.key_valid = mx.array(np.concatenate([prefix, suffix], axis=1))
        self.offsets = mx.array(lookups)
        self.fact_of_row = mx.array(np.array([r.fact for r in rows], dtype=np.int32))
        mx.eval(self.base, self.cache)

    def hidden(self, delta: mx.array, checkpointing: bool = False) -> mx.array:
        """Final-norm hidden states (B, S, d) with ``delta[fact]`` added at each row's lookup.
        ``checkpointing``: each block's activations are recomputed in the backward, not kept."""
        shift = delta[self.fact_of_row].astype(self.base.dtype)[:, None, :]
        h = mx.concatenate([self.base[:, :1] + shift, self.base[:, 1:]], axis=1)
        layers = decoder(self.net).layers
        mask = attention_mask(self.key_valid, h.shape[1])
        for index in range(self.layer + 1, len(layers)):
            block = partial(_block_output, layers[index], self.offsets, mask, self.cache[index])
            h = (mx.checkpoint(block) if checkpointing else block)(h)
        return decoder(self.net).norm(h)


def _block_output(block, offsets, mask, past, h: mx.array) -> mx.array:
    return block_forward(block, h, offsets, mask, past)[0]


def targets(rows: Sequence[VStarRow], n_facts: int) -> dict[str, mx.array]:
    """Where each target token is read (row, suffix position), which token, and a (T, n_facts)
    averaging matrix so per-fact means are one matmul (and differentiable)."""
    cols: dict[str, list[int]] = {"rows": [], "positions": [], "tokens": [], "facts": []}
    for i, row in enumerate(rows):
        if row.kind != "nll":
            continue
        cols["rows"] += [i] * len(row.target_ids)
        cols["positions"] += [p - row.lookup for p in row.target_positions]
        cols["tokens"] += list(row.target_ids)
        cols["facts"] += [row.fact] * len(row.target_ids)
    average = np.zeros((len(cols["facts"]), n_facts), dtype=np.float32)
    average[np.arange(len(cols["facts"])), cols["facts"]] = 1.0
    average /= np.maximum(average.sum(axis=0, keepdims=True), 1.0)
    out = {k: mx.array(np.array(v, dtype=np.int32)) for k, v in cols.items() if k != "facts"}
    out["average"] = mx.array(average)
    return out


def optimize_target(backend, rows: Sequence[VStarRow], n_facts: int, layer: int, cfg: VStarSettings):
    """v*: per-fact deltas on block ``layer``'s output making each target likely in every context.

    Loss = mean target NLL + kl_factor * KL(unedited || edited) at the essence prompts' lookup
    + weight_decay * |delta|^2 / |h|^2; Adam (torch's update rule); MEMIT's norm clamp (the
    shared ``memit.clamp_delta``); early stop at ``stop_loss``.
    """
    suffix = Suffix(backend, rows, layer)
    gather = targets(rows, n_facts)
    kl_rows = mx.array(np.array([i for i, r in enumerate(rows) if r.kind == "kl"], dtype=np.int32))
    first_row = np.array([min(i for i, r in enumerate(rows) if r.fact == f) for f in range(n_facts)], dtype=np.int32)
    anchor = suffix.base[mx.array(first_row), 0].astype(mx.float32)  # (n, d): unedited h_L at each bare prompt
    anchor_norm = mx.linalg.norm(anchor, axis=-1)

    def objective(delta, reference):
        hidden = suffix.hidden(delta, cfg.checkpointing)
        logp = log_softmax(head(backend.net, hidden[gather["rows"], gather["positions"]]))
        token_nll = -mx.take_along_axis(logp, gather["tokens"][:, None], axis=-1)[:, 0]
        per_fact = token_nll @ gather["average"]
        loss = mx.mean(per_fact)
        kl_logp = None
        if kl_rows.size:
            kl_logp = log_softmax(head(backend.net, hidden[kl_rows, 0]))
            ref = mx.stop_gradient(kl_logp) if reference is None else reference
            loss = loss + cfg.kl_factor * mx.sum(mx.exp(ref) * (ref - kl_logp)) / kl_rows.size
        # |delta|^2 as a sum of squares: the norm's gradient at delta = 0 (step 1) is 0/0 = NaN.
        loss = loss + cfg.weight_decay * mx.mean(mx.sum(delta * delta, axis=-1) / anchor_norm**2)
        return loss, per_fact, kl_logp

    step_fn = mx.value_and_grad(objective)
    delta = mx.zeros((n_facts, backend.d_model), dtype=mx.float32)
    adam = Adam(cfg.lr)
    anchor_t = to_torch(anchor)
    reference, stats = None, {}
    for step in range(1, cfg.steps + 1):
        (_, per_fact, kl_logp), grad = step_fn(delta, reference)
        mx.eval(per_fact, grad)
        if reference is None and kl_logp is not None:
            reference = mx.stop_gradient(kl_logp)
        values = np.array(per_fact)
        stats = {"steps": step, "nll": [round(float(x), 4) for x in values]}
        if float(values.max()) < cfg.stop_loss:
            break
        delta = adam.step(delta, grad)
        delta = to_mlx(clamp_delta(to_torch(delta), anchor_t, cfg.clamp_norm))
    return to_torch(delta), anchor_t, stats


class Adam:
    """torch.optim.Adam's update (betas 0.9/0.999, eps 1e-8, bias-corrected) on one array.

    mlx.optimizers.Adam defaults to no bias correction: a different first step, so a different
    delta than the torch backend finds.
    """

    def __init__(self, lr: float, betas=(0.9, 0.999), eps: float = 1.0e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m: mx.array | None = None
        self.v: mx.array | None = None
        self.t = 0

    def step(self, param: mx.array, grad: mx.array) -> mx.array:
        b1, b2 = self.betas
        self.t += 1
        self.m = (1 - b1) * grad if self.m is None else b1 * self.m + (1 - b1) * grad
        self.v = (1 - b2) * grad * grad if self.v is None else b2 * self.v + (1 - b2) * grad * grad
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        denom = mx.sqrt(self.v) / (correction2**0.5) + self.eps
        return param - (self.lr / correction1) * self.m / denom
