"""SWS: staged consolidation into the chat pathway (paper 4, Algorithm 1), sized by what changed.

1. Under its own journal snapshot (a rejected pass is undone byte for byte).
2. Train one LoRA on the facts not yet consolidated once (stage 0: new, replaced or re-woken
   facts): chat Q&A, raw completions, identity, plus a bounded replay of older facts and logged
   conversation turns (``curriculum``), with every gated fact's MEMIT edit switched off
   (``sws.train_without_memit``; the facts ``sws.max_trained`` leaves waiting included). Facts at
   stages 1-2 are carried by the consolidated adapter and replayed (maintain sends back one that lost
   its chat answer). With ``sws.rounds`` > 1, facts failing the gate (step 4), up to
   ``sws.max_relearned`` consolidated ones failing it too, and the stage-3 facts checked after round 1
   that lost their answer (``sws.settled_checked``, ``settled``), get another LoRA, the passed rehearsed.
3. Store it as an adapter (factor file + ledger row): the weights now include it.
4. Switch every stage < 3 fact's edit to scale 0; per fact, through the adapters alone: chat
   recall (and raw recall with ``sws.gate_raw``). A pass moves the fact one stage on and its edit to
   that stage's scale in ``sws.schedule`` (1.0 -> 0.5 -> 0.1 -> 0.0); a fail keeps stage and scale.
5. Settle: with the new scales composed, a fact that advanced but lost its raw recall goes back.
   A fact the LoRA disturbed while its edit kept its scale gets that edit re-solved on the weights
   with the adapter (maintain's null-space refresh, ``sws.repair_disturbed``); if raw recall is still
   below its pre-SWS level, the pass is rejected rather than failing the whole sleep at validate.
6. On the weights the pass leaves (adapters, edits at their new scales): the benchmark gate (48
   fixed questions; a drop beyond ``sws.benchmark_max_drop`` rejects the pass), then locality and
   leak against the sleep's own floor. A pass failing one of these is first retried with tonight's
   adapters at ``sws.retry_scales`` (steps 4-6 again; ``adapter_scale``) before it is undone.
7. All stage and scale changes commit in one ledger transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sleepwake.faults import crash_point
from sleepwake.models import probes
from sleepwake.sleep import adapter_scale, consolidate, curriculum, forgetting, journal, locality as locality_stage, replay, settled
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import SwsResult
from sleepwake.sleep.session import SleepSession, timed
from sleepwake.sleep.settled import gate_facts
from sleepwake.storage import adapters as adapter_rows

log = logging.getLogger(__name__)


def sws(session: SleepSession) -> SwsResult:
    started = time.perf_counter()
    memory, cfg = session.memory, session.settings.sws
    with journal.stage(session, "sws") as snap:
        rows = memory.ledger.list_facts()
        gated = [r for r in rows if r.stage < 3]
        trained = curriculum.waiting_longest([r for r in gated if r.stage == 0], cfg.max_trained)
        forgets = forgetting.unsettled(session)
        why_not = consolidate.cannot_train(memory)
        if not cfg.enabled or why_not or not (gated or forgets):
            result = SwsResult(skipped=True, accepted=cfg.enabled, reason=why_not)
            return finish(session, result, started)
        edit_ids = {r.edit_id for r in gated if r.edit_id is not None}
        bench_before, _ = probes.benchmark(memory.backend, session.settings.probes)
        raw_before = raw_hits(session, gated)
        locality_before = locality_stage.start_locality(session)
        result = SwsResult(trained=len(trained), gated=len(gated), benchmark_before=round(bench_before, 4),
                           locality_start=locality_before, leak_start=locality_stage.start_leak(session))
        plan = Pass(trained, gated, edit_ids, edit_ids if cfg.train_without_memit else set(), settled.sample(session, rows))
        if trained or forgets:
            plan.shared, result.replay = replay.shared_examples(session)
            examples = curriculum.fact_examples(memory.backend, [r.fact for r in trained], cfg.train_raw) if trained else []
            examples += plan.shared + forgetting.training_examples(session, forgets)
            plan.adapter_ids.append(train_pass(session, examples, plan.switched_off, [r.fact for r in trained], result))
        memory.compose(skip=edit_ids)  # isolate the adapters: every gated fact's MEMIT at 0
        start = (raw_before, bench_before, locality_before)
        verdict = conclude(session, gated, forgets, extra_rounds(session, plan, gate_facts(session, gated), result), start, result)
        if verdict.why and result.failed_gate != "raw":
            verdict = retry_scaled(session, plan, forgets, start, result, verdict)
        result.rows = verdict.table  # every reject keeps the per-fact gate table in its artifact
        if verdict.why:
            return reject(session, snap, result, verdict.why, started)
        adapter_rows.commit_consolidation(memory.ledger, verdict.stages, verdict.scales, verdict.forget_stages)
        crash_point("sws:after-stages")
        memory.reload()
        result.record_accepted(verdict.table, verdict.stages, verdict.scales, {r.fact_id: r.edit_id for r in verdict.gated})
        result.forgotten_settled = sum(1 for stage in verdict.forget_stages.values() if stage > 0)
        return finish(session, result, started)


@dataclass
class Verdict:
    """One gating of a pass: table, settled stages, gated rows as stored now, scales, forget stages, why not."""

    table: list[dict]
    stages: dict[int, int]
    gated: list
    scales: dict[int, float]
    forget_stages: dict
    why: str | None


def conclude(session: SleepSession, gated, forgets, gate: tuple[list[dict], dict[int, int]],
             start: tuple[list[bool], float, float | None], result: SwsResult) -> Verdict:
    """Steps 4-6 on the adapters as composed (gated edits at 0): forgotten facts' stages, settle,
    repair, then the pass's gates."""
    table, stages = gate
    raw_before = start[0]
    forget_stages = forgetting.advance(session, forgets)
    stages, raw_after = settle(session, gated, stages)
    if session.settings.sws.repair_disturbed and sum(raw_before) > sum(raw_after):
        gated, stages, raw_after, result.repaired = repair(session, gated, stages, raw_before, raw_after)
    scales, why = judge(session, gated, stages, (raw_before, raw_after), (start[1], start[2]), result)
    result.scale_tries.append({"scale": result.adapter_scale, "passed": sum(1 for r in table if r["passed"]),
                               "benchmark": result.benchmark_after, "locality": result.locality, "leak": result.leak,
                               "failed": result.failed_gate})
    log.info("SWS gate, adapters at scale %s: %s", result.adapter_scale, result.scale_tries[-1])
    return Verdict(table, stages, gated, scales, forget_stages, why)


