"""A memory for a lifetime, on the tiny random Llama: bounded state over many nights.

- the fold re-factors many adapters into one, exactly within its rank budget;
- batched wake stores one exact edit per key group;
- a simulated year: 365 nights of a few facts each, through the real wake, SWS, REM and fold
  stages; adapters, home bytes and the open+compose time stay bounded. The tiny model cannot
  learn facts in a few steps, so the SWS gate's verdict is the test's (as in test_consolidation):
  this checks the state mechanics, the longevity experiment measures learning on the real model.
"""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from sleepwake.config import load_settings
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models import probes
from sleepwake.models.editor import split_groups
from sleepwake.models.lowrank import refactor
from sleepwake.models.memit import LayerUpdate
from sleepwake.sleep import curate as curate_stage, fold as fold_stage, rem as rem_stage, sws as sws_stage
from sleepwake.sleep.session import SleepSession
from sleepwake.storage import adapters as adapter_rows
from sleepwake.storage.home import Home

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


def random_pairs(n: int, out: int = 12, inp: int = 9, rank: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(out, rank, generator=gen), torch.randn(inp, rank, generator=gen)) for _ in range(n)]


def test_refactor_is_exact_within_its_rank_and_keeps_the_energy_it_reports():
    parts = random_pairs(3)  # rank 6 in a 12 x 9 space
    dense = sum(u @ v.T for u, v in parts)
    u, v, kept = refactor(parts)
    assert u.shape[1] == 6 and kept == pytest.approx(1.0)
    torch.testing.assert_close(u @ v.T, dense, atol=1e-5, rtol=1e-5)
    u, v, kept = refactor(parts, energy=1.0, max_rank=2)
    assert u.shape[1] == 2 and kept < 1.0
    s = torch.linalg.svdvals(dense.double())
    assert kept == pytest.approx(float((s[:2] ** 2).sum() / (s ** 2).sum()), rel=1e-6)  # the best rank-2 share
    _, _, kept = refactor(parts, energy=0.9)
    assert kept >= 0.9


def test_split_groups_sums_exactly_to_the_batched_update():
    gen = torch.Generator().manual_seed(1)
    u, v, keys = torch.randn(8, 6, generator=gen), torch.randn(5, 6, generator=gen), torch.randn(6, 5, generator=gen)
    update = LayerUpdate(layer=3, u=u, v=v, keys=keys)  # 3 groups x (mean, bare) key rows
    groups = split_groups([update], 3)
    assert [g[0].u.shape[1] for g in groups] == [2, 2, 2]
    torch.testing.assert_close(sum(g[0].dense() for g in groups), update.dense())
    assert torch.equal(groups[1][0].keys, keys[[1, 4]])  # group 1: its mean row and its bare row


@pytest.fixture
def memory(tmp_path, tiny_settings):
    return Memory.open(Home.open(tmp_path / "home"), tiny_settings)


def test_batched_inject_stores_one_edit_per_key_group_and_forgets_exactly(memory):
    facts = [Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki"),
             Fact(subject="Bruno Silva", relation="The job of {}", object="pilot"),
             Fact(subject="Chen Okafor", relation="lives in", object="Lisbon"),
             Fact(subject="Chen Okafor", relation="works as a", object="baker"),  # same key as the one above
             Fact(subject="Bruno Silva", relation="The job of {}", object="chef")]  # same fact again: last wins
    base = memory.weights_digest()
    outcomes = memory.inject(facts)
    assert [o.status for o in outcomes] == ["stored"] * 4
    assert {o.fact.object for o in outcomes} >= {"chef"} and "pilot" not in {o.fact.object for o in outcomes}
    edits = memory.ledger.list_edits()
    assert len(edits) == 3  # Chen's two facts share one key, so one edit
    chen = {r.edit_id for r in memory.ledger.list_facts() if r.subject == "Chen Okafor"}
    assert len(chen) == 1
    from sleepwake.sleep.forget import forget

    for row in memory.ledger.list_facts():
        forget(memory, row.subject, row.relation)
    assert memory.weights_digest() == base  # every per-group edit subtracts exactly


def test_one_by_one_and_batch_size_are_honoured(memory):
    facts = [Fact(subject=f"Aria Nakamura{i}", relation="The hometown of {}", object="Oslo") for i in range(3)]
    calls = []
    real = memory.solve_groups
    memory.solve_groups = lambda batch, replaces, protect=None: calls.append(len(batch)) or real(batch, replaces, protect)
    memory.inject(facts[:2], one_by_one=True)
    memory.settings = memory.settings.model_copy(update={"memit": memory.settings.memit.model_copy(update={"wake_batch": 2})})
    memory.inject(facts[2:] + [Fact(subject="Bruno Silva", relation="The job of {}", object="pilot"),
                                Fact(subject="Dana Kowalski", relation="The job of {}", object="baker")])
    assert calls == [1, 1, 2, 1]


