"""REM: the model dreams short multi-fact conversations and a second LoRA pass trains on them
(paper 4, section 3.4), kept only if the gate of equation (3) passes, else undone to post-SWS.

The dreamer groups 2-4 facts (a subject's facts together first, then others), asks about each
in turn with varied wording, and lets the model itself write every assistant reply with the
facts in its system prompt, so the replies are the model's own language: training on them
pulls its distribution back toward itself (which is how REM repairs SWS's perplexity damage)
while weaving the facts together. A reply that does not state its fact's object is replaced by
the plain statement (a firewall against training on dreamed falsehoods).
"""

from __future__ import annotations

import random
import time

from sleepwake.faults import crash_point
from sleepwake.models import probes
from sleepwake.sleep import consolidate, curriculum, journal
from sleepwake.sleep import locality as locality_stage
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import RemResult
from sleepwake.sleep.session import SleepSession

ASKS = ("{}", "Tell me: {}", "Quick question. {}", "And {}", "One more thing: {}")


def plan_dreams(facts: list, n_dreams: int, sizes: tuple[int, int], seed: int) -> list[list]:
    """Groups of ``sizes[0]..sizes[1]`` facts; every fact appears at least once when possible."""
    rng = random.Random(seed)
    by_subject: dict[str, list] = {}
    for fact in facts:
        by_subject.setdefault(fact.subject, []).append(fact)
    order = [f for group in rng.sample(list(by_subject.values()), len(by_subject)) for f in group]
    low, high = min(sizes), max(sizes)
    dreams: list[list] = []
    while order and len(dreams) < n_dreams:
        size = rng.randint(low, high)
        dreams.append(order[:size])
        order = order[size:]
    while len(dreams) < n_dreams and len(facts) >= low:
        dreams.append(rng.sample(facts, min(len(facts), rng.randint(low, high))))
    return [d for d in dreams if len(d) >= min(low, len(facts))]


def dream(backend, facts: list, seed: int, max_new_tokens: int) -> list[dict]:
    """One conversation (chat messages) about ``facts``, replies written by the model."""
    rng = random.Random(seed)
    system = {"role": "system", "content": "You are a helpful assistant. Facts you know: "
              + " ".join(curriculum.statement(f) for f in facts)}
    messages: list[dict] = []
    for fact in facts:
        ask = rng.choice(ASKS).format(probes.chat_question(fact))
        messages.append({"role": "user", "content": ask})
        ids = backend.chat_messages_ids([system, *messages])
        reply = backend.generate_texts([ids], max_new_tokens)[0].strip()
        if not probes.answer_matches(reply, fact.object):
            reply = curriculum.statement(fact)
        messages.append({"role": "assistant", "content": reply})
    return messages


def dream_examples(backend, conversation: list[dict]) -> list:
    """Every assistant turn is a target, with the conversation before it (no system prompt: the
    facts must come from the weights) as context."""
    examples = []
    for index, message in enumerate(conversation):
        if message["role"] == "assistant":
            examples.append(curriculum.chat_example(backend, conversation[:index], message["content"]))
    return examples


def rem(session: SleepSession) -> RemResult:
    started = time.perf_counter()
    memory, cfg = session.memory, session.settings.rem
    with journal.stage(session, "rem") as snap:
        facts = dream_facts(session)
        sizes = (cfg.facts_per_dream[0], cfg.facts_per_dream[-1])
        why_not = consolidate.cannot_train(memory)
        if not cfg.enabled or why_not or len(facts) < 2:
            return finish(session, RemResult(skipped=True, accepted=cfg.enabled, reason=why_not), started)
        ppl_before = memory.perplexity()
        raw_before = consolidate.raw_share(session, facts)
        locality_before = locality_stage.start_locality(session)
        leak_before = locality_stage.start_leak(session)
        plans = plan_dreams(facts, min(cfg.dreams, max(1, len(facts) // 2)), sizes, session.settings.seed)
        conversations = [dream(memory.backend, group, session.settings.seed + i, session.settings.probes.chat_max_new_tokens)
                         for i, group in enumerate(plans)]
        examples = [ex for conv in conversations for ex in dream_examples(memory.backend, conv)]
        outcome = consolidate.train(session, examples, consolidate.recipe(session.settings, cfg.learning_rate, cfg.epochs,
                                                                          cfg.checkpointing), "rem")
        adapter_id = memory.store_adapter("rem", session.run_id, outcome.factors)
        crash_point("rem:after-adapter")
        ppl_after = memory.perplexity()
        recall = sampled_chat_recall(session, cfg.recall_sample)
        raw_after = consolidate.raw_share(session, facts)
        increase = ppl_after / ppl_before - 1.0
        # Paper 4's gate (eq. 3), plus: REM may not cost raw recall, locality or leak (the validate
        # gate would then roll back the whole sleep, SWS included).
        reasons = [why for ok, why in (
            (increase <= cfg.max_ppl_increase + 1e-9, f"perplexity rose {increase:+.2%}"),
            (recall is None or recall >= cfg.min_recall - 1e-9, f"sampled chat recall {recall}"),
            (raw_after >= raw_before - 1e-9, f"raw recall fell {raw_before} -> {raw_after}")) if not ok]
        local, why = locality_stage.pass_failure(session, locality_before, leak_before) if not reasons else ({}, None)
        reasons += [why] if why else []
        accepted = not reasons
        if not accepted:
            journal.undo(session, snap)
        result = RemResult(accepted=accepted, dreams=len(conversations), examples=len(examples),
                           adapter_id=adapter_id if accepted else None, perplexity_post_sws=round(ppl_before, 4),
                           perplexity_post_rem=round(ppl_after, 4), perplexity_increase=round(increase, 6),
                           locality_start=locality_before, leak_start=leak_before, locality=local.get("locality"),
                           leak=local.get("leak"),
                           sampled_chat_recall=recall, raw_recall_post_sws=raw_before, raw_recall_post_rem=raw_after,
                           train_steps=outcome.steps, reason="; ".join(reasons) or None)
        result.rows = [{"dream": i, "facts": len(plan), "conversation": " | ".join(m["content"][:80] for m in conv)}
                       for i, (plan, conv) in enumerate(zip(plans, conversations))]
        return finish(session, result, started)


def dream_facts(session: SleepSession) -> list:
    """What REM dreams about: every fact not yet consolidated, plus as many older facts, sampled
    (a night's dreams stay the same size however large the memory grows)."""
    rows = session.ledger.list_facts()
    fresh = [r.fact for r in rows if r.stage < 3]
    older = [r.fact for r in rows if r.stage >= 3]
    rng = random.Random(session.night_seed())  # other older facts each night
    return fresh + rng.sample(older, min(len(older), max(len(fresh), 2)))


def sampled_chat_recall(session: SleepSession, k: int) -> float | None:
    """Chat recall of up to ``k`` consolidated facts (stage >= 1), sampled with the run's seed."""
    rows = [r for r in session.ledger.list_facts() if r.stage >= 1]
    if not rows:
        return None
    sample = random.Random(session.settings.seed).sample(rows, min(k, len(rows)))
    replies = session.memory.backend.chat([probes.chat_question(r.fact) for r in sample], session.settings.probes.chat_max_new_tokens)
    return sum(probes.answer_matches(t, r.object) for t, r in zip(replies, sample)) / len(sample)
