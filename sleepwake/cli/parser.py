"""The ``sleepwake`` command line's parser (contract: ../shared/DESIGN.md).

Common options (``--home``, ``--config``, repeated ``--set``, ``--json``, ``-q``) are accepted
before or after the command (``sleepwake --home DIR status`` and ``sleepwake status --home
DIR``); after the command they win, and ``--set`` values from both places add up.
"""

from __future__ import annotations

import argparse

from sleepwake import __version__


# Kept here (not imported from sleepwake.experiments) so that --help stays instant.
EXPERIMENT_NAMES = ["capacity", "convergence", "lambda-sweep", "consolidation-sweep", "longevity", "ablation", "locality", "forgetting"]
COMMON_HELP = ("common options (every command, before or after it): --home DIR, --config PRESET_OR_FILE, "
               "--set KEY=VALUE (repeatable), --json, -q; see 'sleepwake COMMAND --help'")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one 'sleepwake: error:' line like every other error."""

    def error(self, message: str):
        self.exit(2, f"sleepwake: error: {message} (see '{self.prog} --help')\n")


def common_options(suppress: bool) -> argparse.ArgumentParser:
    """The shared options; after the command (``suppress``) an absent option leaves the value
    given before the command in place."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parent = OneLineParser(add_help=False)
    parent.add_argument("--home", help="state folder (default: $SLEEPWAKE_HOME, else ~/.local/share/sleepwake)",
                        **(default or {"default": None}))
    parent.add_argument("--config", help="preset name (default, llama-3.2-3b, ...) or a YAML file",
                        **(default or {"default": None}))
    parent.add_argument("--set", dest="overrides_after" if suppress else "overrides", action="append",
                        metavar="KEY=VALUE", help="override a setting, e.g. --set memit.lambda_reg=1.0e-1 (repeatable)",
                        default=[])
    parent.add_argument("--json", action="store_true", help="print one JSON document on stdout",
                        **(default or {"default": False}))
    parent.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr",
                        **(default or {"default": False}))
    return parent


def parse(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.overrides = [*args.overrides, *getattr(args, "overrides_after", [])]
    return args


def build_parser() -> argparse.ArgumentParser:
    parent = common_options(suppress=True)
    parser = OneLineParser(
        parents=[common_options(suppress=False)],
        prog="sleepwake",
        description="Persistent memory for a local language model: facts go into its MLP weights "
        "(MEMIT) and are maintained by sleep.",
        epilog=COMMON_HELP,
    )
    parser.add_argument("--version", action="version", version=f"sleepwake {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for add_commands in (add_serving_commands, add_memory_commands, add_run_commands):
        add_commands(sub, parent)
    return parser


def add_serving_commands(sub, parent: argparse.ArgumentParser) -> None:
    """serve, config."""
    serve = sub.add_parser("serve", parents=[parent], help="an OpenAI-compatible chat API over the home",
                           description="Serve the memory to chat apps over the OpenAI chat-completions API "
                           "(base URL http://HOST:PORT/v1, model 'sleepwake'). What users state is remembered, "
                           "as in 'sleepwake chat'. Loopback by default; any other host needs an API key "
                           "($SLEEPWAKE_API_KEY or --set serve.api_key=...).")
    serve.add_argument("--host", default=None, help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000)")
    serve.add_argument("--create", action="store_true",
                       help="start a new, empty memory when the home does not exist (default: refuse a missing home)")
    config = sub.add_parser("config", parents=[parent], help="the presets, and the effective settings with descriptions",
                            description="'config list' names the presets shipped with sleepwake; 'config show' prints "
                            "the effective settings (preset + --set) with each field's description.")
    config.add_argument("action", choices=["list", "show"], help="list | show")


def add_memory_commands(sub, parent: argparse.ArgumentParser) -> None:
    """inject, recall, status, forget, ask: one command, one change to (or look at) the memory."""
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


def add_run_commands(sub, parent: argparse.ArgumentParser) -> None:
    """nap, sleep, chat, experiment: the flows and the conversation."""
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
    experiment.add_argument("--resume", action="store_true",
                            help="continue an interrupted run in --out after its last finished night (longevity)")
