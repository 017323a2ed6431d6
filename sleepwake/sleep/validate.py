"""Validate: re-audit what this sleep audited, measure perplexity, locality and leak, and gate.

The sleep is rolled back byte-exactly (``journal.rollback``) when any gate fails:
perplexity rose over ``validate.max_ppl_increase`` (relative to before the sleep) or drifted over
``validate.max_drift`` from the base model (or over where wake had already taken it, when that was higher:
:func:`drift_ceiling`); raw recall of the audited facts dropped more than
``validate.max_recall_drop``; teacher-forced locality on the unrelated probe sample fell under
``validate.min_locality`` (or under where the weights were before the sleep or after maintain's
refreshes, when that was lower already) or its leak rose over ``validate.max_leak`` (or over what the weights
already leaked then, when that was higher: ``locality.leak_ceiling``); or a forgotten object came back.
Before judging, facts this sleep cost their raw recall (REM and the fold come after SWS's own repair) get
their edits re-solved and are audited again with the audited facts nearest them (``validate.repair_lost``).
The post-change audit is handed to the report, which saves its verdicts if the sleep is kept.
"""

from __future__ import annotations

import logging
import time

from sleepwake.faults import crash_point
from sleepwake.settings.sleep import ValidateConfig
from sleepwake.sleep import audit as audit_stage, forgetting, journal, locality as locality_stage, select as select_stage
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import AuditResult, HealthResult, MaintainResult, ValidateResult
from sleepwake.sleep.session import SleepSession, timed

log = logging.getLogger(__name__)


def validate(session: SleepSession, before: AuditResult, health: HealthResult,
             maintained: MaintainResult | None = None) -> ValidateResult:
    started = time.perf_counter()
    cfg = session.settings.validate_
    audited = [v["fact_id"] for v in before.verdicts]
    after = reaudit(session, audited)
    repaired = repair_lost(session, before, after) if cfg.enabled and cfg.repair_lost else []
    if repaired:
        after = reaudit(session, reaudited(session, repaired, audited), standing=after)
    ppl = session.memory.perplexity()
    local = locality_stage.measure_sample(session)
    resurfaced = forgetting.resurfaced(session)
    crash_point("validate:before-verdict")
    before_ppl = health.perplexity or ppl  # a health check always measures it; a bare call may not
    increase = ppl / before_ppl - 1.0
    drift = ppl / health.perplexity_baseline - 1.0 if health.perplexity_baseline else None
    recall_before, recall_after = before.raw_recall or 0.0, after.raw_recall or 0.0
    locality_start = floor_start(health, maintained)
    limit = locality_stage.floor(cfg, locality_start)
    leak_before = leak_start(health, maintained)
    ceiling = locality_stage.leak_ceiling(cfg, leak_before)
    most_drift = drift_ceiling(cfg, health)
    checks = [
        ("perplexity", before_ppl, ppl, f"+{cfg.max_ppl_increase:.2%}", increase <= cfg.max_ppl_increase + 1e-9,
         f"perplexity rose {increase:+.2%} (limit {cfg.max_ppl_increase:+.2%})"),
        ("drift from base", health.perplexity_baseline, ppl, f"+{most_drift:.2%}",
         drift is None or drift <= most_drift + 1e-9, f"perplexity drifted {(drift or 0):+.2%} from the base model (limit {most_drift:+.2%})"),
        ("raw recall", recall_before, recall_after, f"-{cfg.max_recall_drop:.3f}",
         recall_after >= recall_before - cfg.max_recall_drop - 1e-9, f"raw recall fell {recall_before:.3f} -> {recall_after:.3f} (limit -{cfg.max_recall_drop:.3f})"),
        ("locality", locality_start, local.get("locality"), f">= {limit:.3f}",
         local.get("locality") is None or local["locality"] >= limit - 1e-9,
         f"locality fell to {local.get('locality')} (limit {limit:.3f})"),
        ("leak", leak_before, local.get("leak"), f"<= {ceiling:.3f}",
         local.get("leak") is None or local["leak"] <= ceiling + 1e-9,
         f"stored objects leaked into {local.get('leak')} of unrelated answers (limit {ceiling:.3f})"),
        ("forgotten stay forgotten", 0, resurfaced, "0", resurfaced == 0, f"{resurfaced} forgotten object(s) came back"),
    ]
    failures = [message for *_, ok, message in checks if cfg.enabled and not ok]
    result = ValidateResult(
        passed=not failures, gated=cfg.enabled, failures=failures, perplexity_before=round(before_ppl, 4),
        perplexity_after=round(ppl, 4), perplexity_increase=round(increase, 6),
        perplexity_drift=None if drift is None else round(drift, 6), raw_recall_before=recall_before,
        raw_recall_after=recall_after, chat_recall_after=after.chat_recall, degraded_after=after.degraded,
        repaired=len(repaired),
        locality=local.get("locality"), greedy_unchanged=local.get("greedy_unchanged"), leak=local.get("leak"),
        forgotten_resurfaced=resurfaced, audit=after)
    result.rows = [{"gate": gate, "before": _round(b), "after": _round(a), "limit": limit, "passed": ok}
                   for gate, b, a, limit, ok, _ in checks]
    return finish(session, result, started)


