"""`pytest --spml-l1` end to end: items per check, skip reasons, summary table, JSON and JUnit reports."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="L1 tests need the torch extra: pip install -e '.[test,torch]'")

HERE = Path(__file__).parent


def project(pytester: pytest.Pytester, *, ini_pipeline: bool = False) -> None:
    shutil.copy(HERE / "mlp_pipeline.py", pytester.path / "mlp_pipeline.py")
    if ini_pipeline:
        pytester.makeini("[pytest]\nspml_l1_pipeline = mlp_pipeline:MLPPipeline\nspml_l1_steps = 30\n")
        return
    pytester.makeini("[pytest]\nspml_l1_steps = 30\n")
    pytester.makeconftest("""
        import pytest
        from mlp_pipeline import MLPPipeline

        @pytest.fixture(scope="session")
        def spml_pipeline():
            return MLPPipeline()
    """)
    pytester.makepyfile(test_l1="""
        from pytest_spml.l1 import l1_tests

        test_spml_l1 = l1_tests()
    """)


def test_without_the_option_every_check_is_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    project(pytester)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=14)
    result.stdout.fnmatch_lines(["*L1 runtime validation is off: run pytest --spml-l1*"])


def test_spml_l1_runs_once_and_reports_every_check(pytester: pytest.Pytester) -> None:
    project(pytester)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("--spml-l1", "--spml-l1-device", "cpu", f"--junitxml={junit}",
                                           "-o", "junit_family=xunit1", "-rs")
    result.assert_outcomes(passed=12, skipped=2)
    result.stdout.fnmatch_lines([
        "*spml L1 runtime validation*",
        "pipeline mlp on * (cpu); 30 steps, stopped by step limit 30",
        "PASS *L1-STEP-TIME*median_s=*",
        "SKIP *L1-MFU*achieved*",
        "*report: *l1-report.json",
    ])
    doc = json.loads((pytester.path / ".spml" / "l1-report.json").read_text())
    assert doc["measurements"]["steps"] == 30 and doc["ok"] is True
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert float(properties["L1-STEP-TIME.median_s"]) > 0
    assert "L1-LOSS.second_half_mean" in properties


def test_ini_pipeline_needs_no_test_module(pytester: pytest.Pytester) -> None:
    project(pytester, ini_pipeline=True)
    report = pytester.path / "out" / "l1.json"
    result = pytester.runpytest_subprocess("--spml-l1", "--spml-report", str(report), "-v")
    result.stdout.fnmatch_lines(["*spml-l1?L1-RESUME? PASSED*"])
    result.assert_outcomes(passed=12, skipped=2)
    assert json.loads(report.read_text())["pipeline"] == "mlp"


def test_missing_pipeline_is_a_clear_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_l1="""
        from pytest_spml.l1 import l1_tests

        test_spml_l1 = l1_tests()
    """)
    result = pytester.runpytest_subprocess("--spml-l1", "-x")
    result.stdout.fnmatch_lines(["*L1 needs your pipeline: define a session fixture `spml_pipeline`*"])
