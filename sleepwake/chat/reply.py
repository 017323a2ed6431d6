"""Replies: the conversation through the model's chat template, optionally streamed.

The backend protocol only offers single-turn, non-streamed chat (``Backend.chat``), so a
multi-turn, streamed reply is generated here from the torch backend's model and tokenizer.
A backend without them (a future runtime) still answers, without streaming, by raw
completion of the rendered conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sleepwake.chat.stops import StopStream, cut, stop_on_text
from sleepwake.models.backend import chat_text, plain_chat
from sleepwake.settings.chat import ChatConfig

Messages = Sequence[dict]


@dataclass(frozen=True)
class Reply:
    """An assistant message, whether a stop sequence ended it, and the tokens generated for it
    (the stop sequence's included: what the model did, for usage and the "length" finish)."""

    text: str
    stopped: bool
    tokens: int


class Replier:
    """Counts the tokens of a conversation and generates the assistant's next message."""

    def __init__(self, backend, cfg: ChatConfig):
        self.backend, self.cfg = backend, cfg
        # Any: a torch backend's transformers objects, or None for a backend without them
        self.tokenizer: Any = getattr(backend, "tokenizer", None)
        self.model: Any = getattr(backend, "model", None)

    @property
    def budget(self) -> int:
        """Tokens the context may use: the configured budget, capped by the model's maximum."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return min(self.cfg.context_tokens, limit) if limit else self.cfg.context_tokens

    def render(self, messages: Messages) -> str:
        return plain_chat(messages) if self.tokenizer is None else chat_text(self.tokenizer, messages)

    def count(self, messages: Messages) -> int:
        return len(self.backend.encode(self.render(messages), special=False))

    def reply(self, messages: Messages, on_text: Callable[[str], None] | None = None) -> str:
        """The next assistant message; ``on_text`` receives it piece by piece as it is generated."""
        return self.respond(messages, (), on_text).text

    def respond(self, messages: Messages, stop: Sequence[str] = (),
                on_text: Callable[[str], None] | None = None) -> Reply:
        """The next assistant message, ended before the first of ``stop``; ``on_text`` receives it
        piece by piece and never any part of a stop sequence."""
        stop = [s for s in stop if s]
        stream = StopStream(on_text, stop) if on_text else None
        prompt = self.render(messages)
        if self.model is None or self.tokenizer is None:
            [raw] = self.backend.generate([prompt], self.cfg.max_new_tokens)
            if stream:
                stream(raw)
            tokens = len(self.backend.encode(raw, special=False))
        else:
            raw, tokens = self._generate(prompt, stop, stream)
        if stream:
            stream.close()
        text, stopped = cut(raw, stop)
        return Reply(text.strip(), stopped, tokens)

    def _generate(self, prompt: str, stop: Sequence[str], on_text: Callable[[str], None] | None) -> tuple[str, int]:
        import torch

        from sleepwake.models.torch_decoding import stop_ids

        ids = self.backend.encode(prompt, special=False)
        device = self.model.get_input_embeddings().weight.device
        input_ids = torch.tensor([ids], device=device)
        sampling = self.cfg.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sampling, "temperature": self.cfg.temperature if sampling else None,
                  "top_p": self.cfg.top_p if sampling else None, "top_k": None}
        if stop:  # generation ends at a stop sequence, however the tokens split it
            kwargs["stopping_criteria"] = [stop_on_text(self.backend.decode, input_ids.shape[1], stop)]
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.cfg.max_new_tokens, repetition_penalty=self.cfg.repetition_penalty,
                pad_token_id=self.tokenizer.pad_token_id, streamer=_streamer(self.tokenizer, on_text), **kwargs)
        new = out[0, input_ids.shape[1]:].tolist()
        ends = stop_ids(self.model, self.tokenizer) | {self.tokenizer.pad_token_id}
        while new and new[-1] in ends:  # the end-of-turn token (and padding) is not the message
            new.pop()
        return self.backend.decode(new), len(new)


def _streamer(tokenizer, on_text: Callable[[str], None] | None):
    if on_text is None:
        return None
    from transformers import TextStreamer

    send = on_text  # bound here: mypy does not carry the None check into the class body

    class Forward(TextStreamer):
        """transformers' word-boundary streaming, written to our callback instead of print()."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                send(text)

    return Forward(tokenizer, skip_prompt=True, skip_special_tokens=True)
