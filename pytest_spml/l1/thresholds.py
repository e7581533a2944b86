"""L1 thresholds: SPML's defaults, overridable per project in ``[tool.spml.l1.thresholds]``.

    [tool.spml.l1.thresholds]
    grad_norm_max = 100.0
    loss_spike_factor = 5.0
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..errors import InputError
from .runner import Thresholds


def load_thresholds(root: Path) -> Thresholds:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return Thresholds()
    from ..config import read_pyproject_tool

    tool, _text = read_pyproject_tool(pyproject)
    table = tool.get("spml", {}).get("l1", {}).get("thresholds", {}) if isinstance(tool.get("spml"), dict) else {}
    if not isinstance(table, dict):
        raise InputError("[tool.spml.l1.thresholds] must be a table of name = number", pyproject)
    known = Thresholds.names()
    values = {}
    for key, value in table.items():
        if key not in known:
            raise InputError(f"[tool.spml.l1.thresholds] unknown threshold {key!r} (known: {', '.join(known)})",
                             pyproject)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"[tool.spml.l1.thresholds] {key} must be a finite number >= 0, got {value!r}", pyproject)
        values[key] = float(value)
    return dataclasses.replace(Thresholds(), **values)
