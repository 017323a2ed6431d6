"""The OpenAI chat-completions protocol, as much of it as a chat app needs: requests, responses,
stream chunks and errors (``{"error": {"message", "type", "code", "param"}}``)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool", "function"]
    content: str | list | None = None

    def text(self) -> str:
        """The message's text (a list of content parts is joined: text parts only)."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict) and p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None  # null reads as false, as at the top level


class ChatRequest(BaseModel):
    """The fields sleepwake honours; others a client sends (tools, logprobs, seed, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    user: str | None = Field(None, max_length=64)
    stop: str | list[str] | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data):
        """``"stream": null``, ``"n": null``: OpenAI reads a null as the default, and clients send them."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        listed = [stop] if isinstance(stop, str) else stop or []
        if len(listed) > 16 or any(len(s) > 256 for s in listed):  # OpenAI takes 4; agent frameworks send more
            raise ValueError("stop takes up to 16 sequences of at most 256 characters")
        return stop

    def budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def decoding(self, default_budget: int) -> dict:
        """The chat settings this request overrides (``ChatConfig`` fields)."""
        asked = {"temperature": self.temperature, "top_p": self.top_p}
        return {"max_new_tokens": self.budget(default_budget), **{k: v for k, v in asked.items() if v is not None}}

    def stops(self) -> list[str]:
        listed = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in listed if s]  # an empty sequence would stop every reply before it began

    def wants_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def parse_request(raw: bytes) -> ChatRequest:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", code="invalid_value", param=param) from None


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(request_id: str, model: str, text: str, finish: str, usage: dict, extra: dict) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage, "sleepwake": extra}


def chunk(request_id: str, model: str, delta: dict | None, finish: str | None = None, extra: dict | None = None,
          usage: dict | None = None) -> str:
    """One server-sent event; ``delta`` None is the usage chunk (no choices) of ``include_usage``."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    if extra is not None:
        body["sleepwake"] = extra
    return f"data: {json.dumps(body)}\n\n"
