"""The patterns of the rule-based extraction (:mod:`sleepwake.chat.rules`): the relations a user's
statement can hold, the first-person patterns that find them, and the gates (negation, irrealis,
questions) and clause boundaries the rules apply before any pattern runs.

Each pattern is (relation or a key for a computed one, regular expression with an ``obj`` group,
object kind); the kind says how :func:`sleepwake.chat.rules.objects_of` reads the object.
"""

from __future__ import annotations

import re

from sleepwake.chat import lexicon

YEAR = re.compile(r"(?:1[89]|20)\d\d")  # a year someone was born in (1800-2099)
NAME = "name"  # pseudo-relation: the user's own name is the subject of their facts, not a fact
LIVES, FROM, BORN, GREW = "{} lives in", "{} is from", "{} was born in", "{} grew up in"
JOB, EMPLOYER, STUDIES, STUDIED = "{} works as", "{} works for", "{} studies", "{} studied"
ALLERGY, SPEAKS, NATIVE, LIKES = "{} is allergic to", "{} speaks", "The native language of {} is", "{} likes"
AGE, BIRTHDAY, DIET, NATIONALITY = "{}'s age is", "{}'s birthday is", "{}'s diet is", "{}'s nationality is"
MARRIED, DRIVES, PLAYS = "{} is married to", "{} drives", "{} plays the"
STUDIES_AT, GRADUATED, STUDIED_AT = "{} studies at", "{} graduated from", "{} studied at"
# Relations a user holds several objects of at once: a new statement adds to the stored object.
ACCUMULATING = frozenset({ALLERGY, SPEAKS, LIKES})


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
ROLES = "|".join(sorted((re.escape(r) for r in lexicon.PLURAL_ROLES), key=len, reverse=True))
COUNT = r"(?:two|three|four|five|[2-9])"
BORN_AND_RAISED = rf"{I}was\s+{ADV}born\s+and\s+(?:raised|bred|brought\s+up)\s+in\s+{OBJ}"
# The field between "study" and "at" ("I study law at Harvard"): never how, when or with whom.
FIELD = r"(?:(?!(?:for|with|in|on|until|till|during|" + "|".join(sorted(lexicon.NOT_FIELDS)) + r")\b)\w+\s+){0,3}"
DEGREE = r"(?:phd|ph\.d\.?|doctorate|masters?|master's|bachelors?|bachelor's|degree|mba|msc|bsc|undergrad(?:uate)?|postdoc)"
STILL = r"(?=\S+(?:\s+\S+){0,3}?\s+(?:for|since)\s)"  # "... Tokyo for ten years": the object, then how long
KIN = r"(?:(?:older|younger|little|big|elder|baby|twin|oldest|youngest|eldest|step|half)[\s-]+)?"  # "my older brother"
# "a flat in Copenhagen": the dwelling is not the place.
DWELLINGS = frozenset("flat house apartment studio room dorm cottage condo bungalow houseboat".split())
NATIVE_WORDS = r"(?:native\s+language|mother\s+tongue|first\s+language)"

