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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sleepwake.errors import ConfigError
from sleepwake.settings.chat import ChatConfig, ServeConfig
from sleepwake.settings.experiment import ExperimentConfig
from sleepwake.settings.forget import ForgetConfig
from sleepwake.settings.lora import LoraConfig
from sleepwake.settings.model import HealthConfig, MemitConfig, ModelConfig, ProbeConfig  # noqa: F401  (re-exported)
from sleepwake.settings.sleep import (
    AuditConfig,
    CurateConfig,
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
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The OpenAI-compatible chat API (sleepwake serve).")
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig, description=(
        "Experiment flows (sleepwake experiment NAME): sizes, grids, cycles."))

    @model_validator(mode="after")
    def _routing_needs_torch(self) -> "Settings":
        if self.lora.routing == "subject" and self.backend != "torch":
            raise ValueError(f"lora.routing={self.lora.routing!r} needs backend=torch (the MLX backend merges "
                             "adapters into its weights); set lora.routing=off or auto")
        return self

    def routes_adapters(self) -> bool:
        """Whether the consolidated adapter is routed by subject (``lora.routing``) on this backend."""
        return self.lora.routing == "subject" or (self.lora.routing == "auto" and self.backend == "torch")


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
    if raw.strip() in _literal_words(annotation):  # 'auto' of a list-or-'auto' field, even 'on'/'null'
        return raw.strip()
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
    """True for ``str``, ``str | None`` and string ``Literal`` fields (not a list-or-'auto' field)."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if any(typing.get_origin(arg) is list for arg in args):
            return False
        return any(_accepts_str(arg) for arg in args)
    return False


def _literal_words(annotation: Any) -> set[str]:
    """The string values a (union with a) ``Literal`` allows."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {arg for arg in typing.get_args(annotation) if isinstance(arg, str)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_literal_words(arg) for arg in typing.get_args(annotation)))
    return set()


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
