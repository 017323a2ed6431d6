"""Crash points for the crash-safety tests.

``SLEEPWAKE_CRASH_AT=<name>`` makes the process kill itself with SIGKILL when it reaches the
named point: no cleanup, no ``finally``, exactly like a power cut or an OOM kill. Unset (always,
outside tests) it costs one dictionary lookup. The names are listed in :data:`POINTS`.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "inject:after-factor-file",   # factor file written, ledger not yet committed
    "inject:after-ledger",        # ledger committed, weights not yet recomposed
    "forget:before-ledger",       # forget's factor files (re-solved edit, unlearning adapter) written, nothing committed
    "forget:after-ledger",        # fact and edit rows deleted, factor file still on disk
    "snapshot:before-manifest",   # snapshot files copied, not yet marked complete
    "maintain:after-refresh",     # one refresh stored, more to do
    "adapter:after-file",         # a LoRA factor file written, its ledger row not yet committed
    "adapter:after-ledger",       # an adapter committed, the files of adapters it replaced not yet deleted
    "fold:after-adapter",         # the consolidated adapter stored, the folded sleep not yet validated
    "sws:after-adapter",          # SWS adapter stored, per-fact gate not yet run
    "sws:after-stages",           # stages and scales committed, weights not yet recomposed
    "rem:after-adapter",          # REM adapter stored, its gate not yet decided
    "validate:before-verdict",    # weights changed, gate not yet decided
    "restore:after-deltas",       # snapshot factor files back beside the live ones, ledger not yet restored
    "restore:after-ledger",       # ledger restored, factor files of the undone change not yet removed
    "report:before-close",        # sleep finished, journal not yet closed
)


def crash_point(name: str) -> None:
    if os.environ.get("SLEEPWAKE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
