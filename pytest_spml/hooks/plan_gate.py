"""pre-commit hook ``spml-plan-gate``: gate the staged experiment plans.

pre-commit passes the staged files that match the hook's ``files`` pattern
(``pass_filenames: true``). The hook is the ``spml plan-gate`` command with
those files as its arguments: same options, same report, same exit codes.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ..cliutil import EXIT_OK, ArgumentParser, execute
from ..commands.plan_gate import configure_parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser.for_argv(argv)(prog="spml-hook-plan-gate",
                            description="pre-commit hook: run the plan gate on the given plan files")
    configure_parser(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors: return the code, as every hook main does
        return exc.code if isinstance(exc.code, int) else 2
    if not args.plans:
        # No plan staged: nothing to gate. Without this the command would
        # fall back to discovering every plan in the repository.
        return EXIT_OK
    return execute(args.tool, args.run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
