"""The ``sleepwake`` command line (contract: ../shared/DESIGN.md).

Every command takes ``--home``, ``--config`` and repeated ``--set key=value``; ``--json`` prints
one JSON document on stdout while logs and progress go to stderr. User mistakes exit non-zero
with one ``sleepwake: error: ...`` line and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from sleepwake.errors import InvalidInputError, SleepwakeError

log = logging.getLogger("sleepwake")
# Kept here (not imported from sleepwake.experiments) so that --help stays instant.
EXPERIMENT_NAMES = ["capacity", "convergence", "lambda-sweep", "consolidation-sweep", "longevity", "ablation"]
COMMON_HELP = ("common options (every command): --home DIR, --config PRESET_OR_FILE, "
               "--set KEY=VALUE (repeatable), --json, -q; see 'sleepwake COMMAND --help'")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one 'sleepwake: error:' line like every other error."""

    def error(self, message: str):
        self.exit(2, f"sleepwake: error: {message} (see '{self.prog} --help')\n")


def common_options() -> argparse.ArgumentParser:
    parent = OneLineParser(add_help=False)
    parent.add_argument("--home", help="state folder (default: $SLEEPWAKE_HOME, else ~/.local/share/sleepwake)")
    parent.add_argument("--config", help="preset name (default, llama-3.2-3b, ...) or a YAML file")
    parent.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set memit.lambda_reg=1.0e-1 (repeatable)")
    parent.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parent.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parent = common_options()
    parser = OneLineParser(
        prog="sleepwake",
        description="Persistent memory for a local language model: facts go into its MLP weights "
        "(MEMIT) and are maintained by sleep.",
        epilog=COMMON_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    inject = sub.add_parser("inject", parents=[parent], help="store facts in the weights (wake)",
                            description="Store facts in the model's weights with MEMIT: facts are solved in batches "
                            "(memit.wake_batch per solve) and stored as one edit per subject key.")
    inject.add_argument("subject", nargs="?", help="who or what the fact is about")
    inject.add_argument("relation", nargs="?", help="relation phrase ('lives in') or template ('{}\\'s dog is')")
    inject.add_argument("object", nargs="?", help="the answer ('Thessaloniki')")
    inject.add_argument("--facts", metavar="FILE", help="JSONL file or JSON list of {subject, relation, object}")
    inject.add_argument("--one-by-one", action="store_true",
                        help="one MEMIT solve and one edit per fact (default: memit.wake_batch facts per solve)")
    sub.add_parser("recall", parents=[parent], help="audit every fact (raw, paraphrase, chat); changes nothing",
                   description="Probe every stored fact by greedy raw completion, paraphrases and chat.")
    status = sub.add_parser("status", parents=[parent], help="facts, edits, perplexity, drowsiness, digest",
                            description="Summarise the home: counts, perplexity vs baseline, drowsiness, weights digest.")
    status.add_argument("--no-perplexity", action="store_true", help="skip the perplexity measurement (faster)")
    forget = sub.add_parser("forget", parents=[parent], help="forget a fact: its edit and what the adapters know",
                            description="Forget a stored fact: its MEMIT edit is subtracted exactly; if the consolidated "
                            "adapters still answer it, a short unlearning pass trains them towards the base model's own "
                            "answers. The object is redacted from the conversation log and only its hash is kept, so "
                            "later sleeps can prove it stays gone. Prints the probes it verified.")
    forget.add_argument("subject")
    forget.add_argument("relation")
    ask = sub.add_parser("ask", parents=[parent], help="the model's greedy answer from its weights alone",
                         description="Ask the model a question with an empty context (chat template), greedy; "
                         "--raw completes a raw prompt instead. Shows what the weights know.")
    ask.add_argument("question")
    ask.add_argument("--raw", action="store_true", help="complete QUESTION as a raw prompt (no chat template)")
    ask.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                     help="answer length limit (default: chat.max_new_tokens)")
    sub.add_parser("nap", parents=[parent], help="run the nap flow: health check, audit of recent facts, report",
                   description="Run the nap flow (Prefect; ephemeral unless PREFECT_API_URL is set). "
                   "Changes no weights unless --set nap.reinforce=true (a gated LoRA pass on MEMIT-held facts).")
    sub.add_parser("sleep", parents=[parent], help="run the full-sleep flow: audit, refresh, consolidate, validate, report",
                   description="Run the full-sleep flow (Prefect; ephemeral unless PREFECT_API_URL is set): "
                   "audit every fact, refresh degraded edits under null-space constraints, consolidate "
                   "facts into the chat pathway (SWS LoRA, staged MEMIT dissolution; REM dreams), gate on "
                   "perplexity and recall (--set validate.max_ppl_increase=...), roll back if a gate fails. "
                   "--set sws.enabled=false / rem.enabled=false switch consolidation off for one run.")
    sub.add_parser("chat", parents=[parent], help="talk with the model; what you state about yourself is stored",
                   description="The wake conversation (stdin: a terminal or a pipe). Facts you state about "
                   "yourself are stored in the weights at once. Commands: /status /facts /forget /compact "
                   "/nap /sleep /quit. With --json the replies go to stderr and a session summary to stdout.")
    experiment = sub.add_parser(
        "experiment", parents=[parent], help="run an experiment flow; results.json and PNG plots go to --out",
        description="Run one experiment as a Prefect flow (ephemeral unless PREFECT_API_URL is set) on fresh "
        "homes under --out (--home is not used). Sizes and grids: --set experiment.KEY=VALUE, e.g. "
        "--set experiment.max_facts=20. Writes results.json, results.duckdb and PNG plots into --out.")
    experiment.add_argument("name", choices=EXPERIMENT_NAMES, metavar="NAME",
                            help="one of: " + ", ".join(EXPERIMENT_NAMES))
    experiment.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    return parser


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def facts_from_args(args) -> list:
    from sleepwake.facts import load_facts, parse_fact

    given = [args.subject, args.relation, args.object]
    if args.facts and any(given):
        raise InvalidInputError("give either SUBJECT RELATION OBJECT or --facts FILE, not both")
    if args.facts:
        return load_facts(args.facts)
    if not all(given):
        raise InvalidInputError("inject needs SUBJECT RELATION OBJECT (three arguments) or --facts FILE")
    return [parse_fact({"subject": args.subject, "relation": args.relation, "object": args.object}, "argument")]


