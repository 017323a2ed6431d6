"""Memory end to end on the tiny random Llama: inject, recall, forget, restart, corruption, status.

The tiny model is random, so the edit is judged by MEMIT's own objective (the object's log-prob
given the prompt) plus greedy raw recall. Why the recall fact's relation is a template that ENDS
with the subject ("The hometown of {}"): in this random model a delta at the subject's last token
reaches a later position only through 1-2 near-uniform attention layers, and no delta there can
make " Thessaloniki" the argmax after "Aria Nakamura lives in" (an unclamped 300-step Adam search
over the delta at layers 0, 1 and 2 got the object to -6.57 nats against a top token at -6.20).
With the subject last, MEMIT's delta sits on the predicting position and recall is greedy-exact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sleepwake.config import load_settings
from sleepwake.errors import CorruptedStateError, ModelLoadError, NotFoundError, SleepwakeError
from sleepwake.facts import Fact
from sleepwake.sleep.forget import forget
from sleepwake.memory import Memory, load_backend
from sleepwake.models import probes
from sleepwake.status import collect_status
from conftest import shared_cache
from sleepwake.storage.home import Home

RECALL_FACT = Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")
LIVES_FACT = Fact(subject="Bruno Silva", relation="lives in", object="Lisbon")
OTHER_FACT = Fact(subject="Chen Okafor", relation="works as a", object="pilot")


pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


@pytest.fixture(scope="module")
def settings(tiny_settings_overrides):
    return load_settings(None, tiny_settings_overrides)


def object_logprob(memory: Memory, fact: Fact, obj: str | None = None) -> float:
    """Mean log-prob per token of ' ' + object after the fact's prompt (MEMIT's v* objective)."""
    backend = memory.backend
    prompt = backend.encode(fact.prompt())
    target = backend.encode(" " + (obj or fact.object), special=False)
    with torch.no_grad():
        logits = backend.model(torch.tensor([prompt + target])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(target)) / len(target)


def delta_files(home: Home) -> list[Path]:
    return sorted((home.root / "deltas").glob("*.safetensors"))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, settings):
    """A home holding RECALL_FACT and LIVES_FACT (two edits), plus what was measured while filling it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPWAKE_CACHE", str(shared_cache(tmp_path_factory)))
        torch.manual_seed(0)
        home = Home.open(tmp_path_factory.mktemp("seeded") / "home")
        memory = Memory.open(home, settings)
        before = {f.subject: object_logprob(memory, f) for f in (RECALL_FACT, LIVES_FACT)}
        outcomes = memory.inject([RECALL_FACT, LIVES_FACT])
        after = {f.subject: object_logprob(memory, f) for f in (RECALL_FACT, LIVES_FACT)}
        return {"home": home, "memory": memory, "outcomes": outcomes, "before": before, "after": after,
                "digest": memory.weights_digest(), "recall": memory.recall()}


def copy_home(seeded, tmp_path: Path) -> Home:
    target = tmp_path / "home"
    shutil.copytree(seeded["home"].root, target)
    return Home.open(target)


# ---- inject / recall / forget --------------------------------------------------------------------


def test_inject_recall_forget_round_trip(tmp_path, settings):
    torch.manual_seed(0)
    home = Home.open(tmp_path / "home")
    memory = Memory.open(home, settings)
    base_digest = memory.weights_digest()
    assert not probes.raw_recall(memory.backend, [RECALL_FACT], settings.probes)[0][0]  # unknown before
    before = object_logprob(memory, RECALL_FACT)

    [outcome] = memory.inject([RECALL_FACT])
    assert outcome.status == "stored" and outcome.edit_id is not None
    after = object_logprob(memory, RECALL_FACT)
    assert after > before + 0.5, (before, after)  # measured: -6.9 -> -5.7 nats
    [row] = memory.recall()
    assert row["raw"] is True, row["raw_text"]
    assert (row["subject"], row["relation"], row["object"]) == (RECALL_FACT.subject, RECALL_FACT.relation, RECALL_FACT.object)
    edited_digest = memory.weights_digest()
    assert edited_digest != base_digest
    [delta] = delta_files(home)
    assert delta.name == f"edit-{outcome.edit_id:08d}.safetensors"

    removed = forget(memory, RECALL_FACT.subject, RECALL_FACT.relation)
    assert removed["removed_edit"] == outcome.edit_id and removed["reinjected"] == []
    assert memory.weights_digest() == base_digest  # bit-exact, not just close
    assert not delta.exists() and delta_files(home) == []
    assert memory.ledger.list_facts() == [] and memory.ledger.list_edits() == []
    assert memory.recall() == []
    with pytest.raises(NotFoundError):
        forget(memory, RECALL_FACT.subject, RECALL_FACT.relation)


