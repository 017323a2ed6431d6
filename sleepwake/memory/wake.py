"""Wake-side changes to the memory: inject (batched MEMIT), refresh (sleep's constrained re-solve)
and forget, each as compute -> factor files -> ONE ledger transaction -> recompose.

A batch of facts is solved together (one v* pass per chunk, one covariance-regularised solve per
layer) and split back into one edit per key group (``editor.split_groups``): the sum of the
group edits IS the batch's update, and forget and refresh keep working per fact. Facts whose
prompts share the subject's last token share one key, so they are always one group and one edit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from sleepwake.errors import NotFoundError
from sleepwake.faults import crash_point
from sleepwake.facts import Fact, normalize_answer, normalize_key
from sleepwake.memory.state import MemoryState
from sleepwake.models.editor import EditResult, compute_edit, key_groups, key_prefix, split_groups
from sleepwake.models.memit import LayerUpdate, merge_updates
from sleepwake.models.routing import fully_on
from sleepwake.storage.ledger import EditRow, FactRow

log = logging.getLogger(__name__)


@dataclass
class InjectOutcome:
    fact: Fact
    status: str  # "stored" | "replaced" | "unchanged"
    edit_id: int | None
    seconds: float  # the batch's time shared equally by the facts it stored
    stats: dict

    def as_dict(self) -> dict:
        return {**self.fact.model_dump(), "status": self.status, "edit_id": self.edit_id,
                "seconds": round(self.seconds, 3), "stats": self.stats}


Group = tuple[list[LayerUpdate], list[Fact]]  # one edit: its layer updates and the facts it holds


class Wake(MemoryState):
    """Mixin of :class:`sleepwake.memory.Memory` (needs ``ledger``, ``deltas``, ``backend``,
    ``settings``, ``edits``, the factor cache and ``compose``)."""

    # ---- solving ----------------------------------------------------------------------------
    def compute(self, facts: Sequence[Fact], protect: dict | None = None, exclude: Sequence[int] = ()) -> EditResult:
        """MEMIT for ``facts`` on the weights as composed now. ``protect=None`` is wake's edit:
        only stored keys of related subjects are protected (``exclude``: edits being replaced)."""
        if protect is None and self.settings.memit.protect_related:
            protect = self.related_keys(facts, exclude)
        stats, contexts = self.stats(), self.contexts()
        with fully_on(self.backend):  # a routed adapter: solved against it, as the facts will run with it
            return compute_edit(self.backend, facts, self.settings.memit, stats, contexts, protect)

    def related_keys(self, facts: Sequence[Fact], exclude: Sequence[int] = ()) -> dict[int, torch.Tensor] | None:
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
        return self.edit_keys(edit_ids - set(exclude))

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

    def solve_groups(self, facts: Sequence[Fact], replaces: Sequence[int], protect: dict | None = None) -> tuple[list[Group], dict]:
        """Solve ``facts`` as one batch on the weights without the ``replaces`` edits (when
        ``protect`` is None, as wake does) and split the update into one edit per key group."""
        self.stats_for(len(facts))
        self.compose(skip=replaces if protect is None else ())
        try:
            result = self.compute(facts, protect, exclude=replaces)
        except BaseException:
            self.compose()
            raise
        reps, owner = key_groups(facts)
        per_group = split_groups(result.updates, len(reps))
        groups = [(per_group[g], [f for f, o in zip(facts, owner) if o == g]) for g in range(len(reps))]
        return groups, result.stats

    # ---- storing ----------------------------------------------------------------------------
    def store_edits(self, groups: Sequence[Group], replaces: Sequence[int], source: str, kind: str = "wake") -> list[int]:
        """Persist every group's factors, then ONE ledger transaction (new edits, their facts, the
        replaced edits dropped), then recompose once. Returns the new edit ids, in group order."""
        rows, written = self.write_edit_files(groups, kind)
        try:
            crash_point("inject:after-factor-file")
            self.ledger.commit_edits(rows, remove_edit_ids=list(replaces), source=source)
        except BaseException:
            for relpath in written:  # the ledger never saw them: leave no orphans behind
                self.deltas.delete(relpath)
            for row, _ in rows:
                self._factors.pop(row.edit_id, None)
            self.compose()
            raise
        crash_point("inject:after-ledger")
        self.apply_ledger_change(removed=replaces)
        return [row.edit_id for row, _ in rows]

    def write_edit_files(self, groups: Sequence[Group], kind: str) -> tuple[list[tuple[EditRow, list[Fact]]], list[str]]:
        """Write each group's factor file (atomically) under a fresh edit id; returns the ledger
        rows to commit with their facts, and the files written (to delete if the commit fails)."""
        ids = self.ledger.next_edit_ids(len(groups)) if groups else []
        rows, written = [], []
        try:
            for edit_id, (updates, facts) in zip(ids, groups):
                tensors: dict[str, torch.Tensor] = {}
                for update in updates:
                    tensors[f"layer{update.layer}.u"] = update.u.float().cpu().contiguous()
                    tensors[f"layer{update.layer}.v"] = update.v.float().cpu().contiguous()
                    tensors[f"layer{update.layer}.keys"] = update.keys.float().cpu().contiguous()
                meta = {"edit_id": str(edit_id), "model_fingerprint": self.backend.fingerprint,
                        "facts": json.dumps([f.model_dump() for f in facts])}
                relpath, checksum, nbytes = self.deltas.save(edit_id, tensors, meta)
                written.append(relpath)
                self._factors[edit_id] = tensors
                rows.append((EditRow(edit_id=edit_id, kind=kind, scale=1.0, layers=[u.layer for u in updates],
                                     rank=updates[0].u.shape[1], file=relpath, checksum=checksum, nbytes=nbytes,
                                     model_fingerprint=self.backend.fingerprint), list(facts)))
        except BaseException:
            for relpath in written:
                self.deltas.delete(relpath)
            raise
        return rows, written

    def apply_ledger_change(self, removed: Sequence[int] = ()) -> None:
        old_files = {e.edit_id: e.file for e in self.edits}
        self.edits = self.ledger.list_edits()
        for edit_id in removed:
            self._factors.pop(edit_id, None)
            if edit_id in old_files:
                self.deltas.delete(old_files[edit_id])
        self.compose()

    # ---- wake: inject -------------------------------------------------------------------------
    def inject(self, facts: Sequence[Fact], source: str = "cli", progress: Callable | None = None,
               one_by_one: bool = False) -> list[InjectOutcome]:
        """Wake: store ``facts`` in the weights, ``memit.wake_batch`` facts per MEMIT solve
        (``one_by_one``: one solve and one edit per fact, the pre-batching behaviour). The same
        (subject, relation) twice in one call keeps the last object."""
        size = 1 if one_by_one else self.settings.memit.wake_batch
        outcomes: list[InjectOutcome] = []
        for start in range(0, len(facts), size):
            batch = self._inject_batch(facts[start:start + size], source)
            outcomes += batch
            for outcome in batch:
                if progress:
                    progress(outcome)
        return outcomes

    def _inject_batch(self, facts: Sequence[Fact], source: str) -> list[InjectOutcome]:
        started = time.perf_counter()
        latest = {fact.key: fact for fact in facts}
        rows = self.ledger.list_facts()
        stored = {row.fact.key: row for row in rows}
        todo, unchanged = [], []
        for fact in latest.values():
            existing = stored.get(fact.key)
            if existing and existing.edit_id and normalize_answer(existing.object) == normalize_answer(fact.object):
                unchanged.append(InjectOutcome(fact, "unchanged", existing.edit_id, 0.0, {}))
            else:
                todo.append(fact)
        if not todo:
            return unchanged
        replaces = sorted({edit_id for f in todo if f.key in stored and (edit_id := stored[f.key].edit_id) is not None}
                          | shared_key_edits(rows, todo))
        batch = todo + companions(rows, replaces, {f.key for f in todo})
        groups, stats = self.solve_groups(batch, replaces)
        edit_ids = self.store_edits(groups, replaces, source)
        edit_of = {f.key: edit_id for edit_id, (_, group_facts) in zip(edit_ids, groups) for f in group_facts}
        seconds = (time.perf_counter() - started) / len(todo)
        return unchanged + [InjectOutcome(f, "replaced" if f.key in stored else "stored", edit_of[f.key], seconds, stats)
                            for f in todo]

    # ---- sleep: refresh in place ---------------------------------------------------------------
    def refresh_many(self, targets: Sequence[FactRow], protect_edits: Collection[int] | None = None) -> dict[int, int]:
        """Re-solve degraded facts (with their key groups' companions) as ONE batch under a HARD
        null-space constraint from ``protect_edits``' stored keys (default: every edit but the
        targets' own); each group's new edit replaces its old one in place. Returns fact_id -> new
        edit id.

        The correction D is solved on the current weights (old edits included) with D k_p = 0,
        and each new edit stores old + D as one factor pair, so the outputs at every protected
        key stay exactly as they were (the paper's REVERTEDIT would move them by the old edit's
        own spill-over). The edit count never grows. Edits holding facts about the same subjects
        are not protected: they share the subjects' keys, so protecting them would forbid the
        refresh itself. A consolidated fact (its edit pruned) gets a fresh edit and stage 0.
        """
        if protect_edits is None:
            protect_edits = {e.edit_id for e in self.edits} - {r.edit_id for r in targets}
        rows = self.ledger.list_facts()
        live = {e.edit_id: e for e in self.edits}
        replaces = sorted({r.edit_id for r in targets if r.edit_id is not None and r.edit_id in live}
                          | shared_key_edits(rows, [r.fact for r in targets]))
        batch = [r.fact for r in targets] + companions(rows, replaces, {r.fact.key for r in targets})
        subjects = {normalize_key(f.subject) for f in batch}
        same_subject = {r.edit_id for r in rows if normalize_key(r.subject) in subjects}
        protect = self.edit_keys(set(protect_edits) - same_subject - set(replaces)) or {}
        groups, _ = self.solve_groups(batch, replaces, protect=protect)
        edit_of_fact = {r.fact.key: r.edit_id for r in rows}
        merged = []
        for updates, facts in groups:
            for old_id in sorted({edit_of_fact.get(f.key) or -1 for f in facts} & set(live)):
                updates = merge_updates(updates, self.factors(live[old_id]), live[old_id].scale)
            merged.append((updates, facts))
        new_ids = self.store_edits(merged, replaces, source="maintain", kind="refresh")
        by_key = {f.key: edit_id for edit_id, (_, facts) in zip(new_ids, merged) for f in facts}
        return {r.fact_id: by_key[r.fact.key] for r in targets}

    def refresh(self, row: FactRow, protect_edits: Collection[int]) -> int:
        return self.refresh_many([row], protect_edits)[row.fact_id]

    # ---- remove (a fact moved elsewhere; ``forget`` is the privacy path) --------------------
    def remove_fact(self, subject: str, relation: str) -> tuple[FactRow, list[Fact]]:
        """Remove the fact's ledger row and its edit exactly; facts that shared the edit (the same
        subject's other relations) are re-solved without it. Returns (the row, re-solved facts).
        Used when a fact moves (the chat re-keys "the user" to a name); the knowledge itself is
        stored anew, so nothing is unlearned (``Memory.forget`` does that)."""
        row = self.ledger.find_fact(subject, relation)
        if row is None:
            raise NotFoundError(f"no stored fact for subject {subject!r} and relation {relation!r}")
        edits = [row.edit_id] if row.edit_id is not None else []
        rest = companions(self.ledger.list_facts(), edits, {row.fact.key})
        if rest:  # keep the facts that shared the edit: re-solve them without this one
            groups, _ = self.solve_groups(rest, edits)
            self.store_edits(groups, edits, source="forget")
            edits = []
        self.ledger.forget_fact(row.fact_id, remove_edit_ids=edits)
        crash_point("forget:after-ledger")
        self.apply_ledger_change(removed=edits)
        return row, rest


def shared_key_edits(rows: Sequence[FactRow], facts: Sequence[Fact]) -> set[int]:
    """Edits holding other facts read at the same key as one of ``facts`` ("Lena lives in" /
    "Lena works as"): they are solved together, one target per key (``editor.key_groups``)."""
    prefixes = {key_prefix(f): f.key for f in facts}
    return {row.edit_id for row in rows if row.edit_id is not None
            and key_prefix(row.fact) in prefixes and prefixes[key_prefix(row.fact)] != row.fact.key}


def companions(rows: Sequence[FactRow], edit_ids: Sequence[int], keys: set) -> list[Fact]:
    """Facts held by the replaced edits, other than those being (re)written, to be re-solved."""
    wanted = set(edit_ids)
    return [row.fact for row in rows if row.edit_id in wanted and row.fact.key not in keys]
