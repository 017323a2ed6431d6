"""Bad input, concurrency and security properties (the reliability issue).

Property-based tests (hypothesis) drive config overrides, CLI argument lists and fact files; the
model loader is replaced by a sentinel, so an input that passes validation stops right where a
model would load: everything before that point must either accept or give one clean error.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sleepwake import cli
from sleepwake.config import Settings, load_settings
from sleepwake.errors import ConfigError
from sleepwake.facts import load_facts
from conftest import seed_home

SOURCE = Path(__file__).resolve().parent.parent / "sleepwake"
KEYS = ["memit.lambda_reg", "memit.layers", "memit.v_steps", "model.source", "model.dtype", "probes.chat",
        "validate.max_ppl_increase", "maintain.max_refresh", "sleep.lock_wait_s", "health.wake_capacity",
        "curate.max_active_facts", "seed", "backend", "memit", "nope.key", "memit.nope", ""]


class ModelWouldLoad(Exception):
    """Raised instead of loading a model: the input got through validation."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelWouldLoad

    monkeypatch.setattr("sleepwake.memory.load_backend", refuse)
    monkeypatch.setattr("sleepwake.flows.full_sleep.full_sleep", refuse)  # flows: tested in test_flows
    monkeypatch.setattr("sleepwake.flows.nap.nap", refuse)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS) | st.text(max_size=30), value=st.text(max_size=40))
def test_any_override_is_accepted_or_a_config_error(key, value):
    try:
        result = load_settings(None, [f"{key}={value}"])
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert isinstance(result, Settings)


WORDS = ["inject", "recall", "status", "forget", "nap", "sleep", "--facts", "--set", "--config", "--json",
         "-q", "--no-perplexity", "--home", "memit.v_steps=0", "validate.max_ppl_increase=-1", "nope=1",
         "Aria", "lives in", "{}{}", "", "x" * 600, "default", "/nonexistent/file.jsonl"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(WORDS) | st.text(max_size=12), max_size=7))
def test_any_argument_list_is_handled_without_traceback(argv, tmp_path, no_model, capsys):
    argv = [a for a in argv if a not in ("--home",)] + ["--home", str(tmp_path / "home")]
    capsys.readouterr()  # the fixture is shared by all examples: start each with empty buffers
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        assert exc.code in (0, 2)
        err = capsys.readouterr().err
        assert "Traceback" not in err and (exc.code == 0 or err.startswith("sleepwake: error:") or "usage" in err)
        return
    except ModelWouldLoad:
        return
    err = capsys.readouterr().err
    assert code in (0, 1, 2, 3) and "Traceback" not in err
    if code:
        assert err.strip().startswith("sleepwake: error:") and len(err.strip().splitlines()) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | st.lists(st.dictionaries(st.sampled_from(["subject", "relation", "object", "extra"]),
                                  st.text(max_size=8) | st.integers(), max_size=4), max_size=3)
       .map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()))
@example(content=b'{"subject": "Aria", "relation": "lives in", "object": "Paris"}')  # a valid file, every run
def test_malformed_fact_files_change_nothing(content, tmp_path, no_model, capsys):
    """A bad file is refused (2) before the home is touched. The home's ledger here is not a
    database, so a valid file is refused by the home instead (1, before any model loads), and
    its ledger too stays byte-identical. Each example gets its own home (the fixture is shared)."""
    home = Path(tempfile.mkdtemp(dir=tmp_path)) / "home"
    home.mkdir()
    (home / "ledger.duckdb").write_bytes(b"sentinel: must stay byte-identical")
    path = home.parent / "facts.jsonl"
    path.write_bytes(content)
    capsys.readouterr()
    try:
        code = cli.main(["inject", "--facts", str(path), "--home", str(home)])
    except ModelWouldLoad:
        return  # a valid file into a home that opened: it got as far as loading the model
    err = capsys.readouterr().err
    assert err.startswith("sleepwake: error:") and len(err.strip().splitlines()) == 1, err
    assert (home / "ledger.duckdb").read_bytes() == b"sentinel: must stay byte-identical"
    if "cannot be opened" in err:  # refused by the broken home: only a file that passed validation gets there
        assert code == 1 and load_facts(path), err
        return
    assert code == 2, err
    assert sorted(p.name for p in home.iterdir()) == ["ledger.duckdb"]


