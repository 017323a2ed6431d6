"""What each ``sleepwake`` command does; every one returns its result document (a dict)."""

from __future__ import annotations

import logging
import os
import sys

from sleepwake.errors import InvalidInputError, SleepwakeError

log = logging.getLogger("sleepwake")


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
    missing = not writable and not home.db_path.is_file()
    memory = Memory.open(home, settings, writable=writable, tolerate_corrupt=tolerate_corrupt)
    if missing:  # said once the model has loaded: a failure to load stays a one-line error
        log.warning("no sleepwake home at %s yet (no ledger.duckdb): read as an empty memory, and nothing is "
                    "created there; check --home if you expected facts", home.root)
    return home, memory


def cmd_inject(args) -> dict:
    from tqdm import tqdm

    from sleepwake.config import load_settings
    from sleepwake.status import unslept_facts, waiting_warning
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
    result["waiting_for_sleep"] = waiting = unslept_facts(ledger)
    if not settings.sleep.auto and (warning := waiting_warning(waiting, settings.health)):
        log.warning(warning)
        result["warning"] = warning
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
    Home.existing(args.home)  # a missing home is one line, before Prefect starts
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

    if args.resume and args.name != "longevity":
        raise InvalidInputError("--resume is supported by the longevity experiment only")
    extra = {"resume": True} if args.resume else {}
    return FLOWS[args.name](out=args.out, config=args.config, overrides=list(args.overrides), **extra)


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


def cmd_serve(args) -> dict:
    """Run the OpenAI-compatible server until interrupted (the home must exist)."""
    import uvicorn

    from sleepwake.config import load_settings
    from sleepwake.serve.app import create_app, is_loopback
    from sleepwake.serve.engine import Engine
    from sleepwake.storage.home import Home

    settings = load_settings(args.config, args.overrides)
    cfg = settings.serve
    host, port = args.host or cfg.host, args.port or cfg.port
    key = cfg.api_key or os.environ.get("SLEEPWAKE_API_KEY") or None
    if not is_loopback(host) and not key:
        raise InvalidInputError(f"serving on {host} needs an API key: set $SLEEPWAKE_API_KEY or --set serve.api_key=...")
    engine = Engine(Home.existing(args.home, create=args.create), settings)
    log.info("serving %s on http://%s:%d/v1 (model %r%s)", engine.home.root, host, port, cfg.model_name,
             ", API key required" if key else "")
    try:
        uvicorn.run(create_app(engine, key), host=host, port=port, log_level="warning")
    finally:
        engine.close()
    return {"served": str(engine.home.root), "stored": engine.stored_total}


def cmd_config(args) -> dict:
    """``config list``: the presets; ``config show``: effective settings with their descriptions."""
    from sleepwake.config import PRESETS_DIR, describe_settings, list_presets, load_settings

    if args.action == "list":
        return {"presets": list_presets(), "folder": str(PRESETS_DIR)}
    return {"config": args.config or "default", "settings": describe_settings(load_settings(args.config, args.overrides))}


COMMANDS = {"config": cmd_config, "serve": cmd_serve, "inject": cmd_inject, "recall": cmd_recall, "status": cmd_status, "forget": cmd_forget, "ask": cmd_ask,
            "nap": cmd_sleep, "sleep": cmd_sleep, "chat": cmd_chat, "experiment": cmd_experiment}


