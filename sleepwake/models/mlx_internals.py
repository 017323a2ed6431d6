"""Forward passes of the MLX backend: padding, masks, decoder blocks with key capture, decoding.

The twin of ``torch_internals``, written against mlx-lm's Llama-style modules but with our own
block loop, because mlx-lm's forward takes neither an attention mask nor per-row positions and
exposes no hooks. The semantics mirror the torch backend so both agree to float tolerance:

- scoring (perplexity, keys, covariance, v*) right-pads: every token keeps its natural position;
- generation left-pads and counts each row's positions from its first real token (what
  transformers' ``generate`` does with an attention mask), pads masked as keys;
- a key is the input of a block's MLP down-projection; a hidden state is a block's output.
"""

from __future__ import annotations

import math
from typing import Sequence

from sleepwake.models import mlx_blas  # noqa: F401  (first: MLX must find the fast BLAS)

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


def to_torch(array: mx.array) -> torch.Tensor:
    """A float32 (or integer) CPU torch copy; bf16/fp16 go through float32 (numpy has no bf16)."""
    if mx.issubdtype(array.dtype, mx.floating):
        array = array.astype(mx.float32)
    return torch.from_numpy(np.array(array, copy=True))


def to_mlx(tensor: torch.Tensor, dtype=mx.float32) -> mx.array:
    return mx.array(tensor.detach().float().cpu().numpy()).astype(dtype)


def check_architecture(model, config: dict) -> None:
    """Refuse, in one line, models whose blocks this forward does not reproduce exactly."""
    from sleepwake.errors import ModelLoadError

    kind = config.get("model_type")
    act = config.get("hidden_act", "silu")
    sliding = any(getattr(block, "use_sliding", False) for block in decoder(model).layers)
    if kind not in SUPPORTED_TYPES or act != "silu" or sliding:
        raise ModelLoadError(
            f"backend=mlx supports Llama-style models ({', '.join(SUPPORTED_TYPES)}, silu MLP, full "
            f"attention); this one is model_type={kind!r}, hidden_act={act!r}: use backend=torch"
        )


def decoder(model):
    """mlx-lm's inner model (embed_tokens, layers, norm)."""
    return model.model


def module_at(model, name: str):
    """The submodule at a dotted torch-style name (``model.layers.4.mlp.down_proj``; "" is the model)."""
    node = model
    for part in name.split(".") if name else []:
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)
    return node


def head(model, hidden: mx.array) -> mx.array:
    """Logits from final-norm hidden states (tied models project with the embedding)."""
    if "lm_head" in model:
        return model.lm_head(hidden)
    return decoder(model).embed_tokens.as_linear(hidden)


def right_pad(batch: Sequence[list[int]], pad_id: int) -> tuple[mx.array, mx.array]:
    """(ids, valid) with real tokens at positions 0..len-1, for scoring."""
    width = max(len(row) for row in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int32)
    valid = np.zeros((len(batch), width), dtype=bool)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = row
        valid[i, : len(row)] = True
    return mx.array(ids), mx.array(valid)


def left_pad(batch: Sequence[list[int]], pad_id: int) -> tuple[mx.array, mx.array, mx.array]:
    """(ids, valid, offsets) for generation: offsets = -pads, so a row's first real token is at 0."""
    width = max(len(row) for row in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int32)
    valid = np.zeros((len(batch), width), dtype=bool)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = row
        valid[i, width - len(row):] = True
    offsets = np.array([len(row) - width for row in batch], dtype=np.int32)
    return mx.array(ids), mx.array(valid), mx.array(offsets)


def attention_mask(key_valid: mx.array, length: int) -> mx.array:
    """Boolean (B, 1, L, P+L): causal over P cached keys then L new ones, pads masked as keys.

    A query always sees itself: a left-pad query has no other visible key, and an all-masked
    row would make softmax NaN, which then leaks into real rows through 0 * NaN.
    """
    total = key_valid.shape[1]
    query = mx.arange(length)[:, None] + (total - length)
    key = mx.arange(total)[None, :]
    allowed = ((key <= query)[None] & key_valid[:, None, :]) | (key == query)[None]
    return allowed[:, None]


