"""Memory: a loaded model plus the edits and adapters recorded in a home, composed exactly.

Effective weights are always recomposed from scratch, never patched in place (see
``sleepwake.composition``):

    W_l = W_base_l + sum_{adapters} U V^T + sum_{edits e, by id} scale_e * U_e,l V_e,l^T   (float32)

so the same ledger and factor files give the same bytes in any process (a restart is exact, a
forget of the only edit restores the base bit for bit), and no rounding residue accumulates.

Order of effects for every change (so a crash at any point leaves a consistent home):
compute the update (no state touched) -> write the factor file atomically -> commit the ledger
transaction -> recompose weights. Factor files the ledger does not know are orphans of an
interrupted write and are removed when a writer opens the home.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from sleepwake.composition import Composition
from sleepwake.config import Settings
from sleepwake.errors import ModelLoadError, NotFoundError, SleepwakeError
from sleepwake.faults import crash_point
from sleepwake.facts import Fact, normalize_answer, normalize_key
from sleepwake.models import covariance, probes
from sleepwake.models.bundled import default_cache_dir
from sleepwake.models.editor import EditResult, compute_edit, key_prefix
from sleepwake.models.memit import merge_updates
from sleepwake.storage import adapters as adapter_rows
from sleepwake.storage.deltas import DeltaStore
from sleepwake.storage.home import Home
from sleepwake.storage.ledger import EditRow, FactRow, Ledger
from sleepwake.storage.snapshots import SnapshotStore

log = logging.getLogger(__name__)


# Backends lent to every Memory.open in this process that asks for the same model (an experiment
# runs many sleeps: each would otherwise load a second copy of the model).
_LENT: dict[str, object] = {}


def backend_key(settings: Settings) -> str:
    return f"{settings.backend}|{settings.memit.down_proj}|{settings.model.model_dump_json()}"


@contextlib.contextmanager
def lending(settings: Settings, backend) -> Iterator[None]:
    """While inside, :func:`load_backend` for the same model returns ``backend``. Safe because a
    Memory composes its home's weights onto the backend when it opens; only one Memory may use it
    at a time (the callers are sequential)."""
    key = backend_key(settings)
    _LENT[key] = backend
    try:
        yield
    finally:
        _LENT.pop(key, None)


def load_backend(settings: Settings):
    """The configured runtime (MLX is imported only in its own module)."""
    lent = _LENT.get(backend_key(settings))
    if lent is not None:
        return lent
    if settings.backend == "mlx":
        try:
            from sleepwake.models.mlx_backend import MlxBackend
        except ImportError as exc:
            raise ModelLoadError(f"backend=mlx is not available here: {exc}") from None
        return MlxBackend.load(settings.model, settings.memit.down_proj)
    from sleepwake.models.torch_backend import TorchBackend

    return TorchBackend.load(settings.model, settings.memit.down_proj)


@dataclass
class InjectOutcome:
    fact: Fact
    status: str  # "stored" | "replaced" | "unchanged"
    edit_id: int | None
    seconds: float
    stats: dict

    def as_dict(self) -> dict:
        return {**self.fact.model_dump(), "status": self.status, "edit_id": self.edit_id,
                "seconds": round(self.seconds, 3), "stats": self.stats}


class Memory(Composition):
    """The model and its edit ledger. Open with :meth:`open`; one writer per home."""

    def __init__(self, home: Home, settings: Settings, backend, ledger: Ledger, cache_dir: Path,
                 tolerate_corrupt: bool = False):
        self.home, self.settings, self.backend, self.ledger = home, settings, backend, ledger
        self.deltas = DeltaStore(home.root)
        self.cache_dir = cache_dir
        self._factors: dict[int, dict[str, torch.Tensor]] = {}
        self._adapter_factors: dict[int, dict[str, torch.Tensor]] = {}
        self._stats: dict | None = None
        self._contexts: list[str] | None = None
        self.tolerate_corrupt = tolerate_corrupt
        self.corrupted: set[int] = set()  # edits left out of the weights (only when tolerated)
        self.recovered: list[str] = []  # snapshots of an interrupted sleep restored by open()
        self.orphans_removed: list[str] = []  # factor files of interrupted writes removed by open()
        self.edits = ledger.list_edits()
        self.adapters = adapter_rows.list_adapters(ledger)
        self._check_model()
        self.compose()

    @classmethod
    def open(cls, home: Home, settings: Settings, writable: bool = True, backend=None,
             tolerate_corrupt: bool = False) -> "Memory":
        """``tolerate_corrupt``: leave edits whose factor file fails its checksum out of the weights
        instead of refusing to open (only ``forget`` uses it, to remove such an edit)."""
        # An open snapshot is the journal of a sleep that died mid-change: undo it before anything
        # reads the ledger, so the home is exactly as it was before that sleep began.
        recovered = SnapshotStore(home.root).recover() if writable else []
        ledger = Ledger(home.db_path, read_only=not writable)
        memory = cls(home, settings, backend or load_backend(settings), ledger, default_cache_dir(), tolerate_corrupt)
        memory.recovered = recovered
        if writable:
            known = {e.file for e in memory.edits} | {a.file for a in memory.adapters}
            memory.orphans_removed = memory.deltas.remove_orphans(known)
            if memory.orphans_removed:
                log.info("removed %d factor file(s) left by an interrupted write", len(memory.orphans_removed))
        if recovered:
            log.warning("an interrupted sleep was undone from snapshot %s", recovered[0])
        return memory

    def reload(self) -> None:
        """Re-read the ledger and factor files (after a snapshot restore) and recompose."""
        self.edits = self.ledger.list_edits()
        self.adapters = adapter_rows.list_adapters(self.ledger)
        self._factors.clear()
        self._adapter_factors.clear()
        self.corrupted.clear()
        self.compose()

    # ---- MEMIT statistics (lazy: status and recall never need them) ---------------------------
    def stats(self):
        if self._stats is None:
            self._stats = covariance.load_or_estimate(self.backend, self.settings.memit, self.cache_dir, self.settings.seed)
        return self._stats

    def contexts(self) -> list[str]:
        if self._contexts is None:
            self._contexts = covariance.load_or_make_contexts(self.backend, self.settings.memit, self.cache_dir, self.settings.seed)
        return self._contexts

    # ---- wake: inject -------------------------------------------------------------------------
    def compute(self, facts: Sequence[Fact], protect: dict | None = None) -> EditResult:
        if protect is None and self.settings.memit.protect_related:
            protect = self.related_keys(facts)
        return compute_edit(self.backend, facts, self.settings.memit, self.stats(), self.contexts(), protect)

    def related_keys(self, facts: Sequence[Fact]) -> dict[int, torch.Tensor] | None:
        """Stored keys of OTHER subjects sharing a name word with ``facts`` (a surname, "my"), by layer.

        Their keys are close to the new subject's, so an unconstrained edit would overwrite them
        (measured: "Saanvi Dimitrov works as a surgeon" turned "Anika Dimitrov is employed by" into
        "...is a surgeon"). Facts about the SAME subject are left out: they share its key on purpose.
        """
        subjects = {normalize_key(f.subject) for f in facts}
        words = {w for s in subjects for w in s.split()}
        edit_ids = {row.edit_id for row in self.ledger.list_facts()
                    if row.edit_id is not None and normalize_key(row.subject) not in subjects
                    and words & set(normalize_key(row.subject).split())}
        return self.edit_keys(edit_ids)

    def edit_keys(self, edit_ids) -> dict[int, torch.Tensor] | None:
        """The stored key rows of the given edits, concatenated by layer (None when empty)."""
        edit_ids = set(edit_ids)
        keys: dict[int, list[torch.Tensor]] = {}
        for edit in self.edits:
            if edit.edit_id in edit_ids and edit.edit_id not in self.corrupted:
                tensors = self.factors(edit)
                for layer in edit.layers:
                    keys.setdefault(layer, []).append(tensors[f"layer{layer}.keys"])
        return {layer: torch.cat(parts) for layer, parts in keys.items()} or None

    def store_edit(self, result: EditResult, facts: Sequence[Fact], replaces: Sequence[int], source: str, kind: str = "wake") -> int:
        """Persist factors then ledger rows (in that order), then recompose. Returns the edit id."""
        edit_id = self.ledger.next_edit_id()
        tensors: dict[str, torch.Tensor] = {}
        for update in result.updates:
            tensors[f"layer{update.layer}.u"] = update.u.float().cpu().contiguous()
            tensors[f"layer{update.layer}.v"] = update.v.float().cpu().contiguous()
            tensors[f"layer{update.layer}.keys"] = update.keys.float().cpu().contiguous()
        meta = {"edit_id": str(edit_id), "model_fingerprint": self.backend.fingerprint,
                "facts": json.dumps([f.model_dump() for f in facts])}
        relpath, checksum, nbytes = self.deltas.save(edit_id, tensors, meta)
        crash_point("inject:after-factor-file")
        row = EditRow(edit_id=edit_id, kind=kind, scale=1.0, layers=[u.layer for u in result.updates],
                      rank=result.updates[0].u.shape[1], file=relpath, checksum=checksum, nbytes=nbytes,
                      model_fingerprint=self.backend.fingerprint)
        try:
            self.ledger.commit_edit(row, list(facts), remove_edit_ids=list(replaces), source=source)
        except BaseException:
            self.deltas.delete(relpath)  # the ledger never saw it: leave no orphan behind
            raise
        self._factors[edit_id] = tensors
        crash_point("inject:after-ledger")
        self.apply_ledger_change(removed=replaces)
        return edit_id

    def apply_ledger_change(self, removed: Sequence[int] = ()) -> None:
        old_files = {e.edit_id: e.file for e in self.edits}
        self.edits = self.ledger.list_edits()
        for edit_id in removed:
            self._factors.pop(edit_id, None)
            if edit_id in old_files:
                self.deltas.delete(old_files[edit_id])
        self.compose()

    def inject(self, facts: Sequence[Fact], source: str = "cli", progress: Callable | None = None) -> list[InjectOutcome]:
        """Wake: each fact becomes its own MEMIT edit, one after another (no constraints from
        other edits beyond related subjects' keys; sleep maintenance adds those)."""
        outcomes = []
        for fact in facts:
            start = time.perf_counter()
            existing = self.ledger.find_fact(fact.subject, fact.relation)
            if existing and normalize_answer(existing.object) == normalize_answer(fact.object) and existing.edit_id:
                outcomes.append(InjectOutcome(fact, "unchanged", existing.edit_id, 0.0, {}))
            else:
                replaces = [existing.edit_id] if existing and existing.edit_id else []
                replaces += [e for e in self._shared_key_edits(fact) if e not in replaces]
                batch = [fact] + self._companions(replaces, fact)
                self.compose(skip=replaces)  # the new delta is solved on weights without the old one
                try:
                    result = self.compute(batch)
                    edit_id = self.store_edit(result, batch, replaces, source)
                finally:
                    self.compose()
                status = "replaced" if existing else "stored"
                outcomes.append(InjectOutcome(fact, status, edit_id, time.perf_counter() - start, result.stats))
            if progress:
                progress(outcomes[-1])
        return outcomes

    def _shared_key_edits(self, fact: Fact) -> list[int]:
        """Edits holding other facts read at the same key ("Lena lives in" / "Lena works as"):
        the new fact is solved together with them, one target per key (``editor.key_groups``)."""
        prefix = key_prefix(fact)
        return sorted({row.edit_id for row in self.ledger.list_facts()
                       if row.edit_id is not None and row.fact.key != fact.key and key_prefix(row.fact) == prefix})

    def _companions(self, edit_ids: Sequence[int], fact: Fact) -> list[Fact]:
        """Other facts sharing a replaced edit (batched injections) are re-solved with it."""
        others = []
        for edit_id in edit_ids:
            others += [row.fact for row in self.ledger.facts_of_edit(edit_id) if row.fact.key != fact.key]
        return others

    # ---- sleep: refresh in place ---------------------------------------------------------------
    def refresh(self, row: FactRow, protect_edits: Sequence[int]) -> int:
        """Re-solve a degraded fact (with any companions of its edit) under a HARD null-space
        constraint from ``protect_edits``' stored keys, and replace its edit in place.

        The correction D is solved on the current weights (old edit included) with D k_p = 0,
        and the new edit stores old + D as one factor pair. So the outputs at every protected
        key stay exactly as they were; reverting the old edit first (the paper's REVERTEDIT)
        would move them by the old edit's own spill-over. The edit count never grows (the
        reference project's refresh copies caused its pruning death spiral). Edits holding facts
        about the same subject are not protected: they share the subject's key, so protecting
        them would forbid the refresh itself.
        """
        old = next((e for e in self.edits if e.edit_id == row.edit_id), None)
        replaces = [old.edit_id] if old is not None else []
        batch = [row.fact] + self._companions(replaces, row.fact)
        subjects = {normalize_key(f.subject) for f in batch}
        same_subject = {r.edit_id for r in self.ledger.list_facts() if normalize_key(r.subject) in subjects}
        protect = self.edit_keys(set(protect_edits) - same_subject - set(replaces))
        result = self.compute(batch, protect=protect or {})
        if old is not None:
            result = EditResult(merge_updates(result.updates, self.factors(old), old.scale), result.stats)
        return self.store_edit(result, batch, replaces, source="maintain", kind="refresh")

    # ---- forget -------------------------------------------------------------------------------
    def forget(self, subject: str, relation: str) -> dict:
        row = self.ledger.find_fact(subject, relation)
        if row is None:
            raise NotFoundError(f"no stored fact for subject {subject!r} and relation {relation!r}")
        edits = [row.edit_id] if row.edit_id is not None else []
        companions = self._companions(edits, row.fact)
        if companions:  # keep the facts that shared the edit: re-solve them without this one
            self.compose(skip=edits)
            try:
                self.store_edit(self.compute(companions), companions, edits, source="forget")
            finally:
                self.compose()
            edits = []
        self.ledger.forget_fact(row.fact_id, remove_edit_ids=edits)
        crash_point("forget:after-ledger")
        self.apply_ledger_change(removed=edits)
        # A consolidated fact was also trained into sleep's LoRA adapters, which hold many facts
        # at once and cannot subtract one exactly: say so instead of claiming a clean removal.
        in_adapters = row.stage > 0 and bool(self.adapters)
        if in_adapters:
            log.warning("%s | %s was consolidated: its MEMIT edit is removed exactly, but the LoRA "
                        "adapters of earlier sleeps may still answer it", row.subject, row.relation)
        return {**row.fact.model_dump(), "fact_id": row.fact_id, "removed_edit": row.edit_id,
                "reinjected": [f.model_dump() for f in companions], "may_remain_in_adapters": in_adapters}

    # ---- read-only views ----------------------------------------------------------------------
    def facts(self) -> list[Fact]:
        return [row.fact for row in self.ledger.list_facts()]

    def recall(self) -> list[dict]:
        rows = self.ledger.list_facts()
        results = probes.probe_facts(self.backend, [r.fact for r in rows], self.settings.probes)
        return [{"fact_id": r.fact_id, **r.fact.model_dump(), "stage": r.stage, **p.as_dict()}
                for r, p in zip(rows, results)]

    def _cache_meta(self, key: str, value: str) -> None:
        """Best effort even for readers: a cache miss costs seconds, a busy home costs nothing."""
        try:
            if not self.ledger.read_only:
                self.ledger.set_meta(key, value)
                return
            # A reader writes only while holding the write lock, so it can never touch the file
            # while a writer copies it into a snapshot or restores one.
            with self.home.write_lock():
                Ledger(self.ledger.path, busy_timeout_s=0.2).set_meta(key, value)
        except (SleepwakeError, OSError):
            pass

    def perplexity(self, base: bool = False) -> float:
        """Perplexity of the composed (or base) weights, cached in the ledger by weights digest."""
        if base:
            self.compose(skip=[e.edit_id for e in self.edits], with_adapters=False)
        try:
            key = f"perplexity:{self.weights_digest()}:{self.settings.probes.perplexity_chunk_tokens}x{self.settings.probes.perplexity_max_chunks}"
            cached = self.ledger.get_meta(key)
            if cached is not None:
                return float(cached)
            value = probes.perplexity(self.backend, self.settings.probes)
            self._cache_meta(key, repr(value))
            return value
        finally:
            if base:
                self.compose()

