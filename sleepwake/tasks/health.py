"""health_check: perplexity baseline, ledger/weights consistency, interrupted-run repair."""

from sleepwake.sleep import health
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("health_check")
def health_check(run_id: str) -> dict:
    run = lookup(run_id)
    return publish(health.health_check(run), run.kind)
