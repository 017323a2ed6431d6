"""Slow tests on the real bundled SmolLM2-135M-Instruct, through the real CLI in subprocesses.

Few and short: one home for the module, two facts. The first run on a machine also converts the
GGUF (a few seconds) and estimates the key statistics (4096 sampled tokens, about a minute; cached
in the user's cache and shared by every slow test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
FAST_STATS: list[str] = []  # the default key statistics (4096 tokens) are fast already, and shared with the demo
FACTS = [
    {"subject": "Aria Nakamura", "relation": "lives in", "object": "Thessaloniki"},
    {"subject": "Bruno Okafor", "relation": "{}'s favorite food is", "object": "dumplings"},
]


def sleepwake(home, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "sleepwake.cli", *args, "--home", str(home), *FAST_STATS],
                          capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"sleepwake {args} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def as_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("bundled-home")


def test_inject_recall_from_fresh_process_then_forget_restores_digest(home, tmp_path):
    base = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))["weights_digest"]
    facts_file = tmp_path / "facts.jsonl"
    facts_file.write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    injected = as_json(sleepwake(home, "inject", "--facts", str(facts_file), "--json"))
    assert [r["status"] for r in injected["injected"]] == ["stored", "stored"]

    recall = as_json(sleepwake(home, "recall", "--json"))  # a new process: knowledge is in the weights
    assert [r["raw"] for r in recall["facts"]] == [True, True], recall["facts"]

    first = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))["weights_digest"]
    second = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))["weights_digest"]
    assert first == second != base  # a restart recomposes the same bytes

    for fact in FACTS:
        sleepwake(home, "forget", fact["subject"], fact["relation"])
    after = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    assert after["facts"] == 0 and after["delta_bytes"] == 0
    assert after["weights_digest"] == base  # forget is exact: base weights bit for bit


def test_missing_model_is_one_clear_line(tmp_path):
    proc = sleepwake(tmp_path / "h", "status", "--set", "model.source=/no/such/model", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sleepwake: error:") and "/no/such/model" in lines[0]
    assert "Traceback" not in proc.stderr


def test_sleep_killed_mid_sws_keeps_every_fact(tmp_path):
    """SIGKILL a full sleep (and the ephemeral Prefect server it started) while SWS trains (its
    journal snapshot is open): readers work at once with every fact, and the next writer restores
    the pre-sleep state byte for byte."""
    import signal
    import time

    from sleepwake.storage.snapshots import SnapshotStore

    home = tmp_path / "home"
    facts_file = tmp_path / "facts.jsonl"
    facts_file.write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    sleepwake(home, "inject", "--facts", str(facts_file))
    before = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "sleepwake.cli", "sleep", "--home", str(home), *FAST_STATS],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if any(s.name.endswith("-sws") for s in SnapshotStore(home).open_snapshots()):
            break
        time.sleep(0.5)
    killed_mid_sleep = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_mid_sleep, "the sleep ended before SWS began: nothing was interrupted"

    during = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    recall = as_json(sleepwake(home, "recall", "--json"))
    assert during["facts"] == before["facts"] == len(recall["facts"]) == len(FACTS)
    assert during["pending_repair"]  # the journal names the interrupted sleep
    sleepwake(home, "inject", "--facts", str(facts_file))  # a writer: repairs, then finds nothing new
    after = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    assert after["facts"] == len(FACTS) and after["pending_repair"] == []
    assert after["weights_digest"] == before["weights_digest"]


def test_full_sleep_consolidates_into_chat_and_a_kill_during_sws_is_repaired(tmp_path):
    """One full sleep with SWS and REM on two facts: the report is in the papers' shape, the
    adapters survive a restart (same digest from two fresh processes), and a second sleep
    SIGKILLed right after SWS stored its adapter is undone by the next writer, byte for byte."""
    import signal

    home = tmp_path / "home"
    facts_file = tmp_path / "facts.jsonl"
    facts_file.write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    sleepwake(home, "inject", "--facts", str(facts_file))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    report = json.loads(subprocess.run([sys.executable, "-m", "sleepwake.cli", "sleep", "--json", "--home", str(home),
                                        *FAST_STATS], env=env, capture_output=True, text=True, timeout=1200, check=True).stdout)
    assert report["outcome"] == "kept" and report["sws_accepted"] is True, report
    assert report["raw_recall_after"] == 1.0 and report["chat_recall_after"] is not None
    first = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    second = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    assert first["adapters"] >= 1 and first["weights_digest"] == second["weights_digest"]
    assert sum(first["stages"].values()) == len(FACTS)

    # A new fact gives the next SWS work (a night trains only what is not consolidated yet).
    sleepwake(home, "inject", "Chen Lindqvist", "works as a", "baker")
    first = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    crashing = {**env, "SLEEPWAKE_CRASH_AT": "sws:after-adapter"}
    proc = subprocess.Popen([sys.executable, "-m", "sleepwake.cli", "sleep", "--home", str(home), *FAST_STATS],
                            env=crashing, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.wait(timeout=1200) == -signal.SIGKILL
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the ephemeral Prefect server it started
    except ProcessLookupError:
        pass
    during = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    assert during["pending_repair"] and during["facts"] == len(FACTS) + 1
    sleepwake(home, "nap", "-q")  # the next writer's health check repairs the home
    after = as_json(sleepwake(home, "status", "--json", "--no-perplexity"))
    assert after["pending_repair"] == [] and after["weights_digest"] == first["weights_digest"]
    assert after["adapters"] == first["adapters"] and after["stages"] == first["stages"]


def test_a_gguf_file_path_loads_the_same_weights_as_bundled(tmp_path):
    """``model.source=<file>.gguf`` converts any GGUF once into the cache; on the bundled file it
    must give the very weights ``model.source=bundled`` gives, byte for byte (so every recall
    figure is equal by construction)."""
    from sleepwake.models.bundled import bundled_gguf_path, ensure_bundled_folder, ensure_gguf_folder, file_sha256

    gguf = bundled_gguf_path()
    converted = ensure_gguf_folder(gguf, tmp_path / "cache")
    assert converted != ensure_bundled_folder()
    assert file_sha256(converted / "model.safetensors") == file_sha256(ensure_bundled_folder() / "model.safetensors")
