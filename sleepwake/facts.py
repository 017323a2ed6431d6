"""Facts: the unit of memory, validated at the boundary.

A fact is ``(subject, relation, object)``. The relation is either a plain phrase
(prompt = ``subject + " " + relation``) or a template with exactly one ``{}`` that the
subject fills (``"{}'s favorite food is"``). Facts are identified by their normalised
``(subject, relation)`` pair: a new object for the same pair replaces the old one.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sleepwake.errors import InvalidInputError

MAX_FIELD_CHARS = 200  # long enough for any real name/phrase; longer is almost surely a paste error


def normalize_key(text: str) -> str:
    """Identity key of a subject or relation: NFKC, casefolded, single spaces, no edge punctuation."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,:;!?")


def normalize_answer(text: str) -> str:
    """Form used by recall probes: accents folded, casefolded, punctuation to spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


class Fact(BaseModel):
    """One fact to remember. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    subject: str = Field(description="Who or what the fact is about, e.g. 'Aria Nakamura'.")
    relation: str = Field(
        description="The relation phrase ('lives in') or a template with one '{}' for the subject."
    )
    object: str = Field(description="The answer the model should give, e.g. 'Thessaloniki'.")

    @field_validator("subject", "relation", "object")
    @classmethod
    def _check_field(cls, value: str, info) -> str:
        if not value:
            raise ValueError(f"{info.field_name} is empty")
        if len(value) > MAX_FIELD_CHARS:
            raise ValueError(f"{info.field_name} is {len(value)} characters (max {MAX_FIELD_CHARS})")
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise ValueError(f"{info.field_name} contains control characters")
        return value

    @model_validator(mode="after")
    def _check_template(self) -> "Fact":
        if self.relation.count("{}") > 1:
            raise ValueError("relation template has more than one '{}'")
        if "{}" in self.subject or "{}" in self.object:
            raise ValueError("'{}' is only allowed in the relation")
        if re.search(r"\{[^}]", self.relation.replace("{}", "")):
            raise ValueError("relation has a brace other than a single '{}' placeholder")
        return self

    @property
    def key(self) -> tuple[str, str]:
        """The (subject, relation) identity used for deduplication."""
        return normalize_key(self.subject), normalize_key(self.relation)

    def prompt(self) -> str:
        """The raw-completion prompt whose continuation should be the object."""
        return render_prompt(self.subject, self.relation)


def render_prompt(subject: str, relation: str) -> str:
    """``"{}'s food is"`` -> ``"Ann's food is"``; ``"lives in"`` -> ``"Ann lives in"``."""
    if "{}" in relation:
        return relation.replace("{}", subject)
    return f"{subject} {relation}"


def parse_fact(data: object, where: str = "fact") -> Fact:
    """Validate one fact from untrusted data; raise a one-line InvalidInputError naming ``where``."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: expected an object with subject, relation, object")
    try:
        return Fact.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError -> one line
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = []
            for err in errors():
                loc = ".".join(str(p) for p in err.get("loc", ())) or "fact"
                msg = err.get("msg", "invalid").removeprefix("Value error, ")
                parts.append(f"{loc}: {msg}")
            raise InvalidInputError(f"{where}: " + "; ".join(parts)) from None
        raise InvalidInputError(f"{where}: {exc}") from None


# --- Fact files ---------------------------------------------------------------------------

MAX_FACTS_PER_FILE = 10_000  # one sleep cycle edits far fewer; more is almost surely the wrong file
MAX_FILE_BYTES = 64 * 1024 * 1024  # 10k facts of 3 x 200 chars fit easily; refuse to slurp huge files


def _one_line(message: str) -> str:
    """Collapse newlines (e.g. from odd paths or JSON keys) so the CLI prints exactly one line."""
    return re.sub(r"\s*[\r\n\u2028\u2029]+\s*", " ", message).strip()


def _fail(message: str) -> InvalidInputError:
    """Build the one-line error every fact-file problem is reported with."""
    return InvalidInputError(_one_line(message))


def _read_text(path: Path) -> str:
    """Read a fact file as UTF-8 (a BOM is tolerated), turning every OS failure into one line."""
    if not path.exists():
        raise _fail(f"{path}: no such fact file")
    if path.is_dir():
        raise _fail(f"{path}: is a directory, expected a .jsonl or .json fact file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise _fail(f"{path}: file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(f"{path}: cannot read file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _fail(f"{path}:{line}: file is not valid UTF-8 (byte {exc.start})") from None


def _json_error(where: str, exc: Exception) -> InvalidInputError:
    """One-line message for a JSON decode failure (also RecursionError and int-size limits)."""
    if isinstance(exc, json.JSONDecodeError):
        return _fail(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
    if isinstance(exc, RecursionError):
        return _fail(f"{where}: invalid JSON: nested too deeply")
    return _fail(f"{where}: invalid JSON: {exc}")


def _entries_from_list(path: Path, text: str) -> list[tuple[str, object]]:
    """Entries of a JSON file whose top level is a list; labels are ``path[index]``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise _json_error(str(path), exc) from None
    if not isinstance(data, list):
        raise _fail(f"{path}: top level must be a list of fact objects")
    return [(f"{path}[{index}]", item) for index, item in enumerate(data)]


def _entries_from_lines(path: Path, text: str) -> list[tuple[str, object]]:
    """Entries of a JSONL file; blank lines and ``#`` comments are skipped; labels are ``path:line``."""
    entries: list[tuple[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            entries.append((where, json.loads(stripped)))
        except (ValueError, RecursionError) as exc:
            if not entries and stripped.startswith("{") and _is_single_object(text):
                raise _fail(
                    f"{where}: file holds one multi-line JSON object; "
                    "expected one fact per line (JSONL) or a JSON list"
                ) from None
            raise _json_error(where, exc) from None
    return entries


def _is_single_object(text: str) -> bool:
    """True when the whole file is one pretty-printed JSON object (a common mistake worth naming)."""
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def load_facts(path: str | Path) -> list[Fact]:
    """Load facts from a JSONL file (one object per line) or a JSON list, in file order.

    Identical duplicates are merged; the same (subject, relation) with different objects is
    an error naming both places, because silently picking one would lose the user's intent.
    """
    path = Path(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        entries = _entries_from_list(path, text)
    else:
        entries = _entries_from_lines(path, text)

    facts: list[Fact] = []
    seen: dict[tuple[str, str], tuple[str, Fact]] = {}
    for where, item in entries:
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise _fail(f"{where}: expected a JSON object with subject, relation, object, got {kind}")
        try:
            fact = parse_fact(item, where=where)
        except InvalidInputError as exc:
            raise _fail(str(exc)) from None
        previous = seen.get(fact.key)
        if previous is not None:
            first_where, first = previous
            if normalize_key(first.object) != normalize_key(fact.object):
                raise _fail(
                    f"{where}: conflicts with {first_where}: same subject and relation "
                    f"({fact.subject!r}, {fact.relation!r}) but objects {first.object!r} and {fact.object!r}"
                )
            continue  # identical duplicate: keep the first occurrence
        if len(facts) >= MAX_FACTS_PER_FILE:
            raise _fail(f"{where}: more than {MAX_FACTS_PER_FILE:,} facts in {path}; split the file")
        seen[fact.key] = (where, fact)
        facts.append(fact)
    if not facts:
        raise _fail(f"{path}: no facts found (file is empty or only comments)")
    return facts
