"""The column-wise fast path of a first check gives what the record-by-record path gives.

``iter_jsonl_chunks`` parses a chunk column-wise and ``RunSeries.add`` ingests
such a chunk (or a long list of Records) per metric column. Both are checked
against the reference: ``read_jsonl`` for the records and the reader's state,
and ``RunSeries.add`` one record at a time for every statistic of the series,
the anomalies and the verdict. Every number must match bit for bit, but each
metric's running mean, variance and EMA, which the fast path combines per
chunk: those agree to 1e-12 (relative).
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from pathlib import Path

import pytest

from pytest_spml.watch import detectors, sources
from pytest_spml.watch.check import SourceSpec, TrainingCheck
from pytest_spml.watch.decide import decide
from pytest_spml.watch.detectors import RunSeries, Track, detect_all
from pytest_spml.watch.model import Baseline, Record

RUNS = sorted((Path(__file__).resolve().parent / "runs").glob("*.jsonl"))
PLANNED = Baseline(expected_total_steps=2000, source="test: the fixture runs are the start of 2,000-step runs")
T0 = 1_700_000_000.0
ROUNDED = ("mean", "_m2", "ema")  # combined per chunk by the fast path: equal up to rounding
SMALL = {"cap": 16, "head": 3, "summary_cap": 4}  # small windows: the fast path's slicing and halving show


def canonical(obj, path: str = "", rounded: dict | None = None):
    """A comparable form of a series: floats by their bits (NaN as "nan"), slots and attributes as dicts;
    the per-chunk aggregates go to ``rounded`` (path -> value) instead."""
    if isinstance(obj, float):
        return "nan" if math.isnan(obj) else obj.hex()
    if isinstance(obj, (list, tuple)):
        return [canonical(v, f"{path}[{i}]", rounded) for i, v in enumerate(obj)]
    if isinstance(obj, deque):
        return {"maxlen": obj.maxlen, "items": canonical(list(obj), path, rounded)}
    if isinstance(obj, dict):
        return {k: canonical(v, f"{path}.{k}", rounded) for k, v in obj.items()} | {"_order": list(obj)}
    if hasattr(obj, "__slots__"):
        out = {}
        for name in obj.__slots__:
            value = getattr(obj, name)
            if isinstance(obj, Track) and name in ROUNDED and rounded is not None:
                rounded[f"{path}.{name}"] = value
            else:
                out[name] = canonical(value, f"{path}.{name}", rounded)
        return out
    if hasattr(obj, "__dict__"):
        return canonical(vars(obj), path, rounded)
    return obj


def assert_same_series(fast: RunSeries, slow: RunSeries) -> None:
    fast_rounded: dict = {}
    slow_rounded: dict = {}
    assert canonical(fast, "", fast_rounded) == canonical(slow, "", slow_rounded)
    assert fast_rounded.keys() == slow_rounded.keys()
    for key, expected in slow_rounded.items():
        got = fast_rounded[key]
        if expected is None or not math.isfinite(expected):
            assert got == expected or (math.isnan(got) and math.isnan(expected)), key
        else:
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-300), key


def one_by_one(records: list[Record], **kwargs) -> RunSeries:
    """The reference: RunSeries.add with one record at a time (below the columns threshold)."""
    series = RunSeries(**kwargs)
    for record in records:
        assert series.add([record], received_at=T0) == 1
    return series


def columns_of(records: list[Record], **kwargs) -> RunSeries:
    """RunSeries.add with every record at once: a list this long takes the column path."""
    assert len(records) >= detectors._COLUMNS_MIN
    series = RunSeries(**kwargs)
    assert series.add(records, received_at=T0) == len(records)
    return series


def outcome(series: RunSeries, now: float) -> list:
    anomalies = detect_all(series, PLANNED, None, now)
    verdict = decide(series, anomalies, PLANNED, now)
    return canonical([a.to_dict() for a in anomalies]) + [canonical(vars(verdict))]


def chunks_of(path: Path, state: dict | None = None, chunk_size: int = sources.CHUNK_SIZE) -> list:
    return list(sources.iter_jsonl_chunks(path, {} if state is None else state, chunk_size=chunk_size))


def check_file(path: Path, *, chunk_size: int = sources.CHUNK_SIZE, columnar: bool = True, **kwargs) -> RunSeries:
    """The records, reader state, series, anomalies and verdict of ``path`` both ways; returns the fast series."""
    reference_state: dict = {}
    reference = [r for batch in sources.iter_jsonl(path, reference_state, chunk_size=chunk_size) for r in batch]
    state: dict = {}
    chunks = chunks_of(path, state, chunk_size)
    assert [repr(r) for chunk in chunks for r in chunk] == [repr(r) for r in reference]
    assert state == reference_state
    # the fast parser took these lines (a careful one would prove nothing), or left them to the careful one
    assert chunks and all((chunk.to_columns() is not None) == columnar for chunk in chunks)
    fast = RunSeries(**kwargs)
    for chunk in chunks:
        assert fast.add(chunk, received_at=T0) == len(chunk)
    slow = one_by_one(reference, **kwargs)
    assert_same_series(fast, slow)
    # a list of Records takes the column path too
    listed = columns_of(reference, **kwargs) if len(reference) >= detectors._COLUMNS_MIN else fast
    assert_same_series(listed, slow)
    now = (slow.last_time or T0) + 30.0
    assert outcome(fast, now) == outcome(slow, now) == outcome(listed, now)
    return fast


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 lines, parts of 7 points: every boundary falls inside the short fixture logs."""
    monkeypatch.setattr(sources, "_BLOCK", 5)
    monkeypatch.setattr(detectors, "_PART", 7)


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------
# the real runs


