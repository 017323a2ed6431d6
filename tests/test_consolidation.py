"""LoRA consolidation (SWS, REM, reinforcing nap) as plain functions on the tiny random Llama.

The tiny model cannot be taught much in a few steps, so these tests check mechanics and
invariants (what is stored, composed, gated, undone), not recall levels; the benchmark on the
bundled model measures those.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch

from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models import probes
from sleepwake.models.anchors import Anchor
from sleepwake.models.lora import collate, example_loss, train_lora
from sleepwake.models.recipes import LoraRecipe, TrainExample, plan_steps
from sleepwake.sleep import curriculum, rem as rem_stage, replay as replay_stage, settled as settled_stage, sws as sws_stage
from sleepwake.sleep.reinforce import reinforce
from sleepwake.sleep.session import SleepSession
from sleepwake.storage import adapters as adapter_rows
from sleepwake.storage.home import Home
from sleepwake.storage.snapshots import SnapshotStore
from conftest import mixed_facts, seed_home

FACTS = mixed_facts()

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, tiny_settings_overrides):
    return seed_home(tmp_path_factory, tiny_settings_overrides, FACTS, "consolidation")


@pytest.fixture
def run(seeded_home, tmp_path, tiny_settings):
    target = tmp_path / "home"
    shutil.copytree(seeded_home, target)
    return SleepSession(Memory.open(Home.open(target), tiny_settings), "full_sleep")


def recipe(**changes) -> LoraRecipe:
    base = dict(rank=4, alpha=8.0, layers=[1, 2, 3], modules=["q_proj", "v_proj", "down_proj"], learning_rate=1.0e-2,
                epochs=10, batch_size=4, max_steps=50, weight_decay=0.0, seed=0)
    return LoraRecipe(**{**base, **changes})


def test_collate_puts_loss_on_target_tokens_only():
    batch = [TrainExample([5, 6, 7], [8, 9]), TrainExample([5], [8, 9, 10])]
    ids, attention, labels = collate(batch, pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 9], [-100, 8, 9, 10, -100]]
    assert attention.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_plan_steps_scales_with_data_and_is_capped():
    assert plan_steps(20, recipe(epochs=3, batch_size=8, max_steps=100)) == 9
    assert plan_steps(1000, recipe(epochs=3, batch_size=8, max_steps=100)) == 100


def test_train_lora_learns_and_leaves_the_model_unwrapped(run):
    backend = run.memory.backend
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    examples = curriculum.fact_examples(backend, FACTS, train_raw=True)
    pad = backend.tokenizer.pad_token_id or 0
    with torch.no_grad():
        loss_before = example_loss(backend.model, examples, pad, "cpu").item()
    outcome = train_lora(backend, examples, recipe())
    # peft's wrappers are gone and no weight moved: the update lives only in the returned factors
    assert not any("lora" in n for n, _ in backend.model.named_parameters())
    assert all(torch.equal(before[n], p) for n, p in backend.model.named_parameters())
    name = "model.layers.2.mlp.down_proj"
    u, v = outcome.factors[name]
    weight = backend.model.get_submodule(name).weight
    assert u.shape == (weight.shape[0], 4) and v.shape == (weight.shape[1], 4)
    assert {n.split(".")[2] for n in outcome.factors} == {"1", "2", "3"}
    # learned: the loss over every example (not one batch's, which depends on the draw) fell
    with torch.no_grad(), run.memory.trial_adapter({module: [uv] for module, uv in outcome.factors.items()}):
        run.memory.compose()
        loss_after = example_loss(backend.model, examples, pad, "cpu").item()
    assert loss_after < loss_before - 0.1  # 6.50 -> 6.17 nats on the tiny random model


def test_raw_examples_teach_the_object_and_no_full_stop(run):
    """A trained "." after the object taught the adapter to end prose sentences early (drift)."""
    backend = run.memory.backend
    fact = FACTS[0]
    example = curriculum.raw_example(backend, fact)
    assert backend.tokenizer.decode(example.target) == f" {fact.object}"
    assert backend.tokenizer.decode(example.prompt) == fact.prompt()


def test_micro_batches_accumulate_the_whole_batch_update(run):
    """``lora.micro_batch``: parts of a step's batch, each weighted by its share, give the step the
    whole batch's gradient (so the same adapter, up to float rounding), with only a part alive."""
    backend = run.memory.backend
    examples = curriculum.fact_examples(backend, FACTS, train_raw=True)[:6]
    examples[1] = TrainExample(examples[1].prompt, examples[1].target, weight=3.0)  # unequal weights
    whole = train_lora(backend, examples, recipe(batch_size=6, max_steps=2, epochs=2))
    parts = train_lora(backend, examples, recipe(batch_size=6, max_steps=2, epochs=2, micro_batch=4))
    assert whole.first_loss == pytest.approx(parts.first_loss, rel=1e-5)
    for name, (u, v) in whole.factors.items():
        assert torch.allclose(u @ v.T, parts.factors[name][0] @ parts.factors[name][1].T, atol=1e-5), name


