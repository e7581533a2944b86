"""The rounds' history: ``results.jsonl`` (the record), ``results.tsv`` and ``experiences.md`` (views of it).

``results.jsonl`` is the source of truth: one JSON row per finished round,
rewritten atomically as a whole after each round, so a crash leaves either
the old history or the new one. ``results.tsv`` (spreadsheets, shell tools)
and ``experiences.md`` (what the researcher and people read) are rendered
from it every time, never edited in place: a researcher that scribbles on
them during a round is overwritten by the next render.

``experiences.md`` follows SPML's layout: a header with best, rounds and
status, then the table Round | Compliance | Result | Verdict | Strategy |
Insight | Note.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError
from ..fsutil import atomic_write
from .state import LoopPaths, LoopState

TSV_COLUMNS = ("round", "kind", "started", "base", "compliance", "train", "eval", "metric", "best", "verdict",
               "commit", "strategy", "insight", "note", "seconds", "overhead_s")
_CELL_LIMIT = 160


@dataclass
class RoundRow:
    """One finished round, as recorded."""

    round: int
    base: str
    compliance: str  # pass, violation, skipped
    result: str  # the metric, or what went wrong
    verdict: str  # committed <sha>, rolled back, accepted <sha>, ...
    action: str  # commit, rollback, accept
    metric: float | None = None
    improved: bool = False
    strategy: str = ""
    insight: str = ""
    note: str = ""
    commit: str | None = None
    patch: str | None = None
    best: float | None = None  # best metric after this round
    kind: str = "round"
    params: dict[str, Any] = field(default_factory=dict)  # values a sampling researcher chose
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0
    seconds: float = 0.0
    overhead_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RoundRow":
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})

    def step_status(self, step: str) -> str:
        return str(self.steps.get(step, {}).get("status", "skip"))


def load_rows(paths: LoopPaths) -> list[RoundRow]:
    try:
        text = paths.results_jsonl.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(f"cannot read the round history ({exc.strerror})", paths.results_jsonl) from None
    rows: list[RoundRow] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(RoundRow.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise InputError(f"round history line is not a valid row ({exc}); the file is written atomically, so it "
                             "was edited by hand: fix or remove the line", paths.results_jsonl, lineno) from None
    return rows


def fmt_metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _cell(text: Any) -> str:
    value = " ".join(str(text or "").split())
    if len(value) > _CELL_LIMIT:
        value = value[: _CELL_LIMIT - 1] + "…"
    return value.replace("|", "\\|")


def status_line(state: LoopState) -> str:
    if state.status == "running":
        current = state.current
        if current is not None and current.step != "done":
            what = "baseline run" if current.kind == "baseline" else f"round {current.n}"
            return f"running: {what} at step {current.step}"
        return "running"
    return f"{state.status}: {state.stop_reason}" if state.stop_reason else state.status


def header_lines(state: LoopState, rows: list[RoundRow]) -> list[str]:
    counts = {"commit": 0, "accept": 0, "rollback": 0}
    failed = 0
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
        if row.compliance == "violation" or row.step_status("train") in ("fail", "error") \
                or row.step_status("eval") in ("fail", "error") or row.step_status("researcher") in ("fail", "error"):
            failed += 1
    best = fmt_metric(state.best)
    where = f" (round {state.best_round}, commit {state.best_commit[:12]})" if state.best_round and state.best_commit \
        else " (the baseline)"
    target = fmt_metric(state.target) if state.target is not None else "none"
    lines = [
        f"- best: {best}{where}; baseline {fmt_metric(state.baseline)}; target {target}; "
        f"{state.direction} {state.metric}",
        f"- rounds: {state.rounds_done} of {state.max_rounds} ({counts['commit']} committed, "
        f"{counts['accept']} accepted, {counts['rollback']} rolled back; {failed} failed a step)",
        f"- status: {status_line(state)}",
        f"- branch: {state.branch}",
    ]
    if state.noise:
        runs = ", ".join(fmt_metric(v) for v in state.noise.get("runs", []))
        lines.append(f"- noise floor: {fmt_metric(state.noise.get('floor'))} (baseline run twice: {runs}); an "
                     f"improvement must beat the best by more than {fmt_metric(state.effective_min_delta)}")
    elif state.min_delta:
        lines.append(f"- min_delta: an improvement must beat the best by more than {fmt_metric(state.min_delta)}")
    if state.no_improvement >= 5:
        lines.append(f"- plateau: {state.no_improvement} rounds in a row without improvement; change strategy")
    return lines


TABLE_HEAD = ("| Round | Compliance | Result | Verdict | Strategy | Insight | Note |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")


def table_lines(rows: list[RoundRow]) -> list[str]:
    return [TABLE_HEAD] + [
        f"| {row.round} | {_cell(row.compliance)} | {_cell(row.result)} | {_cell(row.verdict)} | "
        f"{_cell(row.strategy)} | {_cell(row.insight)} | {_cell(row.note)} |"
        for row in rows
    ]


def render_experiences(state: LoopState, rows: list[RoundRow], question: str) -> str:
    lines = [f"# Experiences: {question}", "", *header_lines(state, rows), "", *table_lines(rows), ""]
    return "\n".join(lines)


def summary_for_prompt(state: LoopState, rows: list[RoundRow], last: int) -> str:
    """The experiences summary and the last ``last`` rows: what the researcher reads."""
    shown = rows[-last:] if last > 0 else []
    lines = [*header_lines(state, rows), ""]
    if shown:
        lines += [f"Last {len(shown)} of {len(rows)} rounds:", "", *table_lines(shown)]
    else:
        lines.append("No rounds yet.")
    return "\n".join(lines) + "\n"


def _tsv(value: Any) -> str:
    return " ".join(str("" if value is None else value).split())


def write_history(paths: LoopPaths, state: LoopState, rows: list[RoundRow], question: str) -> None:
    """Rewrite results.jsonl, results.tsv and experiences.md from ``rows`` (each atomically)."""
    atomic_write(paths.results_jsonl, "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rows))
    tsv = ["\t".join(TSV_COLUMNS)]
    for r in rows:
        tsv.append("\t".join(_tsv(v) for v in (
            r.round, r.kind, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.started_at)), r.base[:12],
            r.compliance, r.step_status("train"), r.step_status("eval"), "" if r.metric is None else repr(r.metric),
            "" if r.best is None else repr(r.best), r.verdict, r.commit or "", r.strategy, r.insight, r.note,
            f"{r.seconds:.3f}", f"{r.overhead_s:.3f}")))
    atomic_write(paths.results_tsv, "\n".join(tsv) + "\n")
    atomic_write(paths.experiences, render_experiences(state, rows, question))
