"""Sleep stages as plain functions (no Prefect) on the tiny random Llama.

Why the facts look the way they do: in the random model only relations that END with the subject
are recallable (see test_memory's module doc), so "The hometown of {}" facts start healthy and
"lives in" facts start degraded. That gives every stage real work: healthy edits to protect,
degraded ones to refresh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sleepwake.config import load_settings
from sleepwake.errors import CorruptedStateError
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models import probes
from sleepwake.sleep import audit as audit_stage, journal, pipeline
from sleepwake.sleep import validate as validate_stage
from sleepwake.sleep.audit import audit
from sleepwake.sleep.curate import curate
from sleepwake.sleep.forget import forget
from sleepwake.sleep.health import health_check
from sleepwake.sleep.maintain import maintain
from sleepwake.sleep.report import report
from sleepwake.sleep.results import AuditResult, HealthResult, MaintainResult
from sleepwake.sleep.select import nap_selection, select_facts
from sleepwake.sleep.session import SleepSession, timed
from sleepwake.sleep.validate import validate
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
    return SleepSession(memory, "full_sleep")


def reopen(memory: Memory) -> Memory:
    """A second writer on the same home, reusing the loaded model (reset to its base weights first:
    ``Memory.open`` takes the backend's weights as the pristine base)."""
    memory.compose(skip=[e.edit_id for e in memory.edits])
    return Memory.open(memory.home, memory.settings, backend=memory.backend)


def with_settings(run: SleepSession, **sections) -> SleepSession:
    run.memory.settings = run.memory.settings.model_copy(update=sections)
    return run


def test_audit_finds_healthy_and_degraded_and_records_rows(run):
    result = audit(run)
    ids = {r.subject: r.fact_id for r in run.ledger.list_facts()}
    assert {ids["Aria Nakamura"], ids["Chen Okafor"]} <= set(result.healthy_ids)
    assert ids["Bruno Silva"] in result.degraded_ids
    assert result.n == 4 and result.degraded == len(result.degraded_ids)
    latest = run.ledger.latest_audits()
    assert set(latest) == set(ids.values()) and all(row["run_id"] == run.run_id for row in latest.values())
    assert run.ledger.metric_history("raw_recall")[-1]["value"] == result.raw_recall


def test_health_check_removes_orphan_edits_and_reports_perplexity(run):
    memory = run.memory
    row = memory.ledger.find_fact("Chen Okafor", "The job of {}")
    memory.ledger.forget_fact(row.fact_id)  # leaves the edit without a fact (an orphan edit)
    assert len(memory.ledger.list_edits()) == 4
    result = health_check(run)
    assert result.orphan_edits_removed == 1 and result.edits == 3
    assert result.perplexity > 0 and result.perplexity_baseline > 0
    assert result.weights_digest == memory.weights_digest()


def test_health_check_of_an_unchanged_home_runs_no_forward_pass(run, monkeypatch):
    health_check(run)  # measures and caches both perplexities
    calls = []
    monkeypatch.setattr(type(run.memory.backend), "perplexity", lambda *a, **k: calls.append(1) or 1.0)
    again = health_check(run)
    assert calls == [] and again.perplexity > 1.0  # both from the cache, keyed by the weights digest


def test_curate_prunes_only_consolidated_edits_and_keeps_every_fact_auditable(run):
    memory = run.memory
    row = memory.ledger.find_fact("Aria Nakamura", "The hometown of {}")
    memory.ledger.set_scale(row.edit_id, 0.0)
    memory.ledger.set_stage(row.fact_id, 3)
    other = memory.ledger.find_fact("Chen Okafor", "The job of {}")
    memory.ledger.set_scale(other.edit_id, 0.0)  # scale 0 but NOT consolidated: must stay
    memory.reload()
    result = curate(run)
    assert result.pruned == 1 and result.consolidated == 1 and result.facts == 4
    assert memory.ledger.find_fact("Aria Nakamura", "The hometown of {}").edit_id is None
    assert {e.edit_id for e in memory.edits} == {r.edit_id for r in memory.ledger.list_facts() if r.edit_id}
    assert result.missing_ids == []


def test_curate_reports_over_cap_without_dropping_facts(run):
    with_settings(run, curate=run.settings.curate.model_copy(update={"max_active_facts": 2}))
    result = curate(run)
    assert result.over_cap == 2 and "cap" in result.note
    assert len(run.ledger.list_facts()) == 4 and len(run.memory.edits) == 4


def test_select_audits_what_changed_and_rotates_through_the_rest(run):
    from sleepwake.status import LAST_SLEEP_KEY

    first = select_facts(run, curate(run))
    assert first.fact_ids == sorted(r.fact_id for r in run.ledger.list_facts())  # never audited: all at risk
    audit(run, first.fact_ids)
    run.ledger.set_meta(LAST_SLEEP_KEY, "2999-01-01T00:00:00")  # nothing changed since "the last sleep"
    with_settings(run, audit=run.settings.audit.model_copy(update={"coverage_nights": 2, "near_facts": 0}))
    degraded = set(audit(run).degraded_ids)
    nights = []
    for _ in range(3):
        picked = select_facts(run, curate(run))
        assert picked.coverage_nights == 2 and degraded <= set(picked.fact_ids)
        nights.append(set(picked.fact_ids) - degraded)
        audit(run, picked.fact_ids)
    healthy = {r.fact_id for r in run.ledger.list_facts()} - degraded
    assert nights[0] | nights[1] == healthy  # every fact within K = 2 nights
    assert all(len(n) == -(-len(healthy) // 2) for n in nights)


def test_select_adds_the_facts_nearest_to_a_changed_fact(run):
    from sleepwake.status import LAST_SLEEP_KEY

    audit(run)
    run.ledger.set_meta(LAST_SLEEP_KEY, "2000-01-01T00:00:00")
    with_settings(run, audit=run.settings.audit.model_copy(update={"coverage_nights": 1000, "near_facts": 2}))
    run.memory.inject([Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Lisbon")])
    row = run.ledger.find_fact("Aria Nakamura", "The hometown of {}")
    run.ledger.set_meta(LAST_SLEEP_KEY, str(row.updated_at - timedelta(microseconds=1)).replace(" ", "T"))
    picked = select_facts(run, curate(run))
    assert picked.changed == 1 and picked.near == 2 and row.fact_id in picked.fact_ids


def test_maintain_replaces_degraded_edits_in_place_and_protects_healthy_keys(run):
    memory = run.memory
    before = audit(run)
    healthy_edits = {r.edit_id for r in memory.ledger.list_facts() if r.fact_id in before.healthy_ids}
    keys = memory.edit_keys(healthy_edits)
    outputs = {layer: memory.backend.get_weight(layer) @ k.T for layer, k in keys.items()}
    edits_before = {e.edit_id for e in memory.edits}

    result = maintain(run, before)
    assert result.refreshed == len(before.degraded_ids) >= 1
    after_edits = {e.edit_id for e in memory.edits}
    assert len(after_edits) == len(edits_before)  # replaced, never duplicated
    refreshed_old = {r["old_edit"] for r in result.rows}
    assert refreshed_old.isdisjoint(after_edits) and healthy_edits <= after_edits
    for layer, k in keys.items():  # the hard null-space constraint: W k_p is unchanged
        now = memory.backend.get_weight(layer) @ k.T
        assert torch.allclose(now, outputs[layer], atol=1e-4, rtol=1e-4), layer
    assert audit(run).healthy_ids == before.healthy_ids
    assert SnapshotStore(memory.home.root).open_snapshots() == []  # its stage snapshot is closed


def test_maintain_respects_max_refresh_and_disabled(run):
    before = audit(run)
    with_settings(run, maintain=run.settings.maintain.model_copy(update={"max_refresh": 1}),
                  validate_=run.settings.validate_.model_copy(update={"locality_sample": 4}))
    refreshed = maintain(run, before)
    assert refreshed.refreshed == 1 and 0.0 <= refreshed.locality <= 1.0  # validate's floor may start there
    with_settings(run, maintain=run.settings.maintain.model_copy(update={"enabled": False}))
    result = maintain(run, before)
    assert result.refreshed == 0 and result.skipped is True


def test_maintain_wakes_a_consolidated_fact_the_adapters_lost(run):
    memory = run.memory
    row = memory.ledger.find_fact("Bruno Silva", "lives in")
    memory.ledger.prune_edits([row.edit_id])
    memory.ledger.set_stage(row.fact_id, 3)
    memory.reload()
    before = audit(run)
    assert row.fact_id in before.degraded_ids
    result = maintain(run, before)
    woken = memory.ledger.find_fact("Bruno Silva", "lives in")
    assert result.rewoken >= 1 and woken.stage == 0 and woken.edit_id is not None


def test_maintain_sends_a_consolidated_fact_that_lost_its_chat_answer_back_to_sws(run, monkeypatch):
    """Raw kept, chat lost, consolidated at least once (its edit scaled down, or gone): the fact goes
    back to stage 0 (tonight's SWS trains it), stage 3 (its edit pruned) first, then the oldest, at most
    ``maintain.max_reconsolidate`` a night; an unconsolidated fact failing chat is left to SWS."""
    memory = run.memory
    rows = memory.ledger.list_facts()
    assert len(rows) >= 4
    memory.ledger.set_stage(rows[0].fact_id, 1)  # its edit still there, at stage 1's scale
    for row in rows[1:3]:
        memory.ledger.prune_edits([row.edit_id])
        memory.ledger.set_stage(row.fact_id, 3)
    memory.reload()
    monkeypatch.setattr(audit_stage.probes, "probe_facts", lambda backend, facts, cfg: [
        probes.FactProbe(raw=True, raw_text="", chat=False, chat_text="") for _ in facts])
    before = audit(run)
    assert sorted(before.chat_lost_ids) == sorted(r.fact_id for r in rows[:3]) and before.degraded_ids == []
    with_settings(run, maintain=run.settings.maintain.model_copy(update={"max_reconsolidate": 2}))
    result = maintain(run, before)
    stages = {r.fact_id: r.stage for r in memory.ledger.list_facts()}
    assert result.reconsolidating == 2 and [stages[r.fact_id] for r in rows[:3]] == [1, 0, 0]  # the oldest waits
    assert all(stages[r.fact_id] == r.stage for r in rows[3:])


def test_a_failing_stage_restores_its_own_snapshot_so_a_retry_starts_clean(run):
    memory = run.memory
    digest = memory.weights_digest()
    with pytest.raises(RuntimeError):
        with journal.stage(run, "maintain"):  # attempt 1 ...
            memory.refresh(memory.ledger.find_fact("Bruno Silva", "lives in"), [])  # ... changes weights
            assert memory.weights_digest() != digest
            raise RuntimeError("transient")  # ... and fails
    assert memory.weights_digest() == digest  # attempt 2 starts from the same state
    assert SnapshotStore(memory.home.root).open_snapshots() == []


def test_failed_gate_rolls_back_byte_exact(run):
    memory = run.memory
    with_settings(run, validate_=run.settings.validate_.model_copy(update={"max_ppl_increase": 0.0}))
    health = health_check(run)
    digest = memory.weights_digest()
    pre = journal.begin(run)
    curate(run)
    before = audit(run)
    maintain(run, before)
    assert memory.weights_digest() != digest
    verdict = validate(run, before, health)
    assert verdict.passed is (verdict.perplexity_increase <= 0.0)
    journal.rollback(run, pre)  # roll back whatever the verdict: the restore itself is under test
    assert memory.weights_digest() == digest and journal.facts_fingerprint(memory) == pre.facts
    assert reopen(memory).weights_digest() == digest
    result = report(run, "rolled_back", health, before, verdict)
    assert result.outcome == "rolled_back" and result.raw_recall_after == before.raw_recall


def test_the_report_says_why_a_pass_was_undone(run):
    from sleepwake.sleep.results import RemResult, SwsResult

    sws = SwsResult(accepted=False, reason="raw recall fell 99 -> 93 of 100 facts (lost: fact ids [7])")
    result = report(run, "kept", sws, RemResult(accepted=True))
    assert result.sws_accepted is False and result.sws_reason == sws.reason and result.rem_reason is None
    assert f"SWS undone: {sws.reason}" in result.note and "REM undone" not in result.note


def test_gate_fails_on_recall_drop(run):
    before = AuditResult(raw_recall=1.0)
    health = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9)  # far above: only recall can fail
    verdict = validate(run, before, health)
    assert verdict.passed is False and "recall" in verdict.failures[0]


def test_locality_floor_starts_where_maintains_refreshes_left_it(run, monkeypatch):
    """Refreshes re-store the day's facts (MEMIT, like wake): a sleep whose consolidation leaves locality
    where they put it passes; judged from before the refreshes alone it would fail."""
    from sleepwake.sleep.results import MaintainResult

    monkeypatch.setattr(validate_stage.locality_stage, "measure_sample", lambda session: {"locality": 0.895, "leak": 0.0})
    run.settings.validate_.locality_slack = 0.0
    before = AuditResult(raw_recall=0.0)  # recall cannot fail
    health = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9, locality=0.903)
    failed = validate(run, before, health)
    assert failed.passed is False and failed.failures == ["locality fell to 0.895 (limit 0.900)"]
    kept = validate(run, before, health, MaintainResult(refreshed=3, locality=0.893))
    assert kept.passed is True, kept.failures
    assert validate(run, before, health, MaintainResult(refreshed=3, locality=0.95)).passed is False  # only ever lower


def test_locality_slack_lets_a_sleep_cost_at_most_that_much(run, monkeypatch):
    """Below the limit a sleep may cost ``validate.locality_slack`` of where it started, no more;
    well above the limit the limit itself holds."""
    measured = {"locality": 0.0}
    monkeypatch.setattr(validate_stage.locality_stage, "measure_sample", lambda session: {**measured, "leak": 0.0})
    run.settings.validate_.locality_slack = 0.01
    before = AuditResult(raw_recall=0.0)  # recall cannot fail
    low = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9, locality=0.853)
    for after, passes in ((0.8475, True), (0.8425, False)):
        measured["locality"] = after
        verdict = validate(run, before, low)
        assert verdict.passed is passes, (after, verdict.failures)
    assert verdict.failures == ["locality fell to 0.8425 (limit 0.843)"]
    measured["locality"] = 0.895
    high = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9, locality=0.95)
    assert validate(run, before, high).passed is False  # 0.95 - 0.01 is above the limit: the limit holds


def test_leak_ceiling_is_the_leak_the_sleep_began_with_when_over_the_limit(run, monkeypatch):
    """A leak wake's edits (or maintain's refreshes) already caused is not the sleep's: over
    ``validate.max_leak`` the ceiling is the larger starting leak, and the sleep may add none."""
    measured = {"locality": 0.95, "leak": 0.0469}
    monkeypatch.setattr(validate_stage.locality_stage, "measure_sample", lambda session: dict(measured))
    run.settings.validate_.max_leak = 0.02
    before = AuditResult(raw_recall=0.0)  # recall cannot fail
    clean = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9, locality=0.95, leak=0.0)
    assert validate(run, before, clean).failures == [
        "stored objects leaked into 0.0469 of unrelated answers (limit 0.020)"]
    leaky = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9, locality=0.95, leak=0.0156)
    refreshed = MaintainResult(locality=0.95, leak=0.0469)  # maintain's refreshes left it there
    assert validate(run, before, leaky, refreshed).passed is True
    measured["leak"] = 0.0625  # one more leaked answer than the sleep began with
    assert validate(run, before, leaky, refreshed).failures == [
        "stored objects leaked into 0.0625 of unrelated answers (limit 0.047)"]