def test_checkpointing_changes_the_cost_of_a_step_not_the_adapter(run):
    """``lora.checkpointing`` recomputes activations in the backward instead of keeping them: the
    default (off) must train the very adapter the memory-saving setting trains."""
    backend = run.memory.backend
    examples = curriculum.fact_examples(backend, FACTS, train_raw=True)[:6]
    kept = train_lora(backend, examples, recipe(batch_size=4, max_steps=3, micro_batch=2, checkpointing=False))
    recomputed = train_lora(backend, examples, recipe(batch_size=4, max_steps=3, micro_batch=2, checkpointing=True))
    assert kept.last_loss == pytest.approx(recomputed.last_loss, rel=1e-5)
    for name, (u, v) in kept.factors.items():
        assert torch.allclose(u @ v.T, recomputed.factors[name][0] @ recomputed.factors[name][1].T, atol=1e-6), name
    assert not backend.model.is_activation_checkpointing  # switched off again after the pass


def test_anchor_term_keeps_the_adapted_model_closer_to_the_frozen_one_on_ordinary_text(run):
    backend = run.memory.backend
    examples = curriculum.fact_examples(backend, FACTS, train_raw=True)
    from sleepwake.models.anchors import teacher

    text = backend.encode("The weather was mild and the streets were quiet that morning.")
    vocab = backend.model.config.vocab_size  # the whole distribution: the tiny vocabulary allows it
    anchors = teacher(backend, [(text, 1)], k=vocab) * 4  # the frozen model is the teacher
    ids = torch.tensor([text])
    with torch.no_grad():
        frozen = backend.model(input_ids=ids).logits.log_softmax(-1)

    def drift(outcome) -> float:
        """KL(frozen || adapted) on the anchor text, with the adapter composed in, then removed."""
        saved = {name: backend.model.get_submodule(name).weight.detach().clone() for name in outcome.factors}
        with torch.no_grad():
            for name, (u, v) in outcome.factors.items():
                backend.model.get_submodule(name).weight.add_(u @ v.T)
            adapted = backend.model(input_ids=ids).logits.log_softmax(-1)
            for name, weight in saved.items():
                backend.model.get_submodule(name).weight.copy_(weight)
        return float((frozen.exp() * (frozen - adapted)).sum(-1).mean())

    free = drift(train_lora(backend, examples, recipe(learning_rate=3.0e-2)))
    anchored = drift(train_lora(backend, examples, recipe(learning_rate=3.0e-2, anchor_weight=10.0, anchor_batch=2,
                                                          anchor_tokens=12), anchors=anchors))
    assert anchored < 0.5 * free


def test_adapter_is_stored_composed_and_survives_a_restart(run, tiny_settings):
    memory = run.memory
    digest_before = memory.weights_digest()
    outcome = train_lora(memory.backend, curriculum.fact_examples(memory.backend, FACTS, True), recipe())
    adapter_id = memory.store_adapter("sws", run.run_id, outcome.factors)
    assert memory.weights_digest() != digest_before
    name = "model.layers.1.self_attn.q_proj"
    u, v = outcome.factors[name]
    expected = memory.backend.pristine_weight(name) + u @ v.T
    assert torch.allclose(memory.backend.model.get_submodule(name).weight, expected, atol=1e-6)
    digest = memory.weights_digest()
    reopened = Memory.open(memory.home, tiny_settings, backend=memory.backend)  # a restart recomposes from disk
    assert reopened.weights_digest() == digest and reopened.orphans_removed == []
    row = adapter_rows.list_adapters(memory.ledger)[0]
    assert row.adapter_id == adapter_id and row.kind == "sws" and (memory.home.root / row.file).exists()
    adapter_rows.remove_adapters(memory.ledger, [adapter_id])
    reopened.reload()
    assert reopened.weights_digest() == digest_before  # removing the adapter restores the bytes


def test_sws_advances_only_facts_that_pass_and_follows_the_schedule(run, monkeypatch):
    memory = run.memory
    rows = memory.ledger.list_facts()
    passing = {rows[0].fact_id, rows[2].fact_id}
    fake = {r.fact.prompt(): r.fact_id in passing for r in rows}

    def probe(backend, facts, cfg):  # LoRA-alone recall decided by the test, not by the random model
        return [probes.FactProbe(raw=fake[f.prompt()], raw_text="", chat=fake[f.prompt()], chat_text="") for f in facts]

    monkeypatch.setattr(sws_stage.probes, "probe_facts", probe)
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    result = sws_stage.sws(run)
    assert result.accepted and result.advanced == 2
    after = {r.fact_id: r for r in memory.ledger.list_facts()}
    edits = {e.edit_id: e for e in memory.ledger.list_edits()}
    for fact_id, row in after.items():
        assert row.stage == (1 if fact_id in passing else 0)
        assert edits[row.edit_id].scale == (0.5 if fact_id in passing else 1.0)
    # The failing facts got every further round (sws.rounds), each round one adapter until the fold.
    assert result.rounds == memory.settings.sws.rounds
    assert [a.kind for a in adapter_rows.list_adapters(memory.ledger)] == ["sws"] * result.rounds
    assert not SnapshotStore(memory.home.root).open_snapshots()  # the stage closed its snapshot


