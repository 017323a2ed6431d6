"""The anchors' teacher: seconds for a night's anchor sets, one forward per text against padded runs.

Every SWS and REM pass builds its KL anchors' teacher (``models.anchors.teacher``): the memory anchors (a
consolidated fact's chat question and statement, up to ``lora.memory_anchors`` of them) and the contrast
anchors are taught anew each pass, the base model's own texts once per model. This times both kinds of text
on the bundled model, each forward size best of two, and checks that the runs teach what one forward per text
teaches (largest difference of the top-k log-probabilities). Prints one JSON line per set.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/teacher_speed.py --texts 128 --tokens 1 256 512
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=128, help="texts of each kind (lora.memory_anchors: 128)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 256, 512],
                        help="padded tokens a forward may hold (1: one forward per text, as before)")
    parser.add_argument("--seed", type=int, default=3, help="pool seed of the facts whose answers are taught")
    args = parser.parse_args(argv)

    from sleepwake.config import load_settings
    from sleepwake.factpool import generate_pool
    from sleepwake.models import anchors
    from sleepwake.models.torch_backend import TorchBackend
    from sleepwake.sleep.curriculum import rehearsal_example

    settings = load_settings(None, [])
    backend = TorchBackend.load(settings.model, settings.memit.down_proj)
    k = settings.lora.anchor_topk
    per_format = max(1, args.texts // len(anchors.FORMATS))
    own = anchors.anchor_texts(backend, anchors.FORMATS, per_format, settings.lora.anchor_tokens, args.seed)
    answers = [rehearsal_example(backend, pf.fact) for pf in generate_pool(args.texts, seed=args.seed)]
    sets = {"memory anchors (chat question + statement)": [(ex.prompt + ex.target, len(ex.prompt)) for ex in answers],
            "the base model's own texts": own}
    for name, texts in sets.items():
        seconds, taught = {}, {}
        for _ in range(2):
            for tokens in args.tokens:
                started = time.perf_counter()
                taught[tokens] = anchors.teacher(backend, texts, k, tokens=tokens)
                seconds[tokens] = min(time.perf_counter() - started, seconds.get(tokens, float("inf")))
        first = args.tokens[0]
        gap = max(float((a.top_logp - b.top_logp).abs().max()) for tokens in args.tokens
                  for a, b in zip(taught[tokens], taught[first]))
        print(json.dumps({"set": name, "texts": len(texts), "mean_tokens": round(sum(len(i) for i, _ in texts) / len(texts), 1),
                          "seconds": {str(t): round(s, 2) for t, s in seconds.items()},
                          "speedup": {str(t): round(seconds[first] / s, 2) for t, s in seconds.items()},
                          "max_logp_difference": gap,
                          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