def test_drift_ceiling_is_the_drift_wake_left_when_over_the_limit(run, monkeypatch):
    """A sleep is not rolled back for wake's drift: over ``validate.max_drift`` it may add none."""
    monkeypatch.setattr(validate_stage.locality_stage, "measure_sample", lambda session: {})
    monkeypatch.setattr(run.settings.validate_, "max_drift", 0.15)
    now = run.memory.perplexity()
    before = AuditResult(raw_recall=0.0)  # recall cannot fail
    under = HealthResult(perplexity=now, perplexity_baseline=now / 1.10)  # +10 %: the limit holds
    assert validate(run, before, under).passed is True
    wake_drifted = HealthResult(perplexity=now, perplexity_baseline=now / 1.20)  # wake left +20 %
    assert validate(run, before, wake_drifted).passed is True
    added = HealthResult(perplexity=now / 1.01, perplexity_baseline=now / 1.20)  # the sleep added 1 %
    verdict = validate(run, before, added)
    assert verdict.passed is False and verdict.failures[0].startswith("perplexity drifted +20.00%")
    assert "(limit +18.81%)" in verdict.failures[0]


def test_a_consolidation_pass_may_not_add_leak_over_the_limit(run, monkeypatch):
    """SWS and REM judge themselves by the same ceiling: the leak they began with, when over the limit."""
    monkeypatch.setattr(validate_stage.locality_stage, "measure_sample", lambda session: {"locality": 0.95, "leak": 0.0469})
    run.settings.validate_.max_leak = 0.02
    check = validate_stage.locality_stage.pass_failure
    assert check(run, 0.95, 0.0469)[1] is None
    assert check(run, 0.95, 0.0313)[1] == "stored objects leaked into 0.0469 of unrelated answers (limit 0.031)"
    assert check(run, 0.95)[1] == "stored objects leaked into 0.0469 of unrelated answers (limit 0.020)"


