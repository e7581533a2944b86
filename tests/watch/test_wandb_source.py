"""WandB metric source: real offline runs of a tiny CPU training, a live run read while it is written,
and the online path (scan_history, back-off) through a fake Api that raises wandb's own errors."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from pytest_spml.errors import InputError
from pytest_spml.watch import decide as deciding
from pytest_spml.watch import detectors
from pytest_spml.watch.model import Baseline
from pytest_spml.watch.wandb_source import (
    BLOCK,
    INSTALL_HINT,
    classify_error,
    parse_online_spec,
    public_offline_reader,
    read_wandb,
    resolve_offline_run,
)

TRAIN = Path(__file__).parent / "data" / "wandb" / "train_wandb.py"
EXTRA = "the WandB tests need the wandb and torch extras: pip install -e '.[test,wandb,torch]'"


def wandb_env(root: Path) -> dict[str, str]:
    """Offline, silent, and every wandb directory under ``root``: nothing written to the user's home."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("WANDB_")]:
        del env[key]
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(root), WANDB_CONFIG_DIR=str(root / "config"),
               WANDB_CACHE_DIR=str(root / "cache"), WANDB_DATA_DIR=str(root / "data"), OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two real offline runs of train_wandb.py: ``healthy`` (300 steps) and ``lr_ramp_nan``, with what each logged."""
    pytest.importorskip("wandb", reason=EXTRA)
    pytest.importorskip("torch", reason=EXTRA)
    root = tmp_path_factory.mktemp("wandb_runs")
    truth = root / "truth.json"
    proc = subprocess.run([sys.executable, str(TRAIN), "--dir", str(root), "--run", "healthy", "--run", "lr_ramp_nan",
                           "--truth", str(truth)], env=wandb_env(root), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = json.loads(truth.read_text())
    for run in logged.values():
        run["dir"] = Path(run["dir"])
        run["file"] = run["dir"] / f"run-{run['id']}.wandb"
        assert run["file"].is_file()
    logged["root"] = root
    return logged


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ----------------------------------------------------------------------------- offline: real runs


def test_healthy_offline_run_every_step_nested_keys_and_times(runs):
    healthy = runs["healthy"]
    result = read_wandb(str(healthy["dir"]))
    assert result.status == "wandb_ok" and result.kind == "offline"
    assert [r.step for r in result.records] == healthy["steps"] == list(range(300))
    assert [r.values["loss"] for r in result.records] == healthy["loss"]
    first = result.records[0]
    # nested {"train": {"acc": ...}} flattened with "/", "eval/loss" kept as logged, _runtime / _step dropped
    assert set(first.values) == {"loss", "grad_norm", "lr", "train/acc"}
    assert set(result.records[49].values) == {"loss", "grad_norm", "lr", "train/acc", "eval/loss"}
    times = [r.time for r in result.records]
    assert all(t is not None and abs(t - time.time()) < 3600 for t in times) and times == sorted(times)
    assert first.line == f"{healthy['file']}:step=0"
    assert result.state["finished"] is True and result.state["exit_code"] == 0
    assert result.state["run_id"] == healthy["id"] and result.state["reader"] == "built-in"
    assert "300 new records, last step 299" in result.detail and "run finished (exit code 0)" in result.detail
    assert os.path.getsize(healthy["file"]) > 2 * BLOCK  # the records cross block boundaries

    again = read_wandb(str(healthy["dir"]), result.state)
    assert again.records == [] and again.status == "wandb_ok" and "0 new records" in again.detail


def test_nan_run_carries_nan_and_inf_at_their_steps(runs):
    nan_run = runs["lr_ramp_nan"]
    result = read_wandb(str(nan_run["file"]))
    losses = {r.step: r.values["loss"] for r in result.records}
    assert list(losses) == nan_run["steps"]
    assert all(same(losses[s], v) for s, v in zip(nan_run["steps"], nan_run["loss"]))
    first_nan = next(s for s, v in zip(nan_run["steps"], nan_run["loss"]) if math.isnan(v))
    assert math.isnan(losses[first_nan]) and type(losses[first_nan]) is float
    assert any(v == math.inf for v in losses.values())  # the blow-up passes through Inf before NaN


def test_nan_run_gives_stop_and_healthy_run_continues(runs):
    verdicts = {}
    for name in ("healthy", "lr_ramp_nan"):
        result = read_wandb(str(runs[name]["dir"]))
        series = detectors.RunSeries()
        series.add(result.records)
        now = series.last_time
        anomalies = detectors.detect_all(series, Baseline(), detectors.WatchThresholds(), now)
        verdicts[name] = (deciding.decide(series, anomalies, Baseline(), now,
                                          source_ok=result.status == "wandb_ok"), anomalies)
    verdict, anomalies = verdicts["lr_ramp_nan"]
    assert (verdict.decision, verdict.status) == ("STOP", "SEVERE_ANOMALY")
    nan_inf = [a for a in anomalies if a.kind == "nan_inf"]
    first_bad = next(s for s, v in zip(runs["lr_ramp_nan"]["steps"], runs["lr_ramp_nan"]["loss"])
                     if not math.isfinite(v))
    assert nan_inf and nan_inf[0].step == first_bad
    verdict, anomalies = verdicts["healthy"]
    assert verdict.decision == "CONTINUE" and not [a for a in anomalies if a.severity == "severe"]


def test_paths_run_dir_file_latest_run_wandb_dir_and_project_dir(runs, tmp_path):
    root = runs["root"]
    wandb_dir = root / "wandb"
    nan_run, healthy = runs["lr_ramp_nan"], runs["healthy"]
    # lr_ramp_nan was started last: latest-run points to it, and its file was written last
    os.utime(healthy["file"], (time.time() - 60, time.time() - 60))
    for spec in (wandb_dir, root, wandb_dir / "latest-run"):
        path = resolve_offline_run(spec)[0]
        assert os.path.realpath(path) == os.path.realpath(nan_run["file"]), spec
    assert "newest of 2 runs in" in resolve_offline_run(wandb_dir)[1]
    assert f"via latest-run (run-{nan_run['id']}.wandb)" in resolve_offline_run(wandb_dir / "latest-run")[1]
    assert resolve_offline_run(healthy["file"])[0] == healthy["file"]

    # a copy where the healthy run is the one still being written: it is picked, and the detail says so
    copy = tmp_path / "wandb"
    for run in (healthy, nan_run):
        shutil.copytree(run["dir"], copy / run["dir"].name)
    os.utime(copy / healthy["dir"].name / healthy["file"].name, (time.time() + 5, time.time() + 5))
    result = read_wandb(str(copy))
    assert result.status == "wandb_ok" and len(result.records) == 300
    assert result.detail.startswith(f"offline run {healthy['dir'].name} (newest of 2 runs in {copy})")
    # a newer run appearing in the folder: the next read switches to it and says so
    os.utime(copy / nan_run["dir"].name / nan_run["file"].name, (time.time() + 10, time.time() + 10))
    switched = read_wandb(str(copy), result.state)
    assert [r.step for r in switched.records] == nan_run["steps"]
    assert f"switched to offline run {nan_run['dir'].name}" in switched.detail


def test_not_a_run_is_an_input_error_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as caught:
        read_wandb(str(empty))
    assert caught.value.path == str(empty) and "no W&B run here" in caught.value.message
    text = tmp_path / "run-abc.wandb"
    text.write_text("step=1 loss=2.0\n")
    with pytest.raises(InputError) as caught:
        read_wandb(str(text))
    assert caught.value.path == str(text) and "not a W&B run file" in str(caught.value)
    # a run that has not written its header yet: no records, no error
    text.write_bytes(b":W&")
    result = read_wandb(str(text))
    assert result.status == "wandb_ok" and result.records == []


# ----------------------------------------------------------------------------- offline: incremental


def test_truncated_at_block_boundaries_and_anywhere_then_completed(runs, tmp_path):
    """A file cut anywhere (block boundary, fragment header, record body) reads what is complete; the rest
    comes on the next read, nothing twice, nothing lost."""
    full = runs["healthy"]["file"].read_bytes()
    whole = [(r.step, r.values) for r in read_wandb(str(runs["healthy"]["file"])).records]
    rng = random.Random(7)
    cuts = sorted({*(b + d for b in range(BLOCK, len(full), BLOCK) for d in (-8, -7, -1, 0, 1, 6, 7, 8)),
                   *(rng.randrange(1, len(full)) for _ in range(40)), 3, 7, 8, 20})
    path = tmp_path / "run-cut.wandb"
    for cut in cuts:
        path.write_bytes(full[:cut])
        first = read_wandb(str(path))
        with open(path, "ab") as f:
            f.write(full[cut:])
        state = json.loads(json.dumps(first.state))  # the state survives being saved between two checks
        second = read_wandb(str(path), state)
        got = [(r.step, r.values) for r in first.records + second.records]
        assert got == whole, f"cut at byte {cut}"
        assert first.records == [] or cut > 200
        if cut >= BLOCK:
            assert first.records, f"cut at byte {cut}: the complete first block was not read"


def test_live_run_read_while_it_is_written(tmp_path):
    """A real run paused half way: the first read gets what wandb has flushed (a block at a time), the second,
    after the run finished, exactly the rest."""
    pytest.importorskip("wandb", reason=EXTRA)
    pytest.importorskip("torch", reason=EXTRA)
    truth = tmp_path / "truth.json"
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--dir", str(tmp_path), "--run", "healthy", "--steps", "500",
                             "--pause-at", "300", "--truth", str(truth)], env=wandb_env(tmp_path),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "PAUSED", proc.stderr.read()
        run_dir = tmp_path / "wandb" / "latest-run"
        live = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wandb-core writes the file a 32 KiB block at a time
            live = read_wandb(str(run_dir), live.state if live else None)
            if live.state["last_step"] is not None:
                break
            time.sleep(0.1)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_steps = [r.step for r in live.records]
    assert first_steps == list(range(len(first_steps))) and 0 < len(first_steps) <= 300
    assert live.state["finished"] is False  # no exit record yet: the run was read while live
    rest = read_wandb(str(run_dir), live.state)
    assert [r.step for r in rest.records] == list(range(len(first_steps), 500))
    assert [r.values["loss"] for r in live.records + rest.records] == json.loads(truth.read_text())["healthy"]["loss"]
    assert rest.state["finished"] is True


def test_corrupt_fragment_is_skipped_not_raised(runs, tmp_path):
    full = bytearray(runs["healthy"]["file"].read_bytes())
    whole = read_wandb(str(runs["healthy"]["file"])).records
    full[BLOCK + 2000] ^= 0xFF  # inside a record body of the second block
    path = tmp_path / "run-bad.wandb"
    path.write_bytes(bytes(full))
    result = read_wandb(str(path))
    assert result.state["corrupt"] >= 1 and "unreadable record(s) skipped" in result.detail
    steps = [r.step for r in result.records]
    assert 0 < len(steps) < len(whole) and steps == sorted(steps) and steps[-1] == 299  # later blocks still read


def frame(payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """LevelDB log framing as wandb writes it: fragments never cross a 32 KiB block, a block tail too short for a
    fragment header is zero-padded. Returns the file and the sizes of the paddings it wrote."""
    import struct
    import zlib

    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    pads = []
    for data in payloads:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += bytes(left)
                pads.append(left)
                continue
            piece, data = data[:left - 7], data[left - 7:]
            kind = (1 if first else 4) if not data else (2 if first else 3)  # FULL / LAST, FIRST / MIDDLE
            crc = zlib.crc32(piece, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if not data:
                break
    return bytes(out), pads


def filler(size: int) -> bytes:
    """A protobuf message of exactly ``size`` (>= 4) bytes: one unknown length-delimited field (Record ignores it)."""
    for varint in (1, 2, 3):
        length = size - 2 - varint
        if length >= 0 and (length < 128) == (varint == 1) and (length < 16384) == (varint <= 2):
            return b"\xd2\x3e" + bytes(_varint(length)) + b"x" * length  # tag: field 1000, wire type 2
    raise ValueError(size)


def _varint(n: int) -> list[int]:
    out = []
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return out


def test_block_trailers_of_every_size_and_records_spanning_blocks(runs, tmp_path):
    """Real history payloads re-framed with fillers placed so that every block-tail padding (1-6 bytes), an exact
    fit and records spanning several blocks all occur; every history record comes back, nothing is corrupt."""
    from wandb.proto import wandb_internal_pb2 as pb

    from pytest_spml.watch.wandb_source import iter_log_records

    source = runs["healthy"]["file"]
    with open(source, "rb") as f:
        payloads = [p for _, p in iter_log_records(f, 7, {})]
    history = [p for p in payloads if pb.Record.FromString(p).WhichOneof("record_type") == "history"]
    out: list[bytes] = []
    for n, target in enumerate([1, 2, 3, 4, 5, 6, 0, 7] * 3):  # bytes left in the block after the filler
        while True:
            need = BLOCK - len(frame(out)[0]) % BLOCK - 7 - target
            if need >= 4:
                break
            out.append(filler(100))
        out.append(filler(need))
        out.append(history[n])  # 7 left: it starts with an empty FIRST fragment; 0: at the next block
    out.append(filler(3 * BLOCK))  # one record over four blocks: FIRST, MIDDLE, MIDDLE, LAST
    out.extend(history)
    data, pads = frame(out)
    assert set(pads) == {1, 2, 3, 4, 5, 6}
    path = tmp_path / "run-framed.wandb"
    path.write_bytes(data)
    result = read_wandb(str(path))
    assert result.state["corrupt"] == 0 and result.state["offset"] == len(data)
    expected = read_wandb(str(source)).records
    assert [r.values for r in result.records[-len(expected):]] == [r.values for r in expected]
    assert [r.step for r in result.records] == [*range(24), *range(300)]


# ----------------------------------------------------------------------------- which reader, which path


def test_spec_parsing_online_forms():
    assert parse_online_spec("me/proj/abc123") == "me/proj/abc123"
    assert parse_online_spec("wandb://me/proj/abc123") == "me/proj/abc123"
    assert parse_online_spec("me/proj/runs/abc123") == "me/proj/abc123"
    assert parse_online_spec("https://wandb.ai/me/proj/runs/abc123?nw=x") == "me/proj/abc123"
    for offline_like in ("/abs/wandb/run", "./wandb/latest-run", "wandb", "a/b", "a/b/c/d", "../p/r"):
        assert parse_online_spec(offline_like) is None, offline_like


def test_missing_local_path_is_unreachable_not_an_error(tmp_path):
    result = read_wandb(str(tmp_path / "wandb" / "offline-run-x"))
    assert result.status == "unreachable" and result.records == [] and "no such offline run" in result.detail


def test_existing_path_wins_over_online_form(runs, tmp_path, monkeypatch):
    shutil.copytree(runs["healthy"]["dir"], tmp_path / "me" / "proj" / "abc123")
    monkeypatch.chdir(tmp_path)

    class NoNetwork:
        def run(self, path):
            raise AssertionError("an existing local path must be read offline")

    result = read_wandb("me/proj/abc123", api=NoNetwork())
    assert result.kind == "offline" and len(result.records) == 300


def test_public_local_reader_is_detected_preferred_and_fallen_back_from(runs, monkeypatch):
    import importlib.util

    import wandb

    has_beta = importlib.util.find_spec("wandb.beta") is not None
    expected = getattr(importlib.import_module("wandb.beta"), "LocalApi", None) if has_beta else None
    found = public_offline_reader()
    assert (found[1] if found else None) is expected  # wandb 0.31: no wandb.beta, the built-in reader
    healthy = runs["healthy"]
    reference = read_wandb(str(healthy["dir"])).records

    calls = []

    class LocalApi:  # Api-shaped: run(path).scan_history() yields history rows as dicts
        def run(self, path):
            calls.append(path)
            rows = [{"_step": r.step, "_timestamp": r.time, "_runtime": 1.0, **r.values} for r in reference]
            return types.SimpleNamespace(scan_history=lambda min_step=0: (x for x in rows if x["_step"] >= min_step))

    beta = types.ModuleType("wandb.beta")
    beta.LocalApi = LocalApi
    monkeypatch.setitem(sys.modules, "wandb.beta", beta)
    monkeypatch.setattr(wandb, "beta", beta, raising=False)
    first = read_wandb(str(healthy["dir"]))
    assert first.state["reader"] == "wandb.beta.LocalApi" and "wandb.beta.LocalApi reader" in first.detail
    assert [(r.step, r.values) for r in first.records] == [(r.step, r.values) for r in reference]
    assert calls == [str(healthy["dir"])]

    # the experimental reader breaks on a later check: the built-in one takes over without repeating steps
    def broken(self, path):
        raise AttributeError("'LocalApi' object has no attribute '_settings'")

    monkeypatch.setattr(LocalApi, "run", broken)
    second = read_wandb(str(healthy["dir"]), first.state)
    assert second.records == [] and second.state["reader"] == "built-in"
    assert "wandb.beta.LocalApi failed (AttributeError" in second.detail
    # and from scratch: straight to the built-in reader, same records
    third = read_wandb(str(healthy["dir"]))
    assert third.state["reader"] == "built-in" and len(third.records) == 300


def one_record_file(path: Path, payload: bytes) -> Path:
    """A .wandb file by hand: the file header and one FULL fragment (CRC-32 seeded with the type byte)."""
    import struct
    import zlib

    crc = zlib.crc32(payload, zlib.crc32(bytes([1]))) & 0xFFFFFFFF
    path.write_bytes(b":W&B" + struct.pack("<HB", 0xBEE1, 0) + struct.pack("<IHB", crc, len(payload), 1) + payload)
    return path


def test_no_wandb_installed(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "wandb" or m.startswith("wandb.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    online = read_wandb("me/proj/abc123")
    assert online.status == "unreachable" and INSTALL_HINT in online.detail and online.kind == "online"
    run_file = one_record_file(tmp_path / "run-abc.wandb", b"\x12\x00")  # a Record with an empty history
    with pytest.raises(InputError) as caught:
        read_wandb(str(tmp_path))
    assert caught.value.path == str(run_file) and INSTALL_HINT in caught.value.message


def test_history_item_encodings(tmp_path, needs_wandb):
    """value_json (NaN tokens, media dicts, booleans) and the typed value fields of newer protos."""
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.Record()
    items = record.history.item
    items.add(key="_step", value_json="7")
    items.add(key="loss", value_json="NaN")
    items.add(key="neg", value_json="-Infinity")
    items.add(nested_key=["train", "acc"], number=0.5)
    items.add(key="tokens", integer=4096)
    items.add(key="img", value_json='{"_type": "image-file", "width": 3}')
    items.add(key="ok", value_json="true")
    items.add(key="_runtime", value_json="1.5")
    one_record_file(tmp_path / "run-x.wandb", record.SerializeToString())
    (got,) = read_wandb(str(tmp_path)).records
    assert got.step == 7 and got.time is None
    assert math.isnan(got.values.pop("loss")) and got.values == {"neg": -math.inf, "train/acc": 0.5, "tokens": 4096.0}


def test_importing_the_module_does_not_import_wandb():
    probe = ("import sys; import pytest_spml.watch.wandb_source; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'google', 'torch')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- online: a fake Api with wandb's errors


def rate_limited(retry_after: str | None = None) -> Exception:
    """What the public API raises on HTTP 429 (normalize_exceptions: CommError wrapping requests' HTTPError)."""
    import requests
    from wandb.errors import CommError

    response = requests.Response()
    response.status_code = 429
    response.reason = "Too Many Requests"
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    error = requests.HTTPError("429 Client Error: Too Many Requests", response=response)
    return CommError("HTTP 429 (Too Many Requests)", error)


def core_rate_limited() -> Exception:
    """The same through wandb-core (0.31): CommError wrapping WandbApiFailedError with an ApiErrorResponse."""
    from wandb.errors import CommError
    from wandb.proto import wandb_api_pb2
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError

    response = wandb_api_pb2.ApiErrorResponse(message="rate limited, slow down", http_status=429)
    return CommError("rate limited, slow down", WandbApiFailedError("rate limited, slow down", response))


def connection_reset() -> Exception:
    import requests
    from wandb.errors import CommError

    error = requests.ConnectionError("('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))")
    return CommError(str(error), error)


class FakeRun:
    def __init__(self, api: FakeApi, path: str) -> None:
        self.api, self.path, self.state = api, path, "running"

    def scan_history(self, keys=None, page_size=1000, min_step=0, max_step=None, use_cache=True):
        self.api.scans.append({"min_step": min_step, "page_size": page_size, "use_cache": use_cache})
        for row in self.api.rows:
            if row["_step"] < min_step:
                continue
            if self.api.fail_mid_scan and row["_step"] == self.api.fail_mid_scan[0]:
                error = self.api.fail_mid_scan[1]
                self.api.fail_mid_scan = []  # once: the retry goes through
                raise error
            yield dict(row)

    def history(self, *args, **kwargs):
        raise AssertionError("history() is down-sampled: scan_history() must be used")


class FakeApi:
    """``wandb.Api()``-shaped: run(path) fails with the queued errors first, then returns a FakeRun."""

    def __init__(self, rows: list[dict], errors: list[Exception] = ()) -> None:
        self.rows = rows
        self.errors = list(errors)
        self.runs: list[str] = []
        self.scans: list[dict] = []
        self.fail_mid_scan: list = []

    def run(self, path: str) -> FakeRun:
        self.runs.append(path)
        if self.errors:
            raise self.errors.pop(0)
        return FakeRun(self, path)


def rows(start: int, stop: int) -> list[dict]:
    return [{"_step": s, "_timestamp": 1.7e9 + s, "_runtime": float(s), "loss": 2.0 / (s + 1),
             "train": {"acc": s / 100}, "media": {"_type": "image-file", "width": 28}} for s in range(start, stop)]


@pytest.fixture
def needs_wandb():
    pytest.importorskip("wandb", reason=EXTRA)


def test_online_backs_off_on_rate_limits_then_reads_every_row(needs_wandb):
    api = FakeApi(rows(0, 120), errors=[rate_limited(), core_rate_limited(), rate_limited(retry_after="7")])
    slept: list[float] = []
    result = read_wandb("me/proj/abc123", api=api, sleep=slept.append)
    assert result.status == "wandb_ok" and result.kind == "online"
    assert slept == [1.0, 2.0, 7.0]  # 1 s, 2 s, then the server's Retry-After (above the 4 s back-off)
    assert api.runs == ["me/proj/abc123"] * 4
    assert [r.step for r in result.records] == list(range(120))
    assert result.records[5].values == {"loss": 2.0 / 6, "train/acc": 0.05}  # media skipped, nested flattened
    assert result.records[5].time == 1.7e9 + 5 and result.records[5].line == "wandb:me/proj/abc123:step=5"
    assert api.scans[-1]["min_step"] == 0 and api.scans[-1]["use_cache"] is False
    assert "backed off 3x" in result.detail and "run running" in result.detail


def test_online_incremental_min_step_and_resume_after_mid_scan_failure(needs_wandb):
    api = FakeApi(rows(0, 50))
    slept: list[float] = []
    first = read_wandb("me/proj/abc123", api=api, sleep=slept.append)
    assert len(first.records) == 50 and first.state["last_step"] == 49
    api.rows = rows(0, 200)  # the run logged more
    api.fail_mid_scan = [120, connection_reset()]
    second = read_wandb("me/proj/abc123", json.loads(json.dumps(first.state)), api=api, sleep=slept.append)
    assert [scan["min_step"] for scan in api.scans] == [0, 50, 120]  # resumed after the last row received
    assert [r.step for r in second.records] == list(range(50, 200)) and slept == [1.0]
    third = read_wandb("me/proj/abc123", second.state, api=api, sleep=slept.append)
    assert third.records == [] and third.status == "wandb_ok" and api.scans[-1]["min_step"] == 200


def test_online_nan_inf_values_kept(needs_wandb):
    api = FakeApi([{"_step": 0, "loss": float("nan")}, {"_step": 1, "loss": "NaN", "grad_norm": "Infinity"},
                   {"_step": 2, "loss": float("-inf"), "flag": True, "name": "x", "none": None}])
    result = read_wandb("me/proj/abc123", api=api, sleep=lambda s: None)
    values = [r.values for r in result.records]
    assert math.isnan(values[0]["loss"]) and math.isnan(values[1]["loss"]) and values[1]["grad_norm"] == math.inf
    assert values[2] == {"loss": -math.inf}


def test_online_unreachable_after_bounded_retries_gives_wait(needs_wandb):
    api = FakeApi(rows(0, 10), errors=[rate_limited()] * 10)
    slept: list[float] = []
    result = read_wandb("me/proj/abc123", api=api, sleep=slept.append, retries=4, max_delay=5.0)
    assert result.status == "unreachable" and result.records == []
    assert slept == [1.0, 2.0, 4.0, 5.0] and len(api.runs) == 5  # exponential, capped, bounded
    assert "rate limited" in result.detail and "gave up after 5 attempts" in result.detail
    series = detectors.RunSeries()
    series.add(result.records)
    verdict = deciding.decide(series, [], Baseline(), time.time(), source_ok=result.status == "wandb_ok")
    assert verdict.decision == "WAIT"


def test_online_final_errors_are_not_retried(needs_wandb):
    from wandb.errors import AuthenticationError, CommError, UsageError

    cases = {
        "not found": (CommError("Could not find run <Run me/proj/nope (not found)>"), "ENTITY/PROJECT/RUN_ID"),
        "auth": (UsageError("No API key configured. Use `wandb login` to log in."), "WANDB_API_KEY"),
    }
    for kind, (error, hint) in cases.items():
        slept: list[float] = []
        result = read_wandb("me/proj/nope", api=FakeApi([], errors=[error]), sleep=slept.append)
        assert result.status == "unreachable" and slept == [] and kind in result.detail and hint in result.detail
    # wandb 0.31 reports a dead connection as a failed credential check: it is transient, retried
    dead = AuthenticationError("Failed to verify credentials with http://127.0.0.1:9: Failed to execute API request: "
                               "the service process is busy and did not respond in time.")
    assert classify_error(dead) == ("transient", None)
    assert classify_error(rate_limited("3")) == ("rate_limited", 3.0)
    assert classify_error(core_rate_limited())[0] == "rate_limited"
    assert classify_error(ValueError("unexpected")) == ("error", None)


def test_real_wandb_api_without_credentials_is_unreachable_not_a_traceback(tmp_path):
    pytest.importorskip("wandb", reason=EXTRA)
    code = textwrap.dedent("""
        import json
        from pytest_spml.watch.wandb_source import read_wandb
        result = read_wandb("me/proj/abc123", sleep=lambda s: None, retries=1)
        print(json.dumps([result.status, result.detail, result.state["note"]]))
    """)
    env = wandb_env(tmp_path)
    env.update(HOME=str(tmp_path), WANDB_BASE_URL="http://127.0.0.1:9", WANDB_MODE="online", NETRC=str(tmp_path / "x"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    status, detail, note = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == "unreachable" and note == "auth" and "wandb login" in detail


# ----------------------------------------------------------------------------- through `spml-loop check`


def _cli(capsys, *argv: str) -> tuple[int, dict]:
    from pytest_spml import loop_cli

    code = loop_cli.main(["check", "--format", "json", "--fresh", "--no-plot", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_check_reads_an_offline_run_first(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    healthy = runs["healthy"]
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"step": 0, "loss": float("nan")}) + "\n")  # the fallback must not be read
    code, doc = _cli(capsys, "--wandb", str(healthy["dir"]), "--log", str(log), "--now", str(time.time()))
    assert code == 0 and doc["source_status"] == "wandb_ok" and doc["decision"] == "CONTINUE"
    assert doc["step"] == 299 and doc["new_records"] == 300

    code, doc = _cli(capsys, "--wandb", str(runs["lr_ramp_nan"]["dir"]), "--now", str(time.time()))
    assert code == 1 and doc["decision"] == "STOP" and "nan_inf" in {a["kind"] for a in doc["anomalies"]}


def test_check_falls_back_to_the_logs_then_waits(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs_dir = Path(__file__).parent / "runs"
    log = runs_dir / "healthy_sgd.jsonl"
    now = str(json.loads(log.read_text().splitlines()[-1])["time"] + 1)
    not_yet = str(tmp_path / "wandb" / "offline-run-later")  # the run has not created its directory yet
    code, doc = _cli(capsys, "--wandb", not_yet, "--log", str(log), "--now", now)
    assert code == 0 and doc["source_status"] == "log_fallback" and doc["decision"] == "CONTINUE"
    code, doc = _cli(capsys, "--wandb", not_yet, "--now", now)
    assert code == 0 and doc["source_status"] == "unreachable" and doc["decision"] == "WAIT"
