"""pre-commit hook ``spml-l0``: L0 static checks on the staged Python files.

pre-commit passes the staged ``.py`` files (``types: [python]``); the hook is
``spml l0`` on them: same options, same report, same exit codes. It imports
no ML library, so a one-file commit stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cli import main as spml_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(not a.startswith("-") for a in args) and "--explain" not in args and "--list-rules" not in args:
        return 0  # no Python file staged: nothing to check
    return spml_main(["l0", *args])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
