"""Forgetting that forgets, on the tiny random Llama.

The tiny model cannot be taught a fact by a few LoRA steps, so where a test needs "the adapters
still produce the object", the probe's verdict is the test's (as in test_consolidation); what is
checked is the mechanics: what is removed, trained, stored, redacted, verified and gated.
"""

from __future__ import annotations

import json
import shutil

import pytest

from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.sleep import forget as forget_module, forgetting, validate as validate_stage
from sleepwake.sleep.forget import forget
from sleepwake.sleep.results import AuditResult, HealthResult
from sleepwake.sleep.session import SleepSession
from sleepwake.storage import adapters as adapter_rows, conversations, forgotten
from sleepwake.storage.home import Home
from sleepwake.storage.snapshots import SnapshotStore
from conftest import mixed_facts, seed_home

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")
ARIA = mixed_facts()[0]


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, tiny_settings_overrides):
    return seed_home(tmp_path_factory, tiny_settings_overrides, mixed_facts(), "forget")


@pytest.fixture
def memory(seeded_home, tmp_path, tiny_settings):
    target = tmp_path / "home"
    shutil.copytree(seeded_home, target)
    return Memory.open(Home.open(target), tiny_settings)


def test_object_hash_matches_word_spans_only():
    row = forgotten.ForgottenRow(1, "s", "r", *forgotten.object_hash("New York"), "forget", None, 0, None, None)
    assert forgotten.produces("She moved to new york, she said.", row)
    assert not forgotten.produces("She moved to New Yorkshire.", row)
    assert not forgotten.produces("York is new.", row)


def test_forget_without_adapters_removes_the_edit_exactly_and_keeps_only_a_hash(memory):
    conversations.log_turn(memory.ledger, "s1", "user", "The hometown of Aria Nakamura is Thessaloniki, you know.")
    base = memory.weights_digest()
    memory.inject([Fact(subject="Eve Moreau", relation="The pet of {}", object="parrot")])
    with_eve = memory.weights_digest()
    result = forget(memory, "Eve Moreau", "The pet of {}")
    assert memory.weights_digest() == base != with_eve
    assert result["unlearning_passes"] == 0 and result["verified"] is True
    assert [p["kind"] for p in result["probes"]][0] == "raw" and result["probes"][-1]["kind"] == "chat"
    forget(memory, ARIA.subject, ARIA.relation)
    [eve, aria] = forgotten.list_forgotten(memory.ledger)
    assert aria.reason == "forget" and aria.object_sha == forgotten.object_hash("Thessaloniki")[0]
    with memory.ledger._connect() as con:  # the object is nowhere in the ledger any more
        dump = json.dumps([con.execute(f"SELECT * FROM {t}").fetchall()
                           for t in ("facts", "forgotten", "conversations")], default=str)
    assert "Thessaloniki" not in dump and "[forgotten]" in dump


def test_forget_unlearns_what_the_adapters_still_know_and_commits_it_with_the_forget(memory, monkeypatch):
    SnapshotStore(memory.home.root).take("old-closed", {"weights_digest": "x"})
    store = SnapshotStore(memory.home.root)
    store.close(store.get("old-closed"), "kept", keep=True)
    state = {"taught": False}
    real_probes = forget_module.forget_probes

    def probes_adapters_know(mem, fact):  # the adapters answer until an unlearning pass is composed
        found = real_probes(mem, fact)
        produced = not any(a.adapter_id == -1 for a in mem.adapters) and not state["taught"]
        return [{**p, "produced": produced} for p in found]

    monkeypatch.setattr(forget_module, "forget_probes", probes_adapters_know)
    real_unlearn = forget_module.unlearn

    def unlearn(mem, row, targets, skip):
        assert targets["raw"] and targets["chat"] and all(ARIA.object not in t for _, t in targets["raw"])
        result = real_unlearn(mem, row, targets, skip)
        state["taught"] = True
        return result

    monkeypatch.setattr(forget_module, "unlearn", unlearn)
    result = forget(memory, ARIA.subject, ARIA.relation)
    assert result["unlearning_passes"] == 1 and result["verified"] is True
    [adapter] = adapter_rows.list_adapters(memory.ledger)
    assert adapter.kind == "forget" and result["unlearning_adapter"] == adapter.adapter_id
    [row] = forgotten.list_forgotten(memory.ledger)
    assert row.targets["chat"] and row.stage == 0
    assert store.list() == []  # closed snapshots (old copies of the ledger) are purged
    assert memory.ledger.find_fact(ARIA.subject, ARIA.relation) is None


