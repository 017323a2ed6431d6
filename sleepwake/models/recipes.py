"""What a LoRA training pass is, apart from any backend: its examples, its recipe, its steps' draws of
examples and anchors and their weights, and what it hands back. The torch (``models.lora``) and MLX
(``models.mlx_lora``) trainers both take their batches from here, so the same seed draws the same steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from sleepwake.models.anchors import Anchor


@dataclass(frozen=True)
class TrainExample:
    """One training sequence: ``prompt`` ids are context, ``target`` ids carry the loss."""

    prompt: list[int]
    target: list[int]
    weight: float = 1.0


@dataclass(frozen=True)
class LoraRecipe:
    """Backend-neutral training settings (built from ``sleepwake.settings.lora.LoraConfig``)."""

    rank: int
    alpha: float
    layers: list[int]
    modules: list[str]
    learning_rate: float
    epochs: int
    batch_size: int
    max_steps: int
    weight_decay: float
    seed: int
    anchor_weight: float = 0.0  # beta of the KL term on the model's own text (0 = off)
    anchor_batch: int = 4
    anchor_tokens: int = 64
    memory_anchor_batch: int = 0  # held anchors drawn apart per step, a term of their own (0 = in the shared draw)
    checkpointing: bool = False  # gradient checkpointing: less memory, about a quarter more compute
    max_tokens: int = 0  # 0 = no limit; else the prompt is cut from the left to fit with its target
    micro_batch: int = 0  # examples per forward/backward (gradients accumulate to the step); 0 = the whole batch
    shared_opening: bool = False  # the rows' common opening computed once a step (torch, not with checkpointing)


@dataclass
class TrainOutcome:
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (U (out, r), V (in, r))
    steps: int
    first_loss: float
    last_loss: float


def fit(example: TrainExample, max_tokens: int) -> TrainExample:
    """Cut the prompt from the left so prompt + target fit in ``max_tokens`` (a long dreamed
    conversation keeps its latest turns: activations grow with the length, attention with its square)."""
    room = max(1, max_tokens - len(example.target))
    if len(example.prompt) <= room:
        return example
    return TrainExample(example.prompt[-room:], example.target, example.weight)


def micro_batches(batch: Sequence[TrainExample], size: int) -> Iterator[tuple[list[TrainExample], float]]:
    """``batch`` in parts of ``size`` examples (0: whole), each with its share of the batch's weight:
    the shares' sum of the parts' weighted means is the batch's weighted mean, so the accumulated
    gradient is the whole batch's while only one part's activations and logits are alive."""
    size = size or len(batch)
    total = sum(ex.weight for ex in batch)
    for start in range(0, len(batch), size):
        part = list(batch[start:start + size])
        yield part, sum(ex.weight for ex in part) / total


def plan_steps(n_examples: int, recipe: LoraRecipe) -> int:
    """Iterations scale with the data (paper 4): ``epochs`` passes, capped at ``max_steps``."""
    return max(1, min(recipe.max_steps, recipe.epochs * math.ceil(n_examples / recipe.batch_size)))


def batches(examples: Sequence[TrainExample], recipe: LoraRecipe, anchors: Sequence[Anchor],
            steps: int) -> Iterator[tuple[list[TrainExample], list[Anchor]]]:
    """Each step's examples (shuffled epochs, seeded) and anchors (drawn with replacement when
    ``recipe.anchor_weight`` > 0): ``anchor_batch`` from the pool and, with ``memory_anchor_batch``,
    that many more from its held anchors apart (else they are in the pool). The same draws on every backend."""
    rng = random.Random(recipe.seed)
    pool, held = split_anchors(anchors, recipe)
    order: list[TrainExample] = []
    for _ in range(steps):
        if len(order) < recipe.batch_size:
            fresh = list(examples)
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: recipe.batch_size], order[recipe.batch_size :]
        picks: list[Anchor] = []
        if anchors and recipe.anchor_weight > 0:
            picks = [pool[rng.randrange(len(pool))] for _ in range(recipe.anchor_batch)] if pool else []
            picks += [held[rng.randrange(len(held))] for _ in range(recipe.memory_anchor_batch)] if held else []
        yield batch, picks


def split_anchors(anchors: Sequence[Anchor], recipe: LoraRecipe) -> tuple[list[Anchor], list[Anchor]]:
    """(pool, held apart) by :func:`anchor_group`: the held anchors are a draw and a term of their own only
    with ``memory_anchor_batch``."""
    return ([a for a in anchors if not anchor_group(a, recipe)], [a for a in anchors if anchor_group(a, recipe)])


def anchor_group(anchor: Anchor, recipe: LoraRecipe) -> bool:
    """True for a held anchor drawn apart (``memory_anchor_batch``), False for the pool's."""
    return anchor.held and recipe.memory_anchor_batch > 0


def anchor_shares(picks: Sequence[Anchor], recipe: LoraRecipe) -> list[float]:
    """Each picked anchor's weight in the step's loss: ``anchor_weight`` times its share of its group's anchored
    positions, so each group's term is ``anchor_weight`` times its mean KL per position. The groups are the pool
    and, with ``memory_anchor_batch``, the held anchors: a held answer is a few tokens against the pool's
    sixty-odd, and in one group its pull would be a few percent of the term."""
    totals = {False: 0, True: 0}
    for anchor in picks:
        totals[anchor_group(anchor, recipe)] += len(anchor.ids) - anchor.start
    return [recipe.anchor_weight * (len(a.ids) - a.start) / totals[anchor_group(a, recipe)] for a in picks]


def anchor_runs(picks: Sequence[Anchor], recipe: LoraRecipe, tokens: int = 128,
                cached: Callable[[Anchor], int] = lambda anchor: 0) -> Iterator[tuple[list[Anchor], float]]:
    """The picks in runs of one group, each with its weight: one forward and backward pass a run. A run holds
    at most ``tokens`` padded tokens (rows times its longest row; one longer anchor runs alone), since the
    pass's activations grow with them: the pool's 64-token anchors run one by one as they always did, and the
    few-token held answers together (runs of 128 anchored positions instead: 1.75 GB peak against 1.34 in
    ``benchmarks/lora_speed.py``, a night's SWS 2.34 GB). ``cached(anchor)``: its leading tokens a pass reads
    from a cache (the step's shared opening), which cost it no activations. In a group the weight per
    position is one, so a run's mean KL times its weight is its anchors' weighted sum."""
    shares = anchor_shares(picks, recipe)
    for held in (False, True):
        run: list[Anchor] = []
        weight, longest = 0.0, 0
        for anchor, share in zip(picks, shares):
            if anchor_group(anchor, recipe) != held:
                continue
            length = len(anchor.ids) - cached(anchor)
            # a run reads the cache for all its rows or none (a pass computes its rows alike)
            if run and ((len(run) + 1) * max(longest, length) > tokens or cached(anchor) != cached(run[-1])):
                yield run, weight
                run, weight, longest = [], 0.0, 0
            run.append(anchor)
            weight, longest = weight + share, max(longest, length)
        if run:
            yield run, weight
