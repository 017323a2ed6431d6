"""Report: what one sleep did, from the results of its stages (passed in as arguments).

The report is a typed value (``--json`` prints it), a markdown artifact in words and tables, and
metric rows; it saves the post-sleep audit verdicts when the sleep is kept and records the run in
the ledger's ``sleep_runs`` table beside the Prefect flow run that drove it.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TypeVar

from pydantic import Field

from sleepwake.sleep.reinforce import ReinforceResult
from sleepwake.sleep.results import (
    AuditResult, CurateResult, FoldResult, HealthResult, MaintainResult, RemResult, SelectionResult,
    StageResult, SwsResult, ValidateResult,
)
from sleepwake.sleep.session import SleepSession
from sleepwake.status import LAST_SLEEP_KEY, current_drowsiness

CYCLE_METRIC = "sleep_degraded_after"  # written by full sleeps only (naps change nothing)
STAGE_NAMES = {0: "0 new (MEMIT 1.0)", 1: "1 consolidating", 2: "2 consolidating", 3: "3 consolidated (LoRA only)"}


class Report(StageResult):
    stage: str = "report"
    run_id: str = ""
    flow_run_id: str | None = None
    kind: str = ""
    outcome: str = ""
    facts: int = 0
    edits: int = 0
    adapters: int = 0
    adapter_bytes: int = 0
    delta_bytes: int = 0
    audited: int | None = None
    coverage_nights: int | None = None
    raw_recall_before: float | None = None
    raw_recall_after: float | None = None
    chat_recall_before: float | None = None
    chat_recall_after: float | None = None
    facts_per_stage: dict[str, int] = Field(default_factory=dict)
    sws_accepted: bool | None = None
    sws_advanced: int = 0
    sws_reason: str | None = Field(None, description="Why SWS undid its own pass (or was skipped), when it did.")
    sws_scale: float | None = Field(None, description="The scale SWS kept tonight's adapters at: 1.0, or the retry "
                                    "scale (sws.retry_scales) that passed its gates.")
    rem_accepted: bool | None = None
    rem_reason: str | None = Field(None, description="Why REM undid its own pass (or was skipped), when it did.")
    reinforce_accepted: bool | None = None
    folded: bool | None = None
    degraded_before: int | None = None
    degraded_after: int | None = None
    refreshed: int = 0
    pruned: int = 0
    refreshed_undone: int = 0
    statistics_tokens: int | None = Field(None, description="Tokens in MEMIT's key statistics after the night "
                                          "(maintain grows them a slice a night up to memit.covariance_max_tokens).")
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    locality: float | None = None
    leak: float | None = None
    failures: list[str] = Field(default_factory=list)
    convergence: str = ""
    drowsiness: float = 0.0
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    stage_peak_rss_gb: dict[str, float] = Field(
        default_factory=dict, description="Peak resident memory per stage in GB (Linux); the night's is the largest.")
    stage_part_seconds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Seconds of the named parts of the stages that time them (SWS, validate).")


Picked = TypeVar("Picked", bound=StageResult)


def pick(results, kind: type[Picked]) -> Picked | None:
    """The result of that stage among the report's arguments (exactly that type: an audit's
    result, not the validate-audit inside validate's)."""
    return next((r for r in results if type(r) is kind), None)


def convergence(session: SleepSession, degraded_after: int) -> str:
    """Paper 5's criterion: zero degraded facts for two consecutive sleeps."""
    history = session.ledger.metric_history(CYCLE_METRIC, limit=2)
    previous = [row["value"] for row in history if row["run_id"] != session.run_id]
    if degraded_after == 0 and previous and previous[-1] == 0:
        return "converged"
    return "clean" if degraded_after == 0 else "recovering"


def report(session: SleepSession, outcome: str, *results: StageResult | None) -> Report:
    """``outcome``: "kept", "rolled_back", "no_change" (a nap) or "reinforced"."""
    started = time.perf_counter()
    validate = pick(results, ValidateResult)
    if outcome == "kept" and validate:
        session.save_audits(validate.audit.verdicts)
    if session.kind == "full_sleep":  # facts changed before now count as slept on (kept or rolled back)
        session.ledger.set_meta(LAST_SLEEP_KEY, datetime.now(timezone.utc).replace(tzinfo=None).isoformat())
    result = summarise(session, outcome, results)
    if session.kind == "full_sleep":
        session.record("report", {CYCLE_METRIC: result.degraded_after})
    session.ledger.finish_run(session.run_id, session.kind, session.flow_run_id, outcome)
    result.seconds = round(time.perf_counter() - started, 3)
    result.stage_seconds["report"] = result.seconds
    result.stage_seconds["total"] = round(session.elapsed(), 2)
    result.note = render_markdown(result)
    return result


