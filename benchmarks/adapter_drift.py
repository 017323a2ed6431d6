"""The consolidation adapter's own drift, against what it teaches: one SWS-like LoRA pass.

One LoRA pass from the base model on ``--facts`` held-out pool facts (their chat, subject and raw
examples plus the identity set, the anchors and the protection of a real SWS pass), then, with the
trained adapter alone composed: perplexity drift on the reference text, raw and chat recall over
the facts, chat recall on held-out phrasings, and the mean gain in P(".") over the reference's
positions (the adapter ending prose early was most of a long memory's drift, ``docs/results.md``).
MEMIT is not involved: this isolates what a night's consolidation costs the rest of the model.

Each ``--compare`` is one configuration (a label and ``key=value`` overrides of the preset),
trained and measured in this run so the rows compare on the same machine and facts:

    .venv/bin/python benchmarks/adapter_drift.py --facts 24 \\
        --compare default --compare "anchors96 lora.anchor_count=96"

One JSON line per configuration. About seven minutes a configuration at 24 facts on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=24, help="held-out pool facts taught (default 24)")
    parser.add_argument("--seed", type=int, default=12345, help="fact pool seed (default 12345)")
    parser.add_argument("--compare", action="append", default=None,
                        help='"label key=value ...": one configuration; repeat to compare (default: the preset)')
    args = parser.parse_args()
    for spec in args.compare or ["default"]:
        label, *overrides = spec.split()
        print(json.dumps({"config": label, "overrides": overrides, **measure_pass(args.facts, args.seed, overrides)}),
              flush=True)


def measure_pass(count: int, seed: int, overrides: list[str]) -> dict:
    from sleepwake.config import load_settings
    from sleepwake.experiments.lab import measure
    from sleepwake.factpool import generate_pool
    from sleepwake.memory import Memory
    from sleepwake.sleep import consolidate, curriculum
    from sleepwake.storage.home import Home

    with tempfile.TemporaryDirectory(prefix="sleepwake-drift-") as tmp:
        memory = Memory.open(Home.open(tmp), load_settings(None, overrides))
        facts = [entry.fact for entry in generate_pool(count, seed=seed)]
        base = memory.perplexity(base=True)
        before = mean_full_stop(memory)
        examples = (curriculum.fact_examples(memory.backend, facts, train_raw=True)
                    + curriculum.identity_examples(memory.backend, memory.settings.sws.identity_weight))
        recipe = consolidate.recipe(memory.settings)
        started = time.perf_counter()
        out = memory.backend.train_lora(examples, recipe, anchors=consolidate.anchor_set(memory, facts),
                                        protect=memory.lora_protection(recipe))
        seconds = time.perf_counter() - started
        with memory.trial_adapter({name: [uv] for name, uv in out.factors.items()}):
            memory.compose()
            row = measure(memory, facts, base)
            row["full_stop_gain_pct"] = round(100 * (mean_full_stop(memory) - before), 3)
        return {**row, "steps": out.steps, "last_loss": round(out.last_loss, 4), "train_s": round(seconds, 1)}


@torch.no_grad()
def mean_full_stop(memory, tokens: int = 512) -> float:
    """Mean P(".") over the first ``tokens`` positions of the perplexity reference text."""
    from sleepwake.models import probes

    tokenizer = memory.backend.tokenizer
    full_stop = tokenizer.encode(".", add_special_tokens=False)[0]
    ids = tokenizer("\n\n".join(probes.reference_texts()), return_tensors="pt").input_ids[0, :tokens]
    logits = memory.backend.model(ids[None].to(memory.backend.input_device)).logits.float()
    return logits.softmax(-1)[0, :, full_stop].mean().item()


if __name__ == "__main__":
    main()
