"""Settings of the sleep stages (sections ``curate``, ``audit``, ``maintain``, ``validate``, ``sleep``, ``sws``,
``rem``, ``nap``; ``lora`` is in :mod:`sleepwake.settings.lora`).

Ordinary sections of :class:`sleepwake.config.Settings` (``--set validate.max_ppl_increase=0.0``); pydantic
models with a description per field, so also the forms the Prefect UI shows for the nap and full-sleep flows.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class CurateConfig(BaseModel):
    """Which facts the sleep looks after, and the cap on facts held by MEMIT."""

    model_config = ConfigDict(extra="forbid")

    max_active_facts: int = Field(
        200, gt=0, description="Cap on facts held by MEMIT edits (the cap counts facts, not edits, so a refresh "
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
    coverage_nights: int = Field(
        5, ge=1, description="A full sleep audits what is at risk (changed, near a change, degraded) "
        "plus the longest-unaudited ceil(rest / K) of the other facts: every fact is audited at least "
        "once every K nights, and a night's audit stays small as the memory grows.")
    near_facts: int = Field(
        3, ge=0, description="For each fact changed since the last sleep, also audit this many stored "
        "facts whose subject keys are closest to its own (where a new edit spills over).")


class MaintainConfig(BaseModel):
    """Refresh of degraded MEMIT edits under null-space constraints (paper 5, Algorithm 1)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the maintain stage in a full sleep.")
    max_refresh: int = Field(10, ge=0, description="At most this many degraded facts are refreshed per sleep cycle.")
    max_reconsolidate: int = Field(10, ge=0, description="At most this many facts consolidated once or more (stages 1-3) that "
        "answer raw but not in chat at the audit go back to stage 0 a sleep, for tonight's SWS; stage 3 first (edit "
        "pruned; SWS gates only sws.settled_checked of them a night, every stage-1/2 fact). 0: never.")
    protect_refreshed: bool = Field(
        True, description="Facts refreshed earlier in the same cycle join the protected key set "
        "(the paper protected only facts healthy before the cycle, which caused its cycle-1 dip).")


