"""Torch/transformers backend: load any causal LM, generate greedily, read and edit MLP weights."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from sleepwake.config import ModelConfig
from sleepwake.errors import ModelLoadError
from sleepwake.models import torch_internals, torch_moments, torch_vstar
from sleepwake.models.backend import VStarRow, VStarSettings, chat_text, length_batches, text_chunks
from sleepwake.models.bundled import default_cache_dir
from sleepwake.models.torch_decoding import Done, greedy_until
from sleepwake.models.source import quiet_transformers, resolve_device, resolve_source

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


SUPPORTED = "Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3 and their like"


def check_supported(model, down_proj: str, source: str) -> None:
    """One clear error for a model sleepwake cannot edit: decoder blocks at ``model.layers`` whose
    MLP output projection ``down_proj`` names (a GPT-2 or an encoder has neither)."""
    kind = getattr(model.config, "model_type", "unknown")
    sizes = all(hasattr(model.config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))
    try:
        torch_internals.decoder_layers(model)
        model.get_submodule(down_proj.format(0))
        found = True
    except AttributeError:
        found = False
    if not (sizes and found):
        raise ModelLoadError(
            f"model '{source}' ({kind}) is not an architecture sleepwake can edit: it needs decoder "
            f"blocks at model.layers with an MLP output projection at '{down_proj}' ({SUPPORTED}); "
            "for another module layout set memit.down_proj")


class TorchBackend:
    """A transformers causal LM behind the ``Backend`` protocol."""

    def __init__(self, model, tokenizer, down_proj: str, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.down_proj_template = down_proj
        for param in self.model.parameters():
            param.requires_grad_(False)
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.d_model = cfg.hidden_size
        self.d_ff = cfg.intermediate_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.fingerprint = self._fingerprint()
        self._pristine: dict[str, torch.Tensor] = {}
        # Modules the last Memory.compose wrote (whichever Memory: a backend may be lent to many).
        self.composed: set[str] = set()
        self.can_train_lora = True  # peft LoRA over the composed weights (models.lora)

    @classmethod
    def load(cls, cfg: ModelConfig, down_proj: str, cache_dir: Path | None = None) -> "TorchBackend":
        quiet_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, gguf = resolve_source(cfg, cache_dir or default_cache_dir())
        kwargs: dict = {"dtype": DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
        if gguf:
            kwargs["gguf_file"] = gguf
        if cfg.device_map:
            kwargs["device_map"] = cfg.device_map
        if cfg.quantization == "nf4":
            kwargs["quantization_config"] = torch_internals.nf4_config(down_proj, cfg)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
            model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except Exception as exc:  # OSError, ValueError, HF hub errors: all one message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load model '{cfg.source}': {first}") from None
        check_supported(model, down_proj, cfg.source)
        if not cfg.device_map:
            model.to(resolve_device(cfg.device))
        if cfg.quantization == "nf4":
            torch_internals.keep_4bit_differentiable(model)
        return cls(model, tokenizer, down_proj, cfg.source)

    # ---- identity -------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        """sha256 of the config and a strided sample of every tensor: cheap even at 70B, and it
        changes whenever the base weights do (so covariance caches never mix models)."""
        # Paths and library versions are not part of the weights' identity.
        config = {k: v for k, v in self.model.config.to_dict().items()
                  if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in self.model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            digest.update(name.encode())
            digest.update(flat[::step][:4096].float().cpu().numpy().tobytes())
        return digest.hexdigest()[:32]

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ---- tokens -------------------------------------------------------------------------
    def encode(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- generation and probes -------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, batch: Sequence[list[int]], max_new_tokens: int,
                     banned: Sequence[list[int]] | None = None, done: Done | None = None) -> list[list[int]]:
        """Greedy decoding of token prompts (left-padded batch); returns the new tokens only.
        ``banned``: token sequences never to produce (forget's base answers ban the object).
        ``done(row, tokens)``: that row may stop there (``torch_decoding``; not with ``banned``)."""
        if done is not None and not banned:
            return greedy_until(self, batch, max_new_tokens, done)
        input_ids, attention = torch_internals.left_pad(batch, self.tokenizer.pad_token_id, self.input_device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            bad_words_ids=[list(b) for b in banned if b] or None if banned else None,
        )
        return [row[input_ids.shape[1]:].tolist() for row in out]

    def generate_texts(self, prompts: Sequence[list[int]], max_new_tokens: int,
                       banned: Sequence[list[int]] | None = None, done: Done | None = None) -> list[str]:
        """Greedy continuations of token prompts, decoded, in batches of similar length
        (``length_batches``); results come back in the order of ``prompts``. ``done(i, tokens)``:
        prompt i's continuation may stop there."""
        results: list[str] = [""] * len(prompts)
        for picked in length_batches(prompts, max_new_tokens):
            in_batch = None if done is None else (lambda row, tokens, picked=picked: done(picked[row], tokens))
            for index, row in zip(picked, self.generate_ids([prompts[i] for i in picked], max_new_tokens, banned, in_batch)):
                results[index] = self.decode(row)
        return results

    @torch.no_grad()
    def argmax_tokens(self, sequences: Sequence[list[int]], starts: Sequence[int], batch_size: int = 16) -> list[list[int]]:
        """Teacher-forced greedy tokens: for each sequence, the argmax next token at every
        position from ``start - 1`` on, i.e. the model's own choice for tokens ``start..end``."""
        out: list[list[int]] = []
        head = self.model.get_output_embeddings()
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first:first + batch_size]
            ids, mask = torch_internals.right_pad(chunk, self.tokenizer.pad_token_id, self.input_device)
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            for row, seq, start in zip(hidden, chunk, starts[first:first + batch_size]):
                # the head only where it is needed: a whole (b, t, vocab) tensor is hundreds of MB
                out.append(head(row[start - 1:len(seq) - 1]).argmax(-1).cpu().tolist())
        return out

    @torch.no_grad()
    def sample_ids(self, prompts: Sequence[list[int]], max_new_tokens: int, seed: int, batch_size: int = 32) -> list[list[int]]:
        """Sampled continuations (top-k 50, seeded) of token prompts: the model's own text."""
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        out: list[list[int]] = []
        try:
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start:start + batch_size])
                ids, mask = torch_internals.left_pad(batch, self.tokenizer.pad_token_id, self.input_device)
                rows = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=50, top_p=None,
                                           temperature=1.0, max_new_tokens=max_new_tokens,
                                           pad_token_id=self.tokenizer.pad_token_id)
                eos = self.tokenizer.eos_token_id
                for row in rows[:, ids.shape[1]:].tolist():
                    out.append(row[: row.index(eos) + 1] if eos in row else row)
        finally:
            torch.random.set_rng_state(state)
        return out

    @torch.no_grad()
    def next_token_logits(self, batch: Sequence[list[int]]) -> torch.Tensor:
        """(rows, longest, vocab) float32 next-token logits at every position of the right-padded rows of
        ``batch`` (one forward; a row's positions past its own length are padding)."""
        ids, mask = torch_internals.right_pad(batch, self.tokenizer.pad_token_id, self.input_device)
        return self.model(input_ids=ids, attention_mask=mask).logits.float()

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return self.generate_texts([self.encode(p) for p in prompts], max_new_tokens)

    def chat_ids(self, question: str) -> list[int]:
        return self.chat_messages_ids([{"role": "user", "content": question}])

    def chat(self, questions: Sequence[str], max_new_tokens: int) -> list[str]:
        return self.generate_texts([self.chat_ids(q) for q in questions], max_new_tokens)

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], chunk_tokens: int, max_chunks: int) -> float:
        """exp(mean NLL) over fixed-length token chunks of ``texts`` (deterministic chunking)."""
        chunks = text_chunks(self, texts, chunk_tokens, max_chunks)
        return torch_internals.perplexity(self.model, chunks, self.tokenizer.pad_token_id, self.input_device)

    def sample_sequences(self, n_tokens: int, length: int, seed: int, batch_size: int = 128) -> list[list[int]]:
        return torch_internals.sample_sequences(self, n_tokens, length, seed, batch_size)

    # ---- MEMIT primitives -------------------------------------------------------------------
    def down_proj(self, layer: int) -> torch.nn.Module:
        try:
            return self.model.get_submodule(self.down_proj_template.format(layer))
        except AttributeError:
            raise ModelLoadError(
                f"module '{self.down_proj_template.format(layer)}' not found: set memit.down_proj "
                f"for this architecture (layers 0..{self.num_layers - 1})"
            ) from None

    def block(self, layer: int) -> torch.nn.Module:
        return torch_internals.decoder_layers(self.model)[layer]

    def key_second_moments(self, sequences, layers, batch_size):
        return torch_moments.key_second_moments(self, sequences, layers, batch_size)

    def input_second_moments(self, sequences, names, batch_size):
        return torch_moments.input_second_moments(self, sequences, names, batch_size)

    def layer_states(self, rows, key_layer, hidden_layer, batch_size):
        return torch_internals.layer_states(self, rows, key_layer, hidden_layer, batch_size)

    def optimize_target(self, rows: Sequence[VStarRow], n_facts: int, layer: int, settings: VStarSettings):
        return torch_vstar.optimize_target(self, rows, n_facts, layer, settings)

    def get_weight(self, layer: int) -> torch.Tensor:
        return torch_internals.dense_weight(self.down_proj(layer)).float().clone()

    def set_weight(self, layer: int, weight: torch.Tensor) -> None:
        self.set_module_weight(self.down_proj_template.format(layer), weight)

    def pristine_weight(self, name: str) -> torch.Tensor:
        """A float32 copy of module ``name``'s weight as loaded, before any composition (cached
        on first use, so every Memory over this backend composes from the same base)."""
        if name not in self._pristine:
            # On the CPU: Memory composes base + adapters + edits from CPU factors, and a GPU
            # holding float32 copies of a 70B's edited layers would spend gigabytes on them.
            self._pristine[name] = self.module_weight(name).cpu()
        return self._pristine[name].clone()

    def module_weight(self, name: str) -> torch.Tensor:
        """A float32 copy of the weight of the linear module ``name`` (any module LoRA adapts)."""
        return torch_internals.dense_weight(self._linear(name)).float().clone()

    def set_module_weight(self, name: str, weight: torch.Tensor) -> None:
        module = self._linear(name)
        if torch_internals.is_quantised(module):  # NF4: a layer sleepwake writes becomes dense
            module = torch_internals.dequantise(self.model, name)
        target: Any = module.weight
        with torch.no_grad():
            target.copy_(weight.to(device=target.device, dtype=target.dtype))

    def _linear(self, name: str) -> torch.nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ModelLoadError(f"module '{name}' not found in {self.name}") from None

    def weights_digest(self, layers: Sequence[int], modules: Sequence[str] = ()) -> str:
        """sha256 over the bytes of every editable weight (MEMIT layers, then adapted modules)."""
        digest = hashlib.sha256()
        for layer in layers:
            weight = torch_internals.dense_weight(self.down_proj(layer)).contiguous().cpu()
            digest.update(f"{layer}:{weight.dtype}:{tuple(weight.shape)}".encode())
            digest.update(weight.view(torch.uint8).numpy().tobytes())
        for name in modules:
            weight = torch_internals.dense_weight(self._linear(name)).contiguous().cpu()
            digest.update(f"{name}:{weight.dtype}:{tuple(weight.shape)}".encode())
            digest.update(weight.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def lora_targets(self, recipe) -> list[str]:
        from sleepwake.models.lora import target_names

        return target_names(self.model, recipe)

    def train_lora(self, examples, recipe, anchors=(), progress=None, protect=None):
        from sleepwake.models.lora import train_lora

        return train_lora(self, examples, recipe, anchors=anchors, progress=progress, protect=protect)

    def chat_messages_ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a whole conversation through the chat template."""
        text = chat_text(self.tokenizer, messages, add_generation_prompt)
        return self.encode(text, special=False)