def block_forward(block, h: mx.array, offsets, mask: mx.array, past=None):
    """One Llama-style block: (output, down-projection input, (keys, values) incl. ``past``).

    ``past``: None, a fixed (keys, values) prefix, or a decoding cache with ``update_and_fetch``.
    """
    attn = block.self_attn
    x = block.input_layernorm(h)
    batch, length, _ = x.shape
    q = attn.q_proj(x).reshape(batch, length, attn.n_heads, -1).transpose(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(batch, length, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(batch, length, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    q, k = attn.rope(q, offset=offsets), attn.rope(k, offset=offsets)
    if hasattr(past, "update_and_fetch"):  # decoding: mlx-lm's preallocated, growing cache
        k, v = past.update_and_fetch(k, v)
    elif past is not None:  # v*: a fixed prefix
        k, v = mx.concatenate([past[0], k], axis=2), mx.concatenate([past[1], v], axis=2)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask)
    h = h + attn.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))
    x = block.post_attention_layernorm(h)
    key = nn.silu(block.mlp.gate_proj(x)) * block.mlp.up_proj(x)
    return h + block.mlp.down_proj(key), key, (k, v)


def run_blocks(model, h, offsets, key_valid, start: int, stop: int, past=None, keys_at=(), hidden_at=()):
    """Blocks ``start..stop-1`` on ``h``; returns (h, keys by layer, outputs by layer, kv by layer)."""
    layers = decoder(model).layers
    mask = attention_mask(key_valid, h.shape[1])
    keys, hidden, cache = {}, {}, {}
    for index in range(start, stop):
        h, key, cache[index] = block_forward(layers[index], h, offsets, mask, None if past is None else past[index])
        if index in keys_at:
            keys[index] = key
        if index in hidden_at:
            hidden[index] = h
    return h, keys, hidden, cache


def logits_all(model, ids: mx.array, key_valid: mx.array, offsets) -> mx.array:
    h = run_blocks(model, decoder(model).embed_tokens(ids), offsets, key_valid, 0, len(decoder(model).layers))[0]
    return head(model, decoder(model).norm(h))


def log_softmax(logits: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def perplexity(model, chunks: Sequence[list[int]], pad_id: int, batch_size: int = 8) -> float:
    """exp(mean NLL) over real next tokens (the torch backend's batching and padding). The
    softmax runs in torch: MLX's CPU exp took 1.7 s per batch of logits, torch's 0.3 s."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        ids, valid = right_pad(chunks[start : start + batch_size], pad_id)
        logits = to_torch(logits_all(model, ids, valid, 0)[:, :-1])
        target = to_torch(ids[:, 1:]).long()
        mask = to_torch(valid[:, 1:])
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total_nll += nll[mask].sum().item()
        total_tokens += int(mask.sum())
    return math.exp(total_nll / max(total_tokens, 1))


def argmax_tokens(model, sequences: Sequence[list[int]], starts: Sequence[int], pad_id: int, batch_size: int) -> list[list[int]]:
    """Teacher-forced argmax next tokens from each row's ``start - 1`` on (the torch backend's)."""
    out: list[list[int]] = []
    for first in range(0, len(sequences), batch_size):
        chunk = sequences[first:first + batch_size]
        ids, valid = right_pad(chunk, pad_id)
        best = to_torch(logits_all(model, ids, valid, 0)).argmax(-1)
        for row, seq, start in zip(best, chunk, starts[first:first + batch_size]):
            out.append(row[start - 1:len(seq) - 1].tolist())
    return out


def decode_loop(model, batch, max_new_tokens: int, pad_id: int, eos_ids, pick) -> list[list[int]]:
    """Token-by-token decoding with a KV cache; ``pick(logits (B, V), step) -> (B,) ids``.

    Like transformers' ``generate``: a row that emitted an end-of-sequence token continues with
    pad tokens, and decoding stops once every row has finished. Returns the new tokens only.
    """
    from mlx_lm.models.cache import KVCache

    ids, valid, offsets = left_pad(batch, pad_id)
    layers = len(decoder(model).layers)
    cache = [KVCache() for _ in range(layers)]  # concatenating per step copied O(n^2) bytes
    h = run_blocks(model, decoder(model).embed_tokens(ids), offsets, valid, 0, layers, past=cache)[0]
    logits = head(model, decoder(model).norm(h[:, -1]))
    done = np.zeros(len(batch), dtype=bool)
    steps: list[np.ndarray] = []
    for step in range(max_new_tokens):
        chosen = np.where(done, pad_id, np.asarray(pick(logits.astype(mx.float32), step)))
        steps.append(chosen)
        done |= np.isin(chosen, list(eos_ids))
        if done.all() or step == max_new_tokens - 1:
            break
        valid = mx.concatenate([valid, mx.ones((len(batch), 1), dtype=mx.bool_)], axis=1)
        position = offsets + ids.shape[1] + step
        token = decoder(model).embed_tokens(mx.array(chosen.astype(np.int32))[:, None])
        h = run_blocks(model, token, position, valid, 0, layers, past=cache)[0]
        logits = head(model, decoder(model).norm(h[:, -1]))
        mx.eval(logits, [(layer.keys, layer.values) for layer in cache])
    return np.stack(steps, axis=1).tolist() if steps else [[] for _ in batch]


def greedy(model, batch, max_new_tokens: int, pad_id: int, eos_ids) -> list[list[int]]:
    return decode_loop(model, batch, max_new_tokens, pad_id, eos_ids, lambda logits, _: mx.argmax(logits, axis=-1))


def top_k_pick(top_k: int):
    """transformers' sampling step (top-k filter, softmax, ``torch.multinomial`` on torch's global
    generator): seeded like the torch backend, the same logits draw the same tokens."""
    def pick(logits: mx.array, _step: int) -> np.ndarray:
        scores = to_torch(logits)
        kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
        probs = torch.softmax(scores.masked_fill(scores < kth, -float("inf")), dim=-1)
        return torch.multinomial(probs, num_samples=1)[:, 0].numpy()

    return pick


def sample_sequences(backend, n_tokens: int, length: int, seed: int, batch_size: int) -> list[list[int]]:
    """The model's own text, sampled (top-k 50) from the torch backend's neutral starts, seeded."""
    starts = ["The", "In", "A", "It", "When", "This", "We", "One", "After", "My", "There", "If"]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    sequences: list[list[int]] = []
    try:
        while sum(len(s) for s in sequences) < n_tokens:
            # As many rows as the remaining tokens need (the torch backend's rule, same draws).
            rows = min(batch_size, -(-(n_tokens - sum(len(s) for s in sequences)) // length))
            batch = [backend.encode(starts[(len(sequences) + i) % len(starts)]) for i in range(rows)]
            # As in the torch backend, a row that finished early keeps its pad tail (generate's shape).
            new = decode_loop(backend.net, batch, length, backend.pad_id, backend.eos_ids, top_k_pick(50))
            sequences += [prompt + row for prompt, row in zip(batch, new)]
    finally:
        torch.random.set_rng_state(state)
    return sequences


def sample_ids(backend, prompts: Sequence[list[int]], max_new_tokens: int, seed: int, batch_size: int) -> list[list[int]]:
    """Sampled continuations of token prompts (the torch backend's ``sample_ids``: top-k 50 on
    torch's generator, seeded; a row is cut after the tokenizer's end-of-sequence token)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out: list[list[int]] = []
    eos = backend.tokenizer.eos_token_id
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            for row in decode_loop(backend.net, batch, max_new_tokens, backend.pad_id, backend.eos_ids, top_k_pick(50)):
                out.append(row[: row.index(eos) + 1] if eos in row else row)
    finally:
        torch.random.set_rng_state(state)
    return out


