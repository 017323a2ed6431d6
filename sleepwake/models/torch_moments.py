"""Second moments of module inputs over sample text, for the torch backend: MEMIT's key
statistics (the down-projections' inputs, ``C`` of the covariance-regularised solve) and the
inputs of the modules a consolidation LoRA adapts (its null-space protection, ``models.protection``).
"""

from __future__ import annotations

import contextlib

import torch

from sleepwake.models.torch_internals import bar_range, capture_inputs, decoder_layers, right_pad, stop_after


def key_second_moments(backend, sequences, layers, batch_size):
    """Sum over all real tokens of k k^T for each layer's down-projection input (float64 sums)."""
    modules = {layer: backend.down_proj(layer) for layer in layers}
    return second_moments(backend, sequences, modules, backend.d_ff, batch_size, "key statistics",
                          stop=backend.block(max(layers)))


def input_second_moments(backend, sequences, names, batch_size):
    """Sum over all real tokens of x x^T for the input x of each named linear module (float32 sums
    of float64 batch products; modules sharing an input share one sum). The forward stops after the
    deepest block holding one of them, so the LM head's logits (batch x length x vocabulary floats,
    the largest tensor of the pass) are never made: with the logits and float64 sums for every
    module, the first sleep on a new machine peaked at 2.2-2.3 GB resident while it estimated these."""
    modules = {name: backend.model.get_submodule(name) for name in names}
    stop = deepest_block(backend.model, modules.values())
    return second_moments(backend, sequences, modules, None, batch_size, "input statistics", stop=stop,
                          dtype=torch.float32)


def deepest_block(model, modules) -> torch.nn.Module | None:
    """The last decoder block holding any of ``modules``; None when one of them lies outside every
    block (the LM head, an embedding), since then the whole forward must run."""
    blocks = list(decoder_layers(model))
    owner = {id(inner): index for index, block in enumerate(blocks) for inner in block.modules()}
    indices = [owner.get(id(module)) for module in modules]
    if not indices or any(index is None for index in indices):
        return None
    return blocks[max(i for i in indices if i is not None)]


@torch.no_grad()
def second_moments(backend, sequences, modules: dict, width: int | None, batch_size: int, label: str, stop=None,
                   dtype: torch.dtype = torch.float64):
    """({key: sum of x x^T over real tokens}, token count) for the inputs of ``modules``; the
    forward stops after block ``stop`` when given. ``width``: input size (None: each module's).
    Each batch's x^T x is formed in float64 and added into ``dtype`` sums (a handful of additions:
    float32 loses nothing there). Modules fed the very same tensor (q/k/v, gate/up) share one sum,
    formed once and returned under each of their keys."""
    sums: dict = {}
    same_as: dict = {}  # key -> the earlier key whose input tensor it receives
    count = 0
    for start in bar_range(len(sequences), batch_size, label, "sequence"):
        ids, mask = right_pad(sequences[start : start + batch_size], backend.tokenizer.pad_token_id, backend.input_device)
        with capture_inputs(modules) as seen, (stop_after(stop) if stop is not None else contextlib.nullcontext()):
            backend.model(input_ids=ids, attention_mask=mask)
        valid = mask.bool()
        first_of: dict[int, object] = {}  # the captured tensors stay alive here, so ids are unique
        for key in modules:
            owner = first_of.setdefault(id(seen[key]), key)
            if owner != key:
                same_as[key] = owner
                continue
            x = seen[key][valid.to(seen[key].device)].double()  # (tokens, in)
            part = (x.T @ x).cpu().to(dtype)
            if key in sums:
                sums[key] += part
            else:
                sums[key] = part
        count += int(valid.sum())
    for key, module in modules.items():
        if key in same_as:
            sums[key] = sums[same_as[key]]
        elif key not in sums:  # no sequences: an empty sum
            sums[key] = torch.zeros(width or module.in_features, width or module.in_features, dtype=dtype)
    return sums, count
