"""v* on the torch backend: gradient checkpointing changes memory, never the result."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from sleepwake.config import ModelConfig, load_settings
from sleepwake.facts import Fact
from sleepwake.models.editor import vstar_rows, vstar_settings
from sleepwake.models.torch_backend import TorchBackend
from sleepwake.models import torch_vstar
from sleepwake.models.torch_internals import decoder_layers
from sleepwake.models.prefix_cache import fresh_cache

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki"),
    Fact(subject="Tomas Ruiz", relation="{} works as a", object="glassblower"),
]


@pytest.fixture
def backend(tiny_model_dir) -> TorchBackend:
    return TorchBackend.load(ModelConfig(source=str(tiny_model_dir)), "model.layers.{}.mlp.down_proj")


def test_checkpointed_vstar_equals_plain_vstar(backend, tiny_settings_overrides, monkeypatch):
    """Layer 1 of 4 leaves two blocks above the edit to checkpoint; prefix contexts make the
    suffix attend to the cached prefix, the part a recompute could get wrong."""
    settings = vstar_settings(load_settings(None, [*tiny_settings_overrides, "memit.v_steps=8"]).memit)
    rows = vstar_rows(backend, FACTS, ["", "The city. ", "Some words here. "])
    calls = []
    monkeypatch.setattr(torch_vstar, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    plain, _, plain_stats = backend.optimize_target(rows, 2, 1, dataclasses.replace(settings, checkpointing=False))
    assert not calls
    checked, _, checked_stats = backend.optimize_target(rows, 2, 1, dataclasses.replace(settings, checkpointing=True))
    assert len(calls) >= 2 * checked_stats["steps"]  # both blocks above layer 1, at every step
    assert plain.abs().sum() > 0  # the optimisation moved: equality below is not two zeros
    assert torch.allclose(checked, plain, atol=1.0e-5, rtol=1.0e-4)
    assert checked_stats["nll"] == pytest.approx(plain_stats["nll"], abs=1.0e-4)


def test_checkpointing_is_undone_after_vstar(backend, tiny_settings_overrides):
    """Blocks get back exactly the forward they had: none, or a wrapper of their own (accelerate
    puts its device-map hook there)."""
    settings = vstar_settings(load_settings(None, [*tiny_settings_overrides, "memit.v_steps=2"]).memit)
    rows = vstar_rows(backend, FACTS[:1], ["", "The city. "])
    blocks = decoder_layers(backend.model)
    own = blocks[3].forward
    blocks[3].forward = lambda *a, **k: own(*a, **k)
    hooked = blocks[3].forward
    backend.optimize_target(rows, 1, 1, dataclasses.replace(settings, checkpointing=True))
    assert "forward" not in vars(blocks[2]) and vars(blocks[3])["forward"] is hooked


def test_prefix_cache_is_read_not_grown():
    """A checkpointed block runs twice on one cache: the second run must see the prefix alone."""
    keys, values = [torch.zeros(1, 2, 3, 4)], [torch.ones(1, 2, 3, 4)]
    cache = fresh_cache(keys, values)
    new = torch.full((1, 2, 2, 4), 5.0)
    first = cache.update(new, new, 0)
    second = cache.update(new, new, 0)
    assert first[0].shape[-2] == 5 and torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert cache.get_seq_length() == 3