# (relation or a key for a computed one, pattern, object kind)
PATTERNS = [
    (NAME, rf"\bmy\s+name\s*(?:is|'s)\s+{OBJ}", "name"),
    (NAME, rf"\b(?:call\s+me|i\s*'m\s+called|i\s+am\s+called|people\s+call\s+me|i\s+go\s+by)\s+{OBJ}", "name"),
    ("i_am", rf"{ME_AM}{ADV}{OBJ}", "i_am"),
    (LIVES, rf"{WE_I}{ADV}(?:live|reside)\s+(?:with\s+[^,;]*?\s+)?in\s+{OBJ}", "place"),  # "with my parents in Leeds"
    (LIVES, rf"{WE_I}(?:'ve\s+|have\s+)?{ADV}(?:moved|relocated)\s+(?:back\s+)?to\s+{OBJ}", "place"),
    (LIVES, rf"(?:{WE_AM}|\b(?:i|we)(?:\s*'ve|\s+have)\s+been\s+){ADV}(?:living|based|settled|residing)\s+in\s+{OBJ}", "place"),
    (LIVES, rf"{MY}(?:home|house|flat|apartment)\s+is\s+in\s+{OBJ}", "place"),
    # "I've lived in Tokyo for ten years" (still there); "I've lived in Tokyo" alone may be long ago.
    (LIVES, rf"\b(?:i|we)(?:\s*'ve|\s+have)\s+{ADV}lived\s+in\s+{STILL}{OBJ}", "place"),
    (LIVES, rf"^(?:my\s+)?home\s+(?:for\s+(?:me|us)\s+)?is\s+{OBJ}", "place_cap"),
    (FROM, rf"{ME_AM}{ADV}from\s+{OBJ}", "place"),
    (FROM, rf"{I}{ADV}(?:come|hail)\s+from\s+{OBJ}", "place"),
    (FROM, rf"{MY}home\s*town\s+is\s+{OBJ}", "place"),
    (FROM, rf"{WE_I}{ADV}moved\s+(?:here\s+)?from\s+{OBJ}", "place"),
    (FROM, rf"{ME_AM}(?:(?-i:[A-Z])\S*(?:\s+(?-i:[A-Z])\S*){{0,5}}|an?\s+[^,;]{{0,80}}?)\s+from\s+{OBJ}", "place_cap"),
    (BORN, rf"{I}was\s+{ADV}born\s+in\s+{OBJ}", "place"),
    (BORN, BORN_AND_RAISED, "place"),
    (GREW, BORN_AND_RAISED, "place"),  # one statement, two facts
    (BORN, rf"{I}was\s+{ADV}born\s+in\s+{OBJ}", "year"),
    (BIRTHDAY, rf"{I}was\s+{ADV}born\s+on\s+{OBJ}", "date"),
    (GREW, rf"(?:{WE_I}{ADV}grew\s+up|\b(?:i|we)\s+(?:was|were)\s+{ADV}(?:raised|brought\s+up))\s+in\s+{OBJ}", "place"),
    (JOB, rf"(?:{I}{ADV}work|{ME_AM}{ADV}(?:working|employed))\b[^,;]*?\bas\s+{OBJ}", "job"),
    (JOB, rf"\b(?:i\s*'ve|i\s+have)\s+been\s+{ADV}{OBJ}", "job_lexicon"),
    (DIET, rf"\b(?:i\s*'ve|i\s+have)\s+been\s+{ADV}(?:an?\s+)?{OBJ}", "diet"),  # "I've been vegetarian for years"
    (JOB, rf"{MY}(?:job(?:\s+title)?|profession|occupation)\s+is\s+(?:being\s+)?{OBJ}", "job"),
    (EMPLOYER, rf"{I}{ADV}work\s+(?:remotely\s+|full[- ]time\s+|part[- ]time\s+)?(?:at|for)\s+{OBJ}", "org"),
    (EMPLOYER, rf"{ME_AM}{ADV}employed\s+(?:by|at)\s+{OBJ}", "org"),
    # "I've worked for Siemens for six years" (still there); without for/since it may be long ago.
    (EMPLOYER, rf"\b(?:i|we)(?:\s*'ve|\s+have)\s+{ADV}worked\s+(?:at|for)\s+{STILL}{OBJ}", "org"),
    # "I'm a nurse at St Mary's", "I work as a chef for Nordic Foods": the employer, when the job is one.
    (EMPLOYER, rf"(?:{ME_AM}{ADV}|{I}{ADV}work\s+as\s+)(?P<job>an?\s+[^,;]*?)\s+(?:at|for)\s+{OBJ}", "org_of_job"),
    ("role", rf"{MY}{KIN}(?P<role>{ROLE})\s*'s\s+name\s+is\s+{OBJ}", "name"),
    ("role", rf"{MY}{KIN}(?P<role>{ROLE})(?:\s+is|\s*'s)\s+(?:called|named)\s+{OBJ}", "name"),
    ("role", rf"{I_HAVE}an?\s+{KIN}(?P<role>{ROLE})\s+(?:called|named)\s+{OBJ}", "name"),
    ("role", rf"{MY}{KIN}(?P<role>{ROLE})\s+(?:is\s+)?{OBJ}", "person"),
    # Two or more at once: "I have two cats, Pixel and Mochi", "my sisters are called Anna and Eva".
    ("roles", rf"{I_HAVE}{COUNT}\s+(?P<role>{ROLES})\s+(?:called|named)\s+{OBJ}", "names"),
    ("roles", rf"{MY}(?P<role>{ROLES})\s+are\s+(?:called|named)\s+{OBJ}", "names"),
    (MARRIED, rf"(?:{ME_AM}|{I}got\s+){ADV}married\s+to\s+{OBJ}", "person"),
    ("favorite", rf"{MY}(?:absolute\s+|all[- ]time\s+)?fav(?:ou?rite)?\s+(?P<thing>[a-z]+(?:\s+[a-z]+){{0,2}}?)\s+(?P<verb>is|are)\s+{OBJ}", "thing"),
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
    # Where: "I study law at Harvard", "I'm a student at ETH" (a capitalised name, never "at night").
    (STUDIES_AT, rf"(?:{I}{ADV}study|{ME_AM}{ADV}(?:studying|an?\s+(?:\w+\s+)?student))\s+{FIELD}at\s+{OBJ}", "org"),
    (STUDIED_AT, rf"{I}{ADV}(?:studied\s+{FIELD}|did\s+(?:my|a|an)\s+{DEGREE}(?:\s+degree)?\s+)at\s+{OBJ}", "org"),
    (GRADUATED, rf"{I}{ADV}graduated\s+from\s+{OBJ}", "org"),
    (DRIVES, rf"{I}{ADV}drive\s+{OBJ}", "article"),
    (PLAYS, rf"{I}{ADV}play\s+(?:the\s+)?{OBJ}", "instrument"),  # "I play guitar": an instrument, never a sport
    (LIKES, rf"{WE_I}{ADV}(?:like|love|enjoy|adore)\s+{OBJ}", "list"),
]
COMPILED = [(rel, re.compile(pattern, re.IGNORECASE), kind) for rel, pattern, kind in PATTERNS]
# Object-first statements, matched on the whole clause: "sushi is my favorite food".
INVERTED_FAVORITE = re.compile(r"^(?P<obj>.+?)\s+(?P<verb>is|are)\s+my\s+(?:absolute\s+)?favou?rite\s+(?P<thing>[a-z]+)\b", re.I)
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
# A message quoting a conversation (a chat app's title or follow-up request: "<chat_history> USER: ...
# ASSISTANT: ..."): its "I" is not only the user's, and nothing in it is stated now.
QUOTED_TRANSCRIPT = re.compile(r"^[^\w\n]*(?:assistant|ai|bot|chatbot|model|system)\s*:|</?chat_history>", re.I | re.M)
# "Translate to German: I live in Vienna", "Can you proofread this: ...": what follows the colon is text to
# work on, not something the user states.
TASK_MATERIAL = re.compile(
    r"^[^\w\n]*(?:(?:hey|hi|hello|ok|okay|so)\b[^\w\n]*)*(?:(?:can|could|would|will)\s+you\s+|please\s+|pls\s+)*(?:translate|summari[sz]e|proofread|rewrite|"
    r"rephrase|paraphrase|reword|polish|shorten|edit\s+(?:this|my|the)|(?:fix|correct|check|improve)\s+(?:the\s+|my\s+|this\s+)?"
    r"(?:grammar|spelling|punctuation|typos|text|wording|sentence|paragraph|email|letter|message))\b[^:\n]*(?::|\n)", re.I)
