"""Settings: defaults, presets, ``--set`` overrides, and one-line errors for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sleepwake.config import (
    PRESETS_DIR,
    MemitConfig,
    ModelConfig,
    ProbeConfig,
    Settings,
    list_presets,
    load_settings,
)
from sleepwake.errors import ConfigError, InvalidInputError

EXPECTED_PRESETS = {"default", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b-nf4", "mlx-3b-4bit"}


def _config_error(config: str | None = None, overrides: tuple[str, ...] = ()) -> str:
    """Load expecting a ConfigError; return its message after checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load_settings(config, overrides)
    message = str(info.value)
    assert message and "\n" not in message
    assert info.value.__cause__ is None  # no chained traceback to show
    return message


def test_defaults_are_valid_and_match_default_preset() -> None:
    assert load_settings() == Settings()
    assert load_settings("default") == Settings()
    assert Settings().memit.layers == "auto"  # resolved per model on open (tests/test_families.py)
    assert Settings().model.source == "bundled"


def test_every_field_of_every_section_has_a_description() -> None:
    """Walks the whole settings tree (every section the CLI help and the Prefect forms show)."""
    from pydantic import BaseModel

    seen, todo = set(), [Settings]
    while todo:
        model = todo.pop()
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and field.annotation not in seen:
                todo.append(field.annotation)
    assert len(seen) == 1 + len(Settings.model_fields) - 2 and {ModelConfig, MemitConfig, ProbeConfig} <= seen  # all but backend, seed


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_every_preset_loads(name: str) -> None:
    assert name in list_presets()
    settings = load_settings(name)
    assert settings == load_settings(str(PRESETS_DIR / f"{name}.yaml"))
    if name != "default":
        assert settings.memit.v_steps == 30
        assert settings.memit.lambda_reg == pytest.approx(1.0e-1)


def test_preset_details() -> None:
    assert load_settings("llama-3.1-70b-nf4").model.quantization == "nf4"
    assert load_settings("llama-3.1-8b").memit.layers == list(range(12, 20))
    assert load_settings("mlx-3b-4bit").backend == "mlx"
    assert load_settings("llama-3.2-3b").model.device == "auto"


def test_presets_have_no_float_strings() -> None:
    """PyYAML reads 5e-1 as a string; presets must write 5.0e-1."""
    for path in PRESETS_DIR.glob("*.yaml"):
        def walk(node: object) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, str):
                with pytest.raises(ValueError):
                    float(node)
        walk(yaml.safe_load(path.read_text()))


def test_overrides_nested_list_float_bool_null() -> None:
    settings = load_settings(None, [
        "memit.layers=[1, 2]",
        "memit.lambda_reg=1e-4",
        "memit.v_lr=2.5E-1",
        "probes.chat=false",
        "model.trust_remote_code=true",
        "model.gguf_file=null",
        "seed=7",
        "model.device=cuda:1",
    ])
    assert settings.memit.layers == [1, 2]
    assert settings.memit.lambda_reg == pytest.approx(1.0e-4)
    assert settings.memit.v_lr == pytest.approx(0.25)
    assert settings.probes.chat is False
    assert settings.model.trust_remote_code is True
    assert settings.seed == 7
    assert settings.model.device == "cuda:1"


def test_override_value_keeps_later_equals_and_string_fields_stay_strings(tmp_path: Path) -> None:
    odd = tmp_path / "a=b: c"
    settings = load_settings(None, [f"model.source={odd}", "model.gguf_file=1e3"])
    assert settings.model.source == str(odd)
    assert settings.model.gguf_file == "1e3"


def test_yaml_file_path_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("memit:\n  layers: [2, 3]\n")
    assert load_settings(str(path)).memit.layers == [2, 3]
    path.write_text("")
    assert load_settings(str(path)) == Settings()