def test_fold_turns_every_adapter_into_one_and_keeps_the_weights(memory, tiny_settings):
    session = SleepSession(memory, "full_sleep")
    names = ["model.layers.1.self_attn.q_proj", "model.layers.2.mlp.down_proj"]
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        factors = {}
        for name in names:
            out, inp = memory.backend.module_weight(name).shape
            factors[name] = (0.01 * torch.randn(out, 2, generator=gen), torch.randn(inp, 2, generator=gen))
        memory.store_adapter("sws", session.run_id, factors)
    weights = {name: memory.backend.module_weight(name) for name in names}
    result = fold_stage.fold(session)
    assert result.adapters_before == 3 and result.adapters_after == 1 and result.rank == 6
    assert result.energy_kept == pytest.approx(1.0)
    [row] = adapter_rows.list_adapters(memory.ledger)
    assert row.kind == "consolidated" and len(list((memory.home.root / "deltas").glob("adapter-*"))) == 1
    for name in names:
        torch.testing.assert_close(memory.backend.module_weight(name), weights[name], atol=1e-5, rtol=1e-5)
    reopened = Memory.open(memory.home, tiny_settings, backend=memory.backend)
    assert reopened.weights_digest() == memory.weights_digest()
    assert fold_stage.fold(SleepSession(memory, "full_sleep")).skipped  # one adapter: nothing to fold


def test_a_simulated_year_keeps_the_home_bounded(tmp_path, tiny_settings_overrides, monkeypatch):
    """365 nights, 2 new facts each: wake (batched MEMIT), curate (prunes consolidated edits), SWS
    (train, store, advance), REM, fold. Facts pass the SWS gate by the test's say-so (above)."""
    settings = load_settings(None, [*tiny_settings_overrides, "lora.max_steps=1", "lora.anchor_count=2",
                                    "lora.contrast_anchors=0", "lora.memory_anchors=0", "rem.dreams=1", "rem.epochs=1", "memit.v_steps=4",
                                    "memit.context_count=0", "lora.layers=[3]", "lora.modules=[q_proj,down_proj]",
                                    "lora.fold_max_rank=16", "sws.benchmark_max_drop=1.0", "rem.max_ppl_increase=100.0",
                                    "sws.replay_size=2", "sws.identity_weight=0.0"])
    monkeypatch.setattr(sws_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=True, raw_text="", chat=True, chat_text="") for _ in facts])
    monkeypatch.setattr(sws_stage, "raw_hits", lambda session, rows: [True] * len(rows))
    monkeypatch.setattr(sws_stage.probes, "benchmark", lambda backend, cfg: (1.0, []))
    monkeypatch.setattr(rem_stage, "sampled_chat_recall", lambda session, k: 1.0)
    home = Home.open(tmp_path / "home")
    memory = Memory.open(home, settings, hold_ledger=True)  # nobody else reads this home
    backend = memory.backend
    opened, sizes, adapters, started = {}, [], [], time.perf_counter()
    for night in range(1, 366):
        memory.inject([Fact(subject=f"Person{night}x{i} Tanaka", relation="The hometown of {}", object="Oslo")
                       for i in range(2)], source="year")
        session = SleepSession(memory, "full_sleep")
        curate_stage.curate(session)
        sws_stage.sws(session)
        if night % 30 == 0:  # REM monthly: nights with two fresh adapters to fold, at a fraction of the cost
            rem_stage.rem(session)
        fold_stage.fold(session)
        adapters.append(len(memory.adapters))
        sizes.append(sum(p.stat().st_size for p in home.root.rglob("*") if p.is_file()))
        if night == 10:  # kept as it is, to be opened beside night 365's (below)
            memory.ledger.release()
            shutil.copytree(home.root, tmp_path / "night10")
            memory = Memory.open(home, settings, backend=backend, hold_ledger=True)
    # Open+compose of the night-10 copy and of the night-365 home, in turn: both timed under the same load
    # (figures taken minutes apart would compare the machine's load, not the homes).
    memory.ledger.release()
    for _ in range(5):
        for night, root in ((10, tmp_path / "night10"), (365, home.root)):
            begin = time.perf_counter()
            memory = Memory.open(Home.open(root), settings, backend=backend, hold_ledger=True)
            opened[night] = min(opened.get(night, float("inf")), time.perf_counter() - begin)
            memory.ledger.release()
    memory = Memory.open(home, settings, backend=backend, hold_ledger=True)
    stages = memory.ledger.counts()["facts_per_stage"]
    assert memory.ledger.counts()["facts"] == 730 and stages[3] >= 720
    assert max(adapters) == 1  # folded every night
    assert len(memory.edits) <= 8  # only facts still consolidating keep a MEMIT edit
    assert max(sizes[200:]) < 1.5 * max(sizes[:100]) + 2_000_000, (sizes[99], sizes[-1])  # bounded, not growing per night
    assert opened[365] <= 1.5 * opened[10] + 0.05, opened
    print(f"simulated year: {time.perf_counter() - started:.0f} s, home {sizes[-1] / 1e6:.1f} MB, "
          f"open+compose {opened[10] * 1e3:.0f} ms (night 10) vs {opened[365] * 1e3:.0f} ms (night 365)")


