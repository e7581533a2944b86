"""`spml init`: templates reach the repository, existing files survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pytest_spml import cli
from pytest_spml.commands.init import TEMPLATES
from pytest_spml.protocol import load_protocol


def test_writes_every_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["written"]) == sorted(t.dest for t in TEMPLATES)
    for template in TEMPLATES:
        assert (tmp_path / template.dest).is_file()


def test_written_files_are_valid(tmp_path: Path) -> None:
    assert cli.main(["init", str(tmp_path)]) == 0
    protocol = load_protocol(tmp_path / "autoresearch-protocol.md", tmp_path)
    assert protocol.eval_direction == "maximize" and "eval/" in protocol.fixed_files
    precommit = yaml.safe_load((tmp_path / ".pre-commit-config.yaml").read_text())
    hook_ids = [h["id"] for repo in precommit["repos"] for h in repo["hooks"]]
    assert hook_ids == ["spml-plan-gate", "spml-fixed-files"]
    workflow = yaml.safe_load((tmp_path / ".github" / "workflows" / "spml.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["gates"]["steps"])
    assert "spml plan-gate" in steps and "pytest --spml-l1" in steps and "--junitxml" in steps
    assert "${{ github.base_ref" in (tmp_path / ".github" / "workflows" / "spml.yml").read_text()


def test_template_plan_passes_the_gate(tmp_path: Path) -> None:
    assert cli.main(["init", str(tmp_path), "--only", "plan"]) == 0
    assert cli.main(["plan-gate", str(tmp_path / "docs/plans/experiment-plan.md")]) == 0


def test_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "autoresearch-protocol.md"
    mine.write_text("my protocol\n")
    assert cli.main(["init", str(tmp_path)]) == 0
    assert mine.read_text() == "my protocol\n"
    assert "autoresearch-protocol.md exists, left unchanged (pass --force to overwrite)" in capsys.readouterr().out
    assert cli.main(["init", str(tmp_path), "--force", "--only", "protocol"]) == 0
    assert mine.read_text() != "my protocol\n"


def test_only_selects_templates(tmp_path: Path) -> None:
    assert cli.main(["init", str(tmp_path), "--only", "ci", "--only", "context"]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [".github/workflows/spml.yml", "experiment-context.md"]


def test_target_that_is_a_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.txt"
    target.write_text("")
    assert cli.main(["init", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err
