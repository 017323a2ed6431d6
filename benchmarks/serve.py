"""Serve benchmark on the bundled model: the Ilse Varga recall across a server restart, reply
latency and throughput, with the official ``openai`` client against ``sleepwake serve``.

1. A fresh home; ``sleepwake serve`` as a subprocess; "My name is Ilse Varga and I live in Graz."
2. The fact is stored after the reply (wait for ``pending_facts`` = 0); the server is stopped.
3. A NEW server process; "Where does Ilse Varga live?" in a new conversation with no history.
   If the answer lacks Graz, one ``sleepwake sleep`` (full sleep) runs, the server restarts and the
   question is asked again: the output says which was needed.
4. Median latency of a 32-token reply (``max_tokens=32``, greedy, sequential requests), and
   requests per minute with 4 concurrent clients (each request a 32-token reply).

Prints one JSON document.

    .venv/bin/python benchmarks/serve.py [--home DIR] [--requests 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

LONG = "Tell me a long story about a lighthouse keeper and a storm."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, extra: list[str]):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sleepwake.cli", "serve", "--home", str(home), "--port", str(self.port), *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                httpx.get(f"{self.url}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        self.startup_s = time.perf_counter() - started
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(self, text: str, max_tokens: int = 48):
        started = time.perf_counter()
        reply = self.client.chat.completions.create(model="sleepwake", temperature=0, max_tokens=max_tokens,
                                                    messages=[{"role": "user", "content": text}])
        return reply, time.perf_counter() - started

    def status(self) -> dict:
        return httpx.get(f"{self.url}/v1/sleepwake/status", timeout=60).json()

    def settle(self) -> None:
        while self.status()["pending_facts"]:
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def recall_demo(home: Path, extra: list[str]) -> dict:
    server = Server(home, [*extra, "--create"])
    reply, seconds = server.ask("My name is Ilse Varga and I live in Graz.")
    stated = {"reply": reply.choices[0].message.content, "remembered": reply.model_extra["sleepwake"]["remembered"],
              "reply_s": round(seconds, 2)}
    started = time.perf_counter()
    server.settle()
    stated["stored_after_s"] = round(time.perf_counter() - started, 1)
    server.stop()
    result = {"stated": stated, "asked": []}
    for step in ("after restart", "after one full sleep"):
        if step == "after one full sleep":
            started = time.perf_counter()
            slept = subprocess.run([sys.executable, "-m", "sleepwake.cli", "sleep", "--home", str(home), "-q", "--json", *extra],
                                   check=True, capture_output=True, text=True)
            result["sleep_s"] = round(time.perf_counter() - started)
            result["sleep_outcome"] = json.loads(slept.stdout)["outcome"]
        server = Server(home, extra)
        reply, seconds = server.ask("Where does Ilse Varga live?")
        server.stop()
        answer = reply.choices[0].message.content
        result["asked"].append({"when": step, "answer": answer, "graz": "graz" in answer.lower(), "seconds": round(seconds, 2)})
        if "graz" in answer.lower():
            break
    return result


def speed(home: Path, extra: list[str], requests: int) -> dict:
    server = Server(home, extra)
    server.ask(LONG, 4)  # warm-up
    sequential = [server.ask(LONG, 32) for _ in range(requests)]
    latencies = [seconds for _, seconds in sequential]
    tokens = [reply.usage.completion_tokens for reply, _ in sequential]
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: server.ask(LONG, 32), range(4 * requests)))
    elapsed = time.perf_counter() - started
    server.stop()
    return {"startup_s": round(server.startup_s, 1), "median_latency_32_tokens_s": round(statistics.median(latencies), 2),
            "completion_tokens": tokens, "concurrent_clients": 4, "concurrent_requests": len(replies),
            "requests_per_minute_4_clients": round(60 * len(replies) / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="home to use (default: a fresh temporary one)")
    parser.add_argument("--requests", type=int, default=8, help="sequential requests (and per client, concurrently)")
    parser.add_argument("--set", action="append", default=[], help="settings override, as for the CLI")
    args = parser.parse_args()
    extra = [x for override in args.set for x in ("--set", override)]
    home = args.home or Path(tempfile.mkdtemp(prefix="sleepwake-serve-")) / "home"
    out = {"home": str(home), "threads": os.environ.get("OMP_NUM_THREADS", "all cores")}
    out["recall"] = recall_demo(home, extra)
    out["speed"] = speed(home, extra, args.requests)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
