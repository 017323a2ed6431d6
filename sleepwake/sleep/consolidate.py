"""What SWS, REM and the reinforcing nap share: the LoRA recipe, anchor text, and training with
progress in the logs (a line every tenth of the way) and the run's metrics."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

from sleepwake.facts import Fact
from sleepwake.models import anchors, probes
from sleepwake.models.anchors import Anchor
from sleepwake.models.recipes import LoraRecipe, TrainExample, TrainOutcome
from sleepwake.progress import bar
from sleepwake.sleep import curriculum
from sleepwake.sleep.session import SleepSession

log = logging.getLogger(__name__)


def cannot_train(memory) -> str | None:
    """Why this backend cannot run a LoRA pass (None when it can): the stage then skips."""
    if getattr(memory.backend, "can_train_lora", False):
        return None
    return f"backend {memory.settings.backend!r} cannot train LoRA; consolidation skipped"


def raw_share(session: SleepSession, facts) -> float:
    """Share of ``facts`` whose raw prompt completes to the object on the current weights."""
    if not facts:
        return 1.0
    hits = probes.raw_recall(session.memory.backend, facts, session.settings.probes)
    return round(sum(ok for ok, _ in hits) / len(hits), 4)


def recipe(settings, learning_rate: float | None = None, epochs: int | None = None,
           checkpointing: bool | None = None) -> LoraRecipe:
    """The LoRA recipe of ``settings.lora``, with a stage's own learning rate, epochs or checkpointing."""
    cfg = settings.lora
    return LoraRecipe(rank=cfg.rank, alpha=cfg.alpha, layers=cfg.adapted_layers(), modules=list(cfg.modules),
                      learning_rate=learning_rate or cfg.learning_rate, epochs=epochs or cfg.epochs,
                      batch_size=cfg.batch_size, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
                      seed=settings.seed, anchor_weight=cfg.anchor_weight, anchor_batch=cfg.anchor_batch,
                      anchor_tokens=cfg.anchor_tokens, memory_anchor_batch=cfg.memory_anchor_batch,
                      checkpointing=cfg.checkpointing if checkpointing is None else checkpointing, max_tokens=cfg.max_tokens,
                      micro_batch=cfg.micro_batch, shared_opening=cfg.shared_opening)


def anchor_set(memory, facts: Sequence[Fact] = (), kept: Sequence[Fact] = ()) -> list[Anchor]:
    """The KL anchors of one training pass: the cached base-model anchors in every format, plus
    contrast anchors for ``facts`` (look-alike subjects asked the same things), with the teacher
    the base model (``lora.anchor_teacher=base``) or the weights as composed now (``current``); plus
    each of ``kept`` asked in chat and answered with its statement (and with ``lora.memory_anchor_raw`` its raw
    prompt continued by the object), taught by the weights as composed now whatever the setting (what is
    anchored there is what earlier nights consolidated)."""
    cfg = memory.settings.lora
    if cfg.anchor_weight <= 0:
        return []
    backend = memory.backend
    extra = anchors.contrast_texts(backend, facts, cfg.contrast_anchors, probes.chat_question) if cfg.contrast_anchors else []
    rehearsed = [curriculum.rehearsal_example(backend, fact) for fact in kept]
    if cfg.memory_anchor_raw:
        rehearsed += [curriculum.raw_example(backend, fact) for fact in kept]
    taught = anchors.teacher(backend, [(ex.prompt + ex.target, len(ex.prompt)) for ex in rehearsed], cfg.anchor_topk)
    held = [replace(anchor, held=True) for anchor in taught]
    if cfg.anchor_teacher == "base":
        with memory.base_weights():
            contrast = anchors.teacher(backend, complete(backend, extra), cfg.anchor_topk)
        return memory.base_anchors() + contrast + held
    fixed = [(a.ids, a.start) for a in memory.base_anchors()]
    return anchors.teacher(backend, fixed + complete(backend, extra), cfg.anchor_topk) + held


def complete(backend, texts: list[tuple[list[int], int]], tokens: int = 8) -> list[tuple[list[int], int]]:
    """Each prompt followed by the current weights' greedy answer (the answer is what is anchored)."""
    answers = probes.greedy_ids(backend, [ids for ids, _ in texts], tokens) if texts else []
    return [(ids + answer, len(ids)) for (ids, _), answer in zip(texts, answers)]


def train(session: SleepSession, examples: list[TrainExample], lora_recipe: LoraRecipe, label: str,
          facts: Sequence[Fact] = (), kept: Sequence[Fact] = ()) -> TrainOutcome:
    """Train one pass over the memory's current weights (``facts``: what the pass teaches, for the
    contrast anchors; ``kept``: consolidated facts whose answers the anchors hold); progress goes to
    the log and a bar."""
    memory = session.memory
    anchored = anchor_set(memory, facts, kept)
    shown = bar(None, f"{label}: LoRA", "step")

    def progress(step: int, total: int, loss: float) -> None:
        shown.total = total
        shown.update(1)
        shown.set_postfix_str(f"loss {loss:.3f}")
        if step == 1 or step == total or step % max(1, total // 10) == 0:
            log.info("%s: step %d/%d, loss %.3f", label, step, total, loss)
            session.progress(label, step, total, f"LoRA step {step}/{total}, loss {loss:.3f}")

    protect = memory.lora_protection(lora_recipe) if session.settings.lora.protect_energy > 0 else None
    try:
        outcome = memory.backend.train_lora(examples, lora_recipe, anchors=anchored, progress=progress, protect=protect)
    finally:
        shown.close()
    session.record(label, {"train_steps": outcome.steps, "train_loss_first": outcome.first_loss,
                           "train_loss_last": outcome.last_loss, "train_examples": len(examples)})
    return outcome
