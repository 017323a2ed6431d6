"""A training step's shared opening (``models/prefix_cache.py``): which prefix, and the exact gradient."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from sleepwake.models.anchors import Anchor
from sleepwake.models.lora import anchor_loss, example_loss, step_opening
from sleepwake.models.prefix_cache import best_opening
from sleepwake.models.recipes import LoraRecipe, TrainExample, micro_batches

pytestmark = pytest.mark.usefixtures("one_thread")

OPENING = [1, 2, 3, 4, 5, 6]


def test_best_opening_saves_the_most_tokens_and_stops_before_scored_positions():
    chat = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9, 9], [1, 2, 3, 4, 8]]
    raw = [[7, 5, 5], [6, 5, 5, 5]]
    assert best_opening(chat + raw, [5, 5, 4, 1, 1]) == [1, 2, 3, 4]  # raw rows do not stop it
    assert best_opening(chat, [5, 5, 3]) == [1, 2, 3]  # 3 rows share 3 tokens: 6 saved, 2 rows x 4: 4
    assert best_opening(chat, [5, 5, 1]) == [1, 2, 3, 4]  # the third row is scored from position 1 on
    assert best_opening([[1, 2], [7, 2]], [1, 1]) == []
    assert best_opening([], []) == []


def _norm_in_float64(self, hidden):
    """LlamaRMSNorm without its float32 cast, so a float64 model rounds only at float64."""
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))


def _step_gradients(model, params, examples, anchors, shared: bool) -> list[torch.Tensor]:
    for p in params:
        p.grad = None
    recipe = LoraRecipe(rank=4, alpha=8.0, layers=[0], modules=["q_proj"], learning_rate=1.0e-3, epochs=1,
                        batch_size=len(examples), max_steps=1, weight_decay=0.0, seed=0, shared_opening=shared)
    opening, batch, picks = step_opening(model, list(examples), list(anchors), recipe, "cpu")
    assert (opening is not None) == shared and (not shared or opening.ids == OPENING)
    for part, share in micro_batches(batch, 2):  # the raw row leads: sorted last when shared, so the parts differ
        (share * example_loss(model, part, 0, "cpu", opening)).backward()
    anchor_loss(model, picks, 0, "cpu", opening).backward()
    if opening:
        opening.backward()
    return [p.grad.clone() for p in params]


def test_the_shared_opening_gives_the_gradient_of_every_row_recomputing_it(monkeypatch):
    """In float64, with the rows sharing the opening in passes of two, a raw row put last and anchors
    scored after the opening: the step's LoRA gradients equal the recomputed ones to rounding."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _norm_in_float64)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config).double(), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)).double()
    params = [p for p in model.parameters() if p.requires_grad]
    examples = [TrainExample([30, 31, 32], [33, 34])] + [TrainExample(OPENING + [10 + i, 11 + i, 12], [20 + i, 21])
                                                         for i in range(4)]
    top = torch.tensor([[5, 6, 7], [8, 9, 10]])
    anchors = [Anchor(OPENING + [40, 41, 42], len(OPENING) + 1, top, torch.full((2, 3), -1.6, dtype=torch.float64)),
               Anchor(OPENING + [43, 44], len(OPENING) + 1, top[:1], torch.full((1, 3), -1.6, dtype=torch.float64))]
    shared = _step_gradients(model, params, examples, anchors, shared=True)
    whole = _step_gradients(model, params, examples, anchors, shared=False)
    worst = max(float((a - b).norm() / b.norm()) for a, b in zip(shared, whole))
    assert worst < 1e-12
