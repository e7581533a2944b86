"""Metric sources of the watchdog: JSONL, plain-text logs, TensorBoard, format detection."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pytest_spml.watch import sources
from pytest_spml.watch.model import Record
from pytest_spml.watch.sources import (
    detect_format,
    iter_jsonl,
    iter_text_log,
    read_jsonl,
    read_source,
    read_tensorboard,
    read_text_log,
)

DATA = Path(__file__).parent / "data"


def copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copyfile(DATA / name, target)
    return target


def append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def line(**row) -> str:
    return json.dumps(row) + "\n"


# ----------------------------------------------------------------------------- JSONL: tolerances


def test_jsonl_messy_fixture_every_tolerance(tmp_path):
    path = copy("messy.jsonl", tmp_path)
    records, state = read_jsonl(path)
    by_step = {r.step: r for r in records}
    assert [r.step for r in records] == [1, 2, 3, 4, 6, 7, 8, None]

    assert by_step[1] == Record(1, 1700000000.5, {"loss": 2.5, "lr": 0.0003}, f"{path}:1")
    # NaN / Infinity / -Infinity tokens are kept as non-finite floats
    two = by_step[2].values
    assert math.isnan(two["loss"]) and two["grad_norm"] == math.inf and two["neg"] == -math.inf
    assert by_step[2].line == f"{path}:3"  # the blank line 2 counts
    # "nan" / "inf" strings too; other strings, booleans, nulls and lists are dropped; step from "iter"
    three = by_step[3]
    assert three.time == 1700000001.5
    assert math.isnan(three.values["loss"]) and three.values["grad_norm"] == math.inf
    assert three.values["neg"] == -math.inf
    assert set(three.values) == {"loss", "grad_norm", "neg"}
    # nested dicts flattened with "/", ints as floats, integer _timestamp as a float time
    four = by_step[4]
    assert four.values == {"train/loss": 2.1, "train/acc/top1": 0.5, "tokens": 1024.0}
    assert all(type(v) is float for v in four.values.values())
    assert four.time == 1700000002.0 and type(four.time) is float
    # ISO wall_time, leading/trailing blanks, the remaining step keys
    assert by_step[6].time == 1704067200.0 and by_step[6].values == {"loss": 1.9}
    assert by_step[7].values == {"loss": 1.8}
    assert by_step[8].values == {"loss": 1.7, "epoch": 0.5}
    assert records[-1] == Record(None, None, {"loss": 1.6}, f"{path}:12")
    # invalid lines: plain text (5), a syntax error (7), valid JSON that is no object (8)
    assert state["bad_lines"] == 3 and state["first_bad_line"] == 5
    assert state["lineno"] == 12 and state["offset"] == path.stat().st_size
    assert state["records"] == 8 and state["note"] is None


def test_jsonl_step_and_time_keys_leave_the_values_but_other_keys_stay(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(line(step=5, iter=7, time=10.0, timestamp=20.0, loss=1.0)
                    + line(global_step=3.0, loss=2.0)  # an integral float is a step
                    + line(step=float("nan"), iter=9, loss=3.0)  # an unusable step is not a metric either
                    + line(step="12", time="1700000000.25", loss=4.0)
                    + line(step=True, loss=5.0))
    records, _ = read_jsonl(path)
    assert [(r.step, r.time) for r in records] == [(5, 10.0), (3, None), (9, None), (12, 1700000000.25),
                                                   (None, None)]
    assert records[0].values == {"iter": 7.0, "timestamp": 20.0, "loss": 1.0}
    assert records[2].values == {"loss": 3.0}
    assert records[4].values == {"loss": 5.0}
    # precedence holds line by line, whatever the previous line used
    path.write_text(line(iter=1, _timestamp=5.0) + line(iter=2, step=20, _timestamp=6.0, time=7.0))
    records, _ = read_jsonl(path)
    assert [(r.step, r.time, r.values) for r in records] == [(1, 5.0, {}), (20, 7.0, {"iter": 2.0, "_timestamp": 6.0})]


def test_jsonl_odd_bytes_and_line_endings(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 1.5}\r\n'
                     b'{"step": 2, "loss": 1.25, "name": "\xff\xfe"}\r\n'  # invalid UTF-8 inside a string
                     b'\xff\xfe garbage\n'
                     b'{"step": 3, "loss": 1e400, "big": 123456789012345678901234567890}\n'
                     b'{"step": 4, "loss": 1.0} trailing\n'
                     b'{"step": 5, "a": [1,\n'
                     b'2]}\n')
    records, state = read_jsonl(path)
    assert [r.step for r in records] == [1, 2, 3]
    assert records[1].values == {"loss": 1.25}
    assert records[2].values["loss"] == math.inf and records[2].values["big"] == pytest.approx(1.2345678901e29)
    assert state["bad_lines"] == 4 and state["first_bad_line"] == 3


def test_jsonl_missing_file_then_created(tmp_path):
    path = tmp_path / "later.jsonl"
    records, state = read_jsonl(path)
    assert records == [] and state["note"] == "missing" and state["offset"] == 0
    path.write_text(line(step=1, loss=1.0))
    records, state = read_jsonl(path, state)
    assert [r.step for r in records] == [1] and state["note"] is None


# ----------------------------------------------------------------------------- JSONL: incremental


def test_jsonl_incremental_returns_only_new_records(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line(step=i, loss=1.0 / (i + 1)) for i in range(100)))
    first, state = read_jsonl(path)
    assert len(first) == 100
    again, state = read_jsonl(path, state)
    assert again == [] and state["offset"] == path.stat().st_size
    append(path, "".join(line(step=i, loss=0.5) for i in range(100, 103)))
    new, state = read_jsonl(path, state)
    assert [r.step for r in new] == [100, 101, 102]
    assert [r.line for r in new] == [f"{path}:{n}" for n in (101, 102, 103)]
    assert state["records"] == 103 and state["lineno"] == 103


def test_jsonl_state_is_not_mutated_and_survives_json(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(line(step=1, loss=1.0))
    _, state = read_jsonl(path)
    saved = json.loads(json.dumps(state))  # the watchdog may keep it on disk between runs
    snapshot = dict(saved)
    append(path, line(step=2, loss=2.0))
    new, state2 = read_jsonl(path, saved)
    assert saved == snapshot  # read_jsonl leaves the given state alone
    assert [r.step for r in new] == [2] and state2["offset"] == path.stat().st_size


def test_jsonl_partial_last_line_is_kept_until_completed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(line(step=1, loss=1.0) + line(step=2, loss=2.0) + '{"step": 3, "lo')
    records, state = read_jsonl(path)
    assert [r.step for r in records] == [1, 2]
    assert state["partial_bytes"] == len('{"step": 3, "lo') and state["bad_lines"] == 0
    again, state = read_jsonl(path, state)  # still half-written: nothing, not a bad line
    assert again == [] and state["bad_lines"] == 0
    append(path, 'ss": 3.0}\n' + line(step=4, loss=4.0))
    records, state = read_jsonl(path, state)
    assert [(r.step, r.values, r.line) for r in records] == [(3, {"loss": 3.0}, f"{path}:3"),
                                                             (4, {"loss": 4.0}, f"{path}:4")]
    assert state["partial_bytes"] == 0 and state["bad_lines"] == 0


def test_jsonl_unterminated_complete_last_line_is_taken_once(tmp_path):
    # json.dump(row, f) then f.write("\n") later, or a log that ends without a newline
    path = tmp_path / "m.jsonl"
    path.write_text(line(step=1, loss=1.0) + json.dumps({"step": 2, "loss": 2.0}))
    records, state = read_jsonl(path)
    assert [(r.step, r.line) for r in records] == [(1, f"{path}:1"), (2, f"{path}:2")]
    assert state["partial_bytes"] == 0
    append(path, "\n" + line(step=3, loss=3.0))
    records, state = read_jsonl(path, state)
    assert [(r.step, r.line) for r in records] == [(3, f"{path}:3")]
    # a writer that appends the next object without a newline in between
    path2 = tmp_path / "m2.jsonl"
    path2.write_text(json.dumps({"step": 1}))
    records, state = read_jsonl(path2)
    append(path2, json.dumps({"step": 2}) + "\n")
    records, state = read_jsonl(path2, state)
    assert [r.step for r in records] == [2] and state["bad_lines"] == 0


def test_jsonl_rotation_restarts_from_zero(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line(step=i, loss=1.0) for i in range(10)))
    _, state = read_jsonl(path)
    os.rename(path, tmp_path / "m.jsonl.1")  # logrotate: a new file at the same path
    path.write_text("".join(line(step=i, loss=2.0) for i in range(100, 120)))
    records, state = read_jsonl(path, state)
    assert state["note"] == "rotated"
    assert [r.step for r in records] == list(range(100, 120)) and records[0].line == f"{path}:1"
    assert state["records"] == 20
    _, state = read_jsonl(path, state)
    assert state["note"] is None


def test_jsonl_truncation_restarts_from_zero(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line(step=i, loss=1.0) for i in range(10)))
    _, state = read_jsonl(path)
    inode = path.stat().st_ino
    with open(path, "r+") as f:  # same inode, shorter
        f.truncate(0)
    append(path, line(step=0, loss=9.0))
    assert path.stat().st_ino == inode
    records, state = read_jsonl(path, state)
    assert state["note"] == "truncated"
    assert [(r.step, r.values["loss"]) for r in records] == [(0, 9.0)]


def test_jsonl_rewritten_in_place_and_longer_is_noticed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(line(step=1, loss=1.0))
    _, state = read_jsonl(path)
    with open(path, "r+") as f:  # same inode, rewritten with more than before
        f.truncate(0)
        f.write("".join(line(step=i, loss=5.0) for i in range(50, 60)))
    records, state = read_jsonl(path, state)
    assert state["note"] == "replaced"
    assert [r.step for r in records] == list(range(50, 60))


def test_jsonl_streams_in_chunks_with_the_same_result(tmp_path):
    path = copy("messy.jsonl", tmp_path)
    append(path, "".join(line(step=i, loss=float(i), eval={"loss": 1.0}) for i in range(10, 60)))
    whole, whole_state = read_jsonl(path)
    state: dict = {}
    batches = list(iter_jsonl(path, state, chunk_size=50))  # lines straddle every chunk boundary
    assert len(batches) > 10
    assert [r for batch in batches for r in batch] == whole
    assert {k: state[k] for k in ("offset", "lineno", "bad_lines", "first_bad_line", "records")} == \
        {k: whole_state[k] for k in ("offset", "lineno", "bad_lines", "first_bad_line", "records")}


def test_jsonl_stopping_early_leaves_a_consistent_state(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line(step=i) for i in range(200)))
    state: dict = {}
    seen = []
    for batch in iter_jsonl(path, state, chunk_size=100):
        seen.extend(batch)
        if len(seen) >= 50:
            break
    rest, _ = read_jsonl(path, state)
    assert [r.step for r in seen + rest] == list(range(200))


def test_jsonl_overlong_line_is_skipped_without_holding_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE", 200)
    path = tmp_path / "m.jsonl"
    path.write_text(line(step=1) + json.dumps({"step": 2, "blob": "x" * 1000}) + "\n" + line(step=3))
    records, state = read_jsonl(path)  # default chunk: the long line ends in the same chunk (kept whole)
    assert [r.step for r in records] == [1, 2, 3]
    state = {}
    records = [r for batch in iter_jsonl(path, state, chunk_size=64) for r in batch]
    assert [r.step for r in records] == [1, 3]
    assert state["bad_lines"] == 1 and state["first_bad_line"] == 2
    assert records[1].line == f"{path}:3"
    # still being written when read: skipped across reads
    path2 = tmp_path / "m2.jsonl"
    path2.write_text(line(step=1) + '{"blob": "' + "y" * 500)
    state = {}
    assert [r.step for b in iter_jsonl(path2, state, chunk_size=64) for r in b] == [1]
    assert state["skipping"] is True
    append(path2, "y" * 300 + '"}\n' + line(step=4))
    state = json.loads(json.dumps(state))
    assert [r.step for b in iter_jsonl(path2, state, chunk_size=64) for r in b] == [4]
    assert state["skipping"] is False and state["bad_lines"] == 1 and state["first_bad_line"] == 2
    assert state["lineno"] == 3


# ----------------------------------------------------------------------------- plain-text logs


@pytest.mark.parametrize("preset", ["nanogpt", "auto"])
def test_text_nanogpt(tmp_path, preset):
    path = copy("nanogpt.log", tmp_path)
    records, state = read_text_log(path, preset=preset)
    rows = [(r.step, r.values) for r in records]
    assert rows[0] == (0, {"loss": 4.2874, "val_loss": 4.2823})
    assert rows[1] == (0, {"loss": 4.2654, "step_time_s": pytest.approx(29.85023)})  # mfu -100% dropped
    assert rows[2] == (10, {"loss": 3.2544, "step_time_s": pytest.approx(0.04385), "mfu": pytest.approx(0.085)})
    assert math.isnan(rows[4][1]["loss"]) and rows[4][0] == 30
    assert rows[5] == (250, {"loss": 1.9685, "val_loss": 2.0652})
    assert rows[6][0] == 250 and rows[6][1]["mfu"] == pytest.approx(0.0809)
    assert len(records) == 7 and all(r.time is None for r in records)
    assert records[0].line == f"{path}:10"
    if preset == "auto":
        assert state["text_preset"] == "nanogpt"


@pytest.mark.parametrize("preset", ["hf", "auto"])
def test_text_hf_trainer(tmp_path, preset):
    path = copy("hf_trainer.log", tmp_path)
    records, state = read_text_log(path, preset=preset)
    assert [r.step for r in records] == [1, 2, 3, 3, 3]  # counted; eval and summary take the current count
    assert records[0].values == {"loss": 2.3101, "grad_norm": 1.2034, "lr": 5e-05, "epoch": 0.12}
    assert records[1].values["lr"] == 4.5e-05  # behind a progress bar
    assert math.isnan(records[2].values["loss"]) and records[2].values["grad_norm"] == math.inf
    assert records[3].values["eval_loss"] == 2.05
    assert records[4].values["train_loss"] == 2.2
    if preset == "auto":
        assert state["text_preset"] == "hf"
    # the count carries over to the next read
    append(path, "{'loss': 1.9, 'learning_rate': 3e-05, 'epoch': 0.48}\n")
    new, state = read_text_log(path, preset=preset, state=state)
    assert [(r.step, r.values["lr"]) for r in new] == [(4, 3e-05)]


def test_text_hf_lines_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hf.log"
    path.write_text(f"{{'loss': __import__('pathlib').Path({str(marker)!r}).touch()}}\n"
                    "{'loss': (lambda: 1)()}\n"
                    "{'loss': 1.5, 'step': 7, 'x': [1, 2], 'name': 'a'}\n"
                    "{'loss': 2.5, 'learning_rate': -inf}\n")
    records, _ = read_text_log(path, preset="hf")
    assert not marker.exists()
    assert [(r.step, r.values) for r in records] == [(7, {"loss": 1.5}), (1, {"loss": 2.5, "lr": -math.inf})]


def test_text_progress_bar_carriage_returns(tmp_path):
    path = tmp_path / "hf.log"
    path.write_bytes(b" 1%|          | 1/100\r 2%|          | 2/100\r{'loss': 3.0, 'epoch': 0.1}\r 3%| | 3/100\n")
    records, state = read_text_log(path)
    assert [(r.step, r.values) for r in records] == [(1, {"loss": 3.0, "epoch": 0.1})]
    assert state["text_preset"] == "hf"


@pytest.mark.parametrize("preset", ["kv", "auto"])
def test_text_key_value(tmp_path, preset):
    path = copy("kv.log", tmp_path)
    records, state = read_text_log(path, preset=preset)
    if preset == "kv":  # the argparse dump matches the explicit preset, as a step-less record
        assert records[0].step is None and records[0].values == {"lr": 0.0003, "batch_size": 32.0}
        records = records[1:]
    else:  # "auto" locks onto kv at the first metric line, not at the config dump
        assert state["text_preset"] == "kv"
    assert [(r.step, r.values.get("loss")) for r in records[:2]] == [(10, 2.3), (20, 2.2)]
    assert records[0].values == {"loss": 2.3, "lr": 3e-4, "tokens/s": 1.2e5}
    assert "mode" not in records[1].values
    assert records[2].step == 30 and math.isnan(records[2].values["loss"])
    assert records[2].line == f"{path}:6"


def test_text_regex(tmp_path):
    path = copy("custom.log", tmp_path)
    regex = r"batch (?P<step>\d+)/\d+ \| loss (?P<loss>\S+) \| acc (?P<acc>\S+)"
    records, _ = read_text_log(path, regex=regex)
    assert [(r.step, r.values) for r in records[:2]] == [(100, {"loss": 2.34, "acc": 0.51}), (200, {"loss": 2.2})]
    assert records[2].step == 300 and records[2].values == {"loss": math.inf, "acc": 0.55}
    assert records[2].line == f"{path}:4"
    with pytest.raises(ValueError, match="named groups"):
        read_text_log(path, regex=r"loss (\S+)")
    with pytest.raises(ValueError, match="unknown text preset"):
        read_text_log(path, preset="fairseq")


def test_text_auto_matching_nothing_yet_keeps_looking(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("loading data\nbuilding model\n")
    records, state = read_text_log(path)
    assert records == [] and "text_preset" not in state
    append(path, "iter 1: loss 2.5, time 40.00ms, mfu 10.00%\n")
    records, state = read_text_log(path, state=state)
    assert [(r.step, r.values["loss"]) for r in records] == [(1, 2.5)] and state["text_preset"] == "nanogpt"


def test_text_partial_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("iter 10: loss 3.0, time 40.00ms, mfu 10.00%\niter 20: loss 2.3")
    records, state = read_text_log(path, preset="nanogpt")
    assert [r.step for r in records] == [10] and state["partial_bytes"] == len("iter 20: loss 2.3")
    append(path, "456, time 41.00ms, mfu 10.10%\n")
    records, state = read_text_log(path, preset="nanogpt", state=state)
    assert [(r.step, r.values["loss"], r.line) for r in records] == [(20, 2.3456, f"{path}:2")]
    # and chunked reading gives the same records as a whole read
    whole, _ = read_text_log(path, preset="nanogpt")
    chunked = [r for b in iter_text_log(path, "nanogpt", None, {}, chunk_size=7) for r in b]
    assert chunked == whole


def test_text_rotation_detects_the_preset_again(tmp_path):
    path = copy("nanogpt.log", tmp_path)
    _, state = read_text_log(path)
    assert state["text_preset"] == "nanogpt"
    os.rename(path, tmp_path / "old.log")
    shutil.copyfile(DATA / "hf_trainer.log", path)
    records, state = read_text_log(path, state=state)
    assert state["note"] == "rotated" and state["text_preset"] == "hf" and len(records) == 5


# ----------------------------------------------------------------------------- format detection, dispatch


def test_detect_format(tmp_path):
    assert detect_format(DATA / "messy.jsonl") == "jsonl"
    for name in ("nanogpt.log", "hf_trainer.log", "kv.log", "custom.log"):
        assert detect_format(DATA / name) == "text", name
    jsonl_named_log = tmp_path / "train.log"  # content wins over the name
    jsonl_named_log.write_text("starting\n" + line(step=1, loss=1.0) + line(step=2, loss=1.0))
    assert detect_format(jsonl_named_log) == "jsonl"
    one = tmp_path / "one"
    one.write_text(json.dumps({"step": 1}))  # a single unterminated line
    assert detect_format(one) == "jsonl"
    assert detect_format(tmp_path / "missing.log") == "text"
    assert detect_format(tmp_path / "missing.jsonl") == "jsonl"
    (tmp_path / "empty").touch()
    assert detect_format(tmp_path / "empty") == "jsonl"
    tb = tmp_path / "tb"
    (tb / "run1").mkdir(parents=True)
    event = tb / "run1" / "events.out.tfevents.1700000000.host.1.0"
    event.touch()
    assert detect_format(tb) == "tensorboard"
    assert detect_format(event) == "tensorboard"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="without TensorBoard event files"):
        detect_format(tmp_path / "nothing")


def test_read_source_dispatches(tmp_path):
    path = copy("nanogpt.log", tmp_path)
    records, state = read_source(path)
    assert state["format"] == "text" and len(records) == 7
    append(path, "iter 260: loss 1.9865, time 44.12ms, mfu 8.12%\n")
    records, state = read_source(path, state)
    assert [r.step for r in records] == [260]
    jsonl = copy("messy.jsonl", tmp_path)
    records, state = read_source(jsonl)
    assert state["format"] == "jsonl" and len(records) == 8
    with pytest.raises(ValueError, match="unknown format"):
        read_source(jsonl, fmt="csv")


def test_importing_sources_stays_light():
    code = ("import sys, pytest_spml.watch.sources as s; "
            "heavy = [m for m in ('tensorboard', 'torch', 'numpy', 'google.protobuf') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'pytest-spml\[tensorboard\]'"):
        read_tensorboard(tmp_path)


def _write_events(logdir: Path, points: dict[str, list[tuple[int, float]]], wall_time: float = 1.7e9) -> None:
    """A real event file, written with tensorboard's own writer."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(logdir))
    for tag, series in points.items():
        for step, value in series:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=wall_time + step, step=step, summary=summary))
    writer.close()


