"""rollback: byte-exact restore of ledger, factor files and weights to the pre-sleep snapshot."""

from sleepwake.sleep import gate
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("rollback")
def rollback(run_id: str, expected_facts: list | None = None) -> dict:
    run = lookup(run_id)
    facts = [tuple(row) for row in expected_facts] if expected_facts is not None else None
    return publish(gate.rollback(run, facts), run.kind)
