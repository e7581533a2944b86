"""Explain the gap between tensor-core activity (TCA) and MFU.

What: :func:`tca_mfu_gap` turns a TCA ratio (from :mod:`tca`) and an MFU
ratio into a verdict, an explanation and a list of likely causes.

Why: roughly ``MFU ~= TCA x (useful FLOPs per active tensor cycle / peak)``.
A low MFU therefore has two different diagnoses with different fixes:

* TCA low - the tensor cores are idle most of the time: matmuls in fp32
  without TF32, elementwise/normalisation (memory-bound) kernels dominate,
  the GPU waits on data loading, host launch overhead or communication.
* TCA high but MFU low - tensor cores are busy yet inefficient: small or
  skinny matmuls, shapes padded up to tile multiples, memory-bound GEMMs,
  half-rate fp32-accumulate modes.

MFU clearly above TCA is inconsistent and usually means the FLOP count or
the peak is wrong. Both inputs may be None; the report then says what can
and cannot be concluded. Pure Python, importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GapReport", "tca_mfu_gap", "IDLE_CAUSES", "INEFFICIENT_CAUSES"]

IDLE_CAUSES: tuple[str, ...] = (
    "fp32 matmuls without TF32 (set torch.set_float32_matmul_precision('high') or use bf16 autocast)",
    "elementwise / normalisation / memory-bound kernels dominate (fuse them, torch.compile)",
    "data loading stalls: the GPU waits for input (more workers, pinned memory, prefetch)",
    "host/launch overhead from many small kernels (larger batches, CUDA graphs)",
    "communication or synchronisation waits (overlap all-reduce, avoid .item() per step)",
)
INEFFICIENT_CAUSES: tuple[str, ...] = (
    "small or skinny matmuls that cannot fill the GPU (grow batch / hidden sizes)",
    "dimensions not multiples of 8/16/64, padded up to tile sizes (wasted tensor-core work)",
    "memory-bound GEMMs with low arithmetic intensity",
    "half-rate modes (fp32 accumulate on GeForce, fp32-in/fp32-out TF32 conversions)",
    "tile/wave quantisation: the last wave of thread blocks leaves SMs idle",
)
_INCONSISTENT_CAUSES: tuple[str, ...] = (
    "FLOPs overcounted (causal attention counted in full, FLOPs of skipped work)",
    "peak FLOP/s too low (wrong device entry, fp32 peak used for a TF32/bf16 run, per-GCD vs per-module)",
    "TCA sampled over a different window or GPU than the MFU timing",
)


@dataclass(frozen=True)
class GapReport:
    """Outcome of :func:`tca_mfu_gap`.

    ``gap`` = ``tca - mfu``; ``efficiency`` = ``mfu / tca`` (useful fraction
    of the tensor-active time); either is None when an input is missing.
    ``verdict`` is a short machine-readable code, ``explanation`` a sentence.
    """

    tca: float | None
    mfu: float | None
    gap: float | None
    efficiency: float | None
    verdict: str
    explanation: str
    causes: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line: ``verdict: explanation``."""
        return f"{self.verdict}: {self.explanation}"


def _bad(name: str, value: float | None, upper: float) -> str | None:
    if value is None:
        return None
    if value != value or value < 0 or value > upper:  # NaN, negative, too large
        return f"{name}={value!r} is not a ratio in [0, {upper:g}]"
    return None


def tca_mfu_gap(
    tca: float | None,
    mfu: float | None,
    *,
    tca_low: float = 0.3,
    tca_high: float = 0.5,
    efficiency_low: float = 0.5,
    mfu_good: float = 0.4,
    tolerance: float = 0.05,
) -> GapReport:
    """Diagnose a TCA/MFU pair (both 0-1 ratios, either may be None).

    Verdicts: ``unmeasured``, ``invalid``, ``mfu_implausible`` (MFU > 1),
    ``inconsistent`` (MFU > TCA + ``tolerance``), ``tca_unavailable``,
    ``mfu_unavailable``, ``healthy`` (MFU >= ``mfu_good``),
    ``tensor_cores_idle`` (TCA < ``tca_low``), ``tensor_cores_inefficient``
    (TCA >= ``tca_high`` and MFU/TCA < ``efficiency_low``), ``mixed``.
    """
    gap = tca - mfu if tca is not None and mfu is not None else None
    eff = mfu / tca if tca is not None and mfu is not None and tca > 0 else None

    def report(verdict: str, explanation: str, causes: tuple[str, ...] = ()) -> GapReport:
        return GapReport(tca, mfu, gap, eff, verdict, explanation, causes)

    if tca is None and mfu is None:
        return report("unmeasured", "neither TCA nor MFU was measured; nothing can be concluded")
    problem = _bad("tca", tca, 1.0) or _bad("mfu", mfu, float("inf"))
    if problem:
        return report("invalid", problem)
    if mfu is not None and mfu > 1.0:
        return report(
            "mfu_implausible",
            f"MFU {mfu:.2f} exceeds 1: the FLOP count or the peak FLOP/s is wrong",
            _INCONSISTENT_CAUSES,
        )
    if tca is None:
        assert mfu is not None
        if mfu >= mfu_good:
            return report("healthy", f"MFU {mfu:.0%} is good; TCA unavailable so no further split")
        return report(
            "tca_unavailable",
            f"MFU {mfu:.0%} is low but without TCA idle tensor cores cannot be told from inefficient ones",
            IDLE_CAUSES + INEFFICIENT_CAUSES,
        )
    if mfu is None:
        if tca < tca_low:
            return report(
                "mfu_unavailable",
                f"TCA {tca:.0%}: kernels mostly not on tensor cores (MFU unavailable)",
                IDLE_CAUSES,
            )
        return report(
            "mfu_unavailable",
            f"TCA {tca:.0%}: tensor cores are busy; without MFU their efficiency is unknown",
        )
    if mfu > tca + tolerance:
        return report(
            "inconsistent",
            f"MFU {mfu:.0%} exceeds tensor-core activity {tca:.0%}: the FLOP count, the peak or the sampling window is off",
            _INCONSISTENT_CAUSES,
        )
    if mfu >= mfu_good:
        return report("healthy", f"MFU {mfu:.0%} with TCA {tca:.0%}: tensor cores are busy and efficient")
    if tca < tca_low:
        return report(
            "tensor_cores_idle",
            f"TCA {tca:.0%} is low: most time is spent outside tensor cores, so MFU {mfu:.0%} is capped by idleness",
            IDLE_CAUSES,
        )
    if tca >= tca_high and eff is not None and eff < efficiency_low:
        return report(
            "tensor_cores_inefficient",
            f"TCA {tca:.0%} is high but MFU only {mfu:.0%} ({eff:.0%} of active time is useful): "
            "tensor cores are busy with low efficiency",
            INEFFICIENT_CAUSES,
        )
    return report(
        "mixed",
        f"TCA {tca:.0%} and MFU {mfu:.0%}: partly idle tensor cores, partly inefficient use",
        IDLE_CAUSES[:3] + INEFFICIENT_CAUSES[:2],
    )
