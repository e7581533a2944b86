"""pre-commit hook: Fixed-file compliance of the staged content.

Enforced only on branches the protocol governs (``branch``, default
``autoresearch/*``) so everyday development is never blocked; an explicit
``--base`` always enforces. Extra arguments are passed to
``spml fixed-files``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ..cli import main as spml_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return spml_main(["fixed-files", "--staged", "--governed-branches-only", *args])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
