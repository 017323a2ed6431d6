"""Run an experiment with the plain sleep pipeline (no Prefect): the same stages, the same
journal and the same results.json as ``sleepwake experiment NAME``, without a Prefect server or
its packages, so a machine that has only the model stack (a rented GPU box, say) can run the
long experiments. Each sleep is ``sleep.pipeline.full_sleep`` over the stage functions, opened
as the flow opens it (``sleep.session.opened``: write lock, heap trimmed, run recorded).

Prints each measured row as one JSON line (with the accelerator's peak memory where there is
one), so a run cut short still shows what it measured; ``--resume`` continues after the last
finished night (longevity).

    .venv/bin/python benchmarks/experiment_plain.py longevity --out /tmp/runs/longevity \
        [--set model.device=cuda] [--resume]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import torch

from sleepwake.config import load_settings
from sleepwake.experiments.runner import run_experiment
from sleepwake.sleep import pipeline
from sleepwake.sleep.session import new_run_id, opened


def plain_sleeper(config: str | None):
    def sleep(home: str, overrides: Sequence[str]) -> dict:
        with opened(home, load_settings(config, list(overrides)), "full_sleep") as session:
            return pipeline.full_sleep(pipeline.plain(session)).summary()
    return sleep


def progress(table: str, row: dict) -> None:
    shown = {k: v for k, v in row.items() if not isinstance(v, list)}
    if torch.cuda.is_available():
        shown["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        torch.cuda.reset_peak_memory_stats()
    print(json.dumps({"table": table, "at": time.strftime("%H:%M:%S"), **shown}, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="experiment name (longevity, capacity, ...)")
    parser.add_argument("--out", required=True, help="output folder (homes, results.json, plots)")
    parser.add_argument("--config", default=None, help="preset name or YAML file (default: the default preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue after the last finished night")
    args = parser.parse_args(argv)
    result = run_experiment(args.name, args.out, args.config, args.overrides, plain_sleeper(args.config),
                            new_run_id(), progress, resume=args.resume)
    print(json.dumps({"done": args.name, "seconds": result.seconds, "summary": result.summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
