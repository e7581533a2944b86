"""L0 rules: advisory. Worth fixing, never blocking."""

from __future__ import annotations

from collections.abc import Iterator

from ..context import FileContext, constant, keyword
from ..model import Finding, Rule
from ..registry import rule


@rule(
    "ADV001", "torch-load-without-weights-only", "advisory",
    what="`torch.load` without `weights_only=True`.",
    why="A checkpoint is a pickle: without `weights_only=True` loading one can run arbitrary code, and "
        "PyTorch 2.6 changed the default, so old code now fails or warns depending on the version.",
    bad='state = torch.load("ckpt.pt")',
    fix='state = torch.load("ckpt.pt", map_location="cpu", weights_only=True)',
)
def torch_load_weights_only(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.calls_to("torch.load"):
        if constant(keyword(call, "weights_only")) is not True:
            yield ctx.finding(rule_, call, "`torch.load` without `weights_only=True` unpickles arbitrary objects: "
                              "pass `weights_only=True` (and `map_location`)")
