"""``spml-loop``: the runner for long work (training checks, watchdog, rounds).

The verbs are declared here so ``spml-loop --help`` documents the whole
surface; those not built yet exit 2 with a clear "not yet" instead of
pretending to work.
"""

from __future__ import annotations

import sys
from typing import Sequence

from . import __version__
from .cliutil import EXIT_USAGE, ArgumentParser, execute, import_command

# verb -> module under pytest_spml.commands, imported only when needed.
VERBS = {
    "check": "loop_check",
    "watch": "loop_watch",
    "run": "loop_run",
    "iterate": "loop_iterate",
    "status": "loop_status",
    "report": "loop_report",
    "pause": "loop_control",
    "unpause": "loop_control",
    "note": "loop_control",
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
    modules = dict.fromkeys(VERBS[verb] for verb in _requested(argv))  # one module may serve several verbs
    for module in modules:
        import_command(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            parser.parse_args(argv)  # no verb takes unknown arguments: a one-line usage error
    except SystemExit as exc:  # --help, --version and usage errors: return, do not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return execute(args.tool, args.run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
