"""`spml-loop watch` supervising real training subprocesses (tests/watch/scripts/train.py) with known failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import pid_alive

from pytest_spml import loop_cli

SCRIPTS = Path(__file__).parent / "scripts"
TRAIN = SCRIPTS / "train.py"
EVALUATE = SCRIPTS / "evaluate.py"
PY = sys.executable


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def train_args(out: Path, steps: int, *extra: str) -> list[str]:
    return [PY, str(TRAIN), str(out), "--steps", str(steps), *extra]


def resume_command(out: Path, steps: int, *extra: str) -> str:
    return " ".join([*train_args(out, steps, *extra), "--resume", "{checkpoint}"])


def saved(out: Path) -> list[tuple[str, int]]:
    """The checkpoints the script saved, in order: (name, size)."""
    path = out / "saved.txt"
    return [(ln.split()[0], int(ln.split()[1])) for ln in path.read_text().splitlines()] if path.exists() else []


def metrics_steps(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def options(tmp_path: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["watch", "--log", str(out / "metrics.jsonl"), "--total-steps", str(steps), "--interval", "0.2",
            "--poll", "0.05", "--grace", "3", "--backoff", "0.1", "--backoff-cap", "0.4", "--checkpoint-settle",
            "0.1", "--checkpoints", str(out / "checkpoints" / "*.pt"), "--state-dir", str(tmp_path / "state"),
            "--no-plot", "--format", "json", *extra]


def watch(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict, str]:
    code = loop_cli.main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def events(doc: dict, kind: str) -> list[dict]:
    state = json.loads(Path(doc["files"][-1]).read_text())
    return [e for e in state["events"] if e["kind"] == kind]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_sigkilled_run_restarts_from_the_latest_complete_checkpoint(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    killed: dict[str, object] = {}

    def kill_once() -> None:  # the "OOM killer": SIGKILL from outside once the run is past step 45
        wait_for(lambda: (out / "metrics.jsonl").exists() and len(metrics_steps(out)) >= 45)
        pid = int((out / "pid").read_text())
        killed["saved_before"] = saved(out)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    killer = threading.Thread(target=kill_once)
    killer.start()
    code, doc, err = watch(capsys, options(tmp_path, out, 80, "--resume-command", resume_command(out, 80),
                                           "--", *train_args(out, 80, "--ckpt-every", "10", "--step-time", "0.02")))
    killer.join()
    assert code == 0, doc["reason"]
    assert doc["outcome"] == "completed" and doc["restarts"] == 1 and doc["crashes"] == 1
    (restart,) = events(doc, "restart")
    newest = killed["saved_before"][-1][0]
    assert Path(restart["checkpoint"]).name == newest  # the newest checkpoint saved before the kill
    (crash,) = [e for e in events(doc, "exit") if not e["ok"]]
    assert crash["failure"]["kind"] == "external_signal" and crash["exit_code"] == -signal.SIGKILL
    steps = metrics_steps(out)
    assert steps[-1] == 80 and set(range(1, 81)) <= set(steps)
    assert f"resumed from {out / 'checkpoints' / newest}" in (tmp_path / "state" / "train.log").read_text()
    # the progress line: step/total, loss, ETA
    assert "/80 (" in err and " loss " in err and "ETA " in err


def test_a_hang_is_restarted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    context = tmp_path / "experiment-context.md"
    context.write_text("# Experiment context\n\n## Watchdog settings\n\n```yaml\nstale_min_seconds: 2.0\n"
                       "startup_grace_minutes: 0.1\n```\n")
    flags = ("--ckpt-every", "10", "--step-time", "0.02", "--fail", "hang", "--fail-at", "25")
    code, doc, err = watch(capsys, options(tmp_path, out, 50, "--context", str(context), "--resume-command",
                                           resume_command(out, 50, *flags), "--", *train_args(out, 50, *flags)))
    assert code == 0, doc["reason"]
    assert doc["restarts"] == 1
    hang = [e for e in events(doc, "exit") if e["failure"]["kind"] == "hang"]
    assert len(hang) == 1 and "no new record" in hang[0]["failure"]["summary"]
    assert "terminated the process group" in events(doc, "stop")[0]["message"]
    assert Path(events(doc, "restart")[0]["checkpoint"]).name == "ckpt_000020.pt"
    assert metrics_steps(out)[-1] == 50
    history = context.read_text()
    assert "## Diagnosis History" in history and "**RESTART** (ENVIRONMENT_FAILURE)" in history


def test_disk_full_restarts_with_growing_backoff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    flags = ("--ckpt-every", "10", "--step-time", "0.01", "--fail", "disk_full", "--fail-at", "15",
             "--fail-times", "3")
    code, doc, err = watch(capsys, options(tmp_path, out, 30, "--backoff", "0.1", "--backoff-cap", "0.3",
                                           "--resume-command", resume_command(out, 30, *flags),
                                           "--", *train_args(out, 30, *flags)))
    assert code == 0, doc["reason"]
    assert doc["restarts"] == 3 and doc["crashes"] == 3
    crashes = [e for e in events(doc, "exit") if not e["ok"]]
    assert {c["failure"]["kind"] for c in crashes} == {"disk_full"}
    assert "OSError: [Errno 28] No space left on device" in crashes[0]["failure"]["evidence"]
    assert [e["delay_s"] for e in events(doc, "backoff")] == [0.1, 0.2, 0.3]  # doubled, then capped
    assert "restarting in 0.2s" in err


def test_a_python_error_is_reported_never_restarted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    flags = ("--ckpt-every", "10", "--fail", "python_error", "--fail-at", "20")
    code, doc, _ = watch(capsys, options(tmp_path, out, 60, "--resume-command", resume_command(out, 60, *flags),
                                         "--", *train_args(out, 60, *flags)))
    assert code == 1
    assert doc["outcome"] == "code_bug" and doc["restarts"] == 0
    failure = doc["failure"]
    assert (failure["kind"], failure["category"]) == ("python_error", "code")
    source = TRAIN.read_text().splitlines()
    raised = next(n for n, line in enumerate(source, 1) if 'return config["momentum"]' in line)
    called = next(n for n, line in enumerate(source, 1) if 'lookup_hyperparameter({"lr": lr})' in line)
    assert failure["location"] == f"{TRAIN}:{raised} in lookup_hyperparameter"
    assert failure["evidence"][-1] == "KeyError: 'momentum'"
    assert f'  File "{TRAIN}", line {called}, in main' in failure["evidence"]
    prompt = (tmp_path / "state" / "recovery-prompt.md").read_text()
    assert "## Diagnosis" in prompt and "KeyError: 'momentum'" in prompt and "not restart" in prompt
    assert "KeyError: 'momentum'" in (tmp_path / "state" / "FINAL_SUMMARY.md").read_text()
    assert max(metrics_steps(out)) == 20


def test_nan_loss_stops_the_whole_group_and_keeps_the_checkpoints(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    flags = ("--ckpt-every", "10", "--step-time", "0.02", "--fail", "nan", "--fail-at", "35", "--fork-worker")
    code, doc, err = watch(capsys, options(tmp_path, out, 300, "--resume-command", resume_command(out, 300),
                                           "--", *train_args(out, 300, *flags)))
    assert code == 1
    assert doc["outcome"] == "stopped" and doc["decision"] == "STOP" and doc["restarts"] == 0
    assert doc["failure"]["kind"] == "metric_trend"
    assert any(a["kind"] == "nan_inf" for a in doc["last_check"]["anomalies"])
    worker, trainer = int((out / "worker.pid").read_text()), int((out / "pid").read_text())
    wait_for(lambda: not pid_alive(worker) and not pid_alive(trainer), 10)
    assert "terminated the process group" in events(doc, "stop")[0]["message"]
    prompt = (tmp_path / "state" / "recovery-prompt.md").read_text()
    assert "nan_inf" in prompt
    # every checkpoint the run saved is still there, unchanged
    kept = saved(out)
    assert len(kept) >= 3
    for name, size in kept:
        assert (out / "checkpoints" / name).stat().st_size == size
    assert "STOP:" in err


def test_a_checkpoint_that_fails_to_load_falls_back_to_the_previous(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    flags = ("--ckpt-every", "10", "--fail", "corrupt_ckpt", "--fail-at", "30")
    code, doc, _ = watch(capsys, options(tmp_path, out, 50, "--resume-command", resume_command(out, 50, *flags),
                                         "--", *train_args(out, 50, *flags)))
    assert code == 0, doc["reason"]
    restarts = [Path(e["checkpoint"]).name for e in events(doc, "restart")]
    assert restarts == ["ckpt_000030.pt", "ckpt_000020.pt"]  # the torn save, then the one before it
    (rejected,) = events(doc, "checkpoint_rejected")
    assert Path(rejected["path"]).name == "ckpt_000030.pt"
    assert any("UnpicklingError" in line or "Ran out of input" in line for line in rejected["evidence"])
    assert [Path(r["path"]).name for r in doc["rejected_checkpoints"]] == ["ckpt_000030.pt"]
    assert doc["crashes"] == 1  # the torn save's crash; the failed load is not a crash of the run
    assert metrics_steps(out)[-1] == 50


def test_alert_after_five_crashes_in_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    flags = ("--ckpt-every", "2", "--step-time", "0.0", "--fail", "sigkill", "--fail-at", "5", "--fail-times", "5")
    code, doc, err = watch(capsys, options(tmp_path, out, 12, "--backoff", "0.02", "--backoff-cap", "0.1",
                                           "--resume-command", resume_command(out, 12, *flags),
                                           "--", *train_args(out, 12, *flags)))
    assert code == 0, doc["reason"]
    assert doc["crashes"] == 5 and doc["restarts"] == 5
    assert len(doc["alerts"]) == 1 and "5 crashes within 30 minutes" in doc["alerts"][0]
    assert err.count("ALERT:") == 1
    assert "**ALERT** 5 crashes" in (tmp_path / "state" / "alerts.md").read_text()
    assert len(events(doc, "alert")) == 1


def test_stop_command_is_used_instead_of_signals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "stop-command-ran"
    flags = ("--step-time", "0.02", "--fail", "nan", "--fail-at", "25")
    stop = f"echo $SPML_WATCH_PID > {marker} && kill -TERM $SPML_WATCH_PID"
    code, doc, _ = watch(capsys, options(tmp_path, out, 300, "--stop-command", stop,
                                         "--", *train_args(out, 300, *flags)))
    assert code == 1 and doc["outcome"] == "stopped"
    assert marker.read_text().strip() == (out / "pid").read_text()
    message = events(doc, "stop")[0]["message"]
    assert "ran the stop command" in message and "terminated the process group" not in message


def test_eval_runs_once_per_new_checkpoint_never_two_at_once(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, doc, _ = watch(capsys, options(tmp_path, out, 60, "--eval-command", f"{PY} {EVALUATE} {{checkpoint}} {out}",
                                         "--", *train_args(out, 60, "--ckpt-every", "10", "--step-time", "0.02")))
    assert code == 0, doc["reason"]
    evaluated = (out / "evals.txt").read_text().split("\n")[:-1]
    names = [name for name, _ in saved(out)]
    assert len(names) == 6
    assert sorted(evaluated) == sorted(names)  # each once, none overlapping ("OVERLAP ..." lines)
    assert [Path(e["checkpoint"]).name for e in doc["evals"]] == names  # in the order they were saved
    assert all(e["ok"] and e["output_tail"][-1].startswith("eval step") for e in doc["evals"])
    assert len((tmp_path / "state" / "evals.jsonl").read_text().splitlines()) == 6


def test_separated_mode_with_pid_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    console = tmp_path / "nohup.out"
    with open(console, "ab") as log:
        run = subprocess.Popen(train_args(out, 300, "--step-time", "0.02", "--fail", "nan", "--fail-at", "30",
                                          "--fork-worker"), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_for(lambda: (out / "worker.pid").exists())
        code, doc, _ = watch(capsys, options(tmp_path, out, 300, "--pid", str(run.pid), "--output", str(console)))
        assert code == 1 and doc["outcome"] == "stopped"
        assert run.wait(timeout=10) == -signal.SIGTERM
        wait_for(lambda: not pid_alive(int((out / "worker.pid").read_text())), 10)
        assert f"sent SIGTERM to process group {run.pid}" in events(doc, "stop")[0]["message"]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_separated_mode_notices_the_end_of_a_completed_run(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run = subprocess.Popen(train_args(out, 40, "--step-time", "0.02"), stdout=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        code, doc, _ = watch(capsys, options(tmp_path, out, 40, "--pid", str(run.pid)))
        assert code == 0 and doc["outcome"] == "completed", doc["reason"]
        assert run.wait(timeout=10) == 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_sigterm_to_the_watchdog_stops_the_run_and_keeps_the_evidence(tmp_path: Path) -> None:
    out = tmp_path / "run"
    state = tmp_path / "state"
    argv = options(tmp_path, out, 100000, "--format", "text", "--", *train_args(out, 100000, "--step-time", "0.02"))
    watcher = subprocess.Popen([PY, "-m", "pytest_spml.loop_cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and len(metrics_steps(out)) >= 15)
        trainer = int((out / "pid").read_text())
        watcher.send_signal(signal.SIGTERM)
        stdout, stderr = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, stderr  # healthy when the watch ended
    assert not pid_alive(trainer)
    assert "outcome:    interrupted" in stdout and "stopped the run's process group" in stdout
    doc = json.loads((state / "watch-state.json").read_text())
    assert doc["events"][-1]["kind"] == "end" and doc["events"][-1]["outcome"] == "interrupted"
    assert "interrupted" in (state / "FINAL_SUMMARY.md").read_text()


def test_junit_has_a_case_per_check_and_restart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    junit = tmp_path / "watch.xml"
    flags = ("--ckpt-every", "5", "--step-time", "0.01", "--fail", "sigkill", "--fail-at", "12")
    code = loop_cli.main([*options(tmp_path, out, 30, "--junitxml", str(junit), "--resume-command",
                                   resume_command(out, 30, *flags)), "--", *train_args(out, 30, *flags)])
    capsys.readouterr()
    assert code == 0
    names = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert any(n.startswith("restart-") for n in names) and any(n.startswith("check-") for n in names)
    assert names[-1] == "WATCH watch outcome"


@pytest.mark.parametrize("argv, message", [
    (["watch", "--interval", "1"], "nothing to watch"),
    (["watch", "--log", "m.jsonl", "--pid", "1", "--", "python", "t.py"], "--pid watches a run started elsewhere"),
    (["watch", "--log", "m.jsonl", "--context", "missing.md"], "the experiment context does not exist"),
    (["watch", "--log", "m.jsonl", "--backoff", "10", "--backoff-cap", "1"], "--backoff-cap must be at least"),
    (["watch", "--log", "m.jsonl", "--pid", "999999999"], "no such process"),
])
def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert loop_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_interval_follows_the_verdict_unless_overridden(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytest_spml.watch.check import SourceSpec, TrainingCheck
    from pytest_spml.watch.supervise import Supervisor, WatchConfig

    check = TrainingCheck([SourceSpec("log", str(tmp_path / "m.jsonl"))])
    adaptive = Supervisor(WatchConfig(state_dir=tmp_path), check)
    assert adaptive._interval(None) == 600  # the first check: 10 minutes
    for minutes in (10, 20, 30, 60):
        outcome = SimpleNamespace(verdict=SimpleNamespace(next_check_minutes=minutes))
        assert adaptive._interval(outcome) == minutes * 60
    fixed = Supervisor(WatchConfig(state_dir=tmp_path, interval=0.25), check)
    assert fixed._interval(None) == fixed._interval(outcome) == 0.25


def test_templates_quote_the_checkpoint(tmp_path: Path) -> None:
    from pytest_spml.watch.checkpoints import Checkpoint
    from pytest_spml.watch.supervise import fill_template

    ckpt = Checkpoint(tmp_path / "my run" / "ckpt_000400.pt", 400, 0.0, 1)
    filled = fill_template("python train.py --resume {checkpoint} --start {step} --job ${JOB}", ckpt)
    assert filled == f"python train.py --resume '{tmp_path}/my run/ckpt_000400.pt' --start 400 --job ${{JOB}}"
