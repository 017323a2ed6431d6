"""The command-line contract (shared/DESIGN.md), run in-process through ``sleepwake.cli.main``.

Every user mistake must exit non-zero with exactly one ``sleepwake: error: ...`` line on stderr,
no traceback, and leave the home as it was. The recall fact uses a relation template that ends
with the subject: on the random tiny model only such prompts can be recalled greedily (see
tests/test_memory.py's module docstring).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sleepwake.cli import main
from sleepwake.storage.home import Home
from conftest import shared_cache

SUBJECT, RELATION, OBJECT = "Aria Nakamura", "The hometown of {}", "Thessaloniki"
STATUS_FIELDS = {"facts", "edits", "stages", "perplexity", "perplexity_baseline", "perplexity_drift",
                 "drowsiness", "weights_digest", "delta_bytes"}


pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


def options(home: Path, overrides: list[str], *extra: str) -> list[str]:
    args = ["--home", str(home), "-q"]
    for override in [*overrides, *extra]:
        args += ["--set", override]
    return args


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, argv: list[str]) -> dict:
    code, out, err = run(capsys, [*argv, "--json"])
    assert code == 0, err
    return json.loads(out)


def status(capsys, home: Path, overrides: list[str], perplexity: bool = False) -> dict:
    return run_json(capsys, ["status", *options(home, overrides), *([] if perplexity else ["--no-perplexity"])])


# ---- the happy path --------------------------------------------------------------------------------


def test_inject_recall_status_forget(tmp_path, capsys, tiny_settings_overrides):
    home, opts = tmp_path / "home", tiny_settings_overrides
    base = status(capsys, home, opts, perplexity=True)  # a home that does not exist yet reads as empty
    assert STATUS_FIELDS <= base.keys() and base["facts"] == 0 and base["perplexity_drift"] == 0
    assert not home.exists()  # and reading it created nothing

    result = run_json(capsys, ["inject", SUBJECT, RELATION, OBJECT, *options(home, opts)])
    [injected] = result["injected"]
    assert injected["status"] == "stored" and isinstance(injected["edit_id"], int)
    assert (injected["subject"], injected["relation"], injected["object"]) == (SUBJECT, RELATION, OBJECT)
    assert result["facts"] == 1 and result["weights_digest"] != base["weights_digest"]

    recall = run_json(capsys, ["recall", *options(home, opts)])
    [fact] = recall["facts"]
    assert (fact["subject"], fact["object"], fact["raw"]) == (SUBJECT, OBJECT, True)
    assert recall["summary"]["n"] == 1 and recall["summary"]["raw"] == 1.0

    edited = status(capsys, home, opts, perplexity=True)
    assert STATUS_FIELDS <= edited.keys()
    assert edited["facts"] == 1 and edited["edits"] == 1 and edited["stages"]["0"] == 1
    assert edited["weights_digest"] == result["weights_digest"]
    assert edited["delta_bytes"] == sum(p.stat().st_size for p in (home / "deltas").glob("*.safetensors")) > 0
    assert edited["perplexity_baseline"] == base["perplexity"]

    code, out, err = run(capsys, ["status", *options(home, opts), "--no-perplexity"])  # text mode
    assert code == 0 and "weights_digest" in out and edited["weights_digest"] in out

    forgotten = run_json(capsys, ["forget", SUBJECT, RELATION, *options(home, opts)])
    assert forgotten["forgotten"]["object"] == OBJECT and forgotten["facts"] == 0
    after = status(capsys, home, opts)
    assert after["facts"] == 0 and after["edits"] == 0 and after["delta_bytes"] == 0
    assert after["weights_digest"] == base["weights_digest"]  # exact removal


def test_inject_facts_file(tmp_path, capsys, tiny_settings_overrides):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        json.dumps({"subject": "Bruno Silva", "relation": "lives in", "object": "Lisbon"}) + "\n"
        + "# comments and blank lines are skipped\n\n"
        + json.dumps({"subject": "Chen Okafor", "relation": "works as a", "object": "pilot"}) + "\n"
    )
    home = tmp_path / "home"
    result = run_json(capsys, ["inject", "--facts", str(facts), *options(home, tiny_settings_overrides)])
    assert [r["status"] for r in result["injected"]] == ["stored", "stored"]
    assert [r["subject"] for r in result["injected"]] == ["Bruno Silva", "Chen Okafor"]
    assert result["facts"] == 2
    assert result["waiting_for_sleep"] == 2 and "warning" not in result  # under health.wake_capacity (10)
    assert status(capsys, home, tiny_settings_overrides)["edits"] == 2
    again = run_json(capsys, ["inject", "--facts", str(facts), *options(home, tiny_settings_overrides, "health.wake_capacity=1")])
    assert [r["status"] for r in again["injected"]] == ["unchanged", "unchanged"]
    assert again["weights_digest"] == result["weights_digest"]
    # Two facts still wait for sleep, over a capacity of one: the result says so and what to do.
    assert again["waiting_for_sleep"] == 2 and "wake_capacity (1)" in again["warning"] and "sleepwake sleep" in again["warning"]


# ---- user mistakes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory, tiny_settings_overrides):
    """A home with one stored fact, shared by the bad-input tests (which must not change it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPWAKE_CACHE", str(shared_cache(tmp_path_factory)))
        home = tmp_path_factory.mktemp("populated") / "home"
        assert main(["inject", SUBJECT, RELATION, OBJECT, *options(home, tiny_settings_overrides)]) == 0
    return home


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


GOOD = {"subject": "Dara Moreau", "relation": "lives in", "object": "Oslo"}
BAD_INPUTS = {
    # name: (argv after the command's home options are added, expected exit code)
    "empty subject": (lambda t: ["inject", "", "lives in", "Oslo"], 2),
    "blank subject": (lambda t: ["inject", "   ", "lives in", "Oslo"], 2),
    "two placeholders": (lambda t: ["inject", "Dara Moreau", "{} met {}", "Oslo"], 2),
    "unknown field": (lambda t: ["inject", "--facts", write(t / "f.jsonl", json.dumps({**GOOD, "colour": "red"}) + "\n")], 2),
    "broken jsonl": (lambda t: ["inject", "--facts", write(t / "f.jsonl", json.dumps(GOOD) + "\n{\"subject\": \"Dara\",\n")], 2),
    "missing file": (lambda t: ["inject", "--facts", str(t / "nope.jsonl")], 2),
    "positional and file": (lambda t: ["inject", "Dara Moreau", "lives in", "Oslo", "--facts", write(t / "f.jsonl", json.dumps(GOOD))], 2),
    "two positionals": (lambda t: ["inject", "Dara Moreau", "lives in"], 2),
    "unknown setting": (lambda t: ["inject", "Dara Moreau", "lives in", "Oslo", "--set", "memit.nope=1"], 2),
    "unknown setting (status)": (lambda t: ["status", "--set", "memit.nope=1"], 2),
    "missing model": (lambda t: ["inject", "Dara Moreau", "lives in", "Oslo", "--set", "model.source=/does/not/exist"], 1),
    "missing model (recall)": (lambda t: ["recall", "--set", "model.source=/does/not/exist"], 1),
    "forget unknown fact": (lambda t: ["forget", "Nobody Atall", "lives in"], 1),
}


def assert_one_error_line(code: int, out: str, err: str, expected_code: int) -> None:
    assert code == expected_code, err
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("sleepwake: error: ") and len(err) > len("sleepwake: error: ") + 5
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_changes_nothing(case, populated, tmp_path, capsys, tiny_settings_overrides):
    build, expected_code = BAD_INPUTS[case]
    before = status(capsys, populated, tiny_settings_overrides)
    argv = build(tmp_path)
    # Options go after the command; the case's own --set comes last and wins.
    argv = [argv[0], *options(populated, tiny_settings_overrides), *argv[1:]]
    code, out, err = run(capsys, [*argv, "--json"])
    assert_one_error_line(code, out, err, expected_code)
    after = status(capsys, populated, tiny_settings_overrides)
    assert (after["facts"], after["edits"], after["weights_digest"]) == (before["facts"], before["edits"], before["weights_digest"])
    assert after["facts"] == 1


def test_corrupted_delta_file_is_reported_in_one_line(populated, tmp_path, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    shutil.copytree(populated, home)
    [delta] = (home / "deltas").glob("*.safetensors")
    data = bytearray(delta.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    delta.write_bytes(bytes(data))
    for command in (["status"], ["recall"], ["inject", "Dara Moreau", "lives in", "Oslo"]):
        code, out, err = run(capsys, [*command, *options(home, tiny_settings_overrides), "--json"])
        assert_one_error_line(code, out, err, 1)
        assert "corrupted" in err and delta.name in err
    assert delta.read_bytes() == bytes(data)  # nothing "repaired" or deleted behind the user's back

    # ...but the remedy the message names works: forget removes the fact and its unreadable file.
    code, out, err = run(capsys, ["forget", SUBJECT, RELATION, *options(home, tiny_settings_overrides), "--json"])
    assert code == 0, err
    assert not delta.exists()
    after = status(capsys, home, tiny_settings_overrides)
    assert after["facts"] == 0 and after["edits"] == 0


def test_usage_mistakes_are_one_line(capsys):
    for argv in (["forget", "onlyone"], ["inject", "a", "b", "c", "d"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("sleepwake: error: ")


def test_second_writer_is_refused_while_the_home_is_locked(populated, tmp_path, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    shutil.copytree(populated, home)
    before = status(capsys, home, tiny_settings_overrides)
    with Home.open(home).write_lock():
        code, out, err = run(capsys, ["inject", "Dara Moreau", "lives in", "Oslo", *options(home, tiny_settings_overrides)])
        assert_one_error_line(code, out, err, 3)
        assert "busy" in err
        code, out, err = run(capsys, ["forget", SUBJECT, RELATION, *options(home, tiny_settings_overrides)])
        assert_one_error_line(code, out, err, 3)
        # Readers never take the lock.
        assert status(capsys, home, tiny_settings_overrides)["facts"] == 1
    after = status(capsys, home, tiny_settings_overrides)
    assert after["weights_digest"] == before["weights_digest"] and after["facts"] == 1
    assert main(["inject", "Dara Moreau", "lives in", "Oslo", *options(home, tiny_settings_overrides)]) == 0


# ---- the installed entry point ---------------------------------------------------------------------


def test_help_in_a_subprocess():
    top = subprocess.run([sys.executable, "-m", "sleepwake.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    for command in ("inject", "recall", "status", "forget"):
        assert command in top.stdout
    sub = subprocess.run([sys.executable, "-m", "sleepwake.cli", "inject", "--help"], capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    for flag in ("--home", "--config", "--set", "--json", "--facts"):
        assert flag in sub.stdout, flag


# ---- options before or after the command, version, presets ----------------------------------------


def test_common_options_work_before_and_after_the_command(tmp_path, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    run_json(capsys, ["inject", SUBJECT, RELATION, OBJECT, *options(home, tiny_settings_overrides)])
    sets = [x for o in tiny_settings_overrides for x in ("--set", o)]
    before = run_json(capsys, ["--home", str(home), "-q", *sets[:4], "status", "--no-perplexity", *sets[4:]])
    after = run_json(capsys, ["status", "--no-perplexity", "--home", str(home), "-q", *sets])
    assert before == after and before["facts"] == 1
    # after the command wins over before it
    elsewhere = run_json(capsys, ["--home", str(home), "status", "--home", str(tmp_path / "other"), "--no-perplexity", "-q", *sets])
    assert elsewhere["facts"] == 0


def test_version_and_config_commands(capsys, tiny_settings_overrides):
    import sleepwake

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"sleepwake {sleepwake.__version__}"
    listed = run_json(capsys, ["config", "list"])
    assert "default" in listed["presets"] and "llama-3.1-8b" in listed["presets"]
    shown = run_json(capsys, ["config", "show", "--set", "memit.v_steps=7"])["settings"]
    assert shown["memit"]["v_steps"] == {"value": 7, "description": shown["memit"]["v_steps"]["description"]}
    assert shown["validate"]["min_locality"]["description"]
    code, out, _ = run(capsys, ["config", "show"])
    assert code == 0 and "lora.fold_max_rank = 256" in out


def test_sleep_on_a_missing_home_is_one_line_and_creates_nothing(tmp_path, capsys, tiny_settings_overrides):
    missing = tmp_path / "memries"
    code, out, err = run(capsys, ["nap", *options(missing, tiny_settings_overrides)])
    assert code != 0 and err.count("\n") == 1 and "no sleepwake home" in err
    assert not (missing / "ledger.duckdb").exists()


def test_status_and_recall_read_a_missing_home_as_empty_and_create_nothing(tmp_path, capsys, caplog,
                                                                            tiny_settings_overrides):
    """A mistyped --home: readers say so on stderr and leave no ledger or lock behind (the perplexity they
    measure is not cached there)."""
    missing = tmp_path / "memries"
    code, out, err = run(capsys, ["status", *options(missing, tiny_settings_overrides), "--json"])
    assert code == 0 and json.loads(out)["facts"] == 0 and "perplexity" in json.loads(out)
    code, out, err = run(capsys, ["recall", *options(missing, tiny_settings_overrides), "--json"])
    assert code == 0 and json.loads(out)["summary"]["n"] == 0
    assert [r.message for r in caplog.records].count(f"no sleepwake home at {missing} yet (no ledger.duckdb): read as an "
                                                      "empty memory, and nothing is created there; check --home if "
                                                      "you expected facts") == 2
    assert not missing.exists()


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`sleepwake config list | head -1`: the closed pipe ends the command quietly (status 141)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "sleepwake.cli", "config", "list"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr
