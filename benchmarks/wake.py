"""Wake benchmark: inject N synthetic facts one at a time and measure what the wake issue asks.

Prints, for the configured model (default: the bundled SmolLM2-135M on CPU):
- seconds per injected fact (median, min, max) and peak resident memory;
- the injection trajectory: raw recall of all facts so far after each injection;
- raw / paraphrase / chat recall from a FRESH process (``sleepwake recall --json``);
- perplexity drift (``sleepwake status --json``), specificity on neighbour prompts, and
  factor bytes per fact. Specificity three ways: the greedy unchanged share, the same share
  over the neighbours the base model answers with a top-1 margin of at least ``--margin`` nats
  (a 135M model has many near-ties, which flip under any edit), and CounterFact's
  neighbourhood score.

    .venv/bin/python benchmarks/wake.py --facts 10 --seed 1
    .venv/bin/python benchmarks/wake.py --facts 500 --seed 1 --batched   # specificity at scale
    .venv/bin/python benchmarks/wake.py --facts 10 --seed 0 --set memit.v_steps=20   # tuning pool

Seed 0 is the tuning pool; report numbers on another seed so settings are not fitted to the test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def run_cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "sleepwake.cli", *args, "--json", "-q"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def token_logprobs(backend, prompt: str, continuation: str):
    """Teacher-forced log-probability of each token of ``continuation`` after ``prompt``: (T,)."""
    import torch

    context = backend.encode(prompt)
    target = backend.encode(continuation, special=False)
    with torch.no_grad():
        logprobs = backend.next_token_logits([context + target])[0, len(context) - 1 : -1].log_softmax(-1)  # (T, vocab)
    return logprobs.gather(1, torch.tensor(target, device=logprobs.device)[:, None])[:, 0]


def mean_logprob(backend, prompt: str, continuation: str) -> float:
    """Mean per-token log-probability of ``continuation`` after ``prompt``."""
    return float(token_logprobs(backend, prompt, continuation).mean())


def neighbourhood_score(memory, prompts, owners, base_texts) -> float:
    """CounterFact's Neighborhood Score on the edited model: share of neighbour prompts where the
    neighbour's own first base word is more likely than the object injected for its relation
    (mean per-token log-probability, so lengths do not bias it). A probability-level view of
    bleed; it does NOT replace the greedy specificity (near-tie flips count there, not here)."""
    if getattr(memory.backend, "model", None) is None:  # MLX: no torch forward to score with
        return float("nan")
    kept = 0
    for prompt, obj, text in zip(prompts, owners, base_texts):
        words = text.split()
        if not words:
            kept += 1  # nothing to protect
            continue
        kept += mean_logprob(memory.backend, prompt, " " + words[0]) > mean_logprob(memory.backend, prompt, " " + obj)
    return kept / len(prompts)


def top1_margins(memory, prompts) -> list[float]:
    """Per prompt, the current model's log-probability gap (nats) between its first and second
    choice of the next token: how firmly the greedy answer is held (any backend)."""
    margins = []
    for prompt in prompts:
        top = memory.backend.next_token_logits([memory.backend.encode(prompt)])[0, -1].log_softmax(-1).topk(2).values
        margins.append(float(top[0] - top[1]))
    return margins


def specificity(memory, pool, neighbours: int, seed: int, margin: float = 0.5) -> dict:
    """Share of neighbour prompts (same relation, other subjects) whose greedy answer is unchanged.

    Returns ``specificity`` (answer level: the first two words of the greedy continuation),
    ``specificity_strict`` (the whole 4-token continuation), ``specificity_confident`` (answer
    level over the neighbours whose base top-1 margin is >= ``margin`` nats; ``confident_share``
    says how many those are), ``neighbour_leak`` (share of neighbour prompts whose answer newly
    contains one of the injected objects: bleed, not drift) and ``neighbourhood_score``
    (probability level, reported beside them).
    """
    from sleepwake.models.probes import answer_matches

    from sleepwake.factpool import neighbour_prompts
    from sleepwake.facts import normalize_answer
    from sleepwake.models.probes import neighbour_answers

    subjects = [p.subject for p in pool]
    pairs = [(q, p.object) for p in pool for q in neighbour_prompts(p, neighbours, seed, exclude=subjects)]
    prompts = [q for q, _ in pairs]
    if not prompts:  # --set probes.specificity_neighbours=0 skips the measurement
        return {}
    memory.compose(skip=[e.edit_id for e in memory.edits])
    base_texts = memory.backend.generate(prompts, 4)  # same greedy 4 tokens neighbour_answers reads
    firm = [m >= margin for m in top1_margins(memory, prompts)]
    before = [normalize_answer(text) for text in base_texts]
    memory.compose()
    score = neighbourhood_score(memory, prompts, [o for _, o in pairs], base_texts)
    after = neighbour_answers(memory.backend, prompts)
    head = lambda text: text.split()[:2]  # noqa: E731
    same = [head(a) == head(b) for a, b in zip(before, after)]
    strict = sum(a == b for a, b in zip(before, after)) / len(prompts)
    objects = [p.object for p in pool]
    # a: before, b: after - leak is an object that the AFTER answer newly contains
    leaked = sum(any(answer_matches(b, o) and not answer_matches(a, o) for o in objects) for a, b in zip(before, after))
    confident = [s for s, f in zip(same, firm) if f]
    return {"neighbours": len(prompts), "specificity": round(sum(same) / len(prompts), 4),
            "specificity_strict": round(strict, 4),
            "specificity_confident": round(sum(confident) / len(confident), 4) if confident else float("nan"),
            "confident_share": round(len(confident) / len(prompts), 4), "margin_nats": margin,
            "neighbour_leak": round(leaked / len(prompts), 4), "neighbourhood_score": round(score, 4)}


def inject_all(memory, pool, batched: bool, trajectory: bool, probes) -> tuple[list[float], list[float]]:
    """Seconds per fact and the raw-recall trajectory: one edit per fact, or the whole pool through
    ``inject`` at once (MEMIT batches of ``memit.wake_batch``; no trajectory, only the end)."""
    from sleepwake.models.probes import raw_recall

    if batched:
        return [o.seconds for o in memory.inject([p.fact for p in pool], source="benchmark")], []
    seconds, recalls = [], []
    for i, item in enumerate(pool, 1):
        outcome = memory.inject([item.fact], source="benchmark")[0]
        seconds.append(outcome.seconds)
        if trajectory:
            hits = raw_recall(memory.backend, [p.fact for p in pool[:i]], probes)
            recalls.append(sum(ok for ok, _ in hits) / i)
        print(f"fact {i:3d} {outcome.seconds:6.2f} s  steps {outcome.stats.get('steps')}  "
              f"recall so far {recalls[-1] if recalls else float('nan'):.2f}  {item.fact.prompt()} -> {item.object}",
              file=sys.stderr)
    return seconds, recalls


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1, help="fact pool seed (0 = tuning pool)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--home", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--no-trajectory", action="store_true", help="skip recall after each injection")
    parser.add_argument("--batched", action="store_true",
                        help="inject the whole pool in one call (MEMIT batches) instead of one edit per fact")
    parser.add_argument("--margin", type=float, default=0.5,
                        help="nats: the base top-1 margin above which a neighbour counts as firmly held")
    parser.add_argument("--out", default=None,
                        help="also write the result JSON here (the specificity figures as soon as they are "
                             "measured, so a run stopped in its fresh-process recall keeps them)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    from sleepwake.config import load_settings
    from sleepwake.factpool import generate_pool
    from sleepwake.memory import Memory
    from sleepwake.models.probes import raw_recall
    from sleepwake.storage.home import Home

    home_dir = args.home or tempfile.mkdtemp(prefix="sleepwake-bench-")
    settings = load_settings(args.config, args.overrides)
    pool = generate_pool(args.facts, seed=args.seed)
    memory = Memory.open(Home.open(home_dir), settings)
    start = time.perf_counter()
    memory.stats(), memory.contexts()
    print(f"key statistics ready in {time.perf_counter() - start:.1f} s (cached after the first run)", file=sys.stderr)
    pre = raw_recall(memory.backend, [p.fact for p in pool], settings.probes)
    seconds, trajectory = inject_all(memory, pool, args.batched, not args.no_trajectory, settings.probes)
    spec = specificity(memory, pool, settings.probes.specificity_neighbours, args.seed, args.margin)
    print(f"specificity {json.dumps(spec)}", file=sys.stderr)
    if args.out:  # the long part is done: keep it even if the recall processes below are stopped
        write_result(args.out, {"facts": args.facts, "pool_seed": args.seed, "batched": args.batched,
                                "partial": True, "seconds_per_fact_median": round(statistics.median(seconds), 3),
                                **spec})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = ["--home", home_dir] + [x for o in args.overrides for x in ("--set", o)]
    extra += ["--config", args.config] if args.config else []
    recall = run_cli("recall", *extra)
    status = run_cli("status", *extra)
    result = {
        "facts": args.facts, "pool_seed": args.seed,
        "seconds_per_fact": {"median": round(statistics.median(seconds), 3), "min": round(min(seconds), 3), "max": round(max(seconds), 3)},
        "peak_rss_mb": round(peak_mb, 1),
        "recall_before_injection": sum(ok for ok, _ in pre) / len(pre),
        "trajectory": [round(x, 3) for x in trajectory],
        "fresh_process_recall": recall["summary"],
        "perplexity": status["perplexity"], "perplexity_baseline": status["perplexity_baseline"],
        "perplexity_drift": status["perplexity_drift"],
        "batched": args.batched,
        **spec,
        "delta_bytes_per_fact": status["delta_bytes"] // max(status["facts"], 1),
        "weights_digest": status["weights_digest"][:16],
        "home": home_dir,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_result(args.out, result)


def write_result(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