def lose_until_resolved(run, monkeypatch, victim):
    """Validate's audits report ``victim`` degraded for as long as it keeps its old edit."""
    real = validate_stage.audit_stage.audit

    def audit_now(session, ids, label, standing=None):
        result = real(session, ids, label=label, standing=standing)
        now = session.ledger.find_fact(victim.subject, victim.relation)
        if now.edit_id == victim.edit_id and victim.fact_id in result.healthy_ids:
            next(t for t in result.rows if t["fact_id"] == victim.fact_id)["raw"] = False
            result = result.model_copy(update=validate_stage.audit_stage.summarize(result.rows))
        return result

    monkeypatch.setattr(validate_stage.audit_stage, "audit", audit_now)


def test_validate_repairs_a_fact_the_sleep_cost_before_judging(run, monkeypatch):
    """A fact healthy before the sleep and degraded after it (REM or the fold disturbed it; its edit is
    unchanged) gets its edit re-solved and is audited again: the sleep passes. Switched off, it fails."""
    before = audit(run)
    assert before.healthy_ids, before
    victim = next(r for r in run.ledger.list_facts() if r.fact_id == before.healthy_ids[0])
    lose_until_resolved(run, monkeypatch, victim)
    health = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9)  # only recall can fail
    monkeypatch.setattr(run.settings.validate_, "repair_lost", False)
    failed = validate(run, before, health)
    assert failed.passed is False and failed.repaired == 0 and "recall" in failed.failures[0]
    monkeypatch.setattr(run.settings.validate_, "repair_lost", True)
    verdict = validate(run, before, health)
    assert verdict.passed is True and verdict.repaired >= 1, verdict.failures
    assert run.ledger.find_fact(victim.subject, victim.relation).edit_id != victim.edit_id
    assert verdict.raw_recall_after == before.raw_recall


