"""The backend protocol: what sleepwake needs from a language-model runtime.

The MEMIT math (``models.memit``), the editor and the probes talk only to this protocol, so a
second runtime (MLX) implements these methods and converts arrays to torch at the boundary.
Token sequences are plain ``list[int]``; tensors crossing the boundary are torch float32 on CPU
or on the edited layer's device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VStarRow:
    """One sequence of the v* objective (MEMIT's target-vector optimisation).

    ``kind="nll"``: ``ids`` = context + prompt + target tokens; the loss is the target's negative
    log-likelihood at ``target_positions`` (positions whose next token is the target token).
    ``kind="kl"``: an essence prompt ("{subject} is a"); the loss keeps the next-token distribution
    at ``lookup`` close to the unedited model's (KL).
    """

    ids: list[int]
    lookup: int  # position of the subject's last token, where the delta is added
    fact: int  # index of the fact this row belongs to
    kind: str = "nll"
    target_ids: tuple[int, ...] = ()
    target_positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class VStarSettings:
    steps: int
    lr: float
    clamp_norm: float
    kl_factor: float
    weight_decay: float
    stop_loss: float
    batch_size: int
    checkpointing: bool = False  # recompute the blocks above the edit in the backward (torch and MLX)


class Backend(Protocol):
    """A loaded causal LM that sleepwake can read, probe and edit."""

    fingerprint: str  # identifies the base weights (covariance caches are keyed by it)
    num_layers: int
    d_model: int
    d_ff: int

    def encode(self, text: str, special: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations (new text only) of raw prompts."""

    def chat(self, questions: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy assistant replies to single-turn user questions through the chat template."""

    def perplexity(self, texts: Sequence[str], chunk_tokens: int, max_chunks: int) -> float: ...

    def sample_sequences(self, n_tokens: int, length: int, seed: int) -> list[list[int]]:
        """The model's own samples (for covariance statistics and prefix contexts)."""

    def key_second_moments(
        self, sequences: Sequence[list[int]], layers: Sequence[int], batch_size: int
    ) -> tuple[dict[int, torch.Tensor], int]:
        """Sum of k k^T (d_ff, d_ff) per layer over all tokens, and the token count."""

    def layer_states(
        self, rows: Sequence[tuple[list[int], int]], key_layer: int, hidden_layer: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, d_ff) entering ``key_layer``'s down-projection and the residual stream
        (B, d_model) after block ``hidden_layer``, both at each row's lookup position."""

    def optimize_target(
        self, rows: Sequence[VStarRow], n_facts: int, layer: int, settings: VStarSettings
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """v*: per-fact residual deltas (n, d_model) at block ``layer``, the unedited hidden
        states (n, d_model) they add to, and stats (steps, final losses)."""

    def get_weight(self, layer: int) -> torch.Tensor:
        """The edited down-projection of ``layer`` as float32 (d_model, d_ff) (a copy)."""

    def set_weight(self, layer: int, weight: torch.Tensor) -> None: ...

    composed: set[str]  # modules the last composition wrote (reset to base when no longer composed)

    def set_module_weight(self, name: str, weight: torch.Tensor) -> None:
        """Write float32 ``weight`` into the linear module ``name`` (e.g. an adapted q_proj)."""

    def pristine_weight(self, name: str) -> torch.Tensor:
        """float32 copy of module ``name``'s weight as loaded (cached before any composition)."""

    def weights_digest(self, layers: Sequence[int], modules: Sequence[str] = ()) -> str:
        """sha256 over the composed bytes of the MEMIT layers' down projections and ``modules``."""

    def chat_messages_ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation through the chat template."""

    def generate_texts(self, prompts: Sequence[list[int]], max_new_tokens: int, *,
                       done: Callable[[int, list[int]], bool] | None = None) -> list[str]:
        """Greedy continuations of token prompts; ``done(i, tokens)`` says prompt i's may stop there
        (probes stop once the answer is settled); a backend may ignore it and run the whole budget."""

    def lora_targets(self, recipe) -> list[str]:
        """Names of the linear modules ``recipe`` adapts (torch's dotted names on every backend)."""

    def train_lora(self, examples, recipe, anchors=(), progress=None, protect=None):
        """Train one LoRA (``models.lora.LoraRecipe``) over the current weights and return a
        ``models.lora.TrainOutcome`` whose factors are (U, V) per adapted module name, or raise
        :class:`sleepwake.errors.UnsupportedError` when this runtime cannot train. ``protect``:
        basis U_k (in, k) per module name that LoRA A is kept orthogonal to (``models.protection``)."""


# Greedy generation on a CPU pays per step for reading every weight, whatever the batch: more rows a
# step means fewer steps. Batches are bounded by tokens (rows x (longest prompt + new tokens)) so the
# KV cache stays ~0.2 GB on the bundled model. 160 facts of a night-10 home of the 500-fact run, with
# the probes' early stop (``torch_decoding``): raw and paraphrase prompts (10 tokens) 18.0 s against
# 31.3 s at 32 rows a batch without it, chat questions (41 tokens) 20.9 s against 25.1 s.
GENERATION_BATCH_TOKENS = 4096


def length_batches(prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   tokens: int = GENERATION_BATCH_TOKENS) -> list[list[int]]:
    """Indices of ``prompts`` in batches of similar length (less padding), shortest first, each
    holding as many rows as fit in ``tokens`` (at least one)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches: list[list[int]] = []
    for index in order:
        width = len(prompts[index]) + max_new_tokens  # the longest so far: sorted by length
        if batches and (len(batches[-1]) + 1) * width <= tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def chat_text(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """A conversation through the tokenizer's chat template; a model without one (a base model)
    gets plain "role: content" lines and a one-line warning, once per tokenizer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=False)
    if not getattr(tokenizer, "_sleepwake_warned", False):
        log.warning("the model has no chat template: chat turns are plain 'User: ...' / 'Assistant: ...' lines")
        setattr(tokenizer, "_sleepwake_warned", True)
    return plain_chat(messages, add_generation_prompt)


def plain_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """A transcript of "Role: content" lines the model continues as the assistant."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines + (["Assistant:"] if add_generation_prompt else [""]))


def text_chunks(backend: Backend, texts: Sequence[str], chunk_tokens: int, max_chunks: int) -> list[list[int]]:
    """The perplexity reference as token chunks: ``texts`` encoded end to end, cut every
    ``chunk_tokens``, one-token chunks dropped (no next token to score), the first ``max_chunks``
    kept. Deterministic, so every backend and benchmark scores the same positions."""
    ids: list[int] = []
    for text in texts:
        ids += backend.encode(text, special=False)
    chunks = [ids[i : i + chunk_tokens] for i in range(0, len(ids) - 1, chunk_tokens)]
    return [c for c in chunks if len(c) > 1][:max_chunks]
