"""The pytest plugin, exercised through pytester on real pytest runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import EXAMPLE

PASSING_PLAN = EXAMPLE / "docs" / "plans" / "2026-11-01-mlp-width.md"


def test_report_header_shows_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--spml-l1-minutes", "2.5")
    result.stdout.fnmatch_lines(["spml: L1 off (enable with --spml-l1); peak from device table; gates: none configured"])
    result = pytester.runpytest("--spml-l1", "--spml-l1-steps", "50", "--spml-l1-device", "cpu", "--spml-peak-flops", "1e12")
    result.stdout.fnmatch_lines(["spml: L1 on (budget 5 min, 50 steps, device cpu); peak 1e+12 FLOP/s; *"])


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.spml_l0:*", "@pytest.mark.spml_l1:*", "@pytest.mark.spml_integration:*"])
    pytester.makepyfile("""
        import pytest
        @pytest.mark.spml_l0
        @pytest.mark.spml_integration
        def test_ok(): pass
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_l1_tests_skip_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.spml_l1
        def test_l1(): pass
        def test_plain(): pass
    """)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*L1 runtime validation is off: run pytest --spml-l1*"])


def test_l1_tests_run_with_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.spml_l1
        def test_l1(spml_settings):
            assert spml_settings.l1 and spml_settings.l1_minutes == 0.5
    """)
    pytester.makeini("[pytest]\nspml_l1_minutes = 0.5\n")
    if __import__("importlib.util").util.find_spec("torch") is None:
        pytester.runpytest("--spml-l1").assert_outcomes(skipped=1)
    else:
        pytester.runpytest("--spml-l1").assert_outcomes(passed=1)


