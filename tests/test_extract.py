"""Fact extraction from chat turns: precision and recall on labelled turns, the firewall, names.

Two labelled sets (format: sleepwake/chat/scoring.py). ``extraction_turns.jsonl`` is the
development set (plus probes of ordinary chat lines); ``extraction_heldout.jsonl`` was written
after the rules, and its first-pass score (before the general fixes it prompted) is in docs/chat.md.
The thresholds sit a little under the measured values so a regression fails, not a new turn.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sleepwake.chat import clauses, patterns, rules
from sleepwake.chat.extract import PLACEHOLDER, extract, grounded, merge_object
from sleepwake.chat.model_extract import canonical_relation, parse
from sleepwake.chat.rules import Found
from sleepwake.chat.scoring import load_turns, score

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("name", "precision", "recall"), [
    ("extraction_turns.jsonl", 0.95, 0.93),
    ("extraction_heldout.jsonl", 0.95, 0.9),
    ("extraction_heldout2.jsonl", 0.95, 0.9),
])
def test_precision_and_recall_on_labelled_turns(name, precision, recall):
    result = score(load_turns(DATA / name), lambda text, known: extract(text, known))
    misses = [m for rows in result["misses"].values() for m in rows]
    assert result["precision"] >= precision, misses
    assert result["recall"] >= recall, misses


def test_labelled_set_is_varied():
    turns = load_turns(DATA / "extraction_turns.jsonl") + load_turns(DATA / "extraction_heldout.jsonl")
    categories = Counter(t["category"] for t in turns)
    assert len(turns) >= 50
    for needed in ("no_fact", "question", "negation", "hypothetical", "multi", "change", "family", "allergy"):
        assert categories[needed] >= 2, needed
    assert sum(1 for t in turns if not t["expected"] and not t["expected_name"]) >= 25  # turns with no facts
    assert len({t["text"] for t in turns}) == len(turns)


def test_issue_sentence():
    result = extract("Hi! My name is Lena Brandt and I live in Graz. I work as a software engineer, by the way.")
    assert result.name == "Lena Brandt"
    assert [(f.subject, f.prompt(), f.object) for f in result.facts] == [
        ("Lena Brandt", "Lena Brandt lives in", "Graz"),
        ("Lena Brandt", "Lena Brandt works as", "a software engineer")]


@pytest.mark.parametrize("text", [
    "Do I live in Paris?", "I don't live in Rome", "If I lived in Oslo, I would ski.", "I'm tired",
    "I might move to Dublin.", "I used to work as a waiter.", "Where do I work?", "My friend lives in Rome.",
    "I'm not allergic to anything.", "Would you say I'm a teacher?",
])
def test_questions_negations_hypotheticals_give_nothing(text):
    result = extract(text, "Lena Brandt")
    assert result.facts == [] and result.name is None


def test_subject_placeholder_then_known_name():
    assert extract("I live in Oslo.").facts[0].subject == PLACEHOLDER
    assert extract("I live in Oslo.", "Aria Nakamura").facts[0].subject == "Aria Nakamura"


def test_bare_im_name_never_renames_a_known_user_but_my_name_is_does():
    assert extract("I'm Batman.", "Lena Brandt").name is None
    assert extract("I'm Batman.").name == "Batman"
    assert extract("Actually my name is Lena Maria Brandt.", "Lena Brandt").name == "Lena Maria Brandt"
    assert extract("My name is Lena Brandt.", "lena brandt").name is None  # same name: nothing to adopt


def test_firewall_drops_objects_the_user_did_not_say():
    def hallucinating(turn, subject):
        return [Found(patterns.LIVES, "Austria"), Found(patterns.JOB, "a nurse")]

    result = extract("I work as a nurse, and I love it here.", "Lena Brandt", model=hallucinating)
    assert [(f.relation, f.object) for f in result.facts] == [(patterns.JOB, "a nurse")]
    assert [r["object"] for r in result.rejected] == ["Austria"]


def test_model_adds_only_relations_the_rules_missed_and_never_a_name():
    def model(turn, subject):
        return [Found(patterns.JOB, "a nurse"), Found(patterns.LIVES, "Leeds"), Found(patterns.NAME, "Leeds", explicit=True)]

    result = extract("I work as a nurse practitioner in Leeds.", None, model=model)
    assert [(f.relation, f.object) for f in result.facts] == [(patterns.JOB, "a nurse practitioner"), (patterns.LIVES, "Leeds")]
    assert result.name is None and result.facts[0].subject == PLACEHOLDER


def test_grounded_is_word_bounded_and_folds_case_and_accents():
    assert grounded("malmo", "My name's Oskar, I'm from Malmö.")
    assert not grounded("Graz", "I live in Grazburg")
    assert not grounded("", "anything")


def test_later_statement_in_a_turn_wins_and_lists_split():
    result = extract("I live in Paris. Actually, I live in Lyon.", "Ana")
    assert [(f.relation, f.object) for f in result.facts] == [(patterns.LIVES, "Lyon")]
    result = extract("I'm allergic to cats and dust.", "Ana")
    assert [f.object for f in result.facts] == ["cats", "dust"]


def test_merge_object_for_multi_valued_relations():
    assert merge_object("German", "French") == "German and French"
    assert merge_object("German and French", "Italian") == "German, French and Italian"
    assert merge_object("German, French and Italian", "french") == "German, French and Italian"


def test_model_output_parsing_maps_relations_and_keeps_only_the_user():
    completion = ("I | lives in | Graz\nAnna | lives in | Rome\nI | favourite colour | teal\n"
                  "I | owns a boat called | Seagull\nbroken line\n\nText: next example")
    found = parse(completion, "Lena Brandt")
    assert found == [Found(patterns.LIVES, "Graz"), Found("{}'s favorite color is", "teal")]
    assert canonical_relation("mother tongue") == patterns.NATIVE
    assert canonical_relation("sister") == "{}'s sister is"
    assert canonical_relation("owns a boat") is None


def test_odd_input_never_raises():
    for text in ["", "   ", "?", "I'm", "my name is", "I live in", "\x00\x07", "😀 " * 50, "a" * 20000,
                 "I live in " + "X" * 300, "My name is " + "Lena " * 100, "I'm 5", "I am a", "/forget"]:
        extract(text, None)
        extract(text, "Lena")


def test_stored_form_gives_each_attribute_its_own_subject():
    from sleepwake.chat.stored import owned_by, question, rekey, stored_form
    from sleepwake.facts import Fact

    said = extract("I live in Graz, my sister is called Mia and my favourite food is dumplings.", "Lena Brandt").facts
    stored = [stored_form(f) for f in said]
    assert [(f.prompt(), f.object) for f in stored] == [
        ("Lena Brandt's home is in", "Graz"), ("Lena Brandt's sister is named", "Mia"),
        ("Lena Brandt's favorite food is", "dumplings")]
    assert len({f.subject for f in stored}) == 3  # three MEMIT keys, not one
    assert [question(f) for f in stored] == ["Where does Lena Brandt live?", "What is the name of Lena Brandt's sister?",
                                             "What is Lena Brandt's favorite food?"]
    assert owned_by("the user's home", "The User") and not owned_by("the username's home", "the user")
    assert rekey("the user's home", "the user", "Lena Brandt") == "Lena Brandt's home"
    other = Fact(subject="Aria", relation="{} owns", object="a boat")
    assert stored_form(other) == other and question(other) is None


def test_a_birth_year_is_stored_apart_from_a_birthplace():
    from sleepwake.chat.stored import question, stored_form

    (year,) = [stored_form(f) for f in extract("I was born in 1987.", "Tomasz Nowak").facts]
    (place,) = [stored_form(f) for f in extract("I was born in Lisbon.", "Tomasz Nowak").facts]
    assert (year.prompt(), year.object, question(year)) == (
        "Tomasz Nowak's birth year is", "1987", "In which year was Tomasz Nowak born?")
    assert (place.prompt(), place.object, question(place)) == (
        "Tomasz Nowak's birthplace is", "Lisbon", "Where was Tomasz Nowak born?")


def test_every_stored_attribute_has_a_question():
    from sleepwake.chat.stored import FORMS, question
    from sleepwake.facts import Fact

    for attribute, relation in FORMS.values():  # the chat probe of each fact the rules can store
        assert question(Fact(subject=f"Ravi Menon's {attribute}", relation=relation, object="x")), attribute
    school = [stored_form_of(t) for t in ("I study at Oxford.", "I graduated from the University of Toronto.")]
    assert school == [("Ravi Menon's university is", "Oxford", "Where does Ravi Menon study?"),
                      ("Ravi Menon's alma mater is", "the University of Toronto", "Where did Ravi Menon study?")]


def test_a_line_break_ends_a_sentence_and_a_quoted_conversation_states_nothing():
    lines = extract("My name is Lena\nI live in Graz\nI work as a nurse", None)
    assert lines.name == "Lena" and [(f.relation, f.object) for f in lines.facts] == [
        ("{} lives in", "Graz"), ("{} works as", "a nurse")]  # not "Lena My", not "Graz I work"
    # A chat app's title request quotes the conversation: the assistant's "I" is not the user's.
    title = ("### Task:\nGenerate a title.\n<chat_history>\nUSER: my name is Lena and I live in Graz\n"
             "ASSISTANT: I live in the cloud.\n</chat_history>")
    assert extract(title, "Ravi Menon").facts == [] and extract(title, None).name is None
    assert extract("Assistant: hello\nUser: I live in Oslo", None).facts == []


@pytest.mark.parametrize("text", [
    'Can you proofread this: "Dear John, I live in Paris and work as a chef."',
    "Translate to German: I live in Vienna and I am a teacher.", "Summarize: My name is Carla and I work at IBM.",
    'Write a poem that starts with "I was born in Rome".', "> I live in Madrid\nThat's what you said, right?",
])
def test_quotations_and_text_handed_over_to_work_on_state_nothing(text):
    found = extract(text, None)
    assert (found.facts, found.name) == ([], None)


# A review of the list, naming and quotation rules (2026-12-07) found each of these stored a wrong fact.
@pytest.mark.parametrize("text", [
    "i have two cats, black and white", "I have two cats, Siamese and Persian.", "i have three kids, ages 5 and 7",
    "I did my homework at Starbucks.", "I did a presentation at Google last week.",
    "I'm studying for my exams at Starbucks.", "I study with Anna at the Central Library.",
    "I like you, Anna and Ben.", "I love it, thanks and bye.", "Tom and Anna said red and blue are my favorite colors.",
    "Well the ones I like most are my favourite songs.",
    # A second review found these.
    "I have two cats, Orange and Grey.", "My mom thinks pizza and sushi are my favourite foods.",
    "These days pizza and sushi are my favourite foods.", "Tom thinks sushi is my favourite food.",
    'my boss was like "im a nurse"', 'He said *"I\'m a doctor"*', "My boss said \u00abI'm from Texas\u00bb.",
    "I study mostly at Starbucks.", "I'm studying right now at Costa.",
])
def test_no_wrong_fact_from_lists_names_and_places_of_study(text):
    assert extract(text, None).facts == []


@pytest.mark.parametrize(("text", "expected"), [
    ("I like dogs, Tom likes cats and birds.", [("{} likes", "dogs")]),
    ("I speak English, Anna and Ben speak German.", [("{} speaks", "English")]),
    ("My cats are called Pixel, Mochi, and Tofu.", [("{}'s cats are", "Pixel, Mochi and Tofu")]),
    ("I'm allergic to nuts, which is annoying and scary.", [("{} is allergic to", "nuts")]),
    ("I work at Tesco for Christmas.", [("{} works for", "Tesco")]),
    ("My favourite book is \"Dune\".", [("{}'s favorite book is", "Dune")]),  # a title in quotes is the user's
    ('He said "I live in London" and I live in Paris.', [("{} lives in", "Paris")]),
    ("I work as a C# developer", [("{} works as", "a C# developer")]),
    ("I live in Graz \u2764\ufe0f", [("{} lives in", "Graz")]),
    ("I speak English, not French or German.", [("{} speaks", "English")]),
    ("I love animals, except snakes and spiders.", [("{} likes", "animals")]),
    ("I like dogs, Tom adores cats and birds.", [("{} likes", "dogs")]),
    ("I'm allergic to peanuts, Anna to shellfish and eggs.", [("{} is allergic to", "peanuts")]),
    ("My kids are named Emma, Liam and Sophia and my wife is Sarah.",
     [("{}'s children are", "Emma, Liam and Sophia"), ("{}'s wife is", "Sarah")]),
    ("i have two cats called luna and sol lol", [("{}'s cats are", "Luna and Sol")]),
    ("I live in Oslo #blessed", [("{} lives in", "Oslo")]),
    ("I work at the Centre for Ageing Better.", [("{} works for", "the Centre for Ageing Better")]),
    ("I work at the Ritz for Christmas.", [("{} works for", "the Ritz")]),
    ("Anna and Ben are my favourite people.", [("{}'s favorite people are", "Anna and Ben")]),
])
def test_lists_quotations_and_marks_keep_only_what_was_said(text, expected):
    assert [(f.relation, f.object) for f in extract(text, None).facts] == expected


def test_the_model_extractor_is_grounded_in_the_users_own_words_only():
    quoted = 'He said "I work as a chef" and I live in Paris.'
    found = extract(quoted, "Sam", model=lambda text, name: [Found("{} works as", "a chef")])
    assert [(f.relation, f.object) for f in found.facts] == [("{} lives in", "Paris")]
    assert found.rejected[0]["reason"] == "not in the user's words"


def test_emoji_and_markdown_do_not_stick_to_an_object():
    assert [f.object for f in extract("hey \U0001f44b i live in graz \U0001f642", None).facts] == ["graz"]
    assert [f.object for f in extract("**I live in Oslo** and I'm a nurse.", None).facts] == ["Oslo", "a nurse"]
    assert [f.object for f in extract("Check this out: I moved to Rome!", None).facts] == ["Rome"]


def test_several_named_at_once_are_asked_for_by_their_names():
    assert stored_form_of("My cats are called Pixel and Mochi.") == (
        "Ravi Menon's cats are named", "Pixel and Mochi", "What are the names of Ravi Menon's cats?")
    assert stored_form_of("My favourite colours are green and blue.") == (
        "Ravi Menon's favorite colors are", "green and blue", "What are Ravi Menon's favorite colors?")


def stored_form_of(text: str) -> tuple[str, str, str | None]:
    from sleepwake.chat.stored import question, stored_form

    (fact,) = [stored_form(f) for f in extract(text, "Ravi Menon").facts]
    return fact.prompt(), fact.object, question(fact)


@pytest.mark.parametrize(("text", "expected"), [
    ("I'm a chef at Nordic Foods.", [("{} works as", "a chef"), ("{} works for", "Nordic Foods")]),
    ("I'm a regular at Joe's Bar.", []),  # no job named, so no employer
    ("I'm a pupil at Hillside.", []),  # a school is not an employer (and "a pupil" is no job here)
    ("I work at a place called home.", []),  # the name after "called" must be a proper noun
    ("I play football.", []),  # "play" without "the" takes instruments only
])
def test_employers_named_after_a_job_or_a_description(text, expected):
    assert [(f.relation, f.object) for f in extract(text, "Tomasz Nowak").facts] == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("I am thirty-four years old.", [("{}'s age is", "34")]),  # stored as digits, grounded by the words
    ("I'm twenty nine.", [("{}'s age is", "29")]),
    ("I'm 7.", [("{}'s age is", "7")]),
    ("I'm one of them.", []),  # no age under five in words
    ("I turned forty.", [("{}'s age is", "40")]),
    ("Im from Spain.", [("{} is from", "Spain")]),  # the apostrophe left out
    ("Im not sure about that.", []),
    ("IM Sarah tonight.", []),  # an instant message, not "I'm"
])
def test_ages_in_words_and_im_without_apostrophe(text, expected):
    assert [(f.relation, f.object) for f in extract(text, "Ingrid Holm").facts] == expected


def test_clauses_after_two_elided_subjects_keep_their_words():
    # Each "and <verb>" once shifted the next clause by the two characters of its "I ": "a nurse" became "a nur".
    assert clauses.split_clauses("I live in Graz and work as a nurse and speak German") == [
        "I live in Graz", "I work as a nurse", "I speak German"]
    assert clauses.split_clauses("I have a cat named Luna and a dog named Max") == [
        "I have a cat named Luna", "I have a dog named Max"]
    assert clauses.split_clauses("My sister has a cat named Luna and a dog named Max")[1] == "a dog named Max"


def test_a_list_after_commas_stays_one_clause_and_other_commas_still_split():
    assert clauses.split_clauses("I'm allergic to cats, dust, and pollen") == ["I'm allergic to cats, dust, and pollen"]
    assert clauses.split_clauses("I like it, really") == ["I like it", "really"]  # no "and": no list
    assert clauses.split_clauses("I like hiking, my sister is called Mia") == ["I like hiking", "my sister is called Mia"]
    assert clauses.split_clauses("I live in Graz, Austria and Vienna") == ["I live in Graz", "Austria and Vienna"]


@pytest.mark.parametrize(("text", "expected"), [
    ("My favourite colours are green and blue.", [("{}'s favorite colors are", "green and blue")]),
    ("My favourite colour is green.", [("{}'s favorite color is", "green")]),
    ("Pizza is great but sushi is my favorite food.", [("{}'s favorite food is", "sushi")]),
    ("I work for the Bank of England.", [("{} works for", "the Bank of England")]),  # not "the Bank"
    ("I live with my parents in Leeds.", [("{} lives in", "Leeds")]),
    ("I live with my partner.", []),
    ("I study abroad.", []), ("I studied hard at night.", []),
    ("I've got three kids called Tom, Ann and Joe.", [("{}'s children are", "Tom, Ann and Joe")]),
    ("I've got three kids, Tom, Ann and Joe.", []),  # after a bare comma, names or descriptions: not said
    ("I have two cats.", []), ("I love my job.", []),
    ("I was born and raised in Chicago.", [("{} was born in", "Chicago"), ("{} grew up in", "Chicago")]),
    ("I've lived in Tokyo for ten years.", [("{} lives in", "Tokyo")]),
    ("I've lived in Tokyo and Paris.", []),  # ever, not now
    ("I'd say I'm from Texas originally.", [("{} is from", "Texas")]),
    # The "I" casual chat leaves out, put back only where it is the speaker's.
    ("grew up in Porto, moved to Lyon in 2019.", [("{} grew up in", "Porto"), ("{} lives in", "Lyon")]),
    ("I live in Graz, born in Krakow.", [("{} lives in", "Graz"), ("{} was born in", "Krakow")]),
    ("My sister lives in Oslo, born in Bergen.", []), ("Moved the couch to the bedroom.", []),
    ("I've been vegan since 2020.", [("{}'s diet is", "vegan")]),
    ("We have worked at Nokia since 2015.", [("{} works for", "Nokia")]), ("I've worked at Nokia.", []),
    ("My younger sister Eva is visiting.", [("{}'s sister is", "Eva")]),
])
def test_lists_plural_favourites_and_named_organisations(text, expected):
    assert [(f.relation, f.object) for f in extract(text, "Ravi Menon").facts] == expected


FUZZ_WORDS = ("I I'm i'm my My we our am is a an the of in to from as and but , . ? ! not live work nurse "
              "Lena Brandt Graz called named sister dog favorite food allergic speak German 34 years old born "
              "moved Mr. Dr. that remember know if would very big Canadian by profession have got been flat "
              "home for me 's ' \" ( ) ; : - van de").split()


def test_word_salad_never_raises_and_objects_are_always_grounded():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.sampled_from(FUZZ_WORDS), max_size=16), st.sampled_from([None, "Lena"]))
    def check(words, known):
        text = " ".join(words)
        result = extract(text, known)
        assert all(grounded(f.object, text) for f in result.facts)
        assert result.name is None or grounded(result.name, text)

    check()
