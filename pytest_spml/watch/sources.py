"""Metric sources of the watchdog: JSONL (the default), plain-text logs and TensorBoard event files.

Every reader is incremental. It takes the ``state`` dict that the previous
call returned and reads only what was added since; pass ``None`` (or ``{}``)
for a first read. The ``read_*`` functions return ``(records, new_state)`` and
leave the given state alone; the ``iter_*`` generators update the dict they
are given in place and yield records one chunk at a time, so a consumer that
keeps its own statistics holds at most one chunk of records (bounded memory
whatever the size of the log).

File state (JSONL and text; JSON-serializable, so it can be saved between
two runs of the watchdog)::

    path, format      what was read, "jsonl" or "text"
    offset            bytes consumed: the next read starts here
    lineno            newlines consumed (the next line is lineno + 1)
    inode, dev, size  the file seen at the last read
    head              [n, crc32] of the file's first n (<= 64) bytes
    partial_bytes     length of an unterminated last line, re-read next time
    bad_lines         invalid lines skipped so far; first_bad_line: the first
    records           records returned so far
    note              what happened at this read: None, "missing", "rotated"
                      (another inode at the path), "truncated" (size < offset)
                      or "replaced" (first bytes changed); on the last three the
                      file is read again from byte 0 and the counters restart.

The file is read in chunks (4 MiB by default), never whole. A half-written
last line is left unread (its start is the offset) until a later read sees
it completed; for JSONL an unterminated last line that already parses as a
complete object is taken (``json.dump(obj, f); f.write("\\n")`` writers and
logs that end without a newline), which is safe: no longer line can start
with a complete object.

``iter_jsonl_chunks`` reads like ``iter_jsonl`` but yields ``JsonlChunk``
objects: the same records, kept as columns (steps, times, one list per metric)
that ``RunSeries.add`` ingests without building a Record per line. That is
how a first check of a multi-GB log stays within 2x a bare ``json.loads`` loop.

Only the standard library is imported here; ``read_tensorboard`` imports
``tensorboard`` when it is called.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import json.scanner
import math
import os
import re
import zlib
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from itertools import compress, repeat
from operator import add, eq, is_not, itemgetter
from typing import Any, Callable

from pytest_spml.watch.detectors import Columns
from pytest_spml.watch.model import Record

__all__ = [
    "STEP_KEYS", "TIME_KEYS", "TEXT_PRESETS", "JsonlChunk", "detect_format", "read_source",
    "read_jsonl", "iter_jsonl", "iter_jsonl_chunks", "read_text_log", "iter_text_log", "read_tensorboard",
    "start_at_end",
]

STEP_KEYS = ("step", "iter", "iteration", "global_step", "_step", "epoch_step")
TIME_KEYS = ("time", "timestamp", "_timestamp", "wall_time")
TEXT_PRESETS = ("auto", "nanogpt", "hf", "kv")

CHUNK_SIZE = 4 << 20  # bytes per read
MAX_LINE = 16 << 20  # a line still unterminated after this many bytes is skipped as bad, not held
GC_PAUSE_BYTES = 16 << 20  # read_jsonl / read_text_log pause the cyclic GC for reads larger than this
_HEAD = 64  # bytes fingerprinted to notice a file replaced in place
_MAX_LITERAL = 1 << 16  # longest Hugging Face dict line parsed
_NONFINITE_STR = {"nan": math.nan, "+nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf,
                  "-inf": -math.inf, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}
_INF = math.inf
_NUMERIC = frozenset((float, int))  # exact types: bool is not a metric
_TB_INSTALL = "pip install 'pytest-spml[tensorboard]'"

# The C scanner of the stdlib json module, called once per line on a decoded
# chunk: json.loads minus its per-call wrapping (type checks, two whitespace
# regex matches). NaN, Infinity and -Infinity are accepted, as by json.loads.
_SCAN = json.scanner.make_scanner(json.JSONDecoder())
_BLANK = object()
_BAD = object()


# ----------------------------------------------------------------------------- state and raw reading

def _init_state(state: dict, path: Any, fmt: str) -> dict:
    defaults = {"path": str(path), "format": fmt, "offset": 0, "lineno": 0, "inode": None, "dev": None,
                "size": 0, "head": None, "partial_bytes": 0, "bad_lines": 0, "first_bad_line": None,
                "records": 0, "note": None, "skipping": False}
    for key, value in defaults.items():
        state.setdefault(key, value)
    state["note"] = None
    return state


def _restart(state: dict, note: str) -> None:
    state.update(offset=0, lineno=0, size=0, head=None, partial_bytes=0, bad_lines=0, first_bad_line=None,
                 records=0, skipping=False, note=note)
    for key in [k for k in state if k.startswith("text_")]:  # per-file parser state (text logs)
        del state[key]


def _open_checked(path: Any, state: dict):
    """Open ``path`` for reading at the state's offset; restart on rotation, truncation, replacement."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        state["note"] = "missing"
        return None
    try:
        st = os.fstat(f.fileno())
        if state["inode"] is not None and (st.st_ino, st.st_dev) != (state["inode"], state["dev"]):
            _restart(state, "rotated")
        elif st.st_size < state["offset"]:
            _restart(state, "truncated")
        elif state["head"]:
            n, crc = state["head"]
            f.seek(0)
            if zlib.crc32(f.read(n)) != crc:
                _restart(state, "replaced")
        state["inode"], state["dev"] = st.st_ino, st.st_dev
        if (state["head"] is None or state["head"][0] < _HEAD) and st.st_size > (state["head"] or (0,))[0]:
            f.seek(0)
            head = f.read(_HEAD)
            state["head"] = [len(head), zlib.crc32(head)]
        state["size"] = st.st_size
        f.seek(state["offset"])
        return f
    except BaseException:
        f.close()
        raise


