"""Regenerate the measured tables in docs/results.md from the committed docs/results/*.json.

Each ``docs/results/NAME.json`` is an experiment's ``results.json`` (copied from its ``--out``
folder). The text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in
docs/results.md is replaced by its table (the columns below), so a figure in the docs is the
figure the run wrote. ``tests/test_config.py`` fails when the page is stale.

    .venv/bin/python scripts/results_docs.py [--plots]

``--plots`` also draws each partial longevity run's per-night plot (two nights or more) (a finished run's experiment
draws its own) as ``docs/plots/NAME-nights.png``, with the experiment's own plotting function.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "results.md"
PLOTS = ROOT / "docs" / "plots"
RESULTS = ROOT / "docs" / "results"
COLUMNS = {
    "longevity": ("nights", ["night", "facts", "raw", "chat", "chat_held_out", "drift", "locality", "leak", "outcome",
                             "audited", "stage_0", "stage_1", "stage_2", "stage_3", "adapters", "home_bytes",
                             "sleep_seconds", "peak_rss_gb", "sws_trained", "sws_relearned", "settled_relearned", "settled_held",
                             "sws_repaired", "lora_chat", "sws_train_steps", "sws_seconds", "sws_train_seconds",
                             "sws_gate_seconds"]),
    "forgetting": ("steps", ["step", "raw", "chat", "forgotten_probes", "forgotten_raw_hits", "forgotten_paraphrase_hits",
                             "forgotten_chat_hits", "forget_drift", "updated", "updated_consolidated", "new_raw", "new_chat",
                             "old_raw", "old_chat", "drift", "outcome"]),
    "locality": ("variants", ["variant", "cycle", "raw", "chat", "drift", "locality", "greedy_unchanged", "leak",
                              "stage_1", "outcome"]),
}
# Columns read from a row's nested figures: column -> (row field, stage, part or None for the stage's whole).
NESTED = {"sws_seconds": ("stage_seconds", "sws", None), "sws_train_seconds": ("part_seconds", "sws", "train"),
          "sws_gate_seconds": ("part_seconds", "sws", "gate")}
# An earlier run of the same experiment, kept beside the current one for comparison.
COLUMNS |= {f"{name}-previous": spec for name, spec in list(COLUMNS.items())}


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def value(row: dict, column: str):
    if column not in NESTED:
        return row.get(column)
    field, stage, part = NESTED[column]
    figure = (row.get(field) or {}).get(stage)
    return figure if part is None or figure is None else figure.get(part)


def spec(name: str) -> tuple[str, list[str]]:
    """The columns of ``name``; a partial run (``partial/longevity500-…``) takes its experiment's."""
    stem = name.removeprefix("partial/")
    return COLUMNS.get(stem) or next(columns for known, columns in COLUMNS.items() if stem.startswith(known))


def table(name: str, result: dict) -> str:
    key, columns = spec(name)
    rows = result["tables"][key]
    present = [c for c in columns if any(c in row or value(row, c) is not None for row in rows)]
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    lines += ["| " + " | ".join(cell(value(row, c)) for c in present) + " |" for row in rows]
    seconds = f"{result['seconds']:.0f} s" if result.get("seconds") else ""
    if name.startswith("partial/") or not seconds:  # a partial run's seconds (a resume adds them up): so far
        seconds = f"{len(rows)} finished so far: a partial run" + (f", {seconds}" if seconds else "")
    source = f"`docs/results/{name}.json`, {seconds}"
    return "\n".join(lines) + f"\n\n({source})"


def render(text: str | None = None) -> str:
    text = PAGE.read_text(encoding="utf-8") if text is None else text
    for path in [*sorted(RESULTS.glob("*.json")), *sorted(RESULTS.glob("partial/longevity*.json"))]:
        name = path.relative_to(RESULTS).with_suffix("").as_posix()
        block = table(name, json.loads(path.read_text(encoding="utf-8")))
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
    return text


def draw_partial_plots(results: Path = RESULTS, plots: Path = PLOTS) -> list[Path]:
    """``docs/plots/NAME-nights.png`` for each ``docs/results/partial/longevity*.json`` of two or
    more nights (one night is a row of the table, not a trend)."""
    from sleepwake.experiments.plots import plot_nights

    written = []
    for path in sorted(results.glob("partial/longevity*.json")):
        rows = json.loads(path.read_text(encoding="utf-8"))["tables"]["nights"]
        if len(rows) < 2:
            continue
        with tempfile.TemporaryDirectory() as tmp:  # the plot's fixed file name, renamed per run
            drawn = Path(tmp) / plot_nights(rows, Path(tmp))
            target = plots / f"{path.stem}-nights.png"
            target.write_bytes(drawn.read_bytes())
        written.append(target)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plots", action="store_true", help="also draw each partial longevity run's plot")
    args = parser.parse_args()
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE}")
    for target in draw_partial_plots() if args.plots else []:
        print(f"wrote {target}")
