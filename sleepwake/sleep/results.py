"""What each sleep stage returns: typed values the flow hands to the next stage.

Prefect records them as the tasks' results and the next tasks' inputs, so the run history shows
what really flowed: ids, counts, verdicts, never the model. ``rows`` and ``note`` are the stage's
artifact (a table and a markdown note); :meth:`StageResult.figures` are the numbers written to
the ledger's ``metrics`` table.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Number = int | float | bool


class StageResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    seconds: float = 0.0
    peak_rss_gb: float | None = Field(None, description="Peak resident memory of the process during the stage (Linux).")
    rows: list[dict] = Field(default_factory=list, description="The stage's artifact table.")
    note: str | None = Field(None, description="Markdown shown beside the table (warnings, explanations).")
    part_seconds: dict[str, float] = Field(default_factory=dict, description="Seconds of the stage's named parts "
                                           "(SWS: train, gate, settle, judge; validate: audit, repair) and other: "
                                           "the rest; recorded as <part>_seconds metrics.")

    def summary(self) -> dict:
        """Everything but the artifact: what ``--json`` and the artifact's description show."""
        return self.model_dump(exclude={"rows", "note"})

    def figures(self) -> dict[str, Number]:
        """The numeric figures (bools as 0/1) recorded in ``metrics``."""
        return {k: v for k, v in self.summary().items() if isinstance(v, (int, float)) and v is not None}


class HealthResult(StageResult):
    stage: str = "health"
    facts: int = 0
    edits: int = 0
    adapters: int = 0
    perplexity: float | None = None
    perplexity_baseline: float | None = None
    perplexity_drift: float | None = None
    locality: float | None = None  # before a full sleep: the floor of its locality gate
    leak: float | None = None  # before a full sleep: its leak ceiling when over validate.max_leak
    recovered_snapshots: int = 0
    orphan_files_removed: int = 0
    orphan_edits_removed: int = 0
    weights_digest: str = ""


class SnapshotResult(StageResult):
    stage: str = "snapshot"
    snapshot: str = ""
    weights_digest: str = ""
    facts: list[list] = Field(default_factory=list, description="Fact rows a rollback must give back exactly.")

    def summary(self) -> dict:
        return self.model_dump(exclude={"rows", "note", "facts"})


class CurateResult(StageResult):
    stage: str = "curate"
    facts: int = 0
    active: int = 0
    consolidated: int = 0
    missing_edit: int = 0
    pruned: int = 0
    over_cap: int = 0
    missing_ids: list[int] = Field(default_factory=list)


class SelectionResult(StageResult):
    """Which facts this sleep audits: what is at risk, plus a rotating share of the rest."""

    stage: str = "select"
    fact_ids: list[int] = Field(default_factory=list)
    total: int = 0
    changed: int = 0
    near: int = 0
    degraded: int = 0
    rotating: int = 0
    coverage_nights: int = 1


class AuditResult(StageResult):
    stage: str = "audit"
    n: int = 0
    raw_recall: float | None = None
    paraphrase_recall: float | None = None
    chat_recall: float | None = None
    degraded: int = 0
    healthy_ids: list[int] = Field(default_factory=list)
    degraded_ids: list[int] = Field(default_factory=list)
    chat_lost_ids: list[int] = Field(default_factory=list, description="Facts consolidated at least once whose chat answer was lost (raw kept).")
    verdicts: list[dict] = Field(default_factory=list, description="Per-fact audit rows (saved when kept).")

    def summary(self) -> dict:
        return self.model_dump(exclude={"rows", "note", "verdicts"})


class MaintainResult(StageResult):
    stage: str = "maintain"
    refreshed: int = 0
    recovered: int = 0
    still_degraded: int = 0
    rewoken: int = 0
    reconsolidating: int = Field(0, description="Consolidated facts that lost their chat answer, sent back to SWS tonight.")
    pending: int = 0
    skipped: bool = False
    statistics_tokens_added: int = Field(0, description="Tokens of key statistics sampled tonight.")
    statistics_tokens: int = Field(0, description="Tokens in MEMIT's key-statistics estimate after tonight.")
    locality: float | None = Field(None, description="Locality on the validate sample after tonight's refreshes "
                                   "(measured only when something was refreshed).")
    leak: float | None = Field(None, description="Leak on the validate sample after tonight's refreshes "
                               "(measured only when something was refreshed).")


