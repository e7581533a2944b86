"""``spml``: the gates and tools (plan gate, Fixed-file compliance, init)."""

from __future__ import annotations

import sys
from typing import Sequence

from . import __version__
from .cliutil import EXIT_USAGE, ArgumentParser, execute
from .commands import fixed_files, init, plan_gate


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="spml",
        description="pytest-spml gates for ML experiments. Exit codes: 0 pass, 1 a check failed, 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"pytest-spml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    plan_gate.add_parser(sub)
    fixed_files.add_parser(sub)
    init.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: return, do not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return execute(args.tool, args.run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
