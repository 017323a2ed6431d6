"""Snapshot store: byte-exact copies of ledger + factor files, the journal, idempotent restores."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sleepwake.errors import InvalidInputError
from sleepwake.storage.snapshots import SnapshotStore


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under the home except the snapshots themselves."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "snapshots" not in p.parts}


def make_home(root: Path) -> Path:
    (root / "deltas").mkdir(parents=True)
    (root / "ledger.duckdb").write_bytes(b"ledger v1")
    (root / "deltas" / "edit-00000001.safetensors").write_bytes(b"factors 1")
    return root


def test_restore_is_byte_exact_and_idempotent(tmp_path):
    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    before = tree_digest(home)
    snap = store.take("run-1-pre-sleep", {"weights_digest": "abc"})
    assert snap.is_open and snap.manifest["weights_digest"] == "abc"
    (home / "ledger.duckdb").write_bytes(b"ledger v2")
    (home / "ledger.duckdb.wal").write_bytes(b"wal")
    (home / "deltas" / "edit-00000001.safetensors").unlink()
    (home / "deltas" / "edit-00000002.safetensors").write_bytes(b"factors 2")
    store.restore(snap)
    assert tree_digest(home) == before
    store.restore(snap)  # a crash during a restore is repaired by restoring again
    assert tree_digest(home) == before


def test_restore_survives_a_half_done_earlier_restore(tmp_path):
    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    before = tree_digest(home)
    snap = store.take("run-1", {})
    (home / "deltas" / "edit-00000002.safetensors").write_bytes(b"factors 2")
    (home / "deltas" / ".tmp-restore-edit-00000001.safetensors").write_bytes(b"half")  # killed mid-copy
    (home / "ledger.duckdb.restore").write_bytes(b"half")
    store.restore(snap)
    assert tree_digest(home) == before


def test_recover_restores_the_oldest_open_snapshot_and_closes_all(tmp_path):
    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    before = tree_digest(home)
    store.take("a-pre-sleep", {})
    (home / "ledger.duckdb").write_bytes(b"after curate")
    store.take("a-maintain", {})
    (home / "ledger.duckdb").write_bytes(b"half-done maintain")
    assert [s.name for s in store.open_snapshots()] == ["a-pre-sleep", "a-maintain"]
    assert store.recover() == ["a-pre-sleep", "a-maintain"]
    assert tree_digest(home) == before and store.open_snapshots() == [] and store.recover() == []


def test_closed_snapshots_are_kept_then_pruned(tmp_path):
    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    for name in ("s1", "s2", "s3"):
        store.close(store.take(name, {}), outcome="kept", keep=True)
    assert [s.is_open for s in store.list()] == [False, False, False]
    assert store.prune_closed(keep_last=1) == ["s1", "s2"]
    assert [s.name for s in store.list()] == ["s3"]
    store.close(store.get("s3"), outcome="kept", keep=False)
    assert store.list() == []


def test_incomplete_snapshot_is_ignored_and_bad_names_refused(tmp_path):
    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    (store.dir / "half").mkdir(parents=True)  # no manifest: a take() that never finished
    (store.dir / ".tmp-other").mkdir()
    assert store.list() == [] and store.recover() == []
    assert list(store.dir.iterdir()) == []  # the writer that recovers also clears them
    with pytest.raises(InvalidInputError):
        store.take("../escape", {})


def test_damaged_snapshot_is_refused_with_a_clear_error(tmp_path):
    from sleepwake.errors import CorruptedStateError

    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    snap = store.take("run-1", {})
    (snap.path / "ledger.duckdb").write_bytes(b"ledger v1 but truncated"[:5])
    (home / "ledger.duckdb").write_bytes(b"current")
    with pytest.raises(CorruptedStateError, match="damaged"):
        store.restore(snap)
    assert (home / "ledger.duckdb").read_bytes() == b"current"  # nothing was touched


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="names an fsync'd descriptor through /proc")
def test_a_take_reads_only_new_factor_files_and_syncs_only_copies(tmp_path, monkeypatch):
    """Factor files are linked, not copied, and immutable: a second snapshot hashes only the ledger
    and the factor file that is new, and fsyncs the copied ledger, not the linked files. A factor
    file damaged in place after its digest was taken is still refused at restore (it reads all)."""
    import os

    from sleepwake.errors import CorruptedStateError

    home = make_home(tmp_path / "home")
    store = SnapshotStore(home)
    store.take("run-1", {})
    read, synced = [], []
    real_read, real_fsync = Path.read_bytes, os.fsync
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real_read(self))
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    (home / "deltas" / "edit-00000002.safetensors").write_bytes(b"factors 2")
    second = store.take("run-2", {})
    assert sorted(read) == ["edit-00000002.safetensors", "ledger.duckdb"]
    assert set(second.manifest["files"]) == {"ledger.duckdb", "deltas/edit-00000001.safetensors",
                                             "deltas/edit-00000002.safetensors"}
    assert not any(p.endswith(".safetensors") for p in synced)
    assert any(p.endswith("ledger.duckdb") for p in synced)
    monkeypatch.undo()
    stat = (home / "deltas" / "edit-00000001.safetensors").stat()
    (home / "deltas" / "edit-00000001.safetensors").write_bytes(b"factors X")  # same size, same inode
    os.utime(home / "deltas" / "edit-00000001.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CorruptedStateError, match="damaged"):
        store.restore(second)


@pytest.mark.parametrize("hold", [True, False])
def test_a_ledger_snapshot_with_its_wal_unfolded_restores_every_committed_row(tmp_path, hold):
    """The journal folds the WAL only when it is over 1 MiB: a snapshot then copies the ledger file
    and its WAL, and restoring them gives back every row committed before the take, none after."""
    from sleepwake.sleep.journal import WAL_FOLD_BYTES
    from sleepwake.storage.database import wal_path
    from sleepwake.storage.ledger import Ledger

    home = tmp_path / "home"
    ledger = Ledger(home / "ledger.duckdb", hold=hold)
    ledger.set_meta("night", "1")
    assert ledger.checkpoint(min_wal_bytes=WAL_FOLD_BYTES) is False
    if hold:  # a held writer keeps its WAL until something folds it
        assert wal_path(home / "ledger.duckdb").stat().st_size > 0
    store = SnapshotStore(home)
    snap = store.take("run-1-pre-sleep", {})
    ledger.set_meta("night", "2")
    ledger.set_meta("other", "x")
    ledger.release()
    store.restore(snap)
    reopened = Ledger(home / "ledger.duckdb", hold=hold)
    assert reopened.get_meta("night") == "1" and reopened.get_meta("other") is None
    assert reopened.checkpoint() is True
