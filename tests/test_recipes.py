"""A training pass's draws and weights (``models.recipes``): which anchors each step holds and how much each
weighs, the same on every backend; the memory anchors drawn apart (``lora.memory_anchor_batch``); the teacher's
forwards in padded runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sleepwake.config import ModelConfig
from sleepwake.models import anchors as anchor_models
from sleepwake.models.anchors import Anchor
from sleepwake.models.lora import anchor_loss
from sleepwake.models.recipes import LoraRecipe, TrainExample, anchor_runs, anchor_shares, batches
from sleepwake.models.torch_backend import TorchBackend

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(**changes) -> LoraRecipe:
    base = dict(rank=4, alpha=8.0, layers=[0], modules=["q_proj"], learning_rate=1.0e-2, epochs=3, batch_size=2,
                max_steps=50, weight_decay=0.0, seed=5, anchor_weight=2.0, anchor_batch=2)
    return LoraRecipe(**{**base, **changes})


def anchor(length: int, held: bool = False, start: int = 1) -> Anchor:
    n = length - start
    return Anchor(list(range(1, length + 1)), start, torch.zeros(n, 2, dtype=torch.long), torch.zeros(n, 2), held)


EXAMPLES = [TrainExample([1, 2], [3]) for _ in range(5)]
POOL = [anchor(20 + i) for i in range(4)]
HELD = [anchor(6 + i, held=True) for i in range(3)]


def test_without_memory_anchor_batch_the_held_anchors_share_the_pool_draw():
    """0 (the setting before it existed): one draw from every anchor, whatever is held, the same steps."""
    plain = [POOL[0], HELD[0], POOL[1], HELD[1]]
    unflagged = [Anchor(a.ids, a.start, a.top_ids, a.top_logp) for a in plain]
    drawn = [[plain.index(a) for a in picks] for _, picks in batches(EXAMPLES, recipe(), plain, 12)]
    again = [[unflagged.index(a) for a in picks] for _, picks in batches(EXAMPLES, recipe(), unflagged, 12)]
    assert drawn == again and all(len(p) == 2 for p in drawn)
    assert {i for p in drawn for i in p} == {0, 1, 2, 3}


def test_memory_anchor_batch_draws_the_held_anchors_apart():
    steps = list(batches(EXAMPLES, recipe(memory_anchor_batch=3), POOL + HELD, 20))
    assert all([a.held for a in picks] == [False, False, True, True, True] for _, picks in steps)
    assert {id(a) for _, picks in steps for a in picks[2:]} == {id(a) for a in HELD}  # all drawn in 20 steps
    only_pool = list(batches(EXAMPLES, recipe(memory_anchor_batch=3), POOL, 5))
    assert all(len(picks) == 2 for _, picks in only_pool)
    assert all(not picks for _, picks in batches(EXAMPLES, recipe(memory_anchor_batch=3, anchor_weight=0.0),
                                                 POOL + HELD, 5))


def test_a_held_group_weighs_as_much_as_the_pool_per_position():
    """Each group's shares sum to anchor_weight: a six-token answer is not a few percent of the term."""
    picks = [POOL[0], HELD[0], POOL[1], HELD[2]]
    apart = anchor_shares(picks, recipe(memory_anchor_batch=2))
    assert apart[0] + apart[2] == pytest.approx(2.0) and apart[1] + apart[3] == pytest.approx(2.0)
    assert apart[1] / apart[3] == pytest.approx(5 / 7)  # within a group, by anchored length
    shared = anchor_shares(picks, recipe())
    assert sum(shared) == pytest.approx(2.0) and shared[1] < 0.2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 150), st.booleans(), st.booleans()), min_size=1, max_size=12),
       st.integers(0, 3), st.integers(16, 200), st.integers(1, 30))
