"""Replies: the conversation through the model's chat template, optionally streamed.

The backend protocol only offers single-turn, non-streamed chat (``Backend.chat``), so a
multi-turn, streamed reply is generated here from the torch backend's model and tokenizer.
A backend without them (a future runtime) still answers, without streaming, by raw
completion of the rendered conversation.
"""

from __future__ import annotations

from typing import Callable, Sequence

from sleepwake.models.backend import chat_text, plain_chat
from sleepwake.settings.chat import ChatConfig

Messages = Sequence[dict]


class Replier:
    """Counts the tokens of a conversation and generates the assistant's next message."""

    def __init__(self, backend, cfg: ChatConfig):
        self.backend, self.cfg = backend, cfg
        self.tokenizer = getattr(backend, "tokenizer", None)
        self.model = getattr(backend, "model", None)

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
        prompt = self.render(messages)
        if self.model is None or self.tokenizer is None:
            [text] = self.backend.generate([prompt], self.cfg.max_new_tokens)
            if on_text:
                on_text(text)
            return text.strip()
        return self._generate(prompt, on_text).strip()

    def _generate(self, prompt: str, on_text: Callable[[str], None] | None) -> str:
        import torch

        ids = self.backend.encode(prompt, special=False)
        device = self.model.get_input_embeddings().weight.device
        input_ids = torch.tensor([ids], device=device)
        sampling = self.cfg.temperature > 0
        kwargs = {"do_sample": sampling, "temperature": self.cfg.temperature if sampling else None,
                  "top_p": self.cfg.top_p if sampling else None, "top_k": None}
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.cfg.max_new_tokens, repetition_penalty=self.cfg.repetition_penalty,
                pad_token_id=self.tokenizer.pad_token_id, streamer=_streamer(self.tokenizer, on_text), **kwargs)
        return self.backend.decode(out[0, input_ids.shape[1]:].tolist())


def _streamer(tokenizer, on_text: Callable[[str], None] | None):
    if on_text is None:
        return None
    from transformers import TextStreamer

    class Forward(TextStreamer):
        """transformers' word-boundary streaming, written to our callback instead of print()."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return Forward(tokenizer, skip_prompt=True, skip_special_tokens=True)
