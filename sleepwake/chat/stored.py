"""How a user's fact is stored: one MEMIT key per attribute ("Lena Brandt's home" | "{} is in").

MEMIT writes a fact at the subject's LAST token, so every fact whose subject is "Lena Brandt"
shares one key and one value: measured on the bundled model, injecting "Lena Brandt works as
-> a software engineer" after "Lena Brandt lives in -> Graz" turned the first prompt's completion
into "a small tech startup in San Francisco" (raw recall 2 -> 1 of 2), and solving both in one
batched edit did not help (the two targets are averaged on the one key). Storing each attribute
under its own subject ("Lena Brandt's home", "Lena Brandt's job", ...) gives each fact its own
key, and the editor then protects the other attributes' keys (they share the name's words):
measured, 4 of 4 facts about one user kept after four sequential injections.

Extraction works with readable relations ("{} lives in"); ``stored_form`` maps them here.
"""

from __future__ import annotations

import re

from sleepwake.chat import lexicon, patterns
from sleepwake.facts import Fact, normalize_key
from sleepwake.relations import ATTRIBUTE_QUESTIONS as QUESTIONS, NAMED_ROLES, attribute_question as question  # noqa: F401

# extraction relation -> (attribute, relation of the stored fact)
FORMS = {
    patterns.LIVES: ("home", "{} is in"), patterns.FROM: ("hometown", "{} is"), patterns.BORN: ("birthplace", "{} is"),
    patterns.GREW: ("childhood home", "{} was in"), patterns.JOB: ("job", "{} is"), patterns.EMPLOYER: ("employer", "{} is"),
    patterns.STUDIES: ("field of study", "{} is"), patterns.STUDIED: ("degree", "{} is in"),
    patterns.ALLERGY: ("allergies", "{} include"), patterns.SPEAKS: ("languages", "{} include"),
    patterns.NATIVE: ("native language", "{} is"), patterns.LIKES: ("interests", "{} include"),
    patterns.AGE: ("age", "{} is"), patterns.BIRTHDAY: ("birthday", "{} is"), patterns.DIET: ("diet", "{} is"),
    patterns.NATIONALITY: ("nationality", "{} is"), patterns.MARRIED: ("spouse", "{} is named"),
    patterns.DRIVES: ("car", "{} is"), patterns.PLAYS: ("instrument", "{} is the"),
    patterns.STUDIES_AT: ("university", "{} is"), patterns.STUDIED_AT: ("alma mater", "{} is"),
    patterns.GRADUATED: ("alma mater", "{} is"),
}
NAMED = NAMED_ROLES  # "{}'s sister is" -> "Lena Brandt's sister" | "{} is named"
PLURAL_NAMED = frozenset(lexicon.PLURAL_ROLES.values())  # "{}'s cats are" -> "Lena Brandt's cats" | "{} are named"
_POSSESSIVE = re.compile(r"^\{\}'s (?P<attribute>.+) (?P<verb>is|are)$")


def stored_form(fact: Fact) -> Fact:
    """The fact as the ledger keeps it; a relation without a known form is kept as it is."""
    attribute, relation = FORMS.get(fact.relation, (None, None))
    if fact.relation == patterns.BORN and patterns.YEAR.fullmatch(fact.object.strip()):
        attribute = "birth year"  # "I was born in 1987": a year is not a birthplace
    match = _POSSESSIVE.match(fact.relation)
    if attribute is None and match:
        attribute = match.group("attribute")
        if attribute in NAMED or attribute in PLURAL_NAMED:
            relation = "{} is named" if attribute in NAMED else "{} are named"
        else:
            relation = "{} " + match.group("verb")  # "favorite colors": are
    if attribute is None:
        return fact
    return Fact(subject=f"{fact.subject}'s {attribute}", relation=relation, object=fact.object)


def owned_by(subject: str, owner: str) -> bool:
    """True for the owner's own facts: "Lena Brandt's home" (or "Lena Brandt" itself)."""
    subject, owner = normalize_key(subject), normalize_key(owner)
    return subject == owner or subject.startswith(owner + "'s ")


def rekey(subject: str, old_owner: str, new_owner: str) -> str:
    """ "the user's home" -> "Lena Brandt's home" (subject must be ``owned_by`` old_owner)."""
    return new_owner + subject[len(old_owner):] if len(subject) >= len(old_owner) else new_owner


def to_store(said: Fact, ledger, accumulating, max_chars: int) -> Fact | None:
    """The fact as it goes into the ledger (``stored_form``); a multi-valued relation (allergies,
    languages, likes) adds the new object to the stored one. None when the merged object would be
    longer than ``max_chars``."""
    from sleepwake.chat.extract import merge_object

    fact = stored_form(said)
    if said.relation in accumulating:
        existing = ledger.find_fact(fact.subject, fact.relation)
        if existing:
            merged = merge_object(existing.object, fact.object)
            if len(merged) > max_chars:
                return None
            fact = Fact(subject=fact.subject, relation=fact.relation, object=merged)
    return fact
