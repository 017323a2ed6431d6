"""What SWS, REM and the reinforcing nap share: the LoRA recipe, anchor text, and training with
progress in the logs (a line every tenth of the way) and the run's metrics."""

from __future__ import annotations

import logging

from sleepwake.models import covariance, probes
from sleepwake.models.lora import LoraRecipe, TrainExample, TrainOutcome
from sleepwake.progress import bar
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


def recipe(settings, learning_rate: float | None = None, epochs: int | None = None) -> LoraRecipe:
    cfg = settings.lora
    return LoraRecipe(rank=cfg.rank, alpha=cfg.alpha, layers=list(cfg.layers), modules=list(cfg.modules),
                      learning_rate=learning_rate or cfg.learning_rate, epochs=epochs or cfg.epochs,
                      batch_size=cfg.batch_size, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
                      seed=settings.seed, anchor_weight=cfg.anchor_weight, anchor_batch=cfg.anchor_batch,
                      anchor_tokens=cfg.anchor_tokens)


def anchor_sequences(memory) -> list[list[int]]:
    """The model's own sampled text (cached with the covariance statistics): ordinary language
    from the model's distribution, never the perplexity reference text the gates measure on."""
    if memory.settings.lora.anchor_weight <= 0:
        return []
    return covariance.load_or_sample_sequences(memory.backend, memory.settings.memit, memory.cache_dir, memory.settings.seed)


def train(session: SleepSession, examples: list[TrainExample], lora_recipe: LoraRecipe, label: str) -> TrainOutcome:
    """Train one pass over the memory's current weights; progress goes to the log and a bar."""
    memory = session.memory
    anchors = anchor_sequences(memory)
    shown = bar(None, f"{label}: LoRA", "step")

    def progress(step: int, total: int, loss: float) -> None:
        shown.total = total
        shown.update(1)
        shown.set_postfix_str(f"loss {loss:.3f}")
        if step == 1 or step == total or step % max(1, total // 10) == 0:
            log.info("%s: step %d/%d, loss %.3f", label, step, total, loss)

    try:
        outcome = memory.backend.train_lora(examples, lora_recipe, anchors=anchors, progress=progress)
    finally:
        shown.close()
    session.record(label, {"train_steps": outcome.steps, "train_loss_first": outcome.first_loss,
                           "train_loss_last": outcome.last_loss, "train_examples": len(examples)})
    return outcome