def test_sws_second_round_trains_the_facts_that_failed_and_rehearses_the_rest(run, monkeypatch):
    memory = run.memory
    run.memory.settings = run.settings.model_copy(update={"sws": run.settings.sws.model_copy(update={"rounds": 3})})
    rows = memory.ledger.list_facts()
    late = rows[1].fact.prompt()  # fails the first gate, passes after the second round
    gates: list[int] = []

    def probe(backend, facts, cfg):
        gates.append(len(facts))
        ok = [len(gates) > 1 or f.prompt() != late for f in facts]
        return [probes.FactProbe(raw=hit, raw_text="", chat=hit, chat_text="") for hit in ok]

    trained: list[list] = []
    real_train = sws_stage.consolidate.train
    monkeypatch.setattr(sws_stage.consolidate, "train", lambda session, examples, rcp, label, facts, kept=(): (
        trained.append(list(facts)) or real_train(session, examples, rcp, label, facts, kept)))
    monkeypatch.setattr(sws_stage.probes, "probe_facts", probe)
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    result = sws_stage.sws(run)
    assert result.accepted and result.rounds == 2 and result.advanced == len(rows)
    assert [len(f) for f in trained] == [len(rows), 1] and trained[1][0].prompt() == late
    assert gates == [len(rows), len(rows)]  # every gated fact gated again; no third round once all pass
    assert [a.kind for a in adapter_rows.list_adapters(memory.ledger)] == ["sws", "sws"]
    assert all(r.stage == 1 for r in memory.ledger.list_facts())


@pytest.mark.parametrize("max_relearned", [0, 1])
def test_sws_second_round_relearns_a_consolidated_fact_the_adapter_lost(run, monkeypatch, max_relearned):
    """A stage-1 fact failing tonight's gate (a later adapter overwrote it) is trained again in round 2
    beside tonight's failing fact, and advances when it passes; sws.max_relearned=0 leaves it waiting."""
    memory = run.memory
    memory.settings.sws.max_relearned = max_relearned
    old, new_fail, _ = memory.ledger.list_facts()
    memory.ledger.set_stage(old.fact_id, 1)  # consolidated on an earlier night
    failing_once = {old.fact.prompt(), new_fail.fact.prompt()}
    gates: list[int] = []

    def probe(backend, facts, cfg):  # both fail the first gate, and pass once a round has trained them
        gates.append(len(facts))
        ok = [len(gates) > 1 and (f.prompt() != old.fact.prompt() or max_relearned) or f.prompt() not in failing_once
              for f in facts]
        return [probes.FactProbe(raw=hit, raw_text="", chat=hit, chat_text="") for hit in ok]

    trained: list[list] = []
    real_train = sws_stage.consolidate.train
    monkeypatch.setattr(sws_stage.consolidate, "train", lambda session, examples, rcp, label, facts, kept=(): (
        trained.append(sorted(f.prompt() for f in facts)) or real_train(session, examples, rcp, label, facts, kept)))
    monkeypatch.setattr(sws_stage.probes, "probe_facts", probe)
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    result = sws_stage.sws(run)
    assert result.accepted and result.rounds == 2 and result.relearned == max_relearned
    assert old.fact.prompt() not in trained[0]  # round 1 trains tonight's (stage 0) facts only
    assert trained[1] == sorted(failing_once if max_relearned else {new_fail.fact.prompt()})
    assert {r.fact_id: r.stage for r in memory.ledger.list_facts()}[old.fact_id] == (2 if max_relearned else 1)


@pytest.mark.parametrize("checked", [0, 1])
def test_sws_relearns_a_stage_3_fact_tonights_adapter_overwrote(run, monkeypatch, checked):
    """A stage-3 fact (edit pruned, the adapters hold it) that lost its chat answer after round 1 is trained
    again in round 2 beside tonight's failing fact and stays at stage 3; sws.settled_checked=0 never gates it."""
    memory = run.memory
    memory.settings.sws.settled_checked = checked
    old, new_fail, _ = memory.ledger.list_facts()
    memory.ledger.set_stage(old.fact_id, 3)
    failing_once = {old.fact.prompt(), new_fail.fact.prompt()}
    trained: list[list] = []
    gates: list[list] = []

    def probe(backend, facts, cfg):  # both fail after round 1 and pass once round 2 has trained
        gates.append(sorted(f.prompt() for f in facts))
        return [probes.FactProbe(raw=True, raw_text="", chat=len(trained) > 1 or f.prompt() not in failing_once,
                                 chat_text="") for f in facts]

    real_train = sws_stage.consolidate.train
    monkeypatch.setattr(sws_stage.consolidate, "train", lambda session, examples, rcp, label, facts, kept=(): (
        trained.append(sorted(f.prompt() for f in facts)) or real_train(session, examples, rcp, label, facts, kept)))
    monkeypatch.setattr(sws_stage.probes, "probe_facts", probe)  # the one probes module: the stage-3 check's too
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    result = sws_stage.sws(run)
    assert result.accepted and result.rounds == 2 and result.relearned == 0
    assert (result.settled_checked, result.settled_lost, result.settled_relearned, result.settled_held) == (checked,) * 4
    assert old.fact.prompt() not in trained[0]  # round 1 trains tonight's (stage 0) facts only
    assert trained[1] == sorted(failing_once if checked else {new_fail.fact.prompt()})
    assert any(old.fact.prompt() in gate for gate in gates) == bool(checked)
    assert {r.fact_id: r.stage for r in memory.ledger.list_facts()}[old.fact_id] == 3


@pytest.mark.parametrize("count", [0, 1])
def test_sws_anchors_consolidated_facts_it_does_not_train(run, monkeypatch, count):
    """lora.memory_anchors: each round's anchor term also holds up to that many consolidated facts (stage >= 1),
    never the round's own; 0 anchors none."""
    memory = run.memory
    memory.settings.lora.memory_anchors = count
    old, *_ = memory.ledger.list_facts()
    memory.ledger.set_stage(old.fact_id, 3)
    seen: list[tuple[list, list]] = []
    real_train = sws_stage.consolidate.train
    monkeypatch.setattr(sws_stage.consolidate, "train", lambda session, examples, rcp, label, facts, kept=(): (
        seen.append((list(facts), list(kept))) or real_train(session, examples, rcp, label, facts, kept)))
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    sws_stage.sws(run)
    assert seen and all(not set(kept) & set(facts) for facts, kept in seen)
    assert seen[0][1] == ([old.fact] if count else [])


