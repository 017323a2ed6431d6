"""Routing the consolidated adapter by subject (``lora.routing``: subject, or auto on torch;
``models/routing.py``): the whitening of the model's own text, the stored subjects' keys, and what
the digest covers.

Composition calls :meth:`Routing.prepare_routing` before it writes the weights (the whitening may
need the base model's anchor texts, which composes the base weights on the way) and
:meth:`Routing.route` after (the subjects' states are read on the weights just written).
"""

from __future__ import annotations

import hashlib
import logging

import torch

from sleepwake.facts import Fact
from sleepwake.memory.state import MemoryState
from sleepwake.models.editor import lookup_row
from sleepwake.models.routing import RoutedAdapter, Router, attach, block_inputs, layer_of, subject_keys, whitening

log = logging.getLogger(__name__)

# Per process: (model fingerprint, router layer, anchor settings) -> (mu, Sigma^{-1/2}, the anchors'
# whitened unit states (N, d): what a stored subject must stay clear of).
_WHITENING: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_WARNED: set[str] = set()


class Routing(MemoryState):
    """Mixin of :class:`sleepwake.memory.Memory` (through ``Composition``)."""

    _routing_busy = False

    def routes(self, with_adapters: bool) -> bool:
        """Whether this composition routes the adapters instead of adding them into the weights."""
        return (self.settings.routes_adapters() and with_adapters and bool(self.adapters)
                and not self._routing_busy)

    def router_layer(self, factors: dict) -> int:
        return min(layer_of(name) for name in factors)

    def prepare_routing(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, Sigma^{-1/2}, whitened unit states) of the residual entering block ``layer`` on the
        base model's own text (its KL anchors: never the perplexity or locality sets, which measure
        the result)."""
        cfg = self.settings.lora
        key = (self.backend.fingerprint, layer, tuple(cfg.anchor_formats), cfg.anchor_count, cfg.anchor_tokens, self.settings.seed)
        if key not in _WHITENING:
            self._routing_busy = True  # the compositions below add the adapters plainly; compose rewrites them
            try:
                texts = [a.ids for a in self.base_anchors()]
                with self.base_weights():
                    states = block_inputs(self.backend, texts, layer)
            finally:
                self._routing_busy = False
            calibration = torch.cat(states)
            mean, whiten = whitening(calibration)
            _WHITENING[key] = (mean, whiten, subject_keys(mean, whiten, calibration))
        return _WHITENING[key]

    def route(self, factors: dict | None, whitened: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        """Route ``factors`` (module -> (U, V)) on the backend, or route nothing (None)."""
        attach(self.backend, None)  # nothing routed, or the subjects' states below read without any adapter
        if factors is None or whitened is None:
            return
        layer = self.router_layer(factors)
        mean, whiten, _ = whitened
        cfg = self.settings.lora
        spans = [subject_span(self.backend, row.fact) for row in self.ledger.list_facts()]
        prefixes = [tuple(ids[: last + 1]) for ids, _, last in spans]  # the subject's last token sees only these
        limit = cfg.route_threshold - cfg.route_key_margin
        chosen = self.keyed_subjects(prefixes, [first for _, first, _ in spans], layer, whitened, limit)
        states = torch.cat([c for c, _ in chosen]) if chosen else torch.zeros(0, mean.shape[0])
        keys = subject_keys(mean, whiten, states)
        adapter = RoutedAdapter(Router(layer, mean, whiten, keys, cfg.route_threshold), factors)
        adapter.subjects = [self.backend.decode(p) for p in prefixes]
        adapter.key_limit = limit
        warn_undistinctive([reach for _, reach in chosen], adapter.subjects, cfg.route_threshold)
        attach(self.backend, adapter)

    def keyed_subjects(self, prefixes: list[tuple[int, ...]], firsts: list[int], layer: int,
                       whitened: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       limit: float) -> list[tuple[torch.Tensor, float]]:
        """Per subject (its bare prompt up to its last token, and its first token), the state that
        keys it and the closest the model's own text comes to it (``subject_key_states``). Kept
        while no edit sits below ``layer`` (adapters never do: the router reads their first block),
        so a sleep's many compositions read each new subject once."""
        stable = not any(min(e.layers) < layer for e in self.edits if e.layers)
        cache = self.__dict__.setdefault("_key_cache", {}) if stable else {}
        wanted = [(layer, limit, p, f) for p, f in zip(prefixes, firsts)]
        missing = list(dict.fromkeys(w for w in wanted if w not in cache))
        states = block_inputs(self.backend, [p for _, _, p, _ in missing], layer) if missing else []
        for w, span in zip(missing, states):
            cache[w] = subject_key_states(*whitened, span[w[3]:], limit)
        return [cache[w] for w in wanted]

    def routing_digest(self) -> str:
        """What a routed composition adds to the weights digest ('' when nothing is routed)."""
        routed = getattr(self.backend, "routed", None)
        if routed is None:
            return ""
        if not routed.digest:  # hashing every factor costs ~0.3 s: only when a digest is asked for
            routed.digest = routing_digest(routed.factors, routed.router, routed.subjects, routed.key_limit)
        return routed.digest


