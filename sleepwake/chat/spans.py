"""Object spans: where the object of a first-person statement ends.

"I live in Vienna now" -> "Vienna", "I work as a nurse at the clinic" -> "a nurse": an object
runs until a function word that starts something else (a preposition, a conjunction, a time
word). Objects are always a contiguous run of the user's own words, so they pass the firewall
by construction; the firewall still checks them (model output goes through the same gate).
"""

from __future__ import annotations

import re

from sleepwake.chat import lexicon

STOPS = frozenset("""
and but or so because since as with for at in on from to by who which where that when while now
today tonight currently these this last next ago anymore again originally actually though too
right yet already nowadays lately recently btw anyway please if until just here there every all
""".split())
# Places keep "in/of/on" inside ("Frankfurt am Main", "Stratford upon Avon") but stop at "in"
# followed by a year or region only through the generic list below.
PLACE_STOPS = STOPS
PRONOUNS = frozenset("""
it that this these those you him her them me us there here nothing none nobody someone something
everything anything everyone anybody somebody one
""".split())
POSSESSIVE_STARTS = frozenset("your his her their its my our".split())  # "I love my job": not a stored object
_EDGE = ".,!?;:\"'()[]{}"


def tokens(text: str) -> list[str]:
    """Words with edge punctuation removed (a title's dot is a placeholder, so it stays)."""
    out = []
    for raw in text.split():
        word = raw.strip(_EDGE)
        if word:
            out.append(word)
        if raw and raw[-1] in ".,!?;:":
            break  # an object never runs over punctuation
    return out


def cut(words: list[str], stops, limit: int) -> str:
    """The leading words up to the first stop word, or '' when longer than ``limit``."""
    span = []
    for index, word in enumerate(words):
        if index > 0 and word.lower() in stops:
            break
        if index == 0 and word.lower() in stops:
            return ""
        span.append(word)
    return " ".join(span) if len(span) <= limit else ""


def is_capitalised(word: str) -> bool:
    return word[:1].isupper()


# Number words an age is said in; none under five ("I'm one of them" is no age).
_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split()) if i >= 5}
_DIGITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split()) if i}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}


def spoken_number(words: list[str]) -> tuple[int | None, int]:
    """(value, words used) of a number at the start: "34", "thirty-four" or "thirty four"; (None, 0) if none."""
    first = words[0].lower() if words else ""
    if re.fullmatch(r"\d{1,3}", first):
        return int(first), 1
    tens, _, unit = first.partition("-")
    if tens in _TENS and unit in _DIGITS:
        return _TENS[tens] + _DIGITS[unit], 1
    if first in _TENS and len(words) > 1 and words[1].lower() in _DIGITS:
        return _TENS[first] + _DIGITS[words[1].lower()], 2
    value = _UNITS.get(first, _TENS.get(first))
    return (value, 1) if value is not None else (None, 0)


def said_numbers(text: str) -> set[int]:
    """Every number ``text`` says in words or digits ("I'm thirty-four" -> {34}): the firewall's view of
    an age the rules wrote as digits."""
    words = [w.strip(_EDGE) for w in text.split()]
    return {value for i in range(len(words)) if (value := spoken_number(words[i:])[0]) is not None}


def named_after(words: list[str]) -> list[str]:
    """ "a bakery called Sunrise Breads" -> ["Sunrise", "Breads"]: the name a described place goes by
    (an article, at most three words, then "called"/"named"); other words come back as they are."""
    lowered = [w.lower() for w in words[:5]]
    if lowered and lowered[0] in ("a", "an", "the"):
        for index, word in enumerate(lowered[1:], start=1):
            if word in ("called", "named"):
                return words[index + 1:]
    return words


def capitalised_span(words: list[str], allow_the: bool, entity: bool = False) -> str:
    """A proper-noun run at the start: capitalised words, with a title ("Mr.") or name particles
    ("van", "de") inside; at most four words. An ``entity`` (a place or an organisation, not a person)
    may also hold "of"/"for" between capitalised words, up to six: "the Bank of England"."""
    links = lexicon.NAME_PARTICLES | ({"of", "for"} if entity else set())
    span: list[str] = []
    for index, word in enumerate(words):
        lowered = word.lower().replace("\u2024", ".")
        if is_capitalised(word) or (index == 0 and allow_the and lowered == "the"):
            span.append(word)
        elif span and lowered in links and index + 1 < len(words) and is_capitalised(words[index + 1]) and (
                lowered != "for" or span[-1].lower() in lexicon.INSTITUTIONS):  # not "Tesco for Christmas"
            span.append(word)
        else:
            break
    while span and not is_capitalised(span[-1]):
        span.pop()
    if not span or len(span) > (6 if entity else 4) or (span[0].lower() == "the" and len(span) == 1):
        return ""
    return " ".join(span)


def list_items(words: list[str]) -> list[str]:
    """ "cats, dust and pollen" -> ["cats", "dust", "pollen"] (each item cut at a stop word)."""
    span = cut(words, STOPS - {"and", "or"}, 24)
    items = []
    for part in f" {span} ".replace(",", " and ").replace(" or ", " and ").split(" and "):
        item = part.strip()
        if item and len(item.split()) <= 3 and item.lower() not in STOPS:
            items.append(item)
    return items


def pronoun_like(span: str) -> bool:
    """Objects that refer to something else ("I love it", "I like your idea") are not facts."""
    first = span.split()[0].lower()
    return first in PRONOUNS or first in POSSESSIVE_STARTS or first == "to" or first in ("when", "how", "what")


def job_span(words: list[str]) -> tuple[str, str]:
    """ "a professor of history at ..." -> ("a professor of history", "professor")."""
    span = cut(words, STOPS - {"of"}, 5)
    head = span.split(" of ")[0].split()
    return span, head[-1].lower() if head else ""


def proper(span: str) -> bool:
    """A span holding a proper noun (and not just a year): what places and brands look like."""
    return any(is_capitalised(w) for w in span.split()) and not span.isdigit()


def person_name(words: list[str], explicit: bool, lowercase: bool) -> str:
    """A name at the start of ``words``: capitalised words; lowercase ones only when the user
    said it is a name ("my name is kevin") in a turn typed all in lowercase."""
    if explicit and lowercase and words and words[0].isalpha() and words[0] not in STOPS | {"not", "a", "an", "the"}:
        span = cut(words, STOPS | {"not", "a", "an", "the", "later", "back", "tomorrow", "please"}, 3)
        return " ".join(w.capitalize() for w in span.split())
    span = capitalised_span(words, allow_the=False)
    if not span or any(w in lexicon.NOT_NAMES for w in span.split()):
        return ""
    return span
