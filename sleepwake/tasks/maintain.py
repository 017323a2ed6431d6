"""maintain: refresh degraded edits in place under null-space constraints; self-snapshotting."""

from sleepwake.sleep import maintain as maintain_stage
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("maintain")
def maintain(run_id: str, healthy_ids: list[int], degraded_ids: list[int], missing_ids: list[int]) -> dict:
    run = lookup(run_id)
    return publish(maintain_stage.maintain(run, healthy_ids, degraded_ids, missing_ids), run.kind)
