"""LoRA training for sleep (SWS, REM, nap reinforce) on the torch backend, with peft.

The trained adapter is never kept as peft modules: each adapted linear layer's update
B A * (alpha / r) is handed back as the factor pair (U, V) with U V^T = B A * alpha / r, the
same shape convention MEMIT edits use, and peft's wrappers are removed without merging. The
caller stores the factors beside the edits and composes them into the weights, so the base
weights stay pristine, a restart recomposes the same bytes, and a rollback is a file restore.

Loss is next-token cross-entropy on the answer tokens only (the prompt is context, not a
target): training on the question text would bend the model's general distribution for no gain.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

from sleepwake.models import torch_internals
from sleepwake.models.anchors import Anchor, kl_to_teacher
from sleepwake.models.prefix_cache import Opening, final_hidden, fitting_first, opening_for
from sleepwake.models.protection import Projection
from sleepwake.models.recipes import (LoraRecipe, TrainExample, TrainOutcome, anchor_runs, batches, fit, micro_batches,
                                      plan_steps)

log = logging.getLogger(__name__)


def collate(batch: Sequence[TrainExample], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 outside the target."""
    rows = [ex.prompt + ex.target for ex in batch]
    input_ids, attention = torch_internals.right_pad(rows, pad_id, device)
    labels = torch.full_like(input_ids, -100)
    for i, ex in enumerate(batch):
        start = len(ex.prompt)
        labels[i, start : start + len(ex.target)] = input_ids[i, start : start + len(ex.target)]
    return input_ids, attention, labels


def example_rows(batch: Sequence[TrainExample]) -> tuple[list[list[int]], list[int]]:
    """Each example's tokens and the first position its loss reads (the prompt's last, predicting the target)."""
    return [ex.prompt + ex.target for ex in batch], [len(ex.prompt) - 1 for ex in batch]


def anchor_rows(batch: Sequence[Anchor]) -> tuple[list[list[int]], list[int]]:
    """Each anchor's tokens and the first position its loss reads."""
    return [a.ids for a in batch], [a.start - 1 for a in batch]


def example_loss(model, batch: Sequence[TrainExample], pad_id: int, device, opening: Opening | None = None) -> torch.Tensor:
    """Mean per-example target NLL, weighted by each example's ``weight``.

    Logits are computed at target positions only: the vocabulary projection over every
    position would cost more than the whole LoRA backward on a small model. With an ``opening``
    (``models.prefix_cache``) the rows' shared first tokens are read from its cache.
    """
    hidden, offset = final_hidden(model.get_decoder(), *example_rows(batch), pad_id, device, opening)
    _, _, labels = collate(batch, pad_id, device)
    # Under a device_map the decoder's output sits on the last layer's device, not the inputs'.
    targets = labels[:, 1:].to(hidden.device)  # position i predicts token i + 1
    rows, cols = (targets != -100).nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols - offset]).float()  # (n_target_tokens, vocab)
    nll = torch.nn.functional.cross_entropy(logits, targets[rows, cols].to(logits.device), reduction="none")
    rows = rows.to(nll.device)
    per_example = torch.zeros(len(batch), device=nll.device).index_add(0, rows, nll)
    counts = torch.zeros(len(batch), device=nll.device).index_add(0, rows, torch.ones_like(nll))
    per_example = per_example / counts.clamp(min=1.0)  # (b,)
    weights = torch.tensor([ex.weight for ex in batch], device=nll.device)
    return (per_example * weights).sum() / weights.sum()


def anchor_loss(model, batch: Sequence[Anchor], pad_id: int, device, opening: Opening | None = None) -> torch.Tensor:
    """Mean KL(teacher || adapted) over the anchored positions of ``batch`` (``models.anchors``).

    The teacher distributions were computed before training (the base model's, for the default
    ``lora.anchor_teacher``), so one forward of the adapted model is all a step adds; logits are
    computed at anchored positions only.
    """
    hidden, offset = final_hidden(model.get_decoder(), *anchor_rows(batch), pad_id, device, opening)
    rows = torch.cat([torch.full((len(a.ids) - a.start,), i, dtype=torch.long) for i, a in enumerate(batch)])
    cols = torch.cat([torch.arange(a.start - 1, len(a.ids) - 1) for a in batch]) - offset
    logits = model.get_output_embeddings()(hidden[rows.to(hidden.device), cols.to(hidden.device)]).float()
    student = logits.log_softmax(-1)  # (n, vocab)
    top_ids = torch.cat([a.top_ids for a in batch]).to(student.device)
    top_logp = torch.cat([a.top_logp for a in batch]).to(student.device)
    return kl_to_teacher(student, top_ids, top_logp).mean()


