"""Model-based extraction: the loaded model lists facts as ``subject | relation | object`` lines.

A few-shot raw-completion prompt (small instruction models follow a pattern far better than an
instruction). Its output is only a proposal: lines about someone other than the user are
dropped, relations are mapped onto the rules' relation names (so a changed fact still replaces
the old one under the same (subject, relation) key; unmappable relations are dropped), and
every object then passes the same firewall as the rules' objects (``extract.extract``).
Off by default (``chat.extractor: rules``): measured with benchmarks/extraction.py.
"""

from __future__ import annotations

import re
from typing import Sequence

from sleepwake.chat import lexicon, patterns
from sleepwake.chat.rules import Found

PROMPT = """Extract the facts a speaker states about themselves. One fact per line as: subject | relation | object. Write "none" when there are none.

Text: Hello, I'm Sam Ortiz and I live in Denver.
Facts:
Sam Ortiz | name | Sam Ortiz
I | lives in | Denver

Text: Where is the train station?
Facts:
none

Text: I work as a baker and my favorite color is red.
Facts:
I | works as | a baker
I | favorite color | red

Text: My brother is called Tim. I'm allergic to cats.
Facts:
I | brother | Tim
I | allergic to | cats

Text: {turn}
Facts:
"""
USER_WORDS = {"i", "me", "my", "myself", "user", "the user", "speaker", "the speaker", "you"}
# First match wins; checked against the lowercased relation text.
CANONICAL = [
    (r"\bname\b", patterns.NAME), (r"born", patterns.BORN), (r"grew up", patterns.GREW), (r"\bfrom\b|origin", patterns.FROM),
    (r"\blives?\b|resid|home", patterns.LIVES), (r"allerg", patterns.ALLERGY),
    (r"native|mother tongue|first language", patterns.NATIVE), (r"speak|language", patterns.SPEAKS),
    (r"works? (?:for|at)|employ", patterns.EMPLOYER), (r"works? as|\bjob\b|profession|occupation", patterns.JOB),
    (r"\bage\b|years old", patterns.AGE), (r"birthday", patterns.BIRTHDAY), (r"graduat", patterns.GRADUATED),
    (r"stud(?:ies|y) at", patterns.STUDIES_AT), (r"studied at", patterns.STUDIED_AT), (r"studies|study", patterns.STUDIES),
    (r"studied|degree", patterns.STUDIED), (r"\bdiet\b", patterns.DIET), (r"nationality", patterns.NATIONALITY),
    (r"married", patterns.MARRIED), (r"\bdrives?\b", patterns.DRIVES), (r"\bplays? the\b|instrument", patterns.PLAYS),
    (r"\blikes?\b|\bloves?\b|enjoys?", patterns.LIKES),
]


def build_prompt(turn: str) -> str:
    return PROMPT.format(turn=" ".join(turn.split())[:600])


def canonical_relation(relation: str) -> str | None:
    text = relation.lower().strip()
    favorite = re.search(r"favou?rite\s+([a-z]+(?:\s+[a-z]+)?)", text)
    if favorite:
        return "{}'s favorite " + favorite.group(1).replace("colour", "color") + " is"
    for word, role in lexicon.ROLES.items():
        if re.search(rf"\b{re.escape(word)}\b", text) and "tongue" not in text:
            return "{}'s " + role + " is"
    for pattern, canonical in CANONICAL:
        if re.search(pattern, text):
            return canonical
    return None


def parse(completion: str, subject: str) -> list[Found]:
    """Fact lines up to the next example or blank line; only facts about the user."""
    found = []
    for line in completion.split("\n"):
        line = line.strip()
        if not line or line.lower().startswith(("text:", "none", "facts:")):
            break
        parts = [p.strip().strip(".") for p in line.split("|")]
        if len(parts) != 3 or not all(parts):
            continue
        who, relation, obj = parts
        canonical = canonical_relation(relation)
        if canonical == patterns.NAME:
            found.append(Found(patterns.NAME, obj, explicit=False))
        elif canonical and who.lower() in USER_WORDS | {subject.lower()}:
            found.append(Found(canonical, obj))
    return found


class ModelExtractor:
    """``extract.extract(turn, name, model=ModelExtractor(backend))``."""

    def __init__(self, backend, max_new_tokens: int = 48):
        self.backend = backend
        self.max_new_tokens = max_new_tokens

    def __call__(self, turn: str, subject: str) -> list[Found]:
        [completion] = self.backend.generate([build_prompt(turn)], self.max_new_tokens)
        return parse(completion, subject)

    def complete_many(self, turns: Sequence[str]) -> list[str]:
        """Batched completions (the benchmark scores many turns at once)."""
        return self.backend.generate([build_prompt(t) for t in turns], self.max_new_tokens)
