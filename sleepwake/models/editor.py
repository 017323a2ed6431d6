"""MEMIT edits computed over a backend: prompts -> keys, v* targets, per-layer updates.

Algorithm (Meng et al. 2023, with the papers' covariance-regularised Woodbury solve):

1. v*: for each fact, a delta on the residual stream after the LAST edited layer L, at the
   subject's last token, that makes the object likely in every prefix context (``optimize_target``).
   Target z* = h_L(bare prompt) + delta.
2. For each edited layer l in ascending order: recompute keys K_l (averaged over contexts) and the
   current h_L on the current weights; residual R = (z* - h_L) / (layers left); solve
   dW_l = U V^T; apply it provisionally so the next layer sees it.
3. Restore the original weights: the caller stores the factors and composes them (``Memory``).

Nothing here writes to disk or the ledger: compute deltas apart from applying them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from sleepwake.config import MemitConfig
from sleepwake.facts import Fact
from sleepwake.models.backend import VStarRow, VStarSettings
from sleepwake.models.covariance import LayerStats
from sleepwake.models.entities import contrast_subjects
from sleepwake.models.memit import LayerUpdate, apply_factors, check_finite, distribute_residual, solve_update
from sleepwake.resources import trim_heap

log = logging.getLogger(__name__)
ESSENCE_TEMPLATE = "{} is a"  # MEMIT's KL prompt: what the model says right after the subject


@dataclass
class EditResult:
    """Per-layer updates for a batch of facts, plus diagnostics."""

    updates: list[LayerUpdate]
    stats: dict = field(default_factory=dict)


def subject_span_end(fact: Fact) -> int:
    """Character index where the subject ends inside ``fact.prompt()``."""
    start = fact.relation.index("{}") if "{}" in fact.relation else 0
    return start + len(fact.subject)


def lookup_row(backend, context: str, fact: Fact) -> tuple[list[int], int]:
    """Token ids of context + prompt, and the position of the subject's last token."""
    prompt = fact.prompt()
    ids = backend.encode(context + prompt)
    prefix = backend.encode(context + prompt[: subject_span_end(fact)])
    # Tokenisers may merge across the subject's end; the last prefix token is still the best
    # estimate of "the subject's last token" (MEMIT does the same).
    return ids, min(len(prefix), len(ids)) - 1


def key_prefix(fact: Fact) -> str:
    """The prompt text up to the subject's last character: where the MEMIT key is read."""
    return fact.prompt()[: subject_span_end(fact)]


def key_groups(facts: Sequence[Fact]) -> tuple[list[Fact], list[int]]:
    """Facts whose prompts agree up to the subject's last token share ONE MEMIT key (the key is
    read there), so they must share one target vector: "Lena lives in" and "Lena works as" are
    one key. Returns one representative fact per group and each fact's group index.

    Solved separately, two such facts ask the same key for two different values and the later
    edit overwrites the earlier (measured: the job edit turned "Lena Brandt lives in" into a
    job answer)."""
    reps: list[Fact] = []
    index: dict[str, int] = {}
    owner = []
    for fact in facts:
        prefix = key_prefix(fact)
        if prefix not in index:
            index[prefix] = len(reps)
            reps.append(fact)
        owner.append(index[prefix])
    return reps, owner


def vstar_rows(backend, facts: Sequence[Fact], contexts: Sequence[str], owner: Sequence[int] | None = None) -> list[VStarRow]:
    """NLL rows (every context x fact) then one KL row per key group. Row ``fact`` is the fact's
    key group (``owner``; default one group per fact); each group's first row is a bare prompt."""
    owner = list(range(len(facts))) if owner is None else list(owner)
    rows: list[VStarRow] = []
    for index, fact in enumerate(facts):
        target = backend.encode(" " + fact.object, special=False)
        for context in contexts:
            ids, lookup = lookup_row(backend, context, fact)
            full = ids + target
            positions = tuple(range(len(ids) - 1, len(full) - 1))  # position p predicts token p+1
            rows.append(VStarRow(full, lookup, owner[index], "nll", tuple(target), positions))
    seen = set()
    for index, fact in enumerate(facts):
        if owner[index] in seen:
            continue
        seen.add(owner[index])
        essence = Fact(subject=fact.subject, relation=ESSENCE_TEMPLATE, object="x")
        ids, lookup = lookup_row(backend, "", essence)
        rows.append(VStarRow(ids, lookup, owner[index], "kl"))
    return rows


