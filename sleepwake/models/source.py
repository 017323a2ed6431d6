"""Where a model comes from: the bundled GGUF (converted once into a cached folder), a local
folder, or a hub id; the device it goes to; and transformers kept quiet on stderr. Shared by the
torch and MLX backends, which load the same folder."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from sleepwake.config import ModelConfig
from sleepwake.errors import ModelLoadError
from sleepwake.models.bundled import ensure_bundled_folder, ensure_gguf_folder


def quiet_transformers() -> None:
    """Keep stderr for our own progress: transformers' advisory warnings are noise to users."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="transformers")
    # bitsandbytes (imported by peft when installed) warns on import that an optional CPU kernel
    # package is missing; its 4-bit CPU path works without it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def resolve_source(cfg: ModelConfig, cache_dir: Path | None) -> tuple[str, str | None]:
    """(path or hub id, gguf file) for ``cfg.source``; the bundled GGUF and any ``.gguf`` file
    path become a cached folder."""
    if cfg.source == "bundled":
        return str(ensure_bundled_folder(cache_dir)), None
    path = Path(os.path.expanduser(cfg.source))
    looks_local = path.is_absolute() or cfg.source.startswith((".", "~")) or path.exists()
    if looks_local and path.suffix.lower() == ".gguf":
        return str(ensure_gguf_folder(path, cache_dir)), None
    if looks_local and not path.is_dir():
        raise ModelLoadError(f"model folder not found: {cfg.source}")
    return (str(path) if looks_local else cfg.source), cfg.gguf_file


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device={name} but CUDA is not available on this machine")
    return name
