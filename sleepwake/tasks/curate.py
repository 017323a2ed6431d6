"""curate: every fact stays auditable; list missing edits; prune only consolidated edits."""

from sleepwake.sleep import health
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("curate")
def curate(run_id: str) -> dict:
    run = lookup(run_id)
    return publish(health.curate(run), run.kind)