def _iter_raw(f, state: dict, chunk_size: int) -> Iterator[tuple[str, bytes, int]]:
    """Yield ("lines", block, end) with whole lines (the block ends with a newline),
    ("bad", b"", end) for a line longer than MAX_LINE (skipped unread) and finally
    ("tail", rest, end) for an unterminated last line. ``end`` is the offset just
    after the piece; the consumer commits it to the state."""
    pos = state["offset"]
    pending = b""
    skipping = state.get("skipping", False)
    while True:
        data = f.read(chunk_size)
        if not data:
            break
        if skipping:  # inside an overlong line: drop bytes up to its newline
            nl = data.find(b"\n")
            if nl < 0:
                pos += len(data)
                state["offset"], state["skipping"] = pos, True
                continue
            pos += nl + 1
            data = data[nl + 1:]
            skipping = state["skipping"] = False
            yield "bad", b"", pos
        buf = pending + data if pending else data
        nl = buf.rfind(b"\n")
        if nl < 0:
            if len(buf) > MAX_LINE:
                pos += len(buf)
                pending, skipping = b"", True
                state["offset"], state["skipping"] = pos, True
                continue
            pending = buf
            continue
        pending = buf[nl + 1:]
        pos += nl + 1
        yield "lines", buf[:nl + 1], pos
    if pending:
        yield "tail", pending, pos + len(pending)


def start_at_end(path: str | os.PathLike, state: dict | None = None, fmt: str = "jsonl") -> dict:
    """A reading state positioned at the current end of ``path``: the next read returns only lines added later.

    For a run that starts now and appends to a log an earlier run wrote: the
    old lines are skipped, not judged. The line count is kept (evidence still
    names the right line); a half-written last line is skipped too (it belongs
    to the earlier run). A missing file gives a state that reads from the start.
    Rotation, truncation and replacement are still noticed by the next read.
    """
    state = _init_state({} if state is None else state, path, fmt)
    f = _open_checked(path, state)
    if f is None:
        state["note"] = None
        return state
    with f:
        f.seek(0)
        lines = 0
        size = 0
        while True:
            data = f.read(CHUNK_SIZE)
            if not data:
                break
            lines += data.count(b"\n")
            size += len(data)
    state.update(offset=size, lineno=lines, size=size, partial_bytes=0, skipping=False, note=None)
    return state


