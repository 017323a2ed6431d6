"""GPU checks in one run, sized for about 10 minutes of accelerator time (no downloads: a GPU
machine here cannot reach the hub, so random weights of the right shape are the honest test).

1. The ``gpu`` tests (``pytest -m gpu tests/test_torch_scale.py``): two devices, device_map=auto,
   bf16, NF4.
2. CPU-vs-CUDA parity of one MEMIT edit on the tiny random Llama of the tests: the relative
   difference of the written ``down_proj`` deltas, and raw recall on both.
3. Seconds per edit on an 8B-shaped random Llama in bf16 (hidden 4096, MLP 14336, 32 layers,
   GQA 32/8; the tests' small tokenizer, so the vocabulary is small), MEMIT on the 8B preset's
   layers 12-19: the first inject (key statistics included) and a batch of 10 facts.

Prints one JSON document. On a machine without CUDA, ``--device cpu --shape tiny`` runs the same
code paths in a minute (what CI-less development can check).

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--shape 8b|tiny] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_tiny_llama, build_tokenizer  # noqa: E402  (the tests' in-process model)

from sleepwake.config import load_settings  # noqa: E402
from sleepwake.facts import Fact  # noqa: E402
from sleepwake.factpool import generate_pool  # noqa: E402
from sleepwake.memory import Memory  # noqa: E402
from sleepwake.storage.home import Home  # noqa: E402

TINY = ["memit.layers=[1,2]", "memit.covariance_tokens=2048", "memit.covariance_sample_length=32",
        "memit.context_count=2", "memit.context_length=5", "memit.v_clamp_norm=10.0",
        "probes.perplexity_max_chunks=2", "probes.perplexity_chunk_tokens=32"]
SHAPES = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, layers="[12,13,14,15,16,17,18,19]"),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, layers="[1,2]")}
FACT = Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")


def gpu_tests() -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_torch_scale.py", "-rs"],
                          cwd=ROOT, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-6:]
    return {"returncode": proc.returncode, "summary": tail, "seconds": round(time.perf_counter() - started, 1)}


def edited_delta(folder: Path, home: Path, device: str) -> tuple[dict, bool]:
    memory = Memory.open(Home.open(home),
                         load_settings(None, [f"model.source={folder}", f"model.device={device}", *TINY]))
    before = {i: memory.backend.down_proj(i).weight.detach().float().cpu().clone() for i in (1, 2)}
    memory.inject([FACT])
    after = {i: memory.backend.down_proj(i).weight.detach().float().cpu() for i in (1, 2)}
    return {i: after[i] - before[i] for i in before}, bool(memory.recall()[0]["raw"])


def parity(work: Path, device: str) -> dict:
    folder = build_tiny_llama(work / "tiny")
    cpu, cpu_recall = edited_delta(folder, work / "parity-reference", "cpu")
    dev, dev_recall = edited_delta(folder, work / "parity-device", device)
    rel = max(((cpu[i] - dev[i]).norm() / cpu[i].norm()).item() for i in cpu)
    return {"device": device, "max_relative_delta_difference": round(rel, 6), "raw_recall_cpu": cpu_recall,
            "raw_recall_device": dev_recall}


def shaped_model(work: Path, shape: str, dtype: torch.dtype, device: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = {k: v for k, v in SHAPES[shape].items() if k != "layers"}
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **spec)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # 8B parameters are initialised in bf16 on the device, not in fp32 on the host
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    folder = work / f"random-{shape}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def edit_speed(work: Path, shape: str, device: str) -> dict:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    folder = shaped_model(work, shape, dtype, device)
    built = time.perf_counter() - started
    overrides = [f"model.source={folder}", f"model.device={device}", f"model.dtype={str(dtype).split('.')[-1]}",
                 f"memit.layers={SHAPES[shape]['layers']}", "memit.covariance_sample_length=64"]
    memory = Memory.open(Home.open(work / f"home-{shape}"), load_settings(None, overrides))
    started = time.perf_counter()
    memory.inject([FACT])
    first = time.perf_counter() - started
    facts = [p.fact for p in generate_pool(10, seed=3)]
    started = time.perf_counter()
    memory.inject(facts)
    batch = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"shape": shape, "dtype": str(dtype), "build_seconds": round(built, 1),
            "first_inject_seconds_with_statistics": round(first, 1), "batch_10_seconds": round(batch, 1),
            "seconds_per_edit_in_batch": round(batch / len(facts), 2), "peak_gpu_gib": peak and round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available here (use --device cpu --shape tiny to dry-run)")
    work = Path(tempfile.mkdtemp(prefix="sleepwake-gpu-"))
    report: dict = {"torch": torch.__version__, "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    if not args.skip_tests:
        report["gpu_tests"] = gpu_tests()
    report["parity"] = parity(work, args.device)
    report["edit_speed"] = edit_speed(work, args.shape, args.device)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
