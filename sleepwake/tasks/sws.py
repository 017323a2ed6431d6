"""sws: per-fact LoRA consolidation, benchmark-gated, staged MEMIT dissolution; self-snapshotting."""

from sleepwake.sleep import sws as sws_stage
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("sws")
def sws(run_id: str) -> dict:
    run = lookup(run_id)
    return publish(sws_stage.sws(run), run.kind)