def test_l1_without_torch_names_the_extra(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    pytester.makepyfile("""
        import pytest
        @pytest.mark.spml_l1
        def test_l1(): pass
    """)
    result = pytester.runpytest("--spml-l1", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*L1 needs PyTorch, which is not installed: pip install 'pytest-spml?torch?'*"])


def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nspml_l1_minutes = five\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*spml_l1_minutes = 'five' is not a float*"])


# Gate tests run pytest in a subprocess: pytester's in-process runs snapshot and
# restore sys.modules, which can leave two copies of PyYAML half-wired together.


def _plan_project(pytester: pytest.Pytester) -> None:
    plans = pytester.path / "docs" / "plans"
    plans.mkdir(parents=True)
    shutil.copy(PASSING_PLAN, plans / "good.md")
    broken = PASSING_PLAN.read_text().replace("[INTEGRATION]", "")
    (plans / "broken.md").write_text(broken)
    pytester.makeini("[pytest]\nspml_plans = docs/plans/*.md\n")


def test_plans_are_gated_as_test_items(pytester: pytest.Pytester) -> None:
    _plan_project(pytester)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("-v", f"--junitxml={junit}")
    result.stdout.fnmatch_lines(["*docs/plans/broken.md::PG001*FAILED*", "*docs/plans/good.md::PG001*PASSED*"])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= 1 and outcomes["passed"] > 5
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    names = {c.get("name") for c in cases}
    assert any(n.startswith("PG001") for n in names)
    failures = [c for c in cases if c.find("failure") is not None]
    assert failures and all("broken" in (c.get("classname") or "") for c in failures)
    assert "docs/plans/broken.md:1: PG001" in (failures[0].find("failure").text or "") or any(
        "PG001" in (f.find("failure").text or "") for f in failures)


def test_gate_items_obey_keyword_selection(pytester: pytest.Pytester) -> None:
    _plan_project(pytester)
    result = pytester.runpytest_subprocess("-k", "good")
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes and outcomes["passed"] > 5


def test_missing_plan_glob_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nspml_plans = docs/nothing/*.md\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*spml_plans: no plan matches 'docs/nothing/*.md'*"])


def test_protocol_gate_and_fixture(pytester: pytest.Pytester) -> None:
    shutil.copy(EXAMPLE / "autoresearch-protocol.md", pytester.path / "autoresearch-protocol.md")
    pytester.makeini("[pytest]\nspml_protocol = autoresearch-protocol.md\n")
    pytester.makepyfile("""
        def test_protocol_fixture(spml_protocol):
            assert spml_protocol.eval_metric == "val_accuracy"
            assert spml_protocol.fixed("eval/evaluate.py") and spml_protocol.variable("model.py")
    """)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*autoresearch-protocol.md::PR001 protocol valid PASSED*"])


def test_broken_protocol_fails_its_gate_item(pytester: pytest.Pytester) -> None:
    text = (EXAMPLE / "autoresearch-protocol.md").read_text().replace("direction: maximize", "direction: sideways")
    (pytester.path / "autoresearch-protocol.md").write_text(text)
    pytester.makeini("[pytest]\nspml_protocol = autoresearch-protocol.md\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*autoresearch-protocol.md:*: PR001 protocol field 'eval.direction' must be 'maximize' or 'minimize'*"])


def test_fixed_files_gate_in_pytest(pytester: pytest.Pytester) -> None:
    project = pytester.path
    shutil.copytree(EXAMPLE, project, dirs_exist_ok=True)
    pytester.makeini("[pytest]\nspml_protocol = autoresearch-protocol.md\nspml_fixed_files_base = HEAD\n")
    with open(project / ".gitignore", "a") as fh:  # pytester's own run files are outputs too
        fh.write("stdout\nstderr\nrunpytest-current\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=project, check=True)
    pytester.runpytest_subprocess("-k", "FF000").assert_outcomes(passed=1, deselected=1)
    with open(project / "eval" / "evaluate.py", "a") as fh:
        fh.write("\n# edited\n")
    result = pytester.runpytest_subprocess("-k", "FF000")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*eval/evaluate.py: modified in the work tree*"])


def test_plan_fixtures(pytester: pytest.Pytester) -> None:
    plans = pytester.path / "docs" / "plans"
    plans.mkdir(parents=True)
    shutil.copy(PASSING_PLAN, plans / "good.md")
    pytester.makeini("[pytest]\nspml_plans = docs/plans/*.md\n")
    pytester.makepyfile("""
        def test_plan(spml_plan, spml_plans):
            assert len(spml_plans) == 1
            integration = [s for s in spml_plan.subtasks if "INTEGRATION" in {m.upper() for m in s.markers}]
            assert len(integration) == 1
    """)
    result = pytester.runpytest_subprocess("-k", "test_plan")
    result.assert_outcomes(passed=1, deselected=result.parseoutcomes().get("deselected", 0))


HEAVY = ("torch", "wandb", "tensorboard", "pynvml", "tensorflow", "matplotlib", "numpy", "optuna")

PROBE = textwrap.dedent("""
    import sys, importlib.abc
    HEAVY = {heavy!r}
    attempted = []
    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                attempted.append(name)
            return None
    sys.meta_path.insert(0, Recorder())
    {body}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print("HEAVY-ATTEMPTED", sorted(set(attempted)), "LOADED", loaded)
""")


def _probe(body: str, cwd: Path) -> str:
    code = PROBE.format(heavy=HEAVY, body=textwrap.dedent(body).strip())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY-ATTEMPTED")]
    assert line, proc.stdout + proc.stderr
    return line[-1]


def test_pytest_help_imports_nothing_heavy(tmp_path: Path) -> None:
    line = _probe("""
        import pytest
        try:
            pytest.main(["--help"])
        except SystemExit:
            pass
        import pytest_spml.plugin
        assert "pytest_spml.plugin" in sys.modules
    """, tmp_path)
    assert line == "HEAVY-ATTEMPTED [] LOADED []", line


def test_hooks_and_plan_gate_import_nothing_heavy(tmp_path: Path) -> None:
    shutil.copy(PASSING_PLAN, tmp_path / "plan.md")
    shutil.copy(EXAMPLE / "train.py", tmp_path / "train.py")
    line = _probe("""
        from pytest_spml.hooks import plan_gate, fixed_files, l0
        l0.main(["train.py"])
        from pytest_spml import cli
        try:
            cli.main(["plan-gate", "plan.md"])
        except SystemExit:
            pass
        cli.main(["fixed-files", "--protocol", "missing.md"])
    """, tmp_path)
    assert line == "HEAVY-ATTEMPTED [] LOADED []", line


def test_command_help_imports_nothing_heavy(tmp_path: Path) -> None:
    """`--help` loads every command module: none may import a heavy library at module level."""
    line = _probe("""
        from pytest_spml import cli, loop_cli
        cli.main(["--help"])
        loop_cli.main(["--help"])
        for verb in loop_cli.VERBS:
            loop_cli.main([verb, "--help"])
        for command in cli.COMMANDS:
            cli.main([command, "--help"])
    """, tmp_path)
    assert line == "HEAVY-ATTEMPTED [] LOADED []", line


def test_probe_detects_a_heavy_import(tmp_path: Path) -> None:
    """The probe itself works: importing torch (present or not) is seen."""
    line = _probe("""
        try:
            import torch
        except ImportError:
            pass
    """, tmp_path)
    assert "'torch'" in line


def test_explicit_test_selection_leaves_the_gates_out(pytester: pytest.Pytester) -> None:
    _plan_project(pytester)
    pytester.makepyfile(test_one="def test_one(): pass")
    result = pytester.runpytest_subprocess("test_one.py::test_one")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("docs/plans/good.md", "-q")
    assert "failed" not in result.parseoutcomes() and result.parseoutcomes()["passed"] > 5


def test_collect_only_counts_gate_items(pytester: pytest.Pytester) -> None:
    _plan_project(pytester)
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    listed = [ln for ln in result.stdout.lines if "::PG" in ln]
    assert len(listed) == 24  # 12 rules x 2 plans
    result.stdout.fnmatch_lines(["24 tests collected*"])


def test_skipped_gate_items_point_at_the_plan(pytester: pytest.Pytester) -> None:
    plans = pytester.path / "docs" / "plans"
    plans.mkdir(parents=True)
    (plans / "no-eval.md").write_text(
        "# Plan: tokenizer cleanup\n\n## Subtask 1: Normalise text\n\nPure code.\n\n"
        "## Subtask 2: Wire it [INTEGRATION]\n\nAssemble the pipeline.\n"
    )
    pytester.makeini("[pytest]\nspml_plans = docs/plans/*.md\n")
    result = pytester.runpytest_subprocess("-rs")
    result.stdout.fnmatch_lines(["SKIPPED * docs/plans/no-eval.md:*"])
    assert "plugin.py" not in result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--spml-l1-steps", "0"], "*--spml-l1-steps / spml_l1_steps must be at least 1, got 0*"),
    (["--spml-l1-device", "tpu"], "*'tpu' is not one of auto, cpu, cuda, cuda:N, mps*"),
    (["--spml-l1-minutes", "-1"], "*must be a positive number, got -1.0*"),
])
def test_bad_settings_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize("ini, message", [
    ("spml_plans = /tmp/*.md", "*spml_plans: '/tmp/*.md' must be a glob relative to the rootdir*"),
    ("spml_protocol = docs", "*spml_protocol: * is a directory; name the protocol file itself*"),
])
def test_bad_gate_ini_values_are_usage_errors(pytester: pytest.Pytester, ini: str, message: str) -> None:
    (pytester.path / "docs").mkdir()
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


BAD_TRAINER = '''
import torch
model = torch.nn.Linear(4, 2).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
state = torch.load("init.pt")
device = torch.device("cuda")
for x, y in loader:
    x = x.cuda()
    loss = torch.nn.functional.mse_loss(model(x), y.to(device))
    loss.backward()
    optimizer.step()
'''


def test_l0_files_become_test_items(pytester: pytest.Pytester) -> None:
    (pytester.path / "train.py").write_text(BAD_TRAINER)
    pytester.makeini("[pytest]\nspml_l0 = *.py\n")
    result = pytester.runpytest_subprocess("-v")
    result.stdout.fnmatch_lines(["*train.py::L0 static checks FAILED*", "*train.py:3:9: DEV001 ?device?*",
                                 "*train.py:8:9: DEV001 ?device?*", "*train.py:5:9: ADV001 ?advisory?*"])


def test_l0_marker_checks_the_named_files(pytester: pytest.Pytester) -> None:
    (pytester.path / "train.py").write_text(BAD_TRAINER)
    (pytester.path / "clean.py").write_text("import torch\nx = torch.load('a.pt', weights_only=True)\n")
    pytester.makepyfile(test_l0="""
        import pytest

        @pytest.mark.spml_l0("clean.py")
        def test_clean():
            pass

        @pytest.mark.spml_l0("train.py")
        def test_trainer():
            pass
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*L0 static checks failed:*", "*DEV001*"])
