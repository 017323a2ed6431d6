"""Forgotten facts in sleep: keep them forgotten, and prove it after every sleep.

SWS trains the base model's answers of every forgotten fact whose unlearning is not yet settled
(``forgotten.stage < forget.sleep_passes``) beside the night's facts, and its gate advances that
stage when the adapters alone no longer produce the object (a resurfacing resets it). Validate
probes every forgotten fact (raw prompt, paraphrases, chat question) and fails the sleep when an
object comes back: a sleep can never resurrect what a person asked to forget. Updates ("I moved
to Lyon") leave a ``forgotten`` row for the old object, so the same checks cover them.
"""

from __future__ import annotations

from sleepwake.sleep.forget import forget_examples
from sleepwake.models import probes
from sleepwake.sleep.session import SleepSession
from sleepwake.storage import forgotten
from sleepwake.storage.forgotten import ForgottenRow


def unsettled(session: SleepSession) -> list[ForgottenRow]:
    """Forgotten facts whose base answers sleep still trains."""
    passes = session.settings.forget.sleep_passes
    return [row for row in forgotten.list_forgotten(session.ledger) if row.targets and row.stage < passes]


def training_examples(session: SleepSession, rows: list[ForgottenRow]) -> list:
    backend, weight = session.memory.backend, session.settings.forget.weight
    return [ex for row in rows for ex in forget_examples(backend, row.targets or {}, weight)]


def produced(session: SleepSession, rows: list[ForgottenRow]) -> list[bool]:
    """For each row: does any probe (raw, paraphrases, chat question) produce its object now?"""
    if not rows:
        return []
    backend, cfg = session.memory.backend, session.settings.probes
    prompts, owners = [], []
    for index, row in enumerate(rows):
        fact = row.probe_fact()
        for prompt in [fact.prompt(), *probes.paraphrase_prompts(fact)]:
            prompts.append(prompt)
            owners.append(index)
    budget = max(cfg.extra_new_tokens + 3 * row.object_words for row in rows)
    texts = backend.generate(prompts, budget)
    texts += backend.chat([probes.chat_question(row.probe_fact()) for row in rows], cfg.chat_max_new_tokens)
    owners += list(range(len(rows)))
    hits = [False] * len(rows)
    for owner, text in zip(owners, texts):
        hits[owner] = hits[owner] or forgotten.produces(text, rows[owner])
    return hits


def advance(session: SleepSession, rows: list[ForgottenRow]) -> dict[int, int]:
    """SWS's gate for forgotten facts (weights as composed: the adapters alone). Returns new stages."""
    return {row.forget_id: (0 if hit else row.stage + 1) for row, hit in zip(rows, produced(session, rows))}


def resurfaced(session: SleepSession) -> int:
    """How many forgotten objects any probe produces on the weights as composed now."""
    return sum(produced(session, forgotten.list_forgotten(session.ledger)))
