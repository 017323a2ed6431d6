"""Settings of the LoRA every consolidation pass trains (section ``lora``: SWS, REM, a reinforcing nap).

An ordinary section of :class:`sleepwake.config.Settings` (``--set lora.rank=8``); a pydantic model with a
description per field (the Prefect forms and ``sleepwake config show``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sleepwake.settings.model import Layers, resolved_layers


class LoraConfig(BaseModel):
    """The LoRA every consolidation pass trains (SWS, REM and a reinforcing nap share it)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, gt=0, description="LoRA rank r (paper 4: 16).")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank (paper 4: 32).")
    layers: Layers = Field(
        default="auto",
        description="Decoder layers that get adapters (paper 4: 8 layers). Spread over the depth: "
        "the chat pathway runs through all of them. 'auto': 8 layers at the bundled preset's "
        "fractions of the depth (sleepwake.models.depth; 4, 7, ... 25 of its 30).")

    def adapted_layers(self) -> list[int]:
        return resolved_layers(self.layers, "lora.layers")
    modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"],
        description="Linear module names (last path component) adapted in those layers; names a model "
        "does not have are skipped (qkv_proj and gate_up_proj are Phi-3's fused projections).")
    learning_rate: float = Field(6.0e-3, gt=0, description="AdamW learning rate (linear decay to 0).")
    epochs: int = Field(5, gt=0, description="Passes over the training examples (paper 4: 1-3 at 3B-70B; "
                        "a 135M model needs more).")
    batch_size: int = Field(8, gt=0, description="Examples per optimisation step.")
    max_steps: int = Field(400, gt=0, description="Cap on optimisation steps per pass, whatever the data size.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the adapter.")
    anchor_weight: float = Field(
        8.0, ge=0, description="Weight of the KL term that keeps the adapted model's next-token "
        "distribution on the model's own text equal to the teacher's (0 = off). It is what keeps "
        "perplexity flat and unrelated answers unchanged.")
    anchor_batch: int = Field(4, gt=0, description="Anchor sequences per step.")
    anchor_tokens: int = Field(64, gt=1, description="Tokens the model writes per anchor text.")
    anchor_formats: list[Literal["prose", "question", "chat", "instruction"]] = Field(
        default=["prose", "question", "chat", "instruction"],  # type: ignore[arg-type]
        description="Formats of the anchor texts, all written by the base model itself: prose, raw "
        "questions, chat questions and instructions through the chat template (with its replies).")
    anchor_count: int = Field(32, gt=0, description="Anchor texts per format (made once per model, cached).")
    anchor_teacher: Literal["base", "current"] = Field(
        "base", description="Whose next-token distributions the anchors hold: the base model's "
        "('base': every night pulls back to the base, so drift cannot pile up) or the weights' "
        "before this pass ('current').")
    anchor_topk: int = Field(32, gt=0, description="Teacher tokens kept per anchored position (the rest "
                             "of its mass is one bucket).")
    contrast_anchors: int = Field(
        2, ge=0, description="Look-alike subjects per trained fact whose raw prompt and chat question are "
        "anchored to the base model's answers: the fact must not spill onto them (the leak).")
    memory_anchors: int = Field(
        128, ge=0, description="Consolidated facts (stage >= 1, none of the pass's own) whose chat question and "
        "answer (and raw answer, lora.memory_anchor_raw) each SWS pass anchors to the weights as they are before it (drawn anew each sleep; 0 = off): "
        "the anchor term then also holds what earlier nights consolidated (lora.memory_anchor_batch draws them). "
        "Night 10 of the 500-fact run with 128 (in the pool's draw): raw 0.952, chat 0.808, drift +4.16 % "
        "against 0.944, 0.788, +4.49 % with 0 (docs/results.md).")
    memory_anchor_raw: bool = Field(
        True, description="Also anchor each memory anchor's fact in its raw form (the raw prompt continued by the "
        "object, taught by the weights as composed), drawn with its chat form by lora.memory_anchor_batch: a "
        "consolidated fact is trained in both forms, and its edit is dissolved or pruned. Night 10 of the 500-fact "
        "run from its night-9 folder, with lora.memory_anchor_batch 8: chat 0.924 against 0.894, raw 0.936 against "
        "0.936, drift +2.17 % against +1.96 %, the sleep 1.11x as long (docs/results.md).")
    memory_anchor_batch: int = Field(
        8, ge=0, description="Memory anchors (lora.memory_anchors, in both forms with lora.memory_anchor_raw) drawn "
        "apart each step, beside lora.anchor_batch, as a KL term of their own weighted lora.anchor_weight per position "
        "like the pool's (0 = they share the pool's draw, where they had about a tenth of the term). Night 10 of the "
        "500-fact run with 4 (chat form only) against the pool's draw: old facts' chat answers lost 27 against 49, "
        "chat 0.868 against 0.836; with 8 in both forms against 4 in the chat form: chat 0.924 against 0.894; 4 in "
        "both forms (half as many chat anchors a step) lost chat, 0.870 (docs/results.md).")
    checkpointing: bool = Field(
        False, description="Gradient checkpointing while training: blocks recompute their activations in the backward "
        "pass instead of keeping them. Off: in micro-batches of 2 the kept activations are small (bundled model, 25 "
        "facts, 2 cores: 4.4-5.0 s a step at 1.37 GB peak RSS off, 6.7-7.7 s at 1.27 GB on, the same adapter, "
        "benchmarks/lora_speed.py; the night 1.25x faster). SWS, the reinforcing nap and forgetting use it; REM has "
        "rem.checkpointing. On where memory is tight (long sequences, big micro-batches).")
    micro_batch: int = Field(
        2, ge=0, description="Examples per forward and backward pass within a training step (their gradients "
        "accumulate to the step's batch, the same update): fewer hold fewer activations and target logits "
        "at the peak, and pad less (bundled model, 2 cores, a batch of 8: 0.19 GB over the baseline and "
        "35 s a step whole, 0.10 GB and 25 s in parts of 2). 0 = the whole batch at once. Torch backend.")
    shared_opening: bool = Field(
        True, description="Compute the opening a training step's rows share (the chat template's system prompt "
        "and user tag) once per step with its gradient, and let each pass continue from its cached keys and values, "
        "instead of every row recomputing it: the same gradient in another order (models/prefix_cache.py; the "
        "adapter differs by rounding only). Bundled model, 2 cores, 25 facts: 4.13 s a step against 5.91 with 64 "
        "consolidated facts anchored (1.43x), 2.89 against 3.50 without, +0.04 GB (benchmarks/lora_speed.py). Torch "
        "backend, not under gradient checkpointing (its blocks drop a cache).")
    max_tokens: int = Field(
        192, ge=0, description="Longest training sequence: a longer example's prompt (a dreamed conversation) is "
        "cut from the left, keeping its latest turns (0 = no limit).")
    fold_energy: float = Field(
        9.99e-1, gt=0, le=1, description="A full sleep folds every adapter into one consolidated adapter "
        "per module, keeping the smallest rank that holds this share of the sum's squared singular "
        "values (1.0 = exact up to fold_max_rank).")
    fold_max_rank: int = Field(
        256, gt=0, description="Rank budget of the consolidated adapter per module: bounds the home's "
        "bytes and compose time however many nights have been folded into it.")
    routing: Literal["auto", "off", "subject"] = Field(
        "auto", description="How the consolidated adapter is applied. 'off': added into the weights, so it "
        "acts on all text. 'subject' (torch): it acts only on sequences that name a stored subject (the "
        "residual entering the first adapted block, whitened by the model's own text, within route_threshold "
        "of a stored subject's key token; sleepwake/models/routing.py), so other text runs on "
        "base + MEMIT edits and the adapter adds no drift to it (docs/results.md). "
        "'auto': 'subject' on torch, 'off' on MLX (which merges adapters into its weights).")
    route_threshold: float = Field(
        6.0e-1, gt=-1, lt=1, description="Whitened cosine at which a sequence counts as naming a stored "
        "subject (routing 'subject'). Bundled model, 200 stored subjects: the model's own text peaked at "
        "0.45, the reference corpus at 0.41, the stored subjects' chat questions were at 0.84 or above.")
    route_key_margin: float = Field(1.0e-1, ge=0, lt=2, description="A subject's token keys it when the model's "
        "own text stays under route_threshold minus this (else its least reached token: memory/routing.py).")
    protect_energy: float = Field(
        9.0e-1, ge=0, lt=1, description="Null-space constraint of consolidation: each adapted module's "
        "LoRA A is kept orthogonal to the top input directions holding this share of the input energy "
        "on ordinary text (the model's samples and the anchors), so the adapter leaves that text alone "
        "(sleepwake/models/protection.py). 0 turns it off; 0.9 chosen by the locality ablation in docs/results.md.")