def test_memory_anchors_are_taught_by_the_weights_as_composed_and_anchor_the_answer(run):
    """A kept fact's anchor is its chat question followed by its statement, the answer positions anchored, the
    teacher the weights in force (not the base model's, whatever lora.anchor_teacher says)."""
    from sleepwake.models import anchors as anchor_models
    from sleepwake.sleep.consolidate import anchor_set

    memory, fact = run.memory, FACTS[0]
    memory.settings.lora.memory_anchor_raw = False  # the chat form alone first
    plain, held = anchor_set(memory, []), anchor_set(memory, [], [fact])
    assert len(held) == len(plain) + 1
    anchor, example = held[-1], curriculum.rehearsal_example(memory.backend, fact)
    assert anchor.ids == example.prompt + example.target and anchor.start == len(example.prompt)
    now = anchor_models.teacher(memory.backend, [(anchor.ids, anchor.start)], memory.settings.lora.anchor_topk)[0]
    with memory.base_weights():
        base = anchor_models.teacher(memory.backend, [(anchor.ids, anchor.start)], memory.settings.lora.anchor_topk)[0]
    assert torch.allclose(anchor.top_logp, now.top_logp) and not torch.allclose(anchor.top_logp, base.top_logp)

    memory.settings.lora.memory_anchor_raw = True  # and its raw prompt continued by the object, held the same way
    both = anchor_set(memory, [], [fact])
    raw, example = both[-1], curriculum.raw_example(memory.backend, fact)
    assert len(both) == len(plain) + 2 and both[-2].ids == anchor.ids and raw.held
    assert raw.ids == example.prompt + example.target and raw.start == len(example.prompt)
    now = anchor_models.teacher(memory.backend, [(raw.ids, raw.start)], memory.settings.lora.anchor_topk)[0]
    assert torch.allclose(raw.top_logp, now.top_logp)


def test_anchored_facts_are_drawn_anew_each_sleep_and_capped(run):
    memory = run.memory
    for row in memory.ledger.list_facts():
        memory.ledger.set_stage(row.fact_id, 2)
    memory.settings.lora.memory_anchors = 2
    rows = memory.ledger.list_facts()
    picks = []
    for _ in range(6):
        session = SleepSession(memory, "full_sleep")
        memory.ledger.start_run(session.run_id, "full_sleep", None)
        picks.append(tuple(f.key for f in settled_stage.anchored(session, [rows[0].fact])))
        assert picks[-1] == tuple(f.key for f in settled_stage.anchored(session, [rows[0].fact]))
    assert all(len(p) == min(2, len(rows) - 1) and rows[0].fact.key not in p for p in picks)
    assert len(set(picks)) > 1


def test_settled_sample_puts_lost_answers_first_then_unaudited_then_the_oldest(run):
    """The stage-3 facts SWS checks: the last audit's misses first (chat; raw too, as the gate checks it), then
    the never audited, then by age. A raw-only miss is audited every night, so by age alone it came last."""
    ledger = run.memory.ledger
    first, second, third = ledger.list_facts()
    for row in (first, second, third):
        ledger.set_stage(row.fact_id, 3)
    ledger.record_audits([
        {"run_id": "r1", "fact_id": first.fact_id, "ts": datetime(2026, 1, 4), "raw_recall": 0.0, "chat_recall": 1.0,
         "healthy": False},
        {"run_id": "r1", "fact_id": third.fact_id, "ts": datetime(2026, 1, 3), "raw_recall": 1.0, "chat_recall": 0.0,
         "healthy": True}])
    rows = ledger.list_facts()
    run.settings.sws.settled_checked = 3
    assert run.settings.sws.gate_raw
    assert [r.fact_id for r in settled_stage.sample(run, rows)] == [third.fact_id, first.fact_id, second.fact_id]
    run.settings.sws.settled_checked = 1
    assert [r.fact_id for r in settled_stage.sample(run, rows)] == [third.fact_id]
    run.settings.sws.settled_checked, run.settings.sws.gate_raw = 3, False  # a raw miss is no miss to this gate
    assert [r.fact_id for r in settled_stage.sample(run, rows)] == [third.fact_id, second.fact_id, first.fact_id]
    run.settings.sws.rounds = 1  # no further round could relearn them: none checked
    assert settled_stage.sample(run, rows) == []


