"""The memory: a loaded model plus the edits and adapters recorded in a home, composed exactly.

- ``weights``: composition of base + adapters + scaled edits (byte-exact, never patched in place)
  and the one low-rank-delta store path edits and adapters share;
- ``wake``: inject (batched MEMIT), refresh (sleep's constrained re-solve) and forget;
- ``core``: :class:`Memory` itself (open, reload, statistics, probes, perplexity cache).
"""

from sleepwake.memory.core import InjectOutcome, Memory, backend_key, lending, load_backend

__all__ = ["InjectOutcome", "Memory", "backend_key", "lending", "load_backend"]
