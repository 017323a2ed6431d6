"""The engine behind ``sleepwake serve``: one model, one worker thread, requests in order.

Every request becomes a job on a bounded queue (``serve.queue``; one more is refused, the HTTP layer
answers 429), run by the one worker thread that owns the model, so generation never interleaves.

It is the wake conversation: the last user message goes through the same rules extraction and
firewall as ``sleepwake chat``; what it states is remembered AFTER the reply has been produced.
Storing needs the home's write lock. While someone else holds it (a full sleep in this or another
process, a CLI inject), the facts wait in ``<home>/serve-pending.jsonl`` and the server keeps
answering from the weights it has; when the lock is free again they are injected, and when a
sleep's journal is closed (no open snapshot) and the ledger changed, the engine loads the new
weights. Facts are told apart per person: OpenAI's ``user`` field names who is talking (without it,
the home's owner), and each person's name is remembered like the terminal chat does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sleepwake.chat.extract import extract
from sleepwake.chat.reply import Replier
from sleepwake.chat.patterns import ACCUMULATING
from sleepwake.chat.stored import to_store
from sleepwake.config import Settings
from sleepwake.errors import HomeBusyError
from sleepwake.facts import MAX_FIELD_CHARS, Fact
from sleepwake.identity import load_identity
from sleepwake.memory import Memory
from sleepwake.storage import conversations
from sleepwake.storage.database import wal_path
from sleepwake.storage.home import Home
from sleepwake.storage.snapshots import SnapshotStore

log = logging.getLogger(__name__)
NAME_KEY = "chat:user_name"
SPOOL = "serve-pending.jsonl"


class QueueFull(Exception):
    """The request queue is at ``serve.queue``."""


@dataclass
class Turn:
    """One exchange whose facts wait to be stored."""

    user: str | None
    said: str
    reply: str
    name: str | None
    facts: list[Fact]

    def as_json(self) -> str:
        return json.dumps({"user": self.user, "said": self.said, "reply": self.reply, "name": self.name,
                           "facts": [f.model_dump() for f in self.facts]})

    @classmethod
    def from_json(cls, line: str) -> Turn:
        data = json.loads(line)
        return cls(data["user"], data["said"], data["reply"], data["name"], [Fact(**f) for f in data["facts"]])


class Engine:
    def __init__(self, home: Home, settings: Settings, backend=None):
        self.home, self.settings, self.cfg = home, settings, settings.serve
        self.memory = Memory.open(home, settings, writable=False, backend=backend)
        self.replier = Replier(self.memory.backend, settings.chat)
        self.jobs: queue.Queue = queue.Queue(maxsize=self.cfg.queue)
        self.pending: list[Turn] = self._read_spool()
        self._pending_lock = threading.Lock()
        self.names: dict[str | None, str | None] = {}
        self.stamp = self._stamp()
        self.sleeper: subprocess.Popen | None = None
        self.stored_total = 0
        self._stop = threading.Event()
        self._flush_wanted = threading.Event()
        self.thread = threading.Thread(target=self._work, name="sleepwake-engine", daemon=True)
        self.thread.start()

    # ---- the worker ---------------------------------------------------------------------------
    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        try:
            self.jobs.put_nowait((fn, args, future))
        except queue.Full:
            raise QueueFull(f"{self.cfg.queue} requests are already waiting for the model") from None
        return future

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=60)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                fn, args, future = self.jobs.get(timeout=self.cfg.poll_s)
            except queue.Empty:
                self._guard(self.tick)
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001  (the caller sees it; the worker goes on)
                future.set_exception(exc)
            if self._flush_wanted.is_set() or self.jobs.empty():
                self._guard(self.tick)

    def _guard(self, fn: Callable) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (housekeeping must never stop the worker)
            log.warning("serve: %s", " ".join(str(exc).split()))

    def tick(self) -> None:
        """Store facts that waited for the lock; load the weights a finished sleep left."""
        self.flush()
        if not self._sleeping() and self._stamp() != self.stamp:
            self.memory.reload()
            self.stamp = self._stamp()
            log.info("serve: loaded the home's current weights (digest %s)", self.memory.weights_digest()[:12])

    # ---- answering (worker thread) --------------------------------------------------------------
    def prepare(self, user: str | None, said: str) -> tuple[str | None, list[Fact]]:
        """The name and facts the user's last message states (rules + firewall, as the chat)."""
        known = self._name(user)
        found = extract(said, known or user)
        return found.name, found.facts

    def answer(self, user: str | None, messages: list[dict], decoding: dict, stop: list[str],
               on_text: Callable[[str], None] | None = None) -> dict:
        """The reply, its usage and finish reason; ``decoding`` overrides chat settings (``max_new_tokens``,
        ``temperature``, ``top_p``) for this request, ``stop`` ends it before the first of these."""
        max_tokens = decoding["max_new_tokens"]
        chat, used = self._fit(user, messages, max_tokens)
        cfg = self.settings.chat.model_copy(update=decoding)
        reply = Replier(self.memory.backend, cfg).respond(chat, stop, on_text)
        usage = {"prompt_tokens": used, "completion_tokens": reply.tokens, "total_tokens": used + reply.tokens}
        return {"text": reply.text, "usage": usage, "finish": "length" if reply.tokens >= max_tokens and not reply.stopped
                else "stop"}

    def _fit(self, user: str | None, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
        """The conversation with sleepwake's system prompt when the client sent none (its identity
        part dropped if that is what does not fit); 400 when the client's own words do not fit."""
        from sleepwake.serve.protocol import ApiError

        if messages[0]["role"] == "system":
            options = [messages]
        else:
            options = [[{"role": "system", "content": system}, *messages] for system in self._system(user)]
        for chat in options:
            used = self.replier.count(chat)
            if used + max_tokens <= self.replier.budget:
                return chat, used
        raise ApiError(400, f"this conversation is {used} tokens and the reply may take {max_tokens}; the "
                       f"model's context is {self.replier.budget}", code="context_length_exceeded", param="messages")

    def status(self) -> dict:
        from sleepwake.status import collect_status

        return {**collect_status(self.memory, with_perplexity=False), "pending_facts": sum(len(t.facts) for t in self.pending),
                "sleeping": self._sleeping()}

    # ---- remembering --------------------------------------------------------------------------
    def remember_later(self, turn: Turn) -> None:
        """Queue the turn's facts for storing (any thread; called after the reply went out). They
        reach the spool file at once; the worker stores them after the request it is serving."""
        with self._pending_lock:
            self.pending.append(turn)
            self._write_spool()
        self._flush_wanted.set()

    def flush(self) -> None:
        """Store every waiting turn (worker thread), if the home's write lock is free."""
        self._flush_wanted.clear()
        with self._pending_lock:
            todo = list(self.pending)
        if not todo:
            return
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.home.write_lock())
            except HomeBusyError:
                return  # a sleep or another writer has the home: the facts wait in the spool
            self._store(Memory.open(self.home, self.settings, backend=self.memory.backend), todo)
            with self._pending_lock:
                self.pending = self.pending[len(todo):]
                self._write_spool()
        self.memory.reload()
        self.stamp = self._stamp()
        self._maybe_sleep()

    def _store(self, writer: Memory, turns: list[Turn]) -> None:
        """One batched wake for all the turns' facts (a key met twice waits for the next batch,
        so an accumulating attribute sees the value stored before it), then the conversation log."""
        ledger = writer.ledger
        records: list[list[dict]] = [[] for _ in turns]
        batch: list[tuple[int, Fact]] = []
        for index, turn in enumerate(turns):
            if turn.name:
                ledger.set_meta(self._name_key(turn.user), turn.name)
                self.names[turn.user] = turn.name
            for said in turn.facts:
                fact = to_store(said, ledger, ACCUMULATING, MAX_FIELD_CHARS)
                if fact is None:
                    records[index].append({**said.model_dump(), "status": "too_long"})
                    continue
                if any(f.key == fact.key for _, f in batch):
                    self._inject(writer, batch, records)
                    batch = []
                    fact = to_store(said, ledger, ACCUMULATING, MAX_FIELD_CHARS) or fact
                batch.append((index, fact))
        self._inject(writer, batch, records)
        for turn, turn_records in zip(turns, records):
            session = f"serve:{turn.user or 'owner'}"
            conversations.log_turn(ledger, session, "user", turn.said, turn_records)
            conversations.log_turn(ledger, session, "assistant", turn.reply)

    def _inject(self, writer: Memory, batch: list[tuple[int, Fact]], records: list[list[dict]]) -> None:
        if not batch:
            return
        for (index, fact), outcome in zip(batch, writer.inject([f for _, f in batch], source="serve")):
            records[index].append({**fact.model_dump(), "status": outcome.status, "edit_id": outcome.edit_id})
            self.stored_total += outcome.status != "unchanged"

    # ---- sleep --------------------------------------------------------------------------------
    def _sleeping(self) -> bool:
        running = self.sleeper is not None and self.sleeper.poll() is None
        return running or bool(SnapshotStore(self.home.root).open_snapshots())

    def _maybe_sleep(self) -> None:
        from sleepwake.status import current_drowsiness

        if self.cfg.auto_sleep != "run" or self._sleeping():
            return
        if current_drowsiness(self.memory.ledger, self.settings.health)["advice"] != "sleep":
            return
        if os.environ.get("PREFECT_API_URL"):
            # The deployment runs on the Prefect worker; Prefect's own CLI queues it, so this layer
            # stays free of Prefect imports and the server keeps answering while it sleeps.
            log.info("serve: drowsy, starting the full-sleep/on-demand deployment")
            command = ["-m", "prefect", "deployment", "run", "full-sleep/on-demand", "--param", f"home={self.home.root}"]
        else:
            log.info("serve: drowsy, starting a full sleep in another process")
            command = ["-m", "sleepwake.cli", "sleep", "--home", str(self.home.root), "-q"]
        self.sleeper = subprocess.Popen([sys.executable, *command], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)

    # ---- helpers ------------------------------------------------------------------------------
    def _name_key(self, user: str | None) -> str:
        return NAME_KEY if user is None else f"{NAME_KEY}:{user}"

    def _name(self, user: str | None) -> str | None:
        if user not in self.names:
            try:
                self.names[user] = self.memory.ledger.get_meta(self._name_key(user))
            except HomeBusyError:
                return None  # a writer held the ledger past its timeout: answer without the name
        return self.names[user]

    def _system(self, user: str | None) -> list[str]:
        """The system prompt, then the same without the identity answers (a small context)."""
        identity = " ".join(pair.answer for pair in load_identity(self.settings.chat.identity_file))
        name = self._name(user)
        who = f" The user's name is {name}." if name else ""
        return [f"You are a helpful assistant. {identity}{who}", f"You are a helpful assistant.{who}"]

    def _stamp(self) -> tuple:
        """What changes when another process changes the home (the ledger file and its log)."""
        files = [self.home.db_path, wal_path(self.home.db_path)]
        return tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)

    def _spool(self) -> Path:
        return self.home.root / SPOOL

    def _read_spool(self) -> list[Turn]:
        try:
            return [Turn.from_json(line) for line in self._spool().read_text(encoding="utf-8").splitlines() if line]
        except FileNotFoundError:
            return []

    def _write_spool(self) -> None:
        """Atomically: a server killed between a reply and its storing loses no fact."""
        staged = self._spool().with_name(SPOOL + ".tmp")
        staged.write_text("".join(t.as_json() + "\n" for t in self.pending), encoding="utf-8")
        os.replace(staged, self._spool())