def test_tensorboard_real_event_file_keeps_every_scalar(tmp_path):
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "tb"
    n = 12_000
    _write_events(logdir, {"train/loss": [(s, 4.0 - s / 4096) for s in range(n)],  # exact in float32
                           "lr": [(s, 0.5) for s in range(0, n, 100)]})
    assert detect_format(logdir) == "tensorboard"
    records, state = read_tensorboard(logdir)
    assert len(records) == n  # no reservoir sampling: 12,000 written, 12,000 read
    assert [r.step for r in records] == list(range(n))
    assert all(r.values["train/loss"] == 4.0 - r.step / 4096 for r in records)
    assert records[100].values == {"train/loss": 4.0 - 100 / 4096, "lr": 0.5}
    assert records[101].values == {"train/loss": 4.0 - 101 / 4096}
    assert records[5].time == pytest.approx(1.7e9 + 5)
    assert state["last_steps"] == {"train/loss": n - 1, "lr": n - 100}

    again, state = read_tensorboard(logdir, state)
    assert again == []
    _write_events(logdir, {"train/loss": [(s, 1.0) for s in range(n, n + 50)]})  # a second event file
    new, state = read_tensorboard(logdir, state)
    assert [r.step for r in new] == list(range(n, n + 50))
    # a state saved as JSON (accumulators dropped) reads the files again but returns only new steps
    saved = json.loads(json.dumps({k: v for k, v in state.items() if not k.startswith("_")}))
    _write_events(logdir, {"train/loss": [(n + 50, 0.5)]})
    new, _ = read_tensorboard(logdir, saved)
    assert [(r.step, r.values) for r in new] == [(n + 50, {"train/loss": 0.5})]