def mean_keys(backend, facts, contexts, layer: int, hidden_layer: int, batch_size: int):
    """Key rows (2n, d_ff) at ``layer`` - per fact its average over contexts (MEMIT's key, for
    generalisation) then its bare-prompt key (the plain question must hold exactly) - and
    h_{hidden_layer} on the bare prompt (n, d_model)."""
    rows = [lookup_row(backend, c, f) for f in facts for c in contexts]
    keys, hidden = backend.layer_states(rows, layer, hidden_layer, batch_size)
    keys = keys.view(len(facts), len(contexts), -1)
    bare = hidden.view(len(facts), len(contexts), -1)[:, 0]
    if len(contexts) == 1:  # no generated contexts: the average IS the bare key (one row, not two)
        return keys[:, 0], bare
    return torch.cat([keys.mean(dim=1), keys[:, 0]]), bare


def contrast_rows(backend, facts: Sequence[Fact], count: int) -> list[tuple[list[int], int]]:
    """Bare prompts of look-alike subjects (``entities.contrast_subjects``) with each fact's relation."""
    rows = []
    for fact in facts:
        for other in contrast_subjects(fact.subject, count):
            rows.append(lookup_row(backend, "", Fact(subject=other, relation=fact.relation, object="x")))
    return rows


def contrast_keys(backend, contrast, layer: int, batch_size: int) -> torch.Tensor | None:
    """Keys (m, d_ff) of the look-alike subjects at ``layer`` on the current weights."""
    if not contrast:
        return None
    return backend.layer_states(contrast, layer, layer, batch_size)[0]


def optimize_targets(backend, rows: Sequence[VStarRow], n_groups: int, layer: int, cfg: MemitConfig):
    """v* for every key group, ``cfg.vstar_facts`` groups per optimisation.

    Each group's delta only moves its own rows, so chunks are independent problems. The chunk
    is small (default 4) because the backward keeps every row's activations above the edit: on
    2 CPU cores 4 facts per pass ran as fast as 16 at ~60 % of the peak memory. Returns deltas
    (n, d_model), anchors (n, d_model) and the merged stats."""
    settings = vstar_settings(cfg)
    deltas, anchors, steps, nll, mean_steps = [], [], [], [], []
    for start in range(0, n_groups, cfg.vstar_facts):
        chunk = range(start, min(n_groups, start + cfg.vstar_facts))
        picked = [replace(row, fact=row.fact - start) for row in rows if row.fact in chunk]
        delta, anchor, stats = backend.optimize_target(picked, len(chunk), layer, settings)
        deltas.append(delta)
        anchors.append(anchor)
        steps.append(stats.get("steps", 0))
        mean_steps.append(stats.get("mean_steps", stats.get("steps", 0)) * len(chunk))
        nll += stats.get("nll", [])
    return torch.cat(deltas), torch.cat(anchors), {"steps": max(steps, default=0), "nll": nll,
                                                   "mean_steps": round(sum(mean_steps) / max(n_groups, 1), 1)}