@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in RUNS])
def test_real_runs_fast_path_matches_record_by_record(path: Path) -> None:
    fast = check_file(path)
    assert fast.records == len(path.read_text().splitlines())


@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in RUNS])
def test_real_runs_with_small_windows_blocks_and_chunks(path: Path, small_blocks) -> None:
    check_file(path, chunk_size=1500, **SMALL)


def test_fast_path_is_what_runs(tmp_path, monkeypatch) -> None:
    calls = []
    real = Track.extend
    monkeypatch.setattr(Track, "extend", lambda self, *a, **k: calls.append(self.name) or real(self, *a, **k))
    check_file(RUNS[0])
    assert {"loss", "grad_norm", "lr"} <= set(calls)


def test_training_check_matches_the_reference(tmp_path) -> None:
    path = next(p for p in RUNS if p.stem == "lr_ramp_nan")
    engine = TrainingCheck([SourceSpec("log", str(path))], PLANNED)
    records, _ = sources.read_jsonl(path)
    slow = one_by_one(records)
    now = slow.last_time + 30.0
    got = engine.poll(now=now)
    slow.last_received = engine.series.last_received  # when the engine read them
    assert_same_series(engine.series, slow)
    anomalies = detect_all(slow, PLANNED, None, now)
    assert canonical([a.to_dict() for a in got.anomalies]) == canonical([a.to_dict() for a in anomalies])
    assert got.verdict.decision == decide(slow, anomalies, PLANNED, now).decision == "STOP"
    last: dict = {}
    for record in records[-50:]:
        last.update(record.values)
    assert canonical(got.metrics) == canonical(last) and got.new_records == len(records)


# ---------------------------------------------------------------------------------------------------------------
# adversarial chunks