def retry_scaled(session: SleepSession, plan: "Pass", forgets, start, result: SwsResult, verdict: Verdict) -> Verdict:
    """Before undoing a pass that failed a gate past raw recall (benchmark, locality, leak): tonight's
    adapters merged and stored at each of ``sws.retry_scales`` in turn, every gated fact gated again
    there; the first scale that passes every gate stays (``adapter_scale``), else the last verdict."""
    memory, tonight = session.memory, list(plan.adapter_ids)
    factors = adapter_scale.merged_factors(memory, tonight) if tonight else {}
    for scale in session.settings.sws.retry_scales if factors else []:
        tonight = [adapter_scale.store_scaled(memory, factors, scale, tonight, session.run_id)]
        result.adapter_id, result.adapter_scale, result.failed_gate = tonight[0], scale, None
        by_id = {r.fact_id: r for r in memory.ledger.list_facts()}
        rows = [by_id[r.fact_id] for r in verdict.gated]  # a repair re-solved some edits: their new ids
        memory.compose(skip={r.edit_id for r in rows if r.edit_id is not None})
        verdict = conclude(session, rows, forgets, gate_facts(session, rows), start, result)
        if not verdict.why:
            break
    return verdict


@timed("judge")
def judge(session: SleepSession, gated, stages: dict[int, int], raw: tuple[list[bool], list[bool]],
          start: tuple[float, float | None], result: SwsResult) -> tuple[dict[int, float], str | None]:
    """The pass's own gates, on the weights it would leave: raw recall lost (validate's tolerance: more
    and the pass is undone here, else validate would undo the whole sleep), the benchmark, locality, leak.
    Returns (the edits' new scales, the reason to reject or None); records the figures on ``result``."""
    (raw_before, raw_after), (bench_before, locality_before) = raw, start
    result.locality = result.leak = None  # a retry's figures are its own
    result.lost_ids = [r.fact_id for r in lost(gated, raw_before, raw_after)]
    if sum(raw_before) - sum(raw_after) > session.settings.validate_.max_recall_drop * len(gated) + 1e-9:
        result.failed_gate = "raw"
        return {}, (f"raw recall fell {sum(raw_before)} -> {sum(raw_after)} of {len(gated)} facts "
                    f"(lost: fact ids {result.lost_ids})")
    scales = edit_scales(session, gated, stages)
    session.memory.compose(scales=scales)  # the weights this pass would leave: adapters, dissolved edits
    # The benchmark compares the weights before with those this pass leaves, not the adapters alone (a state
    # no night keeps: with 12 facts' edits all off it cost 3 of 16 questions the kept weights answer).
    bench_after, _ = probes.benchmark(session.memory.backend, session.settings.probes)
    result.benchmark_after = round(bench_after, 4)
    if bench_before - bench_after > session.settings.sws.benchmark_max_drop + 1e-9:
        result.failed_gate = "benchmark"
        return scales, f"benchmark fell {bench_before:.3f} -> {bench_after:.3f}"
    local, why = locality_stage.pass_failure(session, locality_before, result.leak_start)
    result.locality, result.leak = local.get("locality"), local.get("leak")
    result.failed_gate = "locality" if why else None
    return scales, why


