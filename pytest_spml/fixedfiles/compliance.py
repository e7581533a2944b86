"""Fixed-file compliance: which paths differ from the base, and may they?

A path may differ from the base commit only when it matches a
``variable.files`` glob and no ``fixed.files`` glob (Fixed wins); the
protocol file and ``.gitattributes`` files (they change how git reads
content) are always Fixed. "Differs" is judged on raw bytes and modes
against the base *tree*, everywhere a change can hide:

* the work tree, seen through a :class:`~.shadow.ShadowRepo` that the
  repository's index flags, filters and exclude files cannot fool;
* the real index (what the next commit would contain);
* commits made after the base, including edits later reverted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from .. import gitcmd
from .rulecache import RuleCache, content_key
from .scan import Scan

if TYPE_CHECKING:
    from ..protocol import Protocol
    from .ignore import BaseIgnore

# pathspec and PyYAML are imported only once the git listings are running
# (see Scan): their import time then overlaps with git's walk of the tree.

_MODE_NAMES = {"120000": "symlink", "160000": "submodule", "040000": "folder", "000000": "nothing"}


@dataclass(frozen=True)
class Violation:
    path: str
    reason: str
    kinds: tuple[str, ...]
    fixed: bool

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "kinds": list(self.kinds)}


@dataclass
class Compliance:
    base: str
    mode: str  # "worktree" or "staged"
    violations: list[Violation] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def compliant(self) -> bool:
        return not self.violations


class Rules:
    """The protocol's partition of paths, with Fixed winning over Variable."""

    def __init__(self, protocol_path: str, fixed_files: list[str], variable_files: list[str],
                 fixed_regex: str | None = None, variable_regex: str | None = None):
        from ..globs import PathMatcher

        self.protocol_path = protocol_path
        self.always_fixed = {protocol_path}
        self.fixed = PathMatcher(fixed_files, fixed_regex)
        self.variable = PathMatcher(variable_files, variable_regex)

    @classmethod
    def from_protocol(cls, protocol: Protocol) -> "Rules":
        return cls(protocol.relpath, list(protocol.fixed_files), list(protocol.variable_files))

    def to_doc(self) -> dict:
        return {"protocol_path": self.protocol_path,
                "fixed_files": self.fixed.patterns, "fixed_regex": self.fixed.regex,
                "variable_files": self.variable.patterns, "variable_regex": self.variable.regex}

    @classmethod
    def from_doc(cls, doc: dict) -> "Rules":
        return cls(doc["protocol_path"], doc["fixed_files"], doc["variable_files"],
                   doc["fixed_regex"], doc["variable_regex"])

    def is_fixed(self, path: str) -> bool:
        return path in self.always_fixed or os.path.basename(path) == ".gitattributes" or self.fixed(path)

    def may_differ(self, path: str) -> bool:
        return not self.is_fixed(path) and self.variable(path)

    def fixed_may_match_under(self, folder: str) -> bool:
        prefix = folder.rstrip("/") + "/"
        return self.fixed.may_match_under(folder) or any(p.startswith(prefix) for p in self.always_fixed)


class BaseIgnoreAnswers:
    """Is a path ignored by the base commit's ``.gitignore`` files? Answers are cached by content."""

    _MAX_ANSWERS = 5000  # run outputs get new names; keep the cache bounded

    def __init__(self, scan: "Scan", cache: RuleCache):
        self._scan, self._cache = scan, cache
        # The base's .gitignore files are a function of the base commit, so the
        # commit names the answers; they are read from git only on a miss.
        self._key = content_key("ignore", scan.base)
        doc = cache.load("ignore", self._key) or {}
        self._answers: dict[str, bool] = doc.get("answers", {}) if isinstance(doc.get("answers"), dict) else {}
        self._rules: BaseIgnore | None = None
        self._new = False

    def __call__(self, path: str, is_dir: bool = False) -> bool:
        key = path + "/" if is_dir else path
        answer = self._answers.get(key)
        if answer is None:
            answer = self._evaluate(path, is_dir)
            self._answers[key] = answer
            self._new = True
        return bool(answer)

    def _evaluate(self, path: str, is_dir: bool) -> bool:
        if self._rules is None:
            from .ignore import BaseIgnore

            files = gitcmd.tree_gitignores(self._scan.repo.root, self._scan.base)
            blobs = gitcmd.cat_blobs(self._scan.repo.root, [e.sha for e in files.values()])
            self._rules = BaseIgnore({
                os.path.dirname(p): blobs.get(e.sha, b"").decode("utf-8", errors="replace") for p, e in files.items()
            })
        return self._rules.is_ignored(path, is_dir)

    def save(self) -> None:
        if self._new:
            answers = self._answers if len(self._answers) <= self._MAX_ANSWERS else {}
            self._cache.store("ignore", self._key, {"answers": answers})


