"""The wake conversation: read a turn, store what the user states, reply, log everything.

Per user turn: extract facts (rules, optionally the model) -> firewall -> inject each new or
changed fact at once (MEMIT; the same (subject, relation) replaces the old object) -> log the
turn with its facts -> reply through the chat template with the conversation as context ->
log the reply -> check drowsiness. Replies go to ``out``; notes ("remembered ...", errors,
suggestions) go to ``notes`` (stderr, silent with -q), so piped stdout is the conversation.

The session is the home's writer: it holds the write lock from start to end, except while a
nap or sleep flow runs (the flow opens the home itself under that lock and loads its own
model, so the session drops its model first and opens the home again afterwards).
"""

from __future__ import annotations

import gc
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from sleepwake.chat.commands import dispatch
from sleepwake.chat.context import Conversation
from sleepwake.chat.extract import PLACEHOLDER, Extraction, extract, merge_object
from sleepwake.chat.reply import Replier
from sleepwake.chat.patterns import ACCUMULATING
from sleepwake.chat.stored import FORMS, owned_by, rekey, stored_form, to_store
from sleepwake.chat.terminal import ChatIO, read_turn
from sleepwake.errors import SleepwakeError
from sleepwake.facts import MAX_FIELD_CHARS, Fact
from sleepwake.identity import load_identity
from sleepwake.storage import conversations

USER_NAME_KEY = "chat:user_name"
# Stored relations of multi-valued facts ("the user's allergies" | "{} include").
MULTI_VALUED = frozenset(FORMS[r][1] for r in ACCUMULATING)
IN_LEDGER = ("stored", "replaced", "unchanged")