@timed("train")
def train_pass(session: SleepSession, examples: list, switched_off: set[int], facts, result: SwsResult,
               epochs: int | None = None) -> int:
    """Train one LoRA on ``examples`` with ``switched_off`` edits out of the weights and store it
    (each round of a night adds one adapter; the fold merges them). Returns the adapter's id."""
    memory = session.memory
    memory.compose(skip=switched_off)
    try:
        outcome = consolidate.train(session, examples, consolidate.recipe(session.settings, epochs=epochs), "sws", facts,
                                    settled.anchored(session, facts))
    finally:
        memory.compose()
    adapter_id = memory.store_adapter("sws", session.run_id, outcome.factors)
    result.adapter_id = result.adapter_id or adapter_id
    crash_point("sws:after-adapter")
    result.rounds += 1
    result.examples, result.train_steps = result.examples + len(examples), result.train_steps + outcome.steps
    if result.train_loss_first is None:
        result.train_loss_first = round(outcome.first_loss, 4)
    result.train_loss_last = round(outcome.last_loss, 4)
    return adapter_id


@dataclass
class Pass:
    """What every round of one SWS pass shares."""

    trained: list  # tonight's facts (stage 0 rows)
    gated: list  # every fact the gate checks (stage < 3 rows)
    edit_ids: set[int]  # the gated facts' edits: at scale 0 while gating
    switched_off: set[int]  # edits out of the weights while training (``sws.train_without_memit``)
    settled: list = field(default_factory=list)  # stage-3 facts checked after each round (``sws.settled_checked``)
    shared: list = field(default_factory=list)  # identity pairs and the night's replay, the same every round
    adapter_ids: list[int] = field(default_factory=list)  # the adapters this pass stored (one per round)


def extra_rounds(session: SleepSession, plan: Pass, gate: tuple[list[dict], dict[int, int]], result: SwsResult):
    """Rounds 2.. of ``sws.rounds``: a further LoRA on tonight's facts that failed their gate, up to
    ``sws.max_relearned`` consolidated ones (stages 1-2, stage 2 first) that failed it too (a night's adapter
    overwrote them) and the checked stage-3 facts that lost their chat answer (``settled``), the passed rehearsed
    (their chat question), then every gated and checked fact gated again. The extra cost follows what did not
    hold; a night where all pass pays nothing. Returns the last (table, stages)."""
    (table, stages), cfg = gate, session.settings.sws
    held = settled.holding(session, plan.settled)  # stage-3 facts after round 1: do they still answer?
    result.settled_checked, result.settled_lost = len(held), sum(not ok for ok in held.values())
    relearned: dict = {}  # fact id -> row: consolidated facts given a further round tonight
    again: dict = {}  # the same for the checked stage-3 facts (``sws.settled_checked`` caps them, not max_relearned)
    for _ in range(cfg.rounds - 1):
        lost_old = [r for r in plan.gated if r.stage >= 1 and stages[r.fact_id] == r.stage and r.fact_id not in relearned]
        room = max(cfg.max_relearned - len(relearned), 0)  # 0: off (not "no cap", as max_trained's 0)
        by_support = sorted(curriculum.waiting_longest(lost_old, 0), key=lambda r: -r.stage)  # stage 2 (edit at 0.1) first
        relearned.update((r.fact_id, r) for r in by_support[:room])
        again.update((r.fact_id, r) for r in plan.settled if not held[r.fact_id])
        holds = [(r, held[r.fact_id] if r.stage >= 3 else stages[r.fact_id] > r.stage)
                 for r in [*plan.trained, *relearned.values(), *again.values()]]
        failing = [r for r, ok in holds if not ok]
        if not failing:
            break
        backend = session.memory.backend
        examples = curriculum.fact_examples(backend, [r.fact for r in failing], cfg.train_raw)
        examples += [curriculum.rehearsal_example(backend, r.fact) for r, ok in holds if ok] + plan.shared
        plan.adapter_ids.append(train_pass(session, examples, plan.switched_off, [r.fact for r in failing], result,
                                           cfg.round_epochs or None))
        session.memory.compose(skip=plan.edit_ids)
        table, stages = gate_facts(session, plan.gated)
        held = settled.holding(session, plan.settled)
    result.relearned, result.settled_relearned = len(relearned), len(again)
    result.settled_held = sum(1 for fid in again if held[fid])
    return table, stages


