"""The consolidation adapter's own drift, against what it teaches: one SWS-like LoRA pass.

One LoRA pass from the base model on ``--facts`` held-out pool facts (their chat, subject and raw
examples plus the identity set, the anchors and the protection of a real SWS pass), then, with the
trained adapter alone composed: perplexity drift on the reference text, raw and chat recall over
the facts, chat recall on held-out phrasings, the mean gain in P(".") over the reference's
positions (the adapter ending prose early was most of a long memory's drift, ``docs/results.md``),
and where the reference's NLL rose: the next tokens with the largest summed rise (``--top-tokens``).
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
    parser.add_argument("--top-tokens", type=int, default=8,
                        help="next tokens of the reference whose summed NLL rose most, listed per row (default 8)")
    args = parser.parse_args()
    for spec in args.compare or ["default"]:
        label, *overrides = spec.split()
        print(json.dumps({"config": label, "overrides": overrides, **measure_pass(args.facts, args.seed, overrides, args.top_tokens)}),
              flush=True)


def measure_pass(count: int, seed: int, overrides: list[str], top_tokens: int = 8) -> dict:
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
        before_stop, before_nll = mean_full_stop(memory), reference_nll(memory)
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
            row["full_stop_gain_pct"] = round(100 * (mean_full_stop(memory) - before_stop), 3)
            row["rise"] = rise_by_token(memory, before_nll, reference_nll(memory), top_tokens)
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


@torch.no_grad()
def reference_nll(memory) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token NLL, next-token id) at every position of the perplexity reference's chunks,
    chunked as ``Memory.perplexity`` chunks it (flattened over chunks)."""
    backend, cfg = memory.backend, memory.settings.probes
    from sleepwake.models import probes
    from sleepwake.models.backend import text_chunks

    nll, targets = [], []
    for chunk in text_chunks(backend, probes.reference_texts(), cfg.perplexity_chunk_tokens, cfg.perplexity_max_chunks):
        x = torch.tensor([chunk], device=backend.input_device)
        logits = backend.model(x).logits[0, :-1].float()  # (t-1, vocab)
        nll.append(torch.nn.functional.cross_entropy(logits, x[0, 1:].to(logits.device), reduction="none").cpu())
        targets.append(x[0, 1:].cpu())
    return torch.cat(nll), torch.cat(targets)


def rise_by_token(memory, before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor],
                  top: int) -> dict:
    """Where the reference's NLL rose: the share of the total rise carried by the 5 % of positions
    that rose most, and the ``top`` next tokens by summed rise (token, positions, summed nats)."""
    rise = after[0] - before[0]  # (positions,) nats
    total = float(rise.sum())
    worst = rise.sort(descending=True).values[: max(1, len(rise) // 20)]
    per_token: dict[int, list[float]] = {}
    for token, value in zip(before[1].tolist(), rise.tolist()):
        per_token.setdefault(token, []).append(value)
    ranked = sorted(per_token.items(), key=lambda kv: -sum(kv[1]))[:top]
    decode = memory.backend.tokenizer.decode
    return {"total_nats": round(total, 2), "positions": len(rise),
            "top5pct_share": round(float(worst.sum()) / total, 3) if total > 0 else None,
            "tokens": [[decode([token]), len(values), round(sum(values), 2)] for token, values in ranked]}


if __name__ == "__main__":
    main()
