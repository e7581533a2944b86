"""L0 against a corpus of realistic training scripts (tests/l0/corpus/*.py).

Each corpus file says what an ML expert expects L0 to report, in comments:

- ``# expect: DEV001, ADV003`` at the end of a line: a finding of each id on that line
  (the line where the offending call/statement starts);
- ``# expect-file: OBS002, OBS005`` anywhere (by convention near the top): a finding of each id
  somewhere in the file. Used for observability rules, which judge the file as a whole, and for the
  few other file-wide rules that have no natural line (PRC005 TF32, ADV010 cudnn.benchmark, ADV011
  torch.compile).

A file passes when every expectation is met and L0 reports nothing else. Ids listed in
``expect-file`` and observability ids are matched by id only (their anchor line is L0's choice);
every other finding must sit on a line that expects its id. ``clean_reference.py`` does everything
right: it carries no expectations and must get no ``error`` finding at all.

The corpus was written from ML knowledge, not from what L0 reports: a failure is either a rule bug
(false positive / false negative) or an expectation to argue about. The failure message lists both
sides with the source line, so it can be read without opening the file.
"""

from __future__ import annotations

import io
import py_compile
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_spml.l0.config import L0Config
from pytest_spml.l0.model import Finding
from pytest_spml.l0.registry import load_rules
from pytest_spml.l0.runner import lint_file

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*.py"))
CLEAN = "clean_reference.py"
# Judged per file: the anchor line of these findings is not meaningful.
FILE_LEVEL_PREFIXES = ("OBS",)

_DIRECTIVE = re.compile(r"#\s*expect(-file)?\s*:\s*(.*)$")
_ID = re.compile(r"^[A-Z]{3}\d{3}$")


@dataclass
class Expectations:
    lines: set[tuple[str, int]] = field(default_factory=set)  # (rule id, line)
    file: set[str] = field(default_factory=set)

    @property
    def ids(self) -> set[str]:
        return self.file | {rule for rule, _ in self.lines}


def parse_expectations(source: str) -> Expectations:
    """Read ``# expect:`` / ``# expect-file:`` comments (comment tokens only, never strings)."""
    found = Expectations()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        match = _DIRECTIVE.search(token.string)
        if match is None:
            continue
        ids = [part.strip() for part in match.group(2).split(",") if part.strip()]
        bad = [i for i in ids if not _ID.match(i)]
        if bad:
            raise ValueError(f"line {token.start[0]}: malformed rule id(s) {bad} in {token.string!r}")
        if match.group(1):
            found.file.update(ids)
        else:
            found.lines.update((rule, token.start[0]) for rule in ids)
    return found


def _file_level(rule: str, expected: Expectations) -> bool:
    return rule in expected.file or rule.startswith(FILE_LEVEL_PREFIXES)


def compare(findings: list[Finding], expected: Expectations) -> tuple[list[tuple[str, int]], list[Finding]]:
    """(missing expectations as (id, line or 0 for file-level), unexpected findings)."""
    actual_ids = {f.rule for f in findings}
    actual_at = {(f.rule, f.line) for f in findings}
    missing: list[tuple[str, int]] = []
    for rule, line in sorted(expected.lines):
        ok = rule in actual_ids if _file_level(rule, expected) else (rule, line) in actual_at
        if not ok:
            missing.append((rule, line))
    missing += [(rule, 0) for rule in sorted(expected.file) if rule not in actual_ids]
    unexpected = [f for f in findings
                  if not ((_file_level(f.rule, expected) and f.rule in expected.ids)
                          or (f.rule, f.line) in expected.lines)]
    return missing, unexpected


def _report(path: Path, source: str, missing: list[tuple[str, int]], unexpected: list[Finding]) -> str:
    known = set(load_rules())
    src = source.splitlines()

    def code(line: int) -> str:
        text = src[line - 1].split("# expect")[0].strip() if 0 < line <= len(src) else ""
        return text[:100]

    out = [f"{path.name}: {len(missing)} missing, {len(unexpected)} unexpected"]
    if missing:
        out.append("  MISSING (expected, not reported):")
        for rule, line in missing:
            note = "" if rule in known else "  [rule not registered yet]"
            where = f"line {line:<4}" if line else "file     "
            out.append(f"    {rule} {where} {code(line) if line else '(expect-file)'}{note}")
    if unexpected:
        out.append("  UNEXPECTED (reported, not expected):")
        for f in unexpected:
            out.append(f"    {f.rule} line {f.line:<4} [{f.severity}] {f.message}")
            out.append(f"         | {code(f.line)}")
    return "\n".join(out)


def _lint(path: Path) -> tuple[str, list[Finding]]:
    findings, _ = lint_file(path, L0Config())
    return path.read_text(encoding="utf-8"), findings


def test_corpus_is_there() -> None:
    assert len(FILES) >= 8, FILES
    assert CLEAN in {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_file_compiles(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_findings_match_expectations(path: Path) -> None:
    source, findings = _lint(path)
    expected = parse_expectations(source)
    missing, unexpected = compare(findings, expected)
    assert not missing and not unexpected, "\n" + _report(path, source, missing, unexpected)


def test_clean_reference_has_no_expectations() -> None:
    source = (CORPUS / CLEAN).read_text(encoding="utf-8")
    expected = parse_expectations(source)
    assert not expected.ids, f"{CLEAN} must not expect any finding, got {sorted(expected.ids)}"


def test_clean_reference_has_no_error() -> None:
    path = CORPUS / CLEAN
    source, findings = _lint(path)
    errors = [f for f in findings if f.severity == "error"]
    assert not errors, "\n" + _report(path, source, [], errors)


# ---------------------------------------------------------------- the harness itself


def test_parse_expectations_reads_comments_only() -> None:
    source = (
        "# expect-file: OBS002, OBS005\n"
        "x = '# expect: DEV001'\n"
        "model.cuda()  # expect: DEV001, ADV003\n"
    )
    found = parse_expectations(source)
    assert found.file == {"OBS002", "OBS005"}
    assert found.lines == {("DEV001", 3), ("ADV003", 3)}


def test_compare_matches_lines_and_file_level_ids() -> None:
    def f(rule: str, line: int) -> Finding:
        return Finding(rule, "x", "error", "f.py", line, 1, "msg")

    expected = Expectations(lines={("DEV001", 3), ("ADV003", 9)}, file={"OBS002", "PRC005"})
    findings = [f("DEV001", 3), f("OBS002", 40), f("PRC005", 12), f("ADV003", 10), f("OBS004", 40)]
    missing, unexpected = compare(findings, expected)
    assert missing == [("ADV003", 9)]
    assert [(u.rule, u.line) for u in unexpected] == [("ADV003", 10), ("OBS004", 40)]
