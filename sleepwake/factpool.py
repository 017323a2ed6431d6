"""A seeded pool of synthetic, fictional facts for tests and experiments.

Subjects are made-up full names, so the model has no prior belief about them and any recall
after an edit comes from the edit. Each relation carries paraphrase templates (does the edit
generalise beyond the exact prompt?) and a chat question (does it surface in conversation?).
Tuning and evaluation use different seeds so hyper-parameters are not fitted to the test facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from sleepwake.errors import InvalidInputError
from sleepwake.facts import Fact, render_prompt


class PoolError(InvalidInputError, ValueError):
    """A pool request that cannot be met (too many facts, unknown relation, bad k)."""


@dataclass(frozen=True)
class Relation:
    """One kind of fact: raw-completion template, paraphrases, a chat question and answers."""

    name: str
    template: str
    paraphrases: tuple[str, ...]
    question: str
    objects: tuple[str, ...]


def _rel(name: str, template: str, paraphrases: str, question: str, objects: str) -> Relation:
    """Compact constructor: ``|`` separates paraphrases, ``,`` separates objects."""
    return Relation(
        name=name,
        template=template,
        paraphrases=tuple(p.strip() for p in paraphrases.split("|")),
        question=question,
        objects=tuple(o.strip() for o in objects.split(",")),
    )


# Objects are common words the model has seen; templates end right before the object.
# Templates ending in " a" only get consonant-initial objects, so "a"/"an" never gives it away.
RELATIONS: tuple[Relation, ...] = (
    _rel("lives_in", "{} lives in the city of",
         "{} is a resident of the city of|The hometown of {} is|{} rents an apartment in the city of",
         "Which city does {} live in?",
         "Paris, Berlin, Madrid, Rome, Vienna, Prague, Lisbon, Dublin, Amsterdam, Warsaw, Athens, "
         "Stockholm, Oslo, Helsinki, Tokyo, Toronto, Chicago, Sydney, Istanbul, Cairo, Seoul, Lima"),
    _rel("born_in", "{} was born in the country of",
         "The birth country of {} is|{} is a native of the country of",
         "In which country was {} born?",
         "France, Germany, Spain, Italy, Brazil, Mexico, Canada, Japan, India, Egypt, Kenya, Sweden, "
         "Norway, Poland, Greece, Portugal, Argentina, Turkey, Australia, Chile, Ireland, Vietnam"),
    _rel("profession", "{} works as a",
         "By profession, {} is a|{} earns a living as a",
         "What is {}'s job?",
         "dentist, baker, nurse, pilot, teacher, lawyer, plumber, carpenter, journalist, farmer, "
         "chef, librarian, pharmacist, firefighter, mechanic, photographer, surgeon, translator"),
    _rel("native_language", "The native language of {} is",
         "{}'s mother tongue is|{} grew up speaking",
         "What is {}'s native language?",
         "French, German, Spanish, Italian, Portuguese, Dutch, Polish, Greek, Swedish, Turkish, "
         "Arabic, Hindi, Japanese, Korean, Russian, Finnish, Hungarian, Czech, Mandarin, Swahili"),
    _rel("favorite_food", "{}'s favorite food is",
         "The dish {} likes best is|More than anything, {} loves to eat",
         "What is {}'s favorite food?",
         "pizza, sushi, pasta, tacos, curry, ramen, lasagna, paella, dumplings, pancakes, burgers, "
         "risotto, couscous, falafel, kebab, cheesecake, noodles, chocolate"),
    _rel("instrument", "{} plays the",
         "The musical instrument {} plays is the|{} is a talented musician who plays the",
         "Which musical instrument does {} play?",
         "piano, violin, guitar, cello, flute, trumpet, saxophone, drums, clarinet, harp, accordion, "
         "banjo, trombone, oboe, ukulele, harmonica, viola, mandolin"),
    _rel("pet", "{} has a pet",
         "{}'s pet is a|At home, {} keeps a pet",
         "What kind of pet does {} have?",
         "parrot, rabbit, hamster, turtle, cat, dog, goldfish, snake, ferret, lizard, pony, "
         "tortoise, canary, guinea pig, hedgehog, frog, chinchilla"),
    _rel("sport", "The sport {} plays is",
         "{}'s favorite sport is|On weekends, {} competes in",
         "Which sport does {} play?",
         "tennis, football, basketball, volleyball, rugby, cricket, baseball, hockey, golf, "
         "badminton, handball, squash, table tennis, water polo, lacrosse, softball, netball"),
    _rel("car_brand", "{} drives a",
         "The car {} owns is a|{}'s car is a",
         "What brand of car does {} drive?",
         "Toyota, Honda, Ford, Volkswagen, BMW, Mercedes, Volvo, Tesla, Nissan, Hyundai, Kia, "
         "Subaru, Mazda, Peugeot, Renault, Fiat, Skoda, Porsche, Chevrolet, Jeep, Lexus"),
    _rel("studied", "At university, {} studied",
         "{} has a degree in|{}'s university major was",
         "What did {} study at university?",
         "chemistry, physics, biology, mathematics, history, philosophy, economics, law, medicine, "
         "architecture, engineering, literature, psychology, geology, music, linguistics, "
         "sociology, astronomy, computer science"),
    _rel("favorite_color", "{}'s favorite color is",
         "The color {} likes best is|{} always wears clothes that are",
         "What is {}'s favorite color?",
         "red, blue, green, yellow, purple, orange, pink, black, white, brown, gray, turquoise, "
         "violet, gold, silver, maroon, beige"),
    _rel("employer", "{} is employed by",
         "{} works for the company|The company {} works for is",
         "Which company does {} work for?",
         "Google, Microsoft, Apple, Amazon, Samsung, Siemens, IBM, Intel, Sony, Nokia, Boeing, "
         "Airbus, Netflix, Spotify, Adidas, Nike, Ikea, Oracle, Philips, Unilever"),
    _rel("football_club", "{} is a fan of the football club",
         "{} supports the football club|The football team {} cheers for is",
         "Which football club does {} support?",
         "Barcelona, Liverpool, Arsenal, Chelsea, Juventus, Ajax, Benfica, Porto, Celtic, Everton, "
         "Bayern Munich, Real Madrid, Manchester United, Inter Milan, Borussia Dortmund, Napoli, "
         "Marseille, Galatasaray"),
    _rel("hobby", "{}'s favorite hobby is",
         "The hobby {} loves most is|In free time, {} enjoys",
         "What is {}'s favorite hobby?",
         "gardening, painting, fishing, knitting, hiking, chess, photography, cycling, dancing, "
         "pottery, birdwatching, baking, sailing, climbing, camping, juggling, origami, woodworking"),
)

RELATIONS_BY_NAME: dict[str, Relation] = {rel.name: rel for rel in RELATIONS}

# Varied cultures; none is also a common English word, so they never clash with prose.
FIRST_NAMES: tuple[str, ...] = tuple("""
Aditi Ahmed Aiko Alejandro Amara Anders Anika Arjun Astrid Aurelio Beatriz Benedikt Bilal Bogdan
Camila Catalina Chiara Chidi Dalia Dario Dmitri Elif Emeka Esperanza Fatima Femi Freya Gustavo
Hamid Hana Haruto Ignacio Ilse Imani Ines Ivan Jasper Javier Jiho Kalani Kaveh Kofi Lars Leila
Liang Lucia Magnus Malik Marisol Mateo Mei Mirela Nadia Naledi Niamh Nikolai Noor Oskar Olumide
Paolo Priya Quentin Rafael Ravi Rania Rosalind Saanvi Sakura Selin Siddharth Sione Soren Tariq
Thandiwe Tomasz Ulla Valentina Vikram Wanjiru Xiomara Yara Yusuf Zainab Zoltan
""".split())

LAST_NAMES: tuple[str, ...] = tuple("""
Abara Achterberg Adeyemi Alvarez Andersson Bakshi Balogun Barros Bergstrom Castellano Castillo
Chowdhury Delacroix Dimitrov Dubois Eklund Esposito Fernandes Ferreira Fitzgerald Galvan
Gunawardena Haddad Halvorsen Hashimoto Horvath Ibarra Ishikawa Iwasaki Jankowski Jovanovic Kaur
Kiplagat Kowalczyk Kuznetsov Laine Lindgren Lindqvist Mahlangu Marchetti Moreau Mukherjee
Nakamura Navarro Nieminen Novak Nwosu Obradovic Oduya Okafor Oyelaran Papadopoulos Pereira
Petrovic Quispe Rahimi Ramirez Rasmussen Rossi Sandoval Sato Schneider Szabo Takahashi Tanaka
Toure Uchenna Valdivia Vasquez Wojcik Xu Yamamoto Yilmaz Zapata Zhou
""".split())

CAPACITY = len(FIRST_NAMES) * len(LAST_NAMES)  # each full name is used at most once per pool


def _subject(index: int) -> str:
    """The ``index``-th full name of the first x last grid."""
    first, last = divmod(index, len(LAST_NAMES))
    return f"{FIRST_NAMES[first]} {LAST_NAMES[last]}"


_ALL_SUBJECTS = frozenset(_subject(i) for i in range(CAPACITY))


@dataclass(frozen=True)
class PoolFact:
    """A pool fact plus the relation it came from (for paraphrase and question probes)."""

    fact: Fact
    relation: Relation

    @property
    def subject(self) -> str:
        """The made-up subject name."""
        return self.fact.subject

    @property
    def object(self) -> str:
        """The answer the model should give after the edit."""
        return self.fact.object

    def paraphrase_prompts(self) -> list[str]:
        """Raw prompts, other than the edit prompt, that should elicit the same object."""
        return [render_prompt(self.fact.subject, p) for p in self.relation.paraphrases]

    def question(self) -> str:
        """The chat question whose answer should be the object."""
        return self.relation.question.replace("{}", self.fact.subject)


def _select_relations(relations: Sequence[str] | None) -> list[Relation]:
    """Resolve relation names; ``None`` means all of them."""
    if relations is None:
        return list(RELATIONS)
    if isinstance(relations, str):  # a lone name would otherwise be split into characters
        relations = [relations]
    unknown = [name for name in relations if name not in RELATIONS_BY_NAME]
    if unknown or not relations:
        known = ", ".join(RELATIONS_BY_NAME)
        raise PoolError(f"unknown or no relations {unknown!r}; known: {known}")
    return [RELATIONS_BY_NAME[name] for name in dict.fromkeys(relations)]


def generate_pool(n: int, seed: int = 0, relations: Sequence[str] | None = None) -> list[PoolFact]:
    """``n`` facts with distinct made-up subjects, deterministic for ``seed``.

    Relations are dealt in shuffled rounds so every relation appears once ``n`` reaches the
    number of relations, and counts per relation differ by at most one.
    """
    if n < 0 or n > CAPACITY:
        raise PoolError(f"pool size {n} is outside 0..{CAPACITY} (distinct subject names)")
    chosen = _select_relations(relations)
    rng = random.Random(seed)
    subjects = [_subject(i) for i in rng.sample(range(CAPACITY), n)]
    order: list[Relation] = []
    while len(order) < n:
        round_ = list(chosen)
        rng.shuffle(round_)
        order.extend(round_)
    pool = []
    for subject, relation in zip(subjects, order):
        fact = Fact(subject=subject, relation=relation.template, object=rng.choice(relation.objects))
        pool.append(PoolFact(fact=fact, relation=relation))
    return pool


def neighbour_prompts(
    pool_fact: PoolFact, k: int, seed: int, exclude: Iterable[str] = ()
) -> list[str]:
    """``k`` prompts with the same relation template but other made-up subjects.

    Used for specificity: after editing ``pool_fact`` these prompts should keep their
    pre-edit completions. Pass the pool's subjects as ``exclude`` so neighbours are not
    themselves edited facts. Deterministic for (``seed``, subject).
    """
    banned = {pool_fact.fact.subject, *exclude}
    available = CAPACITY - len(banned & _ALL_SUBJECTS)
    if k < 0 or k > available:
        raise PoolError(f"cannot draw {k} neighbours; only {available} other subjects available")
    # A string seed is hashed with SHA-512 by ``random``, so this is stable across processes.
    rng = random.Random(f"{seed}:{pool_fact.fact.subject}")
    prompts: list[str] = []
    # A sample of k + |banned| indices always holds k allowed subjects, without a full shuffle.
    for index in rng.sample(range(CAPACITY), min(CAPACITY, k + len(banned))):
        if len(prompts) == k:
            break
        subject = _subject(index)
        if subject not in banned:
            prompts.append(render_prompt(subject, pool_fact.relation.template))
    return prompts
