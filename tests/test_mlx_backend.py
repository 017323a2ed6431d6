"""The MLX backend against the torch backend on the same weights (the tiny random Llama).

Both backends load the same folder and tokenizer, so every primitive MEMIT uses must agree to
float tolerance: logits, greedy text, perplexity, keys and hidden states, key second moments,
seeded samples, and the MEMIT delta itself. Tolerances are a few times what was measured on
this machine (logits 2.5e-7 abs; keys 2e-8 abs, hidden 5e-7; second moments 2e-7 abs of 1.0;
v* delta 7e-6 rel; per-layer dW 1.1e-5 rel).

The whole module skips where mlx or mlx-lm is not installed (``pip install -e ".[mlx]"``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

if importlib.util.find_spec("mlx") is None or importlib.util.find_spec("mlx_lm") is None:
    pytest.skip("mlx and mlx-lm are not installed (pip install -e '.[mlx]')", allow_module_level=True)

# mlx_blas before mlx itself: it makes an optimised BLAS global first, and with mlx already
# imported it does nothing (then the bundled-model tests below would always skip on Linux).
from sleepwake.models import mlx_blas  # noqa: E402, I001  (after the skip)
import mlx.nn as nn  # noqa: E402

from sleepwake.chat.reply import Replier
from sleepwake.config import ModelConfig, load_settings
from sleepwake.errors import ModelLoadError
from sleepwake.facts import Fact
from sleepwake.sleep.forget import forget
from sleepwake.memory import Memory
from sleepwake.models import anchors, covariance, mlx_internals, protection
from sleepwake.models.recipes import LoraRecipe, TrainExample
from sleepwake.models.editor import compute_edit, vstar_rows, vstar_settings
from sleepwake.models.mlx_backend import MlxBackend
from sleepwake.models.mlx_loading import rope_overrides
from sleepwake.models.torch_backend import TorchBackend
from sleepwake.sleep.audit import audit
from sleepwake.sleep.session import SleepSession
from sleepwake.sleep.sws import sws
from sleepwake.storage.home import Home
from conftest import shared_cache

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")
mlx_blas.set_threads(1)  # like one_thread: two shared cores, tiny matrices
DOWN = "model.layers.{}.mlp.down_proj"
RECALL_FACT = Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")
PROMPTS = ["Aria Nakamura lives in", "The capital city is", "Where does Hugo Silva live? Hugo", "In"]


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    """(torch, mlx) backends over the same tiny model folder."""
    cfg = ModelConfig(source=str(tiny_model_dir))
    return TorchBackend.load(cfg, DOWN), MlxBackend.load(cfg, DOWN)


@pytest.fixture(scope="module")
def memit_settings(tiny_settings_overrides):
    return load_settings(None, tiny_settings_overrides).memit


def test_logits_match_on_a_padded_batch(pair):
    torch_b, mlx_b = pair
    rows = [torch_b.encode(p) for p in PROMPTS]
    ids, valid = mlx_internals.right_pad(rows, mlx_b.pad_id)
    got = mlx_internals.to_torch(mlx_internals.logits_all(mlx_b.net, ids, valid, 0))
    for i, row in enumerate(rows):
        with torch.no_grad():
            want = torch_b.model(torch.tensor([row])).logits[0]
        assert torch.allclose(got[i, : len(row)], want, atol=1.0e-4, rtol=0), (got[i, : len(row)] - want).abs().max()
    batched = [backend.next_token_logits(rows) for backend in pair]  # what the anchors' teacher reads, per backend
    for i, row in enumerate(rows):
        assert torch.allclose(batched[0][i, : len(row)], batched[1][i, : len(row)], atol=1.0e-4, rtol=0)


def test_greedy_generation_and_chat_match(pair):
    torch_b, mlx_b = pair
    batch = [torch_b.encode(p) for p in PROMPTS]  # different lengths: left padding at work
    assert mlx_b.generate_ids(batch, 8) == torch_b.generate_ids(batch, 8)
    assert mlx_b.generate(PROMPTS, 6) == torch_b.generate(PROMPTS, 6)
    assert mlx_b.chat(["Where does Aria live?"], 6) == torch_b.chat(["Where does Aria live?"], 6)
    assert mlx_b.chat_messages_ids([{"role": "user", "content": "hi"}]) == torch_b.chat_messages_ids([{"role": "user", "content": "hi"}])


def test_perplexity_matches(pair):
    torch_b, mlx_b = pair
    texts = ["The quiet river near Paris was opened by the teacher in 1900. " * 4, "Aria Nakamura lives in Oslo."]
    want = torch_b.perplexity(texts, 16, 4)
    assert mlx_b.perplexity(texts, 16, 4) == pytest.approx(want, rel=1.0e-5)


def test_keys_and_hidden_states_match(pair):
    torch_b, mlx_b = pair
    rows = [(torch_b.encode("Aria Nakamura lives in"), 3), (torch_b.encode("The job of Chen Okafor is"), 5),
            (torch_b.encode("In"), 0)]
    for key_layer, hidden_layer in ((1, 2), (2, 1), (3, 3)):
        keys_t, hidden_t = torch_b.layer_states(rows, key_layer, hidden_layer, 2)
        keys_m, hidden_m = mlx_b.layer_states(rows, key_layer, hidden_layer, 2)
        assert keys_m.shape == (3, torch_b.d_ff) and hidden_m.shape == (3, torch_b.d_model)
        assert torch.allclose(keys_m, keys_t, atol=1.0e-5, rtol=0)
        assert torch.allclose(hidden_m, hidden_t, atol=1.0e-5, rtol=0)


def test_key_second_moments_and_samples_match(pair):
    torch_b, mlx_b = pair
    samples_t = torch_b.sample_sequences(512, 24, seed=3, batch_size=16)
    samples_m = mlx_b.sample_sequences(512, 24, seed=3, batch_size=16)
    # Same seed, same sampling step, logits equal to ~1e-7: the draws coincide (all of them
    # here; a draw within 1e-7 of a probability boundary could flip on another platform).
    same = sum(a == b for a, b in zip(samples_t, samples_m)) / len(samples_t)
    assert len(samples_m) == len(samples_t) and same >= 0.9
    sums_t, count_t = torch_b.key_second_moments(samples_t, [1, 2], 8)
    sums_m, count_m = mlx_b.key_second_moments(samples_t, [1, 2], 8)
    assert count_m == count_t
    for layer in (1, 2):
        assert sums_m[layer].dtype == torch.float64
        assert torch.allclose(sums_m[layer], sums_t[layer], atol=1.0e-5 * sums_t[layer].abs().max().item(), rtol=0)


def test_memit_delta_matches(pair, memit_settings, tmp_path_factory):
    """One fact through the shared editor on both backends, with the same statistics."""
    torch_b, mlx_b = pair
    cache = shared_cache(tmp_path_factory)
    stats = covariance.load_or_estimate(torch_b, memit_settings, cache, 0)
    contexts = covariance.load_or_make_contexts(torch_b, memit_settings, cache, 0)
    rows = vstar_rows(torch_b, [RECALL_FACT], contexts)
    delta_t, anchor_t, stats_t = torch_b.optimize_target(rows, 1, 2, vstar_settings(memit_settings))
    delta_m, anchor_m, stats_m = mlx_b.optimize_target(rows, 1, 2, vstar_settings(memit_settings))
    assert stats_m["steps"] == stats_t["steps"]
    assert torch.allclose(anchor_m, anchor_t, atol=1.0e-5, rtol=0)
    assert ((delta_m - delta_t).norm() / delta_t.norm()).item() < 1.0e-3
    edit_t = compute_edit(torch_b, [RECALL_FACT], memit_settings, stats, contexts)
    edit_m = compute_edit(mlx_b, [RECALL_FACT], memit_settings, stats, contexts)
    assert [u.layer for u in edit_m.updates] == [u.layer for u in edit_t.updates] == [1, 2]
    for upd_t, upd_m in zip(edit_t.updates, edit_m.updates):
        dense_t, dense_m = upd_t.dense(), upd_m.dense()
        assert ((dense_m - dense_t).norm() / dense_t.norm()).item() < 1.0e-3
    for layer in (1, 2):  # compute_edit leaves the weights as they were
        assert torch.equal(mlx_b.get_weight(layer), torch_b.get_weight(layer))


def test_checkpointed_vstar_matches_plain_on_mlx(pair, memit_settings):
    """mx.checkpoint changes what the backward keeps, never the delta it finds."""
    _, mlx_b = pair
    rows = vstar_rows(mlx_b, [RECALL_FACT], ["", "The city. "])
    settings = dataclasses.replace(vstar_settings(memit_settings), steps=6)
    plain, _, _ = mlx_b.optimize_target(rows, 1, 1, dataclasses.replace(settings, checkpointing=False))
    checked, _, _ = mlx_b.optimize_target(rows, 1, 1, dataclasses.replace(settings, checkpointing=True))
    assert plain.abs().sum() > 0
    assert torch.allclose(checked, plain, atol=1.0e-5, rtol=1.0e-4)


def test_weights_read_write_and_digest(pair):
    _, mlx_b = pair
    layers, modules = [1, 2], ["model.layers.3.self_attn.q_proj"]
    base = mlx_b.weights_digest(layers, modules)
    weight = mlx_b.get_weight(1)
    assert weight.dtype == torch.float32 and weight.shape == (mlx_b.d_model, mlx_b.d_ff)
    pristine = mlx_b.pristine_weight(DOWN.format(1))
    mlx_b.set_weight(1, weight + 0.01)
    assert mlx_b.weights_digest(layers, modules) != base
    assert torch.allclose(mlx_b.get_weight(1), weight + 0.01)
    assert torch.equal(mlx_b.pristine_weight(DOWN.format(1)), pristine)  # the cache is a copy
    q = mlx_b.module_weight(modules[0])
    mlx_b.set_module_weight(modules[0], q * 2)
    assert mlx_b.weights_digest(layers, modules) != base
    mlx_b.set_weight(1, pristine)
    mlx_b.set_module_weight(modules[0], q)
    assert mlx_b.weights_digest(layers, modules) == base  # byte-exact round trip
    with pytest.raises(ValueError):
        mlx_b.set_module_weight(modules[0], q[:, :3])
    with pytest.raises(ModelLoadError, match="not found"):
        mlx_b.get_weight(99)


def test_quantised_layers_are_dequantised_only_when_written(tiny_model_dir):
    """An MLX 4-bit model (mlx-community style) keeps every layer quantised except those written."""
    import mlx.nn as nn

    backend = MlxBackend.load(ModelConfig(source=str(tiny_model_dir)), DOWN)
    nn.quantize(backend.net, group_size=32, bits=4)
    before = backend.weights_digest([1, 2])
    base = backend.pristine_weight(DOWN.format(1))
    assert isinstance(backend._linear(DOWN.format(1)), nn.QuantizedLinear)
    backend.set_weight(1, base)  # compose with no edits: the dequantised base, now dense
    assert isinstance(backend._linear(DOWN.format(1)), nn.Linear)
    assert isinstance(backend._linear(DOWN.format(2)), nn.QuantizedLinear)
    assert isinstance(backend._linear("model.layers.1.mlp.up_proj"), nn.QuantizedLinear)
    assert backend.weights_digest([1, 2]) == before  # dequantised bytes are what was there
    backend.set_weight(1, base + 0.5)
    assert torch.allclose(backend.get_weight(1), base + 0.5)
    assert backend.generate(["Aria Nakamura lives in"], 3)  # the mixed model still runs


def test_memory_inject_recall_forget_with_backend_mlx(tmp_path, tiny_settings_overrides):
    settings = load_settings(None, [*tiny_settings_overrides, "backend=mlx"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    assert isinstance(memory.backend, MlxBackend)
    base = memory.weights_digest()
    [outcome] = memory.inject([RECALL_FACT])
    assert outcome.status == "stored"
    [row] = memory.recall()
    assert row["raw"] is True, row["raw_text"]
    assert memory.weights_digest() != base
    # Sleep on MLX: SWS trains its LoRA with mlx-lm's tuner.
    run = SleepSession(memory, "full_sleep")
    assert audit(run).raw_recall == 1.0
    consolidated = sws(run)
    assert consolidated.skipped is False and consolidated.train_steps > 0, consolidated
    assert consolidated.train_loss_last < consolidated.train_loss_first
    kept = [a.kind for a in memory.adapters]
    assert kept == (["sws"] * consolidated.rounds if consolidated.accepted else []), kept  # one adapter a round
    # Chat replies go through backend.generate (greedy, not streamed) on MLX.
    assert isinstance(Replier(memory.backend, settings.chat).reply([{"role": "user", "content": "Hi"}]), str)
    done = forget(memory, RECALL_FACT.subject, RECALL_FACT.relation)
    assert done["verified"] and memory.ledger.list_edits() == [], done
    if not memory.adapters:
        assert memory.weights_digest() == base  # forget is exact on MLX too
    reopened = Memory.open(Home.open(tmp_path / "home"), settings)
    assert reopened.weights_digest() == memory.weights_digest()  # weights = base + what the ledger holds


def test_a_home_moves_between_runtimes(tmp_path, tiny_settings_overrides, pair):
    """Same weights, same fingerprint and digest: a torch home opens under MLX with the same
    composed bytes and the same recall (edits are float32 factors, composed in torch on the CPU)."""
    torch_b, mlx_b = pair
    assert mlx_b.fingerprint == torch_b.fingerprint
    assert mlx_b.weights_digest([1, 2]) == torch_b.weights_digest([1, 2])
    home = Home.open(tmp_path / "home")
    made = Memory.open(home, load_settings(None, tiny_settings_overrides))
    made.inject([RECALL_FACT])
    digest, recall = made.weights_digest(), made.recall()
    moved = Memory.open(home, load_settings(None, [*tiny_settings_overrides, "backend=mlx"]))
    assert isinstance(moved.backend, MlxBackend)
    assert moved.weights_digest() == digest
    assert moved.recall() == recall


def lora_setup(backend_pair):
    """Examples the tiny model cannot answer yet, anchors from the unedited model, and a recipe."""
    torch_b, _ = backend_pair
    pairs = [("Aria Nakamura lives in", " Thessaloniki"), ("The job of Chen Okafor is", " pilot"),
             ("Bruno Silva was born in", " Lisbon")]
    examples = [TrainExample(torch_b.encode(p), torch_b.encode(t, special=False), weight=w)
                for (p, t), w in zip(pairs, (1.0, 1.0, 0.5))]
    texts = [(torch_b.encode(t), 2) for t in ("The capital city is far away", "In the morning we walk")]
    recipe = LoraRecipe(rank=4, alpha=8.0, layers=[0, 1], modules=["q_proj", "v_proj", "down_proj"],
                        learning_rate=1.0e-2, epochs=20, batch_size=2, max_steps=20, weight_decay=0.0, seed=3,
                        anchor_weight=0.5, anchor_batch=2)
    return examples, anchors.teacher(torch_b, texts, 8), recipe


def target_nll(backend, examples, factors) -> float:
    """Mean target NLL with ``factors`` added to the backend's weights (restored afterwards)."""
    before = {name: backend.module_weight(name) for name in factors}
    try:
        for name, (u, v) in factors.items():
            backend.set_module_weight(name, before[name] + u @ v.T)
        total = 0.0
        for ex in examples:
            logp = backend.next_token_logits([ex.prompt + ex.target])[0].log_softmax(-1)
            total -= sum(float(logp[len(ex.prompt) - 1 + j, t]) for j, t in enumerate(ex.target)) / len(ex.target)
        return total / len(examples)
    finally:
        for name, weight in before.items():
            backend.set_module_weight(name, weight)


