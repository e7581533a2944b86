"""``spml diagnose`` when things go wrong around the diagnosis: a pipeline that crashes or sees no data, bad
devices, an incident step the log does not have, a checkpoint whose name lies about its step, a requested check
without its inputs, and Ctrl-C. Real files and real processes throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import planted
import pytest
import torch
from helpers import BIN
from test_diagnose import _history, _train_like_the_user, diagnose, hypothesis, result

from pytest_spml.cli import main
from pytest_spml.diagnose import hypotheses

BROKEN = '''\
from pipe_ok import Pipeline


class BadBatches(Pipeline):
    def batches(self):
        raise FileNotFoundError("data/train.bin")


class BadBuild(Pipeline):
    def build(self):
        raise FileNotFoundError("weights.pt")


class NoBatches(Pipeline):
    def batches(self):
        return iter(())


class BadInit(Pipeline):
    def __init__(self, **kw):
        raise ValueError("no data folder")


class NoEval(Pipeline):
    eval_batches = None
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    planted.write_pipeline(folder, "pipe_ok")
    (folder / "brk.py").write_text(BROKEN)
    return folder


# ------------------------------------------------------------------------------------------------ 1: crash != healthy


@pytest.mark.parametrize(("cls", "words"), [("BadBatches", "data/train.bin"), ("BadBuild", "weights.pt")])
def test_a_pipeline_that_crashes_is_an_error_never_healthy(project: Path, tmp_path: Path, cls: str, words: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = diagnose(capsys, "--pipeline", f"{project / 'brk.py'}:{cls}", "--root", str(project), "--checks",
                         "reproduce,data,determinism", "--determinism-steps", "2", "--data-batches", "2",
                         "--steps", "3", "--out", str(tmp_path / "out"))

    assert code == 1 and doc["ok"] is False
    assert "crashes" in doc["headline"] and "healthy" not in doc["headline"].replace("not a healthy", "")
    for rid in ("REPRO", "H-DATA", "H-NONDET"):
        assert result(doc, rid)["status"] == "error", rid
        assert words in result(doc, rid)["message"]
    assert hypothesis(doc, "H-DATA")["verdict"] == "error" and hypothesis(doc, "H-NONDET")["verdict"] == "error"
    assert words in hypothesis(doc, "H-NONDET")["evidence"]["error"]
    # no "lr x0.1 is just as bad" about a crash: nothing was replayed
    assert hypothesis(doc, "H-OPTIM")["verdict"] == "not tested"
    assert "healthy" not in (tmp_path / "out" / "incident.md").read_text().split("## Summary")[0].lower() \
        .replace("not a healthy", "")


def test_a_pipeline_without_batches_is_an_error(project: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = diagnose(capsys, "--pipeline", f"{project / 'brk.py'}:NoBatches", "--root", str(project), "--checks",
                         "data,determinism", "--determinism-steps", "2", "--data-batches", "2",
                         "--out", str(tmp_path / "out"))

    assert code == 1
    assert result(doc, "H-DATA")["status"] == "error" and "no training batch" in result(doc, "H-DATA")["message"]
    nondet = result(doc, "H-NONDET")
    assert nondet["status"] == "error" and "no training step ran" in nondet["message"]
    assert doc["headline"].startswith("Not healthy")


def test_crashed_experiments_are_errors_in_the_hypotheses() -> None:
    lr = {"experiment": "replay with the learning rate x0.1", "scale": 0.1, "healthy": False, "after": {},
          "before": {}, "error": "the pipeline crashed before training (build: OSError: disk)"}
    h = hypotheses.optimizer_instability(None, lr, None, None)
    assert h.verdict == "error" and h.to_result().status.value == "error" and "disk" in h.summary
    empty = hypotheses.leakage(type("L", (), {"available": True, "error": None, "eval_examples": 0, "overlap": 0,
                                              "train_batches": 3, "to_dict": lambda self: {}})())
    assert empty.verdict == "error" and "0 evaluation example" in empty.summary


# ------------------------------------------------------------------------------------------------ 2: no tracebacks


def test_a_pipeline_whose_constructor_raises_is_bad_input(project: Path, tmp_path: Path) -> None:
    junit = tmp_path / "j.xml"
    done = subprocess.run([str(BIN / "spml"), "diagnose", "--pipeline", "brk.py:BadInit", "--checks", "data",
                           "--format", "json", "--junitxml", str(junit), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=project)

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no data folder" in done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["path"] == str(project / "brk.py") and error["line"] == 21
    assert "ValueError" in error["message"]
    assert ET.parse(junit).getroot().iter("testcase")


@pytest.mark.parametrize("device", [
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    "tpu", "cuda:x"])
def test_a_bad_device_is_bad_input_naming_the_option(project: Path, tmp_path: Path, device: str) -> None:
    done = subprocess.run([str(BIN / "spml"), "diagnose", "--pipeline", "pipe_ok:Pipeline", "--device", device,
                           "--checks", "data", "--format", "json", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=project)

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--device {device}:" in done.stderr and "--spml-l1-device" not in done.stderr
    assert json.loads(done.stdout)["ok"] is False


# ------------------------------------------------------------------------------------------------ 3: incident step


def test_an_incident_step_past_the_log_is_bad_input(project: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(60)))

    code = main(["diagnose", "--pipeline", "pipe_ok:Pipeline", "--root", str(project), "--log", str(log),
                 "--incident-step", "99999", "--out", str(tmp_path / "out")])

    err = capsys.readouterr().err
    assert code == 2 and "past the log's last step (59)" in err and str(log) in err
    assert not (tmp_path / "out").exists()  # refused before anything trained


def test_a_checkpoint_storing_a_step_after_the_incident_is_skipped(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    planted.write_pipeline(project, "pipe_ckstep", corrupt_step=50)
    log, saved = tmp_path / "run.jsonl", tmp_path / "saved"
    _train_like_the_user(project, "pipe_ckstep", log, saved, steps=61, every=20)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(saved / "ckpt_0020.pt", ckpt / "ckpt_20.pt")
    shutil.copy(saved / "ckpt_0060.pt", ckpt / "ckpt_40.pt")  # its name says 40; it stores step 60
    assert torch.load(ckpt / "ckpt_40.pt", weights_only=False)["step"] == 60

    code, doc = diagnose(capsys, "--pipeline", "pipe_ckstep:Pipeline", "--root", str(project), "--log", str(log),
                         "--incident-step", "50", "--checkpoint-dir", str(ckpt), "--checks", "reproduce",
                         "--out", str(tmp_path / "out"))

    repro = doc["reproduction"]
    assert repro["checkpoint"].endswith("ckpt_20.pt") and repro["start_step"] == 20
    assert any("ckpt_40.pt" in s and "stores step 60" in s for s in repro["skipped_checkpoints"])
    assert code == 1 and repro["reproduced"] and repro["step"] == 50


# ------------------------------------------------------------------------------------------------ 4: missing inputs


def test_requested_leakage_without_eval_batches_is_bad_input(project: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["diagnose", "--pipeline", f"{project / 'brk.py'}:NoEval", "--root", str(project), "--checks", "leakage",
                 "--device", "cpu", "--out", str(tmp_path / "out")])

    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--checks leakage needs the pipeline's eval_batches()" in err and "brk.py" in err


# ------------------------------------------------------------------------------------------------ 5: Ctrl-C


def test_ctrl_c_during_code_bisection_still_prints_the_json_document(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shas = _history(repo)
    scratch, junit = tmp_path / "scratch", tmp_path / "j.xml"
    scratch.mkdir()
    child = subprocess.Popen(
        [str(BIN / "spml"), "diagnose", "--pipeline", "pipe_code:Pipeline", "--root", str(repo), "--device", "cpu",
         "--good", shas[0], "--checks", "code", "--steps", "3000", "--format", "json", "--junitxml", str(junit),
         "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(scratch.glob("spml-bisect-*/*.log")):
        time.sleep(0.1)  # a commit's run has started in the temporary clone
    assert list(scratch.glob("spml-bisect-*")), "the bisection never started"
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)

    assert child.returncode == 130, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["interrupted"] is True
    assert doc["results"][0]["status"] == "error" and "interrupted" in doc["results"][0]["message"]
    assert any("interrupted" in (c.get("name") or "") + ET.tostring(c, encoding="unicode")
               for c in ET.parse(junit).getroot().iter("testcase"))
    assert list(scratch.glob("spml-bisect-*")) == []  # the clone is still removed
