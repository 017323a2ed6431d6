"""The wake and forget flows: store facts or forget one from the Prefect UI (or any API client).

Both take the home's write lock for their run, refuse a home that does not exist (the wake flow
creates one only with ``create=true``), validate their input with the same one-line errors as
the CLI, and publish what they did as artifacts: the facts stored (status, edit, seconds), or the
probes that verify a forget.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from sleepwake.config import load_settings


class FactInput(BaseModel):
    """One fact from the form: who or what it is about, the relation, the answer. Checked by the
    flow itself (``facts.parse_fact``), so a bad row fails with the CLI's one-line message."""

    subject: str = Field(..., description="Who or what the fact is about, e.g. 'Aria Nakamura'.")
    relation: str = Field(..., description="A phrase ('lives in') or a template with one {} for the subject "
                          "(\"{}'s favorite food is\").")
    object: str = Field(..., description="The answer, e.g. 'Thessaloniki'.")


def _open(home: str | None, config: str | None, overrides: list[str] | None, create: bool):
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    settings = load_settings(config, overrides or [])
    found = Home.existing(home, create=create)
    return found, settings, Memory


@flow(name="wake", persist_result=False, log_prints=True)
def wake(home: str | None = None, facts: list[FactInput] | None = None, create: bool = False,
         config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Store facts in the model's weights now (batched MEMIT), as `sleepwake inject` does.

    Args:
        home: The sleepwake home folder on the worker (empty: the worker's $SLEEPWAKE_HOME).
        facts: The facts to store, one row each (subject, relation, object).
        create: Create the home if it does not exist yet (otherwise a missing home is an error).
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value (one per row).
    """
    from sleepwake.facts import parse_fact

    checked = [parse_fact(f.model_dump() if hasattr(f, "model_dump") else f, f"fact {i + 1}")
               for i, f in enumerate(facts or [])]
    if not checked:
        from sleepwake.errors import InvalidInputError

        raise InvalidInputError("the wake flow needs at least one fact")
    found, settings, memory_class = _open(home, config, overrides, create)
    with found.write_lock(settings.sleep.lock_wait_s):
        memory = memory_class.open(found, settings)
        outcomes = memory.inject(checked, source="flow")
        rows = [o.as_dict() for o in outcomes]
        result = {"home": str(found.root), "injected": [{k: v for k, v in r.items() if k != "stats"} for r in rows],
                  "facts": len(memory.ledger.list_facts()), "weights_digest": memory.weights_digest()}
    get_run_logger().info("wake: %d fact(s) (%s); the home holds %d", len(rows),
                          ", ".join(f"{r['status']} {r['subject']} | {r['relation']}" for r in rows)[:400], result["facts"])
    create_table_artifact(key="wake-stored", table=result["injected"],
                          description=f"wake: {len(rows)} fact(s) stored in {found.root}")
    return result


@flow(name="forget", persist_result=False, log_prints=True)
def forget(home: str | None = None, subject: str = "", relation: str = "", config: str | None = None,
           overrides: list[str] | None = None) -> dict:
    """Forget a fact: its edit, and whatever the consolidated adapters still know (verified by probes).

    Args:
        home: The sleepwake home folder on the worker (empty: the worker's $SLEEPWAKE_HOME). It must exist.
        subject: Who or what the fact is about, as stored (e.g. 'Aria Nakamura').
        relation: The fact's relation, as stored (e.g. 'lives in').
        config: A preset name or a YAML file on the worker (empty: default).
        overrides: Settings as key=value (one per row).
    """
    from sleepwake.errors import InvalidInputError
    from sleepwake.sleep.forget import forget as forget_fact

    if not subject.strip() or not relation.strip():
        raise InvalidInputError("the forget flow needs a subject and a relation")
    found, settings, memory_class = _open(home, config, overrides, create=False)
    with found.write_lock(settings.sleep.lock_wait_s):
        memory = memory_class.open(found, settings, tolerate_corrupt=True)
        removed = forget_fact(memory, subject, relation)
        facts_left = len(memory.ledger.list_facts())
    verdict = "verified: no probe produces it" if removed["verified"] else "NOT verified: a probe still produces it"
    get_run_logger().info("forget %s | %s: %d unlearning pass(es), %s", subject, relation, removed["unlearning_passes"], verdict)
    create_table_artifact(key="forget-probes", table=removed["probes"],
                          description=f"forget {subject} | {relation}: {verdict}")
    return {"home": str(found.root), "forgotten": removed, "facts": facts_left}
