"""A content-addressed cache of what the rules compile to.

Parsing the protocol (PyYAML), compiling its globs and evaluating the base
commit's ``.gitignore`` files (pathspec) are pure functions of file contents
git already names by hash. Keeping their results under the shadow git
directory, keyed by those contents, lets a warm check skip both libraries;
a changed protocol or ``.gitignore`` is a new key, so nothing goes stale.
The entries are JSON (never pickle): loading one can never run code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__


def content_key(*parts: bytes | str) -> str:
    digest = hashlib.sha256(__version__.encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


class RuleCache:
    """JSON documents under ``directory``; ``directory=None`` disables caching."""

    def __init__(self, directory: Path | None):
        self.directory = directory

    def load(self, kind: str, key: str) -> dict | None:
        if self.directory is None:
            return None
        try:
            doc = json.loads((self.directory / f"{kind}-{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def store(self, kind: str, key: str, doc: dict) -> None:
        if self.directory is None:
            return
        from ..fsutil import atomic_write

        try:
            atomic_write(self.directory / f"{kind}-{key}.json", json.dumps(doc))
        except OSError:
            pass  # a cache that cannot be written only costs speed
