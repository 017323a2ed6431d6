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
from pathlib import Path
from typing import Iterator

import torch

from sleepwake.memory.wake import InjectOutcome, Wake  # noqa: F401  (re-exported)
from sleepwake.memory.weights import Composition
from sleepwake.config import Settings
from sleepwake.errors import CorruptedStateError, ModelLoadError, SleepwakeError
from sleepwake.facts import Fact
from sleepwake.models import anchors, covariance, depth, locality, probes
from sleepwake.models.bundled import default_cache_dir
from sleepwake.resources import return_freed_memory
from sleepwake.storage import adapters as adapter_rows
from sleepwake.storage.deltas import DeltaStore
from sleepwake.storage.home import Home
from sleepwake.storage.ledger import Ledger
from sleepwake.storage.snapshots import SnapshotStore

log = logging.getLogger(__name__)
READER_RETRIES = 5  # read-only opens racing a writer: a few re-reads over ~3 s


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
    return_freed_memory(settings.model.heap_mmap_threshold_mb)
    if settings.backend == "mlx":
        try:
            from sleepwake.models.mlx_backend import MlxBackend
        except ImportError as exc:
            raise ModelLoadError(f"backend=mlx is not available here: {exc}") from None
        return MlxBackend.load(settings.model, settings.memit.down_proj)
    from sleepwake.models.torch_backend import TorchBackend

    return TorchBackend.load(settings.model, settings.memit.down_proj)


def for_model(settings: Settings, num_layers: int) -> Settings:
    """The settings with 'auto' MEMIT and LoRA layers chosen for this model's depth (``models.depth``),
    so every stage, cache key and report sees the layers actually used (``settings`` itself when
    neither is 'auto')."""
    memit, lora = settings.memit, settings.lora
    if "auto" not in (memit.layers, lora.layers):
        return settings
    if memit.layers == "auto":
        memit = memit.model_copy(update={"layers": depth.memit_layers(num_layers)})
    if lora.layers == "auto":
        lora = lora.model_copy(update={"layers": depth.lora_layers(num_layers)})
    return settings.model_copy(update={"memit": memit, "lora": lora})