def test_lora_training_matches_torch(pair):
    """mlx-lm's tuner trains the same adapter as peft, within stated tolerances: the same first loss
    (B = 0 on both: same batches, same loss, same anchors) to 1e-3; the same modules and factor
    shapes; and the adapted model's target NLL on each backend's own adapter within 0.25 nats of
    the other's (A starts from a different random draw on each: only the distribution is shared).
    Measured: first loss 6.885926 vs 6.885927, adapted NLL 5.789 (torch) vs 5.782 (MLX), base 6.908."""
    torch_b, mlx_b = pair
    examples, teachers, recipe = lora_setup(pair)
    seen: list[tuple[int, int, float]] = []
    made = {"torch": torch_b.train_lora(examples, recipe, anchors=teachers),
            "mlx": mlx_b.train_lora(examples, recipe, anchors=teachers, progress=lambda *a: seen.append(a))}
    assert [s[:2] for s in seen] == [(i, 20) for i in range(1, 21)]
    assert made["mlx"].first_loss == pytest.approx(made["torch"].first_loss, abs=1.0e-3)
    assert sorted(made["mlx"].factors) == sorted(made["torch"].factors) == sorted(mlx_b.lora_targets(recipe))
    for name, (u, v) in made["torch"].factors.items():
        assert [tuple(t.shape) for t in made["mlx"].factors[name]] == [tuple(u.shape), tuple(v.shape)]
    base = target_nll(torch_b, examples, {})
    adapted = {k: target_nll(torch_b, examples, out.factors) for k, out in made.items()}
    assert adapted["torch"] < base - 0.5 and adapted["mlx"] < base - 0.5, (base, adapted)
    assert adapted["mlx"] == pytest.approx(adapted["torch"], abs=0.25), (base, adapted)
    assert target_nll(mlx_b, examples, made["mlx"].factors) == pytest.approx(adapted["mlx"], abs=1.0e-3)
    assert type(mlx_internals.decoder(mlx_b.net).layers[0].self_attn.q_proj) is nn.Linear  # LoRA layers removed


