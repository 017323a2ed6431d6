"""Report: what one sleep did, as a dict (CLI ``--json``), a markdown artifact and metric rows."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from sleepwake.sleep.run import SleepRun, StageResult
from sleepwake.status import LAST_SLEEP_KEY, current_drowsiness


CYCLE_METRIC = "sleep_degraded_after"  # written by full sleeps only (naps change nothing)


def convergence(run: SleepRun, degraded_after: int) -> str:
    """Paper 5's criterion: zero degraded facts for two consecutive sleeps."""
    history = run.ledger.metric_history(CYCLE_METRIC, limit=2)
    previous = [row["value"] for row in history if row["run_id"] != run.run_id]
    if degraded_after == 0 and previous and previous[-1] == 0:
        return "converged"
    return "clean" if degraded_after == 0 else "recovering"


def report(run: SleepRun, outcome: str) -> StageResult:
    """``outcome``: "kept", "rolled_back" or "no_change" (a nap)."""
    started = time.perf_counter()
    results = run.results
    audit = results.get("audit")
    validate = results.get("validate")
    maintain = results.get("maintain")
    before = audit.summary if audit else {}
    kept = outcome != "rolled_back"
    after_recall = validate.summary.get("raw_recall_after") if validate and kept else before.get("raw_recall")
    degraded_after = validate.summary["degraded_after"] if validate and kept else before.get("degraded", 0)
    if outcome == "kept" and run.pending_audits:
        run.save_audits(run.pending_audits)
    if run.kind == "full_sleep":  # facts changed before now count as slept on (kept or rolled back)
        run.ledger.set_meta(LAST_SLEEP_KEY, datetime.now(timezone.utc).replace(tzinfo=None).isoformat())
    counts = run.ledger.counts()
    summary = {
        "run_id": run.run_id, "kind": run.kind, "outcome": outcome,
        "facts": counts["facts"], "edits": counts["edits"],
        "raw_recall_before": before.get("raw_recall"), "raw_recall_after": after_recall,
        "chat_recall_before": before.get("chat_recall"),
        "chat_recall_after": validate.summary.get("chat_recall_after") if validate and kept else before.get("chat_recall"),
        "facts_per_stage": {str(k): v for k, v in counts["facts_per_stage"].items()},
        **consolidation_summary(results, kept),
        "degraded_before": before.get("degraded"), "degraded_after": degraded_after,
        "refreshed": maintain.summary.get("refreshed", 0) if maintain and kept else 0,
        "pruned": results["curate"].summary.get("pruned", 0) if "curate" in results and kept else 0,
        "refreshed_undone": maintain.summary.get("refreshed", 0) if maintain and not kept else 0,
        "perplexity_before": results["health"].summary.get("perplexity") if "health" in results else None,
        "perplexity_after": validate.summary.get("perplexity_after") if validate and kept else
        (results["health"].summary.get("perplexity") if "health" in results else None),
        "convergence": convergence(run, degraded_after),
        "drowsiness": current_drowsiness(run.ledger, run.settings.health)["level"],
        "stage_seconds": {name: round(r.seconds, 2) for name, r in results.items()},
        "seconds": round(time.perf_counter() - run.started, 2),
    }
    if run.kind == "full_sleep":
        run.record("report", {CYCLE_METRIC: degraded_after})
    result = StageResult("report", summary, markdown=render_markdown(summary))
    return run.finish(result, started)


def consolidation_summary(results: dict, kept: bool) -> dict:
    """What SWS, REM and a reinforcing nap did (None where the stage did not run)."""
    sws, rem, reinforce = results.get("sws"), results.get("rem"), results.get("reinforce")
    return {
        "sws_accepted": sws.summary.get("accepted") if sws and not sws.summary.get("skipped") else None,
        "sws_advanced": sws.summary.get("advanced", 0) if sws and kept else 0,
        "rem_accepted": rem.summary.get("accepted") if rem and not rem.summary.get("skipped") else None,
        "reinforce_accepted": reinforce.summary.get("accepted") if reinforce and not reinforce.summary.get("skipped") else None,
    }


def render_markdown(summary: dict) -> str:
    def fmt(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [f"# {summary['kind'].replace('_', ' ')} {summary['run_id']}: {summary['outcome']}", "",
             "| figure | before | after |", "|---|---|---|",
             f"| raw recall | {fmt(summary['raw_recall_before'])} | {fmt(summary['raw_recall_after'])} |",
             f"| chat recall | {fmt(summary['chat_recall_before'])} | {fmt(summary['chat_recall_after'])} |",
             f"| degraded facts | {fmt(summary['degraded_before'])} | {fmt(summary['degraded_after'])} |",
             f"| perplexity | {fmt(summary['perplexity_before'])} | {fmt(summary['perplexity_after'])} |", "",
             f"Refreshed {summary['refreshed']}, pruned {summary['pruned']}; {summary['facts']} facts in "
             f"{summary['edits']} edits; convergence: **{summary['convergence']}**; drowsiness "
             f"{summary['drowsiness']:.2f}; {summary['seconds']:.1f} s.", "",
             f"Facts per stage (0 active ... 3 consolidated): {summary['facts_per_stage']}; SWS accepted "
             f"{fmt(summary['sws_accepted'])}, advanced {summary['sws_advanced']}; REM accepted "
             f"{fmt(summary['rem_accepted'])}.", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {secs:.2f} |" for name, secs in summary["stage_seconds"].items()]
    return "\n".join(lines)