def test_sws_relearns_the_stage_2_fact_first_when_the_cap_is_short(run, monkeypatch):
    """Two consolidated facts fail tonight's gate and one may be relearned: the stage-2 one (its edit at 0.1
    answers nothing in chat) goes before the stage-1 one (its edit at 0.5), whatever their age; the further
    round trains for sws.round_epochs, round 1 for lora.epochs."""
    memory = run.memory
    memory.settings.sws.max_relearned, memory.settings.sws.round_epochs = 1, 1
    older, newer, _ = memory.ledger.list_facts()
    memory.ledger.set_stage(older.fact_id, 1)
    memory.ledger.set_stage(newer.fact_id, 2)
    lost = {older.fact.prompt(), newer.fact.prompt()}
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=True, raw_text="", chat=f.prompt() not in lost, chat_text="") for f in facts])
    trained: list[list] = []
    epochs: list[int] = []
    real_train = sws_stage.consolidate.train
    monkeypatch.setattr(sws_stage.consolidate, "train", lambda session, examples, rcp, label, facts, kept=(): (
        trained.append(sorted(f.prompt() for f in facts)) or epochs.append(rcp.epochs)
        or real_train(session, examples, rcp, label, facts, kept)))
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    result = sws_stage.sws(run)
    assert result.relearned == 1 and trained[1] == [newer.fact.prompt()]
    assert epochs == [memory.settings.lora.epochs, 1] and memory.settings.lora.epochs != 1


def test_sws_rounds_stop_when_every_fact_passes(run, monkeypatch):
    run.memory.settings = run.settings.model_copy(update={"sws": run.settings.sws.model_copy(update={"rounds": 2})})
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=True, raw_text="", chat=True, chat_text="") for _ in facts])
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    result = sws_stage.sws(run)
    assert result.accepted and result.rounds == 1
    assert [a.kind for a in adapter_rows.list_adapters(run.memory.ledger)] == ["sws"]


def test_sws_settle_reverts_a_fact_that_loses_raw_recall_at_its_new_scale(run, monkeypatch):
    memory = run.memory
    first = memory.ledger.list_facts()[0].fact_id
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=True, raw_text="", chat=True, chat_text="") for _ in facts])
    calls = []

    def raw(run, rows):  # before SWS: all recalled; at the proposed scales (call 2) the first fact is
        calls.append(1)  # lost; once it is back at its old scale (call 3) all are recalled again
        return [len(calls) != 2 or r.fact_id != first for r in rows]

    monkeypatch.setattr(sws_stage, "raw_hits", raw)
    result = sws_stage.sws(run)
    assert result.accepted and result.advanced == 2
    stages = {r.fact_id: r.stage for r in memory.ledger.list_facts()}
    assert stages[first] == 0 and sorted(stages.values()) == [0, 1, 1]


def test_sws_is_rejected_when_the_lora_costs_a_memit_fact_its_raw_recall(run, monkeypatch):
    memory = run.memory
    digest = memory.weights_digest()
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=False, raw_text="", chat=False, chat_text="") for _ in facts])
    calls = []
    monkeypatch.setattr(sws_stage, "raw_hits", lambda run, rows: [not calls.append(1) and len(calls) == 1] * len(rows))
    result = sws_stage.sws(run)
    assert result.accepted is False and "raw recall" in result.reason
    assert memory.weights_digest() == digest and adapter_rows.list_adapters(memory.ledger) == []


def test_sws_repairs_a_fact_the_adapter_disturbed_instead_of_undoing_the_pass(run, monkeypatch):
    """A fact whose raw recall the new adapter costs (its edit unchanged, so settle cannot help) gets
    its edit re-solved inside the pass; the pass is kept. Switched off, the same pass is undone."""
    memory = run.memory
    victim = memory.ledger.list_facts()[0]
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=False, raw_text="", chat=False, chat_text="") for _ in facts])  # nobody advances
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))

    def raw(session, rows):  # the victim is lost until its edit is a new one
        return [r.fact_id != victim.fact_id or r.edit_id != victim.edit_id for r in rows]

    calls = []
    monkeypatch.setattr(sws_stage, "raw_hits", lambda session, rows: raw(session, rows) if calls.append(1) or len(calls) > 1
                        else [True] * len(rows))
    result = sws_stage.sws(run)
    assert result.accepted is True and result.repaired == 1, result.reason
    after = {r.fact_id: r for r in memory.ledger.list_facts()}
    assert after[victim.fact_id].edit_id != victim.edit_id and after[victim.fact_id].stage == victim.stage
    assert adapter_rows.list_adapters(memory.ledger)


@pytest.mark.parametrize("rounds", [1, 2])
def test_sws_repairs_again_what_the_first_repair_disturbed(run, monkeypatch, rounds):
    """A re-solve that costs a neighbour its raw recall: a second repair round mends it and the pass
    is kept; with one round the pass is undone and its result names the lost fact."""
    memory = run.memory
    memory.settings.sws.repair_rounds = rounds
    victim, neighbour = memory.ledger.list_facts()[:2]
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=False, raw_text="", chat=False, chat_text="") for _ in facts])
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))

    def raw(rows):  # the victim is lost until re-solved; that re-solve costs the neighbour
        edits = {r.fact_id: r.edit_id for r in rows}
        victim_new = edits[victim.fact_id] != victim.edit_id
        return [not (r.fact_id == victim.fact_id and not victim_new)
                and not (r.fact_id == neighbour.fact_id and victim_new and r.edit_id == neighbour.edit_id) for r in rows]

    calls = []
    monkeypatch.setattr(sws_stage, "raw_hits", lambda session, rows: raw(rows) if calls.append(1) or len(calls) > 1
                        else [True] * len(rows))
    result = sws_stage.sws(run)
    if rounds == 2:
        assert result.accepted is True and result.repaired == 2 and result.lost_ids == [], result.reason
    else:
        assert result.accepted is False and result.lost_ids == [neighbour.fact_id], result.reason
        assert f"fact ids [{neighbour.fact_id}]" in result.reason


