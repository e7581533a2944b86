"""Keep the evidence of a check: the Diagnosis History of experiment-context.md, and prompts on STOP / completion.

Everything is appended or written atomically; nothing the run produced is
touched.
"""

from __future__ import annotations

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
