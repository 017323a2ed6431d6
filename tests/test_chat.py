"""``sleepwake chat`` on the tiny random Llama: piped stdin drives the loop in-process.

The tiny model's replies are noise; what is tested is the loop: facts extracted and injected,
every turn logged, commands, context compaction, names, odd input, the write lock around sleeps.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from sleepwake.chat.session import ChatSession
from sleepwake.chat.terminal import ChatIO
from sleepwake.cli import main
from sleepwake.config import load_settings
from sleepwake.memory import Memory
from sleepwake.storage import conversations
from sleepwake.storage.home import Home
from sleepwake.storage.ledger import Ledger

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")
FAST = ["chat.max_new_tokens=4", "chat.context_tokens=200"]


def chat(monkeypatch, capsys, home, overrides, text: str | bytes, *extra: str) -> tuple[int, dict | None, str]:
    """Run ``sleepwake chat --json`` with ``text`` on stdin; (exit code, summary, stderr)."""
    data = text if isinstance(text, bytes) else text.encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    args = ["chat", "--home", str(home), "--json"]
    for override in [*overrides, *FAST, *extra]:
        args += [override] if override.startswith("-") else ["--set", override]
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def facts(home) -> list[tuple[str, str, str]]:
    return [(r.subject, r.relation, r.object) for r in Ledger(home / "ledger.duckdb", read_only=True).list_facts()]


def log(home, session_id: str) -> list[dict]:
    return conversations.session_turns(Ledger(home / "ledger.duckdb", read_only=True), session_id)


def test_piped_turn_stores_facts_and_logs_every_turn(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    turn = "Hi! My name is Lena Brandt and I live in Graz. I work as a baker, by the way."
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, f"{turn}\n/quit\nnever read\n")
    assert code == 0, err
    assert summary["user_name"] == "Lena Brandt" and len(summary["turns"]) == 1
    # Each attribute is its own subject (sleepwake/chat/stored.py: one MEMIT key per attribute).
    assert [(f["subject"], f["relation"], f["object"], f["status"]) for f in summary["stored"]] == [
        ("Lena Brandt's home", "{} is in", "Graz", "stored"), ("Lena Brandt's job", "{} is", "a baker", "stored")]
    assert facts(home) == [("Lena Brandt's home", "{} is in", "Graz"), ("Lena Brandt's job", "{} is", "a baker")]
    assert "remembered: Lena Brandt's home is in Graz" in err

    rows = log(home, summary["session_id"])
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert rows[0]["content"] == turn and rows[1]["content"] == summary["turns"][0]["assistant"]
    assert [(f["relation"], f["object"], f["status"]) for f in rows[0]["facts"]] == [
        ("name", "Lena Brandt", "name"), ("{} is in", "Graz", "stored"), ("{} is", "a baker", "stored")]

    # A later session knows the name from the ledger; a changed fact replaces the old one.
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, "Actually I moved to Lyon.\n")
    assert code == 0, err  # EOF without /quit ends the chat normally
    assert [(f["subject"], f["object"], f["status"]) for f in summary["stored"]] == [("Lena Brandt's home", "Lyon", "replaced")]
    assert facts(home) == [("Lena Brandt's home", "{} is in", "Lyon"), ("Lena Brandt's job", "{} is", "a baker")]


def test_commands(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    script = "\n".join([
        "/forget", "/bogus", "/forget no separator", "I speak German.", "I also speak French.",
        "/status", "/facts", "/forget", "/forget the user | {} lives in", "/compact", "/help", "/quit"]) + "\n"
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, script)
    assert code == 0, err
    assert [f["object"] for f in summary["stored"]] == []  # the merged fact was forgotten
    assert [f["object"] for f in summary["forgotten"]] == ["German and French"]
    assert facts(home) == []
    assert len(summary["errors"]) == 4 and "unknown command '/bogus'" in summary["errors"][1]
    assert "no stored fact" in summary["errors"][3]
    out = err  # with --json the conversation and command output go to stderr
    assert "facts 1, edits 1" in out and "the user's languages include -> German and French" in out and "/forget SUBJECT" in out
    rows = log(home, summary["session_id"])
    commands = [(r["content"], r["facts"][0]["outcome"]) for r in rows if r["role"] == "command"]
    assert commands[0][0] == "/forget" and commands[0][1].startswith("nothing stored")
    assert ("/status", "ok") in commands and len(commands) == 9  # /quit ends the chat unlogged


def test_name_arriving_later_moves_placeholder_facts(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides,
                              "I live in Oslo.\nI'm allergic to cats.\nMy name is Aria Nakamura.\n")
    assert code == 0, err
    assert sorted(facts(home)) == [("Aria Nakamura's allergies", "{} include", "cats"),
                                   ("Aria Nakamura's home", "{} is in", "Oslo")]
    moved = [f for f in summary["turns"][2]["facts"] if f["status"] == "moved"]
    assert [f["subject"] for f in moved] == ["the user's home", "the user's allergies"]
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, "I'm a pilot.\nI'm allergic to dust.\n")
    assert [f["subject"] for f in summary["stored"]] == ["Aria Nakamura's job", "Aria Nakamura's allergies"]
    assert ("Aria Nakamura's allergies", "{} include", "cats and dust") in facts(home)


def test_context_is_compacted_near_the_budget(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    turns = [f"Tell me something about the number {i} and the river near the old market." for i in range(8)]
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, "\n".join(turns) + "\n/compact\n",
                              "chat.keep_turns=2", "chat.inject=false")
    assert code == 0, err
    rows = log(home, summary["session_id"])
    summaries = [r["content"] for r in rows if r["role"] == "summary"]
    assert summaries and "Earlier in this conversation the user said" in summaries[0]
    assert [r["role"] for r in rows].count("user") == 8 and [r["role"] for r in rows].count("assistant") == 8


def test_malformed_input_never_crashes(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    data = (b"\xff\xfe broken utf-8 \xc3\x28\n\x00\x07\x1b[31m control\n\n   \n/\n/forget |\n/FORGET a|\n"
            + ("word " * 3000).encode() + b"\n" + "emoji \U0001F600 and \u2028 separators\n".encode()
            + b"My name is " + b"X" * 400 + b"\nI live in " + b"Y" * 400 + b"\n/quit")
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, data, "chat.max_turn_chars=500")
    assert code == 0, err
    assert "Traceback" not in err and "turn cut to 500 characters" in err
    assert facts(home) == [] and summary["user_name"] is None
    assert all("\x00" not in t["user"] and "\x1b" not in t["user"] for t in summary["turns"])


def test_busy_home_is_one_clear_error(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = Home.open(tmp_path / "home")
    with home.write_lock():
        code, _, err = chat(monkeypatch, capsys, home.root, tiny_settings_overrides, "hello\n")
    assert code == 3 and err.strip().startswith("sleepwake: error:") and len(err.strip().splitlines()) == 1


def session(home, overrides, text: str, run_flow=None, stream=False, *extra) -> tuple[ChatSession, dict, str, str]:
    settings = load_settings(None, [*overrides, *FAST, *extra])
    out, notes = io.StringIO(), io.StringIO()
    chat_io = ChatIO(input=io.StringIO(text), out=out, notes=notes, stream=stream)
    s = ChatSession(home, settings, chat_io, open_memory=lambda: Memory.open(home, settings), run_flow=run_flow)
    return s, s.run(), out.getvalue(), notes.getvalue()


def test_drowsiness_runs_the_flow_with_the_home_released(tmp_path, tiny_settings_overrides):
    home = Home.open(tmp_path / "home")
    calls = []

    def fake_flow(kind):
        with home.write_lock():  # the session must have let go of the lock
            calls.append(kind)
        return {"kind": kind, "outcome": "no_change", "raw_recall_before": 1.0, "raw_recall_after": 1.0, "seconds": 0.1}

    text = "I live in Oslo.\nI work as a pilot.\n/sleep\n/status\n"
    s, summary, out, notes = session(home, tiny_settings_overrides, text, fake_flow, False,
                                     "chat.auto_sleep=run", "health.wake_capacity=2")
    assert calls == ["nap", "sleep", "sleep"]  # 1/2 facts -> nap, 2/2 -> sleep, then /sleep
    assert len(summary["sleeps"]) == 3 and "facts 2, edits 2" in out and s.memory is None

    s, summary, out, notes = session(home, tiny_settings_overrides, "I'm from Lima.\nI speak Dutch.\n", None, False,
                                     "health.wake_capacity=2")
    assert notes.count("is due; type /sleep") == 1 and summary["sleeps"] == []  # suggested once, not every turn


def test_a_failed_move_keeps_the_placeholder_fact(tmp_path, monkeypatch, tiny_settings_overrides):
    from sleepwake.errors import SleepwakeError

    home = Home.open(tmp_path / "home")
    session(home, tiny_settings_overrides, "I live in Oslo.\n")
    real_inject = Memory.inject

    def failing(self, facts, **kwargs):
        if facts[0].subject.startswith("Aria"):
            raise SleepwakeError("disk full")
        return real_inject(self, facts, **kwargs)

    monkeypatch.setattr(Memory, "inject", failing)
    _, summary, _, notes = session(home, tiny_settings_overrides, "My name is Aria Nakamura.\n")
    assert facts(home.root) == [("the user's home", "{} is in", "Oslo")] and "disk full" in notes
    assert [r["status"] for r in summary["turns"][0]["facts"]] == ["name", "error"]


def test_home_that_cannot_be_reopened_after_a_sleep_ends_the_chat(tmp_path, tiny_settings_overrides):
    from sleepwake.errors import HomeBusyError, SleepwakeError

    home = Home.open(tmp_path / "home")
    settings = load_settings(None, [*tiny_settings_overrides, *FAST])
    opened = []

    def open_once():
        if opened:
            raise HomeBusyError("home busy")
        opened.append(1)
        return Memory.open(home, settings)

    s = ChatSession(home, settings, ChatIO(input=io.StringIO("/nap\nhello\n"), out=io.StringIO(), notes=None),
                    open_memory=open_once, run_flow=lambda kind: {"kind": kind})
    with pytest.raises(SleepwakeError, match="could not be reopened"):
        s.run()
    with home.write_lock():  # and the lock was let go
        pass


def test_streamed_reply_equals_the_plain_one(tmp_path, tiny_settings_overrides):
    home = Home.open(tmp_path / "home")
    _, plain, out_plain, _ = session(home, tiny_settings_overrides, "Tell me about the river.\n", None, False,
                                     "chat.max_new_tokens=12")
    _, streamed, out_stream, _ = session(home, tiny_settings_overrides, "Tell me about the river.\n", None, True,
                                         "chat.max_new_tokens=12")
    assert streamed["turns"][0]["assistant"] == plain["turns"][0]["assistant"]
    assert out_stream.split() == out_plain.split()


def test_terminal_input_uses_input_and_ends_on_eof(tmp_path, monkeypatch, tiny_settings_overrides):
    lines = iter(["I live in Oslo.", "/status"])

    def fake_input(prompt):
        assert prompt == "you> "
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    home = Home.open(tmp_path / "home")
    settings = load_settings(None, [*tiny_settings_overrides, *FAST])
    out = io.StringIO()
    s = ChatSession(home, settings, ChatIO(input=io.StringIO(), out=out, notes=None, prompt=True, stream=True),
                    open_memory=lambda: Memory.open(home, settings))
    summary = s.run()
    assert len(summary["turns"]) == 1 and "assistant> " in out.getvalue() and "facts 1" in out.getvalue()


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


def test_nap_command_runs_the_real_flow(harness, tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides,
                              "I live in Oslo.\n/nap\nI work as a pilot.\n/quit\n")
    assert code == 0, err
    [nap] = summary["sleeps"]
    assert nap["kind"] == "nap" and nap["facts"] == 1 and summary["errors"] == []
    assert len(facts(home)) == 2  # the session reopened the home after the flow and went on


def test_conversation_fits_the_budget_and_keeps_the_newest_words():
    from sleepwake.chat.context import Conversation

    conv = Conversation("system", lambda msgs: sum(len(m["content"].split()) for m in msgs), lambda: 60,
                        compact_at=0.5, keep=2, reserve=5)
    for i in range(6):
        conv.add("user", f"user turn {i} says five words")
        conv.add("assistant", f"reply {i} has four")
    assert conv.fit() is not None and conv.tokens() + 5 <= 60
    summary = conv.render()[0]["content"]
    assert len(conv.messages) == 2 and "user turn 4 says five words" in summary  # the newest notes stay
    assert "user turn 0" not in summary  # the summary is capped at a quarter of the budget
    assert conv.compact() is None and len(conv.messages) == 2  # nothing more than keep to fold

    conv.add("user", " ".join(f"w{i}" for i in range(200)))  # one turn longer than the whole budget
    conv.fit()
    assert conv.tokens() + 5 <= 60 and conv.messages[-1]["content"].endswith("w199")


def test_quiet_keeps_errors_only(tmp_path, monkeypatch, capsys, tiny_settings_overrides):
    home = tmp_path / "home"
    code, summary, err = chat(monkeypatch, capsys, home, tiny_settings_overrides, "I live in Oslo.\n/bogus\n", "-q")
    assert code == 0 and "remembered" not in err and "unknown command '/bogus'" in err