# Someone else's words inside a message: a quotation ("...", typographic quotes) or a "> " quoted line.
_QUOTED = r"[^\"\u201c\u201d\u00ab\u00bb\n]{0,500}?"
QUOTATION = re.compile(
    rf"(?<![\w'])[\"\u201c\u201e\u00ab](?={_QUOTED}\b(?:i|i'm|im|i've|my|me|we|our)\b){_QUOTED}[\"\u201c\u201d\u00bb]"
    r"|^[ \t]*>.*$", re.M | re.I)
# A clause that starts with one of these verbs and no subject: "born in Krakow", "now living in Denver".
ELIDED_SUBJECT = re.compile(
    r"^(?:(?:now|currently|also|just|recently|originally|still)\s+)*(?P<verb>born|raised|brought(?=\s+up)|grew(?=\s+up)|"
    r"moved|relocated|turned|graduated|studied|majored|living|based|working|married|work|live|speak)\b", re.I)
LAUGHTER = re.compile(r"\b(?:lol|lmao|rofl|haha[ha]*|hehe[he]*|xd)\b", re.I)
HEDGE = re.compile(r"^\W*(?:i\s*'d|i\s+would)\s+say\s+(?:that\s+)?", re.I)
# "Remember that ...", "Do you know that ...", "don't forget that ...": the complement is asserted.
EMBEDDED = re.compile(r"\b(?:know|remember|forget|note|realise|realize|mention|mentioned|told\s+you|tell\s+you)\s+that\s+", re.I)
DISCOURSE = re.compile(
    r"^(?:(?:and|but|so|or|also|well|oh|hey|hi|hello|lol|btw|ok|okay|yes|yeah|anyway|honestly|"
    r"actually|then|plus|please)\b[\s,!.]*)+", re.I)
