"""What an experiment produces: tables of rows, a flat summary, plot files; written as
``results.json`` and into ``results.duckdb`` (long form, queryable by SQL) in the output folder."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ExperimentResult:
    name: str
    summary: dict
    tables: dict[str, list[dict]]
    settings: dict = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)  # plot name -> PNG file name in the output folder
    seconds: float = 0.0
    run_id: str = ""

    def as_dict(self) -> dict:
        return _finite(asdict(self))


def _finite(value):
    """JSON has no NaN/inf: such a figure (e.g. no perplexity measured) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(result: ExperimentResult, out: Path) -> Path:
    """Write ``results.json`` atomically: a killed run never leaves half a file."""
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.as_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def long_rows(result: ExperimentResult) -> list[tuple]:
    """(table, row index, column, number, text) for every cell: one shape for every experiment."""
    cells = []
    for table, rows in result.tables.items():
        for index, row in enumerate(rows):
            for column, value in row.items():
                number = float(value) if isinstance(value, (int, float)) else None  # bools too (0/1)
                text = None if number is not None else json.dumps(_finite(value), default=str)
                cells.append((table, index, column, number, text))
    return cells
