"""The nap and full-sleep Prefect flows on the tiny random Llama, against a test Prefect API.

One ``prefect_test_harness`` per module (it costs ~12 s to start). Failure paths are made by
replacing a stage's plain function: the tasks look their function up at call time.
"""

from __future__ import annotations

import json
import shutil

import pytest

from sleepwake.errors import CorruptedStateError, HomeBusyError, SleepwakeError
from sleepwake.sleep import journal, pipeline
from sleepwake.settings.sleep import ValidateConfig
from sleepwake.storage.home import Home
from sleepwake.storage.snapshots import SnapshotStore
from conftest import mixed_facts, seed_home

FACTS = mixed_facts()
STAGES = ["health_check", "snapshot", "curate", "select", "audit", "maintain", "sws", "rem", "fold", "validate", "report"]
# Gates that let a sleep on the random tiny model through, so a test can insist on "kept".
OPEN_GATES = ValidateConfig(max_ppl_increase=100.0, max_drift=100.0, max_recall_drop=1.0, locality_sample=0)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


pytestmark = pytest.mark.usefixtures("cache_env")


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, tiny_settings_overrides):
    return seed_home(tmp_path_factory, tiny_settings_overrides, FACTS, "flows")


@pytest.fixture
def home(seeded_home, tmp_path):
    target = tmp_path / "home"
    shutil.copytree(seeded_home, target)
    return str(target)


def digest_and_facts(home: str, overrides: list[str]) -> tuple[str, list]:
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    memory = Memory.open(Home.open(home), load_settings(None, overrides), writable=False)
    return memory.weights_digest(), journal.facts_fingerprint(memory)


def task_runs(flow_run_id) -> dict[str, list]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_name: dict[str, list] = {}
    for run in runs:
        by_name.setdefault(run.name.rsplit("-", 1)[0], []).append(run)
    return by_name


def test_full_sleep_runs_every_stage_as_a_task_with_artifacts(harness, home, tiny_settings_overrides):
    from prefect.client.orchestration import get_client

    from sleepwake.flows.full_sleep import full_sleep
    from sleepwake.storage.ledger import Ledger

    before = digest_and_facts(home, tiny_settings_overrides)
    state = full_sleep(home=home, overrides=tiny_settings_overrides, gates=OPEN_GATES, return_state=True)
    report = state.result()
    assert report["outcome"] == "kept" and report["facts"] == 3 and report["edits"] == 3
    assert report["refreshed"] >= 1 and report["degraded_before"] >= 1
    assert digest_and_facts(home, tiny_settings_overrides)[0] != before[0]  # the kept sleep changed weights
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(flow_run_id)
    assert sorted(runs) == sorted(STAGES)
    assert all(len(r) == 1 and r[0].state.is_completed() for r in runs.values())
    with get_client(sync_client=True) as client:
        artifacts = [a for a in client.read_artifacts() if a.flow_run_id == flow_run_id]
    keys = [a.key for a in sorted(artifacts, key=lambda a: a.created)]
    assert {"full-sleep-audit", "full-sleep-maintain", "full-sleep-sws", "full-sleep-rem", "full-sleep-fold",
            "full-sleep-validate", "full-sleep-report-note"} <= set(keys)
    assert keys.index("full-sleep-audit") < keys.index("full-sleep-sws") < keys.index("full-sleep-validate")
    progress = [a for a in artifacts if a.key == "full-sleep-sws-progress"]  # the long stage's progress bar
    assert progress and progress[-1].type == "progress" and float(progress[-1].data) == 100.0
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:  # sleepwake's own log lines reach the task's logs
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[runs["sws"][0].id])))
    assert any("sws: step" in entry.message for entry in logs)
    assert SnapshotStore(Home.open(home).root).open_snapshots() == []
    ledger = Ledger(Home.open(home).db_path, read_only=True)
    latest = ledger.latest_audits()  # the post-sleep audit became each fact's verdict of record
    assert sum(not row["healthy"] for row in latest.values()) == report["degraded_after"]
    [run] = ledger.runs(limit=1)  # one id: the ledger's run row knows its Prefect flow run
    assert run["run_id"] == report["run_id"] and run["flow_run_id"] == str(flow_run_id) == report["flow_run_id"]