def key_second_moments(backend, sequences, layers, batch_size):
    """Sum over all real tokens of k k^T per layer (float64, in torch), and the token count."""
    sums = {layer: torch.zeros(backend.d_ff, backend.d_ff, dtype=torch.float64) for layer in layers}
    count = 0
    for start in range(0, len(sequences), batch_size):
        ids, valid = right_pad(sequences[start : start + batch_size], backend.pad_id)
        embedded = decoder(backend.net).embed_tokens(ids)
        _, keys, _, _ = run_blocks(backend.net, embedded, 0, valid, 0, max(layers) + 1, keys_at=set(layers))
        flat = np.array(valid).reshape(-1)
        for layer in layers:
            rows = to_torch(keys[layer].reshape(-1, backend.d_ff))[torch.from_numpy(flat)].double()
            sums[layer] += rows.T @ rows
        count += int(flat.sum())
    return sums, count


def layer_states(backend, rows, key_layer: int, hidden_layer: int, batch_size: int):
    """Keys entering ``key_layer``'s down-projection and block ``hidden_layer``'s output, at lookups."""
    keys_out, hidden_out = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, valid = right_pad([r[0] for r in chunk], backend.pad_id)
        lookups = mx.array(np.array([r[1] for r in chunk], dtype=np.int32))[:, None, None]
        embedded = decoder(backend.net).embed_tokens(ids)
        _, keys, hidden, _ = run_blocks(backend.net, embedded, 0, valid, 0, max(key_layer, hidden_layer) + 1,
                                        keys_at={key_layer}, hidden_at={hidden_layer})
        keys_out.append(to_torch(mx.take_along_axis(keys[key_layer], lookups, axis=1)[:, 0]))
        hidden_out.append(to_torch(mx.take_along_axis(hidden[hidden_layer], lookups, axis=1)[:, 0]))
    return torch.cat(keys_out), torch.cat(hidden_out)
