"""The conversation context: system prompt, a summary of compacted turns, the recent turns.

Compaction is extractive on purpose: older turns become "the user said: ..." notes (the user's
own words, cut short), never a model-written summary, which a small model fills with invented
details that the next reply would then treat as said. What the user stated is in the weights
anyway (every fact is injected when said); the summary only keeps the thread of the talk.
"""

from __future__ import annotations

from typing import Callable

NOTE_CHARS = 160  # one compacted user turn keeps at most this many characters
SUMMARY_SHARE = 0.25  # the summary may use at most this share of the context budget


class Conversation:
    """Messages since the last compaction plus the notes that replaced older ones."""

    def __init__(self, system: str, count: Callable[[list[dict]], int], budget: Callable[[], int],
                 compact_at: float, keep: int, reserve: int):
        self.system, self.count, self.budget = system, count, budget
        self.compact_at, self.keep, self.reserve = compact_at, keep, reserve
        self.messages: list[dict] = []
        self.notes: list[str] = []

    def render(self) -> list[dict]:
        system = self.system
        if self.notes:
            system += "\nEarlier in this conversation the user said: " + " ".join(f'"{n}"' for n in self.notes)
        return [{"role": "system", "content": system}, *self.messages]

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def tokens(self) -> int:
        return self.count(self.render())

    def over(self, share: float) -> bool:
        """Would the prompt plus a full reply exceed ``share`` of the budget?"""
        return self.tokens() + self.reserve > share * self.budget()

    def compact(self, keep: int | None = None) -> str | None:
        """Fold all but the last ``keep`` messages into notes; returns the new summary text, or
        None when there was nothing to fold."""
        keep = self.keep if keep is None else keep
        folded = self.messages[: max(0, len(self.messages) - keep)]
        if not folded:
            return None
        self.messages = self.messages[len(folded):]
        for message in folded:
            if message["role"] == "user":
                text = " ".join(message["content"].split())
                self.notes.append(text if len(text) <= NOTE_CHARS else text[: NOTE_CHARS - 3] + "...")
        self._trim_notes()
        return self.render()[0]["content"]

    def _trim_notes(self) -> None:
        """Oldest notes go first when the summary outgrows its share of the budget."""
        cap = SUMMARY_SHARE * self.budget()
        while self.notes and self.count([{"role": "system", "content": " ".join(self.notes)}]) > cap:
            self.notes.pop(0)

    def fit(self) -> str | None:
        """Make room for the next reply: compact near ``compact_at``, then drop and finally cut
        the oldest messages while the prompt and a reply would still overflow the budget.
        Returns the summary text when a compaction happened."""
        summary = self.compact() if self.over(self.compact_at) else None
        while self.over(1.0) and len(self.messages) > 1:
            summary = self.compact(keep=len(self.messages) - 1) or summary
        if self.over(1.0) and self.messages:
            self._cut_last()
        return summary

    def _cut_last(self) -> None:
        """A single message longer than the budget keeps its end (the newest words)."""
        last = self.messages[-1]
        content = last["content"]
        while content and self.over(1.0):
            content = content[len(content) // 4 or 1:]
            last["content"] = "..." + content.lstrip()
        if self.over(1.0):
            self.notes.clear()
