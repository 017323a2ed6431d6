"""The relation catalogue: how every kind of fact is asked about, in one place.

- pool relations (``factpool.RELATIONS``): raw template, paraphrases and chat question;
- free-form relations people state in chat ("lives in", "works as"): a natural question;
- facts the chat stores per attribute ("Lena Brandt's home" | "{} is in", see ``chat.stored``):
  the question a user would ask about that attribute;
- anything else: "{}'s X is" and "The X of {} is" read as "What is ...?", and a last-resort
  "Complete this sentence" question.

The probes (``models.probes``), consolidation training and the chat all ask through here.
"""

from __future__ import annotations

import re

from sleepwake.factpool import RELATIONS
from sleepwake.facts import Fact

# The roles a chat-stored "named" attribute can have ("Lena Brandt's sister" | "{} is named").
NAMED_ROLES = frozenset({
    "wife", "husband", "partner", "spouse", "girlfriend", "boyfriend", "fiancé", "fiancée", "sister",
    "brother", "son", "daughter", "mother", "father", "grandmother", "grandfather", "aunt", "uncle", "cousin",
    "niece", "nephew", "child", "best friend", "boss", "manager", "roommate", "flatmate",
    "dog", "puppy", "cat", "kitten", "rabbit", "hamster", "bird", "parrot", "horse", "turtle",
})
GENERIC_LEADS = ("Here is a fact: {}", "As most people know, {}")
_BY_TEMPLATE = {relation.template: relation for relation in RELATIONS}


def paraphrase_prompts(fact: Fact) -> list[str]:
    relation = _BY_TEMPLATE.get(fact.relation)
    if relation is not None:
        return [template.replace("{}", fact.subject) for template in relation.paraphrases]
    prompt = fact.prompt()
    return [lead.format(prompt) for lead in GENERIC_LEADS]


# Questions for common free-form relations (what people say about themselves in chat), keyed by
# the relation with the subject slot removed; "{}'s X is" and "The X of {} is" are handled generically.
QUESTIONS = {
    "lives in": "Where does {} live?", "is from": "Where is {} from?", "was born in": "Where was {} born?",
    "grew up in": "Where did {} grow up?", "works as": "What does {} do for a living?",
    "works as a": "What does {} do for a living?", "works as an": "What does {} do for a living?",
    "works for": "Who does {} work for?", "studies": "What does {} study?", "studied": "What did {} study?",
    "is allergic to": "What is {} allergic to?", "speaks": "Which languages does {} speak?",
    "likes": "What does {} like?", "is married to": "Who is {} married to?", "drives": "What car does {} drive?",
    "plays the": "Which instrument does {} play?", "plays": "What does {} play?",
}
_POSSESSIVE = re.compile(r"^\{\}'s (?P<noun>[\w' -]+?) (?:is|are)$")
_OF_SUBJECT = re.compile(r"^[Tt]he (?P<noun>[\w' -]+?) of \{\} (?:is|are)$")


def chat_question(fact: Fact) -> str:
    """The question the chat probe asks (and consolidation trains on) for ``fact``."""
    relation = _BY_TEMPLATE.get(fact.relation)
    if relation is not None:
        return relation.question.replace("{}", fact.subject)
    asked = attribute_question(fact)  # facts the chat stored ("Lena Brandt's home" | "{} is in")
    if asked:
        return asked
    template = fact.relation.strip() if "{}" in fact.relation else "{} " + fact.relation.strip()
    known = QUESTIONS.get(" ".join(template.replace("{}", "").split()).lower()) if template.startswith("{} ") else None
    if known:
        return known.replace("{}", fact.subject)
    for pattern, shape in ((_POSSESSIVE, "What is {}'s {noun}?"), (_OF_SUBJECT, "What is the {noun} of {}?")):
        match = pattern.match(template)
        if match:
            return shape.replace("{noun}", match["noun"]).replace("{}", fact.subject)
    return f'Complete this sentence with the right fact: "{fact.prompt()} ..."'



# The question a user would ask about each attribute ("{}": the owner), for consolidation training
# and chat-recall checks of chat-stored facts; the probes' generic "Complete this sentence" is a
# poor stand-in for "Where does Lena Brandt live?".
ATTRIBUTE_QUESTIONS = {
    "home": "Where does {} live?", "hometown": "Where is {} from?", "birthplace": "Where was {} born?",
    "birth year": "In which year was {} born?",
    "childhood home": "Where did {} grow up?", "job": "What does {} do for a living?",
    "employer": "Who does {} work for?", "field of study": "What does {} study?", "degree": "What did {} study?",
    "allergies": "What is {} allergic to?", "languages": "Which languages does {} speak?",
    "native language": "What is {}'s native language?", "interests": "What does {} like?",
    "age": "How old is {}?", "birthday": "When is {}'s birthday?", "diet": "What diet does {} follow?",
    "nationality": "What is {}'s nationality?", "spouse": "Who is {} married to?",
    "car": "What car does {} drive?", "instrument": "Which instrument does {} play?",
    "university": "Where does {} study?", "alma mater": "Where did {} study?",
}


def attribute_question(fact: Fact) -> str | None:
    """A natural question for a chat-stored fact, or None for a fact of another shape."""
    owner, sep, attribute = fact.subject.rpartition("'s ")
    if not sep or not owner:
        return None
    if attribute in ATTRIBUTE_QUESTIONS:
        return ATTRIBUTE_QUESTIONS[attribute].format(owner)
    if attribute in NAMED_ROLES:
        return f"What is the name of {owner}'s {attribute}?"
    if fact.relation == "{} are named":
        return f"What are the names of {owner}'s {attribute}?"
    if attribute.startswith("favorite "):
        return f"What {'are' if fact.relation == '{} are' else 'is'} {owner}'s {attribute}?"
    return None
