"""Where the chat reads and writes: a terminal (prompt, line editing, streamed replies) or pipes."""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass
from typing import Callable, TextIO

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class ChatIO:
    input: TextIO
    out: TextIO  # the conversation
    notes: TextIO | None  # "remembered ...", errors, hints (None: nowhere)
    quiet: bool = False  # -q: errors only
    prompt: bool = False  # a terminal: read with input("you> ") and label replies
    stream: bool = False  # write the reply token by token


def default_io(quiet: bool, as_json: bool, stream_setting: str) -> ChatIO:
    """stdin as UTF-8 whatever the locale (bad bytes become U+FFFD, never an exception); with
    --json the conversation goes to stderr so stdout carries only the JSON document."""
    source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace") if hasattr(sys.stdin, "buffer") else sys.stdin
    out = sys.stderr if as_json else sys.stdout
    interactive = sys.stdin.isatty() and out.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (importing it is what enables line editing in input())
        except ImportError:
            pass
    stream = stream_setting == "always" or (stream_setting == "auto" and out.isatty())
    return ChatIO(input=source, out=out, notes=sys.stderr, quiet=quiet, prompt=interactive, stream=stream)


def read_turn(chat_io: ChatIO, max_chars: int, note: Callable[[str], None]) -> str | None:
    """The next line without control characters, cut to ``max_chars``; None at end of input."""
    try:  # a terminal gets line editing and history through input() and readline
        line = input("you> ") + "\n" if chat_io.prompt else chat_io.input.readline()
    except EOFError:
        return None
    if not line:
        return None
    text = CONTROL.sub(" ", line.replace("\t", " ")).strip()
    if len(text) > max_chars:
        note(f"turn cut to {max_chars} characters (chat.max_turn_chars)")
        text = text[:max_chars]
    return text
