"""Sentences and clauses of a user's turn, the text the rules read (:mod:`sleepwake.chat.rules`).

- ``plain_text``: only the user's own words (quotations of someone's "I", "> " lines, emoji, markdown
  and hashtags out);
- ``split_clauses``: a sentence into clauses at commas and at "and/but ..." before a new subject or
  an elided "I", a list after commas kept whole (``list_parts``);
- ``with_subject``: the "I" casual chat leaves out, put back where it is the speaker's;
- ``assertion``: the asserted part of a clause ("remember that ...", "I'd say ...").
"""

from __future__ import annotations

import re
import unicodedata

from sleepwake.chat.patterns import (
    APPOSITIVE, CONJUNCTION, DISCOURSE, ELIDED_SUBJECT, EMBEDDED, HAVE_NAMED, HEDGE, LAUGHTER, LIST_ITEMS,
    LIST_OPENER, QUOTATION, TITLE_DOT,
)
from sleepwake.chat.spans import PRONOUNS


def with_subject(clause: str, speaker: bool) -> tuple[str, bool]:
    """The clause with the "I" casual chat leaves out ("born in Krakow, grew up in Chicago, now living in
    Denver") put back when the subject left out is the speaker: at a sentence's start, or after a
    clause of the speaker's; and whether the next clause may take it ("my brother lives in Rome, born
    in Milan": the brother's, so nothing)."""
    bare = DISCOURSE.sub("", clause)
    elided = ELIDED_SUBJECT.match(bare)
    if elided and speaker:
        verb = elided.group("verb").lower()
        if verb in ("born", "raised", "brought"):
            return "I was " + bare, True
        return ("I'm " if verb.endswith("ing") or verb in ("based", "married") else "I ") + bare, True
    return clause, bool(re.match(r"(?:i|i'm|i've|im|we|we're)\b", bare, re.I))


def own_words(turn: str) -> str:
    """The turn without quotations of someone else's words ("> " lines, a quotation holding "I"/"my")."""
    return QUOTATION.sub(" ", turn)


def plain_text(text: str) -> str:
    """The user's own words (``own_words``), emoji, symbols and markdown marks ("**Oslo**") made spaces,
    typographic apostrophes straight, a title's dot kept from ending a sentence."""
    text = own_words(text.replace("\u2019", "'").replace("\u2018", "'"))
    text = re.sub(r"(?m)(?:^|(?<=\s))#+(?=\s)|(?:^|(?<=\s))#\w+", " ", text)  # headings, hashtags; not "C#"
    text = LAUGHTER.sub(" ", text)  # "I have two cats called Pixel and Mochi lol"
    text = "".join(" " if unicodedata.category(ch) in ("So", "Sk", "Cs", "Co") or ch in "*_~`" else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf" and ch not in "\ufe0e\ufe0f")
    return TITLE_DOT.sub("\\1\u2024", text)


def split_clauses(sentence: str) -> list[str]:
    sentence = APPOSITIVE.sub(r"\1 \2", sentence.rstrip(" .!?;"))  # "my boss, Mr Keller," -> one clause
    clauses = []
    for part in list_parts(re.split(r"\s*([,:;])\s*|\s+[-\u2013\u2014]\s+", sentence)):
        start, subject = 0, ""
        for match in CONJUNCTION.finditer(part):
            clauses.append(subject + part[start:match.start()])
            start = match.end()
            owner = HAVE_NAMED.search(clauses[-1]) if match.group("more") else None
            # An elided subject: "... and work as" is the speaker's; "... and a dog named Max" the owner's.
            subject = "I " if match.group("verb") else (owner.group("have") if owner else "")
        clauses.append(subject + part[start:])
    return [c.strip() for c in clauses if c.strip()]


def list_parts(pieces: list[str | None]) -> list[str]:
    """The comma-separated parts of a sentence (``pieces``: parts and the captured separators), with the
    items of a list put back together: "I'm allergic to cats, dust and pollen" is one clause, so all
    three are found; "I live in Graz, my sister is Mia" stays two. A list ends in "and"/"or" ("I like
    it, really" is no list), its items start as its first one does, capitalised or not ("I like dogs,
    Tom adores cats" is two clauses), and a new clause after it is its own ("... Liam and Sophia and
    my wife is Sarah")."""
    parts, seps = [p or "" for p in pieces[0::2]], list(pieces[1::2])
    out: list[str] = []
    start = 0
    while start < len(parts):
        end = start + 1
        opener = LIST_OPENER.search(parts[start])
        first = parts[start][opener.end():].split()[:1] if opener else []
        if opener and not (first and first[0].lower() in PRONOUNS):
            while end < len(parts) and seps[end - 1] == "," and continues_list(parts, seps, end, first):
                end += 1
            while end > start + 1 and not re.search(r"\b(?:and|or)\b", parts[end - 1], re.I):
                end -= 1
        out.append(", ".join(parts[start:end]))
        start = end
    return out


def continues_list(parts: list[str], seps: list, index: int, first: list[str]) -> bool:
    """Whether ``parts[index]`` continues a list whose first item begins with ``first``; a clause after
    its items ("Sophia and my wife is Sarah") is split off into a part of its own."""
    part = parts[index]
    clause = CONJUNCTION.search(part)
    head = part[: clause.start()] if clause else part
    word = re.sub(r"^(?:and|or)\s+", "", head.strip(), flags=re.I)[:1]
    if not word or not LIST_ITEMS.match(head) or (first and word.isupper() != first[0][0].isupper()):
        return False
    if clause:
        parts[index:index + 1] = [head, part[clause.start():]]
        seps.insert(index, None)
    return True


def assertion(clause: str) -> tuple[str, bool]:
    """The asserted part of a clause: the complement of "remember that ..." if there is one; after
    "I'd say (that)" what follows ("I'd say I'm from Texas" asserts, its "'d" is no irrealis)."""
    clause = HEDGE.sub("", clause)
    match = EMBEDDED.search(clause)
    return (clause[match.end():], True) if match else (clause, False)
