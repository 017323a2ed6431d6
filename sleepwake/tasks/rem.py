"""rem: dreamed multi-fact conversations, a second LoRA pass, kept only if its gate passes."""

from sleepwake.sleep import rem as rem_stage
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("rem")
def rem(run_id: str) -> dict:
    run = lookup(run_id)
    return publish(rem_stage.rem(run), run.kind)