def open_memory(args, writable: bool, tolerate_corrupt: bool = False):
    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    settings = load_settings(args.config, args.overrides)
    home = Home.open(args.home, create=writable)
    return home, Memory.open(home, settings, writable=writable, tolerate_corrupt=tolerate_corrupt)


def cmd_inject(args) -> dict:
    from tqdm import tqdm

    from sleepwake.config import load_settings
    from sleepwake.storage.home import Home

    facts = facts_from_args(args)  # validate input and settings before loading a model
    load_settings(args.config, args.overrides)
    home = Home.open(args.home)
    with home.write_lock():
        _, memory = open_memory(args, writable=True)
        bar = tqdm(total=len(facts), desc="inject", unit="fact", file=sys.stderr, disable=args.quiet or len(facts) < 2)
        outcomes = memory.inject(facts, one_by_one=args.one_by_one,
                                 progress=lambda o: (bar.update(1), bar.set_postfix_str(f"{o.status} {o.seconds:.1f}s/fact")))
        bar.close()
        result = {"injected": [o.as_dict() for o in outcomes], "facts": len(memory.ledger.list_facts()),
                  "weights_digest": memory.weights_digest()}
        settings, ledger = memory.settings, memory.ledger
    del memory  # the flow loads its own model: don't hold two
    result["auto_sleep"] = auto_sleep(args, settings, ledger)  # after the lock is released: the flow takes it
    return result


def auto_sleep(args, settings, ledger) -> dict | None:
    """With ``sleep.auto``, run a nap or full sleep when drowsiness crosses its threshold. The
    inject has already succeeded: a failing sleep is reported in the result, not as the exit code."""
    from sleepwake.status import current_drowsiness

    if not settings.sleep.auto:
        return None
    level = current_drowsiness(ledger, settings.health)
    if level["advice"] == "awake":
        return None
    log.info("drowsiness %.2f: running a %s", level["level"], level["advice"])
    try:
        return cmd_sleep(args, kind=level["advice"])
    except SleepwakeError as exc:
        log.error("automatic %s failed: %s", level["advice"], exc)
        return {"error": " ".join(str(exc).split())}


def cmd_recall(args) -> dict:
    _, memory = open_memory(args, writable=False)
    rows = memory.recall()
    n = len(rows)
    summary = {"n": n, "raw": sum(r["raw"] for r in rows) / n if n else None}
    if n and rows[0]["paraphrase"] is not None:
        summary["paraphrase"] = sum(r["paraphrase"] for r in rows) / n
    if n and rows[0]["chat"] is not None:
        summary["chat"] = sum(r["chat"] for r in rows) / n
    return {"facts": rows, "summary": summary}


def cmd_status(args) -> dict:
    from sleepwake.status import collect_status

    _, memory = open_memory(args, writable=False)
    return collect_status(memory, with_perplexity=not args.no_perplexity)


def cmd_forget(args) -> dict:
    from sleepwake.storage.home import Home

    home = Home.open(args.home)
    with home.write_lock():
        # A corrupted factor file must not block removing its own fact (the error message says to).
        _, memory = open_memory(args, writable=True, tolerate_corrupt=True)
        from sleepwake.sleep.forget import forget

        removed = forget(memory, args.subject, args.relation)
        return {"forgotten": removed, "facts": len(memory.ledger.list_facts()), "weights_digest": memory.weights_digest()}


