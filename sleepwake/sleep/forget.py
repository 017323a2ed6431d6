"""Forget: remove the knowledge, not only the edit, and prove it with probes.

A fact lives in up to two places: its MEMIT edit (removed exactly) and, once a sleep consolidated
it, the LoRA adapters, which hold many facts at once and cannot subtract one. So ``forget``:

1. records what the BASE model answers to the fact's raw prompt, paraphrases and chat question
   (what the model would say had it never learned the fact; the object's first token is banned,
   so no target contains it);
2. composes the weights without the fact's edit and probes them; if the object still comes out
   (the adapters know it), trains a small "unlearning" LoRA towards those base answers, with a
   retain set of other facts and the KL anchor, until no probe produces the object
   (``forget.max_passes``);
3. commits everything in ONE ledger transaction: the fact row and its edit gone, the same
   subject's other facts re-solved into their own edit, the unlearning adapter, a ``forgotten``
   row (the object's hash, never the object) and the object redacted from the conversation log.
   Closed snapshots (old copies of the ledger) are purged first. A crash anywhere leaves the fact
   fully present (before the commit) or fully forgotten (after it).

Later sleeps train the same base answers (``sleep.forgetting``) until the adapters alone no longer
produce the object, and ``validate`` rolls back any sleep after which a forgotten object comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import torch

from sleepwake.errors import NotFoundError
from sleepwake.faults import crash_point
from sleepwake.facts import Fact
from sleepwake.memory.wake import companions
from sleepwake.models import probes
from sleepwake.models.recipes import TrainExample
from sleepwake.models.lowrank import refactor
from sleepwake.sleep.consolidate import anchor_set, recipe
from sleepwake.sleep.curriculum import chat_example, fact_examples
from sleepwake.storage import forgotten
from sleepwake.storage.snapshots import SnapshotStore

log = logging.getLogger(__name__)


def forget(memory, subject: str, relation: str) -> dict:
    """Forget one fact (see the module doc); returns what was done and the probes that verify it."""
    row = memory.ledger.find_fact(subject, relation)
    if row is None:
        raise NotFoundError(f"no stored fact for subject {subject!r} and relation {relation!r}")
    edits = [row.edit_id] if row.edit_id is not None else []
    rest = companions(memory.ledger.list_facts(), edits, {row.fact.key})
    groups = memory.solve_groups(rest, edits)[0] if rest else []
    memory.compose(skip=edits)
    found = forget_probes(memory, row.fact)
    factors, passes, targets = None, 0, None
    if any(p["produced"] for p in found) and getattr(memory.backend, "can_train_lora", False):
        targets = base_targets(memory, row.fact)  # the adapters know it: unlearn towards these
        memory.compose(skip=edits)
        factors, passes, found = unlearn(memory, row, targets, skip=edits)
    SnapshotStore(memory.home.root).prune_closed(0)  # old ledger copies still hold the fact
    new_edits, written = memory.write_edit_files(groups, kind="wake")
    adapter = memory.write_adapter_file("forget", None, factors) if factors else None
    crash_point("forget:before-ledger")
    try:
        forget_id, redacted = forgotten.commit_forget(memory.ledger, row, edits, new_edits, adapter, targets)
    except BaseException:
        for relpath in written + ([adapter.file] if adapter else []):
            memory.deltas.delete(relpath)
        memory.compose()
        raise
    crash_point("forget:after-ledger")
    memory.apply_ledger_change(removed=edits)
    memory.reload()
    after = forget_probes(memory, row.fact)
    return {**row.fact.model_dump(), "fact_id": row.fact_id, "forget_id": forget_id, "removed_edit": row.edit_id,
            "reinjected": [f.model_dump() for f in rest], "unlearning_passes": passes,
            "unlearning_adapter": adapter.adapter_id if adapter else None, "redacted_turns": redacted,
            "verified": not any(p["produced"] for p in after),
            "probes": [{"kind": p["kind"], "prompt": p["prompt"], "answer": p["answer"], "object_produced": p["produced"]}
                       for p in after]}


def base_targets(memory, fact: Fact) -> dict:
    """The base model's greedy answers (object's first token banned) to the fact's raw prompt,
    paraphrases and chat question: {"raw": [[prompt, continuation]...], "chat": [[q, reply]]}."""
    backend, cfg = memory.backend, memory.settings.probes
    prompts = [fact.prompt(), *probes.paraphrase_prompts(fact)]
    question = probes.chat_question(fact)
    banned = [backend.encode(" " + fact.object, special=False)[:1], backend.encode(fact.object, special=False)[:1]]
    memory.compose(skip=[e.edit_id for e in memory.edits], with_adapters=False)
    try:
        budget = probes.answer_budget(backend, fact.object, cfg.extra_new_tokens)
        raw = backend.generate_texts([backend.encode(p) for p in prompts], budget, banned=banned)
        chat = backend.generate_texts([backend.chat_ids(question)], cfg.chat_max_new_tokens, banned=banned)
    finally:
        memory.compose()
    return {"raw": [[p, t] for p, t in zip(prompts, raw)], "chat": [[question, chat[0].strip()]]}


def forget_probes(memory, fact: Fact) -> list[dict]:
    """Raw prompt, paraphrases and chat question on the weights as composed now."""
    prompts = [fact.prompt(), *probes.paraphrase_prompts(fact)]
    budget = probes.answer_budget(memory.backend, fact.object, memory.settings.probes.extra_new_tokens)
    raw = memory.backend.generate(prompts, budget)
    chat = memory.backend.chat([probes.chat_question(fact)], memory.settings.probes.chat_max_new_tokens)
    kinds = ["raw"] + ["paraphrase"] * (len(prompts) - 1) + ["chat"]
    asked = prompts + [probes.chat_question(fact)]
    return [{"kind": k, "prompt": q, "answer": a.strip(), "produced": probes.answer_matches(a, fact.object)}
            for k, q, a in zip(kinds, asked, raw + chat)]


def unlearn(memory, row, targets: dict, skip: list[int]) -> tuple[dict, int, list[dict]]:
    """Unlearning LoRA passes until no probe produces the object; returns (the passes folded into
    one adapter's factors, passes, the last probes)."""
    cfg = memory.settings.forget
    examples = forget_examples(memory.backend, targets, cfg.weight) + retain_examples(memory, row)
    lora = dataclasses.replace(recipe(memory.settings), max_steps=cfg.steps, epochs=1_000)
    anchored = anchor_set(memory)
    # The same null-space constraint as consolidation: the unlearning adapter may not move what the
    # model does on ordinary text (its drift was +2.5 % per three forgets without it).
    protect = memory.lora_protection(lora) if memory.settings.lora.protect_energy > 0 else None
    passes: list[dict] = []
    found: list[dict] = []
    for attempt in range(cfg.max_passes):
        with memory.trial_adapter(merge(passes)):
            memory.compose(skip=skip)
            passes.append(memory.backend.train_lora(examples, lora, anchors=anchored, protect=protect).factors)
        with memory.trial_adapter(merge(passes)):
            memory.compose(skip=skip)
            found = forget_probes(memory, row.fact)
        log.info("forget %s | %s: unlearning pass %d, object still produced by %d probe(s)",
                 row.subject, row.relation, attempt + 1, sum(p["produced"] for p in found))
        if not any(p["produced"] for p in found):
            break
    folded = {name: refactor(parts)[:2] for name, parts in merge(passes).items()}
    return folded, len(passes), found


def retain_examples(memory, row) -> list[TrainExample]:
    """Chat and raw examples of other facts (the same subject's first), so unlearning one fact
    does not take its neighbours with it."""
    others = [r for r in memory.ledger.list_facts() if r.fact_id != row.fact_id]
    same = [r.fact for r in others if r.subject == row.subject]
    rest = [r.fact for r in others if r.subject != row.subject]
    picked = same + random.Random(memory.settings.seed).sample(rest, min(len(rest), memory.settings.forget.retain_facts))
    return fact_examples(memory.backend, picked, train_raw=True) if picked else []


def merge(passes: list[dict]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    merged: dict[str, list] = {}
    for factors in passes:
        for name, pair in factors.items():
            merged.setdefault(name, []).append(pair)
    return merged


def forget_examples(backend, targets: dict, weight: float) -> list[TrainExample]:
    """The base model's answers as training targets (see the module doc)."""
    examples = [TrainExample(backend.encode(prompt), backend.encode(text, special=False), weight)
                for prompt, text in targets.get("raw", []) if text.strip()]
    examples += [chat_example(backend, [{"role": "user", "content": q}], reply, weight)
                 for q, reply in targets.get("chat", []) if reply.strip()]
    return examples
