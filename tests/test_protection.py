"""Null-space-constrained LoRA (sleepwake/models/protection.py) on the tiny random Llama.

The math: the projection removes the top-energy input directions and keeps the rest. The training: every
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
from sleepwake.models.lora import target_names, train_lora
from sleepwake.models.recipes import LoraRecipe, TrainExample
from sleepwake.storage.home import Home

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


@hsettings(max_examples=25, deadline=None)
@given(st.integers(4, 24), st.floats(0.3, 0.999), st.integers(0, 10_000))
def test_projection_removes_the_top_energy_directions(dim, energy, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * dim, dim, generator=g) * torch.logspace(1, -2, dim)  # (n, d), decaying scales
    moment = x.T @ x / x.shape[0]
    basis = protection.top_subspace(moment, energy)
    values = torch.linalg.eigvalsh(moment.double()).flip(0)
    k = basis.shape[1]
    assert float(values[:k].sum() / values.sum()) >= energy - 1e-6  # holds the energy asked for
    assert k == 1 or float(values[: k - 1].sum() / values.sum()) < energy + 1e-6  # and no more directions
    a = torch.randn(3, dim, generator=g)  # (r, in)
    projected = protection.project(a, basis)
    torch.testing.assert_close(projected @ basis, torch.zeros(3, k), atol=1e-4, rtol=0)  # out of the top subspace
    torch.testing.assert_close(protection.project(projected, basis), projected, atol=1e-4, rtol=0)  # idempotent
    torch.testing.assert_close(projected, a @ (torch.eye(dim) - basis @ basis.T), atol=1e-4, rtol=1e-4)  # A (I - U U^T)
    assert protection.bases({"m": moment}, 0.0) == {}  # energy 0: unconstrained
    assert protection.bases({"m": moment}, energy)["m"].shape == basis.shape


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
    for name, (u, v) in held.factors.items():  # V = A^T: every A row orthogonal to the protected basis
        torch.testing.assert_close(protect[name].T @ v, torch.zeros(protect[name].shape[1], v.shape[1]), atol=1e-4, rtol=0)
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


def test_bases_are_cached_per_energy_and_rebuilt_when_unreadable(tmp_path):
    """The first call builds U_k from the (cached) moments; later calls read the bases alone; another
    energy is another basis; a truncated basis file is rebuilt, never trusted."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g) * torch.logspace(1, -2, 8)
    calls = []

    class Backend:
        def input_second_moments(self, sequences, names, batch_size):
            calls.append(list(names))
            return {n: x.T @ x for n in names}, x.shape[0]

    def build(energy):
        return protection.load_or_build(Backend(), ["a", "b"], lambda: [[1, 2]], tmp_path, "t", energy, 2)

    first = build(0.9)
    assert calls == [["a", "b"]] and set(first) == {"a", "b"}
    again = build(0.9)
    assert calls == [["a", "b"]]  # neither moments nor bases recomputed
    torch.testing.assert_close(again["a"], first["a"])
    other = build(0.5)
    assert calls == [["a", "b"]] and other["a"].shape[1] < first["a"].shape[1]  # from the cached moments
    protection.cache_file(tmp_path, "t", "a", "basis0.9").write_bytes(b"truncated")
    torch.testing.assert_close(build(0.9)["a"], first["a"])
    assert build(0.0) == {}


def test_cached_bases_need_no_base_weights(tmp_path, tiny_settings_overrides, monkeypatch):
    """The first call estimates the moments under the base weights; once the bases are cached a
    pass neither recomposes the weights nor estimates anything."""
    settings = load_settings(None, [*tiny_settings_overrides, "lora.protect_energy=0.9"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    recipe = LoraRecipe(rank=2, alpha=4.0, layers=[1], modules=["q_proj", "down_proj"], learning_rate=1.0e-2,
                        epochs=1, batch_size=1, max_steps=1, weight_decay=0.0, seed=0)
    first = memory.lora_protection(recipe)
    monkeypatch.setattr(memory, "base_weights", lambda: pytest.fail("base weights composed for cached bases"))
    monkeypatch.setattr(memory.backend, "input_second_moments", lambda *a: pytest.fail("moments estimated again"))
    again = memory.lora_protection(recipe)
    assert sorted(again) == sorted(first) and all(torch.equal(again[n], first[n]) for n in first)


def test_input_moments_stop_after_the_deepest_adapted_block(tmp_path, tiny_settings_overrides):
    """The moments' forward ends at the last block holding an adapted module (no LM head logits,
    the pass's largest tensor) and gives the sums of the whole forward; a module outside every
    block (the LM head) means the whole forward runs; modules fed the same tensor share one sum."""
    from sleepwake.models.torch_internals import decoder_layers
    from sleepwake.models.torch_moments import deepest_block, input_second_moments, second_moments

    memory = Memory.open(Home.open(tmp_path / "home"), load_settings(None, tiny_settings_overrides))
    model = memory.backend.model
    names = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.o_proj",
             "model.layers.2.mlp.down_proj"]
    modules = {name: model.get_submodule(name) for name in names}
    assert deepest_block(model, modules.values()) is decoder_layers(model)[2]
    assert deepest_block(model, [*modules.values(), model.get_submodule("lm_head")]) is None
    sequences = [memory.backend.encode(t) for t in ("The capital city is far away", "In the morning we walk home")]
    heads = []
    hook = model.get_submodule("lm_head").register_forward_hook(lambda *_: heads.append(1))
    try:
        sums, count = input_second_moments(memory.backend, sequences, names, 2)
        assert heads == []  # stopped before the LM head
        full, full_count = second_moments(memory.backend, sequences, modules, None, 2, "full forward")
        assert heads == [1]
    finally:
        hook.remove()
    assert count == full_count > 0
    for name in names:  # float32 sums of float64 batch products against the float64 sums
        assert sums[name].dtype == torch.float32
        torch.testing.assert_close(sums[name].double(), full[name], rtol=1.0e-5, atol=1.0e-4)
    q, k, o = (sums[n] for n in names[:3])
    assert q is k and o is not q  # q and k read the same tensor: one sum; o_proj reads another
