"""report: counts, recall before/after, perplexity change, convergence; closes the journal."""

from sleepwake.faults import crash_point
from sleepwake.sleep import gate
from sleepwake.sleep import report as report_stage
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("report")
def report(run_id: str, outcome: str) -> dict:
    run = lookup(run_id)
    result = report_stage.report(run, outcome)
    crash_point("report:before-close")
    gate.close_snapshot(run, outcome)
    return publish(result, run.kind)
