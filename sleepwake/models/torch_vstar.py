"""MEMIT's v* target optimisation for the torch backend, with a prefix KV cache.

The delta enters the residual stream at the subject's last token (the "lookup"). Nothing before
that position depends on it, so every row is split into a prefix (tokens before the lookup),
whose keys/values are computed once, and a suffix (lookup .. end of the target) that is the only
part recomputed at each optimisation step. On the bundled model that cuts the tokens per step
3-4x, which is most of the cost of an edit on a CPU.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sleepwake.models.backend import VStarRow, VStarSettings
from sleepwake.models.memit import clamp_delta
from sleepwake.models.prefix_cache import cache_argument, fresh_cache
from sleepwake.models.torch_internals import capture_output, decoder_layers, right_pad, stop_after


@torch.no_grad()
def prefix_states(backend, rows: Sequence[VStarRow]):
    """Per-layer K/V of every row's prefix (tokens before the lookup), from ONE batched forward.

    Right padding keeps each row's real tokens at positions 0..len-1; the pad slots after them
    are masked out when the suffix attends to the cache (the suffix continues at position len).
    Rows whose prefix is empty get a fully masked cache row and attend only to their suffix.
    """
    width = max(r.lookup for r in rows)
    if width == 0:
        return [], [], torch.zeros(len(rows), 0, dtype=torch.long, device=backend.input_device)
    prefixes = [r.ids[: r.lookup] or [backend.tokenizer.pad_token_id] for r in rows]
    ids, mask = right_pad(prefixes, backend.tokenizer.pad_token_id, backend.input_device)
    for b, row in enumerate(rows):
        if row.lookup == 0:
            mask[b] = 0
    out = backend.model.base_model(input_ids=ids, attention_mask=_nonempty(mask), use_cache=True)
    cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]
    keys = [layer.keys[:, :, :width] for layer in cache.layers]
    values = [layer.values[:, :, :width] for layer in cache.layers]
    return keys, values, mask[:, :width]


def _nonempty(mask: torch.Tensor) -> torch.Tensor:
    """Attention mask for the prefix pass itself: a row with no prefix still needs one visible
    token (its placeholder) or attention over it would be all -inf; its cache row stays masked."""
    fixed = mask.clone()
    fixed[fixed.sum(dim=1) == 0, 0] = 1
    return fixed


def target_index(rows: Sequence[VStarRow], device) -> dict[str, torch.Tensor]:
    """(row, suffix position, target token, fact) for every target token of every NLL row."""
    cols: dict[str, list[int]] = {"rows": [], "positions": [], "targets": [], "facts": []}
    for i, row in enumerate(rows):
        if row.kind != "nll":
            continue
        cols["rows"] += [i] * len(row.target_ids)
        cols["positions"] += [p - row.lookup for p in row.target_positions]
        cols["targets"] += list(row.target_ids)
        cols["facts"] += [row.fact] * len(row.target_ids)
    return {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in cols.items()}


def per_fact_mean(values: torch.Tensor, facts: torch.Tensor, n_facts: int) -> torch.Tensor:
    sums = torch.zeros(n_facts, device=values.device).index_add(0, facts, values)
    counts = torch.zeros(n_facts, device=values.device).index_add(0, facts, torch.ones_like(values))
    return sums / counts.clamp_min(1.0)


class ReplayBlock(torch.nn.Module):
    """Stands in for decoder blocks 0..L during v*: returns their cached output plus the delta.

    Blocks up to L do not depend on the delta (it enters after block L), so running them at every
    step is wasted work; the replay returns block L's recorded output instead. Blocks 1..L are
    replaced by pass-throughs.
    """

    def __init__(self, cached: torch.Tensor | None):
        super().__init__()
        self.cached = cached
        self.shift: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.cached is None else self.cached
        return out if self.shift is None else out + self.shift


@contextlib.contextmanager
def replay_lower_blocks(backend, layer: int, cached: torch.Tensor):
    """Temporarily swap blocks 0..layer for a replay of ``cached`` (block ``layer``'s output)."""
    layers = decoder_layers(backend.model)
    originals = [layers[i] for i in range(layer + 1)]
    replay = ReplayBlock(cached)
    try:
        layers[0] = replay
        for i in range(1, layer + 1):
            layers[i] = ReplayBlock(None)
        yield replay, layers[layer]
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


@contextlib.contextmanager
def checkpoint_upper_blocks(backend, layer: int, enabled: bool):
    """Temporarily run blocks above ``layer`` under gradient checkpointing (when ``enabled``).

    v*'s backward otherwise holds every row's activations in those blocks (~18 MB per row on the
    bundled model, the batched wake's memory peak); checkpointed, each block keeps its input and
    is recomputed once in the backward. The instance's ``forward`` is shadowed, not the block
    replaced, so attributes the decoder loop reads on its blocks stay in place; an instance
    ``forward`` already there (accelerate's device-map hook) is wrapped and put back after."""
    blocks = list(decoder_layers(backend.model))[layer + 1:] if enabled else []
    saved: list[tuple[torch.nn.Module, Callable | None]] = []
    try:
        for block in blocks:
            saved.append((block, vars(block).get("forward")))
            block.forward = _checkpointed(block.forward)
        yield
    finally:
        for block, own in saved:
            if own is None:
                del block.forward
            else:
                block.forward = own


def _checkpointed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


class SuffixModel:
    """Runs the suffixes of all rows on top of the cached prefixes, with the delta hooked in."""

    def __init__(self, backend, rows: Sequence[VStarRow], layer: int):
        self.backend = backend
        self.keys, self.values, prefix_mask = prefix_states(backend, rows)
        device = backend.input_device
        suffixes = [r.ids[r.lookup:] for r in rows]
        self.ids, suffix_mask = right_pad(suffixes, backend.tokenizer.pad_token_id, device)
        self.mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        starts = torch.tensor([r.lookup for r in rows], device=device)[:, None]
        self.positions = starts + torch.arange(self.ids.shape[1], device=device)[None, :]
        self.layer = layer
        self.block = backend.block(layer)
        self.fact_of_row = torch.tensor([r.fact for r in rows])  # on the host: indexed by host and device rows

    def forward(self, rows: torch.Tensor | None = None):
        """Final hidden states of the suffixes of ``rows`` (all rows when None)."""
        pick = (lambda t: t) if rows is None else (lambda t: t[rows.to(t.device)])
        return self.backend.model.base_model(
            input_ids=pick(self.ids), attention_mask=pick(self.mask), position_ids=pick(self.positions),
            **{cache_argument(self.backend.model.base_model): fresh_cache([pick(k) for k in self.keys],
                                                                          [pick(v) for v in self.values])},
            use_cache=True,
        ).last_hidden_state

    @torch.no_grad()
    def block_output(self) -> torch.Tensor:
        """Block L's output on the suffixes (B, S, d), computed once."""
        with capture_output(self.block) as seen, stop_after(self.block):
            self.forward()
        return seen["out"].detach()

    @contextlib.contextmanager
    def with_replay(self):
        """Inside: ``hidden(delta, rows)`` runs only the blocks above L."""
        self.cached = self.block_output()
        with replay_lower_blocks(self.backend, self.layer, self.cached) as (replay, _):
            self.replay = replay
            yield self

    def hidden(self, delta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Final hidden states (len(rows), S, d) of those rows' suffixes with ``delta[fact]`` added
        at position 0 (the rows of facts that already reached their target are left out)."""
        cached = self.cached[rows.to(self.cached.device)]
        shift = torch.zeros_like(cached)
        shift[:, 0] = delta[self.fact_of_row[rows.cpu()].to(delta.device)].to(shift)
        self.replay.cached, self.replay.shift = cached, shift
        return self.forward(rows)


def optimize_target(backend, rows: Sequence[VStarRow], n_facts: int, layer: int, cfg: VStarSettings):
    """v*: per-fact deltas on block ``layer``'s output making each target likely in every context.

    Loss = mean target NLL + kl_factor * KL(unedited || edited) at the essence prompts' lookup
    + weight_decay * |delta|^2 / |h|^2; Adam; MEMIT's norm clamp; early stop at ``stop_loss``.
    """
    with SuffixModel(backend, rows, layer).with_replay() as suffix, \
            checkpoint_upper_blocks(backend, layer, cfg.checkpointing):
        return _optimize(backend, suffix, rows, n_facts, cfg)


def _optimize(backend, suffix: SuffixModel, rows: Sequence[VStarRow], n_facts: int, cfg: VStarSettings):
    # The delta lives beside block L (the top edited layer), which a device_map may put on a
    # GPU other than the embedding's (inputs) or the head's; every term is brought here.
    device = suffix.cached.device
    gather = target_index(rows, device)
    is_kl = torch.tensor([r.kind == "kl" for r in rows], device=device)
    first_row = torch.tensor([min(i for i, r in enumerate(rows) if r.fact == f) for f in range(n_facts)])
    head = backend.model.get_output_embeddings()
    delta = torch.zeros(n_facts, backend.d_model, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=cfg.lr)
    anchor = suffix.cached[first_row.to(device), 0].float()  # (n_facts, d): unedited h_L at each bare prompt
    fact_of_row = suffix.fact_of_row.to(device)
    reference_kl = None
    active = torch.ones(n_facts, dtype=torch.bool, device=device)
    nll = torch.full((n_facts,), float("nan"), device=device)
    steps_of = torch.zeros(n_facts, dtype=torch.long)
    for step in range(1, cfg.steps + 1):
        # Each fact stops at its own target (as a single edit would): a converged fact's rows
        # leave the batch, so a batch costs what its facts need, not what its slowest needs.
        rows_now = active[fact_of_row].nonzero(as_tuple=True)[0]  # (r,)
        where = torch.full((len(rows),), -1, dtype=torch.long, device=device)
        where[rows_now] = torch.arange(len(rows_now), device=device)
        hidden = suffix.hidden(delta, rows_now).to(device)
        keep = where[gather["rows"]] >= 0
        logprobs = torch.log_softmax(head(hidden[where[gather["rows"][keep]], gather["positions"][keep]]).float(), dim=-1)
        token_nll = -logprobs.gather(1, gather["targets"][keep][:, None])[:, 0]
        per_fact = per_fact_mean(token_nll, gather["facts"][keep], n_facts)  # (n_facts,); 0 for inactive
        kl_now = rows_now[is_kl[rows_now]]
        kl_logp = torch.log_softmax(head(hidden[where[kl_now], 0]).float(), dim=-1)
        if reference_kl is None:  # first step: every row is active, the unedited distribution
            reference_kl = torch.zeros(len(rows), kl_logp.shape[-1], device=device)
            reference_kl[kl_now] = kl_logp.detach()
        with torch.no_grad():
            nll[active] = per_fact[active].detach()
            steps_of[active.cpu()] = step
            active &= ~(nll < cfg.stop_loss)
        if not bool(active.any()):
            break
        loss = per_fact[active].sum() / n_facts
        if len(kl_now):
            kl = F.kl_div(kl_logp, reference_kl[kl_now], log_target=True, reduction="none").sum(-1)  # (k,)
            loss = loss + cfg.kl_factor * (kl * active[fact_of_row[kl_now]]).sum() / n_facts
        loss = loss + cfg.weight_decay * (((delta.norm(dim=-1) / anchor.norm(dim=-1)) ** 2) * active).sum() / n_facts
        step_active(optimizer, delta, loss, active, anchor, cfg.clamp_norm)
    stats = {"steps": int(steps_of.max()), "mean_steps": round(float(steps_of.float().mean()), 1),
             "nll": [round(float(x), 4) for x in nll]}
    return delta.detach().float().cpu(), anchor.cpu(), stats


def step_active(optimizer, delta: torch.Tensor, loss: torch.Tensor, active: torch.Tensor,
                anchor: torch.Tensor, clamp_norm: float) -> None:
    """One Adam step on the active facts' rows of ``delta`` (n_facts, d), then MEMIT's clamp to
    ``clamp_norm`` times each ``anchor`` row's norm; the converged facts' rows are put back as they
    were (Adam's momentum would still move them)."""
    frozen = delta.detach().clone()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        delta.copy_(torch.where(active[:, None], clamp_delta(delta, anchor, clamp_norm), frozen))
