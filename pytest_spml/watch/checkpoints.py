"""The run's checkpoints: which exist, which are complete, which to resume from next.

A checkpoint is a file (``ckpt_000400.pt``) or a directory (Hugging Face
``checkpoint-400/``, sharded ``torch.distributed.checkpoint`` folders) matched
by one of the configured globs under a root folder. It is *complete* when its
name is not a temporary one (``*.tmp``, ``*.part``, ``.name.XXXX`` from an
atomic writer, ...) and nothing in it changed for ``settle_seconds`` (a
writer that is still saving keeps touching it). Newest first: by the step
in the names when every candidate has one, else by modification time.

A checkpoint can still be broken (a save killed half-way through, then
renamed by a careless writer): when resuming from it fails with a load
error, the supervisor calls :meth:`Checkpoints.reject` and the next call of
:meth:`Checkpoints.latest` gives the previous one. A rejected checkpoint
that is written again (new size or time) is a candidate again.

The watchdog never deletes or modifies checkpoints; it only reads their
names, sizes and times.

Standard library only: this module runs inside long-lived watch loops.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["DEFAULT_PATTERNS", "Checkpoint", "Checkpoints", "compile_glob", "is_partial_name", "step_of"]

# checkpoints/ folders of the usual PyTorch and Lightning scripts, nanoGPT's out/ckpt.pt, Hugging Face
# checkpoint-N folders. "**/" is any folders down to MAX_DEPTH, skipping hidden ones, virtual environments and
# other folders that never hold this run's checkpoints (walking a data set folder would cost every scan).
DEFAULT_PATTERNS: tuple[str, ...] = (
    "**/checkpoints/*.pt", "**/checkpoints/*.pth", "**/checkpoints/*.ckpt", "**/checkpoints/*.safetensors",
    "**/ckpt*.pt", "**/ckpt*.pth", "**/checkpoint-[0-9]*",
)
MAX_DEPTH = 4  # folders below a pattern's base that "**" descends into
# names of files being written: editors, atomic writers (tempfile, fsutil.atomic_write), torch/HF/DeepSpeed savers
_PARTIAL_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".incomplete", ".writing", ".inprogress", ".lock", "~",
                     ".swp")
_PARTIAL_PREFIXES = (".", "tmp", "~")
# folders "**" does not descend into: nothing there is a checkpoint of this run, and walking them is slow
_SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", "wandb", "venv", "data", "datasets"}
_STEP = re.compile(r"(\d+)(?!.*\d)")  # the last number in the name


def is_partial_name(name: str) -> bool:
    """A name that says "still being written"."""
    lower = name.lower()
    return lower.endswith(_PARTIAL_SUFFIXES) or lower.startswith(_PARTIAL_PREFIXES) or ".tmp" in lower


def step_of(path: Path) -> int | None:
    """The step a checkpoint's name carries (``ckpt_000400.pt``, ``checkpoint-400``, ``epoch=3-step=1200.ckpt``)."""
    name = path.name
    for suffix in (".safetensors", ".ckpt", ".pth", ".pt", ".bin", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    match = re.search(r"step[=_-]?(\d+)", name) or _STEP.search(name)
    return int(match.group(1)) if match else None


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob over ``/``-separated relative paths: ``*`` and ``?`` stay within a name, ``**/`` is any folders."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out).rstrip("/") + r"/?\Z")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int | None
    mtime: float  # the newest modification time in it
    size: int  # bytes, summed over a directory

    @property
    def signature(self) -> tuple[int, float]:
        return self.size, self.mtime

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "step": self.step, "mtime": self.mtime, "size": self.size}


