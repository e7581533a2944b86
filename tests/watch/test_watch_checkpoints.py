"""Finding a run's checkpoints: complete ones newest first, and the fallback after a failed load."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pytest_spml.watch.checkpoints import Checkpoints, compile_glob, is_partial_name, step_of


def write(path: Path, size: int = 10, age: float = 60.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_complete_checkpoints_newest_first_by_step(tmp_path: Path) -> None:
    for step, age in ((100, 30), (300, 10), (200, 20)):
        write(tmp_path / "checkpoints" / f"ckpt_{step:06d}.pt", age=age)
    write(tmp_path / "checkpoints" / "ckpt_000400.pt.tmp", age=5)  # a save in progress (atomic writer)
    write(tmp_path / "checkpoints" / ".ckpt_000400.pt.a1b2", age=5)
    found = Checkpoints(tmp_path, ["checkpoints/*.pt"], settle_seconds=1).complete()
    assert [c.step for c in found] == [300, 200, 100]


def test_a_file_still_changing_is_not_complete(tmp_path: Path) -> None:
    write(tmp_path / "checkpoints" / "ckpt_000100.pt", age=60)
    fresh = write(tmp_path / "checkpoints" / "ckpt_000200.pt", age=0)
    store = Checkpoints(tmp_path, ["checkpoints/*.pt"], settle_seconds=30)
    complete, pending = store.scan()
    assert [c.step for c in complete] == [100] and pending == [fresh]
    # once nothing writes any more (the settle time has passed), it counts
    assert store.latest(now=time.time() + 31).step == 200


def test_names_without_steps_go_by_modification_time(tmp_path: Path) -> None:
    write(tmp_path / "out" / "ckpt.pt", age=5)
    write(tmp_path / "checkpoints" / "best.pt", age=50)
    write(tmp_path / "checkpoints" / "ckpt_000900.pt", age=100)
    found = Checkpoints(tmp_path, settle_seconds=1).complete()  # the default globs
    assert [c.path.relative_to(tmp_path).as_posix() for c in found] == [
        "out/ckpt.pt", "checkpoints/best.pt", "checkpoints/ckpt_000900.pt"]


def test_default_globs_find_folders_and_skip_hidden_and_virtualenv_folders(tmp_path: Path) -> None:
    write(tmp_path / "hf-out" / "checkpoint-500" / "model.safetensors", age=30)
    write(tmp_path / "hf-out" / "checkpoint-1000" / "model.safetensors", age=20)
    write(tmp_path / "hf-out" / "checkpoint-1500" / "model.safetensors.tmp", age=20)  # shard being written
    write(tmp_path / ".venv" / "lib" / "checkpoints" / "ckpt_9.pt", age=30)
    write(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=3-step=1200.ckpt", age=40)
    for folder, age in (("checkpoint-500", 30), ("checkpoint-1000", 20), ("checkpoint-1500", 20)):
        # a folder's own time changes when a file is added to it: it counts too
        then = time.time() - age
        os.utime(tmp_path / "hf-out" / folder, (then, then))
    store = Checkpoints(tmp_path, settle_seconds=1)
    complete, pending = store.scan()
    assert [c.path.relative_to(tmp_path).as_posix() for c in complete] == [
        "lightning_logs/version_0/checkpoints/epoch=3-step=1200.ckpt", "hf-out/checkpoint-1000",
        "hf-out/checkpoint-500"]
    assert [p.name for p in pending] == ["checkpoint-1500"]
    assert complete[1].size == 10


def test_reject_falls_back_to_the_previous_until_rewritten(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        write(tmp_path / "ck" / f"ckpt_{step}.pt", size=step, age=100 - step)
    store = Checkpoints(tmp_path, [str(tmp_path / "ck" / "ckpt_*.pt")], settle_seconds=1)  # an absolute glob
    newest = store.latest()
    assert newest.step == 30
    store.reject(newest, "UnpicklingError")
    assert store.latest().step == 20
    store.reject(store.latest(), "UnpicklingError")
    assert store.latest().step == 10
    # the run saved step 30 again (a new file): it is a candidate again
    write(tmp_path / "ck" / "ckpt_30.pt", size=31, age=5)
    assert store.latest().step == 30


def test_names_and_globs() -> None:
    assert step_of(Path("ckpt_000400.pt")) == 400
    assert step_of(Path("checkpoint-1500")) == 1500
    assert step_of(Path("epoch=3-step=1200.ckpt")) == 1200
    assert step_of(Path("last.pt")) is None
    assert is_partial_name("ckpt.pt.tmp") and is_partial_name(".ckpt.pt.x1y2") and is_partial_name("a.pt.part")
    assert not is_partial_name("ckpt_000400.pt")
    glob = compile_glob("**/ckpt*.pt")
    assert glob.match("ckpt.pt") and glob.match("out/run1/ckpt_1.pt") and not glob.match("out/ckpt.pth")
    assert not compile_glob("checkpoints/*.pt").match("checkpoints/sub/a.pt")
