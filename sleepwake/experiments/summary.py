"""An experiment's results as markdown: the summary, each table, the plots (CLI text output and
the Prefect markdown artifact)."""

from __future__ import annotations

import json

MAX_ROWS = 60  # a long trajectory is summarised in the artifact; results.json has every row


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)[:80]
    return str(value)


def table_markdown(rows: list[dict]) -> str:
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in ("stage_seconds", "stage_peak_rss_gb", "part_seconds")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"\n({len(rows) - MAX_ROWS} more rows in results.json)")
    return "\n".join(lines)


def render_markdown(result: dict, out: str) -> str:
    parts = [f"# Experiment {result['name']} ({result['seconds']:.0f} s)", "",
             "| figure | value |", "|---|---|"]
    parts += [f"| {key} | {cell(value)} |" for key, value in result["summary"].items()]
    for name, rows in result["tables"].items():
        if rows:
            parts += ["", f"## {name}", "", table_markdown(rows)]
    if result.get("plots"):
        parts += ["", "## plots", ""] + [f"- {title}: `{out}/{file}`" for title, file in result["plots"].items()]
    return "\n".join(parts)
