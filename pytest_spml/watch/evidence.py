"""Keep the evidence of a check: the Diagnosis History of experiment-context.md, and prompts on STOP / completion.

Everything is appended or written atomically; nothing the run produced is
touched.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write

HISTORY_HEADING = "## Diagnosis History"


def history_entry(summary: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"- {stamp}: **{summary['decision']}** ({summary['status']}) at step {summary.get('step')}: "
             f"{summary['reason']}"]
    for anomaly in summary.get("anomalies", [])[:8]:
        state = ", recovered" if anomaly.get("recovered") else ""
        lines.append(f"  - [{anomaly['severity']}{state}] {anomaly['kind']} at step {anomaly['step']}: "
                     f"{anomaly['detail']}")
    return "\n".join(lines) + "\n"


def append_history(context: Path, summary: dict[str, Any]) -> None:
    """Add one entry under "## Diagnosis History" (created at the end when missing)."""
    text = context.read_text(encoding="utf-8")
    entry = history_entry(summary)
    if HISTORY_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HISTORY_HEADING}\n\n{entry}"
    else:
        head, tail = text.split(HISTORY_HEADING, 1)
        # entries go at the end of the section: before the next "## " heading, if any
        cut = tail.find("\n## ")
        section, rest = (tail, "") if cut < 0 else (tail[:cut + 1], tail[cut + 1:])
        text = head + HISTORY_HEADING + section.rstrip("\n") + "\n" + entry + ("\n" + rest if rest else "")
    atomic_write(context, text)


def write_prompt(folder: Path, summary: dict[str, Any]) -> Path | None:
    """recovery-prompt.md on STOP, completion-prompt.md on COMPLETE; None otherwise."""
    if summary["decision"] == "STOP":
        name, ask = "recovery-prompt.md", (
            "The training run was stopped by the watchdog. Diagnose the cause from the evidence below before "
            "changing anything; environment failures are restarted from the last checkpoint, code or data "
            "problems need a fix and a new L1 run.")
    elif summary["status"] == "COMPLETE":
        name, ask = "completion-prompt.md", (
            "The training run reached its planned steps. Run the fixed evaluation on the final checkpoint and "
            "record the conclusion (spml conclude) with the metrics below as evidence.")
    else:
        return None
    lines = [f"# {'Recovery' if name.startswith('recovery') else 'Completion'}", "", ask, "",
             f"- Decision: {summary['decision']} ({summary['status']})", f"- Reason: {summary['reason']}",
             f"- Source: {summary.get('source')}", f"- Last step: {summary.get('step')}", "", "## Anomalies", ""]
    lines += [f"- {a['kind']} at step {a['step']} ({a['severity']}): {a['detail']}"
              for a in summary.get("anomalies", [])] or ["- none"]
    metrics = summary.get("metrics") or {}
    lines += ["", "## Recent metrics", "", *(f"- {k}: {v:.6g}" for k, v in sorted(metrics.items())), ""]
    path = folder / name
    atomic_write(path, "\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------------------------
# the plot and the final summary

PLOT_NAME = "training-check.png"
FINAL_SUMMARY_NAME = "FINAL_SUMMARY.md"


def _track_points(track: Any) -> list[tuple[float, float]]:
    """A track's whole run: bucket means of the summary before the recent window, then the recent points."""
    recent = [(float(s), v) for s, v, _ in track.recent]
    first = recent[0][0] if recent else math.inf
    older = [((b[0] + b[1]) / 2, b[3] / b[2]) for b in track.summary.buckets if b[2] and b[1] < first]
    return older + recent


def plot_run(series: Any, anomalies: list[Any], path: Path, title: str = "") -> tuple[Path | None, str]:
    """loss, evaluation metric and gradient norm against step, each anomaly marked."""
    from ..plot import Mark, Panel, save_plot

    def lines(role: str) -> dict[str, list[tuple[float, float]]]:
        return {t.name: _track_points(t) for t in series.role_tracks(role)}

    panels = [Panel("training loss", lines("loss")), Panel("evaluation", lines("eval")),
              Panel("gradient norm", lines("grad"), log_y=True)]
    marks = [Mark(float(a.step), f"{a.kind}{' (recovered)' if a.recovered else ''}",
                  "tab:orange" if a.severity != "severe" or a.recovered else "tab:red")
             for a in anomalies if a.step is not None]
    return save_plot(path, panels, title=title, marks=marks)


def final_summary(summary: dict[str, Any], series: Any, extra: dict[str, Any] | None = None) -> str:
    """FINAL_SUMMARY.md: how the run went from its first record to its last, for the human who comes back."""
    lines = ["# Final summary", "", f"- Status: {summary['status']} (last decision {summary['decision']})",
             f"- Reason: {summary['reason']}", f"- Source: {summary.get('source')}"]
    if series is not None:
        total = summary.get("expected_total_steps")
        lines.append(f"- Steps: {series.first_step} to {series.last_step}" + (f" of {total}" if total else "")
                     + f" ({series.records} records)")
        if series.first_time is not None and series.last_time is not None:
            hours = (series.last_time - series.first_time) / 3600
            lines.append(f"- Logged time: {hours:.2f} h")
        lines += ["", "## Metrics", "", "| metric | first | last | best | at step |", "| --- | --- | --- | --- | --- |"]
        for track in sorted(series.tracks.values(), key=lambda t: t.name):
            if not track.finite:
                lines.append(f"| {track.name} | n/a | {track.last} | n/a | |")
                continue
            best, at = (track.max, track.max_step) if track.higher_is_better else (track.min, track.min_step)
            first = track.head[0][1] if track.head else math.nan
            lines.append(f"| {track.name} | {first:.6g} | {track.last:.6g} | {best:.6g} | {at} |")
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a['kind']} at step {a['step']} ({a['severity']}{', recovered' if a.get('recovered') else ''}): "
              f"{a['detail']}" for a in summary.get("anomalies", [])] or ["- none"]
    for heading, items in (extra or {}).items():
        lines += ["", f"## {heading}", ""]
        lines += [f"- {item}" for item in items] if isinstance(items, (list, tuple)) else [f"- {items}"]
    return "\n".join(lines) + "\n"


def save(outcome: Any, *, context: Path | None = None, folder: Path, final: bool = False, history: bool = True,
         plot: bool = True, extra: dict[str, Any] | None = None) -> tuple[list[Path], list[str]]:
    """Keep the evidence of one check; returns (files written, notes).

    Always: the plot (when matplotlib is there). With ``context`` and
    ``history``: a Diagnosis History entry. On STOP: recovery-prompt.md; on
    COMPLETE: completion-prompt.md. With ``final`` (the run is over) or on
    COMPLETE: FINAL_SUMMARY.md.
    """
    summary = outcome.summary
    written: list[Path] = []
    notes: list[str] = []
    if context is not None and history:
        append_history(context, summary)
        notes.append(f"appended to the Diagnosis History of {context}")
    if plot and outcome.series is not None:
        picture, why = plot_run(outcome.series, outcome.anomalies, folder / PLOT_NAME,
                                title=f"{summary['decision']} ({summary['status']}) at step {summary.get('step')}")
        if picture is not None:
            written.append(picture)
        else:
            notes.append(why)
    prompt = write_prompt(folder, summary)
    if prompt is not None:
        written.append(prompt)
    if final or summary["status"] == "COMPLETE":
        path = folder / FINAL_SUMMARY_NAME
        atomic_write(path, final_summary(summary, outcome.series, extra))
        written.append(path)
    return written, notes
