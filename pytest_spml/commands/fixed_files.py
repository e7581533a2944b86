"""``spml fixed-files``: may the changes since the base commit exist under the protocol?"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from .. import gitcmd
from ..cliutil import add_output_options
from ..errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..fixedfiles.compliance import Compliance, Rules
    from ..fixedfiles.rulecache import RuleCache
    from ..protocol import Protocol
    from ..report import Report

# Everything but git plumbing is imported after the git listings start (the
# protocol parser, the glob matcher, the report model), so that import time
# overlaps git's walk of the tree instead of adding to it.

TOOL = "spml fixed-files"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fixed-files",
        help="check that only Variable files differ from the base commit",
        description=(
            "Check autoresearch Fixed-file compliance: a path may differ from the base commit only if it "
            "matches variable.files and no fixed.files glob. Work tree, index and commits after the base are "
            "all compared on raw bytes and modes, so assume-unchanged, skip-worktree, filters and exclude "
            "files cannot hide a change."
        ),
    )
    parser.add_argument("--protocol", metavar="PATH",
                        help="the protocol file (default: [tool.spml] protocol, else autoresearch-protocol.md at the repository root)")
    parser.add_argument("--base", metavar="REV", help="compare against this commit (default: HEAD)")
    parser.add_argument("--staged", action="store_true",
                        help="judge only what the next commit would contain (the index), not the work tree")
    parser.add_argument("--repo", metavar="DIR", default=".", help="repository to check (default: current directory)")
    parser.add_argument("--no-cache", action="store_true", help="hash every file; ignore the stat cache in .git/spml/")
    parser.add_argument("--governed-branches-only", action="store_true",
                        help="pass without checking unless the current branch matches the protocol's 'branch' "
                             "pattern (the pre-commit hook's mode); an explicit --base always enforces")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def _protocol_at_base(protocol_path: Path, root: Path, blob: bytes, relpath: str) -> Protocol:
    import dataclasses

    from ..protocol import load_protocol

    from ..yamlmeta import decode_utf8

    at_base = load_protocol(protocol_path, root, text=decode_utf8(blob, protocol_path))
    return dataclasses.replace(at_base, relpath=relpath)


def _not_enforced(why: str, mode: str, protocol: str | None = None) -> Report:
    from ..report import Report

    report = Report(tool=TOOL)
    report.notes.append(f"not enforced: {why}")
    report.summary.update(compliant=True, violations=[], base=None, mode=mode, enforced=False, protocol=protocol)
    return report


def run(args: argparse.Namespace) -> Report:
    repo = gitcmd.repo_info(args.repo)
    root = repo.root
    if args.protocol:
        protocol_path = Path(args.protocol)
    else:
        from ..config import load_config

        protocol_path = root / load_config(root).protocol
    protocol_path = protocol_path if protocol_path.is_absolute() else Path.cwd() / protocol_path
    hook_mode = args.governed_branches_only and not args.base
    mode = "staged" if args.staged else "worktree"

    if protocol_path.is_dir():
        raise InputError("is a directory; pass the protocol file itself with --protocol PATH", protocol_path)
    if not protocol_path.is_file():
        if hook_mode:
            return _not_enforced(f"no protocol at {protocol_path}, so nothing is Fixed", mode)
        raise InputError("protocol file not found; pass --protocol PATH or run `spml init`", protocol_path)
    try:
        relpath = protocol_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise InputError(f"the protocol must live inside the repository {root}", protocol_path) from None

    if hook_mode:
        from ..protocol import load_protocol

        pattern = load_protocol(protocol_path, root).branch
        branch = gitcmd.current_branch(root)
        if branch is None or not fnmatch.fnmatchcase(branch, pattern):
            shown = f"branch '{branch}'" if branch else "a detached HEAD"
            return _not_enforced(
                f"{shown} is not governed by the protocol (branch: '{pattern}'); "
                f"Fixed files are frozen only on branches matching '{pattern}'", mode, relpath
            )

    head = repo.head
    base = gitcmd.resolve_commit(root, args.base) if args.base else head
    if base is None:
        if args.base:
            raise InputError(f"unknown revision '{args.base}': give a commit, branch or tag of this repository", root)
        return _not_enforced("the repository has no commits yet; nothing to compare against", mode, relpath)

    from ..report import Report

    report = Report(tool=TOOL)
    compliance = check(repo, protocol_path, relpath, base, staged=args.staged, use_cache=not args.no_cache,
                       notes=report.notes)
    _fill_report(report, compliance, relpath)
    return report


def check(repo: gitcmd.RepoInfo, protocol_path: Path, relpath: str, base: str, *, staged: bool = False,
          use_cache: bool = True, notes: list[str] | None = None,
          extra_variable: tuple[str, ...] = ()) -> Compliance:
    """The compliance core as a function: may the changes since ``base`` exist under the protocol?

    ``repo.head`` is the commit compared as "committed since the base".
    ``extra_variable`` adds globs that may differ (``spml-loop`` exempts its
    own ``.spml/`` state folder). Notes about the rules go to ``notes``.
    """
    from ..fixedfiles.scan import Scan

    # Let git walk the tree while PyYAML and pathspec import; the rules come
    # from the base commit's protocol, so editing the protocol cannot widen them.
    scan = Scan(repo, base, repo.head, staged=staged, use_cache=use_cache)
    try:
        from ..fixedfiles.compliance import Rules, judge
        from ..fixedfiles.rulecache import RuleCache

        cache = RuleCache(repo.git_dir / "spml" / "cache" if use_cache else None)
        rules = _rules(protocol_path, repo.root, relpath, base, cache, notes if notes is not None else [])
        if extra_variable:
            rules = Rules(rules.protocol_path, list(rules.fixed.patterns),
                          [*rules.variable.patterns, *extra_variable])
    except BaseException:
        scan.outputs()
        raise
    return judge(scan, rules, cache)


def _rules(protocol_path: Path, root: Path, relpath: str, base: str, cache: RuleCache, notes: list[str]) -> Rules:
    """The base commit's rules, compiled once per base commit (the work-tree copy when the base lacks one)."""
    from ..fixedfiles.compliance import Rules
    from ..fixedfiles.rulecache import content_key

    key = content_key("rules", base, relpath)
    doc = cache.load("rules", key)
    if doc is not None:
        try:
            return Rules.from_doc(doc)
        except (KeyError, TypeError):
            pass
    blob = gitcmd.base_file(root, base, relpath)
    if blob is None:
        from ..protocol import load_protocol

        notes.append(f"{relpath} is not in the base commit; using the work-tree copy of the protocol")
        return Rules.from_protocol(load_protocol(protocol_path, root))
    rules = Rules.from_protocol(_protocol_at_base(protocol_path, root, blob, relpath))
    cache.store("rules", key, rules.to_doc())
    return rules


def _fill_report(report: Report, compliance: Compliance, relpath: str) -> None:
    from ..report import CheckResult, Status

    for v in compliance.violations:
        if "new" in v.kinds:
            rule, name = "FF003", "no new files outside variable.files"
        elif v.fixed:
            rule, name = "FF001", "Fixed paths unchanged"
        else:
            rule, name = "FF002", "only variable.files change"
        report.results.append(CheckResult(rule, Status.FAIL, v.reason, path=v.path, name=name,
                                          evidence={"kinds": list(v.kinds), "base": compliance.base}))
    if compliance.compliant:
        report.results.append(CheckResult(
            "FF000", Status.PASS,
            f"only Variable paths differ from base {compliance.base[:12]} ({compliance.mode})",
            path=relpath, name="Fixed-file compliance", evidence=dict(compliance.stats),
        ))
    report.summary.update(
        compliant=compliance.compliant,
        violations=[v.to_dict() for v in compliance.violations],
        base=compliance.base,
        mode=compliance.mode,
        enforced=True,
        protocol=relpath,
        stats=compliance.stats,
    )