def step_opening(peft_model, batch: list[TrainExample], picks: list[Anchor], recipe: LoraRecipe,
                 device) -> tuple[Opening | None, list[TrainExample], list[Anchor]]:
    """The opening the step's rows share most, computed once for the step (``lora.shared_opening``; not
    under gradient checkpointing, whose blocks drop a cache), and the rows it fits put first."""
    if not recipe.shared_opening or recipe.checkpointing:
        return None, batch, picks
    (example_ids, example_first), (anchor_ids, anchor_first) = example_rows(batch), anchor_rows(picks)
    opening = opening_for(peft_model.get_decoder(), example_ids + anchor_ids, example_first + anchor_first, device)
    return (opening, fitting_first(opening, batch, lambda ex: example_rows([ex])),
            fitting_first(opening, picks, lambda a: anchor_rows([a])))


@contextmanager
def adapted(model, recipe: LoraRecipe) -> Iterator[torch.nn.Module]:
    """Wrap ``model`` with fresh peft LoRA modules; always unwrap (without merging) afterwards."""
    from peft import LoraConfig, get_peft_model

    alpha: Any = recipe.alpha  # peft's annotation says int; it takes floats
    config = LoraConfig(r=recipe.rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(recipe.modules), layers_to_transform=list(recipe.layers))
    torch.manual_seed(recipe.seed)  # peft's Kaiming init of A: same data, same adapter
    peft_model = get_peft_model(model, config)
    try:
        yield peft_model
    finally:
        peft_model.unload()  # restores the original Linear modules; weights untouched


def lora_factors(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each adapted module's update as (U, V): U = B * scaling (out, r), V = A^T (in, r)."""
    from peft.tuners.lora import LoraLayer

    factors = {}
    module: Any
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            layer: Any = module
            a = layer.lora_A["default"].weight.detach().float().cpu()  # (r, in)
            b = layer.lora_B["default"].weight.detach().float().cpu()  # (out, r)
            factors[name] = ((b * layer.scaling["default"]).contiguous(), a.t().contiguous())
    return factors


def hf_model(peft_model) -> Any:
    """The transformers model inside peft's wrapper."""
    return peft_model.base_model.model


def backward(loss: torch.Tensor, step: int) -> float:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"LoRA loss became {loss.item()} at step {step}")
    loss.backward()
    return loss.item()


def target_names(model, recipe: LoraRecipe) -> list[str]:
    """The linear modules a recipe adapts: ``recipe.modules`` in the decoder layers ``recipe.layers``."""
    wanted = {str(layer) for layer in recipe.layers}
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, torch.nn.Linear) and parts[-1] in recipe.modules and "layers" in parts:
            if parts[parts.index("layers") + 1] in wanted:
                names.append(name)
    return names


def train_lora(backend, examples: Sequence[TrainExample], recipe: LoraRecipe,
               anchors: Sequence[Anchor] = (), progress: Callable[[int, int, float], None] | None = None,
               protect: dict[str, torch.Tensor] | None = None) -> TrainOutcome:
    """Train one LoRA on ``examples`` over the backend's current (composed) weights; with
    ``anchors`` and ``recipe.anchor_weight`` > 0 the loss adds the KL anchor of :func:`anchor_loss`;
    ``protect`` (module name -> protected basis U_k (in, k)) keeps each A orthogonal to U_k."""
    if not examples:
        raise ValueError("no training examples")
    model, pad_id, device = backend.model, backend.tokenizer.pad_token_id, backend.input_device
    if recipe.max_tokens:
        examples = [fit(ex, recipe.max_tokens) for ex in examples]
    steps = plan_steps(len(examples), recipe)
    losses: list[float] = []
    with adapted(model, recipe) as peft_model:
        projection = Projection(peft_model, protect)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        # foreach=False: the fused multi-tensor path failed on multi-GPU setups (paper 4, 4.2).
        optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay, foreach=False)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / (steps + 1))
        peft_model.train()
        if recipe.checkpointing:  # recompute each block's activations in backward instead of keeping them
            hf_model(peft_model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            for step, (batch, picks) in enumerate(batches(examples, recipe, anchors, steps)):
                optimizer.zero_grad(set_to_none=True)
                opening, batch, picks = step_opening(peft_model, batch, picks, recipe, device)
                # Several backward passes into the same gradients (the sum's gradient): only one
                # part's graph is alive at a time, so the activations and target logits held at the
                # peak are a micro-batch's, not the batch's (``lora.micro_batch``).
                loss = 0.0
                for part, share in micro_batches(batch, recipe.micro_batch):
                    loss += backward(share * example_loss(peft_model, part, pad_id, device, opening), step)
                for run, weight in anchor_runs(picks, recipe, cached=lambda a: opening.cached(*anchor_rows([a])) if opening else 0):
                    loss += backward(weight * anchor_loss(peft_model, run, pad_id, device, opening), step)
                if opening:
                    opening.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                projection.apply()
                schedule.step()
                losses.append(loss)
                if progress:
                    progress(step + 1, steps, losses[-1])
        finally:
            peft_model.eval()
            if recipe.checkpointing:
                hf_model(peft_model).gradient_checkpointing_disable()
        factors = lora_factors(peft_model)
    for name, (u, v) in factors.items():
        if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
            raise FloatingPointError(f"LoRA factors of {name} are not finite")
    return TrainOutcome(factors, steps, losses[0], losses[-1])
