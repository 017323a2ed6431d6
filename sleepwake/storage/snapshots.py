"""Snapshots: byte-exact copies of a home's state, and the journal of unfinished sleeps.

Effective weights are a pure function of (base model, ledger, factor files), so a copy of the
ledger file and the ``deltas/`` folder restores the weights bit for bit: no dense weight copy is
needed (a 3B model would need GBs per snapshot; this needs the factors, KBs per fact).

Layout::

    <home>/snapshots/<name>/manifest.json     {"name", "state": "open"|"closed", "weights_digest", ...}
    <home>/snapshots/<name>/ledger.duckdb     (+ ledger.duckdb.wal when one existed)
    <home>/snapshots/<name>/deltas/

A snapshot is "open" from when it is complete until its owner closes it. An open snapshot
found by a later process means its owner died mid-change: that is the journal
``recover`` acts on (``Memory.open`` calls it for every writer). Restores are idempotent, so a crash during a restore is
repaired by restoring again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List  # the class has a method called list

from sleepwake.errors import CorruptedStateError, InvalidInputError
from sleepwake.faults import crash_point
from sleepwake.storage.deltas import DELTAS_DIR, fsync_dir

MANIFEST = "manifest.json"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: Path
    manifest: dict

    @property
    def is_open(self) -> bool:
        return self.manifest.get("state") == "open"


class SnapshotStore:
    """Takes, restores, lists and drops snapshots under ``<home>/snapshots``."""

    def __init__(self, home_root: Path, db_name: str = "ledger.duckdb") -> None:
        self.root = Path(home_root)
        self.dir = self.root / "snapshots"
        self.db_name = db_name

    def _path(self, name: str) -> Path:
        if not name or set(name) - _NAME_OK:
            raise InvalidInputError(f"snapshot name {name!r} must use lowercase letters, digits, '-' or '_'")
        return self.dir / name

    def take(self, name: str, info: dict) -> Snapshot:
        """Copy the ledger and factor files; the manifest is written last (marks it complete)."""
        path = self._path(name)
        if path.exists():
            shutil.rmtree(path)  # an incomplete earlier attempt: no manifest, or being replaced
        tmp = self.dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for suffix in ("", ".wal"):
            source = self.root / (self.db_name + suffix)
            if source.exists():
                _copy_synced(source, tmp / source.name)
        deltas = self.root / DELTAS_DIR
        if deltas.exists():
            # Factor files are immutable (a change writes a new file under a new id, synced, and
            # renames it into place), so a hard link is as good as a copy and costs nothing; only
            # the new directory entries need syncing, not the files again.
            shutil.copytree(deltas, tmp / DELTAS_DIR, ignore=shutil.ignore_patterns(".tmp-*"),
                            copy_function=_link_or_copy)
            fsync_dir(tmp / DELTAS_DIR)
        crash_point("snapshot:before-manifest")
        fsync_dir(tmp)
        manifest = {"name": name, "state": "open", "created_at": _now(), "files": _file_hashes(tmp, reuse=True), **info}
        _write_json(tmp / MANIFEST, manifest)
        os.replace(tmp, path)
        fsync_dir(self.dir)
        return Snapshot(name, path, manifest)

    def get(self, name: str) -> Snapshot | None:
        path = self._path(name)
        manifest = _read_manifest(path)
        return Snapshot(name, path, manifest) if manifest is not None else None

    def list(self) -> List[Snapshot]:
        if not self.dir.exists():
            return []
        found = []
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith(".tmp-") or not path.is_dir():
                continue
            manifest = _read_manifest(path)
            if manifest is not None:
                found.append(Snapshot(path.name, path, manifest))
        return found

    def open_snapshots(self) -> List[Snapshot]:
        """Snapshots whose owner never closed them, oldest first (the journal)."""
        return sorted((s for s in self.list() if s.is_open), key=lambda s: s.manifest.get("created_at", ""))

    def restore(self, snapshot: Snapshot) -> None:
        """Put the snapshot's ledger and factor files back in place of the home's."""
        db = snapshot.path / self.db_name
        if not db.exists():
            raise CorruptedStateError(f"snapshot {snapshot.name} has no ledger copy; cannot restore")
        expected = snapshot.manifest.get("files")
        if expected is not None and _file_hashes(snapshot.path) != expected:
            raise CorruptedStateError(f"snapshot {snapshot.name} is damaged (its files do not match their "
                                      f"checksums in {MANIFEST}); restore the home from a backup")
        # Order matters for readers that open the home meanwhile: every ledger state they can see
        # must find its factor files. Files are immutable per edit id and ids only grow within a
        # run, so the union of both sets serves the old and the restored ledger alike.
        live = self.root / DELTAS_DIR
        live.mkdir(exist_ok=True)
        wanted = self._copy_missing_deltas(snapshot.path / DELTAS_DIR, live)
        crash_point("restore:after-deltas")
        self._replace_ledger(snapshot.path)
        crash_point("restore:after-ledger")
        for path in live.iterdir():  # files only the undone change used
            if path.name not in wanted:
                path.unlink(missing_ok=True)
        fsync_dir(live)

    @staticmethod
    def _copy_missing_deltas(source: Path, live: Path) -> set[str]:
        names = set()
        for path in sorted(source.iterdir()) if source.exists() else []:
            names.add(path.name)
            target = live / path.name
            if target.exists() and (os.path.samefile(target, path) or target.read_bytes() == path.read_bytes()):
                continue
            staged = live / f".tmp-restore-{path.name}"
            _copy_synced(path, staged)
            os.replace(staged, target)
        fsync_dir(live)
        return names

    def _replace_ledger(self, source_dir: Path) -> None:
        """A stale write-ahead log must go first: DuckDB would replay it onto the restored file."""
        db, wal = self.root / self.db_name, self.root / (self.db_name + ".wal")
        wal.unlink(missing_ok=True)
        for source, target in ((source_dir / self.db_name, db), (source_dir / (self.db_name + ".wal"), wal)):
            if source.exists():
                staged = target.with_name(target.name + ".restore")
                _copy_synced(source, staged)
                os.replace(staged, target)
        fsync_dir(self.root)

    def recover(self) -> List[str]:
        """Undo an interrupted change: restore the OLDEST open snapshot (the state before the
        whole unfinished run), then drop every open one. Returns the names, restored first."""
        self._remove_incomplete()
        pending = self.open_snapshots()
        if not pending:
            return []
        self.restore(pending[0])
        for snapshot in reversed(pending):  # oldest last: until it is gone, a re-run restores it again
            self.close(snapshot, outcome="recovered", keep=False)
        return [s.name for s in pending]

    def _remove_incomplete(self) -> None:
        """Copies that never got their manifest (killed mid-take) hold nothing anyone needs."""
        if not self.dir.exists():
            return
        for path in self.dir.iterdir():
            if path.is_dir() and (path.name.startswith(".tmp-") or _read_manifest(path) is None):
                shutil.rmtree(path, ignore_errors=True)

    def close(self, snapshot: Snapshot, outcome: str, keep: bool = False) -> None:
        """Mark the snapshot finished; drop its files unless ``keep``."""
        if not keep:
            # One rename takes it out of the journal atomically; the files go after.
            doomed = self.dir / f".tmp-dropped-{snapshot.name}"
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(snapshot.path, doomed)
            fsync_dir(self.dir)
            shutil.rmtree(doomed, ignore_errors=True)
            return
        manifest = {**snapshot.manifest, "state": "closed", "outcome": outcome, "closed_at": _now()}
        _write_json(snapshot.path / MANIFEST, manifest)

    def prune_closed(self, keep_last: int) -> List[str]:
        """Remove all but the newest ``keep_last`` closed snapshots; return the removed names."""
        closed = sorted((s for s in self.list() if not s.is_open), key=lambda s: s.manifest.get("created_at", ""))
        doomed = closed[: max(0, len(closed) - keep_last)]
        for snapshot in doomed:
            shutil.rmtree(snapshot.path, ignore_errors=True)
        return [s.name for s in doomed]


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a real copy
        _copy_synced(Path(source), Path(target))


def _copy_synced(source: Path, target: Path) -> None:
    """A copy whose bytes are on disk before anything (a manifest, a rename) refers to it."""
    shutil.copy2(source, target)
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())


def _now() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat()


# Digests of factor files by identity. They never change once written, and each snapshot links
# the same files again: hashing them once per process, not once per snapshot, keeps a take's cost
# to the files that are new. Never used for the ledger, nor when restoring (that must read).
_DIGESTS: dict[tuple, str] = {}


def _file_hashes(folder: Path, reuse: bool = False) -> dict[str, str]:
    """sha256 of every file under ``folder`` but the manifest, by relative path (``reuse``: factor
    files already hashed under the same name, inode, size and mtime are not read again)."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (MANIFEST, MANIFEST + ".tmp"):
            relative = path.relative_to(folder).as_posix()
            hashes[relative] = _digest(path, reuse and relative.startswith(DELTAS_DIR + "/"))
    return hashes


def _digest(path: Path, reuse: bool) -> str:
    if not reuse:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    st = path.stat()
    key = (path.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # not ctime: each link changes it
    if key not in _DIGESTS:
        if len(_DIGESTS) > 65536:  # a long-lived process: forget, do not grow without bound
            _DIGESTS.clear()
        _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _DIGESTS[key]


def _write_json(path: Path, data: dict) -> None:
    staged = path.with_name(path.name + ".tmp")
    with open(staged, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staged, path)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