class ValidateConfig(BaseModel):
    """Gates that decide whether a sleep's weight changes are kept or rolled back."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Gate the sleep; off keeps every change unchecked.")
    max_ppl_increase: float = Field(
        1.0e-1, ge=0, description="Largest relative perplexity rise over the pre-sleep value (0.10 = +10 %, the "
        "papers' REM threshold); above it the whole sleep is rolled back byte-exactly.",
    )
    max_drift: float = Field(
        1.5e-1, ge=0,
        description="Largest relative perplexity rise over the BASE model (no edits, no adapters); "
        "bounds the drift that many sleeps could otherwise pile up one allowed step at a time. When wake's "
        "edits had already drifted further before the sleep, the ceiling is that drift: a sleep may add none.",
    )
    max_recall_drop: float = Field(
        2.0e-2, ge=0, le=1,
        description="Largest drop of raw recall (share of the audited facts) from before to after the sleep; "
        "above it the sleep is rolled back (SWS undoes its own pass at the same limit). The few facts "
        "within it are refreshed by the next night's maintain: a sleep is not thrown away for one fact.",
    )
    repair_lost: bool = Field(
        True, description="Before judging, re-solve (maintain's null-space refresh) the edits of audited facts "
        "this sleep cost their raw recall, and audit them again with the audit.near_facts audited facts nearest each (the others "
        "keep their verdicts): REM and the fold can disturb a fact after SWS's own repair (measured: a 6-night run "
        "lost its night 5, 16 -> 15 facts, to this).",
    )
    repair_degraded: int = Field(
        0, ge=0, description="With repair_lost, also re-solve up to this many audited facts that were degraded "
        "before the sleep and still are (those maintain did not refresh, or whose refresh tonight's training undid), "
        "oldest first: re-solved after the training, they start the next day with their answer. 0: off.",
    )
    min_locality: float = Field(
        9.0e-1, ge=0, le=1,
        description="Smallest teacher-forced locality on the unrelated probe sample: the share of the "
        "base model's answer tokens that are still its argmax. Below it the sleep is rolled back.",
    )
    locality_slack: float = Field(
        1.0e-2, ge=0, le=1,
        description="Locality a sleep (and each SWS or REM pass) may cost when it starts below "
        "min_locality + this: the floor is min(min_locality, locality before - slack). With none, once "
        "wake's edits had taken the 64-prompt sample under the limit a pass had to cost nothing: the "
        "500-fact run's SWS passes were undone for 3 of the sample's 610 answer tokens (night 4: 0.8475 < "
        "0.8525; night 3: 0.874 < 0.879, its leak too high as well), so no new fact consolidated and no "
        "edit dissolved. A night costs at most this much; the run reports locality per night.",
    )
    max_leak: float = Field(
        2.0e-2, ge=0, le=1,
        description="Largest share of unrelated probe answers that now contain a stored fact's object "
        "their base answer did not; above it the sleep is rolled back. When wake's edits (or maintain's "
        "refreshes) already leaked more, the ceiling is that leak: a sleep may add none.",
    )
    locality_sample: int = Field(
        64, ge=0, description="Unrelated probe prompts (a fixed, evenly spread sample of the 256) measured "
        "by every validate; 0 switches the locality and leak gates off.")


class SleepConfig(BaseModel):
    """Snapshots and automatic sleep."""

    model_config = ConfigDict(extra="forbid")

    keep_snapshots: int = Field(1, ge=0, description="Closed pre-sleep snapshots kept on disk after a sleep (0 deletes them).")
    lock_wait_s: float = Field(
        30.0, ge=0, description="How long a sleep, wake or forget flow waits for the home's write lock "
        "(another inject, forget, sleep, or a serving process storing a turn) before failing as busy; "
        "scheduled deployments wait longer.")
    auto: bool = Field(
        False, description="After an inject, run a nap or a full sleep by itself when drowsiness "
        "crosses health.nap_threshold or health.sleep_threshold.")


class SwsConfig(BaseModel):
    """SWS: per-fact LoRA consolidation into the chat pathway, staged MEMIT dissolution (paper 4, Alg. 1)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run SWS in a full sleep.")
    schedule: list[float] = Field(
        default=[1.0, 0.5, 0.1, 0.0],
        description="MEMIT scale of a fact's edit at stage 0, 1, 2, 3; a fact that passes its gate "
        "moves one stage on.")
    gate_raw: bool = Field(
        True, description="A fact advances only if, with every trained fact's MEMIT edit at scale 0, "
        "the LoRA answers BOTH its chat question and its raw prompt (off: chat only, as in paper 4; "
        "then dissolving MEMIT can cost raw recall).")
    train_raw: bool = Field(True, description="Also train raw-completion text (prompt -> object), so both pathways "
                            "learn (the papers' proposed fix for the alignment tax).")
    train_without_memit: bool = Field(
        True, description="Train with the MEMIT edits of every gated fact (stage < 3: tonight's, those left waiting "
        "by max_trained, those the adapters carry) switched off, so the LoRA learns what it must carry alone "
        "instead of what MEMIT already answers. Waiting facts' edits left in measured no better (docs/results.md).")
    rounds: int = Field(
        2, ge=1, description="LoRA rounds per SWS pass: round 1 trains every unconsolidated fact; each further "
        "round (only while some fail their gate) trains those that failed, rehearses those that passed, and "
        "gates again. Each round adds an adapter; the night's fold merges them. 2: chat recall after a night of "
        "50 facts 0.78 -> 0.98 on held-out facts (docs/results.md).")
    max_trained: int = Field(
        64, ge=0, description="Unconsolidated facts one pass trains at most, the longest-waiting first (the rest "
        "wait, their edits at full scale): a night's training and its adapter's reach stay bounded after a "
        "rolled-back night. 500-fact run: 50 trained kept locality 0.910; 118 (after night 2 was rolled back) "
        "took it to 0.874 under 0.879, leak 3.1 %. 0 = no cap.")
    max_relearned: int = Field(
        64, ge=0, description="Consolidated facts (stages 1-2) failing tonight's gate that the further rounds "
        "(rounds > 1) train again with tonight's failing facts, stage 2 (edit at 0.1) first: what later adapters "
        "overwrote is relearned the same night. 0 = off. 500-fact run, night 4: 32 (hit) chat 0.89; 64 (40) 0.91.")
    settled_checked: int = Field(64, ge=0, description="Stage-3 facts (edit pruned, only the adapters hold them) gated "
        "after round 1 each night, those whose last audit lost an answer the gate checks first (chat; raw too with "
        "gate_raw), then the longest unaudited; each "
        "one tonight's adapter left without its answer is trained again in the further rounds (rounds > 1) and stays "
        "at stage 3. 0 = off (stage-3 facts wait for the audit and maintain).")
    identity_weight: float = Field(5.0e-1, ge=0, description="Loss weight of the identity Q&A pairs (0 = leave them out).")
    replay_size: int = Field(16, ge=0, description="Replay items mixed into each SWS: consolidated facts and logged "
                             "conversation turns, sampled by priority.")
    replay_decay: float = Field(5.0e-1, gt=0, le=1, description="Replay priority decays by this factor per day of age.")
    repair_disturbed: bool = Field(
        True, description="When the new adapter costs a fact its raw recall (its edit unchanged), re-solve that "
        "fact's edit on the weights with the adapter inside the pass (maintain's refresh) instead of undoing the pass.")
    round_epochs: int = Field(3, ge=0, description="Epochs of each further round (its facts trained once already); "
                              "0 = lora.epochs. 500-fact run, night 4, with max_relearned 64: 213 steps, not 250.")
    repair_rounds: int = Field(2, ge=1, le=5, description="How many times a pass re-solves the facts still disturbed "
                               "after the previous repair (each settles the stages again; a re-solve moves neighbours).")
    benchmark_max_drop: float = Field(
        1.25e-1, ge=0, le=1, description="Benchmark gate: the share of the fixed question set "
        "answered correctly may fall by at most this much, else the whole SWS is rolled back.")
    retry_scales: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default=[8.5e-1, 7.0e-1], description="Before undoing a pass that failed the benchmark, locality or leak "
        "gate, tonight's adapters are tried at these scales in turn (every fact gated again there; the first "
        "scale passing every gate is kept; [] undoes at once). One 50-fact pass: at 0.85 locality +0.021, drift "
        "-18 %, 44 of 45 facts still passing; at 0.7 29; at 0.5 9 (docs/results.md, scaled retry).")


