"""Forward passes with hooks for the torch backend: batching, key capture, covariance, v*.

Kept apart from ``torch_backend`` so the class stays a thin protocol adapter. Everything that
touches module internals (decoder layers, down-projections, the LM head) lives here.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sleepwake.progress import GenerationBar, bar


def bar_range(total: int, step: int, desc: str, unit: str):
    """``range(0, total, step)`` with a progress bar counting ``unit``s."""
    progress = bar(total, desc, unit)
    try:
        for start in range(0, total, step):
            yield start
            progress.update(min(step, total - start))
    finally:
        progress.close()



def left_pad(batch: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, for generation: every row's next token sits in the last column."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def right_pad(batch: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding, for scoring: positions keep their natural indices (no position shift)."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks, whatever the wrapper (plain HF model or PEFT)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise AttributeError("model has no .model.layers; unsupported architecture")
    return layers


def nf4_config(down_proj_template: str, cfg):
    """bitsandbytes NF4 for every linear layer but the LM head.

    The layers sleepwake writes (the MEMIT down projections, the modules sleep's LoRA adapts) are
    dequantised on their first write (:func:`dequantise`), as paper 4 ran its 70B: only they
    cost 16 bits a weight, and the base every edit composes onto is the model as loaded. Skipping
    them at load instead (``llm_int8_skip_modules``) would need the edited layers before the
    model exists, and matching the leaf name "down_proj" kept all 80 layers' down projections
    of a 70B in bf16 (38 GB) for the 8 that MEMIT edits.
    """
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        from sleepwake.errors import ModelLoadError

        raise ModelLoadError("model.quantization=nf4 needs bitsandbytes (pip install -e '.[nf4]')") from None
    compute = torch.bfloat16 if cfg.dtype == "float32" else getattr(torch, cfg.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=["lm_head"],
    )


def keep_4bit_differentiable(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights (AVX512-BF16 CPUs): after the first
    no-grad forward it rewrites each layer in place for a kernel that has no backward, and v*
    differentiates through the 4-bit layers above the edit (torch warned, and the gradient
    through them would be silently lost)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)


def is_quantised(module: torch.nn.Module) -> bool:
    """A bitsandbytes 4-bit linear layer (its weight carries a quant_state)."""
    return getattr(getattr(module, "weight", None), "quant_state", None) is not None


def dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """The (out, in) weight in its compute dtype on its device, dequantised for a 4-bit layer."""
    weight: Any = module.weight
    if weight.device.type == "meta":
        from sleepwake.errors import ModelLoadError

        raise ModelLoadError("an edited layer was offloaded by device_map (its weight is on 'meta'): "
                             "sleepwake writes it, so it must sit on a GPU or the CPU")
    if not is_quantised(module):
        return weight.detach()
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, weight.quant_state)


def dequantise(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """Replace the 4-bit layer ``name`` by a dense ``Linear`` holding its dequantised weight, on the
    same device and with the same accelerate hook (multi-GPU input placement)."""
    old = model.get_submodule(name)
    weight = dense_weight(old)
    dense = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None,
                            device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        dense.weight.copy_(weight)
        bias: Any = old.bias
        if bias is not None:
            dense.bias.copy_(bias)
    dense.requires_grad_(False)
    hook = getattr(old, "_hf_hook", None)
    if hook is not None:
        from accelerate.hooks import add_hook_to_module

        add_hook_to_module(dense, hook)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, dense)
    return dense


@torch.no_grad()
def perplexity(model, chunks: Sequence[list[int]], pad_id: int, device, batch_size: int = 8, slice_tokens: int = 256) -> float:
    """exp(mean NLL) of every real next token. Logits are made ``slice_tokens`` positions at a time
    from the final hidden states: the full (batch, tokens, vocab) tensor of a 49k-token vocabulary
    would be ~300 MB per batch, the largest allocation of a whole sleep."""
    total_nll, total_tokens = 0.0, 0
    head = model.get_output_embeddings()
    for start in range(0, len(chunks), batch_size):
        ids, mask = right_pad(chunks[start : start + batch_size], pad_id, device)
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]  # (b, t-1, d)
        target = ids[:, 1:].to(hidden.device)
        valid = mask[:, 1:].bool().to(hidden.device)
        rows, cols = valid.nonzero(as_tuple=True)
        for first in range(0, len(rows), slice_tokens):
            r, c = rows[first:first + slice_tokens], cols[first:first + slice_tokens]
            logits = head(hidden[r, c]).float()  # (n, vocab)
            total_nll += F.cross_entropy(logits, target[r, c].to(logits.device), reduction="sum").item()
        total_tokens += int(valid.sum())
    return math.exp(total_nll / max(total_tokens, 1))


@torch.no_grad()
def sample_sequences(backend, n_tokens: int, length: int, seed: int, batch_size: int) -> list[list[int]]:
    """The model's own text, sampled (top-k 50) from a few neutral starts; seeded, so cacheable."""
    starts = ["The", "In", "A", "It", "When", "This", "We", "One", "After", "My", "There", "If"]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    sequences: list[list[int]] = []
    progress = bar(n_tokens, "sampling the model's own text", "token")
    try:
        while sum(len(s) for s in sequences) < n_tokens:
            # The last batch only as large as the remaining tokens need (a small request,
            # e.g. 5 contexts of 10 tokens, must not generate a whole batch of 128).
            rows = min(batch_size, -(-(n_tokens - sum(len(s) for s in sequences)) // length))
            batch = [backend.encode(starts[(len(sequences) + i) % len(starts)]) for i in range(rows)]
            ids, mask = left_pad(batch, backend.tokenizer.pad_token_id, backend.input_device)
            out = backend.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, top_k=50, top_p=None,
                temperature=1.0, max_new_tokens=length, pad_token_id=backend.tokenizer.pad_token_id,
                streamer=GenerationBar(progress, rows),
            )
            for row, row_mask in zip(out, mask):
                tokens = row[int((row_mask == 0).sum()):].tolist()  # drop left padding
                sequences.append(tokens)
    finally:
        progress.close()
        torch.random.set_rng_state(generator_state)
    return sequences


@contextlib.contextmanager
def capture_inputs(modules: dict[int, torch.nn.Module]):
    """Record the input tensor of each module (by layer) during a forward pass."""
    seen: dict[int, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda _m, args, layer=layer: seen.__setitem__(layer, args[0]))
        for layer, module in modules.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a hook once the last needed layer has run: the rest of the model is skipped."""


@contextlib.contextmanager
def stop_after(module: torch.nn.Module):
    """Abort the forward pass right after ``module`` (keys at layer 9 need not run layers 10-29)."""
    def hook(*_):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_output(module: torch.nn.Module):
    seen: dict[str, torch.Tensor] = {}

    def hook(_m, _args, output):
        seen["out"] = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def layer_states(backend, rows, key_layer, hidden_layer, batch_size):
    """Keys entering ``key_layer``'s down-projection and block ``hidden_layer``'s output, at lookups."""
    keys_out, hidden_out = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask = right_pad([r[0] for r in chunk], backend.tokenizer.pad_token_id, backend.input_device)
        lookups = torch.tensor([r[1] for r in chunk])
        with capture_inputs({key_layer: backend.down_proj(key_layer)}) as keys, capture_output(
            backend.block(hidden_layer)
        ) as hidden, stop_after(backend.block(max(key_layer, hidden_layer))):
            backend.model(input_ids=ids, attention_mask=mask)
        rows_idx = torch.arange(len(chunk))
        key, out = keys[key_layer], hidden["out"]  # each on its own layer's device
        keys_out.append(key[rows_idx.to(key.device), lookups.to(key.device)].float().cpu())
        hidden_out.append(out[rows_idx.to(out.device), lookups.to(out.device)].float().cpu())
    return torch.cat(keys_out), torch.cat(hidden_out)
