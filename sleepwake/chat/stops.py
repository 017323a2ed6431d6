"""Stop sequences (OpenAI's ``stop``): a reply ends just before the first one, and a streamed reply
never shows any part of it.

Generation ends at a stop sequence (``StopOnText``: the reply so far is decoded after each token; not
transformers' ``stop_strings``, whose token table grows with the vocabulary times the sequences'
lengths, rebuilt for each request's set); what is cut and held back here is the text, since a stop
sequence can end mid-token and a word-by-word stream can have sent its first characters before the
rest was generated.
"""

from __future__ import annotations

from typing import Callable, Sequence


def cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop sequence, and whether one occurs."""
    hits = [at for at in (text.find(s) for s in stops if s) if at >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


class StopStream:
    """Passes streamed text on to ``on_text``, holding back a tail that may begin a stop sequence
    and dropping everything from the first stop sequence on."""

    def __init__(self, on_text: Callable[[str], None], stops: Sequence[str]):
        self.on_text, self.stops = on_text, [s for s in stops if s]
        self.pending, self.stopped = "", False

    def __call__(self, piece: str) -> None:
        if self.stopped:
            return
        text, self.stopped = cut(self.pending + piece, self.stops)
        keep = 0 if self.stopped else held_back(text, self.stops)
        self._send(text[: len(text) - keep])
        self.pending = text[len(text) - keep:]

    def close(self) -> None:
        """The reply is complete: a held-back tail that never became a stop sequence is sent."""
        if not self.stopped:
            self._send(self.pending)
        self.pending = ""

    def _send(self, text: str) -> None:
        if text:
            self.on_text(text)


def stop_on_text(decode: Callable[[list[int]], str], start: int, stops: Sequence[str]):
    """A transformers ``StoppingCriteria`` ending generation once the text after ``start`` (the
    prompt's length in tokens) holds one of ``stops``; batch of one."""
    import torch
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            hit = cut(decode(input_ids[0, start:].tolist()), stops)[1]
            return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

    return StopOnText()
