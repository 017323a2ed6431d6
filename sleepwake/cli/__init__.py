"""The ``sleepwake`` command line (contract: ../shared/DESIGN.md).

Every command takes ``--home``, ``--config`` and repeated ``--set key=value``, before or after the
command; ``--json`` prints one JSON document on stdout while logs and progress go to stderr. User
mistakes exit non-zero with one ``sleepwake: error: ...`` line and no traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from sleepwake.cli.commands import COMMANDS, setup_logging
from sleepwake.cli.parser import parse
from sleepwake.cli.render import render_text
from sleepwake.errors import SleepwakeError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
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
    try:
        print(json.dumps(result, indent=2, default=str) if args.json else render_text(args.command, result))
        sys.stdout.flush()
    except BrokenPipeError:  # `sleepwake status --json | head`: the reader left; the work is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # what a shell reports for SIGPIPE
    return 0