def summarise(session: SleepSession, outcome: str, results: tuple[StageResult | None, ...]) -> Report:
    """The stages' results as one Report; a rolled-back run reports its "after" figures as the
    "before" ones (the weights are those again)."""
    health, audit, validate = pick(results, HealthResult), pick(results, AuditResult), pick(results, ValidateResult)
    maintain, curate, selection = pick(results, MaintainResult), pick(results, CurateResult), pick(results, SelectionResult)
    sws, rem, fold = pick(results, SwsResult), pick(results, RemResult), pick(results, FoldResult)
    reinforced = pick(results, ReinforceResult)
    kept = outcome != "rolled_back"
    after = validate if validate and kept else None
    counts = session.ledger.counts()
    memory = session.memory
    degraded_after = after.degraded_after if after else (audit.degraded if audit else 0)
    return Report(
        run_id=session.run_id, flow_run_id=session.flow_run_id, kind=session.kind, outcome=outcome,
        facts=counts["facts"], edits=counts["edits"], adapters=len(memory.adapters),
        adapter_bytes=sum(a.nbytes for a in memory.adapters), delta_bytes=sum(e.nbytes for e in memory.edits),
        audited=audit.n if audit else None, coverage_nights=selection.coverage_nights if selection else None,
        raw_recall_before=audit.raw_recall if audit else None,
        raw_recall_after=after.raw_recall_after if after else (audit.raw_recall if audit else None),
        chat_recall_before=audit.chat_recall if audit else None,
        chat_recall_after=after.chat_recall_after if after else (audit.chat_recall if audit else None),
        facts_per_stage={str(k): v for k, v in counts["facts_per_stage"].items()},
        sws_accepted=None if not sws or sws.skipped else sws.accepted, sws_advanced=sws.advanced if sws and kept else 0,
        rem_accepted=None if not rem or rem.skipped else rem.accepted,
        sws_reason=sws.reason if sws else None, sws_scale=sws.adapter_scale if sws and sws.accepted and not sws.skipped else None,
        rem_reason=rem.reason if rem else None,
        reinforce_accepted=None if not reinforced or reinforced.skipped else reinforced.accepted,
        folded=None if not fold else (not fold.skipped and kept),
        degraded_before=audit.degraded if audit else None, degraded_after=degraded_after,
        refreshed=maintain.refreshed if maintain and kept else 0, pruned=curate.pruned if curate and kept else 0,
        refreshed_undone=maintain.refreshed if maintain and not kept else 0,
        statistics_tokens=maintain.statistics_tokens or None if maintain else None,
        perplexity_before=health.perplexity if health else None,
        perplexity_after=after.perplexity_after if after else (health.perplexity if health else None),
        locality=validate.locality if validate else None, leak=validate.leak if validate else None,
        failures=validate.failures if validate else [],
        convergence=convergence(session, degraded_after),
        drowsiness=current_drowsiness(session.ledger, session.settings.health)["level"],
        stage_seconds={r.stage: round(r.seconds, 2) for r in results if r is not None},
        stage_peak_rss_gb={r.stage: r.peak_rss_gb for r in results if r is not None and r.peak_rss_gb is not None},
        stage_part_seconds={r.stage: r.part_seconds for r in results if r is not None and r.part_seconds},
    )


def render_markdown(r: Report) -> str:
    def fmt(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    title = r.kind.replace("_", " ")
    lines = [f"# {title} {r.run_id}: {r.outcome.replace('_', ' ')}", ""]
    if r.flow_run_id:
        lines += [f"Prefect flow run `{r.flow_run_id}`; ledger run `{r.run_id}` (`SELECT * FROM metrics WHERE run_id = '{r.run_id}'`).", ""]
    lines += ["| figure | before | after |", "|---|---|---|",
              f"| raw recall (audited facts) | {fmt(r.raw_recall_before)} | {fmt(r.raw_recall_after)} |",
              f"| chat recall (audited facts) | {fmt(r.chat_recall_before)} | {fmt(r.chat_recall_after)} |",
              f"| degraded facts | {fmt(r.degraded_before)} | {fmt(r.degraded_after)} |",
              f"| perplexity | {fmt(r.perplexity_before)} | {fmt(r.perplexity_after)} |", ""]
    if r.audited is not None:
        lines += [f"Audited {r.audited} of {r.facts} facts (every fact at least every {r.coverage_nights} nights).", ""]
    lines += [f"Refreshed {r.refreshed}, pruned {r.pruned}; {r.facts} facts, {r.edits} MEMIT edits, {r.adapters} "
              f"adapter(s) ({r.adapter_bytes / 1e6:.1f} MB); convergence: **{r.convergence}**; drowsiness {r.drowsiness:.2f}.", ""]
    if r.statistics_tokens:
        lines += [f"MEMIT's key statistics: {r.statistics_tokens} tokens of the model's own text.", ""]
    if r.locality is not None:
        lines += [f"Locality on unrelated prompts {fmt(r.locality)}, leak {fmt(r.leak)}.", ""]
    if r.failures:
        lines += ["Gates that failed (the sleep was rolled back):", *[f"- {f}" for f in r.failures], ""]
    lines += ["| consolidation stage | facts |", "|---|---|"]
    lines += [f"| {STAGE_NAMES[int(k)]} | {v} |" for k, v in sorted(r.facts_per_stage.items())]
    verdict = {None: "did not run", True: "kept", False: "undone"}
    scaled = f" at adapter scale {r.sws_scale}" if r.sws_scale is not None and r.sws_scale < 1 else ""
    lines += ["", f"SWS {verdict[r.sws_accepted]}{scaled} ({r.sws_advanced} facts moved a stage on); REM {verdict[r.rem_accepted]}; "
              f"adapters {'folded into one' if r.folded else 'not folded'}.", ""]
    lines += [f"{name} undone: {why}" for name, ok, why in (("SWS", r.sws_accepted, r.sws_reason), ("REM", r.rem_accepted, r.rem_reason))
              if ok is False and why]
    lines += ["", "| stage | seconds | peak memory (GB) | of which (seconds) |", "|---|---|---|---|"]
    peaks, parts = r.stage_peak_rss_gb, r.stage_part_seconds
    lines += [f"| {name} | {secs:.2f} | {fmt(peaks.get(name))} | "
              f"{', '.join(f'{part} {s:.1f}' for part, s in parts.get(name, {}).items()) or '-'} |"
              for name, secs in r.stage_seconds.items()]
    return "\n".join(lines)