def test_lives_in_edit_raises_the_objects_logprob(seeded):
    """The natural 'lives in' relation: recall is out of reach for this random model (module doc),
    but MEMIT must still move the object's log-prob up (measured: -6.9 -> -6.7; the bound is ~-6.57)."""
    assert [o.status for o in seeded["outcomes"]] == ["stored", "stored"]
    name = LIVES_FACT.subject
    assert seeded["after"][name] > seeded["before"][name] + 0.1, (seeded["before"], seeded["after"])
    assert seeded["after"][RECALL_FACT.subject] > seeded["before"][RECALL_FACT.subject] + 0.5
    by_subject = {r["subject"]: r for r in seeded["recall"]}
    assert by_subject[RECALL_FACT.subject]["raw"] is True  # survives a second edit


def test_restart_is_exact(seeded, settings):
    home = seeded["home"]
    fresh_backend = load_backend(settings)
    assert fresh_backend.model is not seeded["memory"].backend.model
    reopened = Memory.open(home, settings, backend=fresh_backend)
    assert reopened.weights_digest() == seeded["digest"]
    assert reopened.recall() == seeded["recall"]
    reader = Memory.open(home, settings, writable=False)  # a read-only open loads its own model
    assert reader.weights_digest() == seeded["digest"]
    # Not a tautology: the base model digest differs from the composed one.
    assert fresh_backend.weights_digest(reopened.layers) == seeded["digest"]
    reopened.compose(skip=[e.edit_id for e in reopened.edits])
    assert reopened.weights_digest() != seeded["digest"]


def test_reinject_same_object_is_unchanged_and_new_object_replaces(seeded, settings, tmp_path):
    torch.manual_seed(0)
    home = copy_home(seeded, tmp_path)
    memory = Memory.open(home, settings)
    edits_before = memory.ledger.list_edits()
    old_edit = memory.ledger.find_fact(RECALL_FACT.subject, RECALL_FACT.relation).edit_id

    [same] = memory.inject([Fact(subject="aria  nakamura", relation=RECALL_FACT.relation, object="thessaloniki")])
    assert same.status == "unchanged" and same.edit_id == old_edit
    assert memory.ledger.list_edits() == edits_before
    assert memory.weights_digest() == seeded["digest"]

    old_file = home.root / next(e.file for e in edits_before if e.edit_id == old_edit)
    assert old_file.exists()
    old_lp_before = object_logprob(memory, RECALL_FACT, "Thessaloniki")
    [replaced] = memory.inject([Fact(subject=RECALL_FACT.subject, relation=RECALL_FACT.relation, object="Lisbon")])
    assert replaced.status == "replaced" and replaced.edit_id != old_edit
    facts = memory.ledger.list_facts()
    assert len(facts) == 2 and len(memory.ledger.list_edits()) == 2
    row = memory.ledger.find_fact(RECALL_FACT.subject, RECALL_FACT.relation)
    assert row.object == "Lisbon" and row.edit_id == replaced.edit_id
    assert not old_file.exists()
    assert len(delta_files(home)) == 2
    new_lp = object_logprob(memory, RECALL_FACT, "Lisbon")
    old_lp = object_logprob(memory, RECALL_FACT, "Thessaloniki")
    assert new_lp > old_lp, (new_lp, old_lp)
    assert old_lp < old_lp_before  # the old object lost its edit


# ---- corruption, orphans, wrong model ------------------------------------------------------------


def test_corrupted_delta_file_refuses_to_open(seeded, settings, tmp_path):
    home = copy_home(seeded, tmp_path)
    victim = delta_files(home)[0]
    data = bytearray(victim.read_bytes())
    for i in range(len(data) - 16, len(data)):  # inside the tensor data, not the header
        data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    for writable in (True, False):
        with pytest.raises(CorruptedStateError) as info:
            Memory.open(home, settings, writable=writable)
        assert isinstance(info.value, SleepwakeError)
        message = str(info.value)
        assert "\n" not in message and victim.name in message