def test_tensorboard_torch_summary_writer(tmp_path):
    pytest.importorskip("tensorboard")
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    logdir = tmp_path / "runs" / "exp1"
    writer = SummaryWriter(log_dir=str(logdir))
    for step in range(12_000):
        writer.add_scalar("loss", 2.0 + (step % 7) / 8, step)
    writer.close()
    records, _ = read_tensorboard(tmp_path / "runs")  # the parent: one run below it, no prefix
    assert len(records) == 12_000
    assert records[-1].step == 11_999 and records[-1].values == {"loss": 2.0 + (11_999 % 7) / 8}
    assert read_source(tmp_path / "runs")[0] == records


class _FakeEvent(types.SimpleNamespace):
    pass


def _fake_tensorboard(monkeypatch, created: list) -> None:
    """A stand-in for tensorboard's EventAccumulator over JSON-lines 'event files' (tests the merging)."""
    module = types.ModuleType("tensorboard.backend.event_processing.event_accumulator")
    module.SCALARS, module.TENSORS, module.IMAGES = "scalars", "tensors", "images"
    module.AUDIO, module.HISTOGRAMS, module.COMPRESSED_HISTOGRAMS = "audio", "histograms", "compressedHistograms"

    class EventAccumulator:
        def __init__(self, path, size_guidance=None):
            self.path, self.size_guidance, self.scalars, self.reloads = path, size_guidance, {}, 0
            created.append(self)

        def Reload(self):
            self.reloads += 1
            self.scalars = {}
            for name in sorted(os.listdir(self.path)):
                if name.startswith("events.out.tfevents."):
                    for row in Path(self.path, name).read_text().splitlines():
                        tag, step, value, wall = json.loads(row)
                        self.scalars.setdefault(tag, []).append(_FakeEvent(step=step, value=value, wall_time=wall))
            return self

        def Tags(self):
            return {"scalars": list(self.scalars)}

        def Scalars(self, tag):
            return list(self.scalars[tag])

    module.EventAccumulator = EventAccumulator
    parents = ["tensorboard", "tensorboard.backend", "tensorboard.backend.event_processing"]
    chain = [types.ModuleType(name) for name in parents] + [module]
    for parent, child in zip(chain, chain[1:]):
        setattr(parent, child.__name__.rsplit(".", 1)[1], child)
    for mod in chain:
        monkeypatch.setitem(sys.modules, mod.__name__, mod)


