"""Ledger: migrations, fact upserts, atomic commits, audits/metrics and lock handling."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import sleepwake.storage.ledger as ledger_mod
from sleepwake.errors import HomeBusyError, InvalidInputError, NotFoundError, SleepwakeError
from sleepwake.facts import Fact
from sleepwake.storage.ledger import LATEST_VERSION, EditRow, Ledger


def _edit(ledger: Ledger, **overrides) -> EditRow:
    edit_id = ledger.next_edit_id()
    fields = dict(edit_id=edit_id, kind="memit", scale=1.0, layers=[3, 4, 5], rank=2,
                  file=f"deltas/edit-{edit_id:08d}.safetensors", checksum="ab" * 32, nbytes=123,
                  model_fingerprint="fp")
    fields.update(overrides)
    return EditRow(**fields)


def _fact(subject: str = "Aria Nakamura", relation: str = "lives in", obj: str = "Thessaloniki") -> Fact:
    return Fact(subject=subject, relation=relation, object=obj)


@pytest.fixture()
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "home" / "ledger.duckdb")


def test_migrations_idempotent_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    first = Ledger(path)
    assert first.schema_version() == LATEST_VERSION
    Ledger(path)  # reopening applies nothing twice
    assert first.migrate() == LATEST_VERSION
    con = duckdb.connect(str(path))
    rows = con.execute("SELECT version, applied_at FROM schema_version").fetchall()
    con.close()
    assert [r[0] for r in rows] == [v for v, _ in ledger_mod.MIGRATIONS]
    assert all(r[1] is not None for r in rows)


def test_future_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    Ledger(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [LATEST_VERSION + 1])
    con.close()
    with pytest.raises(SleepwakeError, match="newer|knows only") as info:
        Ledger(path)
    assert "\n" not in str(info.value) and "upgrade sleepwake" in str(info.value)
    with pytest.raises(SleepwakeError):
        Ledger(path, read_only=True).list_facts()


def test_read_only_on_missing_file_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nothing.duckdb"
    ro = Ledger(path, read_only=True)
    assert ro.list_facts() == [] and ro.list_edits() == [] and ro.get_meta("x", "d") == "d"
    assert ro.counts() == {"facts": 0, "edits": 0, "facts_per_stage": {0: 0, 1: 0, 2: 0, 3: 0}}
    assert not path.exists()
    with pytest.raises(RuntimeError):
        ro.set_meta("k", "v")


def test_read_only_upgrades_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    con.close()
    assert Ledger(path, read_only=True).list_facts() == []
    assert Ledger(path, read_only=True).schema_version() == LATEST_VERSION


def test_commit_upserts_by_normalised_key(ledger: Ledger) -> None:
    edit1 = _edit(ledger)
    [fid] = ledger.commit_edit(edit1, [_fact()], source="file")
    edit2 = _edit(ledger)
    renamed = _fact("  aria   NAKAMURA ", "Lives In.", "Paris")
    ids = ledger.commit_edit(edit2, [renamed, _fact("Bo", "likes", "tea")], remove_edit_ids=[edit1.edit_id])
    assert ids[0] == fid and ids[1] != fid
    row = ledger.find_fact("ARIA nakamura", "lives in")
    assert row is not None and row.object == "Paris" and row.edit_id == edit2.edit_id and row.stage == 0
    assert row.source == "file"  # the original source is kept on update
    assert row.fact == Fact(subject="aria   NAKAMURA", relation="Lives In.", object="Paris")
    assert [f.fact_id for f in ledger.list_facts()] == sorted(ids)
    assert [e.edit_id for e in ledger.list_edits()] == [edit2.edit_id]
    assert ledger.get_edit(edit2.edit_id).layers == [3, 4, 5]
    assert {f.fact_id for f in ledger.facts_of_edit(edit2.edit_id)} == set(ids)
    assert ledger.find_fact("nobody", "lives in") is None


def test_statements_do_not_search_for_an_absent_pandas(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB tries ``import pandas`` for every bound parameter; without pandas installed each try
    used to search sys.path again (a quarter of the ledger's time in the simulated year)."""
    if isinstance(sys.modules.get("pandas"), type(sys)):
        pytest.skip("pandas is installed here: DuckDB's import of it is cached")
    searched: list[str] = []

    class Spy:
        @staticmethod
        def find_spec(name, path=None, target=None):
            searched.append(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Spy, *sys.meta_path])
    ledger.commit_edit(_edit(ledger), [_fact()], source="file")
    assert ledger.find_fact("Aria Nakamura", "lives in") is not None
    assert "pandas" not in searched