@contextlib.contextmanager
def _gc_paused(path: Any, state: dict) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large read builds its list of records.

    Records hold no cycles, but each is a tracked object: a list of millions
    of them makes the collector walk them all again and again as it grows
    (a third of the time of a first read). Small (incremental) reads leave the
    collector alone; a collector that was off stays off.
    """
    try:
        unread = os.stat(path).st_size - state.get("offset", 0)
    except OSError:
        unread = 0
    if unread < GC_PAUSE_BYTES or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _bad(state: dict, lineno: int, count: int = 1) -> None:
    state["bad_lines"] += count
    if state["first_bad_line"] is None:
        state["first_bad_line"] = lineno


# ----------------------------------------------------------------------------- values

def _to_float(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if kind is str:
        text = value.strip().lower()
        return _NONFINITE_STR.get(text)
    return None  # None, bool, list, anything else: not a metric


def _flatten_into(out: dict, prefix: str, obj: dict) -> None:
    for key, value in obj.items():
        if type(value) is float:
            out[prefix + key] = value
        elif type(value) is dict:
            _flatten_into(out, prefix + key + "/", value)
        else:
            number = _to_float(value)
            if number is not None:
                out[prefix + key] = number


def _values(obj: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    _flatten_into(out, "", obj)
    return out


def _to_step(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return value
    if kind is float:
        return int(value) if value.is_integer() else None
    if kind is str:
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def _to_time(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float: no time
            return None
    if kind is str:
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _pop_first(obj: dict, keys: tuple[str, ...], convert: Callable[[Any], Any]) -> tuple[Any, str | None]:
    """The first of ``keys`` whose value converts; it is removed from ``obj``, and so are
    the keys tried before it that held something unusable (a NaN step or time is no metric)."""
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        converted = convert(value)
        del obj[key]
        if converted is not None:
            return converted, key
    return None, None


# ----------------------------------------------------------------------------- JSONL

def _slow_json(line: str) -> Any:
    text = line.strip()
    if not text:
        return _BLANK
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError; nesting deeper than the interpreter allows
        return _BAD


def _parse_jsonl_block(text: str, lineno: int, src: str, state: dict, out: list) -> int:
    """Parse the whole lines of ``text`` (it ends with a newline); append Records to ``out``.

    Returns the number of lines. The hot loop: one C scanner call per line, a
    dict comprehension for the values (rows of numbers need nothing else).
    """
    scan, find, rec, numeric = _SCAN, text.find, Record, _NUMERIC
    append = out.append
    # one str object per key name in this chunk, not one per line: records kept
    # in a list share them (a third of their memory); local, so it stays bounded
    key = {}.setdefault
    pos = 0
    start = lineno
    while True:
        nl = find("\n", pos)
        if nl < 0:
            break
        lineno += 1
        try:
            obj, end = scan(text, pos)
        except (StopIteration, ValueError, RecursionError):  # leading blank, blank line, invalid JSON
            obj = _slow_json(text[pos:nl])
        else:
            if end != nl and not text[end:nl].isspace():
                obj = _BAD  # trailing garbage, or an object that ran over the newline
        pos = nl + 1
        if type(obj) is not dict:
            if obj is not _BLANK:
                _bad(state, lineno)
            continue
        step = obj.pop("step", None)  # STEP_KEYS[0], the common case
        if type(step) is not int:
            if step is not None:
                step = _to_step(step)
            if step is None:
                step = _pop_first(obj, STEP_KEYS, _to_step)[0]
        when = obj.pop("time", None)  # TIME_KEYS[0]
        if type(when) is not float or not -_INF < when < _INF:
            if when is not None:
                when = _to_time(when)
            if when is None:
                when = _pop_first(obj, TIME_KEYS, _to_time)[0]
        try:
            values = {key(k, k): v if type(v) is float else float(v) for k, v in obj.items() if type(v) in numeric}
        except OverflowError:  # an integer beyond any float: _to_float makes it +/-inf
            values = {}
        if len(values) != len(obj):  # strings, nulls, booleans, nested dicts: the careful way
            try:
                values = _values(obj)
            except RecursionError:
                _bad(state, lineno)
                continue
        append(rec(step, when, values, f"{src}:{lineno}"))
    return lineno - start


_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_BLOCK = 2048  # lines turned into columns at a time, while their parsed objects are still in the CPU cache
_MAX_DEPTH = 32  # objects nested deeper than this: the chunk is read line by line
_ABSENT = object()
_FLOAT = frozenset((float,))
_FLOAT_INT = frozenset((float, int))
_PLAIN = frozenset((float, int, bool, type(None)))  # bool, None: no value
_consume = deque(maxlen=0).extend  # runs an iterator to its end at C speed
_STEP_TIME = frozenset(STEP_KEYS + TIME_KEYS)

# A piece of a column: (rows, values): the rows (ascending, or None: every row) where a name has a value,
# and its values there.
_Piece = tuple  # tuple[list[int] | None, list]


def _row_values(row: dict, skip: frozenset) -> dict[str, float]:
    """The Record values of one parsed line of a column-parsed chunk (its step and time keys in ``skip``)."""
    values = {k: v if type(v) is float else _to_float(v) for k, v in row.items()
              if type(v) in _NUMERIC and k not in skip}
    if len(values) + len(skip.intersection(row)) != len(row):  # strings, nulls, booleans, objects
        values = _values({k: v for k, v in row.items() if k not in skip})
    return values


def _numbers(rows: list[int] | None, column: Any, types: set) -> _Piece:
    """The values of a column of JSON scalars: numbers as floats (huge integers: +/-inf), "nan"/"inf" strings
    as non-finite floats; nulls, booleans, lists and other strings are no value (their rows leave the piece)."""
    if types <= _FLOAT:
        return rows, column if type(column) is list else list(column)
    if types <= _FLOAT_INT:
        try:
            return rows, list(map(float, column))
        except OverflowError:
            return rows, list(map(_to_float, column))
    if types <= _PLAIN:  # numbers among nulls and booleans: drop those, then as above
        keep = list(map(_FLOAT_INT.__contains__, map(type, column)))
        return _numbers(list(compress(range(len(keep)) if rows is None else rows, keep)),
                        list(compress(column, keep)), types & _FLOAT_INT)
    converted = list(map(_to_float, column))
    keep = list(map(is_not, converted, repeat(None)))
    return list(compress(range(len(keep)) if rows is None else rows, keep)), list(compress(converted, keep))


def _merge(pieces: list[_Piece], n: int) -> tuple[list, int] | None:
    """The pieces of one name as one column over ``n`` rows (``_ABSENT`` where none has a value), and how many
    rows have one; None when two pieces share a row (a name twice in one line: the careful way decides)."""
    if len(pieces) == 1 and pieces[0][0] is None:
        return pieces[0][1], n
    column: list = [_ABSENT] * n
    count = 0
    for rows, values in pieces:
        _consume(map(column.__setitem__, range(n) if rows is None else rows, values))
        count += len(values)
    if n - column.count(_ABSENT) != count:
        return None
    return column, count


def _collect(rows: Any, where: list[int] | None, prefix: str, pieces: dict[str, list[_Piece]], depth: int) -> bool:
    """Gather the columns of ``rows`` (parsed objects) into ``pieces`` (name -> pieces); False: read line by line.

    Rows are grouped by their number of keys; a group whose rows all have the
    first row's keys (``itemgetter`` raises otherwise) is split into columns
    at C speed, and nested objects are gathered the same way under "name/".
    ``where``: the line of each row (None: row i is line i).
    """
    if depth > _MAX_DEPTH:
        return False
    sizes = list(map(len, rows))
    distinct = set(sizes)
    for size in distinct:
        if len(distinct) == 1:
            group, at = rows, where
        else:
            same = list(map(eq, sizes, repeat(size)))
            group = list(compress(rows, same))
            at = list(compress(range(len(same)) if where is None else where, same))
        if size == 0:
            continue
        keys = tuple(group[0])
        try:
            if size == 1:
                columns: Any = [list(map(itemgetter(keys[0]), group))]
            else:
                columns = list(zip(*map(itemgetter(*keys), group)))
        except KeyError:  # same size, other keys: one column per key, with the rows that have it
            return _collect_mixed(group, at, prefix, pieces, depth)
        for key, column in zip(keys, columns):
            if not _column(prefix + key, at, column, pieces, depth):
                return False
    return True


def _collect_mixed(rows: list, where: list[int] | None, prefix: str, pieces: dict[str, list[_Piece]],
                   depth: int) -> bool:
    get = dict.get
    for key in set().union(*rows):
        column = list(map(get, rows, repeat(key), repeat(_ABSENT)))
        has = list(map(is_not, column, repeat(_ABSENT)))
        at = list(compress(range(len(has)) if where is None else where, has))
        if not _column(prefix + key, at, list(compress(column, has)), pieces, depth):
            return False
    return True


def _column(name: str, where: list[int] | None, column: Any, pieces: dict[str, list[_Piece]], depth: int) -> bool:
    types = set(map(type, column))
    if not depth and name in _STEP_TIME:  # kept raw until the chunk's step and time keys are known
        if dict in types:
            return False
        pieces.setdefault(name, []).append((where, column, types))
        return True
    if dict in types:
        if types != {dict}:
            return False  # objects and scalars under one name: the careful way
        return _collect(column, where, name + "/", pieces, depth + 1)
    piece = _numbers(where, column, types)
    if piece[1]:
        pieces.setdefault(name, []).append(piece)
    return True


def _block_columns(lines: list[str]) -> tuple[tuple, list, list, dict[str, _Piece]] | None:
    """((step key, time key), steps, times, columns) of some lines; None: read them line by line.

    The parsed objects live only while their block is turned into columns
    (freed while still in the CPU cache); a Record asked for later parses
    its line again.
    """
    n = len(lines)
    try:
        parsed = list(map(_SCAN, lines, repeat(0)))
    except (ValueError, RecursionError):  # an invalid line
        return None
    if len(parsed) != n or list(map(_SECOND, parsed)) != list(map(len, lines)):
        return None  # a blank line or a leading blank stopped the map (StopIteration); something after an object
    rows = list(map(_FIRST, parsed))
    del parsed
    if set(map(type, rows)) != {dict}:
        return None
    pieces: dict[str, list] = {}
    if not _collect(rows, None, "", pieces, 0):
        return None
    step_key = next((k for k in STEP_KEYS if k in pieces), None)
    time_key = next((k for k in TIME_KEYS if k in pieces), None)
    steps: list = [None] * n
    if step_key is not None:  # an integer on every line, else the careful way (other keys may stand in)
        merged = _merge([p[:2] for p in pieces.pop(step_key)], n)
        if merged is None or merged[1] != n:
            return None
        steps = merged[0]
        if set(map(type, steps)) != {int}:
            return None
    times: list = [None] * n
    if time_key is not None:
        merged = _merge([p[:2] for p in pieces.pop(time_key)], n)
        if merged is None:
            return None
        times = merged[0]
        if merged[1] != n or set(map(type, times)) != {float} or not all(map(math.isfinite, times)):
            times = [None if v is _ABSENT else _to_time(v) for v in times]
            if None in times and any(k in pieces for k in TIME_KEYS[TIME_KEYS.index(time_key) + 1:]):
                return None  # a later time key stands in on some lines
    for key in _STEP_TIME.intersection(pieces):  # the other step and time keys are values
        found = [_numbers(where, column, types) for where, column, types in pieces[key]]
        pieces[key] = [piece for piece in found if piece[1]]
        if not pieces[key]:
            del pieces[key]
    columns: dict[str, _Piece] = {}
    for name, parts in pieces.items():
        if len(parts) == 1:
            columns[name] = parts[0]
            continue
        merged = _merge(parts, n)
        if merged is None:
            return None
        column = merged[0]
        has = list(map(is_not, column, repeat(_ABSENT)))
        columns[name] = (list(compress(range(n), has)), list(compress(column, has)))
    return (step_key, time_key), steps, times, columns


class JsonlChunk:
    """The records of one chunk of a JSONL log; parsed column-wise, they stay columns until asked for.

    A sequence of Records (``len``, iteration, indexing and slicing build
    only the Records asked for), and ``to_columns()`` for ``RunSeries.add``.
    """

    __slots__ = ("src", "first_line", "steps", "times", "lines", "skip", "values", "_records")

    def __init__(self, src: str, first_line: int, steps: list, times: list, lines: list[str], skip: frozenset,
                 values: dict[str, _Piece]) -> None:
        self.src, self.first_line = src, first_line  # line number of row 0
        self.steps, self.times = steps, times
        self.lines = lines  # the text of each line (parsed again for the few Records asked for)
        self.skip = skip  # the step and time keys (not values)
        self.values = values  # name -> (rows or None: every row, floats)
        self._records: list[Record] | None = None

    @classmethod
    def of_records(cls, records: list[Record]) -> JsonlChunk:
        """A chunk that was parsed line by line: it holds its Records."""
        chunk = cls("", 0, [], [], [], frozenset(), {})
        chunk._records = records
        return chunk

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self.steps)

    def _values(self, i: int) -> dict[str, float]:
        return _row_values(_SCAN(self.lines[i], 0)[0], self.skip)

    def _record(self, i: int) -> Record:
        return Record(self.steps[i], self.times[i], self._values(i), f"{self.src}:{self.first_line + i}")

    def records(self) -> list[Record]:
        if self._records is not None:
            return list(self._records)
        return [self._record(i) for i in range(len(self.steps))]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __getitem__(self, index: int | slice) -> Any:
        if self._records is not None:
            return self._records[index]
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(len(self.steps)))]
        return self._record(range(len(self.steps))[index])

    def to_columns(self) -> Columns | None:
        """The chunk as ``Columns`` (None when it holds Records: it was parsed line by line)."""
        if self._records is not None:
            return None
        prefix, first = self.src + ":", self.first_line
        return Columns(self.steps, self.times, self.values, 0, self._values, lambda i: f"{prefix}{first + i}")


def _columns_block(text: str, lineno: int, src: str) -> JsonlChunk | None:
    """Parse the whole lines of ``text`` column-wise, or None when the chunk needs the careful way.

    The same records as ``_parse_jsonl_block`` when it returns a chunk: every
    line is one JSON object with nothing around it, the step is the first of
    STEP_KEYS present and an integer on every line, the time the first of
    TIME_KEYS present (missing on a line only when no later time key could
    stand in), and no name comes twice in one line (a nested "a": {"b"} and
    an "a/b"). Per line only the C scanner runs; the rest is per column.
    """
    if "\r" in text:
        return None
    enabled = gc.isenabled()
    gc.disable()  # thousands of parsed objects and tuples at a time: no collector passes over them meanwhile
    try:
        return _columns(text, lineno, src)
    finally:
        if enabled:
            gc.enable()


def _columns(text: str, lineno: int, src: str) -> JsonlChunk | None:
    lines = text.split("\n")
    lines.pop()  # the block ends with a newline
    n = len(lines)
    steps: list = []
    times: list = []
    parts: dict[str, list[tuple[int, int, list[int] | None, list]]] = {}  # name -> (start, size, rows, values)
    keys: tuple | None = None
    for start in range(0, n, _BLOCK):
        block = _block_columns(lines[start:start + _BLOCK])
        if block is None:
            return None
        if keys is None:
            keys = block[0]
        elif block[0] != keys:  # the step or time key changes within the chunk: the careful way
            return None
        _, block_steps, block_times, columns = block
        size = len(block_steps)
        for name, (where, values) in columns.items():
            parts.setdefault(name, []).append((start, size, where, values))
        steps += block_steps
        times += block_times
    if keys is None:
        return None
    blocks = -(-n // _BLOCK)
    shared: dict[tuple, list[int] | None] = {}  # names on the same rows of every block share one list of rows
    values: dict[str, _Piece] = {}
    for name, found in parts.items():
        signature = tuple((start, id(where)) for start, _, where, _ in found)
        if signature not in shared:
            if len(found) == blocks and all(where is None for _, _, where, _ in found):
                shared[signature] = None
            else:
                where_all: list[int] = []
                for start, size, where, _ in found:
                    where_all += range(start, start + size) if where is None else \
                        (map(add, where, repeat(start)) if start else where)
                shared[signature] = where_all
        column = found[0][3]
        if len(found) > 1:
            column = []
            for _, _, _, block_values in found:
                column += block_values
        values[name] = (shared[signature], column)
    return JsonlChunk(src, lineno + 1, steps, times, lines, frozenset(k for k in keys if k is not None), values)


def iter_jsonl(path: str | os.PathLike, state: dict | None = None, *,
               chunk_size: int = CHUNK_SIZE) -> Iterator[list[Record]]:
    """Yield the new Records of a JSONL log, one list per chunk read; ``state`` is updated in place.

    One JSON object per line. Steps come from the first of STEP_KEYS, times
    (seconds; ISO strings accepted) from the first of TIME_KEYS; those keys
    leave the values. Values: numbers as floats, NaN/Infinity tokens and the
    strings "nan"/"inf" kept as non-finite floats, nested objects flattened
    with "/", nulls, booleans, lists and other strings dropped. Blank lines
    are skipped; invalid lines are skipped and counted (``bad_lines``,
    ``first_bad_line``).
    """
    yield from _iter_jsonl(path, state, chunk_size, _records_block)


def iter_jsonl_chunks(path: str | os.PathLike, state: dict | None = None, *,
                      chunk_size: int = CHUNK_SIZE) -> Iterator[JsonlChunk]:
    """``iter_jsonl`` as ``JsonlChunk`` objects: the same records and state, kept as columns.

    A chunk is a sequence of the Records ``iter_jsonl`` yields for the same
    lines (built when asked for), and ``RunSeries.add(chunk)`` ingests its
    columns directly. Chunks of plain lines (one object per line, an integer
    step, a numeric time) are parsed column-wise; any other chunk (blank or
    invalid lines, string steps, ISO times ...) is parsed line by line, as
    ``iter_jsonl`` does, and its chunk holds those Records.
    """
    yield from _iter_jsonl(path, state, chunk_size, _chunk_block)


def _records_block(text: str, lineno: int, src: str, state: dict) -> tuple[int, list[Record]]:
    records: list[Record] = []
    return _parse_jsonl_block(text, lineno, src, state, records), records


def _chunk_block(text: str, lineno: int, src: str, state: dict) -> tuple[int, JsonlChunk]:
    chunk = _columns_block(text, lineno, src)
    if chunk is not None:
        return len(chunk), chunk
    lines, records = _records_block(text, lineno, src, state)
    return lines, JsonlChunk.of_records(records)


def _iter_jsonl(path: str | os.PathLike, state: dict | None, chunk_size: int,
                parse: Callable[[str, int, str, dict], tuple[int, Any]]) -> Iterator[Any]:
    state = _init_state({} if state is None else state, path, "jsonl")
    f = _open_checked(path, state)
    if f is None:
        return
    src = str(path)
    with f:
        for kind, data, end in _iter_raw(f, state, chunk_size):
            records: Any = ()
            if kind == "lines":
                lines, records = parse(data.decode("utf-8", "replace"), state["lineno"], src, state)
                state["lineno"] += lines
                state["offset"] = end
            elif kind == "bad":
                state["lineno"] += 1
                _bad(state, state["lineno"])
                state["offset"] = end
            else:  # tail: take it when it already is a complete object
                obj = _slow_json(data.decode("utf-8", "replace"))
                if type(obj) is dict:
                    # parsed as the one line "lineno + 1"; the newline that ends it comes later
                    _, records = parse(data.decode("utf-8", "replace").strip() + "\n", state["lineno"], src, state)
                    state["offset"] = end
                    state["partial_bytes"] = 0
                else:
                    state["partial_bytes"] = len(data)
            if kind != "tail":
                state["partial_bytes"] = 0
            state["size"] = max(state["size"], state["offset"])
            if records:
                state["records"] += len(records)
                yield records


def read_jsonl(path: str | os.PathLike, state: dict | None = None) -> tuple[list[Record], dict]:
    """Read the Records added to a JSONL log since ``state`` (None: from the start).

    Returns ``(records, new_state)``; pass ``new_state`` to the next call. The
    whole new part is returned as one list: for a first read of a very large
    log prefer ``iter_jsonl``, which holds one chunk of records at a time.
    """
    new_state = dict(state or {})
    records: list[Record] = []
    with _gc_paused(path, new_state):
        for batch in iter_jsonl(path, new_state):
            records.extend(batch)
    return records, new_state


# ----------------------------------------------------------------------------- plain-text logs

_NUM = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|(?i:nan|inf(?:inity)?))"
# nanoGPT train.py: print(f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, mfu {running_mfu*100:.2f}%")
_NANO_ITER = re.compile(rf"\biter\s+(\d+)\s*:\s*loss\s+({_NUM})(?:\s*,\s*time\s+({_NUM})\s*ms)?"
                        rf"(?:\s*,\s*mfu\s+({_NUM})\s*%)?")
# nanoGPT eval: print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
_NANO_EVAL = re.compile(rf"\bstep\s+(\d+)\s*:\s*train\s+loss\s+({_NUM})(?:\s*,\s*val\s+loss\s+({_NUM}))?")
_KV = re.compile(r"(?<![\w/.\-])([A-Za-z_][\w/.\-]*)=([^\s,;]+)")
_NUM_FULL = re.compile(_NUM)
_HF_RENAME = {"learning_rate": "lr"}


def _num(text: str | None) -> float | None:
    if text is None or not _NUM_FULL.fullmatch(text):
        return None
    return float(text)


def _parse_nanogpt(line: str, state: dict) -> tuple[int | None, float | None, dict] | None:
    match = _NANO_ITER.search(line)
    if match:
        step, loss, ms, mfu = match.groups()
        values: dict[str, float] = {}
        if (v := _num(loss)) is not None:
            values["loss"] = v
        if (v := _num(ms)) is not None:
            values["step_time_s"] = v / 1000.0
        if (v := _num(mfu)) is not None and not v < 0:  # nanoGPT prints -100.00% until mfu is measured
            values["mfu"] = v / 100.0
        return int(step), None, values
    match = _NANO_EVAL.search(line)
    if match:
        step, train, val = match.groups()
        values = {}
        if (v := _num(train)) is not None:
            values["loss"] = v
        if (v := _num(val)) is not None:
            values["val_loss"] = v
        return int(step), None, values
    return None


def _literal(node: ast.AST) -> Any:
    """ast.literal_eval for the dicts the HF Trainer prints, plus its bare nan / inf."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("nan", "inf", "NaN", "Infinity"):
        return math.nan if node.id.lower() == "nan" else math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand)
        if type(operand) in (int, float):
            return -operand if isinstance(node.op, ast.USub) else operand
        raise ValueError("not a number")
    if isinstance(node, ast.Dict):
        return {_literal(k) if k is not None else None: _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    raise ValueError(f"not a literal: {type(node).__name__}")


def _parse_hf_dict(line: str) -> dict | None:
    start = line.find("{'")
    if start < 0:
        start = line.find('{"')
        if start < 0:
            return None
    end = line.rfind("}")
    if end < start or end - start > _MAX_LITERAL:
        return None
    try:
        obj = _literal(ast.parse(line[start:end + 1].strip(), mode="eval").body)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return None
    if type(obj) is not dict or not obj or not all(type(k) is str for k in obj):
        return None
    return obj


def _parse_hf(line: str, state: dict) -> tuple[int | None, float | None, dict] | None:
    obj = _parse_hf_dict(line)
    if obj is None:
        return None
    step, _ = _pop_first(obj, STEP_KEYS, _to_step)
    when, _ = _pop_first(obj, TIME_KEYS, _to_time)
    if step is None:
        # the Trainer prints no step: count the training log lines; eval and the
        # closing summary ("eval_*", "train_runtime"...) belong to the current one
        count = state.get("text_hf_count", 0)
        if not any(k.startswith(("eval_", "test_", "train_")) for k in obj):
            count += 1
            state["text_hf_count"] = count
        step = count
    values = _values({_HF_RENAME.get(k, k): v for k, v in obj.items()})
    return step, when, values


def _parse_kv(line: str, state: dict, strict: bool = False) -> tuple[int | None, float | None, dict] | None:
    pairs = _KV.findall(line)
    if not pairs:
        return None
    fields: dict[str, Any] = {}
    for key, raw in pairs:
        value = _num(raw.rstrip(")]}'\""))
        if value is not None:
            fields[key] = value
    if not fields:
        return None
    if strict and (len(fields) < 2 or not any(k in fields for k in (*STEP_KEYS, "loss"))):
        return None  # "auto" wants a metric line, not a config dump (Namespace(lr=3e-4, ...))
    step, _ = _pop_first(fields, STEP_KEYS, _to_step)
    when, _ = _pop_first(fields, TIME_KEYS, _to_time)
    return step, when, fields


def _regex_parser(pattern: str) -> Callable[[str, dict], tuple[int | None, float | None, dict] | None]:
    compiled = re.compile(pattern)
    if not compiled.groupindex:
        raise ValueError(f"the regex needs named groups, e.g. (?P<step>\\d+) and (?P<loss>\\S+): {pattern!r}")

    def parse(line: str, state: dict) -> tuple[int | None, float | None, dict] | None:
        match = compiled.search(line)
        if match is None:
            return None
        fields = {k: v for k, v in match.groupdict().items() if v is not None}
        step, _ = _pop_first(fields, STEP_KEYS, _to_step)
        when, _ = _pop_first(fields, TIME_KEYS, _to_time)
        values = {}
        for key, raw in fields.items():
            value = _num(raw.strip())
            if value is not None:
                values[key] = value
        return step, when, values

    return parse


def _parse_kv_strict(line: str, state: dict) -> tuple[int | None, float | None, dict] | None:
    return _parse_kv(line, state, strict=True)


_PRESETS = {"nanogpt": _parse_nanogpt, "hf": _parse_hf, "kv": _parse_kv}


def _auto_parser(line: str, state: dict) -> tuple[int | None, float | None, dict] | None:
    """Try the presets in turn until one matches a line; that one is kept for the file."""
    for name, parse in (("nanogpt", _parse_nanogpt), ("hf", _parse_hf), ("kv", _parse_kv_strict)):
        parsed = parse(line, state)
        if parsed is not None:
            state["text_preset"] = name
            return parsed
    return None


def _parse_text_block(text: str, lineno: int, src: str, state: dict, parse, out: list) -> int:
    lines = text.split("\n")
    lines.pop()  # the block ends with a newline
    for line in lines:
        lineno += 1
        pieces = line.split("\r") if "\r" in line else (line,)  # progress bars rewrite lines with \r
        for piece in pieces:
            if not piece or piece.isspace():
                continue
            if "text_preset" in state and parse is _auto_parser:
                parse = _PRESETS[state["text_preset"]]
            parsed = parse(piece, state)
            if parsed is None:
                continue
            step, when, values = parsed
            if values or step is not None:
                out.append(Record(step, when, values, f"{src}:{lineno}"))
    return len(lines)


def iter_text_log(path: str | os.PathLike, preset: str = "auto", regex: str | None = None,
                  state: dict | None = None, *, chunk_size: int = CHUNK_SIZE) -> Iterator[list[Record]]:
    """Yield the new Records of a plain-text log, one list per chunk read; ``state`` is updated in place.

    Presets (``regex`` overrides ``preset``):

    * ``nanogpt``: ``iter 120: loss 2.3456, time 45.67ms, mfu 12.34%`` gives
      loss, step_time_s (ms / 1000) and mfu (% / 100; nanoGPT's -100% before
      it is measured is dropped); ``step 500: train loss 2.1, val loss 2.3``
      gives loss and val_loss.
    * ``hf``: the Trainer's printed dicts ``{'loss': 2.31, 'learning_rate': 5e-05,
      'epoch': 0.12}`` (parsed as literals, never evaluated; bare nan/inf
      accepted); learning_rate is named lr; without a step key the step is the
      count of training log lines so far (eval_* / train_* summary lines take
      the current count).
    * ``kv``: ``step=10 loss=2.3 lr=3e-4``, numeric values only.
    * ``regex``: named groups; ``step`` (or another STEP_KEYS name) is the
      step, ``time`` (or another TIME_KEYS name) the time, other numeric groups
      are values.
    * ``auto`` (default): the first preset that matches a line (nanogpt, hf,
      then kv when the line has a step or loss and two numbers) is kept for the
      file (``state["text_preset"]``).

    Lines that match nothing are skipped (a log is mostly other output). An
    unterminated last line waits for its newline.
    """
    if regex is not None:
        parse = _regex_parser(regex)
    elif preset == "auto":
        parse = _auto_parser
    elif preset in _PRESETS:
        parse = _PRESETS[preset]
    else:
        raise ValueError(f"unknown text preset {preset!r}: one of {', '.join(TEXT_PRESETS)} (or pass regex=)")
    state = _init_state({} if state is None else state, path, "text")
    f = _open_checked(path, state)
    if f is None:
        return
    src = str(path)
    with f:
        for kind, data, end in _iter_raw(f, state, chunk_size):
            records: list[Record] = []
            if kind == "lines":
                state["lineno"] += _parse_text_block(data.decode("utf-8", "replace"), state["lineno"], src, state,
                                                     parse, records)
                state["offset"] = end
                state["partial_bytes"] = 0
            elif kind == "bad":
                state["lineno"] += 1
                _bad(state, state["lineno"])
                state["offset"] = end
                state["partial_bytes"] = 0
            else:  # a text line may still grow ("loss 2.3" -> "loss 2.3456"): wait for its newline
                state["partial_bytes"] = len(data)
            state["size"] = max(state["size"], state["offset"])
            if records:
                state["records"] += len(records)
                yield records


def read_text_log(path: str | os.PathLike, preset: str = "auto", regex: str | None = None,
                  state: dict | None = None) -> tuple[list[Record], dict]:
    """Read the Records added to a plain-text log since ``state``; see ``iter_text_log``."""
    new_state = dict(state or {})
    records: list[Record] = []
    with _gc_paused(path, new_state):
        for batch in iter_text_log(path, preset, regex, new_state):
            records.extend(batch)
    return records, new_state


# ----------------------------------------------------------------------------- TensorBoard

_EVENTS = "events.out.tfevents."


def _event_dirs(logdir: str, max_depth: int = 4) -> list[str]:
    """Directories under ``logdir`` (itself included) that hold event files, sorted."""
    found = []
    base = logdir.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(logdir):
        if any(name.startswith(_EVENTS) for name in files):
            found.append(root)
        if root.count(os.sep) - base >= max_depth:
            dirs[:] = []
        dirs.sort()
    return sorted(found)


def read_tensorboard(logdir: str | os.PathLike, state: dict | None = None) -> tuple[list[Record], dict]:
    """Read the scalars of a TensorBoard log directory (or one event file) as Records merged by step.

    Every scalar is kept (``size_guidance={SCALARS: 0}``: no reservoir
    sampling). When ``logdir`` holds event files itself it is the run; else
    each sub-directory holding event files is a run, and with several runs
    the tags are prefixed with the run's relative path ("eval/loss").
    Incremental: per tag, only steps after the last step returned. The
    accumulators are kept in ``state["_accumulators"]`` (not serializable:
    drop keys starting with "_" to save the state; the next read then loads
    the files again and still returns only the new steps). A step that goes
    back below what was seen (a restart) is reported in ``state["note"]``.

    Needs the optional ``tensorboard`` package (ImportError otherwise).
    """
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as exc:
        raise ImportError(f"reading TensorBoard event files needs the tensorboard package: {_TB_INSTALL} "
                          f"({exc})") from exc
    import bisect

    path = os.fspath(logdir)
    new_state = dict(state or {})
    new_state.update(path=path, format="tensorboard", note=None)
    last_steps: dict[str, int] = dict(new_state.get("last_steps") or {})
    accumulators: dict[str, Any] = dict(new_state.get("_accumulators") or {})
    if os.path.isfile(path):
        runs = [path]
    elif os.path.isdir(path):
        runs = _event_dirs(path)
    else:
        new_state.update(note="missing", last_steps=last_steps, _accumulators=accumulators)
        return [], new_state
    if runs and runs[0] == path:
        runs = [path]  # event files in the logdir itself: that is the run
    guidance = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 1, event_accumulator.IMAGES: 1,
                event_accumulator.AUDIO: 1, event_accumulator.HISTOGRAMS: 1,
                event_accumulator.COMPRESSED_HISTOGRAMS: 1}
    by_step: dict[int, tuple[list[float], dict[str, float], str]] = {}
    notes = []
    for run in runs:
        acc = accumulators.get(run)
        if acc is None:
            acc = accumulators[run] = event_accumulator.EventAccumulator(run, size_guidance=guidance)
        acc.Reload()
        prefix = "" if len(runs) == 1 else os.path.relpath(run, path).replace(os.sep, "/") + "/"
        for tag in acc.Tags()[event_accumulator.SCALARS]:
            name = prefix + tag
            events = acc.Scalars(tag)
            if not events:
                continue
            last = last_steps.get(name)
            if last is not None and events[-1].step < last:
                notes.append(f"restart: {name} back at step {events[-1].step} after {last}")
                last_steps[name] = events[-1].step
                continue
            start = 0 if last is None else bisect.bisect_right(events, last, key=lambda e: e.step)
            for event in events[start:]:
                entry = by_step.get(event.step)
                if entry is None:
                    entry = by_step[event.step] = ([event.wall_time], {}, run)
                else:
                    entry[0].append(event.wall_time)
                entry[1][name] = float(event.value)
            last_steps[name] = max(last if last is not None else events[-1].step, events[-1].step)
    records = [Record(step, max(times), values, f"{run}:step={step}")
               for step, (times, values, run) in sorted(by_step.items())]
    new_state.update(last_steps=last_steps, _accumulators=accumulators, records=new_state.get("records", 0)
                     + len(records), note="; ".join(notes) or None)
    return records, new_state


