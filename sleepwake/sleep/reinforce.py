"""Nap in reinforce mode (paper 4): a LoRA pass on the MEMIT-held facts' chat Q&A, MEMIT untouched.

It strengthens the chat pathway between full sleeps without dissolving anything (the paper's
earlier design reverted MEMIT after such training and lost 40 % recall; scales stay as they are
here). It is kept only if perplexity and raw recall pass the same limits as the full sleep's
validate gates, else undone byte for byte from its stage snapshot.
"""

from __future__ import annotations

import time

from sleepwake.models import probes
from sleepwake.sleep import consolidate, curriculum
from sleepwake.sleep.maintain import close_after, stage_snapshot
from sleepwake.sleep.run import SleepRun, StageResult


def reinforce(run: SleepRun) -> StageResult:
    started = time.perf_counter()
    memory, gates = run.memory, run.settings.validate_
    snapshot = stage_snapshot(run, "reinforce")
    rows = [r for r in memory.ledger.list_facts() if r.stage < 3]
    if not run.settings.nap.reinforce or not rows or consolidate.cannot_train(memory):
        summary = {"skipped": True, "accepted": False, "reason": consolidate.cannot_train(memory)}
        return close_after(run, snapshot, run.finish(StageResult("reinforce", summary), started))
    facts = [r.fact for r in rows]
    ppl_before = memory.perplexity()
    recall_before = consolidate.raw_share(run, facts)
    examples = curriculum.fact_examples(memory.backend, facts, train_raw=False)
    examples += curriculum.identity_examples(memory.backend, run.settings.sws.identity_weight)
    outcome = consolidate.train(run, examples, consolidate.recipe(run.settings), "reinforce")
    memory.store_adapter("nap", run.run_id, outcome.factors)
    ppl_after = memory.perplexity()
    recall_after = consolidate.raw_share(run, facts)
    increase = ppl_after / ppl_before - 1.0
    accepted = increase <= gates.max_ppl_increase + 1e-9 and recall_after >= recall_before - gates.max_recall_drop - 1e-9
    if not accepted:
        consolidate.undo_pass(run, snapshot)
    chat = memory.backend.chat([probes.chat_question(f) for f in facts], run.settings.probes.chat_max_new_tokens)
    summary = {"skipped": False, "accepted": accepted, "facts": len(facts), "examples": len(examples),
               "perplexity_before": round(ppl_before, 4), "perplexity_after": round(ppl_after, 4),
               "raw_recall_before": recall_before, "raw_recall_after": recall_after,
               "chat_recall_now": round(sum(probes.answer_matches(t, f.object) for t, f in zip(chat, facts)) / len(facts), 4)}
    return close_after(run, snapshot, run.finish(StageResult("reinforce", summary), started))