def _kind_name(mode: str) -> str:
    return _MODE_NAMES.get(mode, "file")


def _describe(status: str, old_mode: str, new_mode: str, where: str) -> tuple[str, str]:
    """(kind, text) for one raw diff entry; ``where`` says which copy differs."""
    if status == "D":
        return "deleted", f"deleted {where}"
    if status == "A":
        return "new", f"new file {where}"
    if status == "U":
        return "staged", "unmerged (conflicted) in the index"
    if status == "T" or _kind_name(old_mode) != _kind_name(new_mode):
        return "type_changed", f"type changed {where}: {_kind_name(old_mode)} -> {_kind_name(new_mode)}"
    if old_mode != new_mode:
        return "mode_changed", f"mode changed {where}: {old_mode} -> {new_mode}"
    return "modified", f"modified {where}"


def _parse_raw_diff(out: bytes) -> list[tuple[str, str, str, str]]:
    """``git diff-* --raw -z`` -> [(status, old_mode, new_mode, path)]."""
    fields = out.split(b"\0")
    entries = []
    i = 0
    while i + 1 < len(fields):
        meta = fields[i]
        if not meta.startswith(b":"):
            i += 1
            continue
        old_mode, new_mode, _old, _new, status = meta[1:].decode().split(" ")
        entries.append((status[0], old_mode, new_mode, gitcmd.decode_path(fields[i + 1])))
        i += 2
    return entries


def _parse_status_v2(out: bytes) -> list[tuple[str, str, str, str]]:
    """Shadow ``git status --porcelain=v2 -z`` -> [(status, base mode, work-tree mode, path)]."""
    changes: list[tuple[str, str, str, str]] = []
    for record in out.split(b"\0"):
        if record[:2] == b"1 ":
            # 1 XY sub mH mI mW hH hI path; the shadow index equals the base tree
            parts = record.split(b" ", 8)
            changes.append((parts[1].decode()[1], parts[4].decode(), parts[5].decode(), gitcmd.decode_path(parts[8])))
    return changes


def _parse_commit_paths(out: bytes) -> dict[str, str]:
    """``git log --name-only -z --format=%x01%H`` -> {path: newest commit touching it}."""
    touched: dict[str, str] = {}
    commit = ""
    for token in out.split(b"\0"):
        token = token.lstrip(b"\n")
        if not token:
            continue
        if token.startswith(b"\x01"):
            commit = token[1:].decode()
            continue
        touched.setdefault(gitcmd.decode_path(token), commit)
    return touched


def _walk_files(root: Path, folder: str) -> list[str]:
    """Every non-folder path under ``folder`` (symlinks are entries, never followed)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / folder, followlinks=False):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found.extend(prefix + name for name in filenames)
        for name in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.append(prefix + name)
            dirnames.remove(name)
    return found


def _hidden_by(root: Path, paths: list[str]) -> dict[str, str]:
    """Why the repository's own git view missed a change: evidence, not judgement."""
    if not paths:
        return {}
    hints: dict[str, str] = {}
    tags = gitcmd.run_git(root, ["ls-files", "-v", "-z", "--", *paths], check=False)
    for record in tags.split(b"\0"):
        if len(record) > 2:
            tag, path = record[:1].decode(), gitcmd.decode_path(record[2:])
            if tag == "S":
                hints[path] = "hidden from git by skip-worktree"
            elif tag.islower():
                hints[path] = "hidden from git by assume-unchanged"
    attrs = gitcmd.run_git(root, ["check-attr", "-z", "filter", "--", *paths], check=False).split(b"\0")
    for i in range(0, len(attrs) - 2, 3):
        value = attrs[i + 2].decode()
        if value not in ("unspecified", "unset", ""):
            hints.setdefault(gitcmd.decode_path(attrs[i]), f"git reads it through the '{value}' filter")
    # -v names the rule's source (.gitignore, .git/info/exclude, core.excludesFile) and line
    ignored = gitcmd.run_git(root, ["check-ignore", "-v", "-z", "--no-index", "--stdin"], check=False,
                             input=b"\0".join(os.fsencode(p) for p in paths) + b"\0").split(b"\0")
    for i in range(0, len(ignored) - 3, 4):
        source, line, pattern, raw = ignored[i:i + 4]
        if raw:
            where = f"{gitcmd.decode_path(source)}:{line.decode()}" if source else "an exclude rule"
            hints.setdefault(gitcmd.decode_path(raw),
                             f"hidden from `git status` by {where} ('{pattern.decode(errors='replace')}')")
    return hints


