"""Rounds as checks and documents: shared by ``spml-loop run``, ``status`` and ``report``.

Each round step becomes one :class:`CheckResult` with an id such as
``round-3/compliance``, so ``--junitxml`` writes one test case per round
step and CI dashboards show rounds as tests.
"""

from __future__ import annotations

from typing import Any

from ..report import CheckResult, Report, Status
from .experiences import RoundRow, fmt_metric, header_lines, status_line, table_lines
from .state import LoopState

ROUND_STEPS = ("researcher", "compliance", "train", "restore", "eval", "verdict")
_STATUS = {"pass": Status.PASS, "fail": Status.FAIL, "error": Status.ERROR, "skip": Status.SKIP}
_STEP_NAMES = {"researcher": "researcher edits", "compliance": "Fixed-file compliance", "train": "training",
               "restore": "Fixed files restored and re-checked", "eval": "fixed evaluation", "verdict": "verdict"}


def round_results(rows: list[RoundRow]) -> list[CheckResult]:
    results = []
    for row in rows:
        if row.kind != "round":
            continue
        for step in ROUND_STEPS:
            info = row.steps.get(step)
            if info is None:
                continue
            status = _STATUS.get(str(info.get("status")), Status.SKIP)
            evidence = {k: v for k, v in info.items() if k not in ("status", "message")}
            results.append(CheckResult(f"round-{row.round}/{step}", status, str(info.get("message", "")),
                                       name=f"round {row.round}: {_STEP_NAMES[step]}", evidence=evidence))
    return results


def loop_results(state: LoopState) -> list[CheckResult]:
    results = [CheckResult("loop", Status.PASS, f"{status_line(state)}; best {state.metric} {fmt_metric(state.best)}"
                           + (f" (round {state.best_round})" if state.best_round else " (the baseline)"),
                           name="loop", evidence={"branch": state.branch})]
    if state.no_improvement >= 5:
        results.append(CheckResult("loop/plateau", Status.FAIL,
                                   f"{state.no_improvement} rounds in a row without improvement",
                                   name="plateau warning", blocking=False))
    return results


def summary(state: LoopState, rows: list[RoundRow], paths: Any) -> dict[str, Any]:
    return {
        "branch": state.branch, "tag": state.tag, "status": state.status, "stop_reason": state.stop_reason,
        "metric": state.metric, "direction": state.direction, "best": state.best, "best_round": state.best_round,
        "best_commit": state.best_commit, "baseline": state.baseline, "target": state.target,
        "rounds_done": state.rounds_done, "max_rounds": state.max_rounds, "min_delta": state.effective_min_delta,
        "noise": state.noise, "no_improvement": state.no_improvement,
        "current": ({"round": state.current.n, "step": state.current.step, "kind": state.current.kind}
                    if state.current is not None and state.current.step != "done" else None),
        "experiences": paths.rel(paths.experiences), "results": paths.rel(paths.results_jsonl),
        "rounds": [r.to_dict() for r in rows],
    }


def text(state: LoopState, rows: list[RoundRow], title: str, extra: list[str] | None = None) -> str:
    lines = [title, *header_lines(state, rows), ""]
    shown = [r for r in rows if r.kind == "round"]
    lines += table_lines(shown) if shown else ["(no rounds recorded yet)"]
    lines += ["", *(extra or [])]
    return "\n".join(lines).rstrip("\n") + "\n"


def fill(report: Report, state: LoopState, rows: list[RoundRow], paths: Any, title: str,
         extra: list[str] | None = None, with_rounds: bool = True) -> Report:
    if with_rounds:
        report.results.extend(round_results(rows))
    report.results.extend(loop_results(state))
    report.summary.update(summary(state, rows, paths))
    report.text = text(state, rows, title, extra)
    return report