# ----------------------------------------------------------------------------- format detection

_JSONL_EXT = (".jsonl", ".ndjson", ".json")


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path``: "tensorboard" (a directory with event files, or one), "jsonl" or "text".

    A file is sniffed: JSONL when at least half of its first (up to 20) non-blank
    lines are JSON objects, else text. An empty or missing file goes by its
    extension (.log / .txt / .out: text), else JSONL, the default format.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if _event_dirs(path):
            return "tensorboard"
        raise ValueError(f"{path} is a directory without TensorBoard event files ({_EVENTS}*)")
    if os.path.basename(path).startswith(_EVENTS):
        return "tensorboard"
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        head = b""
    lines = [ln.strip() for ln in head.decode("utf-8", "replace").split("\n")[:-1] if ln.strip()][:20]
    if not lines and head.strip():
        lines = [head.decode("utf-8", "replace").strip()]  # one unterminated line
    if lines:
        objects = sum(1 for ln in lines if ln.startswith("{") and type(_slow_json(ln)) is dict)
        return "jsonl" if objects * 2 >= len(lines) else "text"
    return "text" if path.lower().endswith((".log", ".txt", ".out")) else "jsonl"


def read_source(path: str | os.PathLike, state: dict | None = None, fmt: str | None = None, *,
                preset: str = "auto", regex: str | None = None) -> tuple[list[Record], dict]:
    """Read any source: ``fmt`` ("jsonl" | "text" | "tensorboard"), else the state's, else detect_format."""
    fmt = fmt or (state or {}).get("format") or detect_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, state)
    if fmt == "text":
        return read_text_log(path, preset, regex, state)
    if fmt == "tensorboard":
        return read_tensorboard(path, state)
    raise ValueError(f"unknown format {fmt!r}: jsonl, text or tensorboard")