def judge(scan: Scan, rules: Rules, cache: RuleCache | None = None) -> Compliance:
    """Apply the protocol's rules to a finished :class:`Scan`."""
    cache = cache or RuleCache(None)
    root, base, head = scan.repo.root, scan.base, scan.head
    out = scan.outputs()
    result = Compliance(base=base, mode="staged" if scan.staged else "worktree")
    reasons: dict[str, list[tuple[str, str]]] = {}

    def flag(path: str, kind: str, text: str) -> None:
        reasons.setdefault(path, []).append((kind, text))

    changes = _parse_status_v2(out.get("worktree", b""))
    untracked = gitcmd.split_z(out.get("untracked", b""))
    for status_letter, old_mode, new_mode, path in changes:
        if not rules.may_differ(path):
            flag(path, *_describe(status_letter, old_mode, new_mode, "in the work tree"))
    result.stats["worktree_changes"] = len(changes)

    for status_letter, old_mode, new_mode, path in _parse_raw_diff(out["index"]):
        if not rules.may_differ(path):
            kind, text = _describe(status_letter, old_mode, new_mode, "in the index")
            if kind == "modified":
                text = "staged content differs from the base"
            flag(path, "staged" if kind != "new" else "new", text)
    touched_by = _parse_commit_paths(out.get("log", b""))
    net = _parse_raw_diff(out.get("commits", b""))
    net_paths = {path for *_, path in net}
    for status_letter, old_mode, new_mode, path in net:
        if not rules.may_differ(path):
            commit = touched_by.get(path, head or "")[:12]
            kind, text = _describe(status_letter, old_mode, new_mode, f"by commit {commit} after the base")
            flag(path, "committed" if kind != "new" else "new", text)
    for path, commit in touched_by.items():
        if path not in net_paths and not rules.may_differ(path):
            flag(path, "committed", f"changed by commit {commit[:12]} after the base and changed back")

    ignore: BaseIgnoreAnswers | None = None
    for entry in untracked:
        if entry.endswith("/"):
            folder = entry.rstrip("/")
            if not rules.fixed_may_match_under(folder):
                ignore = ignore or BaseIgnoreAnswers(scan, cache)
                if ignore(folder, is_dir=True):
                    continue  # a whole run-output folder the base itself ignores
            candidates = _walk_files(root, folder)
        else:
            candidates = [entry]
        for path in candidates:
            if rules.may_differ(path) or any(kind == "new" for kind, _ in reasons.get(path, ())):
                continue  # allowed, or already reported as new in the index
            if not rules.is_fixed(path):
                ignore = ignore or BaseIgnoreAnswers(scan, cache)
                if ignore(path):
                    continue  # checkpoints, logs: outputs the base commit ignores
                flag(path, "new", "new file in the work tree (a run output? ignore it in the base commit's .gitignore)")
            elif "/__pycache__/" in f"/{path}":
                flag(path, "new", "new bytecode inside a Fixed path: Python could load it instead of the Fixed source; "
                                  "delete it and run with PYTHONPYCACHEPREFIX or PYTHONDONTWRITEBYTECODE=1")
            else:
                flag(path, "new", "new file in the work tree inside a Fixed path (Fixed paths may not gain files, "
                                  "ignored or not)")

    if ignore is not None:
        ignore.save()
    hints = _hidden_by(root, sorted(reasons)) if reasons else {}
    for path in sorted(reasons):
        items = reasons[path]
        kinds = tuple(dict.fromkeys(k for k, _ in items))
        fixed = rules.is_fixed(path)
        text = "; ".join(dict.fromkeys(t for _, t in items))
        if path in hints:
            text += f" ({hints[path]})"
        if path == rules.protocol_path and "new" in kinds:
            text += "; commit the protocol on the base branch before the rounds start"
        text += " [Fixed]" if fixed else " [not in variable.files]"
        result.violations.append(Violation(path, text, kinds, fixed))
    result.stats["untracked_entries"] = len(untracked)
    return result
