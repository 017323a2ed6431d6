"""SWS: per-fact staged consolidation into the chat pathway (paper 4, Algorithm 1).

1. Snapshot (the stage snapshot: a rejected pass is undone byte for byte).
2. Train one LoRA on every active fact (stage < 3): chat Q&A, raw completions, identity, replay
   (``curriculum``), with those facts' MEMIT edits switched off (``sws.train_without_memit``).
3. Store it as an adapter (factor file + ledger row): the weights now include it.
4. Switch every trained fact's edit to scale 0 and run the benchmark gate (a fixed question
   set); a drop beyond ``sws.benchmark_max_drop`` rejects the whole pass (undo).
5. Per fact, through the LoRA alone: chat recall (and raw recall with ``sws.gate_raw``). A pass
   moves the fact one stage on and its edit to that stage's scale in ``sws.schedule``
   (1.0 -> 0.5 -> 0.1 -> 0.0); a fail keeps its stage and scale.
6. Settle: with the new scales composed, a fact that advanced but lost its raw recall goes back;
   if raw recall is still below its pre-SWS level (the LoRA disturbed a fact MEMIT holds), the
   pass is rejected (undo) rather than leaving the whole sleep to fail its validate gate.
   All stage and scale changes commit in one ledger transaction.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime

from sleepwake.faults import crash_point
from sleepwake.models import probes
from sleepwake.sleep import consolidate, curriculum
from sleepwake.sleep.maintain import close_after, stage_snapshot
from sleepwake.sleep.run import SleepRun, StageResult
from sleepwake.storage import adapters as adapter_rows, conversations


def sws(run: SleepRun) -> StageResult:
    started = time.perf_counter()
    memory, cfg = run.memory, run.settings.sws
    snapshot = stage_snapshot(run, "sws")
    rows = [r for r in memory.ledger.list_facts() if r.stage < 3]
    if not cfg.enabled or consolidate.cannot_train(memory) or not rows:
        summary = {"skipped": True, "trained": 0, "advanced": 0, "accepted": cfg.enabled,
                   "reason": consolidate.cannot_train(memory)}
        return close_after(run, snapshot, run.finish(StageResult("sws", summary), started))
    edit_ids = {r.edit_id for r in rows if r.edit_id is not None}
    bench_before, _ = probes.benchmark(memory.backend, run.settings.probes)
    raw_before = raw_hits(run, rows)
    examples = training_examples(run, rows)
    memory.compose(skip=edit_ids if cfg.train_without_memit else ())
    try:
        outcome = consolidate.train(run, examples, consolidate.recipe(run.settings), "sws")
    finally:
        memory.compose()
    adapter_id = memory.store_adapter("sws", run.run_id, outcome.factors)
    crash_point("sws:after-adapter")
    memory.compose(skip=edit_ids)  # isolate the LoRA: every trained fact's MEMIT at 0
    bench_after, _ = probes.benchmark(memory.backend, run.settings.probes)
    figures = {"trained": len(rows), "examples": len(examples), "adapter_id": adapter_id,
               "benchmark_before": round(bench_before, 4), "benchmark_after": round(bench_after, 4)}
    reason = None
    if bench_before - bench_after > cfg.benchmark_max_drop + 1e-9:
        reason = f"benchmark fell {bench_before:.3f} -> {bench_after:.3f}"
    else:
        table, stages = gate_facts(run, rows)
        stages, raw_after = settle(run, rows, stages)
        if sum(raw_after) < sum(raw_before):
            reason = f"raw recall fell {sum(raw_before)} -> {sum(raw_after)} of {len(rows)} facts"
    if reason is not None:
        memory.compose()
        consolidate.undo_pass(run, snapshot)
        summary = {**figures, "skipped": False, "accepted": False, "advanced": 0, "reason": reason}
        return close_after(run, snapshot, run.finish(StageResult("sws", summary), started))
    scales = edit_scales(run, rows, stages)
    adapter_rows.commit_consolidation(memory.ledger, stages, scales)
    crash_point("sws:after-stages")
    memory.reload()
    for entry in table:
        entry["stage_after"] = stages[entry["fact_id"]]
        entry["scale"] = scales.get(entry.pop("edit_id"))
    advanced = sum(1 for r in table if r["stage_after"] > r["stage_before"])
    summary = {**figures, "skipped": False, "accepted": True, "advanced": advanced,
               "reverted_at_settle": sum(1 for r in table if r["passed"] and r["stage_after"] == r["stage_before"]),
               "lora_chat_recall": round(sum(r["chat"] for r in table) / len(table), 4),
               "lora_raw_recall": round(sum(r["raw"] for r in table) / len(table), 4)}
    return close_after(run, snapshot, run.finish(StageResult("sws", summary, table), started))


def raw_hits(run: SleepRun, rows) -> list[bool]:
    return [ok for ok, _ in probes.raw_recall(run.memory.backend, [r.fact for r in rows], run.settings.probes)]


def training_examples(run: SleepRun, rows) -> list:
    """Active facts, identity pairs and the replay buffer, as token examples."""
    memory, cfg = run.memory, run.settings.sws
    backend = memory.backend
    examples = curriculum.fact_examples(backend, [r.fact for r in rows], cfg.train_raw)
    examples += curriculum.identity_examples(backend, cfg.identity_weight)
    consolidated = [(r.fact, r.updated_at) for r in memory.ledger.list_facts() if r.stage >= 3]
    turns = conversation_turns(memory.ledger)
    examples += curriculum.replay_examples(backend, consolidated, turns, cfg.replay_size, cfg.replay_decay, run.settings.seed)
    return examples


def conversation_turns(ledger, limit: int = 200) -> list[dict]:
    """The latest logged (user, assistant) exchanges of the wake conversation, for replay."""
    rows = conversations.recent_turns(ledger, limit * 2)
    turns = []
    for message, reply in zip(rows, rows[1:]):
        if (message["role"] == "user" and reply["role"] == "assistant"
                and message["session_id"] == reply["session_id"] and reply["content"].strip()):
            turns.append({"user": message["content"], "assistant": reply["content"], "ts": message["ts"] and datetime.fromisoformat(message["ts"])})
    return turns[-limit:]


def gate_facts(run: SleepRun, rows) -> tuple[list[dict], dict[int, int]]:
    """Per-fact recall through the LoRA alone (trained edits at 0) -> (table, proposed stages)."""
    cfg = run.settings.sws
    probe_cfg = run.settings.probes.model_copy(update={"paraphrases": False, "chat": True})
    results = probes.probe_facts(run.memory.backend, [r.fact for r in rows], probe_cfg)
    table, stages = [], {}
    for row, probe in zip(rows, results):
        passed = bool(probe.chat) and (probe.raw or not cfg.gate_raw)
        stages[row.fact_id] = min(row.stage + 1, 3) if passed else row.stage
        table.append({"fact_id": row.fact_id, "fact": f"{row.fact.prompt()} -> {row.object}", "chat": bool(probe.chat),
                      "raw": probe.raw, "passed": passed, "stage_before": row.stage, "edit_id": row.edit_id,
                      "answer": (probe.chat_text or "").strip()[:60]})
    return table, stages


def edit_scales(run: SleepRun, rows, stages: dict[int, int]) -> dict[int, float]:
    """Each trained edit's scale from its facts' stages. An edit may hold several facts (a refresh
    re-solves companions): it dissolves only as far as its least consolidated fact allows."""
    lowest: dict[int, int] = {}
    for row in run.memory.ledger.list_facts():
        if row.edit_id is not None:
            lowest[row.edit_id] = min(lowest.get(row.edit_id, 3), stages.get(row.fact_id, row.stage))
    trained = {r.edit_id for r in rows}
    return {edit_id: run.settings.sws.schedule[stage] for edit_id, stage in lowest.items() if edit_id in trained}


def settle(run: SleepRun, rows, stages: dict[int, int]) -> tuple[dict[int, int], list[bool]]:
    """Compose with the proposed scales (LoRA + partly dissolved MEMIT together) and re-check
    every trained fact's raw recall; a fact that advanced but fails there goes back to its old
    stage (its edit regains scale). Returns the settled stages and the final raw hits."""
    memory = run.memory
    for _ in range(2):  # reverting only raises scales, so one more check confirms it
        scales = edit_scales(run, rows, stages)
        saved = memory.edits
        memory.edits = [replace(e, scale=scales.get(e.edit_id, e.scale)) for e in saved]
        try:
            memory.compose()
            hits = raw_hits(run, rows)
        finally:
            memory.edits = saved
            memory.compose()
        reverted = [r.fact_id for r, ok in zip(rows, hits) if not ok and stages[r.fact_id] != r.stage]
        if not reverted:
            break
        for row in rows:
            if row.fact_id in reverted:
                stages[row.fact_id] = row.stage
    return stages, hits
