"""audit: raw, paraphrase and chat recall of each selected fact (all facts when None)."""

from sleepwake.sleep import audit as audit_stage
from sleepwake.sleep.run import lookup
from sleepwake.tasks.common import publish, stage_task


@stage_task("audit")
def audit(run_id: str, fact_ids: list[int] | None = None) -> dict:
    run = lookup(run_id)
    return publish(audit_stage.audit(run, fact_ids), run.kind)
