"""`spml-loop check` between invocations: saved state, plot and final summary."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from pytest_spml import loop_cli
from pytest_spml.watch import check as checking

RUNS = Path(__file__).parent / "runs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _check(capsys: pytest.CaptureFixture[str], log: Path, *extra: str) -> tuple[int, dict]:
    code = loop_cli.main(["check", "--log", str(log), "--format", "json", "--no-plot", *extra])
    return code, json.loads(capsys.readouterr().out)


def _grow(src: Path, dst: Path, lines: int) -> None:
    with dst.open("a") as out:
        out.writelines(src.read_text().splitlines(keepends=True)[:lines][len(dst.read_text().splitlines())
                                                                          if dst.exists() else 0:])


def test_recheck_reads_only_new_records_and_keeps_statistics(tmp_path: Path, capsys) -> None:
    src = RUNS / "healthy_sgd.jsonl"
    log = tmp_path / "metrics.jsonl"
    _grow(src, log, 200)
    now = str(json.loads(src.read_text().splitlines()[-1])["time"] + 1)
    _, first = _check(capsys, log, "--now", now)
    _grow(src, log, 312)
    _, second = _check(capsys, log, "--now", now)
    assert first["new_records"] == 200 and second["new_records"] == 112
    # the continued check judges the whole run, as a fresh one does
    _, fresh = _check(capsys, log, "--now", now, "--fresh")
    assert fresh["new_records"] == 312
    assert (second["decision"], second["status"], second["step"]) == (fresh["decision"], fresh["status"], fresh["step"])
    assert second["metrics"] == fresh["metrics"]


def test_consecutive_healthy_checks_lengthen_the_interval(tmp_path: Path, capsys) -> None:
    src = RUNS / "healthy_adamw.jsonl"
    now = str(json.loads(src.read_text().splitlines()[-1])["time"] + 1)
    minutes = [_check(capsys, src, "--now", now)[1]["next_check_minutes"] for _ in range(4)]
    assert minutes == [10, 20, 30, 60]


def test_state_of_other_sources_is_not_reused(tmp_path: Path, capsys) -> None:
    _check(capsys, RUNS / "healthy_sgd.jsonl")
    _, doc = _check(capsys, RUNS / "healthy_adamw.jsonl")
    assert doc["new_records"] > 0
    assert len(list((tmp_path / ".spml" / "watch").glob("check-state-*.pickle"))) == 2


def test_damaged_or_foreign_state_is_never_loaded(tmp_path: Path, capsys) -> None:
    log = RUNS / "healthy_sgd.jsonl"
    _, first = _check(capsys, log)
    [state] = (tmp_path / ".spml" / "watch").glob("check-state-*.pickle")

    class Evil:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())

    state.write_bytes(pickle.dumps({"version": 1, "series": Evil()}))
    code = loop_cli.main(["check", "--log", str(log), "--no-plot", "--format", "json"])
    out = capsys.readouterr().out
    assert code in (0, 1) and json.loads(out)["new_records"] == first["new_records"]
    assert not (tmp_path / "pwned").exists()
    assert "read from the start: saved state unusable (UnpicklingError)" in json.loads(out)["notes"][0]
    state.write_bytes(b"\x00garbage")
    _, doc = _check(capsys, log)
    assert doc["new_records"] == first["new_records"]


def test_engine_restore_matches_uninterrupted_engine(tmp_path: Path) -> None:
    """Two polls with a save/restore between them see what one engine polling twice sees."""
    src = RUNS / "bad_batch_spike.jsonl"
    log = tmp_path / "m.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:150]))
    spec = [checking.SourceSpec("log", str(log))]
    live = checking.TrainingCheck(spec)
    live.poll(now=0)
    saved = checking.TrainingCheck(spec)
    saved.poll(now=0)
    saved.save(tmp_path / "state.pickle")
    with log.open("a") as f:
        f.writelines(lines[150:])
    resumed = checking.TrainingCheck(spec)
    assert resumed.restore(tmp_path / "state.pickle") is None
    a, b = live.poll(now=0), resumed.poll(now=0)
    assert a.new_records == b.new_records == len(lines) - 150
    assert [x.to_dict() for x in a.anomalies] == [x.to_dict() for x in b.anomalies]
    assert a.verdict == b.verdict


def test_plot_marks_the_anomaly(tmp_path: Path, capsys) -> None:
    log = RUNS / "lr_ramp_nan.jsonl"
    code = loop_cli.main(["check", "--log", str(log), "--evidence-dir", str(tmp_path / "ev"), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    png = tmp_path / "ev" / "training-check.png"
    assert code == 1 and str(png) in doc["evidence_files"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image

    pixels = image.imread(png)
    # a red dashed line marks the anomaly: strongly red pixels exist
    red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.sum() > 50


def test_final_summary_on_completion(tmp_path: Path, capsys) -> None:
    log = RUNS / "healthy_adamw.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    code, doc = _check(capsys, log, "--total-steps", str(last["step"]), "--evidence-dir", str(tmp_path / "ev"))
    assert code == 0 and doc["status"] == "COMPLETE"
    summary = (tmp_path / "ev" / "FINAL_SUMMARY.md").read_text()
    assert "Status: COMPLETE" in summary and "| loss |" in summary
    assert (tmp_path / "ev" / "completion-prompt.md").is_file()


def test_a_restart_gets_its_own_start_up_grace(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    log.write_text("".join(json.dumps({"step": i, "time": 1000.0 + i, "loss": 2.0 - i / 100}) + "\n"
                           for i in range(40)))
    engine = checking.TrainingCheck([checking.SourceSpec("log", str(log))])
    assert engine.poll(now=1100).verdict.status == "STALE"  # 60 s silent after 1 s steps
    engine.notify_restart(at=1100)
    assert engine.poll(now=1200).verdict.decision != "STOP"  # loading the checkpoint: within the grace
    late = engine.poll(now=1100 + 16 * 60)
    assert late.verdict.status == "STALE" and "after the restart" in late.verdict.reason