def test_orphan_factor_file_is_removed_by_a_writer(seeded, settings, tmp_path):
    home = copy_home(seeded, tmp_path)
    orphan = home.root / "deltas" / "edit-00000999.safetensors"
    shutil.copyfile(delta_files(home)[0], orphan)
    reader = Memory.open(home, settings, writable=False)
    assert orphan.exists()  # readers change nothing
    assert reader.weights_digest() == seeded["digest"]
    writer = Memory.open(home, settings, writable=True)
    assert not orphan.exists()
    assert len(delta_files(home)) == 2
    assert writer.weights_digest() == seeded["digest"]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_model_dir):
    """Same architecture and tokenizer as the tiny model, weights drawn with another seed."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("other-llama")
    torch.manual_seed(1)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model_dir)).to(torch.float32).eval()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_edits_refuse_to_load_on_another_model(seeded, tiny_settings_overrides, other_model_dir, tmp_path):
    home = copy_home(seeded, tmp_path)
    other = load_settings(None, [*tiny_settings_overrides, f"model.source={other_model_dir}"])
    with pytest.raises(ModelLoadError, match="another model") as info:
        Memory.open(home, other)
    assert "\n" not in str(info.value)
    # The other model itself loads fine on an empty home (so the refusal is about the edits).
    Memory.open(Home.open(tmp_path / "empty"), other, writable=False)


# ---- status -----------------------------------------------------------------------------------------


STATUS_KEYS = {"facts", "edits", "stages", "perplexity", "perplexity_baseline", "perplexity_drift",
               "drowsiness", "weights_digest", "delta_bytes"}


def test_status_on_empty_and_seeded_home(seeded, settings, tmp_path):
    empty = Memory.open(Home.open(tmp_path / "empty"), settings, writable=False)
    status = collect_status(empty)
    assert STATUS_KEYS <= status.keys()
    assert status["facts"] == 0 and status["edits"] == 0 and status["delta_bytes"] == 0
    assert status["perplexity_drift"] == 0
    assert status["perplexity"] == status["perplexity_baseline"] > 1
    assert status["drowsiness"]["level"] == 0 and status["drowsiness"]["advice"] == "awake"
    json.dumps(status)  # the CLI prints it as JSON

    memory = Memory.open(copy_home(seeded, tmp_path / "copy"), settings, writable=False)
    status = collect_status(memory)
    assert STATUS_KEYS <= status.keys()
    assert status["facts"] == 2 and status["edits"] == 2
    assert status["stages"]["0"] == 2
    assert status["weights_digest"] == seeded["digest"]
    on_disk = sum(p.stat().st_size for p in delta_files(memory.home))
    assert status["delta_bytes"] == on_disk == sum(e.nbytes for e in memory.edits) > 0
    assert status["perplexity_baseline"] == collect_status(empty)["perplexity"]  # base weights
    assert status["perplexity"] != status["perplexity_baseline"]
    assert status["perplexity_drift"] == pytest.approx(status["perplexity"] / status["perplexity_baseline"] - 1, abs=1e-5)
    assert status["drowsiness"]["edit_pressure"] == pytest.approx(2 / settings.health.wake_capacity)
    assert memory.weights_digest() == seeded["digest"]  # measuring the baseline recomposed the edits
    assert "perplexity" not in collect_status(memory, with_perplexity=False)


# ---- null-space protection through the editor --------------------------------------------------


def leak(update, protected: torch.Tensor) -> float:
    """|dW K_p^T| / |dW K^T|: output change on the protected keys relative to the edited keys'."""
    dw = update.dense().double()
    return float((dw @ protected.double().T).norm() / (dw @ update.keys.double().T).norm())


