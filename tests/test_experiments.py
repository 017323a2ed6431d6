"""The experiment flows on the tiny random Llama (mechanics: tables, files, DuckDB rows, artifacts,
subflows) and their plain parts (thresholds, plots, results database) without a model.

The tiny random model recalls few synthetic facts, so these tests check what the experiments
record, not the recall figures; docs/results.md holds those, measured on the bundled model.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from sleepwake.errors import InvalidInputError
from sleepwake.experiments import plots
from sleepwake.experiments.capacity import capacity_threshold
from sleepwake.experiments.lab import sleep_row
from sleepwake.experiments.longevity import declining
from sleepwake.experiments.result import ExperimentResult, long_rows, write_json

PNG = b"\x89PNG\r\n\x1a\n"


def trajectory(recalls):
    return [{"facts": i, "recall": r, "degraded": 0} for i, r in enumerate(recalls, 1)]


# ---- plain parts --------------------------------------------------------------------------------

def test_capacity_threshold_matches_paper_5_reading():
    # Paper 5, table 3 (Llama-3.1-8B): recall 0.923 at 13 facts, 0.571 at 14 -> capacity 13.
    points = trajectory([1.0] * 12 + [0.923, 0.571, 0.9])
    assert capacity_threshold(points, 0.9) == 13
    assert capacity_threshold(trajectory([1.0, 1.0, 1.0]), 0.9) == 3  # never fell: all of them
    assert capacity_threshold(trajectory([0.0, 1.0]), 0.9) is None


def test_declining_needs_a_run_of_falls_not_one_dip():
    assert declining([1.0, 0.9, 0.8, 0.7])
    assert not declining([1.0, 0.9, 1.0, 0.95])
    assert not declining([1.0, 0.9])


def test_results_json_has_no_nan_and_cells_cover_every_value(tmp_path):
    result = ExperimentResult("capacity", {"drift": math.nan, "ok": True},
                              {"trajectory": [{"facts": 1, "recall": 0.5, "fact": "A is B", "stage_seconds": {"x": 1}}]})
    write_json(result, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"]["drift"] is None
    cells = {(c[2]): c for c in long_rows(result)}
    assert cells["recall"][3] == 0.5 and cells["fact"][4] == '"A is B"' and cells["stage_seconds"][4] == '{"x": 1}'


def test_results_database_appends_runs(tmp_path):
    from sleepwake.storage.results import record_run, runs

    for run_id in ("r1", "r2"):
        record_run(tmp_path / "results.duckdb", run_id, "capacity", 1.5, {"capacity": 13}, {}, [("t", 0, "recall", 1.0, None)])
    assert [r["run_id"] for r in runs(tmp_path / "results.duckdb")] == ["r1", "r2"]


def test_every_plot_is_a_png(tmp_path):
    sleep = {"stage_seconds": {"health": 1.0, "audit": 2.0, "maintain": 3.0, "sws": 4.0, "rem": 1.0, "report": 0.1}}
    cycles = [{"phase": "A", "cycle": 1, "raw_recall_after": 0.9, "degraded_after": 1, "drift_after": 0.01, **sleep},
              {"phase": "B", "cycle": 1, "raw_recall_after": 1.0, "degraded_after": 0, "drift_after": None, **sleep}]
    files = [
        plots.plot_trajectory(trajectory([1.0, 0.8]), tmp_path, 0.9),
        plots.plot_cycles(cycles, tmp_path, "cycle", "raw_recall_after", "degraded_after", "drift_after"),
        plots.plot_lambda([{"lambda": 0.0, "raw": 1.0, "chat": 0.5, "drift": 0.02},
                           {"lambda": 1.0, "raw": 0.5, "chat": 0.2, "drift": 0.001}], tmp_path),
        plots.plot_consolidation([{"facts": 5, "cycle": 0, "chat": 0.4, "drift": 0.0},
                                  {"facts": 5, "cycle": 1, "chat": 0.9, "advanced_2plus": 0.2, "drift": 0.02}], tmp_path),
        plots.plot_ablation([{"sleep": "SWS", "pathway": "both", "raw": 1.0, "chat": 0.9, "drift": 0.02}], tmp_path),
        plots.plot_hypnogram([sleep, sleep], tmp_path),
    ]
    for name in files:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert plots.plot_hypnogram([{"stage_seconds": {}}], tmp_path) is None


def test_form_section_round_trips_through_overrides():
    from sleepwake.config import load_settings
    from sleepwake.settings.experiment import ExperimentConfig
    from sleepwake.flows.experiments import section_overrides

    form = ExperimentConfig(max_facts=7, lambdas=[1.0e-2, 2.0], maintenance_sleep=[], wave_facts=None)
    assert load_settings(None, section_overrides(form)).experiment == form


@pytest.mark.parametrize("argv, message", [
    (["experiment", "nope", "--out", "X"], "invalid choice"),
    (["experiment", "capacity", "--out", "X", "--set", "experiment.lambdas=[]"], "lambdas"),
    (["experiment", "capacity", "--out", "FILE"], "not a folder"),
])
def test_bad_experiment_input_is_one_line(tmp_path, capsys, argv, message):
    from sleepwake.cli import main

    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a in ("X", "FILE") else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors exit from the parser
        code = exc.code
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "X").exists()  # nothing created for a refused run


# ---- a lent backend never leaks one home's weights into another -----------------------------------

def test_lent_backend_resets_modules_another_home_changed(tmp_path, tiny_settings, cache_env, one_thread):
    from sleepwake.memory import Memory, lending, load_backend
    from sleepwake.storage.home import Home

    backend = load_backend(tiny_settings)
    name = "model.layers.0.self_attn.q_proj"
    out_dim, in_dim = backend.module_weight(name).shape
    with lending(tiny_settings, backend):
        first = Memory.open(Home.open(tmp_path / "a"), tiny_settings)
        first.store_adapter("sws", None, {name: (torch.randn(out_dim, 2), torch.randn(in_dim, 2))})
        assert not torch.equal(backend.module_weight(name), backend.pristine_weight(name))
        second = Memory.open(Home.open(tmp_path / "b"), tiny_settings)
        assert second.backend is backend
    assert torch.equal(backend.module_weight(name), backend.pristine_weight(name))
    fresh = Memory.open(Home.open(tmp_path / "b"), tiny_settings, writable=False, backend=load_backend(tiny_settings))
    assert fresh.weights_digest() == second.weights_digest()


# ---- the flows (one Prefect test API for the module) ----------------------------------------------

@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


def artifacts_of(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if str(a.flow_run_id) == str(flow_run_id)}


def child_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def cells(out, experiment: str, table: str, column: str) -> list:
    import duckdb

    con = duckdb.connect(str(out / "results.duckdb"), read_only=True)
    try:
        return con.execute("SELECT value FROM experiment_cells WHERE experiment = ? AND tbl = ? AND col = ? "
                           "ORDER BY row_index", [experiment, table, column]).fetchall()
    finally:
        con.close()


def test_capacity_writes_a_20_point_trajectory_plot_rows_and_artifacts(harness, tmp_path, tiny_settings_overrides,
                                                                      cache_env, one_thread, capsys):
    from sleepwake.cli import main

    out = tmp_path / "capacity"
    args = ["experiment", "capacity", "--out", str(out), "--json", "-q", "--set", "experiment.max_facts=20"]
    assert main(args + [a for o in tiny_settings_overrides for a in ("--set", o)]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "results.json").read_text())
    points = result["tables"]["trajectory"]
    assert [p["facts"] for p in points] == list(range(1, 21)) and printed["summary"] == result["summary"]
    assert all(0.0 <= p["recall"] <= 1.0 and p["degraded"] == p["facts"] - round(p["recall"] * p["facts"]) for p in points)
    assert (out / "recall_trajectory.png").read_bytes()[:8] == PNG
    assert len(cells(out, "capacity", "trajectory", "recall")) == 20
    assert result["summary"]["capacity"] == capacity_threshold(points, 0.9)
    from sleepwake.storage.results import runs

    [run] = runs(out / "results.duckdb")
    assert {"experiment-capacity", "experiment-capacity-trajectory", "experiment-capacity-recall-trajectory"} <= artifacts_of(run["run_id"])


def test_convergence_runs_both_phases_with_sleeps_as_subflows(harness, tmp_path, tiny_settings_overrides, cache_env, one_thread):
    from sleepwake.flows.experiments import convergence

    out = tmp_path / "convergence"
    state = convergence(out=str(out), overrides=tiny_settings_overrides + [
        "experiment.phase_a_max_facts=3", "experiment.wave_facts=2", "experiment.max_cycles=1"], return_state=True)
    report = state.result()
    result = json.loads((out / "results.json").read_text())
    assert [r["phase"] for r in result["tables"]["cycles"]] == ["A", "B"]
    assert [p["phase"] for p in result["tables"]["trajectory"]].count("B") == 2
    assert report["summary"]["phase_b_facts"] == 2
    sleeps = [r for r in child_runs(state.state_details.flow_run_id) if r.name and r.flow_id]
    assert len(sleeps) == 2  # each sleep is a full-sleep flow run under the experiment
    for name in ("recall_trajectory.png", "cycles.png", "hypnogram.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_ablation_copies_start_from_the_same_weights(harness, tmp_path, tiny_settings_overrides, cache_env, one_thread):
    """Both sleeps start from copies of one wake home: with one lent model, the second copy's
    pre-sleep audit must not see the first copy's adapters."""
    from sleepwake.flows.experiments import ablation

    out = tmp_path / "ablation"
    ablation(out=str(out), overrides=tiny_settings_overrides + ["experiment.ablation_facts=2"])
    result = json.loads((out / "results.json").read_text())
    sws, both = result["tables"]["sleeps"]
    assert sws["raw_recall_before"] == both["raw_recall_before"] and sws["perplexity_before"] == both["perplexity_before"]
    assert [(r["sleep"], r["pathway"]) for r in result["tables"]["pathways"]][:4] == [
        ("none", "MEMIT only"), ("SWS", "MEMIT only"), ("SWS", "LoRA only"), ("SWS", "both")]
    assert (out / "ablation.png").exists() and (out / "hypnogram.png").exists()


