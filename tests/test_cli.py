"""Both console scripts: exit codes, formats, and errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_spml import cli, loop_cli

from helpers import BIN


def run_script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, cwd=cwd)


def test_spml_help_lists_every_command() -> None:
    proc = run_script("spml", "--help")
    assert proc.returncode == 0
    for verb in ("plan-gate", "fixed-files", "init"):
        assert verb in proc.stdout


def test_spml_without_command_is_usage_error() -> None:
    proc = run_script("spml")
    assert proc.returncode == 2
    assert "usage" in proc.stderr


def test_unknown_option_is_exit_2_on_one_line() -> None:
    proc = run_script("spml", "plan-gate", "--no-such-option")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_spml_loop_help_lists_every_verb(tmp_path: Path) -> None:
    proc = run_script("spml-loop", "--help")
    assert proc.returncode == 0
    for verb in loop_cli.VERBS:
        assert verb in proc.stdout
    proc = run_script("spml-loop", "iterate", "--bogus")
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_spml_loop_main_returns_2_for_missing_verbs() -> None:
    assert loop_cli.main(["run"]) == 2
    assert loop_cli.main([]) == 2
    assert loop_cli.main(["check", "--bogus"]) == 2


def test_missing_protocol_json_error_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code = cli.main(["fixed-files", "--repo", str(tmp_path), "--protocol", str(tmp_path / "nope.md"),
                     "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"]["path"].endswith("nope.md")
    assert err.count("\n") == 1 and "nope.md" in err


def test_not_a_repository_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["fixed-files", "--repo", str(tmp_path)])
    assert code == 2
    assert "not inside a git repository" in capsys.readouterr().err


def test_junitxml_unwritable_path_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = cli.main(["init", str(tmp_path / "proj"), "--junitxml", str(blocker / "sub" / "r.xml")])
    assert code == 2
    assert "cannot write JUnit XML" in capsys.readouterr().err


def test_init_junit_lists_each_file(tmp_path: Path) -> None:
    report = tmp_path / "reports" / "init.xml"
    assert cli.main(["init", str(tmp_path / "proj"), "--junitxml", str(report)]) == 0
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "6"
    assert {case.get("file") for case in suite.iter("testcase")} >= {"autoresearch-protocol.md", "criteria.yaml",
                                                                      ".pre-commit-config.yaml"}


def test_version() -> None:
    proc = run_script("spml", "--version")
    assert proc.returncode == 0 and "pytest-spml" in proc.stdout


def test_module_entry_points_match_console_scripts() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_spml.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "pytest-spml" in proc.stdout


@pytest.mark.parametrize("argv", [
    ["plan-gate", "--format", "json", "--bogus"],
    ["fixed-files", "--format=json", "--base"],
    ["init", "--format", "json", "--only", "nope"],
])
def test_usage_errors_in_json_mode_print_one_document(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"]["message"]
    assert err.count("\n") == 1 and "--help" in err


def test_hook_usage_error_in_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_spml.hooks import fixed_files, plan_gate

    for main in (fixed_files.main, plan_gate.main):
        assert main(["--format", "json", "--bogus"]) == 2
        assert json.loads(capsys.readouterr().out)["ok"] is False


def test_input_error_still_writes_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "reports" / "gate.xml"
    assert cli.main(["plan-gate", str(tmp_path / "missing.md"), "--junitxml", str(report)]) == 2
    case = ET.parse(report).getroot().find("testsuite/testcase")
    assert case is not None and case.get("name") == "INPUT input readable"
    error = case.find("error")
    assert error is not None and "plan file not found" in (error.get("message") or "")
    assert oct(report.stat().st_mode & 0o777) != oct(0o600), "reports must be readable by other CI users"
