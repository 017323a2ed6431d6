"""Facts from a user turn: rules (and optionally the model), a firewall, and the subject.

Subject: the user's own facts are stored under their name once it is known (stated in this turn,
an earlier one, or any earlier session: the ledger keeps it), else under ``PLACEHOLDER`` ("the
user"). The session re-stores placeholder facts under the name when the name arrives.

Names: "my name is X" / "call me X" always set the name (a user may correct it); a bare "I'm X"
sets it only while no name is known, so "I'm Batman" in jest never renames a known user.

Firewall: every object must occur in the user's own words (normalised, word-bounded; a number also
when said in words: "thirty-four" grounds 34). Rule objects pass by construction; the model
extractor's objects often do not (a small model completes "I live in Graz" with "Austria"), and
those are dropped, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from sleepwake.chat.clauses import own_words
from sleepwake.chat.patterns import ACCUMULATING, NAME, QUOTED_TRANSCRIPT, TASK_MATERIAL
from sleepwake.chat.rules import Found, extract_rules
from sleepwake.chat.spans import said_numbers
from sleepwake.errors import InvalidInputError
from sleepwake.facts import Fact, normalize_answer, normalize_key, parse_fact

PLACEHOLDER = "the user"
MAX_NAME_CHARS = 60  # a longer "name" is a paste or a joke, and every fact would carry it
ModelExtractor = Callable[[str, str], list[Found]]  # (turn, subject) -> findings


@dataclass
class Extraction:
    facts: list[Fact]
    name: str | None = None  # a name stated in this turn that the caller should adopt
    rejected: list[dict] = field(default_factory=list)  # what the firewall or validation dropped


def grounded(value: str, turn: str) -> bool:
    """True when ``value`` occurs in ``turn`` as whole words (case, accents, punctuation folded)."""
    needle = normalize_answer(value)
    if needle.isdigit() and int(needle) in _numbers(turn):
        return True  # "thirty-four" said, 34 stored
    return bool(needle) and f" {needle} " in _folded(turn)


@lru_cache(maxsize=4)  # one turn is checked once per fact found in it: fold it once (a 64 KB turn took 23 s)
def _folded(turn: str) -> str:
    return f" {normalize_answer(turn)} "


@lru_cache(maxsize=4)
def _numbers(turn: str) -> frozenset[int]:
    return frozenset(said_numbers(turn))


def choose_name(found: list[Found], known_name: str | None, turn: str) -> str | None:
    """The name this turn establishes, or None (see the module docstring for the policy)."""
    names = [f for f in found if f.relation == NAME and grounded(f.object, turn) and len(f.object) <= MAX_NAME_CHARS]
    explicit = [f.object for f in names if f.explicit]
    if explicit:
        new = explicit[-1]
    elif names and known_name is None:
        new = names[-1].object
    else:
        return None
    return None if known_name and normalize_key(new) == normalize_key(known_name) else new


def extract(turn: str, known_name: str | None = None, model: ModelExtractor | None = None,
            use_rules: bool = True) -> Extraction:
    """Facts stated in ``turn`` about the user, with their subject resolved and the firewall applied;
    none from a turn that quotes a conversation or hands over text to work on (``QUOTED_TRANSCRIPT``,
    ``TASK_MATERIAL``); quotations inside a turn are someone else's words (``clauses.own_words``)."""
    if QUOTED_TRANSCRIPT.search(turn) or TASK_MATERIAL.match(turn):
        return Extraction(facts=[], name=None)
    found = extract_rules(turn) if use_rules else []
    turn = own_words(turn)  # the model reads, and the firewall grounds in, the user's own words only
    if model is not None:
        # The model only adds relations the rules did not find (measured: letting it override
        # them turned "a nurse practitioner" into "a nurse"), and its names are ignored: a wrong
        # one would re-key every fact of the user.
        by_rules = {f.relation for f in found}
        proposed = model(turn, choose_name(found, known_name, turn) or known_name or PLACEHOLDER)
        found += [f for f in proposed if f.relation != NAME and f.relation not in by_rules]
    name = choose_name(found, known_name, turn)
    subject = name or known_name or PLACEHOLDER
    result = Extraction(facts=[], name=name)
    by_key: dict[tuple, Fact] = {}
    for item in found:
        if item.relation == NAME:
            continue
        if not grounded(item.object, turn):
            result.rejected.append({"relation": item.relation, "object": item.object, "reason": "not in the user's words"})
            continue
        try:
            fact = parse_fact({"subject": subject, "relation": item.relation, "object": item.object}, "extracted fact")
        except InvalidInputError as exc:
            result.rejected.append({"relation": item.relation, "object": item.object, "reason": str(exc)})
            continue
        key = (fact.key, normalize_answer(fact.object)) if fact.relation in ACCUMULATING else fact.key
        by_key.pop(key, None)  # a later statement in the same turn wins ("..., no, Lyon")
        by_key[key] = fact
    result.facts = list(by_key.values())
    return result


def merge_object(old: str, new: str) -> str:
    """For relations with several objects (allergies, languages, likes): old items plus the new
    one, "a, b and c". Unchanged when ``new`` is already among them."""
    items = [part.strip() for part in old.replace(" and ", ", ").split(",") if part.strip()]
    if normalize_answer(new) in {normalize_answer(i) for i in items}:
        return old
    items.append(new)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
