"""Settings of the experiment flows (``--set experiment.max_facts=20``; the Prefect UI form)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ExperimentConfig(BaseModel):
    """What each experiment runs. Defaults fit the bundled model on 2 CPU cores (see docs/results.md
    for the measured durations); the papers' full sizes are one ``--set`` away."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(1, ge=0, description=(
        "Synthetic fact pool seed. Seed 0 is the pool the defaults were tuned on: report other seeds."))
    unconstrained_wake: bool = Field(True, description=(
        "capacity/convergence: inject with memit.protect_related=false, i.e. no constraint "
        "from any stored fact (paper 5's unconstrained wake)."))
    recall_threshold: float = Field(9.0e-1, gt=0, le=1, description=(
        "capacity: the wake capacity is the largest fact count whose recall never fell below this."))
    max_facts: int = Field(20, ge=1, le=10000, description="capacity: facts injected one at a time.")
    degraded_to_sleep: int = Field(3, ge=1, description=(
        "convergence phase A: inject until at least this many facts are degraded."))
    phase_a_max_facts: int = Field(60, ge=1, description=(
        "convergence phase A: stop injecting here even if fewer facts degraded."))
    wave_facts: int | None = Field(None, ge=1, description=(
        "convergence phase B: new facts in the second wave (default: as many as phase A injected)."))
    max_cycles: int = Field(10, ge=1, description=(
        "convergence: sleeps per phase at most; a phase ends early after two sleeps with 0 degraded."))
    lambdas: list[float] = Field(default=[1.0e-1, 1.0e1, 1.0e2, 1.0e3, 1.0e4], description=(
        "lambda-sweep: values of memit.lambda_reg, one fresh home each. C here is the MEAN key second "
        "moment, so K C^-1 K^T is about d_ff per key and lambda starts to matter near that size."))
    sweep_facts: int = Field(10, ge=1, description="lambda-sweep: facts injected one at a time per lambda.")
    fact_counts: list[int] = Field(default=[5, 10, 15, 20], description=(
        "consolidation-sweep: fact counts, one fresh home each."))
    cycles: int = Field(3, ge=1, description="consolidation-sweep: full sleeps per fact count.")
    days: int = Field(10, ge=1, description="longevity: nights (each: a batch of new facts, then one full sleep).")
    facts_per_day: int = Field(50, ge=1, description="longevity: new facts injected before each night's sleep.")
    ablation_facts: int = Field(10, ge=1, description="ablation: facts injected before the one sleep compared.")
    locality_facts: int = Field(20, ge=1, description="locality: facts injected (one batch) before the sleeps compared.")
    locality_variants: dict[str, list[str]] = Field(
        default={
            "defaults": [],
            "previous defaults: no protection, anchor 1, lr 3e-3": [
                "lora.protect_energy=0.0", "lora.anchor_weight=1.0", "lora.learning_rate=3.0e-3"],
            "no null-space protection": ["lora.protect_energy=0.0"],
            "protection 0.99": ["lora.protect_energy=0.99"],
            "anchor weight 1": ["lora.anchor_weight=1.0"],
            "no anchor": ["lora.anchor_weight=0.0"],
        },
        description="locality: name -> settings overrides of each consolidation variant compared (each runs "
        "'cycles' full sleeps on a copy of the same home).")
    forget_facts: int = Field(20, ge=2, description="forgetting: facts injected (one batch) and slept on.")
    forget_count: int = Field(5, ge=1, description="forgetting: facts forgotten, and consolidated facts updated.")
    forget_sleeps: int = Field(2, ge=1, description="forgetting: full sleeps before the forgets, and again after them.")
    maintenance_sleep: list[str] = Field(default=["sws.enabled=false", "rem.enabled=false"], description=(
        "convergence: settings for its sleeps. The default is paper 5's sleep (audit and null-space "
        "maintenance, no consolidation); [] runs the whole full sleep."))
    longevity_sleep: list[str] = Field(default=[], description=(
        "longevity: settings for its sleeps; the default [] is the real full sleep (SWS, REM, fold)."))
    devices: list[str] = Field(default=[], description=(
        "lambda-sweep/consolidation-sweep: with two or more devices (e.g. [cuda:0, cuda:1]) the "
        "independent points fan out, one model per device, through Prefect's thread-pool task runner; "
        "empty = every point in this process on model.device."))

    @field_validator("lambdas")
    @classmethod
    def _check_lambdas(cls, value: list[float]) -> list[float]:
        if not value or any(x < 0 for x in value):
            raise ValueError("lambdas must be a non-empty list of values >= 0")
        return value

    @field_validator("fact_counts")
    @classmethod
    def _check_counts(cls, value: list[int]) -> list[int]:
        if not value or any(n < 1 for n in value):
            raise ValueError("fact_counts must be a non-empty list of counts >= 1")
        return value


# The fields each experiment reads: its Prefect form shows these only (a flow turns the form into
# ``experiment.*`` overrides, so anything not shown keeps the preset's value).
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "capacity": ("seed", "unconstrained_wake", "recall_threshold", "max_facts"),
    "convergence": ("seed", "unconstrained_wake", "degraded_to_sleep", "phase_a_max_facts", "wave_facts",
                    "max_cycles", "maintenance_sleep"),
    "lambda-sweep": ("seed", "lambdas", "sweep_facts", "devices"),
    "consolidation-sweep": ("seed", "fact_counts", "cycles", "devices"),
    "longevity": ("seed", "days", "facts_per_day", "longevity_sleep"),
    "ablation": ("seed", "ablation_facts"),
    "locality": ("seed", "locality_facts", "locality_variants", "cycles"),
    "forgetting": ("seed", "forget_facts", "forget_count", "forget_sleeps"),
}


def form(experiment: str) -> type[BaseModel]:
    """A model with only ``experiment``'s fields of :class:`ExperimentConfig` (same defaults,
    descriptions and checks): the form the UI shows for that experiment's flow."""
    from pydantic import create_model

    fields = {name: (ExperimentConfig.model_fields[name].annotation, ExperimentConfig.model_fields[name])
              for name in FORM_FIELDS[experiment]}
    title = "".join(part.capitalize() for part in experiment.split("-")) + "Settings"
    return create_model(title, __config__=ConfigDict(extra="forbid"),
                        __doc__=f"The {experiment} experiment's settings.", **fields)  # type: ignore[call-overload]


CapacitySettings = form("capacity")
ConvergenceSettings = form("convergence")
LambdaSweepSettings = form("lambda-sweep")
ConsolidationSweepSettings = form("consolidation-sweep")
LongevitySettings = form("longevity")
AblationSettings = form("ablation")
LocalitySettings = form("locality")
ForgettingSettings = form("forgetting")
