"""Settings of the sleep stages (sections ``curate``, ``audit``, ``maintain``, ``validate``, ``sleep``).

They are ordinary sections of :class:`sleepwake.config.Settings` (``--set validate.max_ppl_increase=0.0``)
and, because they are pydantic models with a description per field, they are also the forms the
Prefect UI shows for the nap and full-sleep flows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CurateConfig(BaseModel):
    """Which facts the sleep looks after, and the cap on facts held by MEMIT."""

    model_config = ConfigDict(extra="forbid")

    max_active_facts: int = Field(
        200, gt=0,
        description="Cap on facts held by MEMIT edits (the cap counts facts, not edits, so a refresh "
        "never pushes it). Above it only consolidated edits (scale 0) are pruned; a healthy fact is "
        "never dropped, the report warns instead.",
    )
    prune_consolidated: bool = Field(
        True, description="Delete factor files of edits whose scale reached 0 (the fact stays in the "
        "ledger and in every audit; LoRA carries it).")


class AuditConfig(BaseModel):
    """How the audit decides which facts are degraded."""

    model_config = ConfigDict(extra="forbid")

    recent_facts: int = Field(
        20, ge=0, description="A nap audits this many most recently stored facts, plus every fact "
        "that was degraded at the last audit.")


class MaintainConfig(BaseModel):
    """Refresh of degraded MEMIT edits under null-space constraints (paper 5, Algorithm 1)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the maintain stage in a full sleep.")
    max_refresh: int = Field(
        10, ge=0, description="At most this many degraded facts are refreshed per sleep cycle.")
    protect_refreshed: bool = Field(
        True, description="Facts refreshed earlier in the same cycle join the protected key set "
        "(the paper protected only facts healthy before the cycle, which caused its cycle-1 dip).")


class ValidateConfig(BaseModel):
    """Gates that decide whether a sleep's weight changes are kept or rolled back."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Gate the sleep; off keeps every change unchecked.")
    max_ppl_increase: float = Field(
        5.0e-2, ge=0,
        description="Largest relative perplexity rise over the pre-sleep value (0.05 = +5 %); above "
        "it the whole sleep is rolled back byte-exactly.",
    )
    max_recall_drop: float = Field(
        0.0, ge=0, le=1,
        description="Largest drop of raw recall (share of all audited facts) from before to after "
        "the sleep; above it the sleep is rolled back.",
    )


class SleepConfig(BaseModel):
    """Snapshots and automatic sleep."""

    model_config = ConfigDict(extra="forbid")

    keep_snapshots: int = Field(
        1, ge=0, description="Closed pre-sleep snapshots kept on disk after a sleep (0 deletes them).")
    lock_wait_s: float = Field(
        0.0, ge=0, description="How long a flow waits for the home's write lock (another inject, "
        "forget or sleep) before failing as busy; scheduled deployments set it.")
    auto: bool = Field(
        False, description="After an inject, run a nap or a full sleep by itself when drowsiness "
        "crosses health.nap_threshold or health.sleep_threshold.")