@timed("audit")
def reaudit(session: SleepSession, fact_ids: list[int], standing: AuditResult | None = None) -> AuditResult:
    """Validate's audit, a part of its seconds (the audit stage's own call is that whole stage)."""
    return audit_stage.audit(session, fact_ids, label="validate-audit", standing=standing)


def floor_start(health: HealthResult, maintained: MaintainResult | None) -> float | None:
    """Where the locality floor starts: before the sleep, or after maintain's refreshes when they
    left it lower. A refresh re-stores facts the day stored (MEMIT, as wake does), and the floor
    blames the sleep's consolidation, not wake's edits: night 2 of the 500-fact run was rolled back
    (its three refreshes and REM's kept pass with it) for locality 0.895 under 0.900, when REM had
    kept it no lower than the refreshes had left it (REM's own gate starts there)."""
    values = [v for v in (health.locality, maintained.locality if maintained else None) if v is not None]
    return min(values) if values else None


def drift_ceiling(cfg: ValidateConfig, health: HealthResult) -> float:
    """The drift from the base model a sleep may leave: ``validate.max_drift``, or the drift the
    weights already had before it when wake's edits had taken them over that. A rollback cannot undo
    wake's drift, and rolling back blocks the consolidation that dissolves those edits (night 5 of the
    500-fact run began at +14.1 % against 0.15: from the next night's wake on, every sleep would have
    failed here). Over the limit a sleep may not raise perplexity at all."""
    if health.perplexity is None or not health.perplexity_baseline:
        return cfg.max_drift
    return max(cfg.max_drift, health.perplexity / health.perplexity_baseline - 1.0)


def leak_start(health: HealthResult, maintained: MaintainResult | None) -> float | None:
    """Where the leak ceiling starts: the larger of the leak before the sleep and after maintain's
    refreshes (the same reasoning as :func:`floor_start`)."""
    values = [v for v in (health.leak, maintained.leak if maintained else None) if v is not None]
    return max(values) if values else None


@timed("repair")
def repair_lost(session: SleepSession, before: AuditResult, after: AuditResult) -> list[int]:
    """Facts healthy before the sleep and degraded now, and up to ``validate.repair_degraded`` of those
    degraded before and still now: their edits re-solved on the weights as they are now (the other
    edits held by the null-space constraint, as in SWS's repair); a consolidated fact with no edit
    left gets a fresh one at stage 0, as maintain would re-wake it the next night (a 6-night run lost
    its night 5 to a fact with raw recall before the sleep and no edit to repair). Under a stage
    snapshot inside this sleep's, so a failed repair is undone and the sleep is judged unrepaired.
    Returns the ids of every fact whose edit changed (companions included: ``refresh_many`` reports
    only its targets)."""
    lost = set(before.healthy_ids) & set(after.degraded_ids)
    still = sorted(set(before.degraded_ids) & set(after.degraded_ids))  # fact ids grow with age: oldest first
    lost |= set(still[: session.settings.validate_.repair_degraded])
    facts = session.ledger.list_facts()
    rows = [r for r in facts if r.fact_id in lost]
    if not rows:
        return []
    edits = {r.fact_id: r.edit_id for r in facts}
    try:
        with journal.stage(session, "validate-repair"):
            session.memory.refresh_many(rows)
    except Exception as exc:  # noqa: BLE001  (judge the sleep as it stood; the stage restored it)
        log.warning("validate: repairing %d fact(s) failed (%s); judging without it", len(rows), exc)
        return []
    return [r.fact_id for r in session.ledger.list_facts() if edits.get(r.fact_id) != r.edit_id]


def reaudited(session: SleepSession, repaired: list[int], audited: list[int]) -> list[int]:
    """What a repair may have moved: the re-solved facts and the ``audit.near_facts`` audited facts whose
    subject keys are closest to each (a MEMIT edit spills onto nearby keys; the other edits are held by
    the null-space constraint; only audited ones, so the raw-recall gate compares the same facts before
    and after). The rest keep the verdicts of the audit just before the repair: auditing every audited
    fact again was a third of night 10's validate in the 500-fact run."""
    judged = set(audited) | set(repaired)
    rows = [r for r in session.ledger.list_facts() if r.fact_id in judged]
    return sorted(set(repaired) | select_stage.nearest_facts(session, rows, set(repaired), session.settings.audit.near_facts))


def _round(value):
    return round(value, 4) if isinstance(value, float) else value
