"""`spml-loop watch` over a real two-rank torchrun job (gloo on the CPU): one watchdog per job, not per rank."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pytest_spml import loop_cli

pytest.importorskip("torch", reason="the torchrun tests need the torch extra")
DDP = Path(__file__).parent / "scripts" / "ddp_train.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

pytestmark = pytest.mark.slow


def _watch(capsys: pytest.CaptureFixture[str], tmp_path: Path, out: Path, *train: str) -> tuple[int, dict]:
    job = [*TORCHRUN, str(DDP), str(out), "--steps", "60", *train]
    resume = " ".join([*job, "--resume", "{checkpoint}"])
    code = loop_cli.main([
        "watch", "--log", str(out / "metrics.jsonl"), "--total-steps", "60", "--interval", "0.5", "--poll", "0.1",
        "--grace", "5", "--backoff", "0.1", "--checkpoint-settle", "0.2", "--checkpoints",
        str(out / "checkpoints" / "*.pt"), "--state-dir", str(tmp_path / "state"), "--output",
        str(tmp_path / "job.log"), "--no-plot", "--format", "json", "--resume-command", resume, "--", *job])
    return code, json.loads(capsys.readouterr().out)


def _events(doc: dict, kind: str) -> list[dict]:
    state = json.loads(Path(doc["files"][-1]).read_text())
    return [e for e in state["events"] if e["kind"] == kind]


def test_a_killed_rank_restarts_the_whole_job_from_its_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, doc = _watch(capsys, tmp_path, out, "--fail", "kill", "--fail-at", "25")
    assert code == 0, doc["reason"]
    assert doc["outcome"] == "completed" and doc["restarts"] == 1
    (restart,) = _events(doc, "restart")
    assert Path(restart["checkpoint"]).name == "step00020.pt"  # the newest complete checkpoint before the kill
    (crash,) = [e for e in _events(doc, "exit") if not e["ok"]]
    assert crash["failure"]["category"] == "environment", crash["failure"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 60 and set(range(1, 61)) <= set(steps)


def test_a_rank_that_raises_is_a_code_bug_and_is_not_restarted(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, doc = _watch(capsys, tmp_path, out, "--fail", "raise", "--fail-at", "25")
    assert code == 1 and doc["outcome"] == "code_bug" and doc["restarts"] == 0
    (crash,) = [e for e in _events(doc, "exit") if not e["ok"]]
    assert crash["failure"]["category"] == "code", crash["failure"]
    evidence = "\n".join(crash["failure"]["evidence"])
    assert "bad shape in the user's loss" in evidence and "ddp_train.py" in evidence
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step00010.pt", "step00020.pt"]


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert shutil.which("git")
