"""``sleepwake serve``: the memory behind an OpenAI-compatible HTTP API (FastAPI).

    GET  /v1/models                  the one model (``serve.model_name``); /v1/models/{id} retrieves it
    POST /v1/chat/completions        plain or streamed (server-sent events, ``data: [DONE]``)
    GET  /health                     liveness
    GET  /v1/sleepwake/status        the ``sleepwake status --json`` document (+ pending facts, sleeping)

The models and chat routes answer without the ``/v1`` prefix too: a client given the bare server
address as its base URL calls ``/chat/completions``.

Safe by default: loopback only unless an API key is set (compared in constant time); request size
and ``max_tokens`` limits; one model, requests in order through the engine's bounded queue (429
beyond it). A response says what the user's message made the memory remember: the
``X-Sleepwake-Remembered`` header (JSON) and a ``sleepwake`` field in the body.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sleepwake.errors import HomeBusyError, SleepwakeError
from sleepwake.serve.engine import Engine, QueueFull, Turn
from sleepwake.serve.protocol import (
    ApiError,
    ChatRequest,
    chunk,
    completion,
    new_id,
    parse_request,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def create_app(engine: Engine, api_key: str | None) -> FastAPI:
    cfg = engine.cfg
    app = FastAPI(title="sleepwake", description="A memory in the weights, over the OpenAI chat API.")

    add_error_handlers(app)
    add_guard(app, cfg.max_request_bytes, api_key)
    if cfg.cors_origins:  # added last, so outermost: a browser's preflight is answered before the key check
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["x-sleepwake-remembered"])  # SDKs add their own
    model_card = {"id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "sleepwake"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg.model_name}

    @app.get("/v1/models")
    @app.get("/models", include_in_schema=False)
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model:path}")
    @app.get("/models/{model:path}", include_in_schema=False)
    async def model(model: str):
        if model != cfg.model_name:
            raise unknown_model(model, cfg.model_name)
        return model_card

    @app.get("/v1/sleepwake/status")
    async def status():
        return await run(engine, engine.status)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request):
        body = await request.body()
        if len(body) > cfg.max_request_bytes:  # a chunked body the guard could not measure
            raise too_large(cfg.max_request_bytes)
        chat = check(parse_request(body), cfg)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in chat.messages if m.role not in ("tool", "function")]
        said = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        name, facts = await run(engine, engine.prepare, chat.user, said)
        extra = {"remembered": [f"{f.subject} | {f.relation} -> {f.object}" for f in facts], "name": name}
        headers = {"X-Sleepwake-Remembered": json.dumps(extra["remembered"])}
        decoding = chat.decoding(min(engine.settings.chat.max_new_tokens, cfg.max_tokens))
        if not chat.stream:
            answer = await run(engine, engine.answer, chat.user, messages, decoding, chat.stops())
            engine.remember_later(Turn(chat.user, said, answer["text"], name, facts))  # after the reply
            body_out = completion(new_id(), cfg.model_name, answer["text"], answer["finish"], answer["usage"], extra)
            return JSONResponse(body_out, headers=headers)
        return StreamingResponse(stream(engine, chat, messages, decoding, said, name, facts, extra),
                                 media_type="text/event-stream", headers=headers)

    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI-style error body: ours, Starlette's (404, 405), and the memory's."""
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return as_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return as_response(ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(SleepwakeError)
    async def memory_error(_request: Request, exc: SleepwakeError):
        busy = isinstance(exc, HomeBusyError)  # a writer held the ledger past its timeout: retry
        return as_response(ApiError(503 if busy else 500, " ".join(str(exc).split()), "server_error",
                                    "home_busy" if busy else "memory_error"))


def add_guard(app: FastAPI, max_request_bytes: int, api_key: str | None) -> None:
    """The API key (when one is set), the request-size limit and the browser guards, checked before any route.

    Without a key the server answers only to loopback names, and a POST must say it is JSON: a web page the
    user opens cannot then reach the memory through a name it points at 127.0.0.1 (DNS rebinding), nor store
    facts with a form or text/plain post (those need no CORS preflight; JSON does, and none is allowed)."""
    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is None and not is_loopback(request.url.hostname):
            return as_response(ApiError(403, f"without an API key this server answers only to {', '.join(LOOPBACK)}, "
                                        f"not '{request.url.hostname}'", "permission_error", "forbidden_host"))
        if request.url.path != "/health" and api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return as_response(ApiError(401, "a valid API key is required (Authorization: Bearer KEY)",
                                            "authentication_error", "invalid_api_key"))
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_request_bytes:
            return as_response(too_large(max_request_bytes))
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "application/json":
            return as_response(ApiError(415, f"send the body as JSON (Content-Type: application/json), not "
                                        f"'{kind or 'none'}'", code="unsupported_media_type"))
        return await call_next(request)


def as_response(exc: ApiError) -> JSONResponse:
    """An error as the response: raised in a route, or returned by the guard (which runs outside them)."""
    return JSONResponse(exc.body(), status_code=exc.status)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request is larger than {limit} bytes", code="request_too_large")


def unknown_model(asked: str, served: str) -> ApiError:
    return ApiError(404, f"the model '{asked}' does not exist; this server has '{served}'", code="model_not_found",
                    param="model")


def check(chat: ChatRequest, cfg) -> ChatRequest:
    if chat.model != cfg.model_name:
        raise unknown_model(chat.model, cfg.model_name)
    asked = chat.max_completion_tokens or chat.max_tokens
    if asked is not None and asked > cfg.max_tokens:
        raise ApiError(400, f"max_tokens {asked} is over this server's limit of {cfg.max_tokens}",
                       code="invalid_value", param="max_tokens")
    if not any(m.role == "user" for m in chat.messages):
        raise ApiError(400, "messages must contain a user message", code="invalid_value", param="messages")
    return chat


async def run(engine: Engine, fn, *args):
    """Run ``fn`` on the engine's worker and await it (429 when the queue is full)."""
    try:
        future = engine.submit(fn, *args)
    except QueueFull as exc:
        raise ApiError(429, str(exc), "rate_limit_error", "queue_full") from None
    return await asyncio.wrap_future(future)


async def stream(engine: Engine, chat: ChatRequest, messages: list[dict], decoding: dict, said: str, name, facts,
                 extra):
    """Server-sent events: a role chunk, the reply as it is generated, the finish chunk, with
    ``stream_options.include_usage`` a usage chunk, then [DONE]."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    request_id, model = new_id(), engine.cfg.model_name
    try:
        future = engine.submit(engine.answer, chat.user, messages, decoding, chat.stops(),
                               lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
    except QueueFull as exc:
        yield f"data: {json.dumps(ApiError(429, str(exc), 'rate_limit_error', 'queue_full').body())}\n\n"
        return
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    yield chunk(request_id, model, {"role": "assistant", "content": ""})
    while (piece := await pieces.get()) is not None:
        yield chunk(request_id, model, {"content": piece})
    try:
        answer = future.result()
    except ApiError as exc:
        yield f"data: {json.dumps(exc.body())}\n\n"
        return
    yield chunk(request_id, model, {}, answer["finish"], extra)
    if chat.wants_usage():
        yield chunk(request_id, model, None, usage=answer["usage"])
    yield "data: [DONE]\n\n"
    engine.remember_later(  # after the reply went out: never blocks it
        Turn(chat.user, said, answer["text"], name, facts))