def test_an_update_of_a_consolidated_fact_leaves_the_old_object_to_verify(memory):
    row = memory.ledger.find_fact(ARIA.subject, ARIA.relation)
    memory.ledger.set_stage(row.fact_id, 1)  # the adapters have learned it
    memory.inject([Fact(subject=ARIA.subject, relation=ARIA.relation, object="Lyon")])
    [old] = forgotten.list_forgotten(memory.ledger)
    assert old.reason == "update" and old.object_sha == forgotten.object_hash("Thessaloniki")[0]
    # Changed back before any sleep: Thessaloniki is true again, and Lyon never reached the adapters.
    memory.inject([Fact(subject=ARIA.subject, relation=ARIA.relation, object="Thessaloniki")])
    assert forgotten.list_forgotten(memory.ledger) == []


def test_validate_rolls_back_a_sleep_after_which_a_forgotten_object_comes_back(memory, monkeypatch):
    forget(memory, ARIA.subject, ARIA.relation)
    session = SleepSession(memory, "full_sleep")
    monkeypatch.setattr(forgetting, "produced", lambda s, rows: [True] * len(rows))
    verdict = validate_stage.validate(session, AuditResult(raw_recall=0.0), HealthResult(perplexity=1e9, perplexity_baseline=1e9))
    assert verdict.passed is False and verdict.forgotten_resurfaced == 1
    assert "forgotten" in verdict.failures[0]


def test_sws_trains_a_forgotten_facts_base_answers_until_the_adapters_no_longer_produce_it(memory, monkeypatch):
    from sleepwake.sleep import sws as sws_stage

    with memory.ledger._transaction() as con:
        forgotten.insert(con, ARIA.subject, ARIA.relation, ARIA.object, "forget",
                         {"raw": [[ARIA.prompt(), " a small town"]], "chat": [["Where?", "I do not know."]]})
    monkeypatch.setattr(sws_stage, "raw_hits", lambda session, rows: [True] * len(rows))
    monkeypatch.setattr(forgetting, "produced", lambda s, rows: [False] * len(rows))
    seen = []
    real = forgetting.training_examples
    monkeypatch.setattr(forgetting, "training_examples", lambda s, rows: seen.append(len(rows)) or real(s, rows))
    result = sws_stage.sws(SleepSession(memory, "full_sleep"))
    assert result.accepted and seen == [1] and result.forgotten_settled == 1
    assert forgotten.list_forgotten(memory.ledger)[0].stage == 1


def test_cli_forget_prints_the_probes_and_ask_answers_from_the_weights(seeded_home, tmp_path, tiny_settings_overrides, capsys):
    from sleepwake import cli

    home = tmp_path / "home"
    shutil.copytree(seeded_home, home)
    sets = [x for o in tiny_settings_overrides for x in ("--set", o)]
    assert cli.main(["forget", ARIA.subject, ARIA.relation, "--home", str(home), "--json", "-q", *sets]) == 0
    out = json.loads(capsys.readouterr().out)["forgotten"]
    assert out["verified"] is True and {p["kind"] for p in out["probes"]} == {"raw", "paraphrase", "chat"}
    assert cli.main(["ask", "Where does Chen Okafor work?", "--home", str(home), "--json", "-q", *sets]) == 0
    asked = json.loads(capsys.readouterr().out)
    assert set(asked) == {"question", "answer"} and isinstance(asked["answer"], str)
    assert cli.main(["ask", "The job of Chen Okafor", "--raw", "--home", str(home), "-q", *sets]) == 0
    assert capsys.readouterr().out.strip()