def training_rows(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        row = {"step": i, "time": T0 + 0.5 * i, "loss": 3.0 / (1 + i / 50) + 0.05 * rng.random(),
               "lr": 1e-3 * min(1.0, i / 20), "grad_norm": 0.5 + rng.random(), "tokens_per_s": rng.randint(900, 1100)}
        rows.append(row)
    return rows


def test_nan_and_inf_in_the_middle_of_a_chunk(tmp_path, small_blocks) -> None:
    rows = training_rows(60)
    rows[13]["loss"] = float("nan")
    rows[14]["grad_norm"] = float("inf")
    rows[30]["loss"] = "nan"  # strings too
    rows[31]["loss"] = "-Infinity"
    rows[45]["lr"] = float("-inf")
    check_file(write(tmp_path / "m.jsonl", rows), **SMALL)
    fast = check_file(write(tmp_path / "m.jsonl", rows))  # default windows and parts
    loss = fast.tracks["loss"]
    assert loss.nonfinite == 3 and loss.first_nonfinite[0] == 13 and loss.last_nonfinite[0] == 31


def test_rewinds_repeated_steps_and_a_clock_that_goes_back(tmp_path, small_blocks) -> None:
    rows = training_rows(40) + training_rows(30, seed=1, start=25)  # restarted from a checkpoint at step 25
    rows.insert(10, {"step": 9, "time": T0 + 4.6, "val_loss": 2.0})  # an evaluation at the step just logged
    rows[50]["time"] -= 100  # a clock that jumped back
    fast = check_file(write(tmp_path / "m.jsonl", rows), **SMALL)
    assert fast.tracks["loss"].rewinds == 1
    check_file(write(tmp_path / "m.jsonl", rows))


def test_missing_steps_and_times(tmp_path, small_blocks) -> None:
    rows = training_rows(30)
    for i in (3, 4, 17):
        del rows[i]["step"]  # numbered from the previous step: the chunk is read line by line
    for i in (8, 20):
        del rows[i]["time"]
    check_file(write(tmp_path / "m.jsonl", rows), columnar=False, **SMALL)
    rows = training_rows(30)
    for i in (8, 9, 20):
        del rows[i]["time"]  # no later time key stands in: still column-wise
    rows[25]["time"] = float("nan")
    rows[26]["time"] = "2023-11-14T22:13:33Z"  # ISO times and integers are converted column-wise too
    rows[27]["time"] = int(T0) + 14
    check_file(write(tmp_path / "m.jsonl", rows), **SMALL)
    # records without steps or times, as another reader hands them over
    records = [Record(None if i % 3 else i, None if i % 4 == 0 else T0 + i, {"loss": 1.0 / (i + 1)}, f"x:{i}")
               for i in range(100)]
    assert_same_series(columns_of(records, **SMALL), one_by_one(records, **SMALL))


def test_mixed_keys_and_shapes(tmp_path, small_blocks) -> None:
    rows = training_rows(50)
    for i in range(0, 50, 7):
        rows[i]["val_loss"] = 2.5 - i / 100  # sometimes one key more
    for i in range(3, 50, 11):
        rows[i] = {"time": rows[i]["time"], "step": rows[i]["step"], "mfu": 0.3, "dt": 0.5, "loss": 2.0}
    for i in range(5, 50, 13):
        rows[i]["grad_norm"] = None  # null, boolean, list, other string: no value
        rows[i]["lr"] = True
        rows[i]["note"] = "warm"
        rows[i]["sizes"] = [1, 2]
    rows[40]["tokens_per_s"] = 10 ** 400  # beyond any float: +inf
    rows[41]["time_ms"] = 250  # scaled to seconds
    rows[42] = {"step": 42, "time": T0 + 21, "iter": 42, "timestamp": T0, "unknown_metric": 1.0}
    check_file(write(tmp_path / "m.jsonl", rows), **SMALL)
    # same number of keys, other keys: the rows are split by key
    rows = [{"step": i, "time": T0 + i, ("loss" if i % 2 else "train_loss"): 1.0 + 1 / (i + 1)} for i in range(40)]
    check_file(write(tmp_path / "m.jsonl", rows), **SMALL)


def test_nested_evaluation_rows(tmp_path, small_blocks) -> None:
    rows = training_rows(60)
    for i in range(4, 60, 5):
        rows[i] = {"step": rows[i]["step"], "time": rows[i]["time"],
                   "eval": {"loss": 2.0 + i / 100, "acc": 0.5, "extra": {"deep": {"x": 1}}, "empty": {}}}
    rows[21]["eval"] = {"loss": "NaN", "note": "x"}  # a string inside an object
    fast = check_file(write(tmp_path / "m.jsonl", rows), **SMALL)
    assert "eval/loss" in fast.tracks and fast.tracks["eval/loss"].nonfinite == 1
    # the same name twice in one line, nested and flat: the careful way decides which value wins
    rows[29]["eval/loss"] = 9.0
    check_file(write(tmp_path / "m.jsonl", rows), columnar=False, **SMALL)


ODD_LINES = {
    "blank": "", "invalid": "{not json", "leading blank": ' {"step": 12, "loss": 1.0}',
    "trailing garbage": '{"step": 12, "loss": 1.0} x', "not an object": "[1, 2]",
    "string step": '{"step": "12", "time": 1700000006.0, "loss": 1.5}', "float step": '{"step": 12.0, "loss": 1.5}',
    "later time key": '{"step": 12, "timestamp": 1700000006.0, "loss": 1.5}',
    "object as time": '{"step": 12, "time": {"s": 1}, "loss": 1.5}',
    "object and number": '{"step": 12, "time": 1700000006.0, "loss": 1.0, "lr": 0.001, "grad_norm": {"total": 1.0}, '
                         '"tokens_per_s": 1000}',
    "deep": '{"step": 12, "time": 1700000006.0, "a": ' + '{"b": ' * 40 + "1" + "}" * 41,
    "a name twice": '{"step": 12, "time": 1700000006.0, "x/y": 1.0, "x": {"y": 2.0}}',
}


@pytest.mark.parametrize("odd", list(ODD_LINES), ids=list(ODD_LINES))
def test_lines_the_column_parser_leaves_to_the_careful_one(tmp_path, small_blocks, odd: str) -> None:
    rows = [json.dumps(r) for r in training_rows(30)]
    check_file(write(tmp_path / "m.jsonl", rows[:12] + [ODD_LINES[odd]] + rows[13:]), columnar=False, **SMALL)


def test_windows_line_ends_are_read_line_by_line(tmp_path) -> None:
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes("".join(json.dumps(r) + "\r\n" for r in training_rows(30)).encode())
    check_file(crlf, columnar=False)


def test_the_step_key_changes_between_blocks(tmp_path, small_blocks) -> None:
    rows = training_rows(20)
    for row in rows[10:]:
        row["iter"] = row.pop("step")
    check_file(write(tmp_path / "m.jsonl", rows), columnar=False, **SMALL)
    for row in rows:  # the same key all along, but a null in another step key: still column-wise
        row["step"], row["iter"] = row.get("step", row.get("iter")), None
    check_file(write(tmp_path / "m.jsonl", rows), **SMALL)


def test_equal_times_and_repeated_steps_in_the_clock(tmp_path, small_blocks) -> None:
    rows = training_rows(60)
    for i in (1, 2, 50, 55):  # a clock with coarse ticks: no seconds per step from these pairs
        rows[i]["time"] = rows[i - 1]["time"]
    fast = check_file(write(tmp_path / "m.jsonl", rows), **SMALL)
    assert len(fast.head_step_seconds) == SMALL["head"] and len(fast.step_seconds) == SMALL["cap"]
    # a read that brings only more rows of the last step
    path = write(tmp_path / "g.jsonl", training_rows(70))
    state: dict = {}
    reference_state: dict = {}
    fast, slow = RunSeries(**SMALL), RunSeries(**SMALL)
    for extra in ([], [{"step": 69, "time": T0 + 40, "val_loss": 1.0}, {"step": 69, "time": T0 + 41, "mfu": 0.2}]):
        with open(path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in extra))
        for chunk in chunks_of(path, state):
            fast.add(chunk)
        for batch in sources.iter_jsonl(path, reference_state):
            for record in batch:
                slow.add([record])
        assert_same_series(fast, slow)


