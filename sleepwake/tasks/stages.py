"""The sleep stages as Prefect tasks: thin wrappers that find the session by run id, call the stage
function (looked up at call time in ``sleep.pipeline.STAGES``), publish its artifacts and return
its typed result, which the flow hands on as the next tasks' inputs."""

from __future__ import annotations

from sleepwake.sleep.pipeline import STAGES
from sleepwake.sleep.reinforce import ReinforceResult
from sleepwake.sleep.report import Report
from sleepwake.sleep.results import (
    AuditResult, CurateResult, FoldResult, HealthResult, MaintainResult, RemResult, RollbackResult,
    SelectionResult, SnapshotResult, StageResult, SwsResult, ValidateResult,
)
from sleepwake.sleep.session import current
from sleepwake.tasks.common import ProgressArtifact, publish, stage_logs, stage_task


def run_stage(name: str, run_id: str, *args):
    session = current(run_id)
    session.on_progress = ProgressArtifact(session.kind)
    try:
        with stage_logs():
            result = STAGES[name](session, *args)
    finally:
        session.on_progress = None
    publish(result, session.kind)
    return result


@stage_task("health_check")
def health_check(run_id: str) -> HealthResult:
    return run_stage("health_check", run_id)


@stage_task("snapshot")
def snapshot(run_id: str) -> SnapshotResult:
    return run_stage("snapshot", run_id)


@stage_task("curate")
def curate(run_id: str) -> CurateResult:
    return run_stage("curate", run_id)


@stage_task("select")
def select(run_id: str, curated: CurateResult) -> SelectionResult:
    return run_stage("select", run_id, curated)


@stage_task("audit")
def audit(run_id: str, fact_ids: list[int] | None = None) -> AuditResult:
    return run_stage("audit", run_id, fact_ids)


@stage_task("maintain")
def maintain(run_id: str, audited: AuditResult, missing_ids: list[int]) -> MaintainResult:
    return run_stage("maintain", run_id, audited, missing_ids)


@stage_task("sws")
def sws(run_id: str) -> SwsResult:
    return run_stage("sws", run_id)


@stage_task("rem")
def rem(run_id: str) -> RemResult:
    return run_stage("rem", run_id)


@stage_task("fold")
def fold(run_id: str) -> FoldResult:
    return run_stage("fold", run_id)


@stage_task("validate")
def validate(run_id: str, audited: AuditResult, health: HealthResult,
             maintained: MaintainResult | None = None) -> ValidateResult:
    return run_stage("validate", run_id, audited, health, maintained)


@stage_task("rollback")
def rollback(run_id: str, pre_sleep: SnapshotResult) -> RollbackResult:
    return run_stage("rollback", run_id, pre_sleep)


@stage_task("reinforce")
def reinforce(run_id: str) -> ReinforceResult:
    return run_stage("reinforce", run_id)


@stage_task("report")
def report(run_id: str, outcome: str, *results: StageResult | None) -> Report:
    return run_stage("report", run_id, outcome, *results)
