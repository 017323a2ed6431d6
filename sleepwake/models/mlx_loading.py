"""Loading for the MLX backend: where the weights come from, device, dtype, identity.

The same folder the torch backend reads (``models.source.resolve_source``), loaded by mlx-lm; the
fingerprint is the torch backend's whenever the weights are the ones torch would load, so
covariance caches and homes are shared by both runtimes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sleepwake.models import mlx_blas  # noqa: F401  (first: MLX must find the fast BLAS)

import mlx.core as mx
import numpy as np
import torch
from mlx.utils import tree_flatten

from sleepwake.config import ModelConfig
from sleepwake.errors import ModelLoadError
from sleepwake.models.bundled import default_cache_dir
from sleepwake.models.mlx_internals import to_torch

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
TORCH_NAMES = {mx.float32: "torch.float32", mx.bfloat16: "torch.bfloat16", mx.float16: "torch.float16"}
_CONFIG_NOISE = ("transformers_version", "dtype", "torch_dtype", "_name_or_path", "_model_name_or_path")


def resolve_folder(cfg: ModelConfig, cache_dir: Path | None) -> Path:
    """A local model folder for ``cfg.source`` (the bundled cache, a folder, or a hub download)."""
    from sleepwake.models.source import resolve_source

    source, _ = resolve_source(cfg, cache_dir or default_cache_dir())
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    return Path(snapshot_download(cfg.source, allow_patterns=patterns))


def rope_overrides(folder: Path) -> dict:
    """transformers 5 writes RoPE settings as ``rope_parameters``; mlx-lm reads ``rope_theta`` and
    ``rope_scaling`` (without this the bundled model would load with theta 10,000, not 100,000)."""
    config = json.loads((folder / "config.json").read_text())
    params = config.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" in config:
        return {}
    scaling = None if params.get("rope_type", "default") == "default" else dict(params)
    return {"rope_theta": params.get("rope_theta", 10000.0), "rope_scaling": scaling}


def strided_sample(array: mx.array) -> bytes:
    """The torch backend's per-tensor sample: 4096 evenly strided values, as float32 bytes."""
    flat = array.reshape(-1)
    step = max(1, flat.size // 4096)
    return np.array(to_torch(flat[::step][:4096]).float()).tobytes()


def torch_fingerprint(folder: Path, params: dict, trust_remote_code: bool) -> str | None:
    """``TorchBackend._fingerprint`` computed from MLX's arrays: the config transformers would
    load, then the state dict in its order (taken from a weightless model on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture transformers cannot build: MLX's own fingerprint
        return None
    kept = {k: v for k, v in meta.config.to_dict().items()
            if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode())
    tied = getattr(config, "tie_word_embeddings", False)
    for name in meta.state_dict():
        array = params.get("model.embed_tokens.weight" if tied and name == "lm_head.weight" else name)
        if array is None or not mx.issubdtype(array.dtype, mx.floating):
            return None  # quantised or renamed tensors: not the weights torch would load
        digest.update(name.encode())
        digest.update(strided_sample(array))
    return digest.hexdigest()[:32]


def select_device(name: str) -> None:
    if name == "cpu":
        mx.set_default_device(mx.cpu)
    elif mx.is_available(mx.gpu):  # 'auto', 'mps', 'cuda': MLX's one GPU (Metal or its CUDA build)
        mx.set_default_device(mx.gpu)
    elif name != "auto":
        raise ModelLoadError(f"model.device={name} but MLX has no GPU on this machine (use cpu or auto)")


def check_model_config(cfg: ModelConfig) -> None:
    for setting, value, why in (
        ("model.quantization", cfg.quantization != "none", "load an MLX-quantised folder (e.g. mlx-community/...-4bit)"),
        ("model.device_map", cfg.device_map is not None, "MLX runs on one device"),
        ("model.gguf_file", cfg.gguf_file is not None, "point model.source at a safetensors folder"),
    ):
        if value:
            raise ModelLoadError(f"{setting} is a torch setting; with backend=mlx {why}")


def fingerprint(net, config: dict, folder: Path | None, trust_remote_code: bool) -> str:
    """The torch backend's fingerprint where it can be reproduced (same weights, so the same
    seeded samples and covariances to 2e-7); else (a quantised MLX folder) one of MLX's own."""
    params = dict(tree_flatten(net.parameters()))
    same = torch_fingerprint(folder, params, trust_remote_code) if folder is not None else None
    if same is not None:
        return same
    kept = {k: v for k, v in config.items() if k not in _CONFIG_NOISE}
    digest = hashlib.sha256(b"mlx:" + json.dumps(kept, sort_keys=True, default=str).encode())
    for name, array in sorted(params.items()):
        digest.update(name.encode())
        digest.update(strided_sample(array))
    return digest.hexdigest()[:32]