def test_a_growing_log_read_again_and_again(tmp_path) -> None:
    path = write(tmp_path / "m.jsonl", training_rows(100))
    half = json.dumps(training_rows(1, seed=3, start=101)[0])
    appends = ["".join(json.dumps(r) + "\n" for r in training_rows(1, seed=1, start=100)) + half[:20],
               half[20:] + "\n" + "".join(json.dumps(r) + "\n" for r in training_rows(300, seed=2, start=102)), ""]
    state: dict = {}
    reference_state: dict = {}
    fast, slow = RunSeries(**SMALL), RunSeries(**SMALL)
    for text in appends:
        for chunk in chunks_of(path, state, chunk_size=777):
            fast.add(chunk)
        for batch in sources.iter_jsonl(path, reference_state, chunk_size=777):
            for record in batch:
                slow.add([record])
        assert state == reference_state
        assert_same_series(fast, slow)
        with open(path, "a") as f:
            f.write(text)
    assert fast.records == 402 and state["partial_bytes"] == 0


def test_odd_values_in_records_from_other_readers() -> None:
    class Sub(float):
        pass

    records = []
    for i in range(120):
        values: dict = {"loss": 2.0 - i / 100, "lr": 1e-3}
        if i % 5 == 0:
            values["grad_norm"] = i  # int
        if i % 7 == 0:
            values["loss"] = True  # a boolean is no number
        if i % 11 == 0:
            values["val_loss"] = None
        if i % 13 == 0:
            values["mfu"] = Sub(0.4)
        if i % 17 == 0:
            values["loss"] = "2.0"
        values["whatever"] = i
        records.append(Record(i, T0 + i if i % 9 else float("nan"), values, f"r:{i}"))
    fast, slow = columns_of(records, **SMALL), one_by_one(records, **SMALL)
    assert_same_series(fast, slow)
    assert fast.ignored_values == slow.ignored_values > 120