def test_tiny_overrides_load(tiny_settings_overrides: list[str], tiny_model_dir: Path) -> None:
    settings = load_settings(None, tiny_settings_overrides)
    assert settings.model.source == str(tiny_model_dir)
    assert settings.memit.layers == [1, 2]
    assert settings.memit.v_clamp_norm == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("config", "overrides", "expected"),
    [
        ("nope", (), "unknown preset 'nope' (available: default,"),
        ("missing/file.yaml", (), "config file not found"),
        (None, ("memit.layers",), "must look like key.sub=value"),
        (None, ("memit..layers=1",), "empty key"),
        (None, ("memit.foo=1",), "unknown setting 'memit.foo' (valid keys here: layers,"),
        (None, ("modle.source=x",), "unknown setting 'modle' (valid keys here: backend, seed,"),
        (None, ("seed.x=1",), "'seed' is a value, not a section"),
        (None, ("memit.layers=[3,1]",), "memit.layers: layers must be ascending and unique"),
        (None, ("memit.layers=[]",), "memit.layers: at least one layer"),
        (None, ("memit.layers=[-1, 2]",), "memit.layers: layers must be >= 0"),
        (None, ("memit.down_proj=model.mlp",), "memit.down_proj: must contain exactly one '{}'"),
        (None, ("memit.covariance_tokens=abc",), "memit.covariance_tokens: Input should be a valid integer"),
        (None, ("memit.lambda_reg=-1.0",), "memit.lambda_reg: Input should be greater than or equal to 0"),
        (None, ("memit.covariance_shrinkage=2.0",), "memit.covariance_shrinkage:"),
        (None, ("model.dtype=int8",), "model.dtype: Input should be"),
        (None, ("model.device=gpu",), "model.device: 'gpu' is not one of"),
        (None, ("backend=jax",), "backend: Input should be 'torch' or 'mlx'"),
    ],
)
def test_errors_are_one_line(config: str | None, overrides: tuple[str, ...], expected: str) -> None:
    assert expected in _config_error(config, overrides)


def test_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("memit:\n  layers: [1, 2\nseed: 0\n")
    assert "invalid YAML at line" in _config_error(str(bad))
    bad.write_text("- 1\n- 2\n")
    assert "must be a mapping" in _config_error(str(bad))
    bad.write_text("memit:\n  layerz: [1]\nextra: 1\n")
    message = _config_error(str(bad))
    assert "unknown setting 'memit.layerz'" in message and "unknown setting 'extra'" in message
    bad.write_text("memit: 5\n")
    assert "memit: Input should be" in _config_error(str(bad))
    assert "config file not found" in _config_error(str(tmp_path))  # a folder is no file


def test_config_error_is_invalid_input() -> None:
    assert issubclass(ConfigError, InvalidInputError)


def test_tiny_model_loads_and_generates(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 4
    ids = tokenizer(" Paris")["input_ids"]
    assert tokenizer.decode(ids) == " Paris"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    batch = tokenizer("Aria Nakamura lives in", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


def test_the_configuration_page_is_generated_from_the_current_descriptions():
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "config_docs.py"))
    assert script["PAGE"].read_text(encoding="utf-8") == script["render"](), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/config_docs.py")


def test_the_measured_tables_in_results_are_generated_from_the_committed_results():
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "results_docs.py"))
    committed = sorted(script["RESULTS"].glob("*.json"))
    page = script["PAGE"].read_text(encoding="utf-8")
    assert all(f"<!-- results:{path.stem} -->" in page for path in committed), "a committed result has no table"
    assert page == script["render"](), "docs/results.md is stale: run .venv/bin/python scripts/results_docs.py"


def test_partial_longevity_plots_are_drawn_for_runs_of_two_nights_or_more(tmp_path):
    import json
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "results_docs.py"))
    night = {"raw": 1.0, "chat": 0.9, "drift": 0.02, "locality": 0.9, "leak": 0.0, "home_bytes": 3.0e7,
             "adapters": 1, "edits": 50, "stage_seconds": {"sws": 100.0, "rem": 20.0}}
    (tmp_path / "partial").mkdir()
    for name, count in (("longevity-two", 2), ("longevity-one", 1)):
        rows = [{**night, "night": n + 1} for n in range(count)]
        (tmp_path / "partial" / f"{name}.json").write_text(json.dumps({"tables": {"nights": rows}}))
    plots = tmp_path / "plots"
    plots.mkdir()
    written = script["draw_partial_plots"](tmp_path, plots)
    assert written == [plots / "longevity-two-nights.png"]
    assert written[0].read_bytes().startswith(b"\x89PNG")
    assert not (plots / "longevity-one-nights.png").exists()


def test_a_longevity_table_reads_each_nights_sws_seconds_and_its_parts_from_the_nested_figures():
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "results_docs.py"))
    rows = [{"night": 1, "stage_seconds": {"sws": 10.0, "rem": 3.0}},  # a night from before the parts were timed
            {"night": 2, "stage_seconds": {"sws": 12.0}, "part_seconds": {"sws": {"train": 9.5, "gate": 1.5}}}]
    text = script["table"]("longevity", {"tables": {"nights": rows}})
    assert text.startswith("| night | sws_seconds | sws_train_seconds | sws_gate_seconds |")
    assert "| 1 | 10 | - | - |" in text and "| 2 | 12 | 9.5 | 1.5 |" in text