def _fake_events(directory: Path, rows: list) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "events.out.tfevents.1.host", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_tensorboard_merging_runs_and_increments(tmp_path, monkeypatch):
    created: list = []
    _fake_tensorboard(monkeypatch, created)
    logdir = tmp_path / "logs"
    _fake_events(logdir / "train", [["loss", 1, 2.0, 10.0], ["lr", 1, 0.1, 10.5], ["loss", 2, 1.9, 11.0]])
    _fake_events(logdir / "eval", [["loss", 2, 2.2, 12.0]])
    records, state = read_tensorboard(logdir)
    assert created[0].size_guidance["scalars"] == 0  # keep every scalar
    assert [(r.step, r.time, r.values) for r in records] == [
        (1, 10.5, {"train/loss": 2.0, "train/lr": 0.1}),
        (2, 12.0, {"eval/loss": 2.2, "train/loss": 1.9}),
    ]
    # per tag, only the steps after the last one returned; the accumulators are reused
    _fake_events(logdir / "train", [["loss", 3, 1.8, 13.0]])
    _fake_events(logdir / "eval", [["loss", 3, 2.1, 13.5]])
    new, state = read_tensorboard(logdir, state)
    assert [(r.step, r.values) for r in new] == [(3, {"eval/loss": 2.1, "train/loss": 1.8})]
    assert len(created) == 2 and all(acc.reloads == 2 for acc in created)
    # a value logged late for an older step of another tag is not lost
    _fake_events(logdir / "train", [["grad_norm", 2, 0.7, 14.0]])
    new, state = read_tensorboard(logdir, state)
    assert [(r.step, r.values) for r in new] == [(2, {"train/grad_norm": 0.7})]
    # a restart (steps going back) is reported
    (logdir / "eval" / "events.out.tfevents.1.host").write_text(json.dumps(["loss", 1, 3.0, 20.0]) + "\n")
    new, state = read_tensorboard(logdir, state)
    assert new == [] and "restart" in state["note"]


