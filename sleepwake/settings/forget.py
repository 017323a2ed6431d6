"""Settings of forgetting (``sleepwake forget`` and the sleeps that settle it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ForgetConfig(BaseModel):
    """Forgetting: remove the knowledge, verified by probes (``sleepwake forget``)."""

    model_config = ConfigDict(extra="forbid")

    max_passes: int = Field(9, ge=1, description="Unlearning LoRA passes at most, until no probe (raw prompt, "
                            "paraphrases, chat question) produces the forgotten object.")
    steps: int = Field(8, gt=0, description="Optimisation steps per unlearning pass; the probes run after each "
                       "pass, so short passes stop the unlearning (and its drift) as soon as the object is gone.")
    weight: float = Field(2.0, gt=0, description="Loss weight of the base model's answers (the unlearning "
                          "targets) against the retain examples of other facts.")
    retain_facts: int = Field(12, ge=0, description="Other facts (besides the same subject's) trained beside "
                              "the unlearning targets so they keep their recall.")
    sleep_passes: int = Field(3, ge=0, description="Full sleeps that keep training a forgotten fact's base "
                              "answers (like a fact's consolidation stages) once the adapters alone no "
                              "longer produce the object; validate checks every forgotten fact after every sleep.")
