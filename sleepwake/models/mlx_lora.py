"""LoRA training for sleep (SWS, REM, nap reinforce, forget) on the MLX backend, with mlx-lm's
tuner: its ``LoRALinear`` layers and its ``trainer.train`` loop (compiled step, AdamW update).

The contract is the torch backend's (``models.lora.train_lora``): the same examples, batches,
anchors, schedule and clipping, and the trained update handed back as factors (U, V) with
U V^T = scale * B^T A^T (mlx-lm's layer computes x A B * scale, A (in, r), B (r, out)), so the
adapter is stored in the same format and a home moves between runtimes. The LoRA layers are
removed afterwards without fusing: the caller composes the factors into the weights.

What mlx-lm's loop does not offer is added around it, never by copying it: the answer-only,
per-example-weighted loss and the KL anchor are its ``loss`` function, the batches its
``iterate_batches``, gradient clipping an AdamW subclass, and the null-space projection of A
(``models.protection``) runs in its per-step ``training_callback``. Its console table is silenced
(stdout belongs to ``--json``); progress goes to the caller's callback like the torch trainer's.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import torch
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train
from mlx_lm.tuner.utils import remove_lora_layers

from sleepwake.models import recipes
from sleepwake.models.anchors import Anchor
from sleepwake.models.mlx_internals import (decoder, head, log_softmax, module_at, right_pad, run_blocks, to_mlx,
                                             to_torch)


def target_names(net, recipe: recipes.LoraRecipe) -> list[str]:
    """The linear modules a recipe adapts (torch's names: ``model.layers.4.self_attn.q_proj``)."""
    wanted = {str(layer) for layer in recipe.layers}
    names = []
    for name, module in net.named_modules():
        parts = name.split(".")
        if isinstance(module, (nn.Linear, nn.QuantizedLinear)) and parts[-1] in recipe.modules and "layers" in parts:
            if parts[parts.index("layers") + 1] in wanted:
                names.append(name)
    return sorted(names)


class Recorder(nn.Module):
    """Stands in for a linear layer during a forward pass and keeps its input."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, None

    def __call__(self, x):
        self.seen = x
        return self.inner(x)


def input_second_moments(backend, sequences, names: Sequence[str], batch_size: int):
    """Sum over all real tokens of x x^T (float32 sums of float64 batch products, in torch) for the
    input x of each named linear module, and the token count (``torch_moments.input_second_moments``)."""
    net = backend.net
    recorders = {name: Recorder(module_at(net, name)) for name in names}
    sums: dict[str, torch.Tensor] = {}
    count = 0
    net.update_modules(tree_unflatten(list(recorders.items())))
    try:
        for start in range(0, len(sequences), batch_size):
            ids, valid = right_pad(sequences[start : start + batch_size], backend.pad_id)
            hidden_states(net, ids, valid)
            real = torch.from_numpy(np.array(valid).reshape(-1))
            for name, recorder in recorders.items():
                x = to_torch(recorder.seen.reshape(-1, recorder.seen.shape[-1]))[real].double()  # (tokens, in)
                sums[name] = (x.T @ x).float() + sums.get(name, 0.0)
            count += int(real.sum())
    finally:
        net.update_modules(tree_unflatten([(name, r.inner) for name, r in recorders.items()]))
    return sums, count


class ClippedAdamW(optim.AdamW):
    """AdamW on gradients clipped to a global norm (the torch trainer's ``clip_grad_norm_``)."""

    def __init__(self, max_norm: float, **kwargs):
        super().__init__(**kwargs)
        self.max_norm = max_norm

    def apply_gradients(self, gradients: dict, parameters: dict):
        clipped, _ = optim.clip_grad_norm(gradients, self.max_norm)
        return super().apply_gradients(clipped, parameters)


def hidden_states(net, ids: mx.array, valid: mx.array) -> mx.array:
    """Final-norm hidden states (b, t, d) of right-padded rows."""
    h = run_blocks(net, decoder(net).embed_tokens(ids), 0, valid, 0, len(decoder(net).layers))[0]
    return decoder(net).norm(h)


def example_batch(batch: Sequence[recipes.TrainExample], pad_id: int) -> dict[str, mx.array]:
    """Arrays of one batch: ids, valid, and per target token its (row, position predicting it, id)."""
    ids, valid = right_pad([ex.prompt + ex.target for ex in batch], pad_id)
    rows, cols, tokens = [], [], []
    for i, ex in enumerate(batch):
        for j, token in enumerate(ex.target):
            if len(ex.prompt) + j < 1:  # the first token of a prompt-less example has no predictor
                continue
            rows.append(i)
            cols.append(len(ex.prompt) + j - 1)  # position p predicts token p + 1
            tokens.append(token)
    return {"ids": ids, "valid": valid, "rows": mx.array(rows), "cols": mx.array(cols), "tokens": mx.array(tokens),
            "weights": mx.array([ex.weight for ex in batch], dtype=mx.float32)}


def anchor_batch(picks: Sequence[Anchor], shares: Sequence[float], pad_id: int) -> dict[str, mx.array]:
    """Arrays of the step's anchors; each anchored position weighs its anchor's share of the anchor
    term (``recipes.anchor_shares``) over the anchor's anchored length."""
    ids, valid = right_pad([a.ids for a in picks], pad_id)
    lengths = [len(a.ids) - a.start for a in picks]
    rows = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
    cols = np.concatenate([np.arange(a.start - 1, len(a.ids) - 1) for a in picks])
    scale = np.concatenate([np.full(n, share / n) for n, share in zip(lengths, shares)])
    return {"anchor_ids": ids, "anchor_valid": valid, "anchor_rows": mx.array(rows), "anchor_cols": mx.array(cols),
            "top_ids": to_mlx(torch.cat([a.top_ids for a in picks]), mx.int32),
            "top_logp": to_mlx(torch.cat([a.top_logp for a in picks])),
            "anchor_scale": mx.array(scale, dtype=mx.float32)}


def kl_to_teacher(student: mx.array, top_ids: mx.array, top_logp: mx.array) -> mx.array:
    """KL(teacher || student) per position, top-k teacher plus one rest bucket (``anchors.kl_to_teacher``)."""
    q_top = mx.take_along_axis(student, top_ids, axis=-1)  # (n, k)
    p_top = mx.exp(top_logp)
    p_rest = mx.maximum(1.0 - p_top.sum(-1), 1e-6)
    q_rest = mx.log(mx.maximum(1.0 - mx.exp(q_top).sum(-1), 1e-6))
    return (p_top * (top_logp - q_top)).sum(-1) + p_rest * (mx.log(p_rest) - q_rest)  # (n,)


def step_loss(net, batch: dict[str, mx.array]):
    """mlx-lm's ``loss(model, *batch) -> (loss, tokens)``: weighted mean per-example target NLL,
    plus the anchors' KL when the batch carries them."""
    hidden = hidden_states(net, batch["ids"], batch["valid"])[batch["rows"], batch["cols"]]  # (n, d)
    logp = log_softmax(head(net, hidden))  # (n, V)
    nll = -mx.take_along_axis(logp, batch["tokens"][:, None], axis=-1)[:, 0]
    n_rows = batch["weights"].shape[0]
    sums = mx.zeros((n_rows,)).at[batch["rows"]].add(nll)
    counts = mx.maximum(mx.zeros((n_rows,)).at[batch["rows"]].add(mx.ones_like(nll)), 1.0)
    loss = (sums / counts * batch["weights"]).sum() / batch["weights"].sum()
    if "anchor_ids" in batch:
        hidden = hidden_states(net, batch["anchor_ids"], batch["anchor_valid"])[batch["anchor_rows"], batch["anchor_cols"]]
        kl = kl_to_teacher(log_softmax(head(net, hidden)), batch["top_ids"], batch["top_logp"])
        loss = loss + (batch["anchor_scale"] * kl).sum()
    return loss, mx.array(nll.shape[0])


@contextlib.contextmanager
def adapted(net, recipe: recipes.LoraRecipe, names: Sequence[str]):
    """``net`` with mlx-lm LoRA layers on ``names`` (only they train); removed, unfused, afterwards."""
    trainable = bool(tree_flatten(net.trainable_parameters()))
    mx.random.seed(recipe.seed)  # A's uniform init: same data, same adapter
    try:
        net.freeze()
        layers = [(name, LoRALinear.from_base(module_at(net, name), r=recipe.rank,
                                              scale=recipe.alpha / recipe.rank, dropout=0.0)) for name in names]
        net.update_modules(tree_unflatten(layers))
        yield dict(layers)
    finally:
        remove_lora_layers(net)
        if trainable:
            net.unfreeze()
        net.eval()


class Progress(TrainingCallback):
    """Per step: project each protected A back into its subspace, record the loss, report it."""

    def __init__(self, layers: dict, protect: dict[str, torch.Tensor] | None, steps: int,
                 report: Callable[[int, int, float], None] | None):
        self.pairs = [(layers[n], to_mlx(p)) for n, p in (protect or {}).items() if n in layers]
        self.steps, self.report = steps, report
        self.losses: list[float] = []
        self.project()

    def project(self) -> None:
        for layer, basis in self.pairs:  # torch keeps A (r, in) <- A - (A U) U^T; here A is (in, r): A <- A - U (U^T A)
            a = layer.lora_a.astype(mx.float32)
            layer.lora_a = (a - basis @ (basis.T @ a)).astype(layer.lora_a.dtype)
        mx.eval([layer.lora_a for layer, _ in self.pairs])

    def on_train_loss_report(self, info: dict) -> None:
        self.project()
        self.losses.append(float(info["train_loss"]))
        if self.report:
            self.report(info["iteration"], self.steps, self.losses[-1])


def train_lora(backend, examples: Sequence[recipes.TrainExample], recipe: recipes.LoraRecipe,
               anchors: Sequence[Anchor] = (), progress: Callable[[int, int, float], None] | None = None,
               protect: dict[str, torch.Tensor] | None = None) -> recipes.TrainOutcome:
    """Train one LoRA on ``examples`` over the backend's current (composed) weights (see module doc).
    ``recipe.checkpointing`` does not apply: mlx-lm checkpoints a layer's ``__call__``, and
    sleepwake runs MLX blocks through ``mlx_internals.block_forward``."""
    if not examples:
        raise ValueError("no training examples")
    if recipe.max_tokens:
        examples = [recipes.fit(ex, recipe.max_tokens) for ex in examples]
    steps = recipes.plan_steps(len(examples), recipe)
    batches = []
    for batch, picks in recipes.batches(examples, recipe, anchors, steps):
        arrays = example_batch(batch, backend.pad_id)
        if picks:
            arrays.update(anchor_batch(picks, recipes.anchor_shares(picks, recipe), backend.pad_id))
        batches.append((arrays,))
    names = target_names(backend.net, recipe)
    schedule = optim.linear_schedule(recipe.learning_rate, recipe.learning_rate / (steps + 1), steps)
    optimizer = ClippedAdamW(1.0, learning_rate=schedule, weight_decay=recipe.weight_decay, bias_correction=True)
    with adapted(backend.net, recipe, names) as layers, tempfile.TemporaryDirectory() as tmp:
        callback = Progress(layers, protect, steps, progress)
        args = TrainingArgs(batch_size=recipe.batch_size, iters=steps, steps_per_report=1, steps_per_eval=steps + 1,
                            steps_per_save=steps + 1, adapter_file=str(Path(tmp) / "adapters.safetensors"))
        with contextlib.redirect_stdout(io.StringIO()):
            train(backend.net, optimizer, examples, args=args, loss=step_loss,
                  iterate_batches=lambda **_: iter(batches), training_callback=callback)
        factors = {}
        for name, layer in layers.items():
            u = to_torch(layer.scale * layer.lora_b.T.astype(mx.float32))  # (out, r)
            v = to_torch(layer.lora_a.astype(mx.float32))  # (in, r)
            if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
                raise FloatingPointError(f"LoRA factors of {name} are not finite")
            factors[name] = (u.contiguous(), v.contiguous())
    return recipes.TrainOutcome(factors, steps, callback.losses[0], callback.losses[-1])