def test_validate_audits_again_only_what_a_repair_may_have_moved(run, monkeypatch):
    """After a repair, validate probes the re-solved facts and the ``audit.near_facts`` nearest each;
    every other fact keeps the verdict of the audit just before the repair."""
    before = audit(run)
    victim = next(r for r in run.ledger.list_facts() if r.fact_id == before.healthy_ids[0])
    lose_until_resolved(run, monkeypatch, victim)
    calls: list[tuple[list[int], object]] = []
    losing = validate_stage.audit_stage.audit

    def recorded(session, ids, label, standing=None):
        result = losing(session, ids, label, standing)
        calls.append((sorted(ids), result))
        return result

    monkeypatch.setattr(validate_stage.audit_stage, "audit", recorded)
    with_settings(run, audit=run.settings.audit.model_copy(update={"near_facts": 1}))
    verdict = validate(run, before, HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9))
    everything = sorted(v["fact_id"] for v in before.verdicts)
    assert len(everything) == 4 and [ids for ids, _ in calls][0] == everything
    again = calls[1][0]
    assert len(calls) == 2 and len(again) == 2 and victim.fact_id in again  # the repaired and its nearest
    assert verdict.passed and verdict.audit.n == 4 and victim.fact_id in verdict.audit.healthy_ids
    standing = {v["fact_id"]: v for v in calls[0][1].verdicts}
    kept = [v for v in verdict.audit.verdicts if v["fact_id"] not in again]
    assert len(kept) == 2 and all(v == standing[v["fact_id"]] for v in kept)


