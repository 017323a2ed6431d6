"""Slow tests on the real bundled SmolLM2-135M-Instruct, through the real CLI in subprocesses.

Few and short: one home for the module, two facts. The full sleep on the real model, and a sleep
killed mid-SWS, are tests/test_chat_bundled.py (one full sleep for the whole slow tier). The first run on a machine also converts the
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


def test_a_gguf_file_path_loads_the_same_weights_as_bundled(tmp_path):
    """``model.source=<file>.gguf`` converts any GGUF once into the cache; on the bundled file it
    must give the very weights ``model.source=bundled`` gives, byte for byte (so every recall
    figure is equal by construction)."""
    from sleepwake.models.bundled import bundled_gguf_path, ensure_bundled_folder, ensure_gguf_folder, file_sha256

    gguf = bundled_gguf_path()
    converted = ensure_gguf_folder(gguf, tmp_path / "cache")
    assert converted != ensure_bundled_folder()
    assert file_sha256(converted / "model.safetensors") == file_sha256(ensure_bundled_folder() / "model.safetensors")
