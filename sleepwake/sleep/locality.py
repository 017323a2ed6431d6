"""Locality and leak on a fixed sample of the unrelated probe set, for the validate gate.

``validate.locality_sample`` prompts (the same every night) are compared with the base model's
recorded answers (``models.locality``); objects of every stored fact count for the leak.
"""

from __future__ import annotations

from sleepwake.models import locality
from sleepwake.settings.sleep import ValidateConfig
from sleepwake.sleep.session import SleepSession


def measure_sample(session: SleepSession) -> dict:
    """{"locality", "greedy_unchanged", "leak", ...} on the configured sample; {} when it is 0.
    Weights already measured in this session (same digest, same stored objects) are not measured
    again: greedy decoding makes the figures a function of those two."""
    size = session.settings.validate_.locality_sample
    if size <= 0:
        return {}
    memory = session.memory
    objects = stored_objects(memory)
    key = (memory.weights_digest(), tuple(objects), size)
    if key not in session.locality_seen:
        session.locality_seen[key] = measure_memory(memory, size, objects)
    return dict(session.locality_seen[key])


def stored_objects(memory) -> list[str]:
    return sorted({row.object for row in memory.ledger.list_facts()})


def measure_memory(memory, size: int | None = None, objects: list[str] | None = None) -> dict:
    """The locality metrics of ``memory`` as composed now, on ``size`` prompts (None: all 256);
    ``objects`` (default: every stored fact's) count for the leak."""
    prompts = locality.load_prompts()
    picked = locality.sample(prompts, len(prompts) if size is None else size)
    base = memory.locality_base()
    objects = stored_objects(memory) if objects is None else objects
    return locality.measure(memory.backend, [prompts[i] for i in picked], [base[i] for i in picked], objects)


def floor(cfg: ValidateConfig, before: float | None) -> float:
    """The locality a change must keep: ``validate.min_locality``, or ``validate.locality_slack`` under
    where the weights already were when wake's edits had brought them near or below it (a sleep is
    not blamed, and rolled back night after night, for what the day's injections did; it may cost at
    most the slack itself, since a pass that costs nothing at all consolidates nothing). The one rule
    for SWS, REM and validate alike."""
    return cfg.min_locality if before is None else min(cfg.min_locality, before - cfg.locality_slack)


def leak_ceiling(cfg: ValidateConfig, before: float | None) -> float:
    """The leak a change may leave: ``validate.max_leak``, or the leak the weights already had when
    wake's edits (or maintain's refreshes) had taken it over that. A rollback cannot undo the day's
    leak, and a gate that rolls the sleep back for it blocks the consolidation that dissolves those
    edits (night 5 of the 500-fact run: 3 of the 64 prompts leaked after maintain, with SWS and REM
    both undone). Over the limit a sleep may add no leak at all; the one rule for SWS, REM and validate."""
    return cfg.max_leak if before is None else max(cfg.max_leak, before)


def start_locality(session: SleepSession) -> float | None:
    """Locality of the weights as composed now, when the gates are on (else None, unmeasured)."""
    return measure_sample(session).get("locality") if session.settings.validate_.enabled else None


def start_leak(session: SleepSession) -> float | None:
    """Leak of the weights as composed now, when the gates are on (else None); the same measurement
    as :func:`start_locality` (cached by weights digest), so it costs nothing more."""
    return measure_sample(session).get("leak") if session.settings.validate_.enabled else None


def pass_failure(session: SleepSession, before: float | None,
                 leak_before: float | None = None) -> tuple[dict, str | None]:
    """The validate gate's locality and leak limits, checked by a consolidation pass on itself.

    SWS and REM each undo their own pass when it fails them, so one runaway adapter costs its own
    pass instead of the whole night (the MEMIT maintenance and the other pass are kept).
    ``before`` and ``leak_before`` are the locality and leak when the pass began (see :func:`floor`
    and :func:`leak_ceiling`). Returns the measured metrics and the reason, None when the pass is
    within the limits."""
    cfg = session.settings.validate_
    local = measure_sample(session) if cfg.enabled else {}
    if not local:
        return local, None
    limit = floor(cfg, before)
    if local["locality"] < limit - 1e-9:
        return local, f"locality fell to {local['locality']} (limit {limit:.3f})"
    ceiling = leak_ceiling(cfg, leak_before)
    if local["leak"] > ceiling + 1e-9:
        return local, f"stored objects leaked into {local['leak']} of unrelated answers (limit {ceiling:.3f})"
    return local, None