def test_sws_trains_at_most_max_trained_facts_the_longest_waiting_first(run, monkeypatch):
    memory = run.memory
    memory.settings.sws.max_trained = 2
    rows = memory.ledger.list_facts()
    newest = max(rows, key=lambda r: (r.updated_at, r.fact_id))
    trained = []
    real = sws_stage.train_pass
    monkeypatch.setattr(sws_stage, "train_pass", lambda session, examples, off, facts, result, *epochs: (
        trained.append([f.key for f in facts]), real(session, examples, off, facts, result, *epochs))[1])
    result = sws_stage.sws(run)
    assert result.trained == 2 and result.gated == len(rows) == 3
    assert trained[0] and newest.fact.key not in trained[0] and len(trained[0]) == 2
    assert curriculum.waiting_longest(rows, 0) == sorted(rows, key=lambda r: (r.updated_at, r.fact_id))


def test_sws_without_repair_undoes_a_pass_that_disturbed_a_fact(run, monkeypatch):
    memory = run.memory
    memory.settings.sws.repair_disturbed = False
    digest, victim = memory.weights_digest(), memory.ledger.list_facts()[0].fact_id
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=False, raw_text="", chat=False, chat_text="") for _ in facts])
    calls = []
    monkeypatch.setattr(sws_stage, "raw_hits", lambda session, rows: [
        not (calls.append(1) or len(calls) > 1 and r.fact_id == victim) for r in rows])
    result = sws_stage.sws(run)
    assert result.accepted is False and "raw recall" in result.reason and result.repaired == 0
    assert memory.weights_digest() == digest


def test_sws_benchmark_gate_rejects_byte_exactly(run, monkeypatch):
    memory = run.memory
    digest, stages = memory.weights_digest(), [(r.fact_id, r.stage) for r in memory.ledger.list_facts()]
    scores = iter([0.9, 0.5, 0.5, 0.5])  # before; after at scale 1.0, then at each of sws.retry_scales
    monkeypatch.setattr(sws_stage.probes, "benchmark", lambda backend, cfg: (next(scores), []))
    monkeypatch.setattr(sws_stage.locality_stage, "start_locality", lambda session: 0.777)
    result = sws_stage.sws(run)
    assert result.accepted is False and "benchmark" in result.reason
    assert [t["scale"] for t in result.scale_tries] == [1.0, *memory.settings.sws.retry_scales]
    assert {t["failed"] for t in result.scale_tries} == {"benchmark"}
    assert result.locality_start == 0.777  # where its floor started, in the artifact of every pass
    assert {row["fact_id"] for row in result.rows} == {fact_id for fact_id, _ in stages}  # the gate table stays
    assert memory.weights_digest() == digest
    assert [(r.fact_id, r.stage) for r in memory.ledger.list_facts()] == stages
    assert adapter_rows.list_adapters(memory.ledger) == []
    assert any(m["stage"] == "sws" for m in run.history.metrics)  # the rejected pass keeps its figures
    assert memory.ledger.metric_history("benchmark_after")


def test_sws_keeps_tonights_adapters_at_the_first_retry_scale_that_passes(run, monkeypatch):
    """A pass whose adapters move unrelated answers too far is retried smaller before it is undone:
    tonight's adapters become ONE adapter of exactly scale * their sum, every fact is gated again,
    and the pass is kept at the first scale that passes (here the second retry)."""
    memory = run.memory
    memory.settings.sws.retry_scales = [0.7, 0.4]
    monkeypatch.setattr(sws_stage.probes, "benchmark", lambda backend, cfg: (1.0, []))
    sums: list[torch.Tensor] = []
    name = "model.layers.1.self_attn.q_proj"

    def locality(session, before, leak_before=None):  # the test decides, by how far the adapters reach
        adapters = memory.adapters
        total = sum(memory.adapter_factors(a)[f"{name}.u"] @ memory.adapter_factors(a)[f"{name}.v"].T for a in adapters)
        sums.append(total)
        kept = len(sums) == 3  # scale 1.0 and 0.7 reach too far, 0.4 does not
        return {"locality": 0.95 if kept else 0.8, "leak": 0.0}, None if kept else "locality fell to 0.8"

    gates = []
    real_gate = sws_stage.gate_facts
    monkeypatch.setattr(sws_stage, "gate_facts", lambda session, rows: gates.append(len(rows)) or real_gate(session, rows))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", locality)
    result = sws_stage.sws(run)
    assert result.accepted is True and result.adapter_scale == 0.4, result.reason
    assert [t["scale"] for t in result.scale_tries] == [1.0, 0.7, 0.4]
    assert [t["failed"] for t in result.scale_tries] == ["locality", "locality", None]
    assert len(gates) >= 3  # gated again at every scale
    assert torch.allclose(sums[1], 0.7 * sums[0], atol=1e-6) and torch.allclose(sums[2], 0.4 * sums[0], atol=1e-6)
    stored = adapter_rows.list_adapters(memory.ledger)
    assert [a.adapter_id for a in stored] == [result.adapter_id] and stored[0].kind == "sws"
    files = {p.name for p in (memory.home.root / stored[0].file).parent.iterdir() if "adapter" in p.name}
    assert files == {Path(stored[0].file).name}  # the replaced adapters' files are gone


