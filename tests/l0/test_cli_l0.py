"""`spml l0` end to end: formats, exit codes, suppression, configuration, unreadable files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_spml import cli
from pytest_spml.hooks import l0 as l0_hook

TRAINER = """\
import torch
device = torch.device("cuda")
model = Net().to(device)
state = torch.load("init.pt")
for x, y in loader:
    x = x.cuda()
    loss = model(x).sum()
    loss.backward()
"""


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["l0", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def rules_found(out: str) -> list[tuple[str, int]]:
    return [(f["rule"], f["line"]) for f in json.loads(out)["findings"]]


def test_text_lines_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "train.py", TRAINER)
    code, out, _ = run(capsys, "train.py", "--select", "DEV001", "--select", "ADV001")
    assert code == 1
    assert "train.py:6:9: DEV001 [device] hard-coded `.cuda()`" in out
    assert "train.py:4:9: ADV001 [advisory] `torch.load` without `weights_only=True`" in out
    assert out.rstrip().endswith("spml l0: FAILED (1 failed, 1 advisory)")


def test_advisory_only_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "load.py", 'import torch\nstate = torch.load("a.pt")\n')
    code, out, _ = run(capsys, str(path), "--format", "json")
    assert code == 0
    assert rules_found(out) == [("ADV001", 2)]
    finding = json.loads(out)["findings"][0]
    assert set(finding) == {"rule", "category", "severity", "path", "line", "col", "message"}
    assert finding["severity"] == "advisory"


def test_sarif_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "train.py", TRAINER)
    code, out, _ = run(capsys, str(path), "--format", "sarif", "--select", "DEV001")
    assert code == 1
    doc = json.loads(out)
    assert doc["version"] == "2.1.0"
    run_ = doc["runs"][0]
    rule_ids = [r["id"] for r in run_["tool"]["driver"]["rules"]]
    assert "DEV001" in rule_ids and "L0001" in rule_ids
    (result,) = run_["results"]
    assert result["ruleId"] == "DEV001" and result["level"] == "error"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 6, "startColumn": 9}
    assert rule_ids[result["ruleIndex"]] == "DEV001"


def test_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "train.py", TRAINER)
    report = tmp_path / "l0.xml"
    run(capsys, str(path), "--select", "DEV001", "--select", "ADV001", "--junitxml", str(report))
    cases = list(ET.parse(report).getroot().iter("testcase"))
    assert len(cases) == 2
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == 1 and failures[0].get("name", "").startswith("DEV001")


def test_line_and_file_suppression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TRAINER.replace("x = x.cuda()", "x = x.cuda()  # spml: ignore[DEV001]")
    path = write(tmp_path, "train.py", text)
    code, out, _ = run(capsys, str(path), "--format", "json", "--select", "DEV001", "--select", "ADV001")
    assert rules_found(out) == [("ADV001", 4)] and code == 0
    assert json.loads(out)["suppressed"] == 1
    path.write_text("# spml: ignore-file[ADV]\n" + TRAINER)
    code, out, _ = run(capsys, str(path), "--format", "json", "--select", "ADV001")
    assert rules_found(out) == []


def test_directive_in_a_string_is_not_a_directive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "load.py", 'import torch\nstate = torch.load("a.pt")\nnote = "# spml: ignore-file"\n')
    _, out, _ = run(capsys, str(path), "--format", "json")
    assert rules_found(out) == [("ADV001", 2)]


def test_pyproject_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "train.py", TRAINER)
    write(tmp_path, "scripts/other.py", TRAINER)
    write(tmp_path, "vendor/lib.py", TRAINER)
    write(tmp_path, "pyproject.toml", """
[tool.spml.l0]
select = ["DEV001", "ADV001"]
exclude = ["vendor/*"]
[tool.spml.l0.severity]
ADV001 = "error"
[tool.spml.l0.per-file-ignores]
"scripts/*.py" = ["DEV"]
""")
    code, out, _ = run(capsys, ".", "--format", "json")
    found = {(f["path"], f["rule"], f["severity"]) for f in json.loads(out)["findings"]}
    assert found == {("train.py", "DEV001", "error"), ("train.py", "ADV001", "error"),
                     ("scripts/other.py", "ADV001", "error")}
    assert code == 1


def test_bad_configuration_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "train.py", TRAINER)
    write(tmp_path, "pyproject.toml", '[tool.spml.l0]\nselct = ["DEV"]\n')
    code, _, err = run(capsys, "train.py")
    assert code == 2 and "unknown key 'selct'" in err


@pytest.mark.parametrize("name, content, message", [
    ("broken.py", "def train(:\n    pass\n", "syntax error"),
    ("blob.py", b"\x00\x01\x02binary", "binary file"),
    ("latin.py", b"x = '\xe9'\n", "cannot decode"),
])
def test_unreadable_files_are_findings_not_crashes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   name: str, content: str | bytes, message: str) -> None:
    path = write(tmp_path, name, content)
    code, out, _ = run(capsys, str(path), "--format", "json")
    (finding,) = json.loads(out)["findings"]
    assert finding["rule"] == "L0001" and message in finding["message"] and code == 1


def test_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "train.py", TRAINER)
    _, out, _ = run(capsys, str(path), "--statistics", "--select", "DEV001")
    assert "    1  DEV001  hard-coded-cuda-device" in out


def test_explain_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--explain", "dev001")
    assert code == 0 and out.startswith("DEV001 hard-coded-cuda-device [device, error]")
    for heading in ("What:", "Why:", "Bad:", "Fix:"):
        assert heading in out
    code, out, _ = run(capsys, "--explain", "DEV001", "--format", "json")
    assert json.loads(out)["rule"]["category"] == "device"
    code, out, _ = run(capsys, "--list-rules")
    assert code == 0 and "L0001" in out and "ADV001" in out


def test_every_rule_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_spml.l0.runner import all_rules

    for rule in all_rules():
        assert rule.doc.what and rule.doc.why and rule.doc.bad and rule.doc.fix, rule.id
        assert rule.default_severity == ("advisory" if rule.category == "advisory" else "error"), rule.id


@pytest.mark.parametrize("argv, message", [
    ([], "no files given"),
    (["missing.py"], "no such file or folder"),
    (["--explain", "XYZ999"], "unknown rule 'XYZ999'"),
])
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert l0_hook.main([]) == 0
    path = write(tmp_path, "train.py", TRAINER)
    assert l0_hook.main([str(path), "--select", "DEV001"]) == 1
    assert "DEV001" in capsys.readouterr().out
