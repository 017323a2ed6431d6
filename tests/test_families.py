"""The model families people run, as tiny random models built in-process from each family's
transformers config (no downloads): load, inject, recall, forget exactly, a sleep whose SWS trains
a LoRA on the family's own module names, and a reopen that composes the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sleepwake.config import load_settings
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models import lora
from sleepwake.sleep import consolidate, pipeline
from sleepwake.sleep.forget import forget
from sleepwake.sleep.session import SleepSession
from sleepwake.storage.home import Home

from conftest import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": None}),  # fused qkv_proj and gate_up_proj
}
FACT = Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")


def build_family(name: str, out: Path) -> Path:
    import transformers

    config_name, model_name, extra = FAMILIES[name]
    tokenizer = build_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = getattr(transformers, config_name)(vocab_size=len(tokenizer), **SHAPE, **{**ids, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).to(torch.float32).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_loads_remembers_forgets_exactly_sleeps_and_reopens(family, tmp_path, tiny_settings_overrides):
    folder = build_family(family, tmp_path / family)
    settings = load_settings(None, [*tiny_settings_overrides, f"model.source={folder}", "memit.v_steps=60"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    empty = memory.weights_digest()

    [outcome] = memory.inject([FACT])
    assert outcome.status == "stored"
    assert FACT.object in memory.backend.generate([FACT.prompt()], 8)[0], family
    forget(memory, FACT.subject, FACT.relation)
    assert memory.weights_digest() == empty  # the edit is gone to the byte

    memory.inject([FACT, Fact(subject="Bruno Silva", relation="The job of {}", object="pilot")])
    report = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
    assert report.outcome in ("kept", "rolled_back")
    trained = memory.ledger.metric_history("train_steps")
    assert trained and trained[0]["value"] > 0, f"{family}: SWS trained no LoRA"
    adapted = {name.split(".")[-1] for name in lora.target_names(memory.backend.model, consolidate.recipe(settings))}
    assert adapted >= {"o_proj", "down_proj"} and (adapted & {"q_proj", "qkv_proj"}), adapted
    digest = memory.weights_digest()
    again = Memory.open(Home.open(tmp_path / "home"), settings)
    assert again.weights_digest() == digest


def test_a_model_without_a_chat_template_gets_a_plain_transcript_and_one_warning(caplog):
    from sleepwake.models.backend import chat_text

    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with caplog.at_level("WARNING"):
        first, second = chat_text(tokenizer, messages), chat_text(tokenizer, messages)
    assert first == second == "System: Be brief.\nUser: Hi\nAssistant:"
    assert sum("no chat template" in r.message for r in caplog.records) == 1


def test_a_gguf_path_that_is_missing_is_one_clear_error(tmp_path):
    from sleepwake.errors import ModelLoadError
    from sleepwake.models.source import resolve_source

    settings = load_settings(None, [f"model.source={tmp_path / 'model.gguf'}"])
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(settings.model, tmp_path)


def test_layer_rules_reproduce_the_hand_written_presets():
    """The 'auto' rules (sleepwake/models/depth.py) against the layer lists written by hand: the
    bundled 30-layer preset (MEMIT and LoRA), and the LoRA spreads of the Llama presets (28, 32 and
    80 layers, sleepwake/configs/llama-*.yaml). MEMIT on GPT-J's 28 layers is 3-8 in its paper; the
    rule gives 4-9 (the bundled model's run)."""
    from sleepwake.config import load_settings as load
    from sleepwake.models import depth

    bundled = load(None, [])
    assert bundled.memit.layers == "auto" and bundled.lora.layers == "auto"  # the default preset says 'auto'
    assert depth.memit_layers(30) == [4, 5, 6, 7, 8, 9]
    assert depth.lora_layers(30) == [4, 7, 10, 13, 16, 19, 22, 25]
    for preset, layers in [("llama-3.2-3b", 28), ("llama-3.1-8b", 32), ("llama-3.1-70b-nf4", 80)]:
        assert depth.lora_layers(layers) == load(preset, []).lora.layers, preset
    for layers in range(1, 129):
        edited, adapted = depth.memit_layers(layers), depth.lora_layers(layers)
        assert edited == list(range(edited[0], edited[-1] + 1)) and 1 <= len(edited) <= 8
        assert 0 <= edited[0] and edited[-1] < layers and adapted == sorted(set(adapted)) and adapted[-1] < layers


@pytest.mark.parametrize("family", ["qwen3", "phi3"])
def test_auto_layers_are_resolved_for_the_loaded_model(family, tmp_path, tiny_settings_overrides):
    folder = build_family(family, tmp_path / family)
    settings = load_settings(None, [*tiny_settings_overrides, f"model.source={folder}", "memit.v_steps=60",
                                    "memit.layers=auto", "lora.layers=auto"])
    memory = Memory.open(Home.open(tmp_path / "home"), settings)
    assert memory.settings.memit.layers == [1] and memory.settings.lora.layers == [1, 2, 3]  # 4 layers deep
    [outcome] = memory.inject([FACT])
    assert outcome.status == "stored" and memory.ledger.list_edits()[0].layers == [1]
    with pytest.raises(RuntimeError, match="auto"):
        settings.memit.edit_layers()  # the unresolved settings never reach a stage by mistake


def test_an_unsupported_family_is_one_clear_error(tmp_path, capsys, tiny_settings_overrides):
    """A GPT-2 (MLP output projection 'transformer.h.N.mlp.c_proj', a Conv1D) loads in transformers
    but cannot be edited: one error line naming what sleepwake needs, no traceback, no home made."""
    import transformers

    from sleepwake.cli import main

    tokenizer = build_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()  # transformers' own progress bar
    overrides = [o for o in tiny_settings_overrides if not o.startswith("model.source=")]
    args = ["inject", "Aria Nakamura", "lives in", "Oslo", "--home", str(tmp_path / "home")]
    for override in [*overrides, f"model.source={tmp_path / 'gpt2'}"]:
        args += ["--set", override]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(gpt2) is not an architecture sleepwake can edit" in err and "Traceback" not in err
    assert not (tmp_path / "home" / "ledger.duckdb").exists()