def test_sws_without_retry_scales_undoes_at_once(run, monkeypatch):
    memory = run.memory
    memory.settings.sws.retry_scales = []
    digest = memory.weights_digest()
    monkeypatch.setattr(sws_stage.probes, "benchmark", lambda backend, cfg: (1.0, []))
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure",
                        lambda session, before, leak_before=None: ({"locality": 0.5, "leak": 0.0}, "locality fell to 0.5"))
    result = sws_stage.sws(run)
    assert result.accepted is False and "locality" in result.reason and len(result.scale_tries) == 1
    assert memory.weights_digest() == digest and adapter_rows.list_adapters(memory.ledger) == []


def test_sws_benchmark_judges_the_weights_the_pass_leaves(run, monkeypatch):
    """Not the adapters alone with every edit off (a state no night keeps): the second benchmark
    sees exactly the weights an accepted pass commits."""
    memory = run.memory
    seen = []

    def benchmark(backend, cfg):
        seen.append(memory.weights_digest())
        return 1.0, []

    monkeypatch.setattr(sws_stage.probes, "benchmark", benchmark)
    monkeypatch.setattr(sws_stage.locality_stage, "pass_failure", lambda session, before, leak_before=None: ({}, None))
    before = memory.weights_digest()
    result = sws_stage.sws(run)
    assert result.accepted is True, result.reason
    assert seen == [before, memory.weights_digest()] and seen[1] != before


def test_rem_gate_undoes_to_post_sws(run, monkeypatch):
    monkeypatch.setattr(rem_stage, "sampled_chat_recall", lambda run, k: 0.0)
    with run.ledger._connect(write=True) as con:  # pretend SWS consolidated the facts
        con.execute("UPDATE facts SET stage = 1")
    digest = run.memory.weights_digest()
    result = rem_stage.rem(run)
    assert result.dreams >= 1 and result.accepted is False
    assert run.memory.weights_digest() == digest and adapter_rows.list_adapters(run.ledger) == []


def test_rem_keeps_a_passing_pass(run, monkeypatch):
    monkeypatch.setattr(rem_stage, "sampled_chat_recall", lambda run, k: 1.0)
    settings = run.settings.model_copy(update={"rem": run.settings.rem.model_copy(update={"max_ppl_increase": 100.0})})
    run.memory.settings = settings
    result = rem_stage.rem(run)
    assert result.accepted is True
    assert [a.kind for a in adapter_rows.list_adapters(run.ledger)] == ["rem"]


@pytest.mark.parametrize("rem_checkpointing", [True, False])
def test_rem_trains_under_its_own_checkpointing_setting(run, monkeypatch, rem_checkpointing):
    """REM's dreamed conversations are the longest sequences of a night: ``rem.checkpointing``
    decides for its pass whatever ``lora.checkpointing`` (SWS's) says."""
    from sleepwake.sleep import consolidate

    seen, real = [], consolidate.train
    monkeypatch.setattr(consolidate, "train", lambda session, ex, lora, *a: seen.append(lora) or real(session, ex, lora, *a))
    with run.ledger._connect(write=True) as con:
        con.execute("UPDATE facts SET stage = 1")
    rem = run.settings.rem.model_copy(update={"checkpointing": rem_checkpointing})
    lora = run.settings.lora.model_copy(update={"checkpointing": not rem_checkpointing})
    run.memory.settings = run.settings.model_copy(update={"rem": rem, "lora": lora})
    rem_stage.rem(run)
    assert [r.checkpointing for r in seen] == [rem_checkpointing]


def test_dreams_are_grounded_multi_fact_conversations(run):
    facts = FACTS + [Fact(subject="Aria Nakamura", relation="The job of {}", object="dentist")]
    plans = rem_stage.plan_dreams(facts, 3, (2, 4), seed=0)
    assert plans and all(2 <= len(p) <= 4 for p in plans[:-1])
    assert {f.key for p in plans for f in p} == {f.key for f in facts}
    conversation = rem_stage.dream(run.memory.backend, plans[0], seed=0, max_new_tokens=8)
    replies = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert len(replies) == len(plans[0])
    # the random model rarely states the object itself, so the firewall's statement stands in
    assert all(probes.answer_matches(reply, f.object) for reply, f in zip(replies, plans[0]))


def test_reinforcing_nap_leaves_memit_untouched(run):
    settings = run.settings.model_copy(update={
        "nap": run.settings.nap.model_copy(update={"reinforce": True}),
        "validate_": run.settings.validate_.model_copy(update={"max_ppl_increase": 100.0, "max_recall_drop": 1.0})})
    run.memory.settings = settings
    edits = [(e.edit_id, e.scale) for e in run.ledger.list_edits()]
    result = reinforce(run)
    assert result.accepted is True
    assert [(e.edit_id, e.scale) for e in run.ledger.list_edits()] == edits
    assert [a.kind for a in adapter_rows.list_adapters(run.ledger)] == ["nap"]


def test_replay_prefers_recent_items():
    class Backend:
        tokenizer = type("T", (), {"eos_token": "</s>"})()

        def chat_messages_ids(self, messages):
            return [len(messages[-1]["content"])]

        def encode(self, text, special=True):
            return [len(text)]

    from datetime import datetime, timedelta, timezone
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    turns = [{"user": "old" * 3, "assistant": "a", "ts": now - timedelta(days=30)},
             {"user": "new", "assistant": "b", "ts": now}]
    picks = [curriculum.replay_examples(Backend(), [], turns, 1, 0.5, seed)[0].prompt for seed in range(20)]
    assert picks.count([3]) >= 19  # priority 1 vs 0.5 ** 30


