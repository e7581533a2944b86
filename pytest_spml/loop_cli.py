"""``spml-loop``: the runner for long work (training checks, watchdog, rounds).

The verbs are declared here so ``spml-loop --help`` documents the whole
surface; those not built yet exit 2 with a clear "not yet" instead of
pretending to work.
"""

from __future__ import annotations

import sys
from typing import Sequence

from . import __version__
from .cliutil import EXIT_USAGE, ArgumentParser, add_output_options, error_document, execute, import_command, wants_json

# verb -> module under pytest_spml.commands, imported only when needed.
VERBS = {
    "check": "loop_check",
    "watch": "loop_watch",
    "run": "loop_run",
    "iterate": "loop_iterate",
    "status": "loop_status",
    "report": "loop_report",
}
_PLANNED = {
    "watch": "supervise a training run: stop it on STOP, restart it from a checkpoint on environment failures",
    "run": "autoresearch rounds under autoresearch-protocol.md",
    "iterate": "ml-iteration rounds judged by compound criteria",
    "status": "the state of the rounds in this repository",
    "report": "a table and a plot of the rounds so far",
}


def _requested(argv: Sequence[str]) -> list[str]:
    for arg in argv:
        if not arg.startswith("-"):
            return [arg] if arg in VERBS else list(VERBS)
    return list(VERBS)


def build_parser(argv: Sequence[str] = ()) -> ArgumentParser:
    parser_class = ArgumentParser.for_argv(argv)
    parser = parser_class(
        prog="spml-loop",
        description="pytest-spml runner for training checks, the watchdog and research rounds. "
                    "Exit codes: 0 pass, 1 a check failed, 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"pytest-spml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    for verb in _requested(argv):
        module = import_command(VERBS[verb])
        if module is not None:
            module.add_parser(sub)
            continue
        text = _PLANNED[verb]
        verb_parser = sub.add_parser(verb, help=f"{text} (not yet available)", description=text, add_help=True)
        verb_parser.add_argument("rest", nargs="*", help="arguments, once the verb exists")
        add_output_options(verb_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and hasattr(args, "run"):
            parser.parse_args(argv)  # implemented verbs take no unknown arguments: a one-line usage error
    except SystemExit as exc:  # --help, --version and usage errors: return, do not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if hasattr(args, "run"):
        return execute(args.tool, args.run, args)
    message = (f"not yet available in pytest-spml {__version__}; it is planned "
               f"({_PLANNED[args.command]}); see the status table in the README")
    sys.stderr.write(f"spml-loop {args.command}: {message}\n")
    if wants_json(argv):
        sys.stdout.write(error_document(f"spml-loop {args.command}", message) + "\n")
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