def test_validate_audits_again_no_fact_the_sleep_did_not_audit(run, monkeypatch):
    """The nearest facts a repair may have moved are taken among the audited ones: the raw-recall gate
    compares the same facts before and after the sleep."""
    full = audit(run)
    victim = next(r for r in run.ledger.list_facts() if r.fact_id == full.healthy_ids[0])
    outside = next(v["fact_id"] for v in full.verdicts if v["fact_id"] != victim.fact_id)
    before = full.model_copy(update={"verdicts": [v for v in full.verdicts if v["fact_id"] != outside]})
    lose_until_resolved(run, monkeypatch, victim)
    calls: list[list[int]] = []
    losing = validate_stage.audit_stage.audit
    monkeypatch.setattr(validate_stage.audit_stage, "audit", lambda session, ids, label, standing=None: (
        calls.append(sorted(ids)), losing(session, ids, label, standing))[1])
    with_settings(run, audit=run.settings.audit.model_copy(update={"near_facts": 3}))
    verdict = validate(run, before, HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9))
    assert len(calls) == 2 and outside not in calls[0] + calls[1] and victim.fact_id in calls[1]
    assert verdict.audit.n == 3  # (its gate compares against the 4-fact figures of `full`: not judged here)


def test_validate_repairs_facts_degraded_before_and_after_only_when_asked(run, monkeypatch):
    """A fact degraded before the sleep and still after it is not the sleep's doing: it is re-solved
    only under ``validate.repair_degraded`` (maintain refreshed it before SWS, or not at all)."""
    before = audit(run)
    victim = next(r for r in run.ledger.list_facts() if r.fact_id == before.healthy_ids[0])
    before.healthy_ids.remove(victim.fact_id)
    before.degraded_ids.append(victim.fact_id)
    lose_until_resolved(run, monkeypatch, victim)
    health = HealthResult(perplexity=1.0e9, perplexity_baseline=1.0e9)
    monkeypatch.setattr(run.settings.validate_, "repair_degraded", 0)
    untouched = validate(run, before, health)
    assert untouched.repaired == 0 and victim.fact_id in untouched.audit.degraded_ids
    assert run.ledger.find_fact(victim.subject, victim.relation).edit_id == victim.edit_id
    monkeypatch.setattr(run.settings.validate_, "repair_degraded", 1)
    verdict = validate(run, before, health)
    assert verdict.repaired >= 1 and victim.fact_id not in verdict.audit.degraded_ids
    assert run.ledger.find_fact(victim.subject, victim.relation).edit_id != victim.edit_id