def test_tensorboard_single_run_and_missing(tmp_path, monkeypatch):
    _fake_tensorboard(monkeypatch, [])
    run = tmp_path / "run"
    _fake_events(run, [["loss", 5, 1.0, 1.0]])
    records, state = read_tensorboard(run)
    assert [(r.step, r.values, r.line) for r in records] == [(5, {"loss": 1.0}, f"{run}:step=5")]
    records, state = read_tensorboard(tmp_path / "absent")
    assert records == [] and state["note"] == "missing"


def test_large_reads_pause_the_gc_and_restore_it(tmp_path, monkeypatch):
    import gc

    monkeypatch.setattr(sources, "GC_PAUSE_BYTES", 100)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line(step=i) for i in range(20)))
    seen = []
    real_iter = sources.iter_jsonl

    def spy(*args, **kwargs):
        for batch in real_iter(*args, **kwargs):
            seen.append(gc.isenabled())
            yield batch

    monkeypatch.setattr(sources, "iter_jsonl", spy)
    assert gc.isenabled()
    records, state = read_jsonl(path)
    assert len(records) == 20 and seen == [False] and gc.isenabled()
    append(path, line(step=20))
    read_jsonl(path, state)  # 1 new line: below the threshold, the GC stays on
    assert seen == [False, True] and gc.isenabled()
    gc.disable()
    try:
        read_jsonl(path)
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.enable()


def test_jsonl_absurd_nesting_is_a_bad_line_not_a_crash(tmp_path):
    path = tmp_path / "m.jsonl"
    depth = 100_000
    path.write_text(line(step=1) + '{"a": ' * depth + "1" + "}" * depth + "\n" + '{"a": [' * 500 + "]}" * 500
                    + "\n" + line(step=2))
    records, state = read_jsonl(path)
    assert [r.step for r in records][0] == 1 and records[-1].step == 2
    assert state["first_bad_line"] == 2


def test_jsonl_records_of_a_chunk_share_their_key_strings(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line(step=i, loss=1.0, tokens=5) for i in range(3)))
    records, _ = read_jsonl(path)
    keys = [list(r.values) for r in records]
    assert keys[0] == ["loss", "tokens"]
    assert all(k[0] is keys[0][0] and k[1] is keys[0][1] for k in keys)  # memory of a long list of records
