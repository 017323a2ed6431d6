"""Experiment tasks: one fanned-out sweep point, and publishing the results as artifacts."""

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sleepwake.experiments.summary import render_markdown
from sleepwake.experiments.sweeps import run_point_on


def sweep_point_for(lab):
    """The ``sweep-point`` task bound to one live lab. The lab (it holds loaded models) is captured
    by the closure rather than passed as an argument or found in a module-level registry, so
    Prefect records only the point's name, value and device."""
    @task(name="sweep-point", cache_policy=NO_CACHE, persist_result=False)
    def sweep_point(point_name: str, value: float, device: str) -> list[dict]:
        return run_point_on(lab, point_name, value, device)
    return sweep_point


@task(name="publish-experiment", cache_policy=NO_CACHE, persist_result=False)
def publish_experiment(results_json: str) -> None:
    path = Path(results_json)
    result = json.loads(path.read_text(encoding="utf-8"))
    key = f"experiment-{result['name']}"
    create_markdown_artifact(key=key, markdown=render_markdown(result, str(path.parent)), description=key)
    for table, rows in result["tables"].items():
        flat = [{k: v if not isinstance(v, (dict, list)) else json.dumps(v) for k, v in row.items()} for row in rows]
        if flat:
            create_table_artifact(key=f"{key}-{table}", table=flat, description=f"{result['name']}: {table}")
    for title, file in result["plots"].items():
        create_link_artifact(key=f"{key}-{file.removesuffix('.png').replace('_', '-')}",
                             link=(path.parent / file).resolve().as_uri(), link_text=title, description=title)