class RemConfig(BaseModel):
    """REM: the model dreams multi-fact conversations; a second LoRA pass trains on them, gated."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run REM after SWS in a full sleep.")
    dreams: int = Field(8, ge=1, description="Conversations to dream (fewer when there are few facts).")
    facts_per_dream: list[int] = Field(default=[2, 4], description="Min and max facts woven into one conversation.")
    learning_rate: float = Field(1.0e-3, gt=0, description="REM's LoRA learning rate (the rest as in 'lora').")
    epochs: int = Field(2, gt=0, description="Passes over the dreamed conversations.")
    checkpointing: bool = Field(True, description="Gradient checkpointing in REM (lora.checkpointing is SWS's): dreams "
                                "run to lora.max_tokens; without it a 50-fact night peaked at 2.02 GB in REM, 1.74 GB with it.")
    max_ppl_increase: float = Field(1.0e-1, ge=0, description="REM is kept only if perplexity rises at most this much "
                                    "over post-SWS (paper 4: 0.10).")
    min_recall: float = Field(5.0e-1, ge=0, le=1, description="...and at least this share of sampled consolidated "
                              "facts is recalled in chat (paper 4: 0.5).")
    recall_sample: int = Field(5, gt=0, description="Consolidated facts sampled for REM's recall gate (paper 4: 5).")


class NapConfig(BaseModel):
    """The nap: an audit, optionally a reinforcing LoRA pass (paper 4)."""

    model_config = ConfigDict(extra="forbid")

    reinforce: bool = Field(False, description="Train a LoRA on the MEMIT-held facts' chat Q&A (MEMIT untouched), kept "
                            "only if perplexity and raw recall pass the validate gates.")
