"""Slow: the issue's piped chat on the real bundled SmolLM2-135M-Instruct, recalled from a fresh process,
then answered in chat with an empty context after a full sleep.

Short on purpose (two injections, an 8-token reply, recall by raw completion only); the
covariance is the lowered one of tests/test_bundled.py, so both files share its cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
FAST: list[str] = []  # the default key statistics (4096 tokens), shared with the other slow tests
TURN = "Hi! My name is Lena Brandt and I live in Graz. I work as a software engineer, by the way."


def sleepwake(home, *args: str, stdin: str | None = None, env: dict | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "sleepwake.cli", *args, "--home", str(home), "--json", *FAST],
                          input=stdin, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_piped_issue_sentence_is_recalled_by_a_fresh_process(tmp_path):
    home = tmp_path / "home"
    summary = sleepwake(home, "chat", "--set", "chat.max_new_tokens=8", stdin=f"{TURN}\n/quit\n")
    assert summary["user_name"] == "Lena Brandt"
    assert [(f["subject"], f["object"], f["status"]) for f in summary["stored"]] == [
        ("Lena Brandt's home", "Graz", "stored"), ("Lena Brandt's job", "a software engineer", "stored")]

    recall = sleepwake(home, "recall", "--set", "probes.paraphrases=false", "--set", "probes.chat=false")
    assert [(f["object"], f["raw"]) for f in recall["facts"]] == [("Graz", True), ("a software engineer", True)], recall

    # After a full sleep with consolidation the chat question is answered with an empty context
    # ("Where does Lena Brandt live?"): the LoRA carries the facts into the chat pathway.
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    report = sleepwake(home, "sleep", "-q", env=env)
    assert report["outcome"] == "kept" and report["sws_accepted"] is True, report
    after = sleepwake(home, "recall", "--set", "probes.paraphrases=false")
    assert [(f["object"], f["chat"]) for f in after["facts"]] == [("Graz", True), ("a software engineer", True)], after