def test_locality_is_one_on_the_base_model_and_falls_under_a_damaging_adapter(memory):
    from sleepwake.sleep.locality import measure_memory

    clean = measure_memory(memory, 32)
    assert clean["locality"] == 1.0 and clean["greedy_unchanged"] == 1.0 and clean["leak"] == 0.0
    damage(memory)
    hurt = measure_memory(memory, 32)
    assert hurt["locality"] < 0.5 and hurt["greedy_unchanged"] < 0.5


def test_a_session_measures_the_same_weights_once(memory, monkeypatch):
    """Health, the start of SWS and the start of REM often see the very same weights: the figures
    are reused by weights digest and stored objects; a changed weight or a new fact measures again."""
    from sleepwake.sleep import locality as locality_stage

    calls = []
    real = locality_stage.measure_memory
    monkeypatch.setattr(locality_stage, "measure_memory", lambda *a, **k: calls.append(1) or real(*a, **k))
    memory.settings.validate_.locality_sample = 16
    session = SleepSession(memory, "full_sleep")
    first = locality_stage.measure_sample(session)
    assert locality_stage.measure_sample(session) == first and len(calls) == 1
    damage(memory)
    hurt = locality_stage.measure_sample(session)
    assert len(calls) == 2 and hurt["locality"] < first["locality"]
    memory.inject([Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")])
    locality_stage.measure_sample(session)
    assert len(calls) == 3


def damage(memory, scale: float = 3.0) -> None:
    """Store an adapter that rewrites every adapted module: what a runaway LoRA would do."""
    gen = torch.Generator().manual_seed(7)
    factors = {}
    for layer in (1, 2, 3):
        for module in ("self_attn.o_proj", "mlp.down_proj"):
            name = f"model.layers.{layer}.{module}"
            out, inp = memory.backend.module_weight(name).shape
            factors[name] = (scale * torch.randn(out, 4, generator=gen), torch.randn(inp, 4, generator=gen) / inp ** 0.5)
    memory.store_adapter("sws", None, factors)


def test_a_sleep_whose_adapter_damages_unrelated_answers_is_rolled_back(memory, monkeypatch):
    from sleepwake.sleep import pipeline
    from sleepwake.sleep.results import SwsResult

    memory.inject([Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")])
    memory.settings = memory.settings.model_copy(update={"validate_": memory.settings.validate_.model_copy(
        update={"locality_sample": 32, "min_locality": 0.0, "max_leak": 1.0, "max_ppl_increase": 100.0,
                "max_drift": 100.0, "max_recall_drop": 1.0})})
    digest = memory.weights_digest()
    kept = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
    assert kept.outcome == "kept" and 0 < kept.locality <= 1, (kept.failures, kept.locality)
    # The gate sits just below what an ordinary sleep left (a random tiny model's argmax is fragile).
    memory.settings.validate_.min_locality = 0.8 * kept.locality

    def damaging_sws(session):
        damage(session.memory)
        return SwsResult(accepted=True)

    monkeypatch.setitem(pipeline.STAGES, "sws", damaging_sws)
    before = memory.weights_digest()
    rolled = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
    assert rolled.outcome == "rolled_back" and any("locality" in f for f in rolled.failures), (rolled.locality, rolled.failures)
    assert memory.weights_digest() == before != digest


def test_a_sleep_is_not_rolled_back_for_locality_the_days_edits_already_cost(memory, monkeypatch):
    """The locality gate's floor is min(limit, locality before the sleep): wake's edits may have
    brought it below the limit, and a sleep that does not make it worse is kept (else every night
    would roll back and nothing new would ever consolidate)."""
    from sleepwake.sleep import pipeline
    from sleepwake.sleep.results import RemResult, SwsResult

    memory.inject([Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")])
    memory.settings.validate_.locality_sample = 32
    memory.settings.validate_.min_locality = 1.0  # above what any edited model keeps
    memory.settings.validate_.max_leak = 1.0  # the random tiny model says a stored object anywhere
    monkeypatch.setitem(pipeline.STAGES, "sws", lambda session: SwsResult(accepted=True, skipped=True))
    monkeypatch.setitem(pipeline.STAGES, "rem", lambda session: RemResult(accepted=True, skipped=True))
    kept = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
    assert kept.locality is not None and kept.locality < 1.0
    assert kept.outcome == "kept", kept.failures

    damage(memory, scale=3.0)  # the day's change (outside a sleep) costs locality; the sleep adds nothing
    worse = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep")))
    assert worse.outcome == "kept" and worse.locality <= kept.locality, (worse.failures, worse.locality)