def test_lambda_sweep_fans_out_points_as_tasks(harness, tmp_path, tiny_settings_overrides, cache_env, one_thread):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from sleepwake.flows.experiments import lambda_sweep

    out = tmp_path / "lambda"
    state = lambda_sweep(out=str(out), overrides=tiny_settings_overrides + [
        "experiment.lambdas=[1.0e-2, 1.0]", "experiment.sweep_facts=2", "experiment.devices=[cpu, cpu]"], return_state=True)
    state.result()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    swept = [t for t in tasks if t.name.startswith("sweep-point")]
    # The lab (it holds the loaded model) is bound to the task, never one of its recorded inputs.
    assert len(swept) == 2 and all(set(t.task_inputs) == {"point_name", "value", "device"} for t in swept)
    points = json.loads((out / "results.json").read_text())["tables"]["points"]
    assert [p["lambda"] for p in points] == [1.0e-2, 1.0] and all(p["facts"] == 2 for p in points)


def test_consolidation_sweep_and_longevity_tables(harness, tmp_path, tiny_settings_overrides, cache_env, one_thread):
    from sleepwake.flows.experiments import consolidation_sweep, longevity

    out = tmp_path / "sweep"
    consolidation_sweep(out=str(out), overrides=tiny_settings_overrides + ["experiment.fact_counts=[2]", "experiment.cycles=1"])
    rows = json.loads((out / "results.json").read_text())["tables"]["counts"]
    assert [(r["facts"], r["cycle"]) for r in rows] == [(2, 0), (2, 1)] and "stage_seconds" in rows[1]
    out = tmp_path / "longevity"
    report = longevity(out=str(out), overrides=tiny_settings_overrides + ["experiment.days=2", "experiment.facts_per_day=2"])
    nights = json.loads((out / "results.json").read_text())["tables"]["nights"]
    assert [(n["night"], n["facts"]) for n in nights] == [(1, 2), (2, 4)]
    assert all(n["peak_rss_gb"] > 0 and n["home_bytes"] > 0 and "sws" in n["stage_seconds"] for n in nights)
    assert all(n["sws_gated"] == n["facts"] and n["sws_train_steps"] > 0 for n in nights), nights  # from the ledger
    assert report["summary"]["nights"] == 2 and (out / "longevity-nights.png").exists()