def reject(session: SleepSession, snap, result: SwsResult, reason: str, started: float) -> SwsResult:
    session.memory.compose()
    journal.undo(session, snap)
    result.accepted, result.advanced, result.reason, result.adapter_id = False, 0, reason, None
    return finish(session, result, started)


@timed("raw")
def raw_hits(session: SleepSession, rows) -> list[bool]:
    return [ok for ok, _ in probes.raw_recall(session.memory.backend, [r.fact for r in rows], session.settings.probes)]


def edit_scales(session: SleepSession, rows, stages: dict[int, int]) -> dict[int, float]:
    """Each gated edit's scale from its facts' stages. An edit may hold several facts (one subject
    key): it dissolves only as far as its least consolidated fact allows."""
    lowest: dict[int, int] = {}
    for row in session.ledger.list_facts():
        if row.edit_id is not None:
            lowest[row.edit_id] = min(lowest.get(row.edit_id, 3), stages.get(row.fact_id, row.stage))
    gated = {r.edit_id for r in rows}
    return {edit_id: session.settings.sws.schedule[stage] for edit_id, stage in lowest.items() if edit_id in gated}


@timed("repair")
def repair(session: SleepSession, rows, stages: dict[int, int], raw_before: list[bool], raw_after: list[bool]):
    """Facts the new adapter disturbed (raw recall lost, edit scale kept): edits re-solved on the weights with
    the adapter as maintain's refresh does (other edits held by a null-space constraint), then settled again;
    up to ``sws.repair_rounds`` times on what is still lost (a re-solve can move a neighbour: night 2 of the
    500-fact run kept 6 of 100 lost after one round). Returns (gated rows as stored now, stages, raw hits, repaired)."""
    memory, repaired = session.memory, set()
    for _ in range(session.settings.sws.repair_rounds):
        disturbed = [r for r in lost(rows, raw_before, raw_after) if r.edit_id is not None]
        if not disturbed:
            break
        memory.refresh_many(disturbed)
        repaired |= {r.fact_id for r in disturbed}
        by_id = {r.fact_id: r for r in memory.ledger.list_facts()}
        rows = [by_id[r.fact_id] for r in rows]  # refreshed facts have new edit ids (and stage 0)
        stages, raw_after = settle(session, rows, stages)
    return rows, stages, raw_after, len(repaired)


def lost(rows, raw_before: list[bool], raw_after: list[bool]) -> list:
    """The rows whose raw recall held before the pass and not after it."""
    return [r for r, before, after in zip(rows, raw_before, raw_after) if before and not after]


@timed("settle")
def settle(session: SleepSession, rows, stages: dict[int, int]) -> tuple[dict[int, int], list[bool]]:
    """Compose with the proposed scales (adapters + partly dissolved MEMIT) and re-check every gated fact's raw
    recall; one that advanced but fails goes back a stage (its edit regains scale). -> (stages, final raw hits)"""
    memory = session.memory
    for _ in range(2):  # reverting only raises scales, so one more check confirms it
        try:
            memory.compose(scales=edit_scales(session, rows, stages))
            hits = raw_hits(session, rows)
        finally:
            memory.compose()
        reverted = [r.fact_id for r, ok in zip(rows, hits) if not ok and stages[r.fact_id] != r.stage]
        if not reverted:
            break
        for row in rows:
            if row.fact_id in reverted:
                stages[row.fact_id] = row.stage
    return stages, hits