@dataclass
class SessionLog:
    """What the session did, returned as the command's result (``--json``)."""

    session_id: str
    turns: list[dict] = field(default_factory=list)
    stored: list[dict] = field(default_factory=list)
    forgotten: list[dict] = field(default_factory=list)
    sleeps: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ChatSession:
    def __init__(self, home, settings, io: ChatIO, open_memory: Callable, run_flow: Callable[[str], dict] | None = None):
        self.home, self.settings, self.cfg, self.io = home, settings, settings.chat, io
        self.open_memory, self.run_flow = open_memory, run_flow
        self.log = SessionLog(session_id=uuid.uuid4().hex[:12])
        # Open only between acquire() and release() (a sleep in the chat drops them): Any, not Optional,
        # so the turn handlers, which run only while they are open, need no None checks.
        self.memory: Any = None
        self.replier: Any = None
        self.conversation: Any = None
        self._lock: Any = None
        self.user_name: str | None = None
        self.suggested: str | None = None  # last drowsiness advice shown (do not repeat it every turn)

    # ---- lifecycle ---------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the write lock and open the home (model, ledger)."""
        self._lock = self.home.write_lock()
        self._lock.__enter__()
        try:
            self.memory = self.open_memory()
        except BaseException:
            self.release()
            raise
        self.replier = Replier(self.memory.backend, self.cfg)
        self.user_name = self.memory.ledger.get_meta(USER_NAME_KEY)

    def release(self) -> None:
        self.memory = self.replier = None
        gc.collect()  # the model's memory is freed before a flow loads its own copy
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def run(self) -> dict:
        self.acquire()
        try:
            self.conversation = Conversation(self.system_prompt(), lambda m: self.replier.count(m),
                                             lambda: self.replier.budget, self.cfg.compact_at,
                                             self.cfg.keep_turns, self.cfg.max_new_tokens)
            self.note(f"chat session {self.log.session_id}: /help lists commands, /quit ends")
            while (line := read_turn(self.io, self.cfg.max_turn_chars, self.note)) is not None:
                if line.startswith("/"):
                    if dispatch(self, line) == "quit":
                        break
                elif line:
                    self.guarded(self.user_turn, line)
                if self.memory is None:  # a sleep ran but the home could not be opened again
                    raise SleepwakeError(f"chat ended: the home could not be reopened after a sleep "
                                         f"({self.log.errors[-1] if self.log.errors else 'unknown'})")
        finally:
            self.release()
        return self.summary()

    def guarded(self, action: Callable, *args) -> None:
        """A user-caused failure (busy home, bad fact, a failed sleep) is reported, not fatal."""
        try:
            action(*args)
        except SleepwakeError as exc:
            message = " ".join(str(exc).split())
            self.log.errors.append(message)
            self.note(f"error: {message}", error=True)

    # ---- output -----------------------------------------------------------------------------
    def note(self, text: str, error: bool = False) -> None:
        if self.io.notes is not None and (error or not self.io.quiet):
            self.io.notes.write(f"[{text}]\n")
            self.io.notes.flush()

    def say(self, text: str) -> None:
        self.io.out.write(text + "\n")
        self.io.out.flush()

    def system_prompt(self) -> str:
        identity = " ".join(pair.answer for pair in load_identity(self.cfg.identity_file))
        who = f" The user's name is {self.user_name}." if self.user_name else ""
        return f"You are a helpful assistant. {identity}{who}"

    # ---- a user turn -------------------------------------------------------------------------
    def user_turn(self, text: str) -> None:
        extraction = extract(text, self.user_name, model=self.model_extractor())
        records = self.adopt_name(extraction.name) if extraction.name else []
        records += self.store(extraction)
        conversations.log_turn(self.memory.ledger, self.log.session_id, "user", text, records)
        self.conversation.add("user", text)
        summary = self.conversation.fit()
        if summary:
            conversations.log_turn(self.memory.ledger, self.log.session_id, "summary", summary)
        reply = self.respond()
        conversations.log_turn(self.memory.ledger, self.log.session_id, "assistant", reply)
        self.conversation.add("assistant", reply)
        self.log.turns.append({"user": text, "assistant": reply, "facts": records})
        if any(r["status"] in ("stored", "replaced") for r in records):
            self.check_drowsiness()

    def model_extractor(self):
        if self.cfg.extractor != "rules+model":
            return None
        from sleepwake.chat.model_extract import ModelExtractor

        return ModelExtractor(self.memory.backend)

    def respond(self) -> str:
        stream = self.io.stream
        if stream:
            self.io.out.write("assistant> " if self.io.prompt else "")
        reply = self.replier.reply(self.conversation.render(), on_text=self._stream if stream else None)
        if stream:
            self.io.out.write("\n")
            self.io.out.flush()
        else:
            self.say(reply)
        return reply

    def _stream(self, text: str) -> None:
        self.io.out.write(text)
        self.io.out.flush()

    # ---- facts -------------------------------------------------------------------------------
    def store(self, extraction: Extraction) -> list[dict]:
        """Inject each extracted fact (multi-valued relations add to the stored object)."""
        records = [{**r, "status": "rejected"} for r in extraction.rejected]
        for fact in extraction.facts:
            records.append(self.store_one(fact))
        return records

    def store_one(self, said: Fact) -> dict:
        """Store one extracted fact in its stored form (``chat.stored``); multi-valued relations
        add the new object to the stored one."""
        fact = to_store(said, self.memory.ledger, ACCUMULATING, MAX_FIELD_CHARS)
        if fact is None:
            form = stored_form(said)
            self.note(f"not stored: {form.prompt()} {form.object!r} would make the list too long; /forget some first")
            return {**form.model_dump(), "status": "too_long"}
        return self.inject_stored(fact)

    def inject_stored(self, fact: Fact) -> dict:
        if not self.cfg.inject:
            return {**fact.model_dump(), "status": "extracted"}
        try:
            [outcome] = self.memory.inject([fact], source="chat")
        except SleepwakeError as exc:
            self.note(f"could not store {fact.prompt()} {fact.object}: {exc}", error=True)
            return {**fact.model_dump(), "status": "error", "error": " ".join(str(exc).split())}
        record = {**fact.model_dump(), "status": outcome.status, "edit_id": outcome.edit_id}
        if outcome.status != "unchanged":
            self.log.stored.append(record)
            self.note(f"{'remembered' if outcome.status == 'stored' else 'updated'}: {fact.prompt()} {fact.object}")
        return record

    def adopt_name(self, name: str) -> list[dict]:
        """Use ``name`` as the user's subject from now on; re-store facts kept under the previous
        subject (the placeholder, or an old name) under it. A fact the name already holds for the
        same relation is kept when it is newer; the older one is then only dropped."""
        ledger, old = self.memory.ledger, self.user_name or PLACEHOLDER
        ledger.set_meta(USER_NAME_KEY, name)
        self.user_name = name
        self.conversation.system = self.system_prompt()
        records = [{"subject": old, "relation": "name", "object": name, "status": "name"}]
        self.note(f"you are {name}")
        for row in [r for r in ledger.list_facts() if owned_by(r.subject, old)]:
            copy = Fact(subject=rekey(row.subject, old, name), relation=row.relation, object=row.object)
            moved: Fact | None = copy
            current = ledger.find_fact(copy.subject, copy.relation)
            if current is not None and current.updated_at >= row.updated_at:
                if row.relation in MULTI_VALUED:
                    moved = Fact(subject=copy.subject, relation=copy.relation, object=merge_object(current.object, row.object))
                else:
                    moved = None  # the name already holds a newer object for it
            if moved is not None:
                records.append(self.inject_stored(moved))
                if records[-1]["status"] not in IN_LEDGER:
                    continue  # never drop the old fact before its copy is stored
            self.memory.remove_fact(row.subject, row.relation)
            records.append({**row.fact.model_dump(), "status": "moved"})
        return records

    # ---- drowsiness --------------------------------------------------------------------------
    def check_drowsiness(self) -> None:
        from sleepwake.status import current_drowsiness

        level = current_drowsiness(self.memory.ledger, self.settings.health)
        advice = level["advice"]
        if advice == "awake" or self.cfg.auto_sleep == "off":
            self.suggested = None if advice == "awake" else self.suggested
            return
        if self.cfg.auto_sleep == "run" and self.run_flow is not None:
            self.note(f"drowsiness {level['level']:.2f}: running a {advice}")
            self.sleep(advice)
        elif self.suggested != advice:
            self.suggested = advice
            self.note(f"drowsiness {level['level']:.2f}: a {advice} is due; type /{advice}")

    def sleep(self, kind: str) -> None:
        """Run the nap or full-sleep flow with the home released, then open it again."""
        if self.run_flow is None:
            raise SleepwakeError("sleep is not available in this session")
        self.release()
        report: dict = {"kind": kind, "error": "interrupted"}
        try:
            report = self.run_flow(kind)
        except SleepwakeError as exc:
            report = {"kind": kind, "error": " ".join(str(exc).split())}
            raise
        finally:
            self.log.sleeps.append(report)
            self.acquire()
        self.note(f"{report.get('kind', kind)}: {report.get('outcome', 'done')}, raw recall "
                  f"{report.get('raw_recall_before')} -> {report.get('raw_recall_after')}, {report.get('seconds')} s")

    def summary(self) -> dict:
        log = self.log
        return {"session_id": log.session_id, "user_name": self.user_name, "turns": log.turns,
                "stored": log.stored, "forgotten": log.forgotten, "sleeps": log.sleeps, "errors": log.errors}