# ---- security ----------------------------------------------------------------------------------

def python_sources() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def test_only_safe_loaders_are_used():
    """No pickle, no unsafe YAML, no eval/exec, no shell; torch.load only with weights_only=True."""
    for path in python_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal") for n in names), path
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                assert func not in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "pickle.load"), (path, func)
                if func == "torch.load":
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    assert kw.get("weights_only") == "True", path
                assert not any(k.arg == "shell" and ast.unparse(k.value) == "True" for k in node.keywords), path


def test_sql_is_parameterised():
    """f-string SQL may only splice the module's own column-list constants, never a value."""
    allowed = {"FACT_COLS", "EDIT_COLS", "ADAPTER_COLS", "FORGOTTEN_COLS", "table", "', '.join(names)", "', '.join(ids + list(columns))", "shape"}
    for path in (SOURCE / "storage").glob("*.py"):
        for match in re.finditer(r'execute\(\s*f"([^"]*)"', path.read_text(encoding="utf-8")):
            spliced = set(re.findall(r"\{([^}]*)\}", match.group(1)))
            assert spliced <= allowed, (path, spliced)


def test_prefect_server_binds_to_loopback_by_default():
    from prefect.settings import get_current_settings

    assert get_current_settings().server.api.host == "127.0.0.1"
    assert "--host 127.0.0.1" in (SOURCE.parent / "README.md").read_text(encoding="utf-8")


# ---- concurrency -------------------------------------------------------------------------------

def test_status_works_while_a_sleep_runs(tmp_path_factory, tiny_settings_overrides, capsys, cache_env):
    """A reader never sees a raw DuckDB lock error while the sleep writes; a second writer is told 'busy'."""
    from sleepwake.facts import Fact
    from sleepwake.storage.home import Home

    tmp_path, cache = tmp_path_factory.mktemp("concurrent"), cache_env
    home = Home.open(seed_home(tmp_path_factory, tiny_settings_overrides,
                               [Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki"),
                                Fact(subject="Bruno Silva", relation="lives in", object="Lisbon")], "concurrent-home"))
    sets = [x for o in tiny_settings_overrides for x in ("--set", o)]
    env = {**os.environ, "SLEEPWAKE_CACHE": str(cache), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    # The sleep may start while this test's inject holds the lock: it waits its turn (lock_wait_s).
    sleeper = subprocess.Popen([sys.executable, "-m", "sleepwake.cli", "sleep", "--home", str(home.root), "-q", *sets,
                                "--set", "sleep.lock_wait_s=120"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reads, busy = 0, 0
    try:
        while not (home.root / "write.lock").exists() or sleeper.poll() is None and reads < 200:
            if sleeper.poll() is not None:
                break
            capsys.readouterr()
            assert cli.main(["status", "--home", str(home.root), "--json", "--no-perplexity", "-q", *sets]) == 0
            assert json.loads(capsys.readouterr().out)["facts"] == 2
            reads += 1
            # A writer that changes nothing when it gets the lock (a fact stored as it is: "unchanged"), so there
            # is nothing to put back: putting a forgotten fact back outside the lock raced the sleep for it.
            code = cli.main(["inject", "Bruno Silva", "lives in", "Lisbon", "--home", str(home.root), "-q", *sets])
            err = capsys.readouterr().err
            if code == 3:
                busy += 1
                assert "busy" in err and "Traceback" not in err
            else:  # the sleep had not taken the lock yet or was done
                assert code == 0, err
            time.sleep(0.2)
    finally:
        sleeper.wait(timeout=300)
    assert sleeper.returncode == 0, sleeper.stderr.read()[-2000:]
    assert reads >= 1 and busy >= 1, (reads, busy)
