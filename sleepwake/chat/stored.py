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

from sleepwake.chat import lexicon, rules
from sleepwake.facts import Fact, normalize_key

# extraction relation -> (attribute, relation of the stored fact)
FORMS = {
    rules.LIVES: ("home", "{} is in"), rules.FROM: ("hometown", "{} is"), rules.BORN: ("birthplace", "{} is"),
    rules.GREW: ("childhood home", "{} was in"), rules.JOB: ("job", "{} is"), rules.EMPLOYER: ("employer", "{} is"),
    rules.STUDIES: ("field of study", "{} is"), rules.STUDIED: ("degree", "{} is in"),
    rules.ALLERGY: ("allergies", "{} include"), rules.SPEAKS: ("languages", "{} include"),
    rules.NATIVE: ("native language", "{} is"), rules.LIKES: ("interests", "{} include"),
    rules.AGE: ("age", "{} is"), rules.BIRTHDAY: ("birthday", "{} is"), rules.DIET: ("diet", "{} is"),
    rules.NATIONALITY: ("nationality", "{} is"), rules.MARRIED: ("spouse", "{} is named"),
    rules.DRIVES: ("car", "{} is"), rules.PLAYS: ("instrument", "{} is the"),
}
NAMED = frozenset(lexicon.ROLES.values())  # "{}'s sister is" -> "Lena Brandt's sister" | "{} is named"
_POSSESSIVE = re.compile(r"^\{\}'s (?P<attribute>.+) is$")


def stored_form(fact: Fact) -> Fact:
    """The fact as the ledger keeps it; a relation without a known form is kept as it is."""
    attribute, relation = FORMS.get(fact.relation, (None, None))
    match = _POSSESSIVE.match(fact.relation)
    if attribute is None and match:
        attribute = match.group("attribute")
        relation = "{} is named" if attribute in NAMED else "{} is"
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


# The question a user would ask about each attribute ("{}": the owner), for consolidation training
# and chat-recall checks of chat-stored facts; the probes' generic "Complete this sentence" is a
# poor stand-in for "Where does Lena Brandt live?".
QUESTIONS = {
    "home": "Where does {} live?", "hometown": "Where is {} from?", "birthplace": "Where was {} born?",
    "childhood home": "Where did {} grow up?", "job": "What does {} do for a living?",
    "employer": "Who does {} work for?", "field of study": "What does {} study?", "degree": "What did {} study?",
    "allergies": "What is {} allergic to?", "languages": "Which languages does {} speak?",
    "native language": "What is {}'s native language?", "interests": "What does {} like?",
    "age": "How old is {}?", "birthday": "When is {}'s birthday?", "diet": "What diet does {} follow?",
    "nationality": "What is {}'s nationality?", "spouse": "Who is {} married to?",
    "car": "What car does {} drive?", "instrument": "Which instrument does {} play?",
}


def question(fact: Fact) -> str | None:
    """A natural question for a chat-stored fact, or None for a fact of another shape."""
    owner, sep, attribute = fact.subject.rpartition("'s ")
    if not sep or not owner:
        return None
    if attribute in QUESTIONS:
        return QUESTIONS[attribute].format(owner)
    if attribute in NAMED:
        return f"What is the name of {owner}'s {attribute}?"
    if attribute.startswith("favorite "):
        return f"What is {owner}'s {attribute}?"
    return None
