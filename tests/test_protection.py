"""Null-space-constrained LoRA (sleepwake/models/protection.py) on the tiny random Llama.

The math: P annihilates the top-energy input directions and keeps the rest. The training: every
A row stays in P's subspace, so the adapter barely moves what the model computes on the ordinary
text the subspace was estimated from, while an unconstrained adapter of the same recipe does.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from sleepwake.config import load_settings
from sleepwake.memory import Memory
from sleepwake.models import protection
from sleepwake.models.lora import LoraRecipe, TrainExample, target_names, train_lora
from sleepwake.storage.home import Home

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


@hsettings(max_examples=25, deadline=None)
@given(st.integers(4, 24), st.floats(0.3, 0.999), st.integers(0, 10_000))
def test_projector_removes_the_top_energy_directions(dim, energy, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * dim, dim, generator=g) * torch.logspace(1, -2, dim)  # (n, d), decaying scales
    moment = x.T @ x / x.shape[0]
    basis = protection.top_subspace(moment, energy)
    p = protection.projector(moment, energy)
    values = torch.linalg.eigvalsh(moment.double()).flip(0)
    k = basis.shape[1]
    assert float(values[:k].sum() / values.sum()) >= energy - 1e-6  # holds the energy asked for
    assert k == 1 or float(values[: k - 1].sum() / values.sum()) < energy + 1e-6  # and no more directions
    torch.testing.assert_close(p @ p, p, atol=1e-4, rtol=0)  # a projector
    torch.testing.assert_close(p @ basis, torch.zeros_like(basis), atol=1e-4, rtol=0)  # kills the top subspace
    assert protection.projectors({"m": moment}, 0.0) == {}  # energy 0: unconstrained


def test_constrained_adapter_leaves_ordinary_text_alone(tmp_path, tiny_settings_overrides):
    settings = load_settings(None, [*tiny_settings_overrides, "lora.protect_energy=0.99"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    backend = memory.backend
    recipe = LoraRecipe(rank=4, alpha=8.0, layers=[1, 2, 3], modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        learning_rate=2.0e-2, epochs=20, batch_size=2, max_steps=30, weight_decay=0.0, seed=0)
    names = target_names(backend.model, recipe)
    assert len(names) == 12 and all(n.endswith(("q_proj", "v_proj", "up_proj", "down_proj")) for n in names)
    protect = memory.lora_protection(recipe)
    assert sorted(protect) == sorted(names)
    ids = backend.encode("Aria Nakamura lives in", special=False)
    examples = [TrainExample(ids, backend.encode(" Thessaloniki", special=False))]
    free = train_lora(backend, examples, recipe)
    held = train_lora(backend, examples, recipe, protect=protect)
    for name, (u, v) in held.factors.items():  # V = A^T: every A row in P's subspace
        torch.testing.assert_close(protect[name] @ v, v, atol=1e-4, rtol=1e-3)
    ordinary = [a.ids for a in memory.base_anchors()][:8]

    def moved(factors) -> float:
        """Mean |change| of the adapted modules' outputs on the ordinary text, relative to the output."""
        from sleepwake.models.torch_internals import capture_inputs, right_pad

        modules = {n: backend.model.get_submodule(n) for n in factors}
        ids_, mask = right_pad(ordinary, backend.tokenizer.pad_token_id, backend.input_device)
        with torch.no_grad(), capture_inputs(modules) as seen:
            backend.model(input_ids=ids_, attention_mask=mask)
        total = 0.0
        for n, (u, v) in factors.items():
            x = seen[n][mask.bool()].float()
            total += float((x @ v @ u.T).norm() / (x @ modules[n].weight.float().T).norm())
        return total / len(factors)

    assert moved(held.factors) < 0.35 * moved(free.factors)
