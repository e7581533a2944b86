"""Regression tests for defects a reviewer found in `spml-loop check` / `spml-loop watch`.

Real files, real subprocesses where the defect needs one: an earlier run's records judged against a new run, a
bad --regex crashing after the launch (the run left orphaned), bad --now values, a run that hangs before its first
record, input the check cannot use, and a healthy run's first grad norm taken for an explosion.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import pid_alive

from pytest_spml import loop_cli

PY = sys.executable
CLI = [PY, "-c", "import sys; from pytest_spml import loop_cli; sys.exit(loop_cli.main())"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def healthy_rows(steps: range, t0: float | None = None) -> list[dict]:
    rows = []
    for step in steps:
        row = {"step": step, "loss": 2.0 * math.exp(-step / 40) + 0.1}
        if t0 is not None:
            row["time"] = t0 + step
        rows.append(row)
    return rows


def nan_rows(t0: float | None = None) -> list[dict]:
    """The reviewer's nan.jsonl: 49 healthy rows, then NaN losses at steps 50-59."""
    rows = healthy_rows(range(1, 50), t0)
    for step in range(50, 60):
        row = {"step": step, "loss": float("nan")}
        if t0 is not None:
            row["time"] = t0 + step
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = loop_cli.main(["check", "--no-plot", "--no-history", "--format", "json", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------------ 1. old runs

TRAINER = textwrap.dedent("""
    import json, math, sys, time
    path, steps = sys.argv[1], int(sys.argv[2])
    time.sleep(0.5)
    with open(path, "a") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "loss": 2.0 * math.exp(-step / 40) + 0.1, "time": time.time()}) + "\\n")
            f.flush()
            time.sleep(0.02)
""")


def test_watch_judges_a_launched_run_only_on_what_it_writes(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "runs" / "metrics.jsonl"
    write_jsonl(log, nan_rows())  # an earlier run's NaN in the same log
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    code = loop_cli.main(["watch", "--log", str(log), "--interval", "0.3", "--poll", "0.05", "--grace", "2",
                          "--state-dir", str(tmp_path / "state"), "--no-plot", "--format", "json", "--",
                          PY, str(script), str(log), "40"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["outcome"] == "completed", doc["reason"]
    assert code == 0
    assert doc["step"] == 40 and doc["decision"] != "STOP"
    assert not any(a["kind"] == "nan_inf" for a in doc["last_check"]["anomalies"])
    # the evidence still points at the right lines of the file (the old run's 59 lines were counted)
    assert doc["last_check"]["metrics"]["loss"] == pytest.approx(2.0 * math.exp(-1) + 0.1)


def test_skip_existing_starts_every_source_at_its_end(tmp_path: Path) -> None:
    from pytest_spml.watch.check import SourceSpec, TrainingCheck

    jsonl, text = tmp_path / "m.jsonl", tmp_path / "train.log"
    write_jsonl(jsonl, nan_rows())
    text.write_text("".join(f"step={s} loss=nan\n" for s in range(1, 30)) + "step=30 loss=na")  # unterminated
    engine = TrainingCheck([SourceSpec("log", str(jsonl)), SourceSpec("log", str(text), fmt="kv"),
                            SourceSpec("log", str(tmp_path / "later.jsonl"))], started_at=time.time())
    engine.skip_existing()
    assert engine.poll().new_records == 0
    write_jsonl(jsonl, healthy_rows(range(1, 3)), mode="a")
    with open(text, "a") as f:
        f.write("\nstep=1 loss=2.5\n")
    write_jsonl(tmp_path / "later.jsonl", healthy_rows(range(1, 4)))  # created after the start: read whole
    outcome = engine.poll()
    assert outcome.new_records == 2 + 1 + 3
    assert engine.series.track("loss").nonfinite == 0
    lines = [r.line for r in engine.recent]
    assert f"{jsonl}:60" in lines and f"{text}:31" in lines


def test_skip_existing_tensorboard_keeps_only_later_wall_times(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from pytest_spml.watch.check import SourceSpec, TrainingCheck

    source = TrainingCheck([SourceSpec("tensorboard", str(tmp_path))])._sources[0]
    from pytest_spml.watch.model import Record

    source.after = 100.0
    kept = source._after([Record(1, 99.0, {"loss": 1.0}, ""), Record(2, 100.5, {"loss": 1.0}, ""),
                          Record(3, None, {"loss": 1.0}, "")])
    assert [r.step for r in kept] == [2]
    engine = TrainingCheck([SourceSpec("tensorboard", str(tmp_path))])
    engine.skip_existing(at=123.0)
    assert engine._sources[0].after == 123.0


def test_a_rerun_appended_to_the_same_log_is_a_new_segment(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "metrics.jsonl"
    t0 = time.time() - 200
    write_jsonl(log, nan_rows(t0))
    state = ["--state-dir", str(tmp_path / "st"), "--evidence-dir", str(tmp_path / "ev")]
    code, doc, _ = check(capsys, "--log", str(log), *state, "--now", str(t0 + 60))
    assert (code, doc["decision"]) == (1, "STOP")
    # a rerun appends to the same log: steps 1.. again after 59
    write_jsonl(log, healthy_rows(range(1, 31), t0 + 170), mode="a")
    code, doc, _ = check(capsys, "--log", str(log), *state, "--now", str(t0 + 201))  # incremental: state reused
    assert doc["decision"] == "CONTINUE" and code == 0, doc["reason"]
    assert doc["step"] == 30 and not any(a["kind"] == "nan_inf" for a in doc["anomalies"])
    assert doc["new_records"] == 30
    # and the same from scratch (both runs in one read)
    code, doc, _ = check(capsys, "--log", str(log), "--fresh", "--now", str(t0 + 201), "--evidence-dir",
                         str(tmp_path / "ev"))
    assert doc["decision"] == "CONTINUE" and code == 0, doc["reason"]


def test_segment_note_and_checkpoint_rewind_still_the_same_run(tmp_path: Path) -> None:
    from pytest_spml.watch.check import SourceSpec, TrainingCheck

    log = tmp_path / "m.jsonl"
    write_jsonl(log, nan_rows())
    write_jsonl(log, healthy_rows(range(1, 31)), mode="a")
    engine = TrainingCheck([SourceSpec("log", str(log))])
    outcome = engine.poll()
    assert outcome.verdict.decision == "CONTINUE" and engine.segments == 2
    assert any("went back to 1 after 59" in n for n in outcome.notes)
    assert "went back to 1 after 59" in outcome.render()
    # a resume from a checkpoint (back to step 40, not to the start) is the same run: its NaN still stops it
    resumed = tmp_path / "r.jsonl"
    write_jsonl(resumed, nan_rows())
    write_jsonl(resumed, healthy_rows(range(40, 70)), mode="a")
    engine = TrainingCheck([SourceSpec("log", str(resumed))])
    assert engine.poll().verdict.decision == "STOP" and engine.segments == 1


def test_two_logs_starting_at_the_same_step_are_not_segments(tmp_path: Path) -> None:
    from pytest_spml.watch.check import SourceSpec, TrainingCheck

    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(train, nan_rows())
    write_jsonl(evals, [{"step": s, "val_loss": 1.0} for s in range(1, 60, 10)])
    engine = TrainingCheck([SourceSpec("log", str(train)), SourceSpec("log", str(evals))])
    assert engine.poll().verdict.decision == "STOP" and engine.segments == 1


# --------------------------------------------------------------------------------------------- 2. and 3. bad input

def test_watch_bad_regex_exits_2_before_launching_anything(tmp_path: Path) -> None:
    marker = tmp_path / "launched"
    result = run_cli("watch", "--log", "runs/metrics.jsonl", "--log-format", "regex", "--regex", "(",
                     "--state-dir", str(tmp_path / "state"), "--", PY, "-c",
                     f"open({str(marker)!r}, 'w'); import time; time.sleep(37)", timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "--regex" in result.stderr and "not a valid regular expression" in result.stderr
    time.sleep(0.5)
    assert not marker.exists()  # nothing was started


def test_watch_regex_without_named_groups_and_folder_as_log_exit_2(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    marker = tmp_path / "launched"
    launch = ["--", PY, "-c", f"open({str(marker)!r}, 'w')"]
    assert loop_cli.main(["watch", "--log", "m.log", "--regex", r"loss \d+", *launch]) == 2
    assert "no named group" in capsys.readouterr().err
    (tmp_path / "adir").mkdir()
    assert loop_cli.main(["watch", "--log", "adir", *launch]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not marker.exists()


def test_an_unexpected_error_in_the_supervisor_stops_the_run_it_started(tmp_path: Path) -> None:
    from pytest_spml.watch.check import SourceSpec, TrainingCheck
    from pytest_spml.watch.supervise import Supervisor, WatchConfig

    pid_file = tmp_path / "pid"
    child = tmp_path / "child.py"
    child.write_text(f"import os, subprocess, sys, time\nw = subprocess.Popen([sys.executable, '-c', "
                     f"'import time; time.sleep(60)'])\nopen({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} "
                     "{w.pid}')\ntime.sleep(60)\n")

    class Broken(TrainingCheck):
        def poll(self, now=None):  # noqa: ANN001, ANN202
            if pid_file.exists() and pid_file.read_text().strip():
                raise RuntimeError("a bug in a detector")
            return super().poll(now)

    engine = Broken([SourceSpec("log", str(tmp_path / "m.jsonl"))], started_at=time.time())
    config = WatchConfig(command=[PY, str(child)], state_dir=tmp_path / "state", interval=0.2, poll_seconds=0.05,
                         grace=1.0, progress=False, plot=False)
    with pytest.raises(RuntimeError, match="a bug in a detector"):
        Supervisor(config, engine).run()
    pids = [int(p) for p in pid_file.read_text().split()]
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)  # the leader and the worker it forked


@pytest.mark.parametrize("argv, message", [
    (["--log-format", "regex", "--regex", "("], "not a valid regular expression"),
    (["--now", "nan"], "--now must be a Unix time"),
    (["--now", "1e30"], "--now must be a Unix time"),
    (["--now", "inf"], "--now must be a Unix time"),
    (["--total-steps", "-5"], "--total-steps must be a positive"),
    (["--log-format", "jsonl", "--regex", r"(?P<loss>\S+)"], "--regex is used only with --log-format regex"),
])
def test_check_bad_input_is_one_line_exit_2_and_a_json_error(tmp_path: Path, argv: list[str], message: str) -> None:
    log = tmp_path / "m.csv"
    log.write_text("step,loss\n1,2.0\n")
    result = run_cli("check", "--log", str(log), "--format", "json", *argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and message in doc["error"]["message"]


def test_watch_total_steps_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert loop_cli.main(["watch", "--log", "m.jsonl", "--total-steps", "-5"]) == 2
    assert "--total-steps must be a positive" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ 4. a hang before any record

def test_watch_restarts_a_run_that_hangs_before_its_first_record(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "cg.md"
    context.write_text("# Experiment context\n\n## Watchdog settings\n\n```yaml\nstartup_grace_minutes: 0.03\n```\n")
    log = tmp_path / "never.jsonl"
    attempts = tmp_path / "attempts"
    script = tmp_path / "trainer.py"
    script.write_text(textwrap.dedent(f"""
        import json, time
        from pathlib import Path
        marker = Path({str(attempts)!r})
        n = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(n))
        if n == 1:
            time.sleep(100)  # hangs before logging anything
        with open({str(log)!r}, "a") as f:
            for step in range(1, 21):
                f.write(json.dumps({{"step": step, "loss": 2.0 / step, "time": time.time()}}) + "\\n")
    """))
    started = time.monotonic()
    code = loop_cli.main(["watch", "--log", str(log), "--context", str(context), "--interval", "0.5", "--poll",
                          "0.05", "--grace", "1", "--backoff", "0.1", "--backoff-cap", "0.2", "--no-history",
                          "--state-dir", str(tmp_path / "state"), "--no-plot", "--format", "json", "--",
                          PY, str(script)])
    doc = json.loads(capsys.readouterr().out)
    assert doc["outcome"] == "completed" and code == 0, doc["reason"]
    assert doc["restarts"] == 1 and attempts.read_text() == "2"
    assert time.monotonic() - started < 60
    state = json.loads(Path(doc["files"][-1]).read_text())
    hang = [e for e in state["events"] if e["kind"] == "exit" and e["failure"]["kind"] == "hang"]
    assert len(hang) == 1 and "no record at all" in hang[0]["failure"]["summary"]


def test_a_silent_start_is_acted_on_only_when_the_process_is_known_alive(tmp_path: Path) -> None:
    from pytest_spml.watch.check import SourceSpec, TrainingCheck
    from pytest_spml.watch.detectors import WatchThresholds

    thresholds = WatchThresholds(startup_grace_minutes=0.01)
    engine = TrainingCheck([SourceSpec("log", str(tmp_path / "never.jsonl"))], thresholds=thresholds,
                           started_at=time.time() - 60)
    outcome = engine.poll()
    assert outcome.verdict.decision == "WAIT"  # a run started elsewhere may still be queued: only wait
    assert any(a.kind == "stale" for a in outcome.anomalies)
    engine.process_alive = True
    outcome = engine.poll()
    assert (outcome.verdict.decision, outcome.verdict.status) == ("STOP", "STALE")


# ------------------------------------------------------------------------------ 5. input the check cannot use

def test_check_says_when_no_line_matched_any_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("step,loss\n" + "".join(f"{s},{2.0 / s}\n" for s in range(1, 30)))
    code, doc, _ = check(capsys, "--log", str(csv), "--fresh")
    assert code == 0 and doc["decision"] == "WAIT"
    assert "no line matched a format" in doc["source"]
    assert any("--log-format" in n and "--regex" in n for n in doc["notes"])
    assert loop_cli.main(["check", "--log", str(csv), "--fresh", "--no-plot", "--no-history"]) == 0
    out = capsys.readouterr().out
    assert "no line matched any known log format" in out and "--log-format" in out and "--regex" in out
    binary = tmp_path / "m.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    code, doc, _ = check(capsys, "--log", str(binary), "--fresh")
    assert "no line matched a format" in doc["source"]


def test_regex_alone_implies_the_regex_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "train.out"
    log.write_text("".join(f"it {s} | loss {2.0 / s:.4f}\n" for s in range(1, 31)))
    code, doc, _ = check(capsys, "--log", str(log), "--fresh", "--regex", r"it (?P<step>\d+) \| loss (?P<loss>\S+)")
    assert code == 0 and doc["step"] == 30 and "30 records" in doc["source"]
    code, doc, _ = check(capsys, "--log", str(log), "--fresh", "--regex", r"nomatch (?P<step>\d+)")
    assert "no line matched a format" in doc["source"]


def test_a_misspelt_watchdog_setting_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "ctx.md"
    context.write_text("# Experiment context\n\n## Watchdog settings\n```yaml\nplateau_fraction: 0.05\n"
                       "loss_spik_factor: 3\n```\n")
    log = tmp_path / "m.jsonl"
    write_jsonl(log, healthy_rows(range(1, 20)))
    for command in (["check", "--log", str(log)], ["watch", "--log", str(log)]):
        assert loop_cli.main([*command, "--context", str(context), "--format", "json"]) == 2
        captured = capsys.readouterr()
        assert f"{context}:6:" in captured.err and "'loss_spik_factor'" in captured.err
        assert "loss_spike_factor" in captured.err  # the valid keys are listed
        assert json.loads(captured.out)["error"]["line"] == 6


# ------------------------------------------------------------------------------------ 6. the very first grad norm

def test_a_large_first_grad_norm_is_no_explosion() -> None:
    from pytest_spml.watch.detectors import RunSeries, detect_grad_explosion
    from pytest_spml.watch.model import Record

    # examples/mnist-mlp: its log starts at step 10 with the largest grad norm; training settles after that
    norms = [1.05, 0.34, 0.17, 0.12, 0.09, 0.08, 0.07, 0.06, 0.05, 0.05, 0.045, 0.04, 0.04, 0.04, 0.038, 0.038,
             0.037, 0.037, 0.036, 0.036, 0.036, 0.035, 0.035, 0.035, 0.034, 0.034, 0.034, 0.033, 0.033, 0.033]
    series = RunSeries()
    series.add([Record(10 * (i + 1), None, {"grad_norm": v, "loss": 1.0 / (i + 1)}, f"m:{i + 1}")
                for i, v in enumerate(norms)])
    assert detect_grad_explosion(series) == []
    # a real spike later in the run is still found (mild, recovered), against the early points before it
    series.add([Record(310, None, {"grad_norm": 5.0, "loss": 0.03}, "m:31")]
               + [Record(320 + 10 * i, None, {"grad_norm": 0.033, "loss": 0.03}, f"m:{32 + i}") for i in range(10)])
    (found,) = detect_grad_explosion(series)
    assert found.step == 310 and found.severity == "mild"


def test_a_healthy_mnist_like_log_checks_normal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 10 * (i + 1), "loss": 0.44 / (i + 1), "grad_norm": 1.05 / (1 + i) ** 1.2 + 0.03,
             "lr": 0.003 * math.cos(i / 60), "step_time_s": 0.0011} for i in range(30)]
    write_jsonl(log, rows)
    code, doc, _ = check(capsys, "--log", str(log), "--fresh", "--total-steps", "300")
    assert code == 0 and not any(a["kind"] == "grad_explosion" for a in doc["anomalies"]), doc["anomalies"]
