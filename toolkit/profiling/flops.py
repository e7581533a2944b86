"""Count the FLOPs a callable executes, and say which heavy ops were *not* counted.

What: :func:`count_flops` runs ``fn`` once under
``torch.utils.flop_counter.FlopCounterMode`` and, in the same call, under a
recording ``TorchDispatchMode`` that sees every aten/custom op that actually
runs (after FlopCounterMode's own decompositions). Ops that executed but that
FlopCounterMode has no formula for are reported in ``uncounted``.

Why: FlopCounterMode silently assigns 0 FLOPs to anything outside its
registry - e.g. the CPU attention kernel
``aten._scaled_dot_product_flash_attention_for_cpu`` or custom kernels from
``flash_attn::``, ``triton``, ``transformer_engine::`` - and an MFU computed
from an undercount looks plausibly low instead of wrong. Only matmul-like
ops (mm/conv/attention/linear/rnn families) and non-aten custom ops are
flagged: elementwise ops are excluded from MFU by convention, not by accident.

torch is imported inside the functions only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["FlopCount", "count_flops", "linear_flops_note", "is_heavy_op_name"]

# namespaces that run no arithmetic worth counting (collectives, profiler marks)
_NON_COMPUTE_NAMESPACES = frozenset(
    {"aten", "prims", "prim", "c10d", "_c10d_functional", "_c10d_functional_autograd", "profiler", "_dtensor"}
)
_HEAVY_TOKENS = frozenset(
    {"matmul", "linear", "einsum", "attention", "lstm", "gru", "rnn", "gemm", "gemv", "sdpa", "bilinear", "tensordot"}
)


@dataclass
class FlopCount:
    """Result of :func:`count_flops`.

    ``total``: FLOPs FlopCounterMode counted (multiply-add = 2 FLOPs).
    ``by_op``: counted FLOPs per op packet name (``"aten.mm"``).
    ``uncounted``: one human-readable reason per heavy op that executed but
    got 0 FLOPs; non-empty means ``total`` is a *lower bound*.
    ``uncounted_ops``: the same ops with their call counts.
    ``op_calls``: every executed op overload with its call count.
    """

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    op_calls: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when no executed heavy op was left uncounted."""
        return not self.uncounted


def is_heavy_op_name(name: str) -> bool:
    """Whether an aten op name (``"_scaled_dot_product_flash_attention_for_cpu"``)
    looks like matmul-class work whose FLOPs matter for MFU."""
    for token in name.lower().split("_"):
        if not token:
            continue
        if token in _HEAVY_TOKENS or token.endswith("mm") or token.startswith("conv"):
            return True
    return False


def _reason(namespace: str, name: str, calls: int) -> str:
    qual = f"{namespace}::{name}"
    if namespace not in _NON_COMPUTE_NAMESPACES:
        return (
            f"{qual} (custom op, {calls} call(s)) is not counted by FlopCounterMode; "
            "its FLOPs are missing - pass a custom_mapping formula"
        )
    if "attention" in name:
        return (
            f"{qual} ({calls} call(s)) has no FlopCounterMode formula (e.g. the CPU SDPA kernel); "
            "attention FLOPs are missing"
        )
    return f"{qual} ({calls} call(s)) is matmul-class work without a FlopCounterMode formula; its FLOPs are missing"


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FlopCount:
    """Run ``fn(*args, **kwargs)`` once and count its FLOPs.

    Put ``loss.backward()`` inside ``fn`` to include the backward pass. The
    return value of ``fn`` is discarded. See :func:`linear_flops_note` for
    what the counts mean for transformers.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class _Recorder(TorchDispatchMode):
        """Records executed op overloads; sits *below* FlopCounterMode so it
        sees the leaf ops left after FlopCounterMode's decompositions."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: Counter[Any] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.calls[func] += 1
            return func(*args, **(kwargs or {}))

    recorder = _Recorder()
    counter = FlopCounterMode(display=False)
    with recorder, counter:
        fn(*args, **kwargs)

    registry = counter.flop_registry
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    op_calls: dict[str, int] = {}
    missing: Counter[tuple[str, str]] = Counter()
    for func, n in recorder.calls.items():
        op_calls[str(func)] = op_calls.get(str(func), 0) + n
        packet = getattr(func, "_overloadpacket", None)
        if packet is None or packet in registry:
            continue
        namespace = getattr(func, "namespace", "aten")
        name = packet.__name__ if hasattr(packet, "__name__") else str(packet)
        name = name.split(".")[-1]
        if namespace not in _NON_COMPUTE_NAMESPACES or is_heavy_op_name(name):
            missing[(namespace, name)] += n
    uncounted = [_reason(ns, name, n) for (ns, name), n in sorted(missing.items())]
    return FlopCount(
        total=int(counter.get_total_flops()),
        by_op=by_op,
        uncounted=uncounted,
        uncounted_ops={f"{ns}::{name}": n for (ns, name), n in sorted(missing.items())},
        op_calls=op_calls,
    )


_LINEAR_FLOPS_NOTE = """\
How to read FLOP counts (FlopCounterMode conventions):

* A linear/matmul of (B, k) x (k, n) costs 2*B*k*n FLOPs forward (one
  multiply + one add per MAC); bias adds and elementwise ops are not counted.
* Backward of a linear is 2x its forward when the input needs a gradient
  (grad-input + grad-weight matmuls), so fwd+bwd = 3x forward. When the input
  does NOT require grad (the first layer fed raw data, or anything under a
  frozen prefix) only grad-weight runs: backward = 1x forward and
  fwd+bwd = 2x forward, not 3x. Frozen weights likewise drop grad-weight.
  The common "6 * params * tokens" rule therefore overestimates such layers.
* Causal attention is NOT halved: FlopCounterMode's SDPA formulas charge the
  full (L x S) score and value matmuls even with is_causal=True, while
  flash kernels skip the masked half. Halve the attention term yourself if
  your MFU convention counts only executed causal work (PaLM-style MFU does
  not halve, so state the convention).
* Attention kernels without a formula (CPU SDPA, flash_attn::, custom
  triton/transformer_engine ops) count 0 - see FlopCount.uncounted.
"""


def linear_flops_note() -> str:
    """Return the conventions behind the counts (linear backward 2x vs 3x,
    causal attention not halved, uncounted kernels) for reports and docs."""
    return _LINEAR_FLOPS_NOTE
