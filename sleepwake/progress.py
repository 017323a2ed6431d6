"""Progress bars for work that takes more than a few seconds (sampling, statistics, training).

Bars go to stderr through tqdm, with an ETA, and only while the ``sleepwake`` logger shows INFO
(the CLI's default; ``-q`` and library use without logging set up stay silent), so ``--json``
output on stdout is never mixed with them.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str = "it") -> tqdm:
    shown = logging.getLogger("sleepwake").isEnabledFor(logging.INFO)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown, mininterval=1.0,
                leave=False, dynamic_ncols=True)


class GenerationBar:
    """A ``transformers`` streamer that advances a bar by one step per generated token position
    (``generate`` calls ``put`` with the prompt first, then once per new token, then ``end``)."""

    def __init__(self, progress: tqdm, tokens_per_step: int):
        self.progress, self.tokens_per_step, self._prompt_seen = progress, tokens_per_step, False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.progress.update(self.tokens_per_step)

    def end(self) -> None:
        self._prompt_seen = False
