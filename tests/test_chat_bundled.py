"""Slow: the issue's piped chat on the real bundled SmolLM2-135M-Instruct, recalled from a fresh process,
answered in chat with an empty context after a full sleep, and a second sleep SIGKILLed mid-SWS.

The slow tier's only full sleep on the real model, so it carries what a full sleep must show there:
the report's verdict, the adapters surviving a restart (one digest from two fresh processes), the
chat pathway knowing the facts, and a kill while SWS trains (its journal snapshot open, with the
ephemeral Prefect server it started) leaving every fact readable at once and undone byte for byte by
the next writer. Short on purpose: two facts from one turn, an 8-token reply, raw recall first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
TURN = "Hi! My name is Lena Brandt and I live in Graz. I work as a software engineer, by the way."
QUICK_RECALL = ["--set", "probes.paraphrases=false", "--set", "probes.chat=false"]


def sleepwake(home, *args: str, stdin: str | None = None, env: dict | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "sleepwake.cli", *args, "--home", str(home), "--json"],
                          input=stdin, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def status(home) -> dict:
    return sleepwake(home, "status", "--no-perplexity")


def test_piped_chat_is_recalled_then_consolidated_and_a_sleep_killed_mid_sws_is_undone(tmp_path):
    home = tmp_path / "home"
    summary = sleepwake(home, "chat", "--set", "chat.max_new_tokens=8", stdin=f"{TURN}\n/quit\n")
    assert summary["user_name"] == "Lena Brandt"
    assert [(f["subject"], f["object"], f["status"]) for f in summary["stored"]] == [
        ("Lena Brandt's home", "Graz", "stored"), ("Lena Brandt's job", "a software engineer", "stored")]
    recall = sleepwake(home, "recall", *QUICK_RECALL)  # a new process: the knowledge is in the weights
    assert [(f["object"], f["raw"]) for f in recall["facts"]] == [("Graz", True), ("a software engineer", True)], recall

    # After a full sleep the chat question ("Where does Lena Brandt live?") is answered with an empty
    # context: the LoRA carries the facts into the chat pathway.
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    report = sleepwake(home, "sleep", "-q", env=env)
    assert report["outcome"] == "kept" and report["sws_accepted"] is True, report
    assert report["raw_recall_after"] == 1.0
    after = sleepwake(home, "recall", "--set", "probes.paraphrases=false")
    assert [(f["object"], f["chat"]) for f in after["facts"]] == [("Graz", True), ("a software engineer", True)], after
    first, second = status(home), status(home)
    assert first["adapters"] >= 1 and first["weights_digest"] == second["weights_digest"]
    assert sum(first["stages"].values()) == 2

    # A new fact gives the next SWS work (a night trains only what is not consolidated yet); kill
    # that sleep while SWS trains.
    sleepwake(home, "inject", "Chen Lindqvist", "works as a", "baker")
    before = status(home)
    killed_mid_sws = kill_during_sws(home, {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env})
    assert killed_mid_sws, "the sleep ended before SWS began: nothing was interrupted"
    during = status(home)
    assert during["pending_repair"] and during["facts"] == 3  # the journal names the interrupted sleep
    assert [f["raw"] for f in sleepwake(home, "recall", *QUICK_RECALL)["facts"]] == [True, True, True]
    sleepwake(home, "inject", "Chen Lindqvist", "works as a", "baker")  # a writer: repairs, finds nothing new
    repaired = status(home)
    assert repaired["pending_repair"] == [] and repaired["weights_digest"] == before["weights_digest"]
    assert repaired["adapters"] == before["adapters"] and repaired["stages"] == before["stages"]


def kill_during_sws(home, env: dict) -> bool:
    """Start a full sleep and SIGKILL its process group once SWS's journal snapshot is open; whether
    it was still running then."""
    from sleepwake.storage.snapshots import SnapshotStore

    proc = subprocess.Popen([sys.executable, "-m", "sleepwake.cli", "sleep", "--home", str(home)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 900
    in_sws = False
    while not in_sws and proc.poll() is None and time.monotonic() < deadline:
        in_sws = any(s.name.endswith("-sws") for s in SnapshotStore(home).open_snapshots())
        time.sleep(0 if in_sws else 0.5)
    in_sws = in_sws and proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the sleep and the ephemeral Prefect server it started
    except ProcessLookupError:
        pass
    proc.wait()
    return in_sws
