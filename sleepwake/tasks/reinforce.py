"""reinforce: the nap's optional LoRA pass on MEMIT-held facts (MEMIT untouched), gated."""

from sleepwake.sleep import reinforce as reinforce_stage
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("reinforce")
def reinforce(run_id: str) -> dict:
    run = lookup(run_id)
    return publish(reinforce_stage.reinforce(run), run.kind)
