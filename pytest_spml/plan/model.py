"""An experiment plan (markdown) parsed into the model the plan gate checks.

What the parser recognises, and what it deliberately does not:

* A *subtask heading* is an ATX heading of level 2-4 whose text starts with
  ``Subtask``, ``Task`` or ``Step`` (any case), a number, an optional
  separator (``:``, ``.``, ``-``, en or em dash) and a name:
  ``## Subtask 1: Dataset``, ``### Task 2 - Model``, ``#### Step 3 — Loss``.
* *Markers* count only on heading lines, at any position, and never inside
  inline code: ``[INTEGRATION]``, ``[x]`` (done), ``[ ] REVISED``,
  ``[ ] NEW``. Plans quote markers in prose and code all the time
  ("mark exactly one subtask `[INTEGRATION]`"); counting those would make the
  gate fail plans that are right.
* Lines inside fenced code blocks (``` or ~~~) are never headings, markers or
  directives (``Depends on:``, ``Evaluation: none``), but their words still
  count as plan text: a config snippet with ``eval_interval: 500`` states a
  cadence.
* The optional structured ``## Evaluation`` section holds ``- Key: value``
  bullets; indented lines below a bullet continue its value.

Line numbers are 1-based and count ``\\n``-separated lines, as editors do.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from ..errors import InputError

INTEGRATION, DONE, REVISED, NEW = "integration", "done", "revised", "new"


class Line(NamedTuple):
    number: int
    text: str


@dataclass(frozen=True)
class Subtask:
    kind: str  # the heading's word as written: "Subtask", "Task" or "Step"
    number: str  # a string, so "2a" and "3.1" survive; compare numbers as strings
    name: str
    line: int  # the heading line
    heading: str  # the heading line as written
    level: int
    markers: frozenset[str]
    body: tuple[Line, ...]  # lines after the heading up to the next heading of the same or a higher level
    depends_on: tuple[str, ...] | None  # None: the subtask states no dependencies
    depends_line: int | None = None

    @property
    def is_integration(self) -> bool:
        return INTEGRATION in self.markers

    @property
    def title(self) -> str:
        """``Subtask 3 (Evaluator core)``: how messages name a subtask, in the plan's own words."""
        label = f"{self.kind} {self.number}"
        return f"{label} ({self.name})" if self.name else label

    @property
    def revision(self) -> str | None:
        """``done``, ``revised``, ``new`` or None for a plain (fresh) subtask."""
        for marker in (REVISED, NEW, DONE):
            if marker in self.markers:
                return marker
        return None

    def lines(self) -> Iterator[Line]:
        """The heading followed by the body."""
        yield Line(self.line, self.heading)
        yield from self.body


@dataclass(frozen=True)
class EvaluationItem:
    key: str  # normalised: lower case, single spaces ("entry modes")
    value: str  # the bullet's value plus its continuation lines, joined by spaces
    line: int
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class EvaluationSection:
    line: int  # the ``## Evaluation`` heading
    level: int
    body: tuple[Line, ...]
    items: dict[str, EvaluationItem] = field(default_factory=dict)

    def item(self, *keys: str) -> EvaluationItem | None:
        for key in keys:
            if key in self.items:
                return self.items[key]
        return None


@dataclass(frozen=True)
class Plan:
    path: Path
    title: str | None
    lines: tuple[str, ...]
    subtasks: tuple[Subtask, ...]
    evaluation: EvaluationSection | None = None
    evaluation_opt_out: Line | None = None  # an ``Evaluation: none`` line
    stray_integration: tuple[Line, ...] = ()  # non-subtask headings that carry [INTEGRATION]
    fenced: frozenset[int] = frozenset()  # line numbers inside fenced code blocks

    @property
    def integrations(self) -> list[Subtask]:
        return [s for s in self.subtasks if s.is_integration]

    def subtask(self, number: str) -> Subtask | None:
        for subtask in self.subtasks:
            if subtask.number.lower() == number.lower():
                return subtask
        return None

    def numbered(self) -> Iterator[Line]:
        for number, text in enumerate(self.lines, start=1):
            yield Line(number, text)


# --- reading -----------------------------------------------------------------

def read_plan_text(path: Path, shown: str | Path | None = None) -> str:
    """The plan's text; any problem is an InputError naming the file (as ``shown``)."""
    shown = shown if shown is not None else path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("plan file not found; pass an existing plan (.md) file", shown) from None
    except IsADirectoryError:
        raise InputError("is a directory; pass the plan's .md file", shown) from None
    except OSError as exc:
        raise InputError(f"cannot read plan ({exc.strerror})", shown) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"plan is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8", shown,
                         line) from None


