"""Tests for fact validation and fact-file loading (``sleepwake.facts``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleepwake.errors import InvalidInputError, SleepwakeError
from sleepwake.facts import MAX_FACTS_PER_FILE, Fact, load_facts, parse_fact


def _fact(subject: str = "Aria Novak", relation: str = "lives in", obj: str = "Lisbon") -> dict:
    return {"subject": subject, "relation": relation, "object": obj}


def _write(tmp_path: Path, text: str | bytes, name: str = "facts.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    """Load ``path`` expecting failure; check the message is one line naming the file."""
    with pytest.raises(InvalidInputError) as info:
        load_facts(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


# --- happy paths ------------------------------------------------------------------------

def test_jsonl_with_comments_and_blank_lines(tmp_path: Path) -> None:
    lines = [
        "# my facts",
        json.dumps(_fact()),
        "",
        "   ",
        "  # indented comment",
        json.dumps(_fact("Kofi Haddad", "{}'s favorite food is", "ramen")),
    ]
    facts = load_facts(_write(tmp_path, "\n".join(lines) + "\n"))
    assert [f.subject for f in facts] == ["Aria Novak", "Kofi Haddad"]
    assert facts[1].prompt() == "Kofi Haddad's favorite food is"
    assert all(isinstance(f, Fact) for f in facts)


def test_json_list(tmp_path: Path) -> None:
    data = [_fact(), _fact("Mei Sato", "works as a", "dentist")]
    path = _write(tmp_path, "\n  " + json.dumps(data, indent=2), "facts.json")
    facts = load_facts(str(path))
    assert [(f.subject, f.object) for f in facts] == [("Aria Novak", "Lisbon"), ("Mei Sato", "dentist")]


def test_utf8_bom_and_crlf_accepted(tmp_path: Path) -> None:
    text = json.dumps(_fact("Inès Moreau")) + "\r\n" + json.dumps(_fact("Ivan Novak")) + "\r\n"
    facts = load_facts(_write(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8")))
    assert [f.subject for f in facts] == ["Inès Moreau", "Ivan Novak"]


def test_identical_duplicates_are_merged(tmp_path: Path) -> None:
    lines = [json.dumps(_fact()), json.dumps(_fact("Mei Sato")), json.dumps(_fact(" aria  novak ", obj="lisbon"))]
    facts = load_facts(_write(tmp_path, "\n".join(lines)))
    assert [f.subject for f in facts] == ["Aria Novak", "Mei Sato"]


def test_exactly_max_facts_is_fine(tmp_path: Path) -> None:
    lines = [json.dumps(_fact(f"Person {i}")) for i in range(MAX_FACTS_PER_FILE)]
    assert len(load_facts(_write(tmp_path, "\n".join(lines)))) == MAX_FACTS_PER_FILE


# --- errors -----------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    assert "no such" in _error(tmp_path / "nope.jsonl")


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _error(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps(_fact()))
    path.chmod(0)
    try:
        assert "cannot read" in _error(path)
    finally:
        path.chmod(0o600)


def test_read_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs even as root (where chmod 0 does not stop reads): simulate the OS refusing.
    path = _write(tmp_path, json.dumps(_fact()))

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert "cannot read" in _error(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps(_fact()).encode() + b"\n" + b'{"subject": "\xff"}\n')
    message = _error(path)
    assert "UTF-8" in message and f"{path}:2" in message


@pytest.mark.parametrize("text", ["", "\n\n  \n", "# only a comment\n", "[]", "  [ ]  "])
def test_empty(tmp_path: Path, text: str) -> None:
    assert "no facts" in _error(_write(tmp_path, text))


def test_broken_json_line(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps(_fact()) + "\n# c\n{\"subject\": \"x\",\n")
    message = _error(path)
    assert f"{path}:3" in message and "invalid JSON" in message


def test_broken_json_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "[\n" + json.dumps(_fact()) + ",\n{oops}\n]", "facts.json")
    message = _error(path)
    assert f"{path}:3" in message and "invalid JSON" in message


def test_deeply_nested_json(tmp_path: Path) -> None:
    assert "invalid JSON" in _error(_write(tmp_path, "[" * 100_000, "facts.json"))


def test_pretty_printed_single_object(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps(_fact(), indent=2), "facts.json")
    assert "one fact per line" in _error(path)


def test_json_top_level_not_a_list_of_objects(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, json.dumps([_fact(), 7]), "facts.json"))
    assert "[1]" in message and "int" in message


@pytest.mark.parametrize("entry", ["[1, 2]", '"text"', "42", "null"])
def test_non_object_line(tmp_path: Path, entry: str) -> None:
    path = _write(tmp_path, json.dumps(_fact()) + "\n" + entry + "\n")
    message = _error(path)
    assert f"{path}:2" in message and "expected a JSON object" in message


@pytest.mark.parametrize(
    "entry",
    [
        {"subject": "A", "relation": "lives in"},
        {**_fact(), "extra": 1},
        _fact(subject=""),
        _fact(obj="x" * 500),
        _fact(relation="{} and {}"),
        _fact(subject=5),
        {**_fact(), "bad\nkey": 1},
    ],
)
def test_invalid_fact(tmp_path: Path, entry: dict) -> None:
    path = _write(tmp_path, "# header\n" + json.dumps(entry) + "\n")
    assert f"{path}:2" in _error(path)


def test_too_many_facts(tmp_path: Path) -> None:
    lines = [json.dumps(_fact(f"Person {i}")) for i in range(MAX_FACTS_PER_FILE + 1)]
    message = _error(_write(tmp_path, "\n".join(lines)))
    assert "more than" in message and f":{MAX_FACTS_PER_FILE + 1}" in message


def test_conflicting_duplicates(tmp_path: Path) -> None:
    lines = [json.dumps(_fact()), json.dumps(_fact("Mei Sato")), json.dumps(_fact(obj="Porto"))]
    path = _write(tmp_path, "\n".join(lines))
    message = _error(path)
    assert f"{path}:3" in message and f"{path}:1" in message
    assert "Lisbon" in message and "Porto" in message


def test_errors_are_sleepwake_errors(tmp_path: Path) -> None:
    with pytest.raises(SleepwakeError):
        load_facts(tmp_path / "missing.json")


# --- property ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=250), relation=st.text(max_size=250), obj=st.text(max_size=250))
def test_arbitrary_text_parses_or_raises_invalid_input(subject: str, relation: str, obj: str) -> None:
    data = {"subject": subject, "relation": relation, "object": obj}
    try:
        fact = parse_fact(data, where="prop")
    except InvalidInputError as exc:
        assert str(exc).startswith("prop:")
        return
    assert Fact.model_validate(fact.model_dump()) == fact
    assert parse_fact(fact.model_dump()) == fact
    assert fact.subject in fact.prompt()


@settings(max_examples=100, deadline=None)
@given(entry=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
))
def test_arbitrary_json_lines_never_traceback(tmp_path_factory: pytest.TempPathFactory, entry: object) -> None:
    path = tmp_path_factory.mktemp("prop") / "facts.jsonl"
    path.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    try:
        load_facts(path)
    except InvalidInputError as exc:
        assert "\n" not in str(exc)