def test_an_interrupted_sleep_is_undone_by_the_next_writer(run, settings):
    memory = run.memory
    digest, facts = memory.weights_digest(), journal.facts_fingerprint(memory)
    journal.begin(run)
    memory.refresh(memory.ledger.find_fact("Bruno Silva", "lives in"), [])
    forget(memory, "Chen Okafor", "The job of {}")
    assert memory.weights_digest() != digest
    # The process "dies" here: nobody closes the snapshot. The next writer repairs the home.
    reopened = reopen(memory)
    assert reopened.recovered == [journal.pre_sleep_name(run)]
    assert reopened.weights_digest() == digest and journal.facts_fingerprint(reopened) == facts
    assert SnapshotStore(memory.home.root).open_snapshots() == []


def test_rollback_without_snapshot_is_a_clear_error(run):
    from sleepwake.sleep.results import SnapshotResult

    with pytest.raises(CorruptedStateError, match="snapshot"):
        journal.rollback(run, SnapshotResult(snapshot="missing-pre-sleep"))


def test_nap_selection_takes_recent_and_previously_degraded(run):
    audit(run)
    with_settings(run, audit=run.settings.audit.model_copy(update={"recent_facts": 1}))
    rows = run.ledger.list_facts()
    chosen = nap_selection(run)
    degraded = {fid for fid, row in run.ledger.latest_audits().items() if not row["healthy"]}
    assert degraded <= set(chosen) and rows[-1].fact_id in chosen and len(chosen) <= 1 + len(degraded)


