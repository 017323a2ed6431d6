"""The journal's cost per stage: seconds to take and drop a snapshot of a home, and what it reads and syncs.

Every weight-changing stage of a sleep runs under its own snapshot (``sleep.journal.stage``): the ledger copied,
the factor files linked, a manifest of sha256 digests. This copies a home (the ledger and ``deltas/``) to a
scratch folder and times ``--takes`` snapshots taken and closed one after another, as a night's stages do,
counting the bytes hashed and the files fsynced. Run it under two checkouts (``PYTHONPATH``) to compare them on
the same home. Prints one JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/journal_take.py --home /path/to/home --takes 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a sleepwake home (its ledger and deltas/ are copied)")
    parser.add_argument("--takes", type=int, default=5, help="snapshots taken and closed one after another")
    args = parser.parse_args(argv)
    if not (args.home / "ledger.duckdb").exists():
        parser.error(f"{args.home} holds no ledger.duckdb: not a sleepwake home")

    from sleepwake.storage.snapshots import SnapshotStore

    with tempfile.TemporaryDirectory(dir=args.home.parent) as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        shutil.copy2(args.home / "ledger.duckdb", home / "ledger.duckdb")
        shutil.copytree(args.home / "deltas", home / "deltas")
        counts = {"hashed_bytes": 0, "fsyncs": 0}
        real_sha, real_fsync = hashlib.sha256, os.fsync
        hashlib.sha256 = lambda data=b"": counts.__setitem__("hashed_bytes", counts["hashed_bytes"] + len(data)) or real_sha(data)
        os.fsync = lambda fd: counts.__setitem__("fsyncs", counts["fsyncs"] + 1) or real_fsync(fd)
        store, seconds = SnapshotStore(home), []
        try:
            for take in range(args.takes):
                started = time.perf_counter()
                store.close(store.take(f"bench-{take}", {}), outcome="done", keep=False)
                seconds.append(time.perf_counter() - started)
        finally:
            hashlib.sha256, os.fsync = real_sha, real_fsync
        files = sum(1 for _ in (home / "deltas").iterdir())
        nbytes = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())
    print(json.dumps({"factor_files": files, "home_mb": round(nbytes / 1e6, 1), "takes": args.takes,
                      "first_s": round(seconds[0], 3), "later_mean_s": round(sum(seconds[1:]) / max(1, len(seconds) - 1), 3),
                      "hashed_mb_per_take": round(counts["hashed_bytes"] / 1e6 / args.takes, 1),
                      "fsyncs_per_take": round(counts["fsyncs"] / args.takes, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
