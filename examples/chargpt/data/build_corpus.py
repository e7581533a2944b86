"""Rebuild data/corpus.txt from the docstrings of Python's standard library.

Offline and deterministic for a given Python version: walks the pure-Python
top-level modules of the running interpreter's standard library in name order,
imports the ones that are safe to import (no GUI, no network, no side effects),
and concatenates, module by module, the module docstring followed by the
docstrings of the public classes and functions the module defines itself.
Every module docstring comes first (first pass), then the class and function
docstrings (second pass) until --max-bytes, so the text covers the whole
library rather than its first letters. Text is folded to printable ASCII so the
character vocabulary stays small.

    python data/build_corpus.py            # writes data/corpus.txt next to this file
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import string
import sys
import sysconfig
import unicodedata
import warnings
from pathlib import Path

# Modules that open windows, print on import, need a terminal, or are platform/deprecated oddities.
SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
    "venv", "pydoc_data", "site", "webbrowser", "msilib", "crypt", "nntplib", "telnetlib", "pty", "tty",
    "sndhdr", "imghdr", "cgi", "cgitb", "mailcap", "pipes", "nis", "spwd", "ossaudiodev", "audioop", "chunk",
    "sunau", "uu", "xdrlib", "aifc", "msvcrt", "winreg", "winsound", "asynchat", "asyncore", "smtpd",
    "distutils", "imp", "sitecustomize", "usercustomize",
}
ALLOWED = set(string.printable) - {"\r", "\x0b", "\x0c"}


def clean(text: str) -> str:
    text = unicodedata.normalize("NFKD", inspect.cleandoc(text))
    text = "".join(ch for ch in text if ch in ALLOWED)
    return text.replace("\t", "    ").strip()


def docstrings(name: str) -> list[str]:
    with warnings.catch_warnings():  # importing (and touching) deprecated modules warns
        warnings.simplefilter("ignore")
        module = importlib.import_module(name)
        if not str(getattr(module, "__file__", "") or "").endswith(".py"):
            return []  # pure-Python modules only
        found = [module.__doc__ or ""]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.append(obj.__doc__ or "")
    return [text for text in (clean(doc) for doc in found) if len(text) >= 40]


def build(max_bytes: int) -> str:
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(m.name for m in pkgutil.iter_modules([stdlib]) if not m.name.startswith("_") and m.name not in SKIP)
    per_module: list[list[str]] = []
    for name in names:
        try:
            per_module.append(docstrings(name))
        except Exception:  # noqa: BLE001 - a module that does not import here is simply left out
            continue
    ordered = [texts[0] for texts in per_module if texts] + [text for texts in per_module for text in texts[1:]]
    parts: list[str] = []
    size = 0
    for text in ordered:
        if size + len(text) + 2 > max_bytes:
            break
        parts.append(text)
        size += len(text) + 2
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("corpus.txt")))
    parser.add_argument("--max-bytes", type=int, default=240_000)
    args = parser.parse_args()
    corpus = build(args.max_bytes)
    Path(args.out).write_text(corpus, encoding="ascii")
    print(f"wrote {args.out}: {len(corpus)} characters, {len(set(corpus))} distinct, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