def test_a_rolled_back_sleep_keeps_its_history_once(run):
    health = health_check(run)
    pre = journal.begin(run)
    before = audit(run)
    maintain(run, before)
    validate(run, before, health.model_copy(update={"perplexity": 1.0e-9}))  # any perplexity is a rise
    journal.rollback(run, pre)
    history = {row["name"]: row for row in run.ledger.metric_history("perplexity_before")}
    assert history, "validate's figures survive the rollback"
    runs = [row for row in run.ledger.metric_history("perplexity", limit=1000) if row["run_id"] == run.run_id]
    assert len(runs) == 1  # health's figure was inside the snapshot: not written twice
    latest = run.ledger.latest_audits()
    assert {row["run_id"] for row in latest.values()} == {run.run_id}
    assert sorted(fid for fid, row in latest.items() if not row["healthy"]) == before.degraded_ids


def test_forgotten_facts_leave_the_audit_verdicts(run):
    result = audit(run)
    gone = next(r for r in run.ledger.list_facts() if r.fact_id in result.degraded_ids)
    forget(run.memory, gone.subject, gone.relation)
    assert gone.fact_id not in run.ledger.latest_audits()


def test_naps_do_not_count_towards_convergence(run, settings):
    from sleepwake.sleep.report import CYCLE_METRIC

    nap = SleepSession(run.memory, "nap")
    before = audit(nap)
    report(nap, "no_change", before)
    assert run.ledger.metric_history(CYCLE_METRIC) == []
    result = report(run, "rolled_back")
    assert result.refreshed == 0 and result.pruned == 0