def cmd_ask(args) -> dict:
    """The model's greedy answer from its weights alone (empty context)."""
    from sleepwake.models.locality import trim

    _, memory = open_memory(args, writable=False)
    backend, budget = memory.backend, args.max_new_tokens or memory.settings.chat.max_new_tokens
    ids = backend.encode(args.question) if args.raw else backend.chat_ids(args.question)
    answer = backend.decode(trim(backend.generate_ids([ids], budget)[0], backend))
    return {"question": args.question, "answer": answer.strip() if not args.raw else answer}


def cmd_sleep(args, kind: str | None = None) -> dict:
    """Run the nap or full-sleep flow (``kind``, default the command) in this process; return its report."""
    from sleepwake.config import load_settings
    from sleepwake.storage.home import Home

    load_settings(args.config, args.overrides)  # a bad --set fails before Prefect starts
    Home.open(args.home, create=False)
    if args.quiet:  # read when Prefect is first imported
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from sleepwake.flows.full_sleep import full_sleep
    from sleepwake.flows.nap import nap

    flow = nap if (kind or args.command) == "nap" else full_sleep
    return flow(home=args.home, config=args.config, overrides=list(args.overrides))


def cmd_experiment(args) -> dict:
    """Run the experiment's flow in this process; the result is its summary and where files went."""
    from sleepwake.config import load_settings
    from sleepwake.experiments.runner import prepare_out

    load_settings(args.config, args.overrides)  # a bad --set fails before a model or Prefect loads
    prepare_out(args.out)
    if args.quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from sleepwake.flows.experiments import FLOWS

    return FLOWS[args.name](out=args.out, config=args.config, overrides=list(args.overrides))


def cmd_chat(args) -> dict:
    from sleepwake.chat.session import ChatSession
    from sleepwake.chat.terminal import default_io
    from sleepwake.config import load_settings
    from sleepwake.storage.home import Home

    settings = load_settings(args.config, args.overrides)
    session = ChatSession(Home.open(args.home), settings, default_io(args.quiet, args.json, settings.chat.stream),
                          open_memory=lambda: open_memory(args, writable=True)[1],
                          run_flow=lambda kind: cmd_sleep(args, kind=kind))
    return session.run()


def render_text(command: str, result: dict) -> str:
    """Human-readable output for each command (``--json`` prints ``result`` as is)."""
    if command == "inject":
        lines = [f"{r['status']:9s} {r['subject']} | {r['relation']} -> {r['object']}"
                 + (f"  (edit {r['edit_id']}, {r['seconds']:.1f} s)" if r["status"] != "unchanged" else "")
                 for r in result["injected"]]
        return "\n".join(lines + [f"{result['facts']} fact(s) stored; weights {result['weights_digest'][:16]}"])
    if command == "recall":
        mark = {True: "yes", False: "no", None: "-"}
        lines = [f"{'raw':4s} {'para':5s} {'chat':4s} fact -> completion"]
        for r in result["facts"]:
            para = "-" if r["paraphrase"] is None else f"{r['paraphrase']:.2f}"
            lines.append(f"{mark[r['raw']]:4s} {para:5s} {mark[r['chat']]:4s} "
                         f"{r['subject']} | {r['relation']} -> {r['object']}: {r['raw_text'].strip()[:60]!r}")
        summary = result["summary"]
        lines.append("recall: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in summary.items() if v is not None))
        return "\n".join(lines)
    if command == "forget":
        f = result["forgotten"]
        lines = [f"forgot {f['subject']} | {f['relation']}; {result['facts']} fact(s) left; "
                 f"{f['unlearning_passes']} unlearning pass(es); {f['redacted_turns']} logged message(s) redacted",
                 "verified: no probe produces it" if f["verified"] else "NOT verified: a probe still produces it"]
        lines += [f"  {p['kind']:10s} {p['prompt']!r} -> {p['answer'][:60]!r}" for p in f["probes"]]
        return "\n".join(lines)
    if command == "ask":
        return result["answer"]
    if command == "chat":
        return (f"[chat {result['session_id']}: {len(result['turns'])} turn(s), {len(result['stored'])} fact(s) "
                f"stored, {len(result['forgotten'])} forgotten]")
    if command in ("nap", "sleep"):
        from sleepwake.sleep.report import Report, render_markdown

        return render_markdown(Report.model_validate(result))
    if command == "experiment":
        from sleepwake.experiments.summary import render_markdown

        path = os.path.join(result["out"], "results.json")
        with open(path, encoding="utf-8") as handle:
            return render_markdown(json.load(handle), result["out"])
    width = max(len(k) for k in result)
    return "\n".join(f"{k:{width}s}  {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in result.items())


COMMANDS = {"inject": cmd_inject, "recall": cmd_recall, "status": cmd_status, "forget": cmd_forget, "ask": cmd_ask,
            "nap": cmd_sleep, "sleep": cmd_sleep, "chat": cmd_chat, "experiment": cmd_experiment}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        result = COMMANDS[args.command](args)
    except SleepwakeError as exc:
        message = " ".join(str(exc).split())  # one line, always
        print(f"sleepwake: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sleepwake: interrupted; the home is consistent (changes are atomic)", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2, default=str) if args.json else render_text(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
