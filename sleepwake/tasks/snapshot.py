"""snapshot: the pre-sleep copy of ledger and factor files (the journal of the sleep)."""

from sleepwake.sleep import gate
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("snapshot")
def snapshot(run_id: str) -> dict:
    run = lookup(run_id)
    return publish(gate.take_snapshot(run), run.kind)
