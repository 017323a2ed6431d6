"""Crash safety: a CLI process SIGKILLed at every crash point leaves a home that reads fine at
once and that the next writer repairs to a consistent state (every fact fully present or absent,
weights = base + ledger, a killed sleep undone byte for byte).

The crashing command runs as a real subprocess (``SLEEPWAKE_CRASH_AT``, see sleepwake/faults.py)
in its own process group against the session's Prefect server (conftest.prefect_server): the
killed run stays "Running" there, as it would on a user's server. The checks run
in-process through ``cli.main`` (same code as the command line, without paying a start-up each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from sleepwake import cli
from sleepwake.config import load_settings
from sleepwake.faults import POINTS
from sleepwake.memory import Memory
from sleepwake.sleep.journal import facts_fingerprint
from sleepwake.sleep.health import check_consistency
from sleepwake.storage.home import Home
from sleepwake.storage.snapshots import SnapshotStore
from conftest import mixed_facts, seed_home, shared_cache

FACTS = mixed_facts()
NEW = ["Eve Moreau", "The pet of {}", "parrot"]
# REM kept whatever it does to the random model, so the sleep holds two adapters to fold.
FOLDING = ["--set", "rem.max_ppl_increase=100.0", "--set", "rem.min_recall=0.0"]

# crash point -> (command, what the home must look like after repair)
CASES = {
    "inject:after-factor-file": (["inject", *NEW], "without-new"),
    "inject:after-ledger": (["inject", *NEW], "with-new"),
    "forget:before-ledger": (["forget", "Chen Okafor", "The job of {}"], "unchanged"),
    "forget:after-ledger": (["forget", "Chen Okafor", "The job of {}"], "without-chen"),
    "snapshot:before-manifest": (["sleep"], "pre-sleep"),
    "maintain:after-refresh": (["sleep"], "pre-sleep"),
    "adapter:after-file": (["sleep"], "pre-sleep"),
    "adapter:after-ledger": (["sleep"], "pre-sleep"),
    "fold:after-adapter": (["sleep", *FOLDING], "pre-sleep"),
    "sws:after-adapter": (["sleep"], "pre-sleep"),
    "sws:after-stages": (["sleep"], "pre-sleep"),
    "rem:after-adapter": (["sleep"], "pre-sleep"),
    "validate:before-verdict": (["sleep"], "pre-sleep"),
    "report:before-close": (["sleep"], "pre-sleep"),
    "restore:after-deltas": (["sleep", "--set", "validate.max_ppl_increase=0.0"], "pre-sleep"),
    "restore:after-ledger": (["sleep", "--set", "validate.max_ppl_increase=0.0"], "pre-sleep"),
}


def test_every_crash_point_is_covered():
    assert set(CASES) == set(POINTS)


@pytest.fixture(scope="module")
def env(tmp_path_factory, prefect_server):
    return {**os.environ, **prefect_server, "SLEEPWAKE_CACHE": str(shared_cache(tmp_path_factory)),
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, tiny_settings_overrides):
    return seed_home(tmp_path_factory, tiny_settings_overrides, FACTS, "crash")


@pytest.fixture
def case(seeded_home, tmp_path, tiny_settings_overrides, cache_env):
    """A copy of the seeded home, its settings and --set arguments, and its digest and facts before."""
    home = tmp_path / "home"
    shutil.copytree(seeded_home, home)
    settings = load_settings(None, tiny_settings_overrides)
    pre = Memory.open(Home.open(home), settings, writable=False)
    sets = [x for o in tiny_settings_overrides for x in ("--set", o)]
    return home, settings, sets, pre.weights_digest(), facts_fingerprint(pre)


def run_killed(args: list[str], env: dict, crash_at: str | None = None, after_s: float | None = None) -> int:
    """Run the CLI in its own process group; SIGKILL the whole group at the crash point or timer."""
    child_env = {**env, **({"SLEEPWAKE_CRASH_AT": crash_at} if crash_at else {})}
    proc = subprocess.Popen([sys.executable, "-m", "sleepwake.cli", *args, "-q"], env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        proc.wait(timeout=after_s if after_s is not None else 600)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = after_s is None  # a crash point never reached in time: not a kill at that point
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the crash itself (timer), and anything it started
    except ProcessLookupError:
        pass
    proc.wait()
    assert not timed_out, f"{args[0]} still ran after 600 s without reaching {crash_at}"
    return proc.returncode


def cli_json(args: list[str], capsys) -> dict:
    capsys.readouterr()
    code = cli.main([*args, "--json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def expected_state(kind: str, pre: list, settings) -> set:
    keys = {(row[1], row[2]) for row in pre}
    if kind == "with-new":
        return keys | {(NEW[0], NEW[1])}
    if kind == "without-chen":
        return keys - {("Chen Okafor", "The job of {}")}
    return keys


@pytest.mark.parametrize("point", list(CASES))
def test_killed_at_crash_point_leaves_a_repairable_home(point, case, env, capsys):
    home, settings, sets, pre_digest, pre_facts = case
    command, kind = CASES[point]

    code = run_killed([*command, "--home", str(home), *sets], env, crash_at=point)
    assert code == -signal.SIGKILL, f"{point} was never reached (exit {code})"

    # Readers work at once, before any repair, and lose no fact that the ledger committed.
    status = cli_json(["status", "--home", str(home), "--no-perplexity", *sets], capsys)
    recall = cli_json(["recall", "--home", str(home), *sets], capsys)
    assert status["facts"] == len(recall["facts"]) >= len(pre_facts) - (kind == "without-chen")
    assert bool(status["pending_repair"]) == (kind == "pre-sleep" and point != "snapshot:before-manifest")

    # The next writer repairs: journal restored, orphans removed, every edit verified.
    memory = Memory.open(Home.open(home), settings)
    check_consistency(memory)
    assert SnapshotStore(home).open_snapshots() == []
    leftovers = [p.name for p in (home / "snapshots").iterdir()] if (home / "snapshots").exists() else []
    assert all(SnapshotStore(home).get(name) for name in leftovers), leftovers  # no half-taken copies
    assert {(r[1], r[2]) for r in facts_fingerprint(memory)} == expected_state(kind, pre_facts, settings)
    files = [e.file for e in memory.edits] + [a.file for a in memory.adapters]
    assert sorted(p.name for p in (home / "deltas").iterdir()) == sorted(f.split("/")[-1] for f in files)
    if kind in ("pre-sleep", "unchanged"):
        assert memory.weights_digest() == pre_digest and facts_fingerprint(memory) == pre_facts
    fresh = Memory.open(Home.open(home), settings, writable=False)  # a new process composes the same bytes
    assert fresh.weights_digest() == memory.weights_digest()


def test_a_crash_during_recovery_is_recovered_again(case, env):
    home, settings, sets, pre_digest, pre_facts = case
    assert run_killed(["sleep", "--home", str(home), *sets], env, crash_at="maintain:after-refresh") == -signal.SIGKILL
    # The next writer (an inject) dies while restoring the journal ...
    assert run_killed(["inject", *NEW, "--home", str(home), *sets], env,
                      crash_at="restore:after-deltas") == -signal.SIGKILL
    memory = Memory.open(Home.open(home), settings)  # ... and the one after that finishes the job.
    assert memory.weights_digest() == pre_digest and facts_fingerprint(memory) == pre_facts
    check_consistency(memory)
