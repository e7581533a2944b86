"""`[tool.spml]` in pyproject.toml: defaults, and every bad value named with its line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import EXAMPLE, git

from pytest_spml import cli
from pytest_spml.config import load_config
from pytest_spml.errors import InputError


def test_no_pyproject_gives_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config.plans == ("docs/plans/*.md",) and config.protocol == "autoresearch-protocol.md"


@pytest.mark.parametrize("text", [
    '[project]\nname = "mnist"\nversion = "0"\n',
    '[tool.spml]\nprotocol = "autoresearch-protocol.md"\n',
    '[tool.black]\nline-length = 100\n',
])
def test_pyproject_without_plans_key_keeps_the_default(tmp_path: Path, text: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    assert load_config(tmp_path).plans == ("docs/plans/*.md",)


def test_a_project_pyproject_does_not_block_commits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "p"
    shutil.copytree(EXAMPLE, project)
    (project / "pyproject.toml").write_text('[project]\nname = "mnist"\nversion = "0"\n')
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "base")
    assert cli.main(["plan-gate", "--repo", str(project)]) == 0
    assert cli.main(["fixed-files", "--repo", str(project)]) == 0


def test_configured_plans_and_protocol(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.spml]\nplans = ["plans/*.md", "more/**/*.md"]\n'
                                             'protocol = "research/protocol.md"\n')
    config = load_config(tmp_path)
    assert config.plans == ("plans/*.md", "more/**/*.md") and config.protocol == "research/protocol.md"


@pytest.mark.parametrize("text, line, message", [
    ('[tool.spml]\nplans = ["/abs/*.md"]\n', 2, "plans glob '/abs/*.md' must be relative to the repository root"),
    ('[tool.spml]\nplans = ["../up/*.md"]\n', 2, "must be relative to the repository root"),
    ('[tool.spml]\nplans = [""]\n', 2, "plans entries must be non-empty glob strings"),
    ('[tool.spml]\nplans = []\n', 2, "plans must be a non-empty list of glob strings"),
    ('[tool.spml]\n\nprotocol = 5\n', 3, "protocol must be a path string"),
    ('[tool]\nspml = 5\n', 2, "[tool.spml] must be a table"),
    ('[tool.spml]\nplans = [\n', None, "invalid TOML"),
])
def test_bad_values_name_the_line(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(InputError) as info:
        load_config(tmp_path)
    assert message in info.value.message
    assert info.value.line == line
    assert info.value.path == str(tmp_path / "pyproject.toml")


def test_non_utf8_pyproject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_bytes(b'[tool.spml]\nname = "\xff"\n')
    assert cli.main(["plan-gate", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pyproject.toml:2: not UTF-8 text" in err