def test_a_flow_refuses_a_home_that_does_not_exist(harness, tmp_path, tiny_settings_overrides):
    from sleepwake.errors import NotFoundError
    from sleepwake.flows.nap import nap

    missing = tmp_path / "memries"
    with pytest.raises(NotFoundError, match="no sleepwake home"):
        nap(home=str(missing), overrides=tiny_settings_overrides)
    assert not (missing / "ledger.duckdb").exists()


def test_zero_perplexity_budget_rolls_back_byte_exact(harness, home, tiny_settings_overrides):
    from sleepwake.flows.full_sleep import full_sleep

    before = digest_and_facts(home, tiny_settings_overrides)
    # A negative budget is refused by the form; 0.0 with a forced rise is the strictest allowed.
    report = full_sleep(home=home, overrides=tiny_settings_overrides + ["validate.max_recall_drop=0.0"],
                        gates=ValidateConfig(max_ppl_increase=0.0, locality_sample=0))
    if report["perplexity_after"] is not None and report["outcome"] == "kept":
        pytest.fail(f"perplexity did not rise, so the gate had nothing to stop: {report}")
    assert report["outcome"] == "rolled_back"
    assert digest_and_facts(home, tiny_settings_overrides) == before


def test_nap_changes_no_weights(harness, home, tiny_settings_overrides):
    from sleepwake.flows.nap import nap

    before = digest_and_facts(home, tiny_settings_overrides)
    report = nap(home=home, overrides=tiny_settings_overrides)
    assert report["outcome"] == "no_change" and report["kind"] == "nap" and report["raw_recall_before"] is not None
    assert digest_and_facts(home, tiny_settings_overrides) == before


def test_consolidation_can_be_switched_off_per_run_from_the_form(harness, home, tiny_settings_overrides):
    from sleepwake.flows.full_sleep import full_sleep
    from sleepwake.settings.sleep import RemConfig, SwsConfig

    state = full_sleep(home=home, overrides=tiny_settings_overrides, sws=SwsConfig(enabled=False),
                       rem=RemConfig(enabled=False), return_state=True)
    report = state.result()
    assert report["sws_accepted"] is None and report["rem_accepted"] is None
    assert json.loads(json.dumps(report))["facts_per_stage"] == {"0": 3, "1": 0, "2": 0, "3": 0}


def test_reinforcing_nap_runs_its_gated_pass_and_keeps_memit(harness, home, tiny_settings_overrides):
    from sleepwake.flows.nap import nap

    state = nap(home=home, overrides=tiny_settings_overrides + ["validate.max_ppl_increase=100.0",
                                                                "validate.max_drift=100.0", "validate.max_recall_drop=1.0"],
                reinforce=True, return_state=True)
    report = state.result()
    assert report["outcome"] == "reinforced" and report["reinforce_accepted"] is True
    assert sorted(task_runs(state.state_details.flow_run_id)) == ["audit", "health_check", "reinforce", "report"]
    status = digest_and_facts(home, tiny_settings_overrides)
    assert status[1][0][4] == 0  # stages untouched: a nap consolidates nothing


def test_transient_error_is_retried_from_the_stages_own_snapshot(harness, home, tiny_settings_overrides, monkeypatch):
    from sleepwake.flows.full_sleep import full_sleep

    real = pipeline.STAGES["maintain"]
    calls, starts = [], []

    def flaky(session, audited, missing=()):
        calls.append(1)
        starts.append(session.memory.weights_digest())  # the weights each attempt starts from
        if len(calls) == 1:
            with journal.stage(session, "maintain"):
                session.memory.refresh(session.ledger.list_facts()[1], [])  # a half-done attempt ...
                raise HomeBusyError("ledger briefly locked")  # ... then a transient failure
        return real(session, audited, missing)

    monkeypatch.setitem(pipeline.STAGES, "maintain", flaky)
    state = full_sleep(home=home, overrides=tiny_settings_overrides, return_state=True)
    assert state.is_completed()
    assert len(calls) == 2 and starts[0] == starts[1]
    [maintain_run] = task_runs(state.state_details.flow_run_id)["maintain"]
    assert maintain_run.run_count == 2


