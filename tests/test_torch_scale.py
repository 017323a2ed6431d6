"""The torch backend at the papers' scales, exercised as far as this CPU machine allows.

- Multi-GPU (``device_map``): accelerate's dispatch hooks on every block, with an explicit
  per-layer device map (all "cpu" here): MEMIT, probes and composition must give the same
  result through the hooks as without them. The real split runs in the ``gpu`` tests.
- NF4 (bitsandbytes, which runs on the CPU too): every linear layer is 4-bit until sleepwake
  writes it; the written layers become dense with their dequantised weight, the rest stays 4-bit.
- bf16: the base and the edits compose in float32, then one cast on write.
- QLoRA-style training: peft LoRA straight over the 4-bit layers (no kbit preparation).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sleepwake.config import ModelConfig, load_settings
from sleepwake.errors import ModelLoadError
from sleepwake.facts import Fact
from sleepwake.sleep.forget import forget
from sleepwake.memory import Memory
from sleepwake.models import covariance, torch_internals
from sleepwake.models.editor import compute_edit
from sleepwake.models.memit import apply_factors
from sleepwake.models.torch_backend import TorchBackend
from sleepwake.storage.home import Home
from conftest import shared_cache

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")
DOWN = "model.layers.{}.mlp.down_proj"
RECALL_FACT = Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes is not installed (pip install -e '.[nf4]')")


def per_layer_map(layers: int, place) -> dict:
    """An explicit device map, block by block (``place(i)`` -> device of block i), as
    device_map='auto' produces over several GPUs: embedding with block 0, norm and head with the last."""
    placement = {f"model.layers.{i}": place(i) for i in range(layers)}
    placement.update({"model.embed_tokens": place(0), "model.rotary_emb": place(0),
                      "model.norm": place(layers - 1), "lm_head": place(layers - 1)})
    return placement


def dispatched(tiny_model_dir, place=lambda _: "cpu") -> TorchBackend:
    from accelerate import dispatch_model

    backend = TorchBackend.load(ModelConfig(source=str(tiny_model_dir)), DOWN)
    dispatch_model(backend.model, per_layer_map(backend.num_layers, place), force_hooks=True)
    return backend


def edit_both(plain, other, overrides, factory):
    """The same one-fact MEMIT edit on two backends over the same weights (same statistics)."""
    cfg = load_settings(None, overrides).memit
    cache = shared_cache(factory)
    stats = covariance.load_or_estimate(plain, cfg, cache, 0)
    contexts = covariance.load_or_make_contexts(plain, cfg, cache, 0)
    return (compute_edit(plain, [RECALL_FACT], cfg, stats, contexts),
            compute_edit(other, [RECALL_FACT], cfg, stats, contexts))


def test_memit_through_dispatch_hooks_matches_plain(tiny_model_dir, tiny_settings_overrides, tmp_path_factory):
    plain = TorchBackend.load(ModelConfig(source=str(tiny_model_dir)), DOWN)
    hooked = dispatched(tiny_model_dir)
    assert all(hasattr(block, "_hf_hook") for block in torch_internals.decoder_layers(hooked.model))
    want, got = edit_both(plain, hooked, tiny_settings_overrides, tmp_path_factory)
    for a, b in zip(want.updates, got.updates):
        assert torch.allclose(a.dense(), b.dense(), atol=1.0e-6, rtol=1.0e-5)
    assert hooked.perplexity(["Aria Nakamura lives in Oslo. " * 6], 16, 2) == pytest.approx(
        plain.perplexity(["Aria Nakamura lives in Oslo. " * 6], 16, 2), rel=1.0e-6)
    assert hooked.generate(["Aria Nakamura lives in"], 4) == plain.generate(["Aria Nakamura lives in"], 4)


def test_an_offloaded_edited_layer_is_one_clear_error():
    with torch.device("meta"):
        layer = torch.nn.Linear(8, 4)
    with pytest.raises(ModelLoadError, match="offloaded"):
        torch_internals.dense_weight(layer)


def test_bf16_composes_in_float32_and_casts_once(tmp_path, tiny_settings_overrides):
    settings = load_settings(None, [*tiny_settings_overrides, "model.dtype=bfloat16"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    base = memory.weights_digest()
    pristine = memory.backend.pristine_weight(DOWN.format(1))
    assert pristine.dtype == torch.float32 and pristine.device.type == "cpu"
    memory.inject([RECALL_FACT])
    [edit] = memory.edits
    factors = memory.factors(edit)
    want = pristine.clone()
    apply_factors(want, factors["layer1.u"], factors["layer1.v"])
    assert memory.recall()[0]["raw"] is True
    stored = memory.backend.down_proj(1).weight
    assert stored.dtype == torch.bfloat16
    assert torch.equal(stored, want.to(torch.bfloat16))  # float32 sum, one rounding
    forget(memory, RECALL_FACT.subject, RECALL_FACT.relation)
    assert memory.weights_digest() == base


@needs_bnb
def test_nf4_quantises_everything_but_the_layers_sleepwake_writes(tmp_path, tiny_settings_overrides):
    settings = load_settings(None, [*tiny_settings_overrides, "model.quantization=nf4", "model.dtype=bfloat16"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    backend = memory.backend
    base = memory.weights_digest()
    # Opening composed layers 1 and 2: they are dense now (their dequantised weight), all else 4-bit.
    for layer in range(backend.num_layers):
        assert torch_internals.is_quantised(backend.down_proj(layer)) == (layer not in (1, 2))
    assert torch_internals.is_quantised(backend.model.get_submodule("model.layers.1.self_attn.q_proj"))
    assert not torch_internals.is_quantised(backend.model.get_output_embeddings())
    assert backend.get_weight(1).dtype == torch.float32
    assert backend.get_weight(0).shape == (backend.d_model, backend.d_ff)  # a 4-bit one, dequantised
    memory.inject([RECALL_FACT])
    assert memory.weights_digest() != base
    assert memory.recall()[0]["raw"] is True  # the mixed 4-bit/dense model recalls it
    forget(memory, RECALL_FACT.subject, RECALL_FACT.relation)
    assert memory.weights_digest() == base  # byte-exact back to the dequantised base


@needs_bnb
def test_vstar_differentiates_through_4bit_layers(tiny_model_dir, tiny_settings_overrides):
    """v* through 4-bit blocks equals v* through the same blocks dequantised (bitsandbytes' CPU
    repack, which has no backward, measured a 7.5 % different delta before it was turned off)."""
    from sleepwake.models.editor import vstar_rows, vstar_settings

    cfg = ModelConfig(source=str(tiny_model_dir), quantization="nf4", dtype="bfloat16")
    quantised, dense = TorchBackend.load(cfg, DOWN), TorchBackend.load(cfg, DOWN)
    quantised.generate(["a no-grad forward first, as probes do"], 2)
    for name, module in list(dense.model.named_modules()):
        if torch_internals.is_quantised(module):
            torch_internals.dequantise(dense.model, name)
    settings = vstar_settings(load_settings(None, [*tiny_settings_overrides, "memit.v_steps=10"]).memit)
    rows = vstar_rows(quantised, [RECALL_FACT], ["", "The city. "])
    got, _, _ = quantised.optimize_target(rows, 1, 1, settings)
    want, _, _ = dense.optimize_target(rows, 1, 1, settings)
    assert torch.allclose(got, want, atol=1.0e-6, rtol=1.0e-5)


@needs_bnb
def test_lora_trains_over_4bit_layers_without_kbit_preparation(tiny_model_dir):
    from sleepwake.models.recipes import LoraRecipe, TrainExample

    backend = TorchBackend.load(ModelConfig(source=str(tiny_model_dir), quantization="nf4", dtype="bfloat16"), DOWN)
    backend.set_weight(1, backend.pristine_weight(DOWN.format(1)))  # one dense layer beside 4-bit ones
    examples = [TrainExample(backend.encode("Where does Aria live?"), backend.encode(" Oslo", special=False))] * 4
    recipe = LoraRecipe(rank=4, alpha=8.0, layers=[1, 2], modules=["q_proj", "down_proj"], learning_rate=1.0e-2,
                        epochs=3, batch_size=2, max_steps=6, weight_decay=0.0, seed=0)
    outcome = backend.train_lora(examples, recipe)
    assert outcome.last_loss < outcome.first_loss
    assert sorted(outcome.factors) == [f"model.layers.{i}.{m}" for i in (1, 2) for m in ("mlp.down_proj", "self_attn.q_proj")]
    assert torch_internals.is_quantised(backend.model.get_submodule("model.layers.2.self_attn.q_proj"))  # unwrapped


# ---- on GPUs (skipped without CUDA) ------------------------------------------------------------

def gpu_round_trip(tmp_path, overrides, backend=None) -> Memory:
    memory = Memory.open(Home.open(tmp_path / "home"), load_settings(None, overrides), backend=backend)
    base = memory.weights_digest()
    memory.inject([RECALL_FACT])
    assert memory.recall()[0]["raw"] is True
    forget(memory, RECALL_FACT.subject, RECALL_FACT.relation)
    assert memory.weights_digest() == base
    return memory


@pytest.mark.gpu
def test_gpu_blocks_split_over_two_devices(tmp_path, tiny_model_dir, tiny_settings_overrides, tmp_path_factory):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices to split the blocks")
    split = dispatched(tiny_model_dir, lambda i: i % 2)  # blocks alternate between cuda:0 and cuda:1
    assert {split.down_proj(i).weight.device.index for i in range(split.num_layers)} == {0, 1}
    plain = TorchBackend.load(ModelConfig(source=str(tiny_model_dir)), DOWN)
    want, got = edit_both(plain, split, tiny_settings_overrides, tmp_path_factory)
    for a, b in zip(want.updates, got.updates):
        assert ((a.dense() - b.dense()).norm() / a.dense().norm()).item() < 1.0e-3
    gpu_round_trip(tmp_path, tiny_settings_overrides, backend=split)


@pytest.mark.gpu
def test_gpu_device_map_auto_loads_and_edits(tmp_path, tiny_settings_overrides):
    gpu_round_trip(tmp_path, [*tiny_settings_overrides, "model.device_map=auto"])


@pytest.mark.gpu
def test_gpu_bf16(tmp_path, tiny_settings_overrides):
    gpu_round_trip(tmp_path, [*tiny_settings_overrides, "model.device=cuda", "model.dtype=bfloat16"])


@pytest.mark.gpu
@needs_bnb
def test_gpu_nf4(tmp_path, tiny_settings_overrides):
    memory = gpu_round_trip(tmp_path, [*tiny_settings_overrides, "model.device=cuda", "model.quantization=nf4",
                                       "model.dtype=bfloat16"])
    assert torch_internals.is_quantised(memory.backend.down_proj(0))
    assert not torch_internals.is_quantised(memory.backend.down_proj(1))


@pytest.mark.parametrize("preset, layers, memit", [
    ("llama-3.2-3b", 28, list(range(8, 16))), ("mlx-3b-4bit", 28, list(range(8, 16))),
    ("llama-3.1-8b", 32, list(range(12, 20))), ("llama-3.1-70b-nf4", 80, list(range(36, 44))),
])
def test_paper_presets_edit_table_2_layers_and_adapt_8(preset, layers, memit):
    """Paper 4, Table 2: MEMIT layers 8-15 (3B), 12-19 (8B), 36-43 (70B); LoRA on 8 layers, r 16, alpha 32."""
    settings = load_settings(preset)
    assert settings.memit.layers == memit
    assert len(settings.lora.layers) == 8 and max(settings.lora.layers) < layers
    assert (settings.lora.rank, settings.lora.alpha) == (16, 32.0)


@pytest.mark.gpu
def test_gpu_wake_and_full_sleep_in_float32(tmp_path, tiny_settings_overrides):
    """Every stage on one CUDA device: v*'s rows on the device index its host-side fact map (a wake on
    CUDA failed there until an H200 run found it), LoRA, REM, fold, the gates."""
    from sleepwake.sleep import pipeline
    from sleepwake.sleep.session import SleepSession

    memory = gpu_round_trip(tmp_path, [*tiny_settings_overrides, "model.device=cuda"])
    memory.inject([RECALL_FACT, Fact(subject="Odile Brandt", relation="The hometown of {}", object="Kraków")])
    report = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
    assert report.outcome in ("kept", "rolled_back") and not report.summary().get("failures")
    assert memory.backend.down_proj(1).weight.device.type == "cuda"
