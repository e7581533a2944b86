"""``spml-loop``: the runner for long work (training checks, watchdog, rounds).

The verbs are declared here so ``spml-loop --help`` documents the whole
surface; those not built yet exit 2 with a clear "not yet" instead of
pretending to work.
"""

from __future__ import annotations

import sys
from typing import Sequence

from . import __version__
from .cliutil import EXIT_USAGE, ArgumentParser, add_output_options

_PLANNED = {
    "check": "one training check of a run's metrics: CONTINUE / WAIT / STOP with evidence",
    "watch": "supervise a training run: stop it on STOP, restart it from a checkpoint on environment failures",
    "run": "autoresearch rounds under autoresearch-protocol.md",
    "iterate": "ml-iteration rounds judged by compound criteria",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="spml-loop",
        description="pytest-spml runner for training checks, the watchdog and research rounds. "
                    "Exit codes: 0 pass, 1 a check failed, 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"pytest-spml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for verb, text in _PLANNED.items():
        verb_parser = sub.add_parser(verb, help=f"{text} (not yet available)", description=text, add_help=True)
        verb_parser.add_argument("rest", nargs="*", help="arguments, once the verb exists")
        add_output_options(verb_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, _unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: return, do not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    sys.stderr.write(
        f"spml-loop {args.command}: not yet available in pytest-spml {__version__}; "
        f"it is planned ({_PLANNED[args.command]}). See the README's roadmap.\n"
    )
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
