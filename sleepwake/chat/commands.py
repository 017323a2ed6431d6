"""Slash commands of the chat: /help /status /facts /forget /compact /nap /sleep /quit.

Each command is logged in the conversation table (role ``command``) with its outcome. A mistake
(unknown command, a fact that does not exist) prints one error note and the chat goes on.
"""

from __future__ import annotations

from sleepwake.errors import InvalidInputError, SleepwakeError
from sleepwake.storage import conversations

HELP = """commands:
  /status                     facts, edits, stages, drowsiness, weights digest
  /facts                      every stored fact
  /forget SUBJECT | RELATION  remove a fact exactly (without arguments: the last fact stored in this chat)
  /compact                    fold older turns into a short summary now
  /nap, /sleep                run the nap / full-sleep flow, then go on chatting
  /quit                       end the chat (also /exit or end of input)"""


def dispatch(session, line: str) -> str | None:
    """Run one slash command; returns "quit" to end the session."""
    name, _, arg = line[1:].partition(" ")
    name, arg = name.lower(), arg.strip()
    if name in ("quit", "exit", "bye", "q"):
        return "quit"
    handler = COMMANDS.get(name)
    outcome = "ok"
    try:
        if handler is None:
            raise InvalidInputError(f"unknown command '/{name}'; try /help")
        handler(session, arg)
    except SleepwakeError as exc:
        outcome = " ".join(str(exc).split())
        session.log.errors.append(outcome)
        session.note(f"error: {outcome}", error=True)
    if session.memory is not None:  # a failed sleep that could not reopen the home has none
        conversations.log_turn(session.memory.ledger, session.log.session_id, "command", line, [{"outcome": outcome}])
    return None


def cmd_help(session, arg: str) -> None:
    session.say(HELP)


def cmd_status(session, arg: str) -> None:
    from sleepwake.status import collect_status

    status = collect_status(session.memory, with_perplexity=False)
    drowsy = status["drowsiness"]
    session.say(f"facts {status['facts']}, edits {status['edits']}, stages {status['stages']}, "
                f"drowsiness {drowsy['level']:.2f} ({drowsy['advice']}), user {session.user_name or '-'}, "
                f"weights {status['weights_digest'][:16]}")


def cmd_facts(session, arg: str) -> None:
    rows = session.memory.ledger.list_facts()
    lines = [f"{r.fact.prompt()} -> {r.object}  (stage {r.stage})" for r in rows]
    session.say("\n".join(lines) if lines else "no facts stored")


def cmd_forget(session, arg: str) -> None:
    if arg:
        subject, sep, relation = arg.partition("|")
        if not sep or not subject.strip() or not relation.strip():
            raise InvalidInputError("usage: /forget SUBJECT | RELATION (or /forget alone for the last stored fact)")
        subject, relation = subject.strip(), relation.strip()
    elif session.log.stored:
        subject, relation = session.log.stored[-1]["subject"], session.log.stored[-1]["relation"]
    else:
        raise InvalidInputError("nothing stored in this chat yet; use /forget SUBJECT | RELATION")
    from sleepwake.sleep.forget import forget

    removed = forget(session.memory, subject, relation)
    session.log.forgotten.append(removed)
    session.log.stored = [r for r in session.log.stored
                          if (r["subject"], r["relation"]) != (removed["subject"], removed["relation"])]
    verdict = "verified: no probe produces it" if removed["verified"] else "NOT verified: a probe still produces it"
    session.note(f"forgot: {subject} | {relation} ({verdict})")


def cmd_compact(session, arg: str) -> None:
    summary = session.conversation.compact()
    if summary is None:
        session.note("nothing to compact")
        return
    conversations.log_turn(session.memory.ledger, session.log.session_id, "summary", summary)
    session.note(f"compacted: context now {session.conversation.tokens()} tokens")


def cmd_sleep(session, arg: str) -> None:
    session.sleep("sleep")


def cmd_nap(session, arg: str) -> None:
    session.sleep("nap")


COMMANDS = {"help": cmd_help, "status": cmd_status, "facts": cmd_facts, "forget": cmd_forget,
            "compact": cmd_compact, "sleep": cmd_sleep, "nap": cmd_nap}