# ---------------------------------------------------------------------------------------------------------------
# long series: the per-chunk aggregates


def test_a_long_run_keeps_every_statistic(tmp_path) -> None:
    rows = training_rows(12_000, seed=3)
    for i in range(49, 12_000, 50):
        rows[i] = {"step": rows[i]["step"], "time": rows[i]["time"], "eval": {"loss": 2.0 + (i % 7) / 10}}
    rows[7000]["loss"] = float("nan")
    fast = check_file(write(tmp_path / "m.jsonl", rows))
    loss = fast.tracks["loss"]
    assert loss.count == 11_760 and loss.nonfinite == 1 and len(loss.summary) <= 256


def test_the_ema_of_a_metric_near_zero_takes_every_point() -> None:
    # zeros after a large value: the last points alone cannot bound the older ones, the EMA sums them all
    records = [Record(i, T0 + i, {"grad_norm": 1e6 if i == 0 else 0.0, "loss": 1.0 if i < 4500 else 0.0},
                      f"r:{i}") for i in range(5000)]
    assert_same_series(columns_of(records), one_by_one(records))


def test_values_too_large_to_square_take_the_loop() -> None:
    records = [Record(i, T0 + i, {"loss": 1e200 * (1 + i % 3)}, f"r:{i}") for i in range(100)]
    fast, slow = columns_of(records), one_by_one(records)
    assert fast.tracks["loss"].mean == slow.tracks["loss"].mean and fast.tracks["loss"]._m2 == math.inf
    assert_same_series(fast, slow)


def test_chunk_records_are_built_only_when_asked(tmp_path) -> None:
    path = write(tmp_path / "m.jsonl", training_rows(200))
    (chunk,) = chunks_of(path)
    reference, _ = sources.read_jsonl(path)
    assert len(chunk) == 200 and chunk.to_columns() is not None
    assert [repr(r) for r in chunk[-3:]] == [repr(r) for r in reference[-3:]]
    assert repr(chunk[5]) == repr(reference[5]) and repr(chunk[-1]) == repr(reference[-1])
