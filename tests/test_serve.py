"""``sleepwake serve`` on the tiny random Llama, driven by the official ``openai`` client.

The tiny model's replies are noise; what is tested is the protocol (plain and streamed completions,
OpenAI-shaped errors), the wake conversation behind it (facts stored after the reply, exactly once,
per user), a new server process serving the stored weights, and answering on through a sleep run
by another process. The Ilse Varga recall on the bundled model is benchmarks/serve.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")

from sleepwake.cli import main
from sleepwake.config import load_settings
from sleepwake.memory import Memory
from sleepwake.serve.app import create_app
from sleepwake.serve.engine import Engine
from sleepwake.storage import conversations
from sleepwake.storage.home import Home
from sleepwake.storage.ledger import Ledger

pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")
FAST = ["chat.max_new_tokens=4", "serve.poll_s=0.1", "serve.max_tokens=64"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """An engine and a uvicorn server in this process (a thread), on a free port."""

    def __init__(self, home: Path, overrides: list[str], api_key: str | None = None):
        import uvicorn

        self.settings = load_settings(None, [*overrides, *FAST])
        self.engine = Engine(Home.open(home), self.settings)
        self.port = free_port()
        config = uvicorn.Config(create_app(self.engine, api_key), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "unused", max_retries=0)

    def ask(self, text: str, **kwargs):
        return self.client.chat.completions.create(model="sleepwake", messages=[{"role": "user", "content": text}],
                                                   temperature=0, **kwargs)

    def settle(self, timeout: float = 60) -> None:
        """Wait until every stated fact has been stored (the spool is empty)."""
        deadline = time.monotonic() + timeout
        while self.engine.pending:
            assert time.monotonic() < deadline, f"facts still waiting: {self.engine.pending}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.close()


@pytest.fixture
def served(tmp_path, tiny_settings_overrides):
    running = Served(tmp_path / "home", tiny_settings_overrides)
    yield running
    running.close()


def stored(home: Path) -> list[tuple[str, str, str, int | None]]:
    return [(r.subject, r.relation, r.object, r.edit_id) for r in Ledger(home / "ledger.duckdb", read_only=True).list_facts()]


def test_plain_and_streamed_completions_and_models(served):
    assert [m.id for m in served.client.models.list().data] == ["sleepwake"]
    plain = served.ask("Hello there, how are you?", max_tokens=6)
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    assert plain.usage.completion_tokens <= 6 and plain.choices[0].finish_reason in ("stop", "length")
    pieces = list(served.ask("Hello there, how are you?", max_tokens=6, stream=True))
    text = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    assert pieces[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert text.strip() == plain.choices[0].message.content  # greedy: the stream is the same reply
    raw = httpx.post(f"{served.url}/v1/chat/completions", json={"model": "sleepwake", "stream": True, "max_tokens": 3,
                                                                "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    assert raw.text.rstrip().endswith("data: [DONE]") and raw.headers["content-type"].startswith("text/event-stream")
    nulls = {"model": "sleepwake", "stream": None, "n": None, "stop": None, "temperature": None, "max_tokens": 2,
             "stream_options": {"include_usage": None},
             "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                          {"role": "assistant", "content": None, "tool_calls": []},
                          {"role": "function", "name": "clock", "content": "noon"}, {"role": "user", "content": "Ok"}]}
    assert httpx.post(f"{served.url}/v1/chat/completions", json=nulls, timeout=60).json()["object"] == "chat.completion"
    assert httpx.get(f"{served.url}/health", timeout=60).json()["status"] == "ok"


def test_stop_sequences_usage_chunk_and_a_base_url_without_v1(served):
    # The tiny random model writes one newline after another (its replies strip to ""): without a stop it
    # runs to the token limit; with "\n" as the stop sequence generation ends at the first one.
    full = served.ask("Tell me a story about the sea.", max_tokens=12)
    assert (full.choices[0].finish_reason, full.usage.completion_tokens) == ("length", 12)
    stopped = served.ask("Tell me a story about the sea.", max_tokens=12, stop=["\n", "\u2603never"])
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens < 12
    pieces = list(served.ask("Tell me a story about the sea.", max_tokens=12, stop="\n", stream=True,
                             stream_options={"include_usage": True}))
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == ""  # no newline got out
    assert pieces[-2].choices[0].finish_reason == "stop"
    assert pieces[-1].choices == [] and pieces[-1].usage.completion_tokens == stopped.usage.completion_tokens
    assert all(p.usage is None for p in pieces[:-1])
    bare = openai.OpenAI(base_url=served.url, api_key="unused", max_retries=0)  # no /v1: routes answer there too
    assert bare.models.retrieve("sleepwake").id == served.client.models.retrieve("sleepwake").id == "sleepwake"
    assert bare.chat.completions.create(model="sleepwake", messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=2).object == "chat.completion"


def test_browser_origins_are_allowed_only_when_configured(served, tmp_path, tiny_settings_overrides):
    preflight = {"origin": "http://localhost:3000", "access-control-request-method": "POST",  # as OpenAI's JS SDK asks
                 "access-control-request-headers": "authorization, content-type, x-stainless-os, x-stainless-lang"}
    closed = httpx.options(f"{served.url}/v1/chat/completions", headers=preflight, timeout=60)
    assert "access-control-allow-origin" not in closed.headers
    opened = Served(tmp_path / "other", [*tiny_settings_overrides, "serve.cors_origins=[\"http://localhost:3000\"]"])
    try:
        answer = httpx.options(f"{opened.url}/v1/chat/completions", headers=preflight, timeout=60)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    finally:
        opened.close()


def test_stated_facts_are_stored_after_the_reply_and_reported(served, tmp_path):
    reply = served.client.chat.completions.with_raw_response.create(
        model="sleepwake", temperature=0, max_tokens=4,
        messages=[{"role": "user", "content": "My name is Ilse Varga and I live in Graz."}])
    remembered = json.loads(reply.headers["x-sleepwake-remembered"])
    body = reply.parse()
    assert remembered == body.model_extra["sleepwake"]["remembered"] and len(remembered) == 1 and "Graz" in remembered[0]
    assert body.model_extra["sleepwake"]["name"] == "Ilse Varga"
    served.settle()
    [(subject, relation, obj, edit_id)] = stored(tmp_path / "home")
    assert (subject, relation, obj) == ("Ilse Varga's home", "{} is in", "Graz") and edit_id is not None
    ledger = Ledger(tmp_path / "home" / "ledger.duckdb", read_only=True)
    turns = conversations.session_turns(ledger, "serve:owner")
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert ledger.get_meta("chat:user_name") == "Ilse Varga"
    status = httpx.get(f"{served.url}/v1/sleepwake/status", timeout=60).json()
    assert status["pending_facts"] == 0 and status["sleeping"] is False
    assert status["weights_digest"] == served.engine.memory.weights_digest()


def test_a_new_server_process_serves_the_stored_weights(served, tmp_path, tiny_settings_overrides):
    before = served.engine.memory.weights_digest()
    served.ask("I live in Graz and I work as a baker.", max_tokens=2)
    served.settle()
    after = served.engine.memory.weights_digest()
    assert after != before  # the running server already answers from the edited weights
    served.close()
    port = free_port()
    args = [sys.executable, "-m", "sleepwake.cli", "serve", "--home", str(tmp_path / "home"), "--port", str(port), "-q"]
    for override in [*tiny_settings_overrides, *FAST]:
        args += ["--set", override]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        status = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/v1/sleepwake/status", timeout=5).json(), process)
        assert status["weights_digest"] == after and status["facts"] == 2
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="sleepwake", max_tokens=3,
                                               messages=[{"role": "user", "content": "Where do I live?"}])
        assert reply.choices[0].message.content is not None
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for(call, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            return call()
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.2)


def test_concurrent_clients_lose_no_fact_and_store_none_twice(served, tmp_path):
    cities = ["Paris", "London", "Berlin", "Tokyo", "Lisbon"]
    jobs = ["a teacher", "a doctor", "a pilot", "a baker", "a lawyer"]

    def client(i: int) -> list[int]:
        codes = []
        for j in range(5):
            said = f"I live in {cities[j]}." if j % 2 == 0 else f"I work as {jobs[j]}."
            reply = served.client.chat.completions.with_raw_response.create(
                model="sleepwake", max_tokens=2, user=f"client-{i}", messages=[{"role": "user", "content": said}])
            codes.append(reply.status_code)
        return codes

    with ThreadPoolExecutor(8) as pool:
        codes = [c for result in pool.map(client, range(8)) for c in result]
    assert codes == [200] * 40
    served.settle()
    facts = stored(tmp_path / "home")
    # Per client the home was stated 3 times (Paris, Lisbon, Berlin... the last one wins) and the job twice.
    assert len(facts) == 16 and all(edit_id is not None for *_, edit_id in facts)
    assert {s for s, *_ in facts} == {f"client-{i}'s {a}" for i in range(8) for a in ("home", "job")}
    assert {(s, o) for s, _, o, _ in facts if s.endswith("home")} == {(f"client-{i}'s home", "Lisbon") for i in range(8)}
    ledger = Ledger(tmp_path / "home" / "ledger.duckdb", read_only=True)
    for i in range(8):
        turns = conversations.session_turns(ledger, f"serve:client-{i}")
        assert len(turns) == 10  # every request's user turn and reply, once


def test_bad_requests_get_openai_shaped_errors(served):
    def post(body):
        return httpx.post(f"{served.url}/v1/chat/completions", content=body, timeout=60,
                          headers={"content-type": "application/json"})

    ok = {"model": "sleepwake", "messages": [{"role": "user", "content": "Hi"}]}
    cases = [
        (post(b"{not json"), 400, "invalid_json"),
        (post(json.dumps([1, 2])), 400, "invalid_json"),
        (post(json.dumps({**ok, "model": "gpt-4o"})), 404, "model_not_found"),
        (post(json.dumps({**ok, "max_tokens": 100000})), 400, "invalid_value"),
        (post(json.dumps({**ok, "temperature": 7})), 400, "invalid_value"),
        (post(json.dumps({**ok, "n": 3})), 400, "invalid_value"),
        (post(json.dumps({**ok, "messages": []})), 400, "invalid_value"),
        (post(json.dumps({**ok, "messages": [{"role": "assistant", "content": "Hi"}]})), 400, "invalid_value"),
        (post(json.dumps({**ok, "messages": [{"role": "user", "content": "x" * 70000}]})), 413, "request_too_large"),
        (post(json.dumps({**ok, "messages": [{"role": "user", "content": "word " * 3000}]})), 400,
         "context_length_exceeded"),
        (post(json.dumps({**ok, "stop": ["x"] * 17})), 400, "invalid_value"),
        (httpx.get(f"{served.url}/v1/nothing-here", timeout=60), 404, "not_found"),
        (httpx.get(f"{served.url}/v1/models/gpt-4o", timeout=60), 404, "model_not_found"),
        # a form or text/plain post (what a web page may send with no CORS preflight) stores nothing
        (httpx.post(f"{served.url}/v1/chat/completions", content=json.dumps(ok), timeout=60,
                    headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        (httpx.post(f"{served.url}/v1/chat/completions", data={"model": "sleepwake"}, timeout=60), 415,
         "unsupported_media_type"),
        # a name a web page pointed at 127.0.0.1 (DNS rebinding) is not this server's
        (httpx.get(f"{served.url}/v1/models", headers={"host": f"evil.example:{served.port}"}, timeout=60), 403,
         "forbidden_host"),
    ]
    for response, status, code in cases:
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (status, code), error
        assert error["message"] and error["type"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        served.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert served.engine.pending == []  # no bad request stated anything


def test_a_full_queue_is_429_and_the_api_key_is_required(tmp_path, tiny_settings_overrides):
    running = Served(tmp_path / "home", [*tiny_settings_overrides, "serve.queue=1"], api_key="s3cret")
    try:
        started, release = threading.Event(), threading.Event()

        def hold() -> None:
            started.set()
            release.wait()

        busy = running.engine.submit(hold)  # the worker is busy with this
        try:
            assert started.wait(30)
            waiting = running.engine.submit(lambda: None)  # and one waits: the queue is full
            with pytest.raises(openai.RateLimitError):
                running.ask("Hi", max_tokens=2)
        finally:
            release.set()
        busy.result(timeout=30), waiting.result(timeout=30)  # the queue has drained
        assert running.ask("Hi", max_tokens=2).choices[0].message is not None
        wrong = openai.OpenAI(base_url=f"{running.url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert httpx.get(f"{running.url}/health", timeout=60).status_code == 200  # liveness needs no key
        keyed = {"authorization": "Bearer s3cret", "host": f"memory.example.lan:{running.port}"}
        assert httpx.get(f"{running.url}/v1/models", headers=keyed, timeout=60).status_code == 200  # a key: any name
    finally:
        running.close()


def test_serving_beyond_loopback_needs_an_api_key(tmp_path, capsys, tiny_settings_overrides):
    Home.open(tmp_path / "home")
    code = main(["serve", "--home", str(tmp_path / "home"), "--host", "0.0.0.0"])
    assert code != 0 and "needs an API key" in capsys.readouterr().err
    code = main(["serve", "--home", str(tmp_path / "missing")])
    assert code != 0 and "missing" in capsys.readouterr().err


def test_answers_go_on_through_a_sleep_in_another_process(served, tmp_path, tiny_settings_overrides):
    home = tmp_path / "home"
    served.ask("My name is Ilse Varga and I live in Graz.", max_tokens=2)
    served.settle()
    args = [sys.executable, "-m", "sleepwake.cli", "sleep", "--home", str(home), "-q"]
    for override in [*tiny_settings_overrides, "validate.enabled=false"]:
        args += ["--set", override]
    sleeper = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})

    def status() -> dict:
        return httpx.get(f"{served.url}/v1/sleepwake/status", timeout=60).json()  # it queues behind the replies

    try:
        deadline = time.monotonic() + 300
        while not status()["sleeping"]:  # answered while the sleep process starts
            assert sleeper.poll() is None and time.monotonic() < deadline, "the sleep never began"
            assert served.ask("How are you?", max_tokens=2).choices[0].message is not None
        jobs = ["a teacher", "a doctor", "a nurse"]
        for job in jobs:  # stated while the other process holds the home
            assert served.ask(f"I work as {job}.", max_tokens=2).choices[0].message is not None
        waiting = status()
        assert waiting["pending_facts"] == 3 or not waiting["sleeping"]
        while sleeper.poll() is None:  # and answered until it ends
            assert time.monotonic() < deadline, "the sleep did not end"
            assert served.ask("How are you?", max_tokens=2).choices[0].message is not None
        assert sleeper.returncode == 0, sleeper.stderr.read().decode()[-2000:]
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    served.settle()
    composed = Memory.open(Home.open(home), served.settings, writable=False)
    deadline = time.monotonic() + 30
    while served.engine.memory.weights_digest() != composed.weights_digest():
        assert time.monotonic() < deadline, "the server did not load the weights the sleep left"
        time.sleep(0.1)
        composed.reload()
    facts = {(s, o) for s, _, o, _ in stored(home)}
    assert facts == {("Ilse Varga's home", "Graz"), ("Ilse Varga's job", "a nurse")}
    assert Ledger(home / "ledger.duckdb", read_only=True).runs()[0]["kind"] == "full_sleep"
