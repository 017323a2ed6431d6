"""Subject routing: the consolidated adapter acts only on text that names a stored subject.

MEMIT's premise (paper 1) is that a model recognises a subject in the residual stream at the
subject's last token, in the early-middle layers. The router reads the residual entering the first
adapted block, whitens it with the statistics of the model's own text (Sigma^{-1/2} (h - mu)), and
takes its cosine to the same vector at every stored subject's key token in its bare prompt (the
last token the model's own text stays clear of: the name's end, ``memory/routing.py``). A sequence
with any position at or above the threshold runs with the adapter on every position (the prompt
decides, before the reply is written); while generating, a new token that matches turns it on for
the rest of that sequence. A sequence that matches nothing runs on base + MEMIT edits, so the adapter adds
no drift to text that names no stored subject. Side-memory editors route the same way (GRACE by key
distance, WISE by activation); here the routed part is the sleep-consolidated adapter.

Torch backend only: forward hooks on the loaded model, never a change to its weights.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from sleepwake.models.torch_internals import decoder_layers, right_pad

LAYER = re.compile(r"\.(\d+)\.")


def layer_of(module_name: str) -> int:
    """Decoder block index in a module path (``model.layers.4.mlp.up_proj`` -> 4)."""
    found = LAYER.search(module_name)
    if found is None:
        raise ValueError(f"no layer index in module name {module_name!r}")
    return int(found.group(1))


def whitening(states: torch.Tensor, ridge: float = 1.0e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu (d,), Sigma^{-1/2} (d, d)) of residual states (N, d); ``ridge`` * mean variance keeps
    directions ordinary text never uses from dominating the cosine."""
    states = states.double()
    mean = states.mean(0)
    centred = states - mean
    cov = centred.T @ centred / max(len(states) - 1, 1)  # (d, d)
    cov += ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs @ torch.diag(evals.clamp_min(1e-12).rsqrt()) @ evecs.T
    return mean.float(), root.float()


@dataclass
class Router:
    """Which sequences name a stored subject (see the module docstring)."""

    layer: int  # the residual entering this block is read
    mean: torch.Tensor  # (d,)
    whiten: torch.Tensor  # (d, d)
    keys: torch.Tensor  # (n, d): whitened, unit-norm states at the stored subjects' key tokens
    threshold: float

    def embed(self, states: torch.Tensor) -> torch.Tensor:
        return subject_keys(self.mean, self.whiten, states)

    def similarity(self, states: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...): the cosine to the closest stored subject."""
        if len(self.keys) == 0:
            return torch.full(states.shape[:-1], -1.0, device=states.device)
        return (self.embed(states) @ self.keys.to(states.device).T).amax(-1)


def subject_keys(mean: torch.Tensor, whiten: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Whitened unit vectors (..., d) of states (..., d): Sigma^{-1/2} (h - mu) / |.|."""
    z = (states.float() - mean.to(states.device)) @ whiten.to(states.device)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@dataclass
class RoutedAdapter:
    """Every adapted module's U V^T (out, r) x (in, r), added where the router's gate is on."""

    router: Router
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    handles: list = field(default_factory=list)
    gate: torch.Tensor | None = None  # (B, 1, 1) of the running forward pass
    latch: torch.Tensor | None = None  # (B,) bool: which sequences are routed, kept while generating
    mask: torch.Tensor | None = None  # (B, T) attention mask of the running forward pass, if given
    subjects: list[str] = field(default_factory=list)  # the routed subjects' prompts (for the digest)
    key_limit: float = 0.0  # how close the model's own text may come to a key (memory.routing; for the digest)
    digest: str = ""  # what the routing adds to the weights digest (memory.routing.routing_digest)
    forced: bool = False  # on for every sequence (``fully_on``), as if merged

    def install(self, model) -> None:
        blocks = decoder_layers(model)
        self.handles.append(model.get_decoder().register_forward_pre_hook(self._see_mask, with_kwargs=True))
        self.handles.append(blocks[self.router.layer].register_forward_pre_hook(self._decide, with_kwargs=True))
        for name, (u, v) in self.factors.items():
            module = model.get_submodule(name)
            self.factors[name] = (u.to(module.weight.device, torch.float32), v.to(module.weight.device, torch.float32))
            self.handles.append(module.register_forward_hook(self._add(name)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _see_mask(self, _module, args, kwargs):
        # A pass that never reaches the router's block (v*'s replay of the lower blocks) must not
        # reuse the decision of the pass before it: no decision, no adapter (unless forced).
        self.gate = None
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _decide(self, _module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, d)
        with torch.no_grad():
            hit = self.router.similarity(hidden.detach()) >= self.router.threshold  # (B, T)
            if self.mask is not None and self.mask.shape[0] == hit.shape[0]:
                hit &= self.mask[:, -hit.shape[1]:].to(hit.device).bool()
            continuing = hit.shape[1] == 1 and self.latch is not None and self.latch.shape[0] == hit.shape[0]
            routed = (self.latch.to(hit.device) | hit[:, 0]) if continuing else hit.any(dim=1)
        self.latch = routed
        self.gate = routed.to(hidden.dtype)[:, None, None] if bool(routed.any()) else None

    def _add(self, name: str):
        def hook(_module, inputs, out):
            if self.gate is None and not self.forced:
                return out
            u, v = self.factors[name]
            added = ((inputs[0].float() @ v) @ u.T).to(out.dtype)
            return out + added if self.forced else out + self.gate.to(out.device, out.dtype) * added
        return hook


def attach(backend, adapter: RoutedAdapter | None) -> None:
    """Route ``adapter`` on the backend's model (replacing any routed before); None removes it."""
    old = getattr(backend, "routed", None)
    if old is not None:
        old.remove()
    backend.routed = adapter
    if adapter is not None:
        adapter.install(backend.model)


@contextlib.contextmanager
def fully_on(backend) -> Iterator[None]:
    """Inside: a routed adapter acts on every sequence, exactly as if merged. Wake solves new edits
    this way: the facts being stored are not routed yet, but will be once stored, so their edits
    must be solved against the adapter they will run with (and v*'s replayed passes never reach
    the router's block)."""
    routed = getattr(backend, "routed", None)
    if routed is None:
        yield
        return
    routed.forced = True
    try:
        yield
    finally:
        routed.forced = False


@contextlib.contextmanager
def _stop_before(block: torch.nn.Module, seen: list) -> Iterator[None]:
    class Stop(Exception):
        pass

    def hook(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().float())
        raise Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    except Stop:
        pass
    finally:
        handle.remove()


@torch.no_grad()
def block_inputs(backend, sequences: Sequence[Sequence[int]], layer: int, batch_size: int = 16) -> list[torch.Tensor]:
    """The residual entering block ``layer`` (len, d) at every position of each token sequence;
    the blocks from ``layer`` on are not run."""
    block = decoder_layers(backend.model)[layer]
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[start:start + batch_size]]
        ids, mask = right_pad(chunk, backend.tokenizer.pad_token_id, backend.input_device)
        seen: list[torch.Tensor] = []
        with _stop_before(block, seen):
            backend.model.get_decoder()(input_ids=ids, attention_mask=mask)
        out += [seen[0][row, :len(seq)].cpu() for row, seq in enumerate(chunk)]
    return out
