"""Read-only KV caches of a shared prefix (torch backend): v*'s prefixes and a training step's opening.

Nothing at a position depends on what follows it, so the keys and values of tokens several rows
begin with are the same in every row: computed once, they are handed to a forward pass as a cache
that the rows' remaining tokens continue. v* (``torch_vstar``) caches each row's tokens before the
edited position; LoRA training (``lora``) caches the opening a step's chat rows share - the chat
template's system prompt and user tag, 24 of a step's ~40-token rows on the bundled model.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from sleepwake.models.torch_internals import right_pad


def cache_argument(model) -> str:
    """The keyword a decoder takes its KV cache by: ``cache`` from transformers 5.2x on (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class PrefixCache(DynamicCache):
    """The prefixes' K/V, read and never written: ``update`` returns prefix + new states without
    storing them. A block recomputed by gradient checkpointing then sees the same cache as its
    first run (a growing cache would hand the replay the suffix twice)."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def fresh_cache(keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache | None:
    if not keys:
        return None
    cache = PrefixCache()
    for layer_idx, (k, v) in enumerate(zip(keys, values)):
        DynamicCache.update(cache, k, v, layer_idx)  # the one write: the prefix itself
    return cache


def shared_length(row: Sequence[int], other: Sequence[int]) -> int:
    n = 0
    for x, y in zip(row, other):
        if x != y:
            break
        n += 1
    return n


def best_opening(rows: Sequence[Sequence[int]], first_scored: Sequence[int]) -> list[int]:
    """The prefix whose sharing saves the most tokens, (rows beginning with it - 1) x its length,
    among the rows' pairwise common prefixes; a row shares only tokens before its ``first_scored``
    position (one whose hidden state a loss reads is computed in the row's own pass). A step mixes
    chat rows (one template opening) with raw prompts (none), so no prefix is common to all."""
    best: list[int] = []
    saved = 0
    for i, row in enumerate(rows):
        lengths = {min(shared_length(row, other), first_scored[i], first_scored[j])
                   for j, other in enumerate(rows) if j != i}
        for n in sorted((n for n in lengths if n > 0), reverse=True):
            if (len(rows) - 1) * n <= saved:
                break
            count = sum(1 for j, other in enumerate(rows) if first_scored[j] >= n and list(other[:n]) == list(row[:n]))
            if (count - 1) * n > saved:
                best, saved = list(row[:n]), (count - 1) * n
    return best


class Opening:
    """A training step's shared opening: its K/V computed once per step with gradient.

    Each pass reads detached copies (leaves) expanded to its rows, so its backward stops there and
    accumulates the gradient of every row's use of the opening in the leaves; :meth:`backward`
    then sends that sum through the opening's own graph once. The gradient is the one every row
    recomputing the opening would give (the same sum, in another order).
    """

    def __init__(self, ids: list[int], sources: list[torch.Tensor]):
        self.ids = ids
        self.sources = sources  # per layer its keys then its values, (1, kv_heads, P, head_dim) each
        self.leaves = [t.detach().requires_grad_(t.requires_grad) for t in sources]

    @classmethod
    def computed(cls, decoder, ids: list[int], device) -> "Opening | None":
        """The opening's K/V from one forward of ``ids``; None where a layer's cache holds no keys and values
        (a recurrent or linear-attention layer keeps a state a suffix cannot be continued from this way)."""
        out = decoder(input_ids=torch.tensor([ids], device=device), use_cache=True)
        cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]
        layers = list(getattr(cache, "layers", []))
        if not layers or any(getattr(layer, "keys", None) is None or getattr(layer, "values", None) is None
                             for layer in layers):
            return None
        return cls(ids, [t for layer in layers for t in (layer.keys, layer.values)])

    def fits(self, rows: Sequence[Sequence[int]], first_scored: Sequence[int]) -> bool:
        """Whether every row begins with the opening and is scored only after it."""
        n = len(self.ids)
        return all(first >= n and list(row[:n]) == self.ids for row, first in zip(rows, first_scored))

    def cached(self, rows: Sequence[Sequence[int]], first_scored: Sequence[int]) -> int:
        """How many of the rows' leading tokens a pass reads from the opening's cache (0: none)."""
        return len(self.ids) if self.fits(rows, first_scored) else 0

    def cache(self, batch: int) -> DynamicCache | None:
        expanded = [leaf.expand(batch, -1, -1, -1) for leaf in self.leaves]
        return fresh_cache(expanded[0::2], expanded[1::2])

    def backward(self) -> None:
        pairs = [(s, leaf.grad) for s, leaf in zip(self.sources, self.leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([s for s, _ in pairs], [g for _, g in pairs])


def opening_for(decoder, rows: Sequence[Sequence[int]], first_scored: Sequence[int], device,
                least: int = 2) -> Opening | None:
    """The opening saving the most of ``rows``' tokens (:func:`best_opening`; ``least`` tokens at least), or None."""
    ids = best_opening(rows, first_scored)
    return Opening.computed(decoder, ids, device) if len(ids) >= least else None


def fitting_first(opening: Opening | None, items: list, rows_of: Callable) -> list:
    """``items`` with those the opening fits first (stably; ``rows_of(item)``: its rows and their first scored
    positions): passes cut from the list then mix the two kinds at most once. The step's loss is a sum over
    rows, so their order does not change it."""
    if opening is None:
        return items
    return sorted(items, key=lambda item: not opening.fits(*rows_of(item)))


def final_hidden(decoder, rows: Sequence[list[int]], first_scored: Sequence[int], pad_id: int, device,
                 opening: Opening | None = None) -> tuple[torch.Tensor, int]:
    """Final hidden states of right-padded ``rows`` and the position of their first column: with an
    ``opening`` that fits every row (``first_scored``: the first position each row's loss reads),
    the states of the tokens after it only ((b, t - P, d), P); else of every token ((b, t, d), 0)."""
    if opening is None or not opening.fits(rows, first_scored):
        ids, mask = right_pad(rows, pad_id, device)
        return decoder(input_ids=ids, attention_mask=mask).last_hidden_state, 0
    n = len(opening.ids)
    ids, mask = right_pad([list(row[n:]) for row in rows], pad_id, device)
    mask = torch.cat([torch.ones(len(rows), n, dtype=mask.dtype, device=device), mask], dim=1)
    positions = n + torch.arange(ids.shape[1], device=device)[None, :].expand(len(rows), -1)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                     **{cache_argument(decoder): opening.cache(len(rows))}).last_hidden_state
    return hidden, n
