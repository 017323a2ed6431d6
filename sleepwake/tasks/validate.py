"""validate: perplexity and recall gates over every fact; the flow rolls back when one fails."""

from sleepwake.sleep import gate
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("validate")
def validate(run_id: str, before: dict, perplexity_before: float) -> dict:
    run = lookup(run_id)
    result, _ = gate.validate(run, before, perplexity_before)
    return publish(result, run.kind)