def test_longevity_resumes_after_its_last_finished_night(tmp_path, tiny_settings_overrides, cache_env, one_thread):
    """No Prefect here: the plain runner, with a sleeper that dies in night 2 and then works."""
    from sleepwake.experiments.runner import run_experiment
    from sleepwake.memory import Memory
    from sleepwake.sleep import pipeline
    from sleepwake.sleep.session import SleepSession
    from sleepwake.storage.home import Home

    overrides = tiny_settings_overrides + ["experiment.days=2", "experiment.facts_per_day=2"]
    calls, slept = [], []

    def sleeper(home, extra, fail_on=None):
        calls.append(home)
        if len(calls) == fail_on:
            raise RuntimeError("killed")
        from sleepwake.config import load_settings

        begin = time.perf_counter()
        memory = Memory.open(Home.open(home), load_settings(None, list(extra)))
        summary = pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep"))).summary()
        slept.append(time.perf_counter() - begin)
        return summary

    with pytest.raises(RuntimeError, match="killed"):
        run_experiment("longevity", tmp_path, None, overrides, lambda h, e: sleeper(h, e, fail_on=2), "run-1")
    partial = json.loads((tmp_path / "results.partial.json").read_text())
    assert [n["night"] for n in partial["tables"]["nights"]] == [1]
    # Other settings would draw other facts for the nights to come: refused, and nothing is lost.
    with pytest.raises(InvalidInputError, match="experiment.days"):
        run_experiment("longevity", tmp_path, None, [*overrides, "experiment.days=3"], sleeper, "run-x", resume=True)
    # The run's seconds are the interrupted part's, as saved when it stopped, plus the resumed part's. The saved
    # figure is set far above anything measured here, so a run that counted only the resumed part cannot pass.
    assert partial["seconds"] > 0
    saved = json.loads((tmp_path / "results.partial.json").read_text())
    assert saved == partial  # the refused resume wrote nothing
    (tmp_path / "results.partial.json").write_text(json.dumps({**saved, "seconds": 1000.0}))
    before = time.perf_counter()
    result = run_experiment("longevity", tmp_path, None, overrides, sleeper, "run-2", resume=True)
    segment = time.perf_counter() - before
    nights = result.tables["nights"]
    assert [(n["night"], n["facts"]) for n in nights] == [(1, 2), (2, 4)]
    assert nights[0] == partial["tables"]["nights"][0]  # night 1 was not run again
    # The resumed part holds at least its own sleep (night 2's, the last one timed), at most the whole call; the
    # figure is rounded to 0.1 s. Its plots are drawn after it is taken, so the call's time bounds it from above only.
    assert 1000.0 + slept[-1] - 0.1 <= result.seconds <= 1000.0 + segment + 0.1
    assert len(calls) == 3  # night 1, the killed night 2, night 2 again