def subject_span(backend, fact: Fact) -> tuple[list[int], int, int]:
    """(bare prompt ids, the subject's first token, its last token). The first is never position 0:
    a sequence's first state is its first token's alone (attention sink), whatever the subject."""
    ids, last = lookup_row(backend, "", fact)
    start = fact.relation.index("{}") if "{}" in fact.relation else 0
    # Without the space: BPE tokenisers fold it into the subject's first token (" Aria")
    first = len(backend.encode(fact.prompt()[:start].rstrip())) if start else 0
    return ids, min(max(first, 1), last), last


def subject_key_states(mean: torch.Tensor, whiten: torch.Tensor, calibration: torch.Tensor,
                       span: torch.Tensor, reach_limit: float) -> tuple[torch.Tensor, float]:
    """The state (1, d) that keys a subject (span: its tokens' states (len, d), last token last), and
    the closest the model's own text (calibration: its whitened unit states (N, d)) comes to it: the
    last token that text stays under ``reach_limit`` of. Usually MEMIT's key, the subject's last
    token, which ends the name; a subject stored from a conversation ends on a generic word ("Lena
    Brandt's home") that ordinary text reaches while a question names only the person, so the key
    moves back to the name. Only one token: every token of a name keyed (first names too) let
    reference text come within 0.01 of the threshold (docs/results.md). None under the limit: the
    least reached token, so the fact still routes (``warn_undistinctive`` names it)."""
    reach = (calibration @ subject_keys(mean, whiten, span).T).amax(0)  # (len,)
    under = (reach < reach_limit).nonzero()
    pick = int(under[-1]) if len(under) else int(reach.argmin())
    return span[pick:pick + 1], float(reach[pick])


def warn_undistinctive(reaches: list[float], subjects: list[str], threshold: float) -> list[str]:
    """The subjects whose keys the model's own text reaches (no token of the subject is distinctive):
    text resembling them routes, so the adapter acts on it. Logged once per process and subject."""
    loose = [s for s, r in zip(subjects, reaches) if r >= threshold]
    if set(loose) - _WARNED:  # a sleep composes many times
        _WARNED.update(loose)
        log.warning("routing: the model's own text reaches %d of %d stored subjects at >= %.2f (e.g. %r): the "
                    "adapter will act on text resembling them", len(loose), len(subjects), threshold, loose[0])
    return loose


def routing_digest(factors: dict, router: Router, subjects: list[str], key_limit: float = 0.0) -> str:
    """sha256 of what a routed composition adds beyond the weights: the routed factors' bytes, the
    router's layer, threshold, key reach limit and number of keys, and the subjects it routes (their
    states follow from the weights)."""
    digest = hashlib.sha256(f"routed:{router.layer}:{router.threshold!r}:{key_limit!r}:{len(router.keys)}".encode())
    for name, (u, v) in sorted(factors.items()):
        digest.update(name.encode())
        for tensor in (u, v):
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    for subject in sorted(subjects):
        digest.update(subject.encode() + b"\0")
    return digest.hexdigest()