def test_commit_edit_is_atomic(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _edit(ledger)
    ledger.commit_edit(old, [_fact()])
    before = (ledger.list_facts(), ledger.list_edits())
    calls = {"n": 0}
    real = ledger_mod.normalize_key

    def failing(text: str) -> str:
        calls["n"] += 1
        if calls["n"] > 2:  # the second fact fails after the edit row and first fact were written
            raise RuntimeError("boom")
        return real(text)

    monkeypatch.setattr(ledger_mod, "normalize_key", failing)
    with pytest.raises(RuntimeError, match="boom"):
        ledger.commit_edit(_edit(ledger), [_fact(obj="Paris"), _fact("Bo", "likes", "tea")],
                           remove_edit_ids=[old.edit_id])
    monkeypatch.undo()
    assert (ledger.list_facts(), ledger.list_edits()) == before


def test_duplicate_edit_id_leaves_nothing_changed(ledger: Ledger) -> None:
    edit = _edit(ledger)
    ledger.commit_edit(edit, [_fact()])
    with pytest.raises(duckdb.ConstraintException):
        ledger.commit_edit(edit, [_fact("Bo", "likes", "tea")])
    assert len(ledger.list_facts()) == 1


def test_forget_scale_stage_and_counts(ledger: Ledger) -> None:
    edit = _edit(ledger)
    a, b = ledger.commit_edit(edit, [_fact(), _fact("Bo", "likes", "tea")])
    ledger.set_scale(edit.edit_id, 0.5)
    assert ledger.get_edit(edit.edit_id).scale == 0.5
    ledger.set_stage(b, 3)
    assert ledger.counts() == {"facts": 2, "edits": 1, "facts_per_stage": {0: 1, 1: 0, 2: 0, 3: 1}}
    ledger.forget_fact(a, remove_edit_ids=[edit.edit_id])
    assert [f.fact_id for f in ledger.list_facts()] == [b] and ledger.list_edits() == []
    with pytest.raises(NotFoundError, match="fact"):
        ledger.forget_fact(a, [])
    with pytest.raises(NotFoundError, match="edit"):
        ledger.get_edit(edit.edit_id)
    with pytest.raises(NotFoundError):
        ledger.set_scale(edit.edit_id, 1.0)
    with pytest.raises(InvalidInputError):
        ledger.set_stage(b, 7)
    ledger.remove_edits([])  # no-op


def test_next_edit_id_persists_across_connections(tmp_path: Path) -> None:
    path = tmp_path / "l.duckdb"
    first = Ledger(path).next_edit_id()
    assert Ledger(path).next_edit_id() == first + 1


def test_audits_and_metrics_round_trip(ledger: Ledger) -> None:
    ids = ledger.commit_edit(_edit(ledger), [_fact("Aria Nakamura"), _fact("Bruno Silva")])
    assert ids == [1, 2]
    ledger.record_audits([{"run_id": "r0", "fact_id": 99, "raw_recall": 0.0, "healthy": False}])
    ledger.record_audits([
        {"run_id": "r1", "fact_id": 1, "raw_recall": 0.2, "healthy": False, "ts": ledger_mod._now()},
        {"run_id": "r1", "fact_id": 2, "raw_recall": 1.0, "healthy": True},
    ])
    time.sleep(0.01)
    ledger.record_audits([{"run_id": "r2", "fact_id": 1, "raw_recall": 0.9, "healthy": True}])
    latest = ledger.latest_audits()
    assert set(latest) == {1, 2}  # fact 99 does not exist (forgotten): its verdict no longer counts
    assert latest[1]["run_id"] == "r2" and latest[1]["healthy"] is True
    assert latest[1]["paraphrase_recall"] is None and latest[2]["raw_recall"] == 1.0
    rows = [{"run_id": "r", "stage": "audit", "name": "loss", "value": float(i), "detail": {"i": i}}
            for i in range(450)]  # more than one VALUES batch
    ledger.record_metrics(rows)
    ledger.record_metrics([{"name": "other", "value": float("nan"), "detail": "it's \"quoted\" ü"}])
    [other] = ledger.metric_history("other")
    assert math.isnan(other["value"]) and other["detail"] == "it's \"quoted\" ü"
    history = ledger.metric_history("loss", limit=5)
    assert [h["value"] for h in history] == [445.0, 446.0, 447.0, 448.0, 449.0]
    assert history[0]["detail"] == '{"i": 445}' and history[0]["ts"] is not None
    assert len(ledger.metric_history("loss", limit=1000)) == 450
    with pytest.raises(ValueError):
        ledger.record_metrics([{"name": "x", "bogus": 1}])


def test_meta(ledger: Ledger) -> None:
    assert ledger.get_meta("model") is None
    ledger.set_meta("model", "a")
    ledger.set_meta("model", "b")
    assert ledger.get_meta("model") == "b"
    assert Ledger(ledger.path, read_only=True).get_meta("model") == "b"


def test_garbage_file_is_corrupted_state(tmp_path: Path) -> None:
    path = tmp_path / "bad.duckdb"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(SleepwakeError, match="cannot be opened") as info:
        Ledger(path)
    assert "\n" not in str(info.value)


_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SELECT 1")
print("ready", flush=True)
time.sleep(30)
"""


def test_lock_held_by_other_process_is_home_busy(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    ledger = Ledger(path, busy_timeout_s=0.5)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        start = time.monotonic()
        try:
            ledger.list_facts()
        except HomeBusyError as exc:
            message = str(exc)
        else:
            pytest.fail("a second process opened a database another process holds for writing")
        assert time.monotonic() - start >= 0.4
        assert "in use by another sleepwake process" in message and str(path) in message
        assert f"pid {holder.pid}" in message and "\n" not in message
        with pytest.raises(HomeBusyError):
            Ledger(path, read_only=True, busy_timeout_s=0.2).counts()
    finally:
        holder.kill()
        holder.wait()
    assert ledger.list_facts() == []  # usable again once the holder is gone