def test_memory_anchors_drawn_apart_weigh_the_same_on_mlx(pair):
    """``lora.memory_anchor_batch``: the held anchors' own term weighs the same on both backends (first loss
    to 1e-3, with teachers away from the untrained adapter so the anchor term is not zero), and differs from
    the shared draw's."""
    torch_b, mlx_b = pair
    examples, teachers, base_recipe = lora_setup(pair)
    generator = torch.Generator().manual_seed(0)
    moved = [dataclasses.replace(a, top_logp=(a.top_logp + torch.randn(a.top_logp.shape, generator=generator))
                                 .log_softmax(-1)) for a in teachers]
    mixed = [moved[0], dataclasses.replace(moved[1], held=True)]
    apart = dataclasses.replace(base_recipe, memory_anchor_batch=2, max_steps=1)
    first = {name: b.train_lora(examples, apart, anchors=mixed).first_loss
             for name, b in (("torch", torch_b), ("mlx", mlx_b))}
    assert first["mlx"] == pytest.approx(first["torch"], abs=1.0e-3)
    shared = torch_b.train_lora(examples, dataclasses.replace(apart, memory_anchor_batch=0), anchors=mixed).first_loss
    assert abs(shared - first["torch"]) > 1.0e-2, (shared, first)


def test_protected_lora_stays_in_its_subspace_on_mlx(pair):
    """``protect`` keeps every A (V of the factors) orthogonal to the protected basis, as on torch;
    the input statistics it is built from match torch's."""
    torch_b, mlx_b = pair
    examples, _, recipe = lora_setup(pair)
    names = mlx_b.lora_targets(recipe)
    sequences = [torch_b.encode(t) for t in ("The capital city is far away", "In the morning we walk home")]
    sums_t, count_t = torch_b.input_second_moments(sequences, names, 2)
    sums_m, count_m = mlx_b.input_second_moments(sequences, names, 2)
    assert count_m == count_t
    for name in names:
        assert torch.allclose(sums_m[name], sums_t[name], rtol=1.0e-3, atol=1.0e-3)
    protect = protection.bases({n: (sums_m[n] / count_m).float() for n in names}, 0.9)
    out = mlx_b.train_lora(examples, recipe, protect=protect)
    for name, (_, v) in out.factors.items():
        assert torch.allclose(protect[name].T @ v, torch.zeros(protect[name].shape[1], v.shape[1]), atol=1.0e-4), name


