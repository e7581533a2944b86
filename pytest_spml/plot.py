"""PNG plots of runs and rounds: stacked panels of lines against a shared x axis, with marked events.

matplotlib is optional (``pip install 'pytest-spml[plot]'``) and imported
only when a plot is drawn, with the non-interactive Agg backend so it works
on headless machines and inside long-lived loops. Without matplotlib no plot
is drawn and the caller gets the reason instead of an exception: a missing
picture must never fail a training check.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["Panel", "Mark", "save_plot", "PLOT_INSTALL"]

PLOT_INSTALL = "pip install 'pytest-spml[plot]'"


@dataclass(frozen=True)
class Mark:
    """An event at ``x`` (an anomaly, a restart, a committed round), drawn as a vertical line on every panel."""

    x: float
    label: str
    color: str = "tab:red"


@dataclass
class Panel:
    """One plot: named lines of (x, y) points; non-finite y values are drawn as marks at the panel's top."""

    title: str
    lines: dict[str, Sequence[tuple[float, float]]] = field(default_factory=dict)
    ylabel: str = ""
    log_y: bool = False
    steps: bool = False  # draw as a step function (best-so-far curves)

    @property
    def empty(self) -> bool:
        return not any(self.lines.values())


def save_plot(path: str | os.PathLike, panels: Sequence[Panel], *, title: str = "", xlabel: str = "step",
              marks: Sequence[Mark] = ()) -> tuple[Path | None, str]:
    """Draw the non-empty ``panels`` stacked in one PNG at ``path`` (written atomically).

    Returns ``(path, "")`` or ``(None, why not)``: no matplotlib, or nothing to draw.
    """
    shown = [p for p in panels if not p.empty]
    if not shown:
        return None, "no data to plot"
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError:
        return None, f"no plot: matplotlib is not installed ({PLOT_INSTALL})"
    from .fsutil import atomic_write

    # Figure without pyplot: no global state, nothing left open in a long-lived watch loop
    figure = Figure(figsize=(9, 2.6 * len(shown) + 0.6), dpi=100, layout="constrained")
    axes = figure.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, shown):
        _draw_panel(ax, panel)
        for mark in marks:
            ax.axvline(mark.x, color=mark.color, linestyle="--", linewidth=1, alpha=0.8)
    for mark in marks[:12]:  # labels once, on the top panel; more than a dozen would be unreadable
        axes[0].annotate(mark.label[:40], xy=(mark.x, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                         rotation=90, va="top", ha="right", color=mark.color)
    axes[-1].set_xlabel(xlabel)
    if title:
        figure.suptitle(title, fontsize=10)
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    target = Path(path)
    atomic_write(target, buffer.getvalue())
    return target, ""


def _draw_panel(ax, panel: Panel) -> None:
    for name, points in panel.lines.items():
        finite = [(x, y) for x, y in points if math.isfinite(y)]
        if finite:
            xs, ys = zip(*finite)
            if panel.steps:
                ax.step(xs, ys, where="post", label=name, linewidth=1.2)
            else:
                ax.plot(xs, ys, label=name, linewidth=1.2, marker="." if len(finite) < 40 else None)
        bad = [x for x, y in points if not math.isfinite(y)]
        if bad:
            ax.scatter(bad, [1.0] * len(bad), transform=ax.get_xaxis_transform(), marker="x", color="tab:red",
                       label=f"{name}: NaN/Inf", zorder=3)
    if panel.log_y and all(y > 0 for pts in panel.lines.values() for _, y in pts if math.isfinite(y)):
        ax.set_yscale("log")
    ax.set_title(panel.title, fontsize=9, loc="left")
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