# --- parsing -----------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SUBTASK = re.compile(
    r"^(?P<kind>subtask|task|step)\s+(?P<number>\d+(?:\.\d+)*[a-z]?)\b\s*(?:[:.)\-\u2013\u2014]\s*)?(?P<name>.*)$", re.I
)
_MARKERS = (
    (INTEGRATION, re.compile(r"\[\s*integration\s*\]", re.I)),
    (REVISED, re.compile(r"\[ \]\s*revised\b", re.I)),
    (NEW, re.compile(r"\[ \]\s*new\b", re.I)),
    (DONE, re.compile(r"\[[xX]\]")),
)
_INLINE_CODE = re.compile(r"(`+[^`]*`+)")
_EMPHASIS = re.compile(r"\*\*|__")
_EVALUATION_HEADING = re.compile(
    r"^(?:\d+\.\s*)?evaluation(?:\s+(?:plan|design|spec|specification|requirements|contract))?\s*:?$", re.I
)
_DEPENDS = re.compile(r"^\s*(?:[-*+]\s+)?depends\s+on\s*:?\s*(?P<rest>.*)$", re.I)
_NUMBER = re.compile(r"\b\d+(?:\.\d+)*[a-z]?\b", re.I)
_PARENS = re.compile(r"\([^)]*\)")
_OPT_OUT = re.compile(r"^\s*(?:[-*+]\s+)?evaluation\s*:\s*(?:none|n/a|not applicable)\b", re.I)
_OPT_OUT_BODY = re.compile(r"^\s*(?:none|n/a|not applicable)\b", re.I)
_BULLET = re.compile(r"^(?P<indent>\s*)[-*+]\s+(?P<key>[A-Za-z][^:]{0,40}?)\s*:\s*(?P<value>.*)$")
_CONTINUATION_INDENT = 2


class _Heading(NamedTuple):
    line: int
    level: int
    raw: str
    text: str  # markers removed, emphasis stripped
    markers: frozenset[str]


def parse_plan(path: Path, text: str | None = None) -> Plan:
    """Parse the plan at ``path`` (or ``text``, when given) into a :class:`Plan`."""
    path = Path(path)
    if text is None:
        text = read_plan_text(path)
    lines = _split_lines(text)
    fenced = _fenced_lines(lines)
    headings = list(_headings(lines, fenced))

    subtasks: list[Subtask] = []
    stray: list[Line] = []
    evaluation: EvaluationSection | None = None
    for index, heading in enumerate(headings):
        match = _is_subtask_heading(heading)
        end = _section_end(headings, index, len(lines))
        body = tuple(Line(n, lines[n - 1]) for n in range(heading.line + 1, end))
        if match:
            subtasks.append(_subtask(heading, match, body, fenced))
            continue
        if INTEGRATION in heading.markers:
            stray.append(Line(heading.line, heading.raw))
        if evaluation is None and 2 <= heading.level <= 4 and _EVALUATION_HEADING.match(heading.text):
            evaluation = _evaluation_section(heading, body, fenced)

    subtasks = _resolve_depends_all(subtasks)
    title = next((h.text for h in headings if h.level == 1), None)
    return Plan(
        path=path,
        title=title,
        lines=tuple(lines),
        subtasks=tuple(subtasks),
        evaluation=evaluation,
        evaluation_opt_out=_opt_out(lines, fenced, evaluation),
        stray_integration=tuple(stray),
        fenced=frozenset(fenced),
    )


def _split_lines(text: str) -> list[str]:
    # Not str.splitlines(): it also splits on form feeds and U+2028, which
    # would shift our line numbers away from the ones editors show.
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _fenced_lines(lines: list[str]) -> set[int]:
    """Line numbers inside fenced code blocks, fences included (CommonMark rules, simplified)."""
    fenced: set[int] = set()
    opener: str | None = None
    for number, text in enumerate(lines, start=1):
        match = _FENCE.match(text)
        if opener is None:
            if match:
                opener = match.group(1)
                fenced.add(number)
            continue
        fenced.add(number)
        # A fence closes only with the same character, at least as long, and nothing after it.
        if match and match.group(1)[0] == opener[0] and len(match.group(1)) >= len(opener) \
                and not text.strip().lstrip(opener[0]):
            opener = None
    return fenced


def _headings(lines: list[str], fenced: set[int]) -> Iterator[_Heading]:
    for number, raw in enumerate(lines, start=1):
        if number in fenced:
            continue
        match = _HEADING.match(raw)
        if not match:
            continue
        text, markers = take_markers(match.group(2) or "")
        text = _EMPHASIS.sub("", text).strip()
        yield _Heading(number, len(match.group(1)), raw, text, markers)


