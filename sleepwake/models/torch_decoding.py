"""Greedy decoding that lets each row stop on its own (torch backend).

A probe only needs to know whether a reply holds the fact's object. Its budget is sized for the
longest answer, yet on a night-10 home of the 500-fact run a chat reply held its object (or ended)
after 12 of its 24 tokens on average, a raw completion after 2.6 of 9. ``transformers``' generate
keeps a finished row in the batch until the whole batch is done; here a row whose ``done`` says
so leaves the batch and the KV cache, so a batch costs what its rows need. Up to floating-point
batch effects the tokens are those of greedy ``generate`` (same attention mask and positions).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from sleepwake.models.torch_internals import left_pad
from sleepwake.models.prefix_cache import cache_argument

Done = Callable[[int, list[int]], bool]  # (row of the batch, its new tokens so far) -> stop it now


def stop_ids(model, tokenizer) -> set[int]:
    """The token ids that end a reply: the generation config's (an id or a list) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


@torch.no_grad()
def greedy_until(backend, batch: Sequence[list[int]], max_new_tokens: int, done: Done) -> list[list[int]]:
    """Greedy new tokens of each prompt, up to ``max_new_tokens``, a row ending at a stop token or
    as soon as ``done(row, tokens)``; finished rows leave the batch (and the cache) at once."""
    model = backend.model
    ids, mask = left_pad(batch, backend.tokenizer.pad_token_id, backend.input_device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, T): pads take position 0, masked anyway
    cache, ends = DynamicCache(), stop_ids(model, backend.tokenizer)
    rows = list(range(len(batch)))  # batch row of each live row
    out: list[list[int]] = [[] for _ in batch]
    step_ids = ids
    for step in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_argument(model): cache}).logits[:, -1]  # (live, vocab)
        tokens = logits.argmax(-1).tolist()
        keep = []
        for live, (row, token) in enumerate(zip(rows, tokens)):
            out[row].append(token)
            if token not in ends and not done(row, out[row]):
                keep.append(live)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            keep_index = torch.tensor(keep)  # on the host: indexes the cache on whatever device each layer sits
            cache.batch_select_indices(keep_index)
            mask, positions = mask[keep_index], positions[keep_index]
            tokens = [tokens[i] for i in keep]
            rows = [rows[i] for i in keep]
            keep_routing(backend, keep_index)
        step_ids = torch.tensor(tokens, device=mask.device)[:, None]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
    return out


def keep_routing(backend, keep_index: torch.Tensor) -> None:
    """A routed adapter latches per row while generating (``routing.RoutedAdapter._decide``): its
    latch must lose the same rows as the batch, or the next step would see a batch it does not know."""
    routed = getattr(backend, "routed", None)
    if routed is not None and routed.latch is not None:
        routed.latch = routed.latch[keep_index.to(routed.latch.device)]