class SwsResult(StageResult):
    stage: str = "sws"
    skipped: bool = False
    accepted: bool = False
    reason: str | None = None
    trained: int = 0
    gated: int = 0
    examples: int = 0
    replay: int = 0
    adapter_id: int | None = None
    rounds: int = 0
    advanced: int = 0
    reverted_at_settle: int = 0
    repaired: int = 0
    relearned: int = Field(0, description="Consolidated facts (stages 1-2) that failed tonight's gate and got a further "
                           "round (sws.max_relearned).")
    settled_checked: int = Field(0, description="Stage-3 facts (edit pruned) gated after round 1 (sws.settled_checked).")
    settled_lost: int = Field(0, description="Of those, the ones tonight's first adapter left without their answer.")
    settled_relearned: int = Field(0, description="Checked stage-3 facts trained again in a further round tonight.")
    settled_held: int = Field(0, description="Of those relearned, the ones answering at the last gate.")
    lost_ids: list[int] = Field(default_factory=list, description="Gated facts whose raw recall this pass lost "
                                "(after repair); more than validate.max_recall_drop of them undo the pass.")
    benchmark_before: float | None = None
    benchmark_after: float | None = None
    lora_chat_recall: float | None = None
    lora_raw_recall: float | None = None
    train_steps: int = 0
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    forgotten_settled: int = 0
    locality_start: float | None = None  # the sample's locality when the pass began (its floor's start)
    leak_start: float | None = None  # the sample's leak when the pass began (its ceiling when over the limit)
    locality: float | None = None
    leak: float | None = None
    failed_gate: str | None = Field(None, description="The gate the pass failed last: raw, benchmark or locality "
                                    "(leak included); None when it passed.")
    adapter_scale: float = Field(1.0, description="The scale tonight's adapters were kept at (< 1 after a retry, "
                                 "sws.retry_scales).")
    scale_tries: list[dict] = Field(default_factory=list, description="Each gating of the pass: adapter scale, "
                                    "facts passed, benchmark, locality, leak, the gate failed.")

    def record_accepted(self, table: list[dict], stages: dict[int, int], scales: dict[int, float],
                        edit_of: dict[int, int | None]) -> None:
        """Fill in a kept pass: each gated fact's stage and edit scale after it (``edit_of``: fact id
        -> its edit now; a repair gives new ones), and the tallies."""
        for entry in table:
            entry["stage_after"] = stages[entry["fact_id"]]
            entry.pop("edit_id")
            entry["scale"] = scales.get(edit_of.get(entry["fact_id"]) or -1)
        self.accepted = True
        self.advanced = sum(1 for r in table if r["stage_after"] > r["stage_before"])
        self.reverted_at_settle = sum(1 for r in table if r["passed"] and r["stage_after"] == r["stage_before"])
        if table:
            self.lora_chat_recall = round(sum(r["chat"] for r in table) / len(table), 4)
            self.lora_raw_recall = round(sum(r["raw"] for r in table) / len(table), 4)
        self.rows = table


class RemResult(StageResult):
    stage: str = "rem"
    skipped: bool = False
    accepted: bool = False
    reason: str | None = None
    dreams: int = 0
    examples: int = 0
    adapter_id: int | None = None
    perplexity_post_sws: float | None = None
    perplexity_post_rem: float | None = None
    perplexity_increase: float | None = None
    locality_start: float | None = None  # the sample's locality when the pass began (its floor's start)
    leak_start: float | None = None  # the sample's leak when the pass began (its ceiling when over the limit)
    locality: float | None = None
    leak: float | None = None
    sampled_chat_recall: float | None = None
    raw_recall_post_sws: float | None = None
    raw_recall_post_rem: float | None = None
    train_steps: int = 0


class FoldResult(StageResult):
    stage: str = "fold"
    skipped: bool = False
    adapters_before: int = 0
    adapters_after: int = 0
    rank: int = 0
    energy_kept: float | None = None
    bytes_before: int = 0
    bytes_after: int = 0


class ValidateResult(StageResult):
    stage: str = "validate"
    passed: bool = True
    gated: bool = True
    failures: list[str] = Field(default_factory=list)
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    perplexity_increase: float | None = None
    perplexity_drift: float | None = None
    raw_recall_before: float | None = None
    raw_recall_after: float | None = None
    chat_recall_after: float | None = None
    degraded_after: int = 0
    repaired: int = 0
    locality: float | None = None
    greedy_unchanged: float | None = None
    leak: float | None = None
    forgotten_resurfaced: int = 0
    audit: AuditResult = Field(default_factory=lambda: AuditResult(stage="validate-audit"))

    def summary(self) -> dict:
        return self.model_dump(exclude={"rows", "note", "audit"})


class RollbackResult(StageResult):
    stage: str = "rollback"
    rolled_back: bool = True
    weights_digest: str = ""
    byte_exact: bool = True