def split_groups(updates: Sequence[LayerUpdate], n_groups: int) -> list[list[LayerUpdate]]:
    """One list of layer updates per key group, exactly summing to ``updates``.

    MEMIT's update is a sum over key rows, dW = sum_i u_i v_i^T (column i of U and V belong to
    key row i), and the rows are [context-averaged keys of groups 0..n-1, bare keys of groups
    0..n-1] (or one row per group with a single context). So a batched solve splits into one
    exact edit per group: forget and refresh keep working per fact, while the v* optimisation
    and the covariance solve ran once for the whole batch."""
    per_group: list[list[LayerUpdate]] = [[] for _ in range(n_groups)]
    for update in updates:
        rows_per_group = update.keys.shape[0] // n_groups
        for group in range(n_groups):
            cols = [group + k * n_groups for k in range(rows_per_group)]
            per_group[group].append(LayerUpdate(layer=update.layer, u=update.u[:, cols].contiguous(),
                                                v=update.v[:, cols].contiguous(), keys=update.keys[cols].contiguous()))
    return per_group


def vstar_settings(cfg: MemitConfig) -> VStarSettings:
    return VStarSettings(
        steps=cfg.v_steps, lr=cfg.v_lr, clamp_norm=cfg.v_clamp_norm, kl_factor=cfg.v_kl_factor,
        weight_decay=cfg.v_weight_decay, stop_loss=cfg.v_stop_loss, batch_size=cfg.batch_size,
        checkpointing=cfg.vstar_checkpointing,
    )


def compute_edit(
    backend,
    facts: Sequence[Fact],
    cfg: MemitConfig,
    stats: dict[int, LayerStats],
    contexts: Sequence[str],
    protect: dict[int, torch.Tensor] | None = None,
) -> EditResult:
    """MEMIT for ``facts`` on the backend's current weights; the weights are left unchanged.

    ``protect`` maps layer -> keys (p, d_ff) whose outputs the update must not change
    (null-space constraint used by sleep maintenance); ``None`` is wake's edit, unconstrained
    with respect to other edits. Either way the keys of ``cfg.contrast_subjects`` look-alike
    subjects are added to the covariance (weight ``cfg.contrast_weight``), so the edit prefers
    directions that tell the subject apart from others who share its name parts (specificity).
    """
    layers = cfg.edit_layers()
    top = layers[-1]
    reps, owner = key_groups(facts)
    rows = vstar_rows(backend, facts, contexts, owner)
    deltas, anchor, vstats = optimize_targets(backend, rows, len(reps), top, cfg)
    trim_heap()  # v*'s freed activations, before the solve's (d_ff, d_ff) metrics: the wake's peak
    z_star = anchor + deltas  # (n, d_model)
    # With a zero weight the contrast keys would be computed (a forward per layer) and ignored.
    contrast = contrast_rows(backend, facts, cfg.contrast_subjects) if cfg.contrast_weight > 0 else []
    originals = {layer: backend.get_weight(layer) for layer in layers}
    updates: list[LayerUpdate] = []
    try:
        for i, layer in enumerate(layers):
            keys, current = mean_keys(backend, reps, contexts, layer, top, cfg.batch_size)
            residual = distribute_residual(z_star, current, len(layers) - i)  # (n_keys, d_model)
            residual = residual.repeat(keys.shape[0] // len(reps), 1)  # one per key row
            soft = contrast_keys(backend, contrast, layer, cfg.batch_size)
            hard = None if protect is None else protect.get(layer)
            chol, basis = stats[layer].metric_for(hard, soft, cfg.contrast_weight)
            u, v = solve_update(keys, residual, chol, cfg.lambda_reg, basis, cfg.relative_lambda)
            update = LayerUpdate(layer=layer, u=u, v=v, keys=keys)
            check_finite(update)
            updates.append(update)
            provisional = originals[layer].clone()
            apply_factors(provisional, u, v)
            backend.set_weight(layer, provisional)
        _, final = mean_keys(backend, reps, contexts, top, top, cfg.batch_size)
        gap = ((z_star - final).norm(dim=-1) / deltas.norm(dim=-1).clamp_min(1e-9)).tolist()
    finally:
        for layer, weight in originals.items():
            backend.set_weight(layer, weight)
    vstats["residual_gap"] = [round(g, 4) for g in gap]
    vstats["delta_norm_ratio"] = [round(float(x), 4) for x in deltas.norm(dim=-1) / anchor.norm(dim=-1)]
    return EditResult(updates=updates, stats=vstats)