def test_anchor_runs_cover_every_pick_once_in_one_group_each(specs, apart, tokens, opening):
    """Runs hold at most ``tokens`` padded tokens past what the pass reads from a cache (``cached``: the
    step's shared opening, for the anchors it fits), and read it for all their rows or none."""
    picks = [anchor(length, held) for length, held, _ in specs]
    fits = {id(a): flag for a, (_, _, flag) in zip(picks, specs)}
    cached = lambda a: min(opening, len(a.ids) - 1) if fits[id(a)] else 0  # noqa: E731
    rcp = recipe(memory_anchor_batch=apart)
    shares = anchor_shares(picks, rcp)
    runs = list(anchor_runs(picks, rcp, tokens, cached))
    assert sorted(id(a) for run, _ in runs for a in run) == sorted(id(a) for a in picks)
    share_of = {id(a): s for a, s in zip(picks, shares)}
    for run, weight in runs:
        assert len({a.held and apart > 0 for a in run}) == 1
        assert len({cached(a) > 0 for a in run}) == 1
        # padded tokens past the cache: the activations
        assert len(run) == 1 or len(run) * max(len(a.ids) - cached(a) for a in run) <= tokens
        assert weight == pytest.approx(sum(share_of[id(a)] for a in run))
        per_position = {round(share_of[id(a)] / (len(a.ids) - a.start), 9) for a in run}
        assert len(per_position) == 1  # so a run's mean KL times its weight is its anchors' weighted sum


def test_runs_give_the_anchor_term_of_one_anchor_per_pass(tiny_model_dir):
    """The torch trainer's backward passes over runs add up to the term over each anchor alone."""
    backend = TorchBackend.load(ModelConfig(source=str(tiny_model_dir)), "model.layers.{}.mlp.down_proj")
    texts = [(backend.encode(t), 1) for t in ("The river ran past the mill", "A short walk", "Evening came")]
    taught = anchor_models.teacher(backend, texts, 8)
    with torch.no_grad():
        backend.model.model.layers[0].mlp.down_proj.weight.mul_(1.1)  # the student moves off its teacher
    picks = [taught[0], taught[1], dataclasses.replace(taught[2], held=True)]
    rcp = recipe(memory_anchor_batch=1)
    with torch.no_grad():
        alone = sum(s * anchor_loss(backend.model, [a], backend.tokenizer.pad_token_id, "cpu")
                    for a, s in zip(picks, anchor_shares(picks, rcp)))
        runs = sum(w * anchor_loss(backend.model, run, backend.tokenizer.pad_token_id, "cpu")
                   for run, w in anchor_runs(picks, rcp, tokens=64))
    assert float(alone) > 0 and float(runs) == pytest.approx(float(alone), rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 90), max_size=30), st.integers(1, 300))
def test_length_runs_cover_each_text_once_within_the_padded_tokens(lengths, tokens):
    runs = anchor_models.length_runs(lengths, tokens)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        assert len(run) == 1 or len(run) * max(lengths[i] for i in run) <= tokens


def test_teacher_in_padded_runs_matches_one_forward_per_text(tiny_model_dir):
    """Batched teacher forwards (right-padded, masked) give each text the top-k it gets alone, in input order."""
    backend = TorchBackend.load(ModelConfig(source=str(tiny_model_dir)), "model.layers.{}.mlp.down_proj")
    words = "the river ran past the old mill while evening came over a short walk home".split()
    texts = [(backend.encode(" ".join(words[: 2 + (5 * i) % 13])), 1 + i % 2) for i in range(9)]
    together = anchor_models.teacher(backend, texts, 8, tokens=64)
    alone = anchor_models.teacher(backend, texts, 8, tokens=1)
    assert len(anchor_models.length_runs([len(ids) for ids, _ in texts], 64)) < len(texts)  # really batched
    for a, b, (ids, start) in zip(together, alone, texts):
        assert a.ids == ids and a.start == start and a.top_logp.shape == (len(ids) - start, 8)
        assert torch.allclose(a.top_logp, b.top_logp, atol=1e-5)
        assert torch.equal(a.top_ids, b.top_ids)
