"""YAML front matter with line numbers, so every error can name its line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

try:  # the C loader is several times faster where libyaml is available
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


@dataclass
class FrontMatter:
    """Parsed front matter plus a map from key paths to 1-based file lines."""

    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]
    start_line: int  # line of the opening '---'
    body_start_line: int  # first line after the closing '---'

    def line_of(self, *keys: str) -> int:
        """Line of the deepest key path that exists, else of the block start."""
        for depth in range(len(keys), 0, -1):
            line = self.lines.get(tuple(keys[:depth]))
            if line is not None:
                return line
        return self.start_line


def _index_lines(node: yaml.Node, prefix: tuple[str, ...], offset: int, out: dict, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            if key in out:
                # YAML keeps the last of two equal keys silently; a protocol must not
                raise InputError(
                    f"field '{'.'.join(key)}' appears twice (first on line {out[key]}); keep one",
                    path, key_node.start_mark.line + offset,
                )
            out[key] = key_node.start_mark.line + offset
            _index_lines(value_node, key, offset, out, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            out[key] = item.start_mark.line + offset
            _index_lines(item, key, offset, out, path)


def decode_utf8(data: bytes, path: Path) -> str:
    """Strict UTF-8 decoding whose error names the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text ({exc.reason}); save the file as UTF-8", path, line) from None


def read_front_matter(path: Path, text: str | None = None) -> FrontMatter:
    """Read the ``---``-delimited YAML block at the top of a markdown file."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("file not found", path) from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise InputError(f"not UTF-8 text ({exc.reason}); save the file as UTF-8", path, line) from None
        except IsADirectoryError:
            raise InputError("is a directory; name the file itself", path) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise InputError(
            "no YAML front matter: the file must start with a '---' line, the protocol fields, and a closing '---'",
            path,
            1,
        )
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            break
    else:
        raise InputError("YAML front matter is not closed: add a '---' line after the last field", path, 1)
    block = "\n".join(lines[1:end])
    offset = 2  # yaml marks are 0-based and the block starts on file line 2
    try:
        node = yaml.compose(block, Loader=_Loader)
        data = yaml.load(block, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + offset if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"invalid YAML in front matter: {problem}", path, line) from None
    if not isinstance(data, dict):
        raise InputError("front matter must be a mapping of fields (key: value)", path, 2)
    index: dict[tuple[str, ...], int] = {}
    if node is not None:
        _index_lines(node, (), offset, index, path)
    return FrontMatter(data=data, lines=index, start_line=1, body_start_line=end + 2)
