"""``spml``: the gates and tools (plan gate, Fixed-file compliance, init)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import __version__
from .cliutil import EXIT_USAGE, ArgumentParser, execute, import_command

# command name -> module under pytest_spml.commands. Only the module of the
# command being run is imported: the hooks start on every commit, and the
# plan gate's rules need not load to check Fixed files.
COMMANDS = {
    "plan-gate": "plan_gate",
    "fixed-files": "fixed_files",
    "init": "init",
    "l0": "l0",
    "conclude": "conclude",
    "handoff": "handoff",
    "diagnose": "diagnose",
}


def _requested(argv: Sequence[str]) -> list[str]:
    """The command modules to load: the one named on the command line, or all (for help)."""
    for arg in argv:
        if not arg.startswith("-"):
            return [COMMANDS[arg]] if arg in COMMANDS else list(COMMANDS.values())
    return list(COMMANDS.values())


def build_parser(argv: Sequence[str] = ()) -> ArgumentParser:
    parser_class = ArgumentParser.for_argv(argv)
    parser = parser_class(
        prog="spml",
        description="pytest-spml gates for ML experiments. Exit codes: 0 pass, 1 a check failed, 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"pytest-spml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    for module in _requested(argv):
        import_command(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
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
