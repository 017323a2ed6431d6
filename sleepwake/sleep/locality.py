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
