"""Sleep stages as plain functions (no Prefect) on the tiny random Llama.

Why the facts look the way they do: in the random model only relations that END with the subject
are recallable (see test_memory's module doc), so "The hometown of {}" facts start healthy and
"lives in" facts start degraded. That gives every stage real work: healthy edits to protect,
degraded ones to refresh.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from sleepwake.config import load_settings
from sleepwake.errors import CorruptedStateError
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.sleep import gate
from sleepwake.sleep.audit import audit, nap_selection
from sleepwake.sleep.health import curate, health_check
from sleepwake.sleep.maintain import maintain, stage_snapshot
from sleepwake.sleep.report import report
from sleepwake.sleep.run import SleepRun
from sleepwake.storage.home import Home
from sleepwake.storage.snapshots import SnapshotStore
from conftest import seed_home

HEALTHY = [Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki"),
           Fact(subject="Chen Okafor", relation="The job of {}", object="pilot")]
DEGRADED = [Fact(subject="Bruno Silva", relation="lives in", object="Lisbon"),
            Fact(subject="Dana Kowalski", relation="works as a", object="baker")]


pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


@pytest.fixture(scope="module")
def settings(tiny_settings_overrides):
    return load_settings(None, tiny_settings_overrides)


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, tiny_settings_overrides):
    return seed_home(tmp_path_factory, tiny_settings_overrides, HEALTHY + DEGRADED, "sleep-seeded")


@pytest.fixture
def run(seeded_home, tmp_path, settings, monkeypatch):
    """A fresh copy of the seeded home, opened, with a full-sleep run around it."""
    target = tmp_path / "home"
    shutil.copytree(seeded_home, target)
    memory = Memory.open(Home.open(target), settings)
    return SleepRun(memory, "full_sleep")


def reopen(memory: Memory) -> Memory:
    """A second writer on the same home, reusing the loaded model (reset to its base weights first:
    ``Memory.open`` takes the backend's weights as the pristine base)."""
    memory.compose(skip=[e.edit_id for e in memory.edits])
    return Memory.open(memory.home, memory.settings, backend=memory.backend)


def with_settings(run: SleepRun, **sections) -> SleepRun:
    run.memory.settings = run.memory.settings.model_copy(update=sections)
    return run


def test_audit_finds_healthy_and_degraded_and_records_rows(run):
    result = audit(run)
    summary = result.summary
    ids = {r.subject: r.fact_id for r in run.ledger.list_facts()}
    assert {ids["Aria Nakamura"], ids["Chen Okafor"]} <= set(summary["healthy_ids"])
    assert ids["Bruno Silva"] in summary["degraded_ids"]
    assert summary["n"] == 4 and summary["degraded"] == len(summary["degraded_ids"])
    latest = run.ledger.latest_audits()
    assert set(latest) == set(ids.values()) and all(row["run_id"] == run.run_id for row in latest.values())
    assert run.ledger.metric_history("raw_recall")[-1]["value"] == summary["raw_recall"]


def test_health_check_removes_orphan_edits_and_reports_perplexity(run):
    memory = run.memory
    row = memory.ledger.find_fact("Chen Okafor", "The job of {}")
    memory.ledger.forget_fact(row.fact_id)  # leaves the edit without a fact (an orphan edit)
    assert len(memory.ledger.list_edits()) == 4
    summary = health_check(run).summary
    assert summary["orphan_edits_removed"] == 1 and summary["edits"] == 3
    assert summary["perplexity"] > 0 and summary["perplexity_baseline"] > 0
    assert summary["weights_digest"] == memory.weights_digest()


def test_curate_prunes_only_consolidated_edits_and_keeps_every_fact_auditable(run):
    memory = run.memory
    row = memory.ledger.find_fact("Aria Nakamura", "The hometown of {}")
    memory.ledger.set_scale(row.edit_id, 0.0)
    memory.ledger.set_stage(row.fact_id, 3)
    other = memory.ledger.find_fact("Chen Okafor", "The job of {}")
    memory.ledger.set_scale(other.edit_id, 0.0)  # scale 0 but NOT consolidated: must stay
    memory.reload()
    summary = curate(run).summary
    assert summary["pruned"] == 1 and summary["consolidated"] == 1
    assert row.fact_id in summary["audit_ids"] and len(summary["audit_ids"]) == 4
    assert memory.ledger.find_fact("Aria Nakamura", "The hometown of {}").edit_id is None
    assert {e.edit_id for e in memory.edits} == {r.edit_id for r in memory.ledger.list_facts() if r.edit_id}
    assert summary["missing_ids"] == []


def test_curate_reports_over_cap_without_dropping_facts(run):
    with_settings(run, curate=run.settings.curate.model_copy(update={"max_active_facts": 2}))
    result = curate(run)
    assert result.summary["over_cap"] == 2 and "cap" in result.markdown
    assert len(run.ledger.list_facts()) == 4 and len(run.memory.edits) == 4


def test_maintain_replaces_degraded_edits_in_place_and_protects_healthy_keys(run):
    memory = run.memory
    before = audit(run).summary
    healthy_edits = {r.edit_id for r in memory.ledger.list_facts() if r.fact_id in before["healthy_ids"]}
    keys = memory.edit_keys(healthy_edits)
    outputs = {layer: memory.backend.get_weight(layer) @ k.T for layer, k in keys.items()}
    edits_before = {e.edit_id for e in memory.edits}

    result = maintain(run, before["healthy_ids"], before["degraded_ids"])
    assert result.summary["refreshed"] == len(before["degraded_ids"]) >= 1
    after_edits = {e.edit_id for e in memory.edits}
    assert len(after_edits) == len(edits_before)  # replaced, never duplicated
    refreshed_old = {r["old_edit"] for r in result.rows}
    assert refreshed_old.isdisjoint(after_edits) and healthy_edits <= after_edits
    for layer, k in keys.items():  # the hard null-space constraint: W k_p is unchanged
        now = memory.backend.get_weight(layer) @ k.T
        assert torch.allclose(now, outputs[layer], atol=1e-4, rtol=1e-4), layer
    assert audit(run).summary["healthy_ids"] == before["healthy_ids"]
    assert SnapshotStore(memory.home.root).open_snapshots() == []  # its stage snapshot is closed


def test_maintain_respects_max_refresh_and_disabled(run):
    before = audit(run).summary
    with_settings(run, maintain=run.settings.maintain.model_copy(update={"max_refresh": 1}))
    assert maintain(run, before["healthy_ids"], before["degraded_ids"]).summary["refreshed"] == 1
    with_settings(run, maintain=run.settings.maintain.model_copy(update={"enabled": False}))
    summary = maintain(run, before["healthy_ids"], before["degraded_ids"]).summary
    assert summary["refreshed"] == 0 and summary["skipped"] is True


def test_a_retried_stage_first_restores_its_own_snapshot(run):
    memory = run.memory
    digest = memory.weights_digest()
    stage_snapshot(run, "maintain")  # attempt 1 starts ...
    row = memory.ledger.find_fact("Bruno Silva", "lives in")
    memory.refresh(row, [])  # ... changes weights, then "fails"
    assert memory.weights_digest() != digest
    stage_snapshot(run, "maintain")  # attempt 2 starts from the same state as attempt 1
    assert memory.weights_digest() == digest


def test_failed_gate_rolls_back_byte_exact(run):
    memory = run.memory
    with_settings(run, validate_=run.settings.validate_.model_copy(update={"max_ppl_increase": 0.0}))
    health = health_check(run).summary
    facts_before = gate.facts_fingerprint(memory)
    digest = memory.weights_digest()
    gate.take_snapshot(run)
    curate(run)
    before = audit(run).summary
    maintain(run, before["healthy_ids"], before["degraded_ids"])
    assert memory.weights_digest() != digest
    verdict, _ = gate.validate(run, before, health["perplexity"])
    increase = verdict.summary["perplexity_increase"]
    assert verdict.summary["passed"] is (increase <= 0.0)
    gate.rollback(run, facts_before)  # roll back whatever the verdict: the restore itself is under test
    assert memory.weights_digest() == digest and gate.facts_fingerprint(memory) == facts_before
    assert reopen(memory).weights_digest() == digest
    summary = report(run, "rolled_back").summary
    assert summary["outcome"] == "rolled_back" and summary["raw_recall_after"] == before["raw_recall"]


def test_gate_fails_on_recall_drop(run):
    before = {"raw_recall": 1.0}
    verdict, _ = gate.validate(run, before, 1.0e9)  # perplexity far below: only recall can fail
    assert verdict.summary["passed"] is False and "recall" in verdict.summary["failures"][0]


def test_an_interrupted_sleep_is_undone_by_the_next_writer(run, settings):
    memory = run.memory
    digest, facts = memory.weights_digest(), gate.facts_fingerprint(memory)
    gate.take_snapshot(run)
    memory.refresh(memory.ledger.find_fact("Bruno Silva", "lives in"), [])
    memory.forget("Chen Okafor", "The job of {}")
    assert memory.weights_digest() != digest
    # The process "dies" here: nobody closes the snapshot. The next writer repairs the home.
    reopened = reopen(memory)
    assert reopened.recovered == [gate.snapshot_name(run)]
    assert reopened.weights_digest() == digest and gate.facts_fingerprint(reopened) == facts
    assert SnapshotStore(memory.home.root).open_snapshots() == []


def test_rollback_without_snapshot_is_a_clear_error(run):
    with pytest.raises(CorruptedStateError, match="snapshot"):
        gate.rollback(run)


def test_nap_selection_takes_recent_and_previously_degraded(run):
    audit(run)
    with_settings(run, audit=run.settings.audit.model_copy(update={"recent_facts": 1}))
    rows = run.ledger.list_facts()
    chosen = nap_selection(run)
    degraded = {fid for fid, row in run.ledger.latest_audits().items() if not row["healthy"]}
    assert degraded <= set(chosen) and rows[-1].fact_id in chosen and len(chosen) <= 1 + len(degraded)


def test_a_rolled_back_sleep_keeps_its_history_once(run):
    health_check(run)
    gate.take_snapshot(run)
    before = audit(run).summary
    maintain(run, before["healthy_ids"], before["degraded_ids"])
    gate.validate(run, before, 1.0e-9)  # any perplexity is a rise: the gate fails
    gate.rollback(run)
    history = {row["name"]: row for row in run.ledger.metric_history("perplexity_before")}
    assert history, "validate's figures survive the rollback"
    runs = [row for row in run.ledger.metric_history("perplexity", limit=1000) if row["run_id"] == run.run_id]
    assert len(runs) == 1  # health's figure was inside the snapshot: not written twice
    latest = run.ledger.latest_audits()
    assert {row["run_id"] for row in latest.values()} == {run.run_id}
    assert sorted(fid for fid, row in latest.items() if not row["healthy"]) == before["degraded_ids"]


def test_forgotten_facts_leave_the_audit_verdicts(run):
    summary = audit(run).summary
    degraded = run.ledger.list_facts()
    gone = next(r for r in degraded if r.fact_id in summary["degraded_ids"])
    run.memory.forget(gone.subject, gone.relation)
    assert gone.fact_id not in run.ledger.latest_audits()


def test_naps_do_not_count_towards_convergence(run, settings):
    from sleepwake.sleep.report import CYCLE_METRIC

    nap = SleepRun(run.memory, "nap")
    audit(nap)
    report(nap, "no_change")
    assert run.ledger.metric_history(CYCLE_METRIC) == []
    summary = report(run, "rolled_back").summary
    assert summary["refreshed"] == 0 and summary["pruned"] == 0
