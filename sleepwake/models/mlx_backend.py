"""MLX backend: the ``Backend`` protocol over mlx-lm models (Apple silicon, or Linux CPU).

Only the mlx_* modules import MLX. Arrays cross the boundary as float32 CPU torch tensors, so
the MEMIT solve, the covariance and the editor are the same code for both backends. Weights
come from the same folder as the torch backend's (the bundled GGUF's safetensors cache, a
local Hugging Face or mlx-community folder, or a hub id) and the tokenizer is transformers'
own, so both backends see the same token ids.

A quantised model (e.g. an mlx-community 4-bit folder) stays quantised except the linear
layers sleepwake writes: the first write replaces a ``QuantizedLinear`` by a dense ``Linear``
holding its dequantised weight, the base that every composition starts from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from sleepwake.models import mlx_blas  # noqa: F401  (first: MLX must find the fast BLAS)

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch

from sleepwake.config import ModelConfig
from sleepwake.errors import ModelLoadError
from sleepwake.models import mlx_internals, mlx_loading, mlx_lora, mlx_vstar
from sleepwake.models.backend import VStarRow, VStarSettings, chat_text, text_chunks


class MlxBackend:
    """An mlx-lm causal LM behind the ``Backend`` protocol."""

    def __init__(self, net, tokenizer, config: dict, down_proj: str, name: str, folder: Path | None = None,
                 trust_remote_code: bool = False):
        # ``net``, not ``model``: chat's Replier streams through a ``model`` attribute as torch.
        self.net, self.tokenizer, self.config, self.name = net, tokenizer, config, name
        self.down_proj_template = down_proj
        self.num_layers = len(mlx_internals.decoder(net).layers)
        self.d_model = int(config["hidden_size"])
        self.d_ff = int(config["intermediate_size"])
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        eos = config.get("eos_token_id", tokenizer.eos_token_id)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.fingerprint = mlx_loading.fingerprint(net, config, folder, trust_remote_code)
        self._pristine: dict[str, torch.Tensor] = {}
        # Modules the last Memory.compose wrote (whichever Memory: a backend may be lent to many).
        self.composed: set[str] = set()
        self.can_train_lora = True  # mlx-lm's tuner (models.mlx_lora)
        self.input_device = torch.device("cpu")

    @classmethod
    def load(cls, cfg: ModelConfig, down_proj: str, cache_dir: Path | None = None) -> "MlxBackend":
        from mlx_lm.utils import load_model
        from transformers import AutoTokenizer

        from sleepwake.models.source import quiet_transformers

        mlx_loading.check_model_config(cfg)
        mlx_loading.select_device(cfg.device)
        quiet_transformers()
        try:
            folder = mlx_loading.resolve_folder(cfg, cache_dir)
            net, config = load_model(folder, model_config=mlx_loading.rope_overrides(folder),
                                     trust_remote_code=cfg.trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except ModelLoadError:
            raise
        except Exception as exc:  # FileNotFoundError, ValueError, hub errors: all one message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load model '{cfg.source}' with mlx-lm: {first}") from None
        mlx_internals.check_architecture(net, config)
        # Quantised folders keep their own scale dtypes; a plain one is cast to model.dtype.
        dtype = mlx_loading.DTYPES[cfg.dtype]
        if "quantization" not in config and mlx_internals.decoder(net).embed_tokens.weight.dtype != dtype:
            net.set_dtype(dtype)
        net.eval()
        return cls(net, tokenizer, config, down_proj, cfg.source, folder, cfg.trust_remote_code)

    # ---- tokens -------------------------------------------------------------------------
    def encode(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_messages_ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        text = chat_text(self.tokenizer, messages, add_generation_prompt)
        return self.encode(text, special=False)

    # ---- generation and probes -------------------------------------------------------------
    def generate_ids(self, batch: Sequence[list[int]], max_new_tokens: int,
                     banned: Sequence[list[int]] | None = None) -> list[list[int]]:
        """Greedy new tokens; ``banned``: single tokens never produced (forget bans an object's first token)."""
        banned = [seq for seq in banned or [] if seq]  # an empty encoding bans nothing (as on torch)
        if not banned:
            return mlx_internals.greedy(self.net, batch, max_new_tokens, self.pad_id, self.eos_ids)
        if any(len(seq) != 1 for seq in banned):
            raise ValueError("backend=mlx bans single tokens only")
        never = mx.array(sorted({seq[0] for seq in banned}))

        def pick(logits: mx.array, _step: int) -> mx.array:
            logits[:, never] = -float("inf")
            return mx.argmax(logits, axis=-1)

        return mlx_internals.decode_loop(self.net, batch, max_new_tokens, self.pad_id, self.eos_ids, pick)

    def generate_texts(self, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int = 16,
                       banned: Sequence[list[int]] | None = None, done=None) -> list[str]:
        """Greedy continuations; ``done`` (a row may stop early) is not used: every row runs its budget."""
        results: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            results += [self.decode(row) for row in self.generate_ids(chunk, max_new_tokens, banned)]
        return results

    def sample_ids(self, prompts: Sequence[list[int]], max_new_tokens: int, seed: int, batch_size: int = 32) -> list[list[int]]:
        """Sampled continuations (top-k 50, seeded on torch's generator like the torch backend)."""
        return mlx_internals.sample_ids(self, prompts, max_new_tokens, seed, batch_size)

    def next_token_logits(self, batch: Sequence[list[int]]) -> torch.Tensor:
        """(rows, longest, vocab) float32 next-token logits at every position of the right-padded rows of
        ``batch`` (one forward; a row's positions past its own length are padding)."""
        rows, valid = mlx_internals.right_pad([list(ids) for ids in batch], self.pad_id)
        return mlx_internals.to_torch(mlx_internals.logits_all(self.net, rows, valid, 0).astype(mx.float32))

    def chat_ids(self, question: str) -> list[int]:
        return self.chat_messages_ids([{"role": "user", "content": question}])

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return self.generate_texts([self.encode(p) for p in prompts], max_new_tokens)

    def chat(self, questions: Sequence[str], max_new_tokens: int) -> list[str]:
        return self.generate_texts([self.chat_ids(q) for q in questions], max_new_tokens)

    def argmax_tokens(self, sequences: Sequence[list[int]], starts: Sequence[int], batch_size: int = 16) -> list[list[int]]:
        """Teacher-forced greedy tokens from ``start - 1`` on (see the torch backend)."""
        return mlx_internals.argmax_tokens(self.net, sequences, starts, self.pad_id, batch_size)

    def perplexity(self, texts: Sequence[str], chunk_tokens: int, max_chunks: int) -> float:
        return mlx_internals.perplexity(self.net, text_chunks(self, texts, chunk_tokens, max_chunks), self.pad_id)

    def sample_sequences(self, n_tokens: int, length: int, seed: int, batch_size: int = 128) -> list[list[int]]:
        return mlx_internals.sample_sequences(self, n_tokens, length, seed, batch_size)

    # ---- MEMIT primitives -------------------------------------------------------------------
    def key_second_moments(self, sequences, layers, batch_size):
        return mlx_internals.key_second_moments(self, sequences, layers, batch_size)

    def input_second_moments(self, sequences, names, batch_size):
        return mlx_lora.input_second_moments(self, sequences, names, batch_size)

    def layer_states(self, rows, key_layer, hidden_layer, batch_size):
        return mlx_internals.layer_states(self, rows, key_layer, hidden_layer, batch_size)

    def optimize_target(self, rows: Sequence[VStarRow], n_facts: int, layer: int, settings: VStarSettings):
        return mlx_vstar.optimize_target(self, rows, n_facts, layer, settings)

    def get_weight(self, layer: int) -> torch.Tensor:
        return self.module_weight(self.down_proj_template.format(layer))

    def set_weight(self, layer: int, weight: torch.Tensor) -> None:
        self.set_module_weight(self.down_proj_template.format(layer), weight)

    def pristine_weight(self, name: str) -> torch.Tensor:
        """float32 copy of module ``name``'s weight as loaded (dequantised), cached on first use."""
        if name not in self._pristine:
            self._pristine[name] = self.module_weight(name)
        return self._pristine[name].clone()

    def module_weight(self, name: str) -> torch.Tensor:
        return mlx_internals.to_torch(self._dense(name))

    def set_module_weight(self, name: str, weight: torch.Tensor) -> None:
        module = self._linear(name)
        if isinstance(module, nn.QuantizedLinear):
            module = self._dequantise(name, module)
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} for {tuple(module.weight.shape)}")
        module.weight = mlx_internals.to_mlx(weight, module.weight.dtype)
        mx.eval(module.weight)

    def weights_digest(self, layers: Sequence[int], modules: Sequence[str] = ()) -> str:
        """sha256 over the bytes of every editable weight (MEMIT layers, then adapted modules),
        equal to the torch backend's digest of the same bytes."""
        digest = hashlib.sha256()
        names = [(str(layer), self.down_proj_template.format(layer)) for layer in layers] + [(n, n) for n in modules]
        for label, name in names:
            weight = self._dense(name)
            # Headed like the torch backend's ("torch.float32"): same bytes, same digest.
            dtype = mlx_loading.TORCH_NAMES.get(weight.dtype, str(weight.dtype))
            digest.update(f"{label}:{dtype}:{tuple(weight.shape)}".encode())
            digest.update(np.array(weight.view(mx.uint8)).tobytes())
        return digest.hexdigest()

    def lora_targets(self, recipe) -> list[str]:
        return mlx_lora.target_names(self.net, recipe)

    def train_lora(self, examples, recipe, anchors=(), progress=None, protect=None):
        return mlx_lora.train_lora(self, examples, recipe, anchors=anchors, progress=progress, protect=protect)

    # ---- modules ----------------------------------------------------------------------------
    def _resolve(self, name: str):
        return mlx_internals.module_at(self.net, name)

    def _linear(self, name: str):
        try:
            node = self._resolve(name)
        except (AttributeError, IndexError, ValueError, KeyError):
            raise ModelLoadError(
                f"module '{name}' not found in {self.name}: set memit.down_proj for this architecture "
                f"(layers 0..{self.num_layers - 1})"
            ) from None
        if not isinstance(node, (nn.Linear, nn.QuantizedLinear)):
            raise ModelLoadError(f"module '{name}' in {self.name} is not a linear layer")
        return node

    def _dense(self, name: str) -> mx.array:
        """The weight (out, in) as stored, dequantised for a still-quantised layer."""
        module = self._linear(name)
        if isinstance(module, nn.QuantizedLinear):
            return mx.dequantize(module.weight, module.scales, module.get("biases"), group_size=module.group_size,
                                 bits=module.bits, mode=getattr(module, "mode", "affine"))
        return module.weight

    def _dequantise(self, name: str, module) -> nn.Linear:
        """Swap a quantised layer for a dense one with the same (dequantised) weight and bias."""
        weight = self._dense(name)
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
        dense.weight = weight
        if "bias" in module:
            dense.bias = module.bias
        parent_name, _, leaf = name.rpartition(".")
        parent = self._resolve(parent_name)
        if isinstance(parent, list):
            parent[int(leaf)] = dense
        else:
            setattr(parent, leaf, dense)
        return dense
