"""The experiment flows: ``experiment-capacity``, ``-convergence``, ``-lambda-sweep``,
``-consolidation-sweep``, ``-longevity``, ``-ablation``.

Each is a Prefect flow with the same parameters (output folder, preset, overrides, and the
``experiment`` settings as a UI form). Every sleep an experiment runs is the real full-sleep flow,
called as a subflow, so its per-stage history shows under the experiment's run. At the end a
task publishes the tables, the summary and links to the PNG plots as artifacts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from sleepwake.config import load_settings
from sleepwake.experiments.runner import run_experiment
from sleepwake.settings.experiment import (
    AblationSettings, CapacitySettings, ConsolidationSweepSettings, ConvergenceSettings, LambdaSweepSettings,
    ForgettingSettings, LocalitySettings, LongevitySettings,
)
from sleepwake.flows.full_sleep import full_sleep
from sleepwake.sleep.session import new_run_id
from sleepwake.tasks.experiment import publish_experiment, sweep_point_for


def section_overrides(experiment: BaseModel | None) -> list[str]:
    """The UI form (one experiment's fields) as ``experiment.*`` overrides (JSON values read as YAML)."""
    if experiment is None:
        return []
    return [f"experiment.{key}={json.dumps(value)}" for key, value in experiment.model_dump().items()]


def _sleeper(config: str | None):
    def sleep(home: str, overrides) -> dict:
        return full_sleep(home=home, config=config, overrides=list(overrides))
    return sleep


def _progress(table: str, row: dict) -> None:
    shown = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    try:
        get_run_logger().info("%s: %s", table, json.dumps(shown, default=str))
    except Exception:  # outside a run context (a plain call in a test): the module logger
        logging.getLogger(__name__).info("%s: %s", table, shown)


def _fan_out(devices: list[str]):
    """Run a sweep's points through Prefect tasks, as many at once as there are distinct devices."""
    def fan_out(lab, point, values: list) -> list[list[dict]]:
        sweep_point = sweep_point_for(lab)
        distinct = list(dict.fromkeys(devices))  # a device named twice still runs one point at a time
        results = []
        for start in range(0, len(values), len(distinct)):
            chunk = values[start:start + len(distinct)]
            futures = [sweep_point.submit(point.__name__, value, device) for value, device in zip(chunk, distinct)]
            results += [future.result() for future in futures]
        return results
    return fan_out


def run(name: str, out: str, config: str | None, overrides: list[str] | None, experiment: BaseModel | None,
        resume: bool = False) -> dict:
    overrides = [*(overrides or []), *section_overrides(experiment)]
    devices = load_settings(config, overrides).experiment.devices
    run_id = str(flow_run.id or new_run_id())
    result = run_experiment(name, out, config, overrides, _sleeper(config), run_id, _progress,
                            _fan_out(devices) if len(devices) > 1 else None, resume=resume)
    publish_experiment(str(Path(out).expanduser() / "results.json"))
    return {"experiment": name, "out": str(out), "seconds": result.seconds, "summary": result.summary,
            "plots": result.plots}


_RUNNER = ThreadPoolTaskRunner(max_workers=8)  # only sweeps with experiment.devices submit tasks


@flow(name="experiment-capacity", persist_result=False, log_prints=True, task_runner=_RUNNER)
def capacity(out: str, config: str | None = None, overrides: list[str] | None = None,
             experiment: CapacitySettings | None = None) -> dict:
    """Unconstrained wake, one fact at a time; recall of all after each; the capacity threshold.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("capacity", out, config, overrides, experiment)


@flow(name="experiment-convergence", persist_result=False, log_prints=True, task_runner=_RUNNER)
def convergence(out: str, config: str | None = None, overrides: list[str] | None = None,
                experiment: ConvergenceSettings | None = None) -> dict:
    """Paper 5's damage/recovery protocol: phase A (inject until degraded, sleep to convergence), phase B.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("convergence", out, config, overrides, experiment)


@flow(name="experiment-lambda-sweep", persist_result=False, log_prints=True, task_runner=_RUNNER)
def lambda_sweep(out: str, config: str | None = None, overrides: list[str] | None = None,
                 experiment: LambdaSweepSettings | None = None) -> dict:
    """memit.lambda_reg over experiment.lambdas: recall and perplexity drift.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("lambda-sweep", out, config, overrides, experiment)


@flow(name="experiment-consolidation-sweep", persist_result=False, log_prints=True, task_runner=_RUNNER)
def consolidation_sweep(out: str, config: str | None = None, overrides: list[str] | None = None,
                        experiment: ConsolidationSweepSettings | None = None) -> dict:
    """Fact counts x full sleeps: stage advancement, chat recall, perplexity.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("consolidation-sweep", out, config, overrides, experiment)


@flow(name="experiment-longevity", persist_result=False, log_prints=True, task_runner=_RUNNER)
def longevity(out: str, config: str | None = None, overrides: list[str] | None = None,
              experiment: LongevitySettings | None = None, resume: bool = False) -> dict:
    """Many nights of wake and the real full sleep: recall, drift, locality and cost per night.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value (one per row).
        experiment: The experiment settings (days = nights, facts_per_day).
        resume: Continue an interrupted run in the same folder after its last finished night.
    """
    return run("longevity", out, config, overrides, experiment, resume)


@flow(name="experiment-ablation", persist_result=False, log_prints=True, task_runner=_RUNNER)
def ablation(out: str, config: str | None = None, overrides: list[str] | None = None,
             experiment: AblationSettings | None = None) -> dict:
    """MEMIT only vs LoRA only vs both; SWS vs SWS+REM.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("ablation", out, config, overrides, experiment)


@flow(name="experiment-locality", persist_result=False, log_prints=True, task_runner=_RUNNER)
def locality(out: str, config: str | None = None, overrides: list[str] | None = None,
             experiment: LocalitySettings | None = None) -> dict:
    """Consolidation variants compared on recall, drift, locality and leak after full sleeps.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("locality", out, config, overrides, experiment)


@flow(name="experiment-forgetting", persist_result=False, log_prints=True, task_runner=_RUNNER)
def forgetting(out: str, config: str | None = None, overrides: list[str] | None = None,
               experiment: ForgettingSettings | None = None) -> dict:
    """Forget consolidated facts and probe them at once and after more sleeps; update others.

    Args:
        out: Output folder on the worker (results.json, results.duckdb, plots, the homes).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value, one per row (e.g. "memit.v_steps=30").
        experiment: This experiment's settings (the fields it reads; others keep the preset's values).
    """
    return run("forgetting", out, config, overrides, experiment)


FLOWS = {"capacity": capacity, "convergence": convergence, "lambda-sweep": lambda_sweep,
         "consolidation-sweep": consolidation_sweep, "longevity": longevity, "ablation": ablation, "locality": locality,
         "forgetting": forgetting}
