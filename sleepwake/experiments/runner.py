"""Run one experiment by name: load the model once (lent to every sleep), run it, draw its plots,
write ``results.json`` and ``results.duckdb`` into the output folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from sleepwake.errors import InvalidInputError
from sleepwake.experiments import plots
from sleepwake.experiments.ablation import run_ablation
from sleepwake.experiments.capacity import run_capacity
from sleepwake.experiments.convergence import run_convergence
from sleepwake.experiments.lab import Lab, Progress, Sleeper
from sleepwake.experiments.forgetting import run_forgetting
from sleepwake.experiments.locality import run_locality
from sleepwake.experiments.longevity import run_longevity
from sleepwake.experiments.result import ExperimentResult, long_rows, write_json
from sleepwake.experiments.sweeps import run_consolidation_sweep, run_lambda_sweep

log = logging.getLogger(__name__)

EXPERIMENTS: dict[str, Callable[[Lab], ExperimentResult]] = {
    "capacity": run_capacity,
    "convergence": run_convergence,
    "lambda-sweep": run_lambda_sweep,
    "consolidation-sweep": run_consolidation_sweep,
    "longevity": run_longevity,
    "ablation": run_ablation,
    "locality": run_locality,
    "forgetting": run_forgetting,
}

# Experiments that follow one memory through its nights, whose key statistics grow as a user's
# would; every other experiment compares variants and holds them fixed (see fixed_statistics).
GROWING_STATISTICS = {"longevity"}


def fixed_statistics(name: str, config: str | None, overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus, for comparative experiments, ``memit.covariance_max_tokens`` pinned to
    ``covariance_tokens``: sleeps grow MEMIT's key statistics a slice a night, and a later variant
    would otherwise solve its wake and refresh with more tokens than an earlier one. A
    ``covariance_max_tokens`` given with --set is kept."""
    from sleepwake.config import load_settings

    named = any(o.split("=", 1)[0].strip() == "memit.covariance_max_tokens" for o in overrides)
    if name in GROWING_STATISTICS or named:
        return list(overrides)
    tokens = load_settings(config, list(overrides)).memit.covariance_tokens
    return [*overrides, f"memit.covariance_max_tokens={tokens}"]


def check_name(name: str) -> str:
    if name not in EXPERIMENTS:
        raise InvalidInputError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return name


def prepare_out(out: str | Path) -> Path:
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"--out {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_experiment(name: str, out: str | Path, config: str | None, overrides: Sequence[str], sleeper: Sleeper,
                   run_id: str, progress: Progress | None = None, fan_out: Callable | None = None,
                   resume: bool = False) -> ExperimentResult:
    """The whole experiment; ``sleeper`` runs one sleep of a home (the Prefect flow passes the
    full-sleep flow). Rows go to ``results.partial.json`` as they are measured; ``resume`` starts
    from an interrupted run's partial results (experiments that support it continue after them)."""
    from sleepwake.config import load_settings
    from sleepwake.memory import lending, load_backend

    check_name(name)
    out = prepare_out(out)
    overrides = fixed_statistics(name, config, overrides)
    settings = load_settings(config, list(overrides))
    started = time.perf_counter()
    backend = load_backend(settings)
    dumped = settings.model_dump(mode="json", by_alias=True)
    earlier, spent = load_partial(out, name, dumped) if resume else ({}, 0.0)
    measured: dict[str, list[dict]] = {table: list(rows) for table, rows in earlier.items()}

    def elapsed() -> float:  # the interrupted parts' seconds too: a resumed run's figure is the whole run's
        return round(spent + time.perf_counter() - started, 1)

    def track(table: str, row: dict) -> None:
        measured.setdefault(table, []).append(row)
        running = ExperimentResult(name, {"status": "running"}, measured, settings=dumped, seconds=elapsed())
        save_partial(running, out)  # a kill keeps every row
        if progress is not None:
            progress(table, row)

    lab = Lab(out, config, list(overrides), sleeper, track, backend, fan_out, earlier=earlier)
    try:
        with lending(settings, backend):
            result = EXPERIMENTS[name](lab)
    except BaseException as exc:  # keep what was measured: hours of work are not thrown away
        failed = ExperimentResult(name, {"error": f"{type(exc).__name__}: {exc}"}, measured, settings=dumped,
                                  seconds=elapsed())
        save_partial(failed, out)
        log.error("experiment %s failed; the rows measured so far are in %s", name, out / "results.partial.json")
        raise
    result.run_id = run_id
    result.seconds = elapsed()
    result.settings = settings.model_dump(mode="json", by_alias=True)
    result.plots = draw_plots(result, out)
    save(result, out)
    return result


def draw_plots(result: ExperimentResult, out: Path) -> dict[str, str]:
    tables, threshold = result.tables, result.settings.get("experiment", {}).get("recall_threshold", 0.9)
    drawn = {}
    if "trajectory" in tables:
        drawn["recall trajectory"] = plots.plot_trajectory(tables["trajectory"], out, threshold)
    if "cycles" in tables:
        drawn["per cycle"] = plots.plot_cycles(tables["cycles"], out, "cycle", "raw_recall_after", "degraded_after", "drift_after")
    if "nights" in tables:
        drawn["per night"] = plots.plot_nights(tables["nights"], out)
    if "points" in tables:
        drawn["lambda sweep"] = plots.plot_lambda(tables["points"], out)
    if "counts" in tables:
        drawn["consolidation sweep"] = plots.plot_consolidation(tables["counts"], out)
    if "pathways" in tables:
        drawn["ablation"] = plots.plot_ablation(tables["pathways"], out)
    sleeps = [row for rows in tables.values() for row in rows if row.get("stage_seconds")]
    hypnogram = plots.plot_hypnogram(sleeps, out)
    if hypnogram:
        drawn["hypnogram"] = hypnogram
    return drawn


def save_partial(result: ExperimentResult, out: Path) -> None:
    """``results.partial.json``: the rows measured so far (results.json is left alone), written
    atomically after every row."""
    path = out / "results.partial.json"
    try:
        staged = path.with_name(path.name + ".tmp")
        staged.write_text(json.dumps(result.as_dict(), indent=1, default=str) + "\n", encoding="utf-8")
        staged.replace(path)
    except OSError as exc:
        log.error("could not write the partial results (%s)", exc)


def load_partial(out: Path, name: str, settings: dict) -> tuple[dict[str, list[dict]], float]:
    """The tables of an interrupted run of ``name`` in ``out`` (nothing to resume: an error) and the seconds
    it ran until it stopped (its last save). The run must continue with its own settings: the facts each
    night draws depend on them."""
    path = out / "results.partial.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InvalidInputError(f"--resume: no readable {path} from an interrupted run") from None
    if data.get("name") != name:
        raise InvalidInputError(f"--resume: {path} belongs to experiment {data.get('name')!r}, not {name!r}")
    stored = data.get("settings") or {}
    changed = sorted(f"{section}.{key}" for section, values in stored.items() if isinstance(values, dict)
                     for key, value in values.items() if settings.get(section, {}).get(key) != value)
    if changed:
        raise InvalidInputError(f"--resume: the interrupted run used other settings ({', '.join(changed[:5])}); "
                                "resume with the same --config and --set options")
    return data.get("tables", {}), float(data.get("seconds") or 0.0)


def save(result: ExperimentResult, out: Path) -> None:
    from sleepwake.storage.results import record_run

    write_json(result, out)
    record_run(out / "results.duckdb", result.run_id, result.name, result.seconds,
               result.as_dict()["summary"], result.settings, long_rows(result))
    log.info("experiment %s finished in %.0f s; results in %s", result.name, result.seconds, out)