def _stat_tree(path: Path) -> tuple[float, int, bool] | None:
    """(newest mtime, total size, has a partial file inside) of a file or folder; None when it vanished."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_dir():
        return st.st_mtime, st.st_size, False
    newest, total, partial = st.st_mtime, 0, False
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            if is_partial_name(name):
                partial = True
        for name in files:
            try:
                fst = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            newest = max(newest, fst.st_mtime)
            total += fst.st_size
    return newest, total, partial


def _split_pattern(pattern: str, root: Path) -> tuple[Path, str]:
    """(the folder a glob starts in, the rest of it): ``/data/run/ckpt/*.pt`` -> (/data/run/ckpt, ``*.pt``)."""
    parts = pattern.replace(os.sep, "/").split("/")
    base: list[str] = []
    for i, part in enumerate(parts[:-1]):
        if any(c in part for c in "*?["):
            break
        base.append(part)
    rest = "/".join(parts[len(base):])
    if pattern.startswith("/"):
        return Path("/" + "/".join(base[1:])), rest
    return root.joinpath(*[b for b in base if b not in ("", ".")]), rest


class Checkpoints:
    """The checkpoints matching ``patterns`` (globs relative to ``root``, or absolute)."""

    def __init__(self, root: str | os.PathLike = ".", patterns: Sequence[str] = DEFAULT_PATTERNS, *,
                 settle_seconds: float = 10.0, max_depth: int = MAX_DEPTH) -> None:
        self.root = Path(root)
        self.patterns = tuple(patterns) or DEFAULT_PATTERNS
        self.settle_seconds = max(0.0, float(settle_seconds))
        self.max_depth = max_depth
        # base folder -> compiled relative globs
        self._globs: dict[Path, list[re.Pattern[str]]] = {}
        for pattern in self.patterns:
            base, rest = _split_pattern(pattern, self.root)
            self._globs.setdefault(base, []).append(compile_glob(rest))
        self.rejected: dict[Path, tuple[tuple[int, float], str]] = {}  # path -> (signature, why)

    # discovery -----------------------------------------------------------------------------------------------------
    def _candidates(self) -> list[Path]:
        found: dict[Path, None] = {}
        for base, regexes in self._globs.items():
            if not base.is_dir():
                continue
            for folder, dirs, files in os.walk(base):
                rel_dir = os.path.relpath(folder, base).replace(os.sep, "/")
                depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
                rel_dir = "" if rel_dir == "." else rel_dir + "/"
                keep = []
                for name in sorted(dirs):
                    rel = rel_dir + name
                    if any(r.match(rel) for r in regexes):
                        found[Path(folder) / name] = None  # a checkpoint folder: do not look inside
                    elif depth < self.max_depth and not name.startswith(".") and name not in _SKIP_DIRS:
                        keep.append(name)
                dirs[:] = keep
                for name in files:
                    if any(r.match(rel_dir + name) for r in regexes):
                        found[Path(folder) / name] = None
        return list(found)

    def scan(self, now: float | None = None) -> tuple[list[Checkpoint], list[Path]]:
        """(complete checkpoints newest first, paths still being written or with a temporary name)."""
        now = time.time() if now is None else now
        complete: list[Checkpoint] = []
        pending: list[Path] = []
        for path in self._candidates():
            stat = _stat_tree(path)
            if stat is None:
                continue
            mtime, size, partial_inside = stat
            if is_partial_name(path.name) or partial_inside or now - mtime < self.settle_seconds:
                pending.append(path)
                continue
            complete.append(Checkpoint(path, step_of(path), mtime, size))
        if complete and all(c.step is not None for c in complete):
            complete.sort(key=lambda c: (c.step, c.mtime), reverse=True)
        else:
            complete.sort(key=lambda c: (c.mtime, c.step or -1), reverse=True)
        return complete, pending

    def complete(self, now: float | None = None) -> list[Checkpoint]:
        """Complete checkpoints, newest first, without the rejected ones (unless written again since)."""
        out = []
        for ckpt in self.scan(now)[0]:
            rejected = self.rejected.get(ckpt.path)
            if rejected is not None and rejected[0] == ckpt.signature:
                continue
            out.append(ckpt)
        return out

    def latest(self, now: float | None = None) -> Checkpoint | None:
        """The checkpoint to resume from: the newest complete one not rejected."""
        found = self.complete(now)
        return found[0] if found else None

    def reject(self, ckpt: Checkpoint, why: str) -> None:
        """Resuming from ``ckpt`` failed to load it: fall back to the previous one from now on."""
        self.rejected[ckpt.path] = (ckpt.signature, why)
