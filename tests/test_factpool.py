"""Tests for the seeded synthetic fact pool (``sleepwake.factpool``)."""

from __future__ import annotations

import pytest

from sleepwake.errors import InvalidInputError
from sleepwake.factpool import (
    CAPACITY,
    FIRST_NAMES,
    LAST_NAMES,
    RELATIONS,
    PoolFact,
    Relation,
    generate_pool,
    neighbour_prompts,
)
from sleepwake.facts import Fact


def _key(pool: list[PoolFact]) -> list[tuple[str, str, str]]:
    return [(p.fact.subject, p.fact.relation, p.fact.object) for p in pool]


def test_relations_shape() -> None:
    assert len(RELATIONS) >= 12
    assert len({r.name for r in RELATIONS}) == len(RELATIONS)
    for rel in RELATIONS:
        assert isinstance(rel, Relation)
        assert len(rel.paraphrases) >= 2 and rel.template not in rel.paraphrases
        assert len(rel.objects) >= 15 and len(set(rel.objects)) == len(rel.objects)
        for template in (rel.template, *rel.paraphrases, rel.question):
            assert template.count("{}") == 1, template
            assert template == template.strip(), template
        assert rel.question.endswith("?")
        assert all(obj and obj == obj.strip() for obj in rel.objects)


def test_name_lists() -> None:
    assert len(set(FIRST_NAMES)) >= 60 and len(set(LAST_NAMES)) >= 60
    assert CAPACITY >= 2000


def test_deterministic_per_seed() -> None:
    assert _key(generate_pool(200, seed=7)) == _key(generate_pool(200, seed=7))


def test_different_seeds_differ() -> None:
    assert _key(generate_pool(50, seed=0)) != _key(generate_pool(50, seed=1))
    subjects_a = {p.fact.subject for p in generate_pool(50, seed=0)}
    subjects_b = {p.fact.subject for p in generate_pool(50, seed=1)}
    assert len(subjects_a & subjects_b) < 10


def test_large_pool_unique_subjects_and_all_relations() -> None:
    pool = generate_pool(2000, seed=3)
    assert len(pool) == 2000
    assert len({p.fact.subject for p in pool}) == 2000
    assert len({p.fact.key for p in pool}) == 2000
    assert {p.relation.name for p in pool} == {r.name for r in RELATIONS}


def test_small_pool_covers_all_relations() -> None:
    pool = generate_pool(len(RELATIONS), seed=5)
    assert {p.relation.name for p in pool} == {r.name for r in RELATIONS}


def test_pool_fact_contents() -> None:
    for item in generate_pool(40, seed=11):
        assert isinstance(item.fact, Fact)
        assert item.fact.relation == item.relation.template
        assert item.fact.object in item.relation.objects
        assert item.fact.prompt() == item.relation.template.replace("{}", item.fact.subject)
        paraphrases = item.paraphrase_prompts()
        assert len(paraphrases) == len(item.relation.paraphrases)
        assert all(item.fact.subject in p and "{}" not in p for p in paraphrases)
        assert item.fact.prompt() not in paraphrases
        assert item.fact.subject in item.question() and item.question().endswith("?")


def test_relation_filter() -> None:
    pool = generate_pool(30, seed=2, relations=["lives_in", "pet"])
    assert {p.relation.name for p in pool} == {"lives_in", "pet"}
    with pytest.raises(ValueError):
        generate_pool(3, relations=["no_such_relation"])


def test_capacity_error() -> None:
    assert len(generate_pool(0)) == 0
    with pytest.raises(ValueError):
        generate_pool(CAPACITY + 1)
    with pytest.raises(InvalidInputError):  # also a SleepwakeError, so the CLI prints one line
        generate_pool(-1)


def test_neighbours_exclude_subject() -> None:
    pool = generate_pool(20, seed=4)
    item = pool[0]
    prompts = neighbour_prompts(item, 10, seed=0)
    assert len(prompts) == len(set(prompts)) == 10
    assert all(item.fact.subject not in p for p in prompts)
    suffix = item.relation.template.split("{}")[1]
    assert all(p.endswith(suffix) for p in prompts)
    assert prompts == neighbour_prompts(item, 10, seed=0)
    assert prompts != neighbour_prompts(item, 10, seed=1)


def test_neighbours_exclude_pool_subjects() -> None:
    pool = generate_pool(500, seed=4)
    subjects = [p.fact.subject for p in pool]
    prompts = neighbour_prompts(pool[0], 50, seed=0, exclude=subjects)
    assert not any(s in p for p in prompts for s in subjects)


def test_neighbours_bad_k() -> None:
    item = generate_pool(1)[0]
    with pytest.raises(ValueError):
        neighbour_prompts(item, CAPACITY, seed=0)
    assert len(neighbour_prompts(item, CAPACITY - 1, seed=0)) == CAPACITY - 1
