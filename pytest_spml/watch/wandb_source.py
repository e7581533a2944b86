"""WandB as a metric source of the watchdog: offline run directories read locally, online runs through the public API.

``read_wandb(spec, state)`` takes either

* a local offline run: a run directory (``wandb/offline-run-<time>-<id>``,
  a synced ``wandb/run-<time>-<id>`` or the ``latest-run`` link), its
  ``run-<id>.wandb`` file, or a directory holding runs (``wandb/`` or the
  directory above it), where the newest run is taken and named in ``detail``;
  read without network. Or
* an online run ``ENTITY/PROJECT/RUN_ID`` (also ``wandb://...`` or a
  ``https://wandb.ai/ENTITY/PROJECT/runs/RUN_ID`` address), read with
  ``wandb.Api().run(path).scan_history()``; never ``history()``, which
  down-samples to 500 rows.

An existing local path wins; a spec that is neither an existing path nor an
online run path is reported unreachable (a run directory that does not exist
yet is "no data", as for a log file), not raised.

The ``.wandb`` file is a LevelDB-style log: a 7-byte file header (``:W&B``,
magic 0xBEE1, version 0), then 32 KiB blocks of fragments, each with a 7-byte
header (CRC-32 seeded with the fragment type, length, type FULL / FIRST /
MIDDLE / LAST), holding serialized ``wandb_internal_pb2.Record`` protobufs.
wandb 0.31 writes it from the Go core and ships no Python reader of it any
more (the old ``wandb.sdk.internal.datastore.DataStore`` is gone), so the
framing is read here with the standard library and only the protobuf classes
come from the installed wandb. A public local reader (``wandb.beta.LocalApi``,
experimental in newer releases, see REFERENCE.md) is preferred when this wandb
has one and it works; else the built-in reader is used.

Incremental: the state remembers the byte offset of the first record not yet
read (offline) or the last step returned (online), so a re-check reads only
new records. A live run's file grows a block at a time and its last record may
be half written: reading stops before it, and the next read starts there.

Online reads back off on rate limits (HTTP 429) and transient network errors
(bounded exponential back-off, ``Retry-After`` honoured) and then answer
``status="unreachable"``, never an exception: an unreachable source gives
WAIT, never STOP. Offline input that is not a W&B run raises ``InputError``.

Only the standard library is imported at module level; ``wandb`` is imported
by the functions that need it.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_spml.errors import InputError
from pytest_spml.watch.model import Record
from pytest_spml.watch.sources import _to_float, _to_step, _to_time

__all__ = ["WandbRead", "classify_error", "iter_log_records", "parse_online_spec", "public_offline_reader",
           "read_wandb", "resolve_offline_run"]

INSTALL_HINT = "pip install 'pytest-spml[wandb]'"
STATUSES = ("wandb_ok", "unreachable")

# LevelDB log framing as wandb writes it (wandb/sdk/internal/datastore.py up to 0.18, wandb-core after)
BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
_CRC_SEED = [zlib.crc32(bytes([t])) & 0xFFFFFFFF for t in range(LAST + 1)]
_FRAG = struct.Struct("<IHB")
_FILE_HEADER = struct.Struct("<4sHB")

CHUNK_RECORDS = 1000  # records per batch handed to a sink
_URL = re.compile(r"^https?://[^/]+/([\w.-]+)/([\w.-]+)/runs/([\w.-]+)/?(?:[?#].*)?$")
_PATH = re.compile(r"^(?:wandb://)?([\w.-]+)/([\w.-]+)/(?:runs/)?([\w.-]+)$")
_RUN_DIR = re.compile(r"^(?:offline-)?run-.*")


@dataclass
class WandbRead:
    """What one read of a WandB source gave.

    ``status`` is "wandb_ok" (the source answered; ``records`` may still be
    empty when nothing new was logged) or "unreachable" (online: no answer
    after the retries, no wandb installed, no credentials, no such run;
    offline: the path does not exist yet). Records read before an online
    failure are returned and the state advanced past them. ``detail`` says
    which run and reader, and why a source is unreachable.
    """

    records: list[Record]
    state: dict
    status: str
    detail: str
    kind: str = ""  # "offline" | "online" | "" (neither could be told)


# ----------------------------------------------------------------------------- spec -> offline run or online path

def parse_online_spec(spec: str) -> str | None:
    """``ENTITY/PROJECT/RUN_ID`` for an online run spec (also ``wandb://...``, ``.../runs/ID``, a run's URL)."""
    text = spec.strip()
    match = _URL.match(text) or _PATH.match(text)
    if match is None or any(part in (".", "..") for part in match.groups()):
        return None
    return "/".join(match.groups())


def _runs_in(folder: Path) -> list[Path]:
    """The ``run-*.wandb`` files of the run directories directly under ``folder`` (links such as latest-run skipped)."""
    found = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        if _RUN_DIR.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            found.extend(sorted(entry.glob("run-*.wandb")))
    return found


def _newest(files: list[Path]) -> Path:
    # the file written last is the run being watched; the name (with its start time) breaks ties
    def key(p: Path) -> tuple[float, str]:
        try:
            return p.stat().st_mtime, p.parent.name
        except OSError:
            return 0.0, p.parent.name
    return max(files, key=key)


def resolve_offline_run(path: str | os.PathLike) -> tuple[Path, str]:
    """The ``.wandb`` file of an existing local path, and how it was picked.

    Raises InputError when the path holds no W&B run.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p, f"offline run file {p}"
    if not p.is_dir():
        raise InputError("not a W&B run file or directory", p)
    own = sorted(p.glob("run-*.wandb"))
    if own:  # a run directory (or the latest-run link to one)
        chosen = _newest(own)
        real = os.path.basename(os.path.realpath(p))
        via = f" via {p.name}" if real != p.name else ""  # the latest-run link: say which run it points to
        return chosen, f"offline run {real}{via} ({chosen.name})"
    for folder in (p, p / "wandb"):
        runs = _runs_in(folder)
        if runs:
            chosen = _newest(runs)
            how = f"newest of {len(runs)} runs in {folder}" if len(runs) > 1 else f"the run in {folder}"
            return chosen, f"offline run {chosen.parent.name} ({how})"
    raise InputError("no W&B run here: expected a run-<id>.wandb file, a run directory holding one "
                     "(wandb/offline-run-*, wandb/run-*, wandb/latest-run), or a wandb/ directory of runs; "
                     "pass one of those, or ENTITY/PROJECT/RUN_ID for an online run", p)


# ----------------------------------------------------------------------------- the .wandb log framing

def _read_file_header(f, path: Path) -> bool:
    """Check the 7-byte file header at the current position; False when it is not all written yet."""
    raw = f.read(HEADER)
    if len(raw) < HEADER:
        if raw and not FILE_IDENT.startswith(raw[:4]):
            raise InputError(f"not a W&B run file: it starts with {raw[:4]!r}, not {FILE_IDENT!r}", path)
        return False
    ident, magic, version = _FILE_HEADER.unpack(raw)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        raise InputError(f"not a W&B run file: header {raw!r} is not {FILE_IDENT!r} with magic {FILE_MAGIC:#x}",
                         path)
    if version != FILE_VERSION:
        raise InputError(f"W&B run file format version {version} is unknown to this reader (it knows "
                         f"{FILE_VERSION}); read the run online (ENTITY/PROJECT/RUN_ID) instead", path)
    return True


def iter_log_records(f, offset: int, counters: dict) -> Iterator[tuple[int, bytes]]:
    """Yield ``(end_offset, payload)`` for each complete record from ``offset`` (a record's first fragment).

    ``end_offset`` is where the next record starts; a consumer that commits it
    resumes there. Reading stops silently at a half-written tail (a short
    fragment header or body, a FIRST without its LAST yet): a live run's file.
    A fragment whose checksum fails, or that overruns its block, is counted in
    ``counters["corrupt"]`` and the rest of its block skipped (LevelDB's rule).
    """
    pos = offset
    f.seek(pos)
    parts: list[bytes] | None = None
    while True:
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: zero padding too short for a fragment header
            if len(f.read(left)) < left:
                return
            pos += left
            continue
        raw = f.read(HEADER)
        if len(raw) < HEADER:
            return
        crc, length, kind = _FRAG.unpack(raw)
        if kind == 0 and length == 0:  # zero-filled (preallocated) rest of a block: not a fragment
            skip = left - HEADER
            if len(f.read(skip)) < skip:
                return
            pos += left
            parts = None
            continue
        if HEADER + length > left or kind > LAST:
            counters["corrupt"] = counters.get("corrupt", 0) + 1
            if len(f.read(left - HEADER)) < left - HEADER:
                return  # cannot tell corruption from a torn tail yet; leave it to the next read
            pos += left
            parts = None
            continue
        body = f.read(length)
        if len(body) < length:
            return
        pos += HEADER + length
        if zlib.crc32(body, _CRC_SEED[kind]) & 0xFFFFFFFF != crc:
            counters["corrupt"] = counters.get("corrupt", 0) + 1
            rest = BLOCK - pos % BLOCK if pos % BLOCK else 0
            if len(f.read(rest)) < rest:
                return
            pos += rest
            parts = None
            continue
        if kind == FULL:
            if parts is not None:
                counters["corrupt"] = counters.get("corrupt", 0) + 1  # a FIRST that never got its LAST
            parts = None
            yield pos, body
        elif kind == FIRST:
            parts = [body]
        elif parts is None:  # MIDDLE / LAST without a FIRST: the start was lost
            counters["corrupt"] = counters.get("corrupt", 0) + 1
        elif kind == MIDDLE:
            parts.append(body)
        else:
            parts.append(body)
            payload = b"".join(parts)
            parts = None
            yield pos, payload


# ----------------------------------------------------------------------------- values

def _add_value(values: dict[str, float], key: str, value: Any) -> None:
    if type(value) is dict:
        if "_type" in value:  # a media object, histogram or table: no scalar metric
            return
        for sub, inner in value.items():
            _add_value(values, f"{key}/{sub}", inner)
        return
    number = _to_float(value)
    if number is not None:
        values[key] = number


def _row_values(row: dict) -> tuple[int | None, float | None, dict[str, float]]:
    """(step, time, values) of a history row: ``_step``, ``_timestamp``; other ``_`` keys are wandb's own."""
    values: dict[str, float] = {}
    step = when = None
    for key, value in row.items():
        if key == "_step":
            step = _to_step(value)
        elif key == "_timestamp":
            when = _to_time(value)
        elif not key.startswith("_"):
            _add_value(values, key, value)
    return step, when, values


def _history_row(history: Any) -> dict[str, Any]:
    """A HistoryRecord as a row dict: nested keys joined with "/", values decoded from value_json."""
    row: dict[str, Any] = {}
    for item in history.item:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        raw = item.value_json
        if raw:
            try:
                value = float(raw)  # the common case, a number; float() takes wandb's NaN / Infinity / -Infinity
            except ValueError:
                try:
                    value = json.loads(raw)  # a dict, string, boolean or null
                except ValueError:
                    continue
        else:
            which = item.WhichOneof("value") if hasattr(item, "WhichOneof") else None
            if which in (None, "none", "text", "json"):
                continue
            value = getattr(item, which)
        row[key] = value
    if "_step" not in row and history.HasField("step"):
        row["_step"] = history.step.num
    return row


def _internal_record_class(path: Path) -> Any:
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as exc:
        raise InputError(f"reading an offline W&B run needs the wandb package: {INSTALL_HINT} ({exc}); or log "
                         "the metrics to JSONL and pass --log", path) from None
    return wandb_internal_pb2.Record


# ----------------------------------------------------------------------------- public local reader (runtime detection)

def public_offline_reader() -> tuple[str, Any] | None:
    """``(name, class)`` of a public local reader of offline runs in this wandb, else None.

    REFERENCE.md: no stable one exists; newer releases carry an experimental
    ``wandb.beta.LocalApi``. Only its presence is checked here; whether it
    reads the run is found out by trying (``_read_public``).
    """
    import importlib

    try:
        beta = importlib.import_module("wandb.beta")
    except Exception:  # noqa: BLE001 - no beta module, or one that fails to import: no public reader
        return None
    api = getattr(beta, "LocalApi", None)
    return ("wandb.beta.LocalApi", api) if api is not None else None


def _read_public(api_class: Any, run_dir: Path, min_step: int) -> list[dict]:
    """Every history row of ``run_dir`` from step ``min_step``, through an Api-shaped local reader."""
    run = api_class().run(str(run_dir))
    try:
        rows = run.scan_history(min_step=min_step)
    except TypeError:  # a reader without min_step: filter here
        rows = run.scan_history()
    return [dict(row) for row in rows]


# ----------------------------------------------------------------------------- offline

class _Collector:
    """Records are kept in ``records``, or handed to ``sink`` in batches of CHUNK_RECORDS (bounded memory on a first read)."""

    def __init__(self, sink: Callable[[list[Record]], Any] | None) -> None:
        self.sink = sink
        self.records: list[Record] = []
        self.count = 0

    def add(self, record: Record) -> None:
        self.records.append(record)
        self.count += 1
        if self.sink is not None and len(self.records) >= CHUNK_RECORDS:
            self.flush()

    def flush(self) -> None:
        if self.sink is not None and self.records:
            self.sink(self.records)
            self.records = []


def _fresh_offline_state(state: dict, path: Path, picked: str) -> dict:
    """Start over on another file: a first read, a newer run picked in a folder, the latest-run link moved."""
    real = os.path.realpath(path)
    note = None
    if state.get("kind") != "offline" or state.get("file") != real:
        if state.get("kind") == "offline":
            note = f"switched to {picked}"
        state.clear()
        state.update(kind="offline", file=real, offset=0, inode=None, dev=None, size=0, records=0, corrupt=0,
                     last_step=None, skip_through_step=None, reader=None, run_id=None, finished=False,
                     exit_code=None)
    state["note"] = note
    return state


def _read_offline(path: Path, picked: str, state: dict, collector: _Collector) -> str:
    state = _fresh_offline_state(state, path, picked)
    if state["reader"] in (None, "wandb.beta.LocalApi"):
        public = public_offline_reader()
        if public is not None:
            name, api_class = public
            last = state.get("last_step")
            try:
                rows = _read_public(api_class, path.parent, 0 if last is None else last + 1)
            except Exception as exc:  # noqa: BLE001 - an experimental reader that fails: use the built-in one
                state["public_error"] = f"{name} failed ({type(exc).__name__}: {exc}); read with the built-in reader"
                state["skip_through_step"] = last
            else:
                state["reader"] = name
                for row in rows:
                    step, when, values = _row_values(row)
                    if step is not None and last is not None and step <= last:
                        continue
                    collector.add(Record(step, when, values, f"{path}:step={step}"))
                    if step is not None:
                        last = step if last is None else max(last, step)
                state["last_step"] = last
                state["records"] += collector.count
                return name
    state["reader"] = "built-in"
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read the W&B run file ({exc.strerror})", path) from None
    with f:
        st = os.fstat(f.fileno())
        if state["inode"] is not None and ((st.st_ino, st.st_dev) != (state["inode"], state["dev"])
                                           or st.st_size < state["offset"]):
            state["note"] = "rewritten" if st.st_size >= state["offset"] else "truncated"
            state.update(offset=0, records=0, corrupt=0, last_step=None, skip_through_step=None, finished=False,
                         exit_code=None)
        state.update(inode=st.st_ino, dev=st.st_dev, size=st.st_size)
        if state["offset"] == 0:
            if not _read_file_header(f, path):
                return "built-in"  # the run has not written its header yet
            state["offset"] = HEADER
        message = _internal_record_class(path)()  # after the header check: a file that is no run says so first
        counters = {"corrupt": 0}
        skip = state.get("skip_through_step")
        last = state.get("last_step")
        src = str(path)
        for end, payload in iter_log_records(f, state["offset"], counters):
            state["offset"] = end
            try:
                message.ParseFromString(payload)
            except Exception:  # noqa: BLE001 - protobuf DecodeError: one unreadable record, not the run
                counters["corrupt"] += 1
                continue
            which = message.WhichOneof("record_type")
            if which == "history":
                step, when, values = _row_values(_history_row(message.history))
                if skip is not None and step is not None and step <= skip:
                    continue
                collector.add(Record(step, when, values, f"{src}:step={step}"))
                if step is not None:
                    last = step if last is None else max(last, step)
            elif which == "run":
                state["run_id"] = message.run.run_id or state.get("run_id")
            elif which == "exit":
                state["finished"], state["exit_code"] = True, message.exit.exit_code
        state["corrupt"] += counters["corrupt"]
        state["last_step"] = last
        state["records"] += collector.count
    return "built-in"


# ----------------------------------------------------------------------------- online

_TRANSIENT_STATUS = frozenset((408, 425, 500, 502, 503, 504))
_TRANSIENT_NAMES = frozenset(("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutError",
                              "ChunkedEncodingError", "ProtocolError", "RemoteDisconnected", "IncompleteRead",
                              "NewConnectionError", "MaxRetryError", "SSLError", "ProxyError", "CommError"))
_TRANSIENT_WORDS = ("timed out", "timeout", "did not respond in time", "connection", "temporarily", "unavailable",
                    "try again", "reset by peer", "failed to execute api request", "bad gateway", "network")
_RATE_WORDS = ("429", "rate limit", "ratelimit", "too many requests", "rate-limit")
_AUTH_WORDS = ("api key", "api_key", "no authentication", "wandb login", "unauthorized", "permission denied",
               "invalid credentials", "401", "403")
_MISSING_WORDS = ("could not find run", "not found", "404")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo and len(seen) < 8:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        todo.extend((getattr(item, "exc", None), item.__cause__, item.__context__))
    return seen


def _status_of(exc: BaseException) -> tuple[int | None, float | None]:
    """The HTTP status and Retry-After seconds anywhere in the exception chain (requests or wandb-core errors)."""
    for item in _chain(exc):
        response = getattr(item, "response", None)
        if response is None:
            continue
        status = getattr(response, "status_code", None) or getattr(response, "http_status", None)
        if isinstance(status, int) and status:
            retry_after = None
            headers = getattr(response, "headers", None)
            if headers is not None and hasattr(headers, "get"):
                try:
                    retry_after = float(headers.get("Retry-After"))
                except (TypeError, ValueError):
                    retry_after = None
            return status, retry_after
    return None, None


def classify_error(exc: BaseException) -> tuple[str, float | None]:
    """("rate_limited" | "transient" | "auth" | "not_found" | "error", Retry-After seconds or None).

    The first two are retried with back-off; the others are final: retrying a
    missing run or a missing API key only delays the WAIT.
    """
    status, retry_after = _status_of(exc)
    if status == 429:
        return "rate_limited", retry_after
    if status in _TRANSIENT_STATUS:
        return "transient", retry_after
    if status in (401, 403):
        return "auth", None
    if status == 404:
        return "not_found", None
    chain = _chain(exc)
    text = " ".join(str(item) for item in chain).lower()
    names = {cls.__name__ for item in chain for cls in type(item).__mro__}
    if any(word in text for word in _RATE_WORDS):
        return "rate_limited", retry_after
    # before the auth words: wandb reports a dead connection as "Failed to verify credentials ... did not respond"
    if any(word in text for word in _TRANSIENT_WORDS) or isinstance(exc, (ConnectionError, TimeoutError)):
        return "transient", retry_after
    if "UsageError" in names or any(word in text for word in _AUTH_WORDS):
        return "auth", None
    if any(word in text for word in _MISSING_WORDS):
        return "not_found", None
    if names & _TRANSIENT_NAMES:
        return "transient", retry_after
    return "error", None


def _scan(run: Any, min_step: int, page_size: int) -> Iterable[dict]:
    kwargs: dict[str, Any] = {"min_step": min_step, "page_size": page_size}
    try:
        import inspect

        if "use_cache" in inspect.signature(run.scan_history).parameters:
            kwargs["use_cache"] = False  # a live run: the local history cache may be behind the server
    except (TypeError, ValueError):
        pass
    return run.scan_history(**kwargs)


def _read_online(run_path: str, state: dict, collector: _Collector, api: Any, sleep: Callable[[float], Any],
                 retries: int, backoff: float, max_delay: float, page_size: int) -> tuple[str, str]:
    if state.get("kind") != "online" or state.get("run") != run_path:
        state.clear()
        state.update(kind="online", run=run_path, last_step=None, records=0)
    state.update(note=None, attempts=0, waits=[])
    where = f"wandb:{run_path}"
    last = state.get("last_step")
    if api is None:
        try:
            import wandb
        except ImportError as exc:
            return "unreachable", (f"{where}: the wandb package is not installed ({exc}): {INSTALL_HINT}, or log "
                                   "to JSONL and pass --log")
        make_api: Callable[[], Any] = lambda: wandb.Api(timeout=30)
    else:
        given = api
        make_api = lambda: given
    attempt = 0
    while True:
        state["attempts"] = attempt + 1
        try:
            client = make_api()
            run = client.run(run_path)
            state["run_state"] = getattr(run, "state", None)
            for row in _scan(run, 0 if last is None else last + 1, page_size):
                step, when, values = _row_values(dict(row))
                if step is not None and last is not None and step <= last:
                    continue  # a server that ignores min_step: never hand a step twice
                collector.add(Record(step, when, values, f"{where}:step={step}"))
                if step is not None:
                    last = step
                    state["last_step"] = last  # committed row by row: a failure mid-scan resumes after it
        except Exception as exc:  # noqa: BLE001 - an online source answers "unreachable", never raises
            kind, retry_after = classify_error(exc)
            reason = f"{type(exc).__name__}: {exc}"
            if kind in ("rate_limited", "transient") and attempt < retries:
                delay = min(max_delay, backoff * (2 ** attempt))
                if retry_after is not None:
                    delay = min(max_delay, max(delay, retry_after))
                state["waits"].append(delay)
                sleep(delay)
                attempt += 1
                continue
            state["records"] += collector.count
            hint = {"auth": "; set WANDB_API_KEY or run `wandb login`",
                    "not_found": "; check ENTITY/PROJECT/RUN_ID (the run id, not its display name)",
                    "rate_limited": f"; gave up after {attempt + 1} attempts, the next check tries again",
                    "transient": f"; gave up after {attempt + 1} attempts, the next check tries again"}.get(kind, "")
            state["note"] = kind
            return "unreachable", f"{where}: {kind.replace('_', ' ')} ({reason[:300]}){hint}"
        state["records"] += collector.count
        run_state = state.get("run_state")
        waited = f"; backed off {len(state['waits'])}x ({sum(state['waits']):.0f} s)" if state["waits"] else ""
        return "wandb_ok", (f"{where} (online, scan_history, {collector.count} new rows, last step {last}"
                            + (f", run {run_state}" if isinstance(run_state, str) else "") + f"{waited})")


# ----------------------------------------------------------------------------- entry point

def read_wandb(spec: str, state: dict | None = None, *, api: Any = None, sleep: Callable[[float], Any] = time.sleep,
               retries: int = 5, backoff: float = 1.0, max_delay: float = 30.0, page_size: int = 1000,
               sink: Callable[[list[Record]], Any] | None = None) -> WandbRead:
    """Read the records a WandB run logged since ``state``; see the module docstring.

    ``api``: an object shaped like ``wandb.Api()`` (tests, or a caller that
    keeps one); ``sleep``: how back-off waits. Online, ``retries`` failed
    attempts are retried after ``backoff * 2**n`` seconds (at most
    ``max_delay``, at least a server's Retry-After) before "unreachable".
    ``sink``: records are handed to it in batches of CHUNK_RECORDS instead of
    being returned (bounded memory on the first read of a long run).
    The given state is left alone; pass ``result.state`` to the next call
    (it is JSON-serializable).
    Raises InputError for an existing local path that is not a W&B run, or
    when the installed wandb cannot decode it.
    """
    new_state = dict(state or {})
    collector = _Collector(sink)
    local = Path(spec).expanduser()
    if local.exists():
        file, picked = resolve_offline_run(local)
        reader = _read_offline(file, picked, new_state, collector)
        collector.flush()
        extra = []
        if new_state.get("public_error"):
            extra.append(new_state.pop("public_error"))
        if new_state.get("note"):
            extra.append(new_state["note"])
        if new_state.get("corrupt"):
            extra.append(f"{new_state['corrupt']} unreadable record(s) skipped")
        if new_state.get("finished"):
            extra.append(f"run finished (exit code {new_state.get('exit_code')})")
        detail = (f"{picked}: {collector.count} new records, last step {new_state.get('last_step')} "
                  f"(offline, {reader} reader)" + "".join(f"; {e}" for e in extra))
        return WandbRead(collector.records, new_state, "wandb_ok", detail, "offline")
    run_path = parse_online_spec(spec)
    if run_path is None:
        return WandbRead([], new_state, "unreachable",
                         f"{spec}: no such offline run directory or file (yet), and not an online run "
                         "ENTITY/PROJECT/RUN_ID", "")
    status, detail = _read_online(run_path, new_state, collector, api, sleep, retries, backoff, max_delay,
                                  page_size)
    collector.flush()
    return WandbRead(collector.records, new_state, status, detail, "online")