def take_markers(text: str) -> tuple[str, frozenset[str]]:
    """Remove the markers from heading text; markers inside inline code are text, not markers."""
    found: set[str] = set()
    parts = _INLINE_CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        for name, pattern in _MARKERS:
            if pattern.search(parts[i]):
                found.add(name)
                parts[i] = pattern.sub(" ", parts[i])
        # A bare "[ ]" (planned, not started) is a checkbox, not part of the name.
        parts[i] = parts[i].replace("[ ]", " ")
    cleaned = re.sub(r"\s+", " ", "".join(parts)).strip()
    return cleaned, frozenset(found)


def _section_end(headings: list[_Heading], index: int, n_lines: int) -> int:
    """The first line after the section that starts at ``headings[index]`` (exclusive end).

    A section ends at the next heading of the same or a higher level, or at the
    next subtask heading whatever its level (plans nest them inconsistently).
    """
    level = headings[index].level
    for later in headings[index + 1:]:
        if later.level <= level or _is_subtask_heading(later):
            return later.line
    return n_lines + 1


def _is_subtask_heading(heading: _Heading) -> re.Match[str] | None:
    return _SUBTASK.match(heading.text) if 2 <= heading.level <= 4 else None


def _subtask(heading: _Heading, match: re.Match[str], body: tuple[Line, ...], fenced: set[int]) -> Subtask:
    depends: list[str] | None = None
    depends_line: int | None = None
    for line in body:
        if line.number in fenced:
            continue
        found = _DEPENDS.match(_EMPHASIS.sub("", line.text))
        if not found:
            continue
        rest = _PARENS.sub(" ", found.group("rest"))  # "Subtask 2 (128-dim)": the 128 is not a subtask
        numbers = _NUMBER.findall(rest)
        if not numbers and re.search(r"\ball\b", rest, re.I):
            numbers = ["*"]  # resolved once every subtask is known
        depends = (depends or []) + [n for n in numbers if n not in (depends or [])]
        depends_line = depends_line or line.number
    return Subtask(
        kind=match.group("kind").capitalize(),
        number=match.group("number"),
        name=match.group("name").strip(),
        line=heading.line,
        heading=heading.raw,
        level=heading.level,
        markers=heading.markers,
        body=body,
        depends_on=tuple(depends) if depends is not None else None,
        depends_line=depends_line,
    )


def _resolve_depends_all(subtasks: list[Subtask]) -> list[Subtask]:
    """``Depends on: all`` means every other subtask."""
    resolved = []
    for subtask in subtasks:
        if subtask.depends_on and "*" in subtask.depends_on:
            others = tuple(s.number for s in subtasks if s is not subtask)
            subtask = dataclasses.replace(subtask, depends_on=others)
        resolved.append(subtask)
    return resolved


def _evaluation_section(heading: _Heading, body: tuple[Line, ...], fenced: set[int]) -> EvaluationSection:
    items: dict[str, EvaluationItem] = {}
    current: list[Line] = []
    key = ""

    def flush() -> None:
        if current and key and key not in items:  # the first bullet for a key wins
            first = _BULLET.match(_EMPHASIS.sub("", current[0].text))
            parts = [first.group("value") if first else ""]
            parts += [_EMPHASIS.sub("", ln.text).strip().lstrip("-*+ \t") for ln in current[1:]]
            value = " ".join(p.strip() for p in parts if p.strip())
            items[key] = EvaluationItem(key, value, current[0].number, tuple(current))

    for line in body:
        if line.number in fenced:
            continue
        match = _BULLET.match(_EMPHASIS.sub("", line.text))
        if match and len(match.group("indent").expandtabs(4)) < _CONTINUATION_INDENT:
            flush()
            key = re.sub(r"\s+", " ", match.group("key").strip().lower())
            current = [line]
        elif current and line.text.strip() and len(line.text) - len(line.text.lstrip()) >= _CONTINUATION_INDENT:
            current.append(line)
        elif current and not line.text.strip():
            continue
        else:
            flush()
            current, key = [], ""
    flush()
    return EvaluationSection(line=heading.line, level=heading.level, body=body, items=items)


def _opt_out(lines: list[str], fenced: set[int], evaluation: EvaluationSection | None) -> Line | None:
    for number, text in enumerate(lines, start=1):
        if number not in fenced and _OPT_OUT.match(_EMPHASIS.sub("", text)):
            return Line(number, text)
    if evaluation is not None:
        # "## Evaluation" followed by "None: this plan does not train."
        first = next((ln for ln in evaluation.body if ln.text.strip() and ln.number not in fenced), None)
        if first is not None and _OPT_OUT_BODY.match(_EMPHASIS.sub("", first.text)):
            return first
    return None