def test_mlx_refuses_torch_only_settings(tiny_model_dir, pair):
    for override in ({"quantization": "nf4"}, {"device_map": "auto"}, {"gguf_file": "x.gguf"}):
        with pytest.raises(ModelLoadError) as info:
            MlxBackend.load(ModelConfig(source=str(tiny_model_dir), **override), DOWN)
        assert "\n" not in str(info.value) and "backend=mlx" in str(info.value)
    with pytest.raises(ModelLoadError, match="not found"):
        MlxBackend.load(ModelConfig(source=str(tiny_model_dir / "missing")), DOWN)
    _, mlx_b = pair
    with pytest.raises(ValueError, match="no training examples"):
        mlx_b.train_lora([], None)


def test_rope_parameters_are_translated_for_mlx_lm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
    got = rope_overrides(tmp_path)
    assert got["rope_theta"] == 500000.0 and got["rope_scaling"]["rope_type"] == "llama3"
    (tmp_path / "config.json").write_text(json.dumps({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0e5}}))
    assert rope_overrides(tmp_path) == {"rope_theta": 1.0e5, "rope_scaling": None}
    (tmp_path / "config.json").write_text(json.dumps({"rope_theta": 1.0e4}))
    assert rope_overrides(tmp_path) == {}


BUNDLED_FACTS = [
    {"subject": "Aria Nakamura", "relation": "lives in", "object": "Thessaloniki"},
    {"subject": "Bruno Okafor", "relation": "{}'s favorite food is", "object": "dumplings"},
    {"subject": "Chen Lindqvist", "relation": "works as a", "object": "librarian"},
    {"subject": "Dara Moreau", "relation": "was born in", "object": "Lisbon"},
    {"subject": "Elif Kowalski", "relation": "{}'s favorite color is", "object": "turquoise"},
]


