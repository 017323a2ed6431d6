"""Locality and leak on a fixed sample of the unrelated probe set, for the validate gate.

``validate.locality_sample`` prompts (the same every night) are compared with the base model's
recorded answers (``models.locality``); objects of every stored fact count for the leak.
"""

from __future__ import annotations

from sleepwake.models import locality
from sleepwake.sleep.session import SleepSession


def measure_sample(session: SleepSession) -> dict:
    """{"locality", "greedy_unchanged", "leak", ...} on the configured sample; {} when it is 0."""
    size = session.settings.validate_.locality_sample
    if size <= 0:
        return {}
    return measure_memory(session.memory, size)


def measure_memory(memory, size: int | None = None) -> dict:
    """The locality metrics of ``memory`` as composed now, on ``size`` prompts (None: all 256)."""
    prompts = locality.load_prompts()
    picked = locality.sample(prompts, len(prompts) if size is None else size)
    base = memory.locality_base()
    objects = sorted({row.object for row in memory.ledger.list_facts()})
    return locality.measure(memory.backend, [prompts[i] for i in picked], [base[i] for i in picked], objects)


def pass_failure(session: SleepSession) -> tuple[dict, str | None]:
    """The validate gate's locality and leak limits, checked by a consolidation pass on itself.

    SWS and REM each undo their own pass when it fails them, so one runaway adapter costs its own
    pass instead of the whole night (the MEMIT maintenance and the other pass are kept).
    Returns the measured metrics and the reason, None when the pass is within the limits."""
    cfg = session.settings.validate_
    local = measure_sample(session) if cfg.enabled else {}
    if not local:
        return local, None
    if local["locality"] < cfg.min_locality - 1e-9:
        return local, f"locality fell to {local['locality']} (limit {cfg.min_locality:.3f})"
    if local["leak"] > cfg.max_leak + 1e-9:
        return local, f"stored objects leaked into {local['leak']} of unrelated answers (limit {cfg.max_leak:.3f})"
    return local, None
