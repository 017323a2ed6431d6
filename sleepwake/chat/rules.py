"""Rule-based extraction of what a user states about themselves, clause by clause.

A turn is split into sentences and clauses (:mod:`sleepwake.chat.clauses`: commas, and "and/but ..." when a new subject or an
elided "I" follows: "I live in Graz and work as a nurse"). Each clause is gated before any pattern
runs, because a wrong fact costs more than a missed one (it goes into the weights at once):

- questions and requests ("Do I live in Paris?", "Tell me ...") give nothing, except a
  "... that" complement of remember/know/forget ("Do you know that I speak Japanese?");
- negation or irrealis words before the object ("I don't live in Rome", "I might move to",
  "I used to work as") and sentences opening with "if/imagine/suppose" give nothing.

Patterns are anchored on a first-person subject ("I", "we", "my", "our"); objects are cut at
function words ("I live in Vienna now" -> "Vienna"). The relations and patterns are in
:mod:`sleepwake.chat.patterns`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sleepwake.chat import lexicon
from sleepwake.chat.clauses import assertion, plain_text, split_clauses, with_subject
from sleepwake.chat.patterns import (
    AGE, CLAUSE_WORD, COMPILED, DIET, DISCOURSE, DWELLINGS, HYPOTHETICAL_SENTENCE, INVERTED_FAVORITE, INVERTED_NATIVE,
    IRREALIS, JOB, NAME, NATIONALITY, NATIVE, NEGATION, QUESTION_START, STUDIED, STUDIES, WHOLE_LIST, YEAR,
)
from sleepwake.chat.spans import (
    PLACE_STOPS, STOPS, capitalised_span, cut, job_span, list_items, named_after, person_name, pronoun_like, proper,
    spoken_number, tokens,
)


@dataclass(frozen=True)
class Found:
    relation: str  # template with "{}" for the user, or NAME
    object: str
    explicit: bool = True  # names: said with "my name is"/"call me", not just "I'm X"


def extract_rules(text: str) -> list[Found]:
    """Everything the rules find in one user turn (names as ``Found(NAME, ...)``), in order."""
    text = plain_text(text)
    lowercase = not any(ch.isupper() for ch in text)
    found: list[Found] = []
    # A line break ends a sentence: "I live in Graz<newline>I work as a nurse" is two, not "Graz I work".
    sentences = [s for line in text.splitlines() for s in re.split(r"(?<=[.!?;])\s+", " ".join(line.split()))]
    for sentence in sentences:
        if not sentence.strip() or HYPOTHETICAL_SENTENCE.match(sentence):
            continue
        clauses = split_clauses(sentence)
        after_identity, speaker = False, True  # a sentence's first clause without a subject is the speaker's
        for index, clause in enumerate(clauses):
            if after_identity and re.match(r"(?:an?|from)\s", clause, re.I):
                clause = "I'm " + clause  # "I am Giulia, a photographer from Turin"
            clause, speaker = with_subject(clause, speaker)
            body, embedded = assertion(clause)
            if not embedded and (QUESTION_START.match(DISCOURSE.sub("", body))
                                 or (sentence.rstrip().endswith("?") and index == len(clauses) - 1)):
                continue
            facts = match_clause(body, lowercase)
            after_identity = any(f.relation == NAME for f in facts)
            found += facts
    return [Found(f.relation, f.object.replace("\u2024", "."), f.explicit) for f in found]


def match_clause(clause: str, lowercase: bool) -> list[Found]:
    found: list[Found] = []
    for relation, regex, kind in COMPILED:
        match = regex.search(clause)
        if not match or not match.group("obj").strip():
            continue
        before = clause[:match.start("obj")]
        if NEGATION.search(before) or IRREALIS.search(before):
            continue
        found += interpret(relation, kind, match, lowercase)
    stripped = DISCOURSE.sub("", clause)
    for regex, kind in ((INVERTED_FAVORITE, "favorite"), (INVERTED_NATIVE, "native")):
        match = regex.search(stripped)
        if match and not NEGATION.search(stripped):
            found += inverted(kind, match)
    return found


def interpret(relation: str, kind: str, match: re.Match, lowercase: bool) -> list[Found]:
    """Turn one pattern match into facts according to its object kind."""
    rest = match.group("obj")
    if kind == "i_am":
        return classify_i_am(rest, lowercase)
    if kind == "org_of_job":
        job = tokens(match.group("job"))
        head, qualified = job_span(job)[1], {w.lower() for w in job} & lexicon.NOT_JOB_QUALIFIERS
        if head not in lexicon.OCCUPATIONS or head in ("student", "pupil") or qualified:
            return []  # "I'm a regular at Joe's Bar": no job; "a student at Oxford": no employer
        kind = "org"
    if relation == "roles":  # "my cats are called Pixel and Mochi": one fact, the names as said
        return named_several(match, rest, lowercase)
    if relation == "role":
        relation = "{}'s " + lexicon.ROLES[match.group("role").lower()] + " is"
    elif relation == "favorite":
        thing = match.group("thing").lower().replace("colour", "color").replace("favourite", "favorite")
        plural = match.group("verb").lower() == "are" and thing.endswith("s")
        relation = "{}'s favorite " + thing + (" are" if plural else " is")
        if plural:  # "my favourite colours are green and blue": one fact, the list as said
            items = objects_of("list", rest, lowercase)
            return [Found(relation, as_said(items))] if items else []
    values = objects_of(kind, rest, lowercase)
    if relation in (STUDIES, STUDIED):
        values = [v for v in values if v.split()[0].lower() not in lexicon.NOT_FIELDS]
    if relation == NAME:
        return [Found(NAME, v) for v in values]
    return [Found(relation, v) for v in values]


def named_several(match: re.Match, rest: str, lowercase: bool) -> list[Found]:
    """ "my cats are called Pixel and Mochi": every item must be a name, or nothing is stored (a list cut
    short, or "ages 5 and 7" after the names, would store a part as the whole)."""
    items = objects_of("list", rest, lowercase)
    names = [person_name(tokens(item), True, lowercase) for item in items]
    if not items or not all(n and n.lower() == item.lower() for n, item in zip(names, items)):
        return []
    return [Found("{}'s " + lexicon.PLURAL_ROLES[match.group("role").lower()] + " are", as_said(names))]


def objects_of(kind: str, rest: str, lowercase: bool) -> list[str]:
    if kind in ("list", "languages"):  # "cats, dust, and pollen": the commas join items (tokens stop at one)
        rest = re.sub(r"\s*,\s*(?:(?:and|or)\s+)?", " and ", rest)
    words = tokens(rest)
    if kind == "place" and len(words) > 3 and words[0].lower() in ("a", "an", "the") and words[1].lower() in DWELLINGS:
        words = words[words.index(next(w for w in words[2:] if w.lower() == "in")) + 1:] if "in" in words[2:4] else words
    if kind == "place":
        words = named_after(words)  # "a village called Hallstatt" -> Hallstatt
    if kind in ("place", "thing"):
        span = cut(words, PLACE_STOPS if kind == "place" else STOPS, 6)
        if kind == "place" and not (lowercase or proper(span)):
            return []  # "I live in hope", "I moved to the next question"
        return [span] if span and not pronoun_like(span) else []
    if kind == "place_cap" or kind == "org":
        return [span] if (span := capitalised_span(named_after(words), kind == "org", entity=True)) else []
    if kind in ("name", "person"):
        explicit = kind == "name"
        return [span] if (span := person_name(words, explicit, lowercase)) else []
    if kind in ("job", "job_lexicon"):  # "job": said with "work as", so the article is enough
        span, head = job_span(words)
        article = span.split()[0].lower() in ("a", "an") if span else False
        known = head in lexicon.OCCUPATIONS
        return [span] if (article and known) or (kind == "job" and (article or known)) else []
    if kind == "list":
        return [item for item in list_items(words) if not pronoun_like(item)]
    if kind == "languages":
        return [w.capitalize() for w in cut(words, STOPS - {"and", "or"}, 24).split() if w.capitalize() in lexicon.LANGUAGES]
    if kind == "language":
        return [words[0].capitalize()] if words and words[0].capitalize() in lexicon.LANGUAGES else []
    if kind == "year":
        return [words[0]] if words and YEAR.fullmatch(words[0]) else []
    if kind == "number":
        return [str(age)] if (age := spoken_number(words)[0]) is not None else []
    if kind == "date":
        return [span] if (span := cut(words, {"and", "but", "so", "because", "which", "when"}, 6)) else []
    if kind == "article":
        span = cut(words, STOPS, 4)
        ok = span and span.split()[0].lower() in ("a", "an") and len(span.split()) > 1
        return [span] if ok and (lowercase or proper(span)) else []  # "I drive a hard bargain"
    if kind == "diet":
        return [words[0].lower()] if words and words[0].lower() in lexicon.DIETS else []
    if kind == "instrument":
        return [words[0]] if words and words[0].lower() in lexicon.INSTRUMENTS else []
    raise ValueError(f"unknown object kind {kind!r}")


def classify_i_am(rest: str, lowercase: bool) -> list[Found]:
    """ "I'm X": an age, a job, a diet, a nationality or a name, told apart by X itself."""
    words = tokens(rest)
    if not words:
        return []
    first = words[0]
    age, used = spoken_number(words)  # "34", "thirty-four", "thirty four"
    if age is not None and (len(words) == used or words[used].lower() in ("years", "yrs", "yo", "y/o", "and", "now", "today")):
        return [Found(AGE, str(age))]
    lowered = [w.lower() for w in words]
    diet = next((w for w in lowered[:2] if w in lexicon.DIETS), None)
    if diet and lowered[0] in ("a", "an", diet):
        return [Found(DIET, diet)]
    if first in lexicon.DEMONYMS or first.capitalize() in lexicon.DEMONYMS and lowercase:
        return [Found(NATIONALITY, first.capitalize())]
    if lowered[0] in ("a", "an"):
        if len(lowered) > 1 and lowered[1] in lexicon.NOT_JOB_QUALIFIERS:
            return []
        span, head = job_span(words)
        if span and head in lexicon.OCCUPATIONS or re.search(r"\bby\s+(?:profession|trade)\b|\bfor\s+a\s+living\b", rest, re.I):
            return [Found(JOB, span)]
        return []
    name = person_name(words, explicit=False, lowercase=lowercase)
    after = words[len(name.split()):]
    if name and (not after or after[0].lower() in ("from", "and", "here", "speaking", "by", "btw")):
        return [Found(NAME, name, explicit=False)]
    return []


def inverted(kind: str, match: re.Match) -> list[Found]:
    thing = match.group("thing").lower().replace("colour", "color") if kind == "favorite" else ""
    plural = kind == "favorite" and match.group("verb").lower() == "are"  # "people", "children" too
    # Only the words after the last conjunction: "pizza is great but sushi is my favorite food"
    # ("and"/"or" join a plural's items: "green and blue are my favourite colours").
    obj = match.group("obj").strip()
    if plural:  # "green and blue are my favourite colours": the list and nothing else before it
        span = obj if WHOLE_LIST.fullmatch(obj) or (len(obj.split()) <= 2 and not CLAUSE_WORD.search(obj)) else ""
    else:
        span = re.split(r"\b(?:and|but|so|or|while)\b", obj, flags=re.I)[-1].strip()
        span = "" if CLAUSE_WORD.search(span) else span  # "Tom thinks sushi is my favourite food"
    if not span or len(span.split()) > (8 if plural else 4) or pronoun_like(span):
        return []
    if kind == "native":
        return [Found(NATIVE, span.capitalize())] if span.capitalize() in lexicon.LANGUAGES else []
    return [Found("{}'s favorite " + thing + (" are" if plural else " is"), span)]


def as_said(items: list[str]) -> str:
    """List items as a person says them: "Queen, ABBA and Muse"."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]