@pytest.mark.slow
@pytest.mark.skipif(not mlx_blas.fast(), reason="MLX on the reference BLAS would take too long (install OpenBLAS)")
def test_bundled_model_injects_and_recalls_five_facts_with_backend_mlx(tmp_path):
    """The issue's bar: ``--set backend=mlx`` stores 5 facts and recalls >= 0.8 of them raw."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in BUNDLED_FACTS) + "\n")
    # The user's cache, as in test_bundled.py: same weights, same fingerprint, so the converted
    # model and the covariance statistics the torch runs cached are reused here.
    env = {k: v for k, v in os.environ.items() if k != "SLEEPWAKE_CACHE"} | {"TOKENIZERS_PARALLELISM": "false"}
    base = [sys.executable, "-m", "sleepwake.cli", "--home", str(tmp_path / "home"), "--set", "backend=mlx"]
    start = time.perf_counter()
    inject = subprocess.run([*base[:3], "inject", *base[3:], "--facts", str(facts), "--json"],
                            capture_output=True, text=True, env=env, timeout=1500)
    assert inject.returncode == 0, inject.stderr[-2000:]
    injected = json.loads(inject.stdout)["injected"]
    recall = subprocess.run([*base[:3], "recall", *base[3:], "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert recall.returncode == 0, recall.stderr[-2000:]
    raw = [r["raw"] for r in json.loads(recall.stdout)["facts"]]
    seconds = [r["seconds"] for r in injected]
    print(f"mlx bundled: raw recall {sum(raw)}/5, {sum(seconds) / 5:.1f} s per fact, {time.perf_counter() - start:.0f} s in all")
    assert [r["status"] for r in injected] == ["stored"] * 5
    assert sum(raw) / len(raw) >= 0.8, json.loads(recall.stdout)["facts"]


@pytest.mark.slow
@pytest.mark.skipif(not mlx_blas.fast(), reason="MLX on the reference BLAS would take too long (install OpenBLAS)")
def test_bundled_model_sleeps_with_backend_mlx(tmp_path):
    """A full sleep on ``backend=mlx`` consolidates the 5 facts into the chat pathway (SWS with
    mlx-lm's tuner, REM, fold, validate) and is kept."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in BUNDLED_FACTS) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "SLEEPWAKE_CACHE"} | {
        "TOKENIZERS_PARALLELISM": "false", "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    home = ["--home", str(tmp_path / "home"), "--set", "backend=mlx"]

    def cli(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "sleepwake.cli", *args, *home, "--json"],
                              capture_output=True, text=True, env=env, timeout=2400)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    cli("inject", "--facts", str(facts))
    report = cli("sleep")
    assert report["outcome"] == "kept" and report["sws_accepted"] is True, report
    assert report["raw_recall_after"] >= 0.8 and report["chat_recall_after"] >= 0.8, report
    assert report["chat_recall_after"] > report["chat_recall_before"], report
    assert report["adapters"] == 1
