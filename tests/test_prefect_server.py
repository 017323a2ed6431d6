"""The deployment path end to end: a real local Prefect server, ``prefect.yaml`` deployed, a
process worker running one full sleep, and the run history read back (one task run per stage,
the stage artifacts). Marked slow. The server is the session's (conftest.prefect_server), shared
with the crash matrix.

Everything Prefect runs in subprocesses with the server's own PREFECT_HOME, so this test neither sees
nor touches the test harness of other modules or the user's Prefect state.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sleepwake.facts import Fact

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
STAGES = {"health_check", "snapshot", "curate", "audit", "maintain", "validate", "report"}

READ_BACK = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
run_id = sys.argv[1]
with get_client(sync_client=True) as client:
    flow_run = client.read_flow_run(run_id)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    artifacts = [a.key for a in client.read_artifacts() if str(a.flow_run_id) == run_id]
print(json.dumps({"state": flow_run.state.type.value, "tasks": [[t.name, t.state.type.value] for t in tasks],
                  "artifacts": artifacts}))
"""


def prefect(args: list[str], env: dict, timeout: float = 120) -> str:
    out = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def server(prefect_server, tmp_path_factory):
    """The session's real `prefect server`, the sleepwake work pool, and every deployment of prefect.yaml."""
    root = tmp_path_factory.mktemp("deployed")
    env = {**os.environ, **prefect_server, "SLEEPWAKE_CACHE": str(root / "cache")}
    prefect(["work-pool", "create", "sleepwake", "--type", "process", "--overwrite"], env)
    prefect(["--no-prompt", "deploy", "--all"], env, timeout=180)
    return env


def run_deployment(name: str, params: dict, env: dict) -> tuple[dict, str]:
    """Start a deployment run from the API, let one worker run it, read its history back."""
    started = prefect(["deployment", "run", name, "--params", json.dumps(params)], env)
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1)
    worker = subprocess.run([PREFECT, "worker", "start", "--pool", "sleepwake", "--run-once"], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=400)
    history = json.loads(subprocess.run([sys.executable, "-c", READ_BACK, run_id], env=env, capture_output=True,
                                        text=True, timeout=60, check=True).stdout)
    return history, worker.stdout[-3000:] + worker.stderr[-3000:]


@pytest.mark.slow
def test_deployed_full_sleep_on_a_real_server(server, tmp_path, tiny_settings_overrides, monkeypatch):
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    env = server
    monkeypatch.setenv("SLEEPWAKE_CACHE", env["SLEEPWAKE_CACHE"])
    torch.manual_seed(0)
    home = Home.open(tmp_path / "home")
    Memory.open(home, load_settings(None, tiny_settings_overrides)).inject(
        [Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki"),
         Fact(subject="Bruno Silva", relation="lives in", object="Lisbon")])
    listed = prefect(["deployment", "ls"], env)
    assert "full-sleep/nightly" in listed and "nap/periodic-nap" in listed
    for name in ("capacity", "consolidation-sweep"):  # the experiment flows deploy too (fails if missing)
        prefect(["deployment", "inspect", f"experiment-{name}/experiment-{name}"], env)
    history, log = run_deployment("full-sleep/on-demand", {"home": str(home.root), "overrides": tiny_settings_overrides}, env)
    assert history["state"] == "COMPLETED", log
    names = {name.rsplit("-", 1)[0] for name, _ in history["tasks"]}
    assert STAGES <= names, history
    assert all(state == "COMPLETED" for _, state in history["tasks"]), history
    assert {"full-sleep-audit", "full-sleep-validate", "full-sleep-report-note"} <= set(history["artifacts"])


SCHEMA = """
import json, sys
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name(sys.argv[1])
print(json.dumps(deployment.parameter_openapi_schema))
"""


@pytest.mark.slow
def test_wake_and_forget_from_the_api_and_a_missing_home_fails(server, tmp_path, tiny_settings_overrides):
    from sleepwake.storage import forgotten
    from sleepwake.storage.ledger import Ledger

    env = server
    home = tmp_path / "new-home"
    fact = {"subject": "Aria Nakamura", "relation": "The hometown of {}", "object": "Thessaloniki"}
    history, log = run_deployment("wake/on-demand", {"home": str(home), "facts": [fact], "create": True,
                                                     "overrides": tiny_settings_overrides}, env)
    assert history["state"] == "COMPLETED", log
    assert "wake-stored" in history["artifacts"]
    ledger = Ledger(home / "ledger.duckdb", read_only=True)
    assert [(r.subject, r.object) for r in ledger.list_facts()] == [("Aria Nakamura", "Thessaloniki")]
    history, log = run_deployment("forget/on-demand", {"home": str(home), "subject": "Aria Nakamura",
                                                       "relation": "The hometown of {}",
                                                       "overrides": tiny_settings_overrides}, env)
    assert history["state"] == "COMPLETED", log
    assert "forget-probes" in history["artifacts"]
    assert ledger.list_facts() == [] and len(forgotten.list_forgotten(ledger)) == 1
    missing = tmp_path / "memries"
    history, log = run_deployment("nap/periodic-nap", {"home": str(missing), "overrides": tiny_settings_overrides}, env)
    assert history["state"] == "FAILED" and "no sleepwake home" in log, log
    assert not missing.exists() or not (missing / "ledger.duckdb").exists()
    for name in ("wake/on-demand", "forget/on-demand", "full-sleep/on-demand", "nap/periodic-nap"):
        schema = json.loads(subprocess.run([sys.executable, "-c", SCHEMA, name], env=env, capture_output=True,
                                           text=True, timeout=60, check=True).stdout)
        undescribed = [key for key, prop in schema["properties"].items() if not prop.get("description")]
        assert undescribed == [], (name, undescribed)
