"""`spml-loop check` end to end on logs of real CPU training runs (tests/watch/runs)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_spml import loop_cli
from pytest_spml.watch.model import KINDS

RUNS = Path(__file__).parent / "runs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved check state and evidence default to ./.spml/watch: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


def last_time(path: Path) -> float:
    return json.loads(path.read_text().splitlines()[-1])["time"]


def check(capsys: pytest.CaptureFixture[str], name: str, *extra: str) -> tuple[int, dict]:
    path = RUNS / f"{name}.jsonl"
    code = loop_cli.main(["check", "--log", str(path), "--total-steps", "400", "--now", str(last_time(path) + 1),
                          "--format", "json", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, decision, status, kinds", [
    ("healthy_sgd", "CONTINUE", "NORMAL", set()),
    ("healthy_adamw", "CONTINUE", "NORMAL", set()),
    ("amp_overflow", "CONTINUE", "NORMAL", set()),  # skipped inf steps with a halving loss scale are normal
    ("bad_batch_spike", "CONTINUE", "MILD_ANOMALY", {"loss_spike"}),
    ("chance_plateau", "CONTINUE", "MILD_ANOMALY", {"plateau"}),
    ("overfit_val_rise", "CONTINUE", "MILD_ANOMALY", {"eval_degradation"}),
    ("lr_ramp_nan", "STOP", "SEVERE_ANOMALY", {"nan_inf", "divergence"}),
    ("too_few_steps", "WAIT", "NORMAL", set()),
])
def test_decisions_on_real_runs(capsys: pytest.CaptureFixture[str], name: str, decision: str, status: str,
                                kinds: set[str]) -> None:
    code, doc = check(capsys, name)
    assert (doc["decision"], doc["status"]) == (decision, status), doc["reason"]
    found = {a["kind"] for a in doc["anomalies"]}
    assert kinds <= found, found
    if decision != "STOP":
        assert not any(a["severity"] == "severe" and not a["recovered"] for a in doc["anomalies"]), doc["anomalies"]
    assert code == (1 if decision == "STOP" else 0)
    assert set(doc) >= {"decision", "status", "source", "anomalies", "metrics", "evidence", "next_check"}


def test_spike_that_recovers_is_reported_as_recovered(capsys: pytest.CaptureFixture[str]) -> None:
    _, doc = check(capsys, "bad_batch_spike")
    (spike,) = [a for a in doc["anomalies"] if a["kind"] == "loss_spike"]
    assert spike["recovered"] and spike["step"] == 120


def test_stale_log_stops(capsys: pytest.CaptureFixture[str]) -> None:
    path = RUNS / "healthy_sgd.jsonl"
    loop_cli.main(["check", "--log", str(path), "--now", str(last_time(path) + 3600), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert (doc["decision"], doc["status"]) == ("STOP", "STALE")


def test_text_block_and_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = RUNS / "lr_ramp_nan.jsonl"
    junit = tmp_path / "check.xml"
    code = loop_cli.main(["check", "--log", str(path), "--now", str(last_time(path) + 1), "--junitxml", str(junit)])
    out = capsys.readouterr().out
    assert code == 1
    for label in ("Training check", "source:", "recent:", "anomalies:", "decision:   STOP (SEVERE_ANOMALY)",
                  "reason:", "next check:"):
        assert label in out
    assert f"        at {path}:" in out  # the log line behind an anomaly, to open
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert {f"{k} detector {k}" for k in KINDS} <= set(cases)
    assert cases["nan_inf detector nan_inf"].find("failure") is not None
    assert cases["plateau detector plateau"].find("failure") is None


def test_context_baseline_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "experiment-context.md"
    context.write_text("# Experiment context\n\n## L1 baseline\n\n```yaml\nstep_time_s: 0.1\ngrad_norm: 0.7\n"
                       "loss_start: 2.3\nexpected_total_steps: 2000\n```\n")
    _, doc = check(capsys, "healthy_adamw", "--context", str(context))
    assert doc["baseline"] == f"L1 baseline in {context}" and doc["decision"] == "CONTINUE"


def test_unreachable_source_is_wait_never_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = loop_cli.main(["check", "--log", str(tmp_path / "not-yet.jsonl"), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["decision"] == "WAIT"


@pytest.mark.parametrize("argv, message", [
    (["check"], "no metrics source"),
    (["check", "--log", "x.log", "--log-format", "regex"], "--log-format regex needs --regex"),
])
def test_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert loop_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_context_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "ctx.md"
    context.write_text("## L1 baseline\n```yaml\nstep_time_s: [1\n```\n")
    path = RUNS / "healthy_sgd.jsonl"
    assert loop_cli.main(["check", "--log", str(path), "--context", str(context)]) == 2
    assert "ctx.md" in capsys.readouterr().err


def test_evidence_history_and_recovery_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "experiment-context.md"
    context.write_text("# Experiment context\n\n## L1 baseline\n\n```yaml\ngrad_norm: 0.7\n```\n\n## Notes\n- keep\n")
    path = RUNS / "lr_ramp_nan.jsonl"
    assert loop_cli.main(["check", "--log", str(path), "--context", str(context), "--now",
                          str(last_time(path) + 1)]) == 1
    out = capsys.readouterr().out
    text = context.read_text()
    assert "## Diagnosis History" in text and "**STOP** (SEVERE_ANOMALY)" in text and "- keep" in text
    prompt = tmp_path / "recovery-prompt.md"
    assert prompt.is_file() and "nan_inf at step" in prompt.read_text()
    assert f"evidence:   {prompt}" in out
    healthy = RUNS / "healthy_sgd.jsonl"
    assert loop_cli.main(["check", "--log", str(healthy), "--context", str(context), "--now",
                          str(last_time(healthy) + 1)]) == 0
    history = context.read_text().split("## Diagnosis History")[1]
    assert history.index("**STOP**") < history.index("**CONTINUE**")  # appended in order
    assert "## Notes" in context.read_text().split("## Diagnosis History")[0]


def test_no_history_leaves_the_context_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "experiment-context.md"
    context.write_text("# Experiment context\n")
    path = RUNS / "healthy_sgd.jsonl"
    loop_cli.main(["check", "--log", str(path), "--context", str(context), "--no-history", "--now",
                   str(last_time(path) + 1), "--evidence-dir", str(tmp_path / "ev")])
    assert context.read_text() == "# Experiment context\n"
    assert [p.name for p in (tmp_path / "ev").iterdir()] == ["training-check.png"]  # CONTINUE writes no prompt