def test_a_failed_experiment_keeps_the_rows_measured_so_far(tmp_path, tiny_settings_overrides, cache_env, one_thread):
    """No Prefect here: the plain runner with a sleeper that fails like a crashed sleep would."""
    from sleepwake.experiments.runner import run_experiment

    def failing_sleep(home, overrides):
        raise RuntimeError("the sleep failed")

    with pytest.raises(RuntimeError, match="the sleep failed"):
        run_experiment("convergence", tmp_path, None, tiny_settings_overrides + ["experiment.phase_a_max_facts=2"],
                       failing_sleep, "run-1")
    partial = json.loads((tmp_path / "results.partial.json").read_text())
    assert partial["summary"]["error"] == "RuntimeError: the sleep failed" and not (tmp_path / "results.json").exists()
    assert [p["facts"] for p in partial["tables"]["trajectory"]] == [1, 2]  # phase A's wake, measured before the sleep


def test_pools_are_drawn_once_per_size(tmp_path):
    """Waves slice one pool: tracking "every fact injected so far" needs a stable prefix."""
    from sleepwake.experiments.convergence import convergence_pool
    from sleepwake.experiments.lab import Lab
    from sleepwake.factpool import generate_pool

    lab = Lab(tmp_path, None, ["experiment.phase_a_max_facts=5", "experiment.wave_facts=3"], sleeper=None)
    pool = convergence_pool(lab)
    assert len(pool) == 8 and convergence_pool(lab) is pool and pool == generate_pool(8, seed=1)
    assert len({p.subject for p in pool}) == 8


def test_forgetting_experiment_steps(tmp_path, tiny_settings_overrides, cache_env, one_thread):
    """The plain runner with the plain full sleep: the steps, the probes counted, the update."""
    from sleepwake.experiments.runner import run_experiment
    from sleepwake.memory import Memory
    from sleepwake.sleep import pipeline
    from sleepwake.sleep.session import SleepSession
    from sleepwake.storage.home import Home

    def sleeper(home, extra):
        from sleepwake.config import load_settings

        memory = Memory.open(Home.open(home), load_settings(None, list(extra)))
        return pipeline.full_sleep(pipeline.plain(SleepSession(memory, "full_sleep"))).summary()

    overrides = tiny_settings_overrides + ["experiment.forget_facts=4", "experiment.forget_count=1",
                                           "experiment.forget_sleeps=1"]
    result = run_experiment("forgetting", tmp_path, None, overrides, sleeper, "run-1")
    steps = result.tables["steps"]
    assert [s["step"] for s in steps] == ["sleep 1", "forgotten", "sleep 1 after forgetting", "updated, slept"]
    assert steps[1]["facts"] == 3 and steps[1]["forgotten_probes"] >= 3  # raw, paraphrases, chat
    assert "forget_drift" in steps[1] and {"new_raw", "old_raw", "new_chat", "old_chat"} <= set(steps[-1])
    assert result.summary["forgotten"] == 1 and (tmp_path / "results.json").exists()