def test_successive_sleeps_replay_other_old_facts(run, monkeypatch):
    """With one fixed seed an unchanged list of old facts was replayed the same every night: each sleep of a
    home draws its own."""
    run.settings.sws.replay_size = 4
    old = [type("Row", (), {"fact": Fact(subject=f"Person {i}", relation="lives in", object=f"Town {i}"),
                            "updated_at": None, "stage": 3})() for i in range(40)]
    monkeypatch.setattr(replay_stage, "conversation_turns", lambda ledger: [])
    monkeypatch.setattr(run.ledger, "list_facts", lambda: old)
    draws = []
    for _ in range(3):
        session = SleepSession(run.memory, "full_sleep")
        run.ledger.start_run(session.run_id, "full_sleep", None)
        draws.append([ex.prompt for ex in replay_stage.replay_examples(session)])
        assert [ex.prompt for ex in replay_stage.replay_examples(session)] == draws[-1]  # a sleep's own draw is fixed
    assert len({tuple(map(tuple, d)) for d in draws}) == 3


def test_adapter_ids_are_never_reused(run):
    first, second = adapter_rows.next_adapter_id(run.ledger), adapter_rows.next_adapter_id(run.ledger)
    assert second == first + 1


@pytest.mark.parametrize("relation, question", [
    ("lives in", "Where does Lena Brandt live?"),
    ("{} works as", "What does Lena Brandt do for a living?"),
    ("{}'s favorite food is", "What is Lena Brandt's favorite food?"),
    ("The pet of {} is", "What is the pet of Lena Brandt?"),
    ("owns a", 'Complete this sentence with the right fact: "Lena Brandt owns a ..."'),
])
def test_chat_questions_read_naturally_for_free_form_relations(relation, question):
    assert probes.chat_question(Fact(subject="Lena Brandt", relation=relation, object="x")) == question


def test_replay_pairs_logged_user_turns_with_their_replies(run):
    from sleepwake.storage import conversations

    for role, text in [("user", "Hi, I live in Graz."), ("assistant", "Nice to meet you!"), ("user", "Bye.")]:
        conversations.log_turn(run.ledger, "s1", role, text)
    turns = replay_stage.conversation_turns(run.ledger)
    assert [(t["user"], t["assistant"]) for t in turns] == [("Hi, I live in Graz.", "Nice to meet you!")]
    assert turns[0]["ts"] is not None and curriculum.replay_examples(run.memory.backend, [], turns, 4, 0.5, 0)


def test_anchors_of_the_base_model_leave_the_training_composition_in_place(run):
    """Training with some edits switched off must stay so while the anchors are made (the base
    model's teacher is computed on base weights, then the composition in force comes back)."""
    from sleepwake.sleep.consolidate import anchor_set

    memory = run.memory
    skipped = [memory.edits[0].edit_id]
    memory.compose(skip=skipped)
    digest = memory.weights_digest()
    anchored = anchor_set(memory, FACTS)
    assert memory.weights_digest() == digest
    kinds = {a.ids[0] == anchored[0].ids[0] for a in anchored}
    assert anchored and kinds and all(a.top_ids.shape == a.top_logp.shape for a in anchored)
    contrast = [a for a in anchored if a.start > 1]  # look-alike prompts, anchored on their answers
    assert len(contrast) == 2 * 2 * len(FACTS)  # 2 look-alikes x (raw prompt, chat question) per fact


def _anchor(ids: list[int], start: int, held: bool = False, vocab: int = 64) -> Anchor:
    n = len(ids) - start
    generator = torch.Generator().manual_seed(len(ids) * 31 + start)
    top_ids = torch.randint(0, vocab, (n, 2), generator=generator)
    return Anchor(ids, start, top_ids, torch.log(torch.full((n, 2), 0.3)), held)


def test_shared_opening_trains_the_adapter_every_row_recomputing_it_trains(run):
    """``lora.shared_opening``: the rows' common first tokens computed once a step, each pass continuing
    from their cache, give the same gradient as every row recomputing them (same adapter up to
    rounding); a row scored inside the opening or not starting with it runs whole."""
    backend = run.memory.backend
    opening = backend.encode("<sys> You are helpful. <user>", special=False)[:6] or [3, 4, 5, 6, 7, 8]
    examples = [TrainExample(opening + backend.encode(f" question {i} about", special=False), backend.encode(f" answer {i}", special=False))
                for i in range(6)]
    anchors = [_anchor(opening + [11, 12, 13, 14], len(opening) + 1, held=True),
               _anchor(opening + [15, 16], len(opening) + 1, held=True),
               _anchor(opening + [17, 18, 19], 2),  # scored inside the opening: runs whole
               _anchor([20, 21, 22, 23, 24], 2)]  # another opening altogether
    base = dict(batch_size=4, max_steps=3, micro_batch=2, anchor_weight=1.0, anchor_batch=2, memory_anchor_batch=2)
    shared = train_lora(backend, examples, recipe(**base, shared_opening=True), anchors)
    whole = train_lora(backend, examples, recipe(**base, shared_opening=False), anchors)
    assert shared.first_loss == pytest.approx(whole.first_loss, rel=1e-5)
    assert shared.last_loss == pytest.approx(whole.last_loss, rel=1e-5)
    for name, (u, v) in whole.factors.items():
        assert torch.allclose(u @ v.T, shared.factors[name][0] @ shared.factors[name][1].T, atol=1e-5), name