def test_the_plain_pipeline_runs_a_whole_sleep_and_closes_its_journal(run):
    result = pipeline.full_sleep(pipeline.plain(run))
    assert result.outcome in ("kept", "rolled_back") and result.audited == 4
    assert set(result.stage_seconds) >= {"health", "snapshot", "curate", "select", "audit", "maintain", "sws",
                                         "rem", "fold", "validate", "report"}
    if sys.platform == "linux":  # each stage's own peak resident memory (VmHWM restarted between stages)
        peaks = result.stage_peak_rss_gb
        assert set(peaks) >= {"health", "sws", "rem", "validate"} and all(0.05 < gb < 64 for gb in peaks.values()), peaks
        assert "peak memory" in result.note
    assert SnapshotStore(run.memory.home.root).open_snapshots() == []
    assert run.ledger.runs()[0]["outcome"] == result.outcome
    # where SWS and validate spent their seconds: named parts, the rest as "other", summing to the stage
    for stage, named in (("sws", {"raw", "train", "gate", "settle"}), ("validate", {"audit"})):
        parts = result.stage_part_seconds[stage]
        assert named | {"other"} <= set(parts) and abs(sum(parts.values()) - result.stage_seconds[stage]) < 0.05, parts
        recorded = {k for k in run.ledger.run_metrics(run.run_id) if k.startswith(f"{stage}.")}
        assert {f"{stage}.{name}_seconds" for name in parts} <= recorded
    assert "| sws |" in result.note and "train " in result.note


def test_a_part_inside_another_counts_once_in_the_outer_one(run, monkeypatch):
    import sleepwake.sleep.session as session_module

    clock = [0.0]  # a clock each part advances by exactly 0.02 s: a loaded machine's late wake-ups change nothing
    monkeypatch.setattr(session_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    inner = timed("inner")(lambda session: clock.__setitem__(0, clock[0] + 0.02))
    outer = timed("outer")(lambda session: inner(session) or inner(session))
    outer(run)
    inner(run)
    assert run.timing is None and set(run.parts) == {"outer", "inner"}
    assert run.parts == pytest.approx({"outer": 0.04, "inner": 0.02})  # inner inside outer: not counted again
    run.timing = "outer"  # a stage finishing inside another's part (validate's audits) leaves them alone
    assert run.take_parts(1.0) == {} and run.parts
    run.timing = None
    assert run.take_parts(1.0) == pytest.approx({"outer": 0.04, "inner": 0.02, "other": 0.94}) and run.parts == {}


FREE_PATTERN = """
import os, sys
from sleepwake.resources import return_freed_memory
if sys.argv[1] == "on":
    assert return_freed_memory(2.0) is True
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
first = bytearray(3 * 2**20)
del first
held, pins = [], []
for _ in range(40):  # 120 MB in blocks above the threshold, pinned apart by small live ones
    held.append(bytearray(3 * 2**20))
    pins.append(bytearray(64 * 1024))
full = rss()
del held
print((full - rss()) // 2**20)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_freed_memory_goes_back_to_the_system_under_the_heap_threshold():
    """``model.heap_mmap_threshold_mb`` reaches glibc (every model load applies it; 0 leaves glibc
    alone). Each side runs in a fresh process (a long test session's heap would blur the figure):
    under glibc's adaptive threshold the pattern frees ~0 MB (the first freed 3 MB block lifts the
    threshold, the next ones come from the heap and the small blocks between them pin it); with
    the threshold, all 120 MB go back."""
    from sleepwake.resources import return_freed_memory

    assert return_freed_memory(0.0) is False

    def freed_mb(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FREE_PATTERN, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert freed_mb("off") < 40
    assert freed_mb("on") > 100


TRIM_PATTERN = """
import os, sys
from sleepwake.resources import return_freed_memory, trim_heap
return_freed_memory(2.0)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
held, pins = [], []
for _ in range(120):  # 120 MB in 1 MB blocks, under the threshold (so from the heap), pinned apart
    held.append(bytearray(2**20))
    pins.append(bytearray(1024))
full = rss()
del held
if sys.argv[1] == "trim":
    assert trim_heap() is True
print((full - rss()) // 2**20)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_trimming_the_heap_returns_its_freed_middle():
    """Blocks under the mmap threshold come from the heap; freed between live ones they stay
    resident until ``trim_heap`` (called after wake's v* optimisation) gives them back."""
    def freed_mb(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", TRIM_PATTERN, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert freed_mb("keep") < 40
    assert freed_mb("trim") > 100
