"""The journal: every snapshot and undo of a sleep, in one place.

- The pre-sleep snapshot (:func:`begin`) is taken before anything in a full sleep changes weights
  or ledger, and stays "open" until :func:`close`: a process killed mid-sleep leaves it open and
  the next writer restores it (``Memory.open``); a failed gate restores it at once (:func:`rollback`).
- A weight-changing stage runs inside :func:`stage`: its own snapshot is taken on entry, restored
  if the stage raises (so a Prefect retry starts from exactly the state the first attempt saw),
  closed on success. A stage that rejects its own pass calls :func:`undo` and carries on.

Snapshots copy the ledger file and ``deltas/``; the weights are a pure function of them, so
every restore is byte-exact and is proven by the weights digest.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from sleepwake.errors import CorruptedStateError
from sleepwake.sleep.results import RollbackResult, SnapshotResult
from sleepwake.sleep.session import SleepSession
from sleepwake.storage.snapshots import Snapshot, SnapshotStore

log = logging.getLogger(__name__)

WAL_FOLD_BYTES = 1 << 20


def pre_sleep_name(session: SleepSession) -> str:
    return f"{session.run_id}-pre-sleep"


def facts_fingerprint(memory) -> list[list]:
    """What "facts identical" means for a rollback: every ledger fact column sleep may change."""
    return [[r.fact_id, r.subject, r.relation, r.object, r.stage, r.edit_id] for r in memory.ledger.list_facts()]


def _take(session: SleepSession, name: str, info: dict) -> Snapshot:
    # The copy takes the ledger file and its WAL; a CHECKPOINT before every take cost 20-35 ms, a
    # quarter of the simulated year's time, so only a WAL over 1 MiB is folded first.
    session.ledger.checkpoint(min_wal_bytes=WAL_FOLD_BYTES)
    return SnapshotStore(session.memory.home.root).take(
        name, {"run_id": session.run_id, "weights_digest": session.memory.weights_digest(),
               "history_mark": list(session.history.mark()), **info})


def begin(session: SleepSession) -> SnapshotResult:
    """The pre-sleep snapshot: the journal entry of the whole sleep."""
    facts = facts_fingerprint(session.memory)
    snap = _take(session, pre_sleep_name(session), {"facts": len(facts)})
    return SnapshotResult(snapshot=snap.name, weights_digest=snap.manifest["weights_digest"], facts=facts)


def restore(session: SleepSession, snap: Snapshot) -> None:
    """Put the home back exactly as ``snap`` recorded it, keep the history written since, and
    prove the weights are the same bytes."""
    session.ledger.release()  # a held connection must not outlive the file it reads
    SnapshotStore(session.memory.home.root).restore(snap)
    session.memory.reload()
    session.replay_since(snap.manifest.get("history_mark"))
    if session.memory.weights_digest() != snap.manifest["weights_digest"]:
        raise CorruptedStateError(f"restoring {snap.name} did not give back the weights byte for byte")


@contextlib.contextmanager
def stage(session: SleepSession, name: str) -> Iterator[Snapshot]:
    """Run a weight-changing stage under its own snapshot (see the module doc)."""
    store = SnapshotStore(session.memory.home.root)
    snap_name = f"{session.run_id}-{name}"
    leftover = store.get(snap_name)
    if leftover is not None:  # an earlier attempt could not even restore: do it now
        restore(session, leftover)
        store.close(leftover, outcome="superseded", keep=False)
    snap = _take(session, snap_name, {"stage": name})
    try:
        yield snap
    except BaseException:
        try:
            restore(session, snap)
        except Exception as exc:  # the open snapshot stays: the next attempt or writer restores it
            log.error("could not undo stage %s now (%s)", name, exc)
            raise
        store.close(snap, outcome="failed", keep=False)
        raise
    store.close(snap, outcome="done", keep=False)


def undo(session: SleepSession, snap: Snapshot) -> None:
    """A stage rejects its own pass: back to the state at its start, byte for byte."""
    restore(session, snap)


def rollback(session: SleepSession, pre: SnapshotResult) -> RollbackResult:
    """A gate failed: restore the pre-sleep snapshot and prove weights and facts are as before."""
    store = SnapshotStore(session.memory.home.root)
    snap = store.get(pre.snapshot)
    if snap is None:
        raise CorruptedStateError(f"pre-sleep snapshot of run {session.run_id} is missing; cannot roll back")
    drop_stage_snapshots(session, store)  # superseded: the pre-sleep state comes back
    restore(session, snap)
    if facts_fingerprint(session.memory) != pre.facts:
        raise CorruptedStateError(f"rollback of run {session.run_id} did not restore the facts exactly")
    return RollbackResult(weights_digest=pre.weights_digest, byte_exact=True)


def drop_stage_snapshots(session: SleepSession, store: SnapshotStore) -> None:
    """Drop this run's open stage snapshots (never the pre-sleep one: :func:`close` ends that)."""
    snap: Snapshot
    for snap in reversed(store.open_snapshots()):
        if snap.name.startswith(f"{session.run_id}-") and snap.name != pre_sleep_name(session):
            store.close(snap, outcome="superseded", keep=False)


def close(session: SleepSession, outcome: str) -> None:
    """End the journal entry: the sleep finished (kept or rolled back) and the home is consistent."""
    store = SnapshotStore(session.memory.home.root)
    drop_stage_snapshots(session, store)
    snap = store.get(pre_sleep_name(session))
    if snap is not None:
        keep = session.settings.sleep.keep_snapshots > 0
        store.close(snap, outcome, keep=keep)
        store.prune_closed(session.settings.sleep.keep_snapshots)


def abandon(session: SleepSession, pre: SnapshotResult | None) -> None:
    """A stage failed for good: restore the pre-sleep state now rather than at the next open."""
    try:
        if pre is not None:
            rollback(session, pre)
        close(session, "failed")
    except Exception as exc:  # the open snapshot stays: the next writer restores it
        log.error("could not roll back run %s now (%s); the next command will", session.run_id, exc)
