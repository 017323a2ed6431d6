"""Rule-based extraction of what a user states about themselves, clause by clause.

A turn is split into sentences and clauses (commas, and "and/but ..." when a new subject or an
elided "I" follows: "I live in Graz and work as a nurse"). Each clause is gated before any pattern
runs, because a wrong fact costs more than a missed one (it goes into the weights at once):

- questions and requests ("Do I live in Paris?", "Tell me ...") give nothing, except a
  "... that" complement of remember/know/forget ("Do you know that I speak Japanese?");
- negation or irrealis words before the object ("I don't live in Rome", "I might move to",
  "I used to work as") and sentences opening with "if/imagine/suppose" give nothing.

Patterns are anchored on a first-person subject ("I", "we", "my", "our"); objects are cut at
function words ("I live in Vienna now" -> "Vienna"). Relations are the phrases in ``RELATIONS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sleepwake.chat import lexicon
from sleepwake.chat.spans import (
    PLACE_STOPS, STOPS, capitalised_span, cut, job_span, list_items, named_after, person_name, pronoun_like, proper,
    spoken_number, tokens,
)

YEAR = re.compile(r"(?:1[89]|20)\d\d")  # a year someone was born in (1800-2099)
NAME = "name"  # pseudo-relation: the user's own name is the subject of their facts, not a fact
LIVES, FROM, BORN, GREW = "{} lives in", "{} is from", "{} was born in", "{} grew up in"
JOB, EMPLOYER, STUDIES, STUDIED = "{} works as", "{} works for", "{} studies", "{} studied"
ALLERGY, SPEAKS, NATIVE, LIKES = "{} is allergic to", "{} speaks", "The native language of {} is", "{} likes"
AGE, BIRTHDAY, DIET, NATIONALITY = "{}'s age is", "{}'s birthday is", "{}'s diet is", "{}'s nationality is"
MARRIED, DRIVES, PLAYS = "{} is married to", "{} drives", "{} plays the"
# Relations a user holds several objects of at once: a new statement adds to the stored object.
ACCUMULATING = frozenset({ALLERGY, SPEAKS, LIKES})


@dataclass(frozen=True)
class Found:
    relation: str  # template with "{}" for the user, or NAME
    object: str
    explicit: bool = True  # names: said with "my name is"/"call me", not just "I'm X"


ADV = r"(?:(?:actually|now|currently|also|still|really|just|recently|finally|mostly|already|" \
      r"officially|happily|proudly|do|totally|originally|definitely|even|both)\s+)*"
I, WE_I = r"\bi\s+", r"\b(?:i|we)\s+"
IM = r"(?-i:[Ii]m)"  # "Im"/"im": the apostrophe left out, as people type ("IM Sarah" is a message, not a name)
ME_AM = rf"\b(?:i\s*'m|{IM}|i\s+am)\s+"
WE_AM = rf"\b(?:i\s*'m|{IM}|i\s+am|we\s*'re|we\s+are)\s+"
MY = r"\b(?:my|our)\s+"
I_HAVE = r"\b(?:i|we)(?:\s*'ve\s+got|\s+have\s+got|\s+have|\s+got)\s+"
OBJ = r"(?P<obj>.*)$"
ROLE = "|".join(sorted((re.escape(r) for r in lexicon.ROLES), key=len, reverse=True))
# "a flat in Copenhagen": the dwelling is not the place.
DWELLINGS = frozenset("flat house apartment studio room dorm cottage condo bungalow houseboat".split())
NATIVE_WORDS = r"(?:native\s+language|mother\s+tongue|first\s+language)"

# (relation or a key for a computed one, pattern, object kind)
PATTERNS = [
    (NAME, rf"\bmy\s+name\s*(?:is|'s)\s+{OBJ}", "name"),
    (NAME, rf"\b(?:call\s+me|i\s*'m\s+called|i\s+am\s+called|people\s+call\s+me|i\s+go\s+by)\s+{OBJ}", "name"),
    ("i_am", rf"{ME_AM}{ADV}{OBJ}", "i_am"),
    (LIVES, rf"{WE_I}{ADV}(?:live|reside)\s+in\s+{OBJ}", "place"),
    (LIVES, rf"{WE_I}(?:'ve\s+|have\s+)?{ADV}(?:moved|relocated)\s+(?:back\s+)?to\s+{OBJ}", "place"),
    (LIVES, rf"(?:{WE_AM}|\b(?:i|we)(?:\s*'ve|\s+have)\s+been\s+){ADV}(?:living|based|settled|residing)\s+in\s+{OBJ}", "place"),
    (LIVES, rf"{MY}(?:home|house|flat|apartment)\s+is\s+in\s+{OBJ}", "place"),
    (LIVES, rf"^(?:my\s+)?home\s+(?:for\s+(?:me|us)\s+)?is\s+{OBJ}", "place_cap"),
    (FROM, rf"{ME_AM}{ADV}from\s+{OBJ}", "place"),
    (FROM, rf"{I}{ADV}(?:come|hail)\s+from\s+{OBJ}", "place"),
    (FROM, rf"{MY}home\s*town\s+is\s+{OBJ}", "place"),
    (FROM, rf"{WE_I}{ADV}moved\s+(?:here\s+)?from\s+{OBJ}", "place"),
    (FROM, rf"{ME_AM}(?:(?-i:[A-Z])\S*(?:\s+(?-i:[A-Z])\S*)*|an?\s+[^,;]*?)\s+from\s+{OBJ}", "place_cap"),
    (BORN, rf"{I}was\s+{ADV}born\s+in\s+{OBJ}", "place"),
    (BORN, rf"{I}was\s+{ADV}born\s+in\s+{OBJ}", "year"),
    (BIRTHDAY, rf"{I}was\s+{ADV}born\s+on\s+{OBJ}", "date"),
    (GREW, rf"(?:{WE_I}{ADV}grew\s+up|\b(?:i|we)\s+(?:was|were)\s+{ADV}(?:raised|brought\s+up))\s+in\s+{OBJ}", "place"),
    (JOB, rf"(?:{I}{ADV}work|{ME_AM}{ADV}(?:working|employed))\b[^,;]*?\bas\s+{OBJ}", "job"),
    (JOB, rf"\b(?:i\s*'ve|i\s+have)\s+been\s+{ADV}{OBJ}", "job_lexicon"),
    (JOB, rf"{MY}(?:job(?:\s+title)?|profession|occupation)\s+is\s+(?:being\s+)?{OBJ}", "job"),
    (EMPLOYER, rf"{I}{ADV}work\s+(?:remotely\s+|full[- ]time\s+|part[- ]time\s+)?(?:at|for)\s+{OBJ}", "org"),
    (EMPLOYER, rf"{ME_AM}{ADV}employed\s+(?:by|at)\s+{OBJ}", "org"),
    # "I'm a nurse at St Mary's", "I work as a chef for Nordic Foods": the employer, when the job is one.
    (EMPLOYER, rf"(?:{ME_AM}{ADV}|{I}{ADV}work\s+as\s+)(?P<job>an?\s+[^,;]*?)\s+(?:at|for)\s+{OBJ}", "org_of_job"),
    ("role", rf"{MY}(?P<role>{ROLE})\s*'s\s+name\s+is\s+{OBJ}", "name"),
    ("role", rf"{MY}(?P<role>{ROLE})(?:\s+is|\s*'s)\s+(?:called|named)\s+{OBJ}", "name"),
    ("role", rf"{I_HAVE}an?\s+(?P<role>{ROLE})\s+(?:called|named)\s+{OBJ}", "name"),
    ("role", rf"{MY}(?P<role>{ROLE})\s+(?:is\s+)?{OBJ}", "person"),
    (MARRIED, rf"(?:{ME_AM}|{I}got\s+){ADV}married\s+to\s+{OBJ}", "person"),
    ("favorite", rf"{MY}(?:absolute\s+|all[- ]time\s+)?fav(?:ou?rite)?\s+(?P<thing>[a-z]+(?:\s+[a-z]+){{0,2}}?)\s+(?:is|are)\s+{OBJ}", "thing"),
    (ALLERGY, rf"{ME_AM}{ADV}(?:very\s+|severely\s+|highly\s+|deathly\s+|quite\s+|mildly\s+)?allergic\s+to\s+{OBJ}", "list"),
    (ALLERGY, rf"{I}{ADV}have\s+(?:an?\s+)?(?:\w+\s+)?allerg(?:y|ies)\s+to\s+{OBJ}", "list"),
    (SPEAKS, rf"{WE_I}{ADV}(?:can\s+)?speak\s+(?!to\b|with\b|about\b|up\b|out\b){OBJ}", "languages"),
    (SPEAKS, rf"{ME_AM}{ADV}(?:fluent|bilingual|trilingual)\s+in\s+{OBJ}", "languages"),
    (NATIVE, rf"{MY}{NATIVE_WORDS}\s+is\s+{OBJ}", "language"),
    (NATIVE, rf"{ME_AM}a\s+native\s+{OBJ}", "language"),
    (AGE, rf"{I}{ADV}turned\s+{OBJ}", "number"),
    (BIRTHDAY, rf"{MY}birthday(?:\s+is|\s*'s)\s+(?:on\s+)?{OBJ}", "date"),
    (STUDIES, rf"(?:{I}{ADV}study|{ME_AM}{ADV}studying)\s+{OBJ}", "thing"),
    (STUDIED, rf"{I}{ADV}(?:studied|majored\s+in)\s+{OBJ}", "thing"),
    (STUDIED, rf"{I}{ADV}have\s+an?\s+(?:\w+(?:'s)?\s+)?degree\s+in\s+{OBJ}", "thing"),
    (DRIVES, rf"{I}{ADV}drive\s+{OBJ}", "article"),
    (PLAYS, rf"{I}{ADV}play\s+(?:the\s+)?{OBJ}", "instrument"),  # "I play guitar": an instrument, never a sport
    (LIKES, rf"{WE_I}{ADV}(?:like|love|enjoy|adore)\s+{OBJ}", "list"),
]
COMPILED = [(rel, re.compile(pattern, re.IGNORECASE), kind) for rel, pattern, kind in PATTERNS]
# Object-first statements, matched on the whole clause: "sushi is my favorite food".
INVERTED_FAVORITE = re.compile(r"^(?P<obj>.+?)\s+(?:is|are)\s+my\s+(?:absolute\s+)?favou?rite\s+(?P<thing>[a-z]+)\b", re.I)
INVERTED_NATIVE = re.compile(rf"^(?P<obj>\w+)\s+is\s+my\s+{NATIVE_WORDS}\b", re.I)

NEGATION = re.compile(r"\b(?:not|never|no\s+longer|no\s+more|nor|neither)\b|n't\b", re.I)
IRREALIS = re.compile(
    r"\b(?:if|would|could|might|may|wish|hope|hoping|want|wants|wanted|wanna|plan|plans|planning|"
    r"gonna|will|someday|maybe|perhaps|probably|thinking|considering|dream|dreaming|should|must|"
    r"suppose|imagine|pretend|unless|going\s+to|used\s+to|about\s+to|need\s+to|have\s+to|trying\s+to)\b|'d\b|'ll\b",
    re.I)
HYPOTHETICAL_SENTENCE = re.compile(r"^\W*(?:if|suppose|supposing|imagine|what\s+if|pretend|hypothetically)\b", re.I)
QUESTION_START = re.compile(
    r"^(?:do|does|did|is|are|am|was|were|can|could|would|will|should|shall|may|might|have|has|had|"
    r"where|what|what's|who|who's|whom|whose|which|when|why|how|tell\s+me|remind\s+me|guess|isn't|aren't)\b", re.I)
# "Remember that ...", "Do you know that ...", "don't forget that ...": the complement is asserted.
EMBEDDED = re.compile(r"\b(?:know|remember|forget|note|realise|realize|mention|mentioned|told\s+you|tell\s+you)\s+that\s+", re.I)
DISCOURSE = re.compile(
    r"^(?:(?:and|but|so|or|also|well|oh|hey|hi|hello|lol|btw|ok|okay|yes|yeah|anyway|honestly|"
    r"actually|then|plus|please)\b[\s,!.]*)+", re.I)
CONJUNCTION = re.compile(
    r"\s+(?:and|but|so|or|because|while|whereas|although|though|then)\s+(?=(?P<subject>i|i'm|i've|i'd|"
    r"my|we|we're|our|she|he|they|it|his|her|their|you)\b|(?P<verb>live|work|speak|grew|moved|study|"
    r"studied|have|love|like|enjoy|play|drive|am|was|come)\b|(?P<more>an?\s+(?:" + ROLE + r")\s+(?:called|named)\b))", re.I)
# "I have a cat named Luna [and a dog named Max]": the second pet is the same speaker's when the first was.
HAVE_NAMED = re.compile(rf"(?P<have>{I_HAVE})an?\s+(?:{ROLE})\s+(?:called|named)\s", re.I)
APPOSITIVE = re.compile(rf"\b((?:my|our)\s+(?:{ROLE}))\s*,\s*((?-i:[A-Z])[\w.\u2024]*(?:\s+(?-i:[A-Z])[\w.\u2024]*)*)\s*,", re.I)
TITLE_DOT = re.compile(r"\b(Mr|Mrs|Ms|Dr|Prof|St)\.", re.I)


def extract_rules(text: str) -> list[Found]:
    """Everything the rules find in one user turn (names as ``Found(NAME, ...)``), in order."""
    text = TITLE_DOT.sub("\\1\u2024", " ".join(text.replace("\u2019", "'").replace("\u2018", "'").split()))
    lowercase = not any(ch.isupper() for ch in text)
    found: list[Found] = []
    for sentence in re.split(r"(?<=[.!?;])\s+", text):
        if not sentence.strip() or HYPOTHETICAL_SENTENCE.match(sentence):
            continue
        clauses = split_clauses(sentence)
        after_identity = False
        for index, clause in enumerate(clauses):
            if after_identity and re.match(r"(?:an?|from)\s", clause, re.I):
                clause = "I'm " + clause  # "I am Giulia, a photographer from Turin"
            body, embedded = assertion(clause)
            if not embedded and (QUESTION_START.match(DISCOURSE.sub("", body))
                                 or (sentence.rstrip().endswith("?") and index == len(clauses) - 1)):
                continue
            facts = match_clause(body, lowercase)
            after_identity = any(f.relation == NAME for f in facts)
            found += facts
    return [Found(f.relation, f.object.replace("\u2024", "."), f.explicit) for f in found]


def split_clauses(sentence: str) -> list[str]:
    sentence = APPOSITIVE.sub(r"\1 \2", sentence.rstrip(" .!?;"))  # "my boss, Mr Keller," -> one clause
    clauses = []
    for part in re.split(r"\s*[,:;]\s*|\s+[-\u2013\u2014]\s+", sentence):
        start, subject = 0, ""
        for match in CONJUNCTION.finditer(part):
            clauses.append(subject + part[start:match.start()])
            start = match.end()
            owner = HAVE_NAMED.search(clauses[-1]) if match.group("more") else None
            # An elided subject: "... and work as" is the speaker's; "... and a dog named Max" the owner's.
            subject = "I " if match.group("verb") else (owner.group("have") if owner else "")
        clauses.append(subject + part[start:])
    return [c.strip() for c in clauses if c.strip()]


def assertion(clause: str) -> tuple[str, bool]:
    """The asserted part of a clause: the complement of "remember that ..." if there is one."""
    match = EMBEDDED.search(clause)
    return (clause[match.end():], True) if match else (clause, False)


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
        head = job_span(tokens(match.group("job")))[1]
        if head not in lexicon.OCCUPATIONS or head in ("student", "pupil"):
            return []  # "I'm a regular at Joe's Bar": no job; "a student at Oxford": no employer
        kind = "org"
    if relation == "role":
        relation = "{}'s " + lexicon.ROLES[match.group("role").lower()] + " is"
    elif relation == "favorite":
        thing = match.group("thing").lower().replace("colour", "color").replace("favourite", "favorite")
        relation = "{}'s favorite " + thing + " is"
    values = objects_of(kind, rest, lowercase)
    if relation == NAME:
        return [Found(NAME, v) for v in values]
    return [Found(relation, v) for v in values]


def objects_of(kind: str, rest: str, lowercase: bool) -> list[str]:
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
        return [span] if (span := capitalised_span(named_after(words), allow_the=kind == "org")) else []
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
        return [w.capitalize() for w in cut(words, STOPS - {"and", "or"}, 8).split() if w.capitalize() in lexicon.LANGUAGES]
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
    # Only the words after the last conjunction: "pizza is great but sushi is my favorite food".
    span = re.split(r"\b(?:and|but|so|or|while)\b", match.group("obj"), flags=re.I)[-1].strip()
    if not span or len(span.split()) > 4 or pronoun_like(span):
        return []
    if kind == "native":
        return [Found(NATIVE, span.capitalize())] if span.capitalize() in lexicon.LANGUAGES else []
    thing = match.group("thing").lower().replace("colour", "color")
    return [Found("{}'s favorite " + thing + " is", span)]