class Memory(Wake, Composition):
    """The model and its edit ledger. Open with :meth:`open`; one writer per home."""

    def __init__(self, home: Home, settings: Settings, backend, ledger: Ledger, cache_dir: Path,
                 tolerate_corrupt: bool = False):
        settings = for_model(settings, backend.num_layers)
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
             tolerate_corrupt: bool = False, hold_ledger: bool = False) -> "Memory":
        """``tolerate_corrupt``: leave edits whose factor file fails its checksum out of the weights
        instead of refusing to open (only ``forget`` uses it, to remove such an edit).
        ``hold_ledger``: keep one ledger connection open (``Ledger(hold=True)``)."""
        # An open snapshot is the journal of a sleep that died mid-change: undo it before anything
        # reads the ledger, so the home is exactly as it was before that sleep began.
        backend = backend or load_backend(settings)  # first: a model that cannot load leaves no ledger behind
        recovered = SnapshotStore(home.root).recover() if writable else []
        ledger = Ledger(home.db_path, read_only=not writable, hold=hold_ledger)
        for attempt in range(READER_RETRIES):
            try:
                memory = cls(home, settings, backend, ledger, default_cache_dir(), tolerate_corrupt)
                break
            except CorruptedStateError:
                # A reader can read the ledger just before a writer (a sleep) replaces an edit and
                # the file just after: read both again. A writer's own open sees the truth at once.
                if writable or attempt == READER_RETRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
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

    def grow_stats(self, upto: int | None = None) -> tuple[int, int]:
        """One more slice of key statistics (unless there are ``upto`` already), sampled from the
        base model (``covariance.grow``): (tokens added, tokens in the estimate now). The next
        edit solves with the larger estimate."""
        cfg, seed = self.settings.memit, self.settings.seed
        done = covariance.slices_done(self.backend, cfg, self.cache_dir, seed)
        if done and done >= covariance.target_slices(cfg, upto):
            # Nothing to sample: skip base_weights' two recompositions of every edit (a large
            # wake and every night after the estimate is full would otherwise pay them).
            return 0, done * cfg.covariance_tokens
        with self.base_weights():
            grown = covariance.grow(self.backend, cfg, self.cache_dir, seed, upto=upto)
        if grown[0]:
            self._stats = None
        return grown

    def stats_for(self, n_facts: int) -> None:
        """Grow the key statistics to the slices a solve of ``n_facts`` needs
        (``memit.covariance_facts_per_slice``) before it runs, so a large first batch does not
        wait three nights for them. A cache that cannot be written leaves the estimate as it is."""
        need = covariance.slices_for(self.settings.memit, n_facts)
        if need <= 1:
            return
        try:
            added, tokens = self.grow_stats(upto=need)
            while added:
                log.info("a solve of %d facts: key statistics now %d tokens", n_facts, tokens)
                added, tokens = self.grow_stats(upto=need)
        except OSError as exc:
            log.warning("key statistics not grown for a batch of %d facts: %s", n_facts, exc)

    def contexts(self) -> list[str]:
        if self._contexts is None:
            self._contexts = covariance.load_or_make_contexts(self.backend, self.settings.memit, self.cache_dir, self.settings.seed)
        return self._contexts

    def locality_base(self) -> list[list[int]]:
        """The base model's greedy answers to the locality probe set (recorded once per model,
        cached beside the covariance statistics)."""
        tokens = self.settings.probes.locality_tokens
        path = locality.cache_path(self.cache_dir, self.backend.fingerprint, tokens)
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("locality cache %s unreadable; recording it again", path)
        log.info("recording the base model's answers to %d locality prompts (once per model)", len(locality.load_prompts()))
        with self.base_weights():
            answers = locality.record_base(self.backend, locality.load_prompts(), tokens)
        covariance.atomic_write_bytes(path, json.dumps(answers).encode())
        return answers

    def base_anchors(self) -> list[anchors.Anchor]:
        """The KL anchors (``models.anchors``): the base model's own text in the configured formats
        with the base model's next-token distributions, made once per model and settings, cached."""
        cfg = self.settings.lora
        tag = f"{'-'.join(cfg.anchor_formats)}-{cfg.anchor_count}-{cfg.anchor_tokens}-{cfg.anchor_topk}-{self.settings.seed}"
        path = covariance.stats_dir(self.cache_dir, self.backend.fingerprint) / f"anchors-{tag}.json"
        if path.is_file():
            try:
                return [anchors.Anchor.from_json(a) for a in json.loads(path.read_text())]
            except (OSError, ValueError, KeyError):
                log.warning("anchor cache %s unreadable; making it again", path)
        log.info("writing %d anchor texts in the model's own words (once per model)", cfg.anchor_count * len(cfg.anchor_formats))
        with self.base_weights():
            texts = anchors.anchor_texts(self.backend, cfg.anchor_formats, cfg.anchor_count, cfg.anchor_tokens, self.settings.seed)
            made = anchors.teacher(self.backend, texts, cfg.anchor_topk)
        covariance.atomic_write_bytes(path, json.dumps([a.as_json() for a in made]).encode())
        return made

    def lora_protection(self, recipe) -> dict[str, torch.Tensor]:
        """Protected input subspaces U_k (in, k) of the null-space-constrained LoRA
        (``models.protection``) for ``recipe``'s modules, from the inputs of the base model on its
        samples and anchors at ``lora.protect_energy`` (cached per model and energy)."""
        from sleepwake.models import protection

        names = self.backend.lora_targets(recipe)
        memit = self.settings.memit
        tag = f"{memit.covariance_tokens}-{memit.covariance_sample_length}-{self.settings.lora.anchor_count}-{self.settings.seed}"

        def sequences() -> list[list[int]]:
            samples = covariance.load_or_sample_sequences(self.backend, memit, self.cache_dir, self.settings.seed)
            return samples + [a.ids for a in self.base_anchors()]

        # The base weights are composed only if the moments must be estimated (a new model): with the
        # bases cached, a pass pays no recomposition for them.
        return protection.load_or_build(self.backend, names, sequences,
                                        covariance.stats_dir(self.cache_dir, self.backend.fingerprint), tag,
                                        self.settings.lora.protect_energy, memit.batch_size, under=self.base_weights)

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
            elif self.ledger.path.is_file():  # a reader never creates a home (a mistyped --home stays empty)
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
            cfg = self.settings.probes
            # Keyed by what determines the value: model, composed weights, corpus and chunking, so
            # an unchanged home (the nightly health check) costs no forward pass at all.
            key = (f"perplexity:{self.backend.fingerprint}:{self.weights_digest()}:{probes.reference_digest()}:"
                   f"{cfg.perplexity_chunk_tokens}x{cfg.perplexity_max_chunks}")
            cached = self.ledger.get_meta(key)
            if cached is not None:
                return float(cached)
            value = probes.perplexity(self.backend, self.settings.probes)
            self._cache_meta(key, repr(value))
            return value
        finally:
            if base:
                self.compose()