def test_compute_edit_with_protection_leaves_protected_keys_alone(seeded, settings, tmp_path):
    torch.manual_seed(0)
    memory = Memory.open(copy_home(seeded, tmp_path), settings, writable=False)
    edit_a = next(e for e in memory.edits
                  if memory.ledger.facts_of_edit(e.edit_id)[0].subject == RECALL_FACT.subject)
    tensors = memory.factors(edit_a)
    protect = {layer: tensors[f"layer{layer}.keys"] for layer in edit_a.layers}
    assert set(protect) == set(settings.memit.layers)

    digest = memory.weights_digest()
    free = {u.layer: u for u in memory.compute([OTHER_FACT]).updates}
    safe = {u.layer: u for u in memory.compute([OTHER_FACT], protect=protect).updates}
    assert memory.weights_digest() == digest  # computing an edit changes no weight
    # Measured: unconstrained 7e-4 (layer 1) and 7e-2 (layer 2); constrained ~5e-9 (float32 factors).
    leaks_free = {layer: leak(free[layer], keys_a) for layer, keys_a in protect.items()}
    leaks_safe = {layer: leak(safe[layer], keys_a) for layer, keys_a in protect.items()}
    assert min(leaks_free.values()) > 1e-4 and max(leaks_free.values()) > 1e-2, leaks_free
    assert max(leaks_safe.values()) < 1e-6, leaks_safe
    for layer in protect:  # the protected edit still changes the edited keys' output as much
        gain_free = (free[layer].dense() @ free[layer].keys.T).norm()
        gain_safe = (safe[layer].dense() @ safe[layer].keys.T).norm()
        assert gain_safe == pytest.approx(float(gain_free), rel=0.2)


def test_related_subjects_are_protected_by_default(seeded, settings, tmp_path):
    """A new subject sharing a name word (a surname) with a stored one must not overwrite it."""
    memory = Memory.open(copy_home(seeded, tmp_path), settings)
    [edit_a] = [e for e in memory.edits if RECALL_FACT.subject in json.dumps(memory.deltas.metadata(e.file))]
    stored = {layer: memory.factors(edit_a)[f"layer{layer}.keys"] for layer in edit_a.layers}

    family = Fact(subject="Lena Nakamura", relation="works as a", object="pilot")
    related = memory.related_keys([family])
    assert related is not None and set(related) == set(stored)
    assert all(torch.equal(related[layer], stored[layer]) for layer in stored)
    # The same subject is left out on purpose (its facts share the key); strangers give nothing.
    assert memory.related_keys([Fact(subject="Aria Nakamura", relation="works as a", object="pilot")]) is None
    assert memory.related_keys([OTHER_FACT]) is None

    guarded = {u.layer: u for u in memory.compute([family]).updates}
    free = {u.layer: u for u in memory.compute([family], protect={}).updates}
    for layer, keys in stored.items():
        assert leak(guarded[layer], keys) < 1.0e-5
    assert max(leak(free[layer], keys) for layer, keys in stored.items()) > 1.0e-4


class _CharBackend:
    """A backend stand-in whose tokens are characters: enough for the chunking contract."""

    def encode(self, text: str, special: bool = True) -> list[int]:
        assert not special  # the reference is scored without BOS/EOS in the middle
        return [ord(c) for c in text]


def test_text_chunks_join_cut_drop_single_tokens_and_cap():
    from sleepwake.models.backend import text_chunks

    chunks = text_chunks(_CharBackend(), ["abcde", "fg"], chunk_tokens=3, max_chunks=10)  # type: ignore[arg-type]
    assert chunks == [[97, 98, 99], [100, 101, 102]]  # "g" alone has no next token to score
    assert text_chunks(_CharBackend(), ["abcde", "fgh"], 3, 10)[-1] == [103, 104]  # type: ignore[arg-type]
    assert text_chunks(_CharBackend(), ["abcdefgh"], 3, 1) == [[97, 98, 99]]  # type: ignore[arg-type]


def test_factors_side_by_side_sum_exactly_and_keep_each_modules_pairs():
    from sleepwake.memory.weights import side_by_side
    gen = torch.Generator().manual_seed(0)
    parts = {"a": [(torch.randn(6, 2, generator=gen), torch.randn(5, 2, generator=gen)),
                   (torch.randn(6, 3, generator=gen), torch.randn(5, 3, generator=gen))],
             "b": [(torch.randn(4, 1, generator=gen), torch.randn(3, 1, generator=gen))]}
    merged = side_by_side(parts)
    assert sorted(merged) == ["a", "b"] and merged["a"][0].shape == (6, 5) and merged["a"][1].shape == (5, 5)
    for name, pairs in parts.items():
        u, v = merged[name]
        torch.testing.assert_close(u @ v.T, sum(pu @ pv.T for pu, pv in pairs))
