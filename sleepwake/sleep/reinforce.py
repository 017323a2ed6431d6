"""Nap in reinforce mode (paper 4): a LoRA pass on the MEMIT-held facts' chat Q&A, MEMIT untouched.

It strengthens the chat pathway between full sleeps without dissolving anything (the paper's
earlier design reverted MEMIT after such training and lost 40 % recall; scales stay as they are
here). It is kept only if perplexity and raw recall pass the same limits as the full sleep's
validate gates, else undone byte for byte from its journal snapshot.
"""

from __future__ import annotations

import time

from pydantic import Field

from sleepwake.models import probes
from sleepwake.sleep import consolidate, curriculum, journal
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import StageResult
from sleepwake.sleep.session import SleepSession


class ReinforceResult(StageResult):
    stage: str = "reinforce"
    skipped: bool = False
    accepted: bool = False
    reason: str | None = None
    facts: int = 0
    examples: int = 0
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    raw_recall_before: float | None = None
    raw_recall_after: float | None = None
    chat_recall_now: float | None = Field(None, description="Chat recall of the trained facts after the pass.")


def reinforce(session: SleepSession) -> ReinforceResult:
    started = time.perf_counter()
    memory, gates = session.memory, session.settings.validate_
    with journal.stage(session, "reinforce") as snap:
        rows = [r for r in memory.ledger.list_facts() if r.stage < 3]
        why_not = consolidate.cannot_train(memory)
        if not session.settings.nap.reinforce or not rows or why_not:
            return finish(session, ReinforceResult(skipped=True, reason=why_not), started)
        facts = [r.fact for r in rows]
        ppl_before = memory.perplexity()
        recall_before = consolidate.raw_share(session, facts)
        examples = curriculum.fact_examples(memory.backend, facts, train_raw=False)
        examples += curriculum.identity_examples(memory.backend, session.settings.sws.identity_weight)
        outcome = consolidate.train(session, examples, consolidate.recipe(session.settings), "reinforce", facts)
        memory.store_adapter("nap", session.run_id, outcome.factors)
        ppl_after = memory.perplexity()
        recall_after = consolidate.raw_share(session, facts)
        increase = ppl_after / ppl_before - 1.0
        accepted = (increase <= gates.max_ppl_increase + 1e-9
                    and recall_after >= recall_before - gates.max_recall_drop - 1e-9)
        if not accepted:
            journal.undo(session, snap)
        chat = memory.backend.chat([probes.chat_question(f) for f in facts], session.settings.probes.chat_max_new_tokens)
        result = ReinforceResult(
            accepted=accepted, facts=len(facts), examples=len(examples), perplexity_before=round(ppl_before, 4),
            perplexity_after=round(ppl_after, 4), raw_recall_before=recall_before, raw_recall_after=recall_after,
            chat_recall_now=round(sum(probes.answer_matches(t, f.object) for t, f in zip(chat, facts)) / len(facts), 4))
        return finish(session, result, started)