def test_comparative_experiments_hold_the_key_statistics_fixed():
    """Sleeps grow MEMIT's key statistics; a sweep's later variants must not solve with more."""
    from sleepwake.experiments.runner import fixed_statistics

    assert fixed_statistics("locality", None, ["memit.covariance_tokens=2048"]) == [
        "memit.covariance_tokens=2048", "memit.covariance_max_tokens=2048"]
    assert fixed_statistics("ablation", None, []) == ["memit.covariance_max_tokens=4096"]
    assert fixed_statistics("longevity", None, []) == []  # one memory's lifetime: they grow
    assert fixed_statistics("locality", None, ["memit.covariance_max_tokens = 8192"]) == [
        "memit.covariance_max_tokens = 8192"]  # the user's choice stands


def test_the_plain_runner_runs_an_experiment_without_prefect(tmp_path, tiny_settings_overrides, cache_env, one_thread, capsys):
    """benchmarks/experiment_plain.py: the full sleep through the stage functions under the home's
    write lock, one JSON line per night, the same results.json as the flow."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "experiment_plain.py"
    spec = importlib.util.spec_from_file_location("experiment_plain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    overrides = [*tiny_settings_overrides, "experiment.days=2", "experiment.facts_per_day=1"]
    assert module.main(["longevity", "--out", str(tmp_path), *[a for o in overrides for a in ("--set", o)]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["night"] for row in lines if row.get("table") == "nights"] == [1, 2]
    nights = json.loads((tmp_path / "results.json").read_text())["tables"]["nights"]
    assert [(n["night"], n["facts"]) for n in nights] == [(1, 1), (2, 2)]
    assert all(n["outcome"] in ("kept", "rolled_back") and "sws" in n["stage_seconds"] for n in nights)


def test_the_token_count_of_an_sws_step_adds_memory_anchors_once_a_fact_is_consolidated(
        tmp_path_factory, tiny_settings_overrides, cache_env, one_thread):
    """benchmarks/sws_tokens.py on a tiny home: a step's tokens are its parts' sum, the chat template's
    opening counted where a sequence starts with it, and memory anchors only once a fact is consolidated."""
    import importlib.util
    from pathlib import Path

    from conftest import mixed_facts, seed_home
    from sleepwake.storage.home import Home
    from sleepwake.storage.ledger import Ledger

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "sws_tokens.py"
    spec = importlib.util.spec_from_file_location("sws_tokens", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    home = seed_home(tmp_path_factory, tiny_settings_overrides, mixed_facts(), "tokens")
    fresh = module.count(str(home), 64, tiny_settings_overrides)
    assert fresh["facts"] == 3 and fresh["memory anchors"] == 0 and fresh["opening_tokens"] > 0
    assert fresh["step_tokens"] == pytest.approx(fresh["examples"] + fresh["pool anchors"], abs=0.2)
    assert 0 < fresh["template_tokens"] < fresh["step_tokens"]
    ledger = Ledger(Home.open(home).db_path)
    ledger.set_stage(ledger.list_facts()[0].fact_id, 1)
    later = module.count(str(home), 64, tiny_settings_overrides)
    assert later["memory anchors"] > 0 and later["pool anchors"] == fresh["pool anchors"]  # (the replay grew too)
    assert later["without_memory_anchors"] == pytest.approx(later["step_tokens"] - later["memory anchors"], abs=0.2)
    assert later["computed_with_shared_opening"] == pytest.approx(
        later["step_tokens"] - later["template_tokens"] + later["opening_tokens"], abs=0.2)


def test_a_sleep_row_keeps_the_scale_sws_kept_its_adapters_at():
    """Night 3 of the seed=1 500-fact run kept its SWS pass at scale 0.7 (its log says so) and its
    longevity row said null: the experiments' copy of the report had left the field out."""
    row = sleep_row({"outcome": "kept", "sws_accepted": True, "sws_scale": 0.7, "stage_seconds": {"total": 12.0}})
    assert row["sws_scale"] == 0.7 and row["seconds"] == 12.0
