"""Routing the consolidated adapter by subject (``lora.routing: subject``; ``models/routing.py``):
the whitening of the model's own text, the stored subjects' states, and what the digest covers.

Composition calls :meth:`Routing.prepare_routing` before it writes the weights (the whitening may
need the base model's anchor texts, which composes the base weights on the way) and
:meth:`Routing.route` after (the subjects' states are read on the weights just written).
"""

from __future__ import annotations

import hashlib
import logging

import torch

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
        return (self.settings.lora.routing == "subject" and with_adapters and bool(self.adapters)
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
        mean, whiten, calibration = whitened
        rows = [lookup_row(self.backend, "", row.fact) for row in self.ledger.list_facts()]
        prefixes = [tuple(ids[: i + 1]) for ids, i in rows]  # the subject's last token sees only these
        picked = self.subject_states(prefixes, layer) if rows else torch.zeros(0, mean.shape[0])
        router = Router(layer, mean, whiten, subject_keys(mean, whiten, picked), self.settings.lora.route_threshold)
        adapter = RoutedAdapter(router, factors)
        adapter.subjects = [self.backend.decode(p) for p in prefixes]
        warn_undistinctive(router, calibration, adapter.subjects)
        attach(self.backend, adapter)

    def subject_states(self, prefixes: list[tuple[int, ...]], layer: int) -> torch.Tensor:
        """States (n, d) entering block ``layer`` at each prefix's last token. Kept per prefix while
        no edit sits below ``layer`` (adapters never do: the router reads their first block), so a
        sleep's many compositions read each new subject once."""
        if any(min(e.layers) < layer for e in self.edits if e.layers):
            return torch.stack([s[-1] for s in block_inputs(self.backend, prefixes, layer)])
        cache = self.__dict__.setdefault("_subject_cache", {})
        missing = [p for p in dict.fromkeys(prefixes) if (layer, p) not in cache]
        for prefix, states in zip(missing, block_inputs(self.backend, missing, layer)):
            cache[(layer, prefix)] = states[-1]
        return torch.stack([cache[(layer, p)] for p in prefixes])

    def routing_digest(self) -> str:
        """What a routed composition adds to the weights digest ('' when nothing is routed)."""
        routed = getattr(self.backend, "routed", None)
        if routed is None:
            return ""
        if not routed.digest:  # hashing every factor costs ~0.3 s: only when a digest is asked for
            routed.digest = routing_digest(routed.factors, routed.router, routed.subjects)
        return routed.digest


def warn_undistinctive(router: Router, calibration: torch.Tensor, subjects: list[str]) -> list[str]:
    """The subjects whose key the model's own text reaches (a generic word read as the subject's last
    token: "Lena Brandt's home"): text resembling them routes, so the adapter acts on it. Logged."""
    if len(router.keys) == 0:
        return []
    reach = (calibration @ router.keys.T).amax(0)  # (n,): the closest the model's own text comes
    loose = [s for s, r in zip(subjects, reach.tolist()) if r >= router.threshold]
    if set(loose) - _WARNED:  # once per process and subject: a sleep composes many times
        _WARNED.update(loose)
        log.warning("routing: the model's own text reaches %d of %d stored subjects at >= %.2f (e.g. %r): the "
                    "adapter will act on text resembling them", len(loose), len(subjects), router.threshold, loose[0])
    return loose


def routing_digest(factors: dict, router: Router, subjects: list[str]) -> str:
    """sha256 of what a routed composition adds beyond the weights: the routed factors' bytes, the
    router's layer and threshold and the subjects it routes (their states follow from the weights)."""
    digest = hashlib.sha256(f"routed:{router.layer}:{router.threshold!r}".encode())
    for name, (u, v) in sorted(factors.items()):
        digest.update(name.encode())
        for tensor in (u, v):
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    for subject in sorted(subjects):
        digest.update(subject.encode() + b"\0")
    return digest.hexdigest()
