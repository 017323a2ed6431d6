"""sleepwake as a real package: the wheel builds, installs outside the repository, and runs from
another directory with its presets and data inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True, text=True, timeout=600)
    [wheel] = dist.glob("sleepwake-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The wheel's copy first on the path, the repository nowhere: its presets and data must be inside it.
    env = {**os.environ, "PYTHONPATH": str(target), "SLEEPWAKE_HOME": str(tmp_path / "home")}
    where = subprocess.run([sys.executable, "-c", "import sleepwake, sleepwake.config as c; "
                            "print(sleepwake.__file__); print(c.PRESETS_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    script = target / "bin" / "sleepwake"
    status = subprocess.run([str(script), "status", "--json", "--no-perplexity"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=600)
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["facts"] == 0
    listed = subprocess.run([str(script), "config", "list", "--json"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, check=True)
    assert "default" in json.loads(listed.stdout)["presets"]
    version = subprocess.run([str(script), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert version.stdout.startswith("sleepwake ")