def test_permanent_error_fails_at_once_and_restores_the_home(harness, home, tiny_settings_overrides, monkeypatch):
    from sleepwake.flows.full_sleep import full_sleep

    before = digest_and_facts(home, tiny_settings_overrides)
    calls = []

    def broken(session, audited, missing=()):
        calls.append(1)
        session.memory.refresh(session.ledger.list_facts()[0], [])  # a change outside any stage snapshot
        raise CorruptedStateError("factor file damaged")

    monkeypatch.setitem(pipeline.STAGES, "maintain", broken)
    with pytest.raises(CorruptedStateError):
        full_sleep(home=home, overrides=tiny_settings_overrides)
    assert calls == [1]  # not retried
    assert digest_and_facts(home, tiny_settings_overrides) == before  # the pre-sleep snapshot came back
    assert SnapshotStore(Home.open(home).root).open_snapshots() == []


def test_busy_home_is_a_clear_error(harness, home, tiny_settings_overrides):
    from sleepwake.flows.nap import nap

    with Home.open(home).write_lock():
        with pytest.raises(SleepwakeError, match="busy"):
            nap(home=home, overrides=tiny_settings_overrides + ["sleep.lock_wait_s=0.2"])


def test_cli_sleep_prints_the_report_as_json(harness, home, tiny_settings_overrides, capsys):
    from sleepwake import cli

    args = ["sleep", "--home", home, "--json", "-q"] + [x for o in tiny_settings_overrides for x in ("--set", o)]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "full_sleep" and set(report["stage_seconds"]) >= {"health", "audit", "maintain"}
    status = ["status", "--home", home, "--json", "--no-perplexity"] + args[5:]
    assert cli.main(status) == 0
    level = json.loads(capsys.readouterr().out)["drowsiness"]
    # Right after a full sleep no fact is unslept: only the degraded share of the last audit counts.
    assert level["edit_pressure"] == 0.0 and level["level"] == level["degraded_share"]


def test_auto_sleep_after_inject_when_drowsy(harness, home, tiny_settings_overrides, capsys):
    from sleepwake import cli

    sets = [x for o in tiny_settings_overrides + ["sleep.auto=true", "health.wake_capacity=1"] for x in ("--set", o)]
    assert cli.main(["inject", "Eve Moreau", "The pet of {}", "parrot", "--home", home, "--json", "-q"] + sets) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auto_sleep"]["kind"] == "full_sleep"
    # The sleep reset the edit pressure: only the degraded share is left.
    assert cli.main(["status", "--home", home, "--json", "--no-perplexity"] + sets) == 0
    level = json.loads(capsys.readouterr().out)["drowsiness"]
    assert level["edit_pressure"] == 0.0


def test_every_flow_parameter_is_described_and_forms_show_their_defaults():
    from prefect.utilities.callables import parameter_schema

    from sleepwake.flows.experiments import FLOWS
    from sleepwake.flows.full_sleep import full_sleep
    from sleepwake.flows.memory_ops import forget, wake
    from sleepwake.flows.nap import nap
    from sleepwake.settings.experiment import FORM_FIELDS

    for flow in [full_sleep, nap, wake, forget, *FLOWS.values()]:
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        for name, field in schema["properties"].items():
            assert field.get("description"), f"{flow.name}: parameter {name!r} has no description"
    for name, flow in FLOWS.items():  # each experiment's form: its own fields, with their defaults
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        form = next(iter(d for d in schema["definitions"].values() if d["title"].endswith("Settings")))
        assert tuple(form["properties"]) == FORM_FIELDS[name]
        assert all("default" in field for field in form["properties"].values())
    sws = parameter_schema(full_sleep.fn).model_dump_for_openapi()["definitions"]["SwsConfig"]["properties"]
    assert sws["schedule"]["default"] == [1.0, 0.5, 0.1, 0.0]  # lists show their defaults in the form
