"""L0 rules: device. A tensor on the wrong device is an error or a silent copy every step."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from ..context import FileContext
from ..model import Finding, Rule
from ..registry import rule

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def _device_variables(ctx: FileContext) -> set[str]:
    """Names assigned a ``torch.device(...)`` (or passed to ``.to(name)``): the file's device variables."""
    names = {name for name, values in ctx.assignments.items()
             if any(isinstance(v, ast.Call) and ctx.call_name(v) == "torch.device" for _, v in values)}
    for call in ctx.method_calls("to"):
        if call.args and isinstance(call.args[0], (ast.Name, ast.Attribute)):
            name = ctx.dotted(call.args[0], resolve=False)
            if name and "device" in name.lower():
                names.add(name)
    return names


@rule(
    "DEV001", "hard-coded-cuda-device", "device",
    what="A hard-coded `.cuda()` or `\"cuda:N\"` in a file that also places tensors with a device variable, "
         "or two different hard-coded CUDA indices.",
    why="Mixed placement works on a one-GPU laptop and breaks (or silently copies) as soon as the device "
        "variable points elsewhere: another GPU index under DDP, the CPU in CI, `mps` on a Mac.",
    bad='device = torch.device(args.device)\nmodel.to(device)\nx = batch.cuda()            # always GPU 0',
    fix='device = torch.device(args.device)\nmodel.to(device)\nx = batch.to(device, non_blocking=True)',
)
def hard_coded_cuda(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    variables = _device_variables(ctx)
    indices = {m.group(1): s for s in ctx.strings if (m := _CUDA_INDEX.match(s.value))}
    if variables:
        for call in ctx.method_calls("cuda"):
            if isinstance(call.func, ast.Attribute):
                yield ctx.finding(rule_, call, f"hard-coded `.cuda()` while the file places tensors with "
                                  f"`{sorted(variables)[0]}`: use `.to({sorted(variables)[0]})` so one setting moves "
                                  "everything")
        for index, node in sorted(indices.items()):
            yield ctx.finding(rule_, node, f"hard-coded device \"cuda:{index}\" while the file places tensors with "
                              f"`{sorted(variables)[0]}`: pass the device variable instead")
    elif len(indices) > 1:
        for index, node in sorted(indices.items()):
            yield ctx.finding(rule_, node, f"hard-coded \"cuda:{index}\" next to other CUDA indices "
                              f"({', '.join(sorted(indices))}): choose the device once, in one variable")