CONJUNCTION = re.compile(
    r"\s+(?:and|but|so|or|because|while|whereas|although|though|then)\s+(?=(?P<subject>i|i'm|i've|i'd|"
    r"my|we|we're|our|she|he|they|it|his|her|their|you)\b|(?P<verb>live|work|speak|grew|moved|study|"
    r"studied|have|love|like|enjoy|play|drive|am|was|come)\b|(?P<more>an?\s+(?:" + ROLE + r")\s+(?:called|named)\b))", re.I)
# A clause that opens a list ("allergic to cats, dust and pollen"), and a comma part that only continues it:
# one to three words an item, at most two items, no subject of its own.
LIST_OPENER = re.compile(
    r"\b(?:(?:are|were)\s+(?:called|named)|allergic\s+to|allerg(?:y|ies)\s+to|like|love|enjoy|adore|speak|(?:fluent|bilingual)\s+in|"
    r"fav(?:ou?rite)?\s+[a-z]+s\s+are|(?:'ve|have)\s+(?:got\s+)?(?:two|three|four|five|[2-9])\s+\w+(?:\s+(?:called|named))?)\b", re.I)
_VERBS = r"is|are|was|were|am|be|has|have|had|does|do|did|said|says|likes?|loves?|prefers?|hates?|speaks?|enjoys?|" \
         r"thinks?|knows?|believes?|guess|forgot|reckons?|told|feels?|adores?|owns?|wants?|keeps?|fears?|eats?|drinks?"
# A continuation that turns the list around or away: "I speak English, not French"; "I love animals, except snakes".
_NOT_ITEM = r"not|no|never|nor|except|excluding|especially|particularly|mostly|mainly|but|apart|besides|instead|" \
            r"rather|hate|hates|dislike|that|that's|thats|it's|and\s+not"
# Items of one or two words, the last after "and"/"or", ending the text: "cats and dogs", "red, green or blue".
_WORD = rf"(?!(?:and|or|{_VERBS})\b)[\w'-]+"
WHOLE_LIST = re.compile(rf"(?:{_WORD}(?:\s+{_WORD})?\s*,\s*)*{_WORD}(?:\s+{_WORD})?\s+(?:and|or)\s+{_WORD}(?:\s+{_WORD})?", re.I)
CLAUSE_WORD = re.compile(rf"\b(?:{_VERBS}|these|those|days|now|lately|today|guess)\b", re.I)  # "Tom thinks sushi"
_ITEM = rf"(?!(?:i|i'm|my|we|our|he|she|they|it|you|{_NOT_ITEM})\b)(?!\S*\s+(?:{_VERBS})\b)[\w'-]+(?:\s+[\w'-]+)?"
LIST_ITEMS = re.compile(rf"^(?:(?:and|or)\s+)?{_ITEM}(?:\s+(?:and|or)\s+{_ITEM})?$", re.I)
# "I have a cat named Luna [and a dog named Max]": the second pet is the same speaker's when the first was.
HAVE_NAMED = re.compile(rf"(?P<have>{I_HAVE})an?\s+(?:{ROLE})\s+(?:called|named)\s", re.I)
APPOSITIVE = re.compile(rf"\b((?:my|our)\s+(?:{ROLE}))\s*,\s*((?-i:[A-Z])[\w.\u2024]*(?:\s+(?-i:[A-Z])[\w.\u2024]*)*)\s*,", re.I)
TITLE_DOT = re.compile(r"\b(Mr|Mrs|Ms|Dr|Prof|St)\.", re.I)
