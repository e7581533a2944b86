"""Dense peak FLOP/s per accelerator and dtype, for MFU denominators.

What: a small table of *dense* tensor/matrix-core peaks (never the 2:4
structured-sparsity figures that datasheets print with an asterisk) and a
name matcher for the strings ``torch.cuda.get_device_name()`` returns.

Why: MFU = achieved FLOP/s / peak FLOP/s, and a wrong peak silently scales
every MFU. So the lookup refuses rather than guesses: an unknown or ambiguous
device, or a dtype the device lacks (bf16 on V100) or that we have no verified
value for, gives ``(None, reason)``.

Matching works on whole lower-case alphanumeric tokens, so ``"NVIDIA L4"``
never matches L40/L40S, ``"NVIDIA A10"`` never matches A100, and the most
specific signature wins (``"NVIDIA H200 NVL"`` is the NVL part, ``"NVIDIA
H200"`` the SXM part).

Conventions:

* Values are per *torch device*. For MI250X that is one GCD (half of the
  module's datasheet numbers), because each GCD is a separate device.
* ``fp32`` on NVIDIA is the CUDA-core (non tensor-core) rate: PyTorch runs fp32
  matmuls without TF32 unless ``torch.backends.cuda.matmul.allow_tf32`` /
  ``torch.set_float32_matmul_precision("high")`` is set; then use ``tf32``.
  On AMD Instinct ``fp32`` is the FP32 *matrix* rate that rocBLAS GEMMs use.
* GeForce cards (RTX 3090/4090) run fp16/bf16 with fp32 accumulation (what
  PyTorch uses) at half their fp16-accumulate rate; the table holds the fp32-
  accumulate figure.

Importable without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DTYPES",
    "DEVICES",
    "DeviceSpec",
    "match_device",
    "normalize_dtype",
    "peak_flops",
    "mfu",
]

#: canonical dtype keys of the table
DTYPES = ("fp8", "bf16", "fp16", "tf32", "fp32")

_DTYPE_ALIASES = {
    "fp8": "fp8",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "float8_e4m3fnuz": "fp8",
    "float8_e5m2fnuz": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "tf32": "tf32",
    "tensorfloat32": "tf32",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
}


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator model.

    ``signatures``: token sets, any one of which identifies the model; the match
    score is the signature length, so more specific signatures win.
    ``excludes``: tokens that veto a match (``"ti"`` keeps RTX 3090 Ti out of
    RTX 3090). ``flops``: dense FLOP/s per canonical dtype. ``lacks``: dtypes
    the hardware has no tensor/matrix path for. ``datasheet``: False when the
    value is not from the vendor's own datasheet/whitepaper (see ``source``).
    """

    name: str
    vendor: str
    signatures: tuple[tuple[str, ...], ...]
    flops: dict[str, float] = field(hash=False)
    lacks: frozenset[str] = frozenset()
    excludes: frozenset[str] = frozenset()
    source: str = ""
    datasheet: bool = True


def _hopper_sxm(name: str, signatures: tuple[tuple[str, ...], ...], source: str) -> DeviceSpec:
    # NVIDIA H100/H200/GH200 datasheets, SXM column: FP8 3,958* / BF16 1,979* /
    # TF32 989* TFLOPS (* = sparse, dense is half), FP32 67 TFLOPS.
    return DeviceSpec(
        name,
        "NVIDIA",
        signatures,
        {"fp8": 1979e12, "bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 67e12},
        source=source,
    )


def _hopper_nvl(name: str, signatures: tuple[tuple[str, ...], ...], source: str) -> DeviceSpec:
    # H100 NVL / H200 NVL datasheet (per GPU): FP8 3,341* / BF16 1,671* /
    # TF32 835* TFLOPS (* = sparse), FP32 60 TFLOPS.
    return DeviceSpec(
        name,
        "NVIDIA",
        signatures,
        {"fp8": 1670e12, "bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
        source=source,
    )


_AMPERE_DC = frozenset({"fp8"})
_A100_FLOPS = {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
_A100_SRC = "NVIDIA A100 datasheet: BF16/FP16 312, TF32 156 (dense), FP32 19.5 TFLOPS; same for 40GB/80GB, SXM4/PCIe"
_VOLTA_LACKS = frozenset({"bf16", "tf32", "fp8"})

#: the table. All values are dense peaks in FLOP/s. "datasheet" entries were
#: taken from the vendor datasheet/whitepaper, sparse figures halved.
DEVICES: tuple[DeviceSpec, ...] = (
    # ---- Hopper -----------------------------------------------------------
    _hopper_sxm(
        "H100 SXM",
        (("h100", "sxm"), ("h100", "sxm5"), ("h100", "hbm3")),  # "NVIDIA H100 80GB HBM3"
        "NVIDIA H100 datasheet, SXM column (dense)",
    ),
    DeviceSpec(
        "H100 PCIe",
        "NVIDIA",
        (("h100", "pcie"), ("h100", "hbm2e")),  # PCIe part carries HBM2e
        # datasheet: FP8 3,026* / BF16 1,513* / TF32 756* (sparse), FP32 51 TFLOPS
        {"fp8": 1513e12, "bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12},
        source="NVIDIA H100 datasheet, PCIe column (dense)",
    ),
    _hopper_nvl("H100 NVL", (("h100", "nvl"),), "NVIDIA H100 datasheet, H100 NVL column per GPU (dense)"),
    _hopper_sxm("H200", (("h200",), ("h200", "sxm")), "NVIDIA H200 datasheet, SXM column (dense)"),
    _hopper_nvl("H200 NVL", (("h200", "nvl"),), "NVIDIA H200 datasheet, H200 NVL column (dense)"),
    _hopper_sxm("GH200", (("gh200",),), "NVIDIA GH200 datasheet, H100/H200 GPU of the superchip (dense)"),
    # ---- Blackwell --------------------------------------------------------
    DeviceSpec(
        "B200",
        "NVIDIA",
        (("b200",),),
        # HGX B200 per GPU: FP8 9 PF*, FP16/BF16 4.5 PF*, TF32 2.2 PF* (sparse).
        # FP32 is deliberately left out: no verified per-GPU figure.
        {"fp8": 4.5e15, "bf16": 2.25e15, "fp16": 2.25e15, "tf32": 1.1e15},
        source="NVIDIA HGX B200 datasheet, per GPU (dense)",
    ),
    # ---- Ampere (data centre) ----------------------------------------------
    DeviceSpec("A100 SXM4", "NVIDIA", (("a100", "sxm4"), ("a100", "sxm")), dict(_A100_FLOPS), _AMPERE_DC, source=_A100_SRC),
    DeviceSpec("A100 PCIe", "NVIDIA", (("a100", "pcie"),), dict(_A100_FLOPS), _AMPERE_DC, source=_A100_SRC),
    # every A100 variant has the same dense peaks, so a bare "A100" is not a guess
    DeviceSpec("A100", "NVIDIA", (("a100",),), dict(_A100_FLOPS), _AMPERE_DC, source=_A100_SRC),
    DeviceSpec(
        "A10",
        "NVIDIA",
        (("a10",),),
        {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
        _AMPERE_DC,
        source="NVIDIA A10 datasheet: BF16/FP16 125|250*, TF32 62.5|125*, FP32 31.2 TFLOPS",
    ),
    DeviceSpec(
        "A10G",
        "NVIDIA",
        (("a10g",),),
        {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12},
        _AMPERE_DC,
        source=(
            "AWS-only part with no NVIDIA datasheet; figures are the ones AWS/cloud "
            "vendors quote (dense BF16/FP16 70, TF32 35, FP32 ~31 TFLOPS)"
        ),
        datasheet=False,
    ),
    # ---- Ada ----------------------------------------------------------------
    DeviceSpec(
        "L4",
        "NVIDIA",
        (("l4",),),
        {"fp8": 242.5e12, "bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
        source="NVIDIA L4 datasheet: FP8 485*, BF16/FP16 242*, TF32 120* (sparse), FP32 30.3 TFLOPS",
    ),
    DeviceSpec(
        "L40",
        "NVIDIA",
        (("l40",),),
        {"fp8": 362e12, "bf16": 181e12, "fp16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12},
        source="NVIDIA L40 datasheet: FP8 362|724*, BF16/FP16 181|362*, TF32 90.5|181*, FP32 90.5 TFLOPS",
    ),
    DeviceSpec(
        "L40S",
        "NVIDIA",
        (("l40s",),),
        {"fp8": 733e12, "bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
        source="NVIDIA L40S datasheet: FP8 733|1466*, BF16/FP16 362|733*, TF32 183|366*, FP32 91.6 TFLOPS",
    ),
    DeviceSpec(
        "RTX 6000 Ada",
        "NVIDIA",
        (("rtx", "6000", "ada"),),  # "NVIDIA RTX 6000 Ada Generation"; Turing "Quadro RTX 6000" lacks "ada"
        {"fp8": 728.5e12, "bf16": 364.2e12, "fp16": 364.2e12, "tf32": 182.1e12, "fp32": 91.1e12},
        source="NVIDIA RTX 6000 Ada datasheet/Ada whitepaper: FP8 1457* (sparse), FP32 91.1 TFLOPS",
    ),
    DeviceSpec(
        "RTX 4090",
        "NVIDIA",
        (("rtx", "4090"),),
        {"fp8": 330.3e12, "bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
        excludes=frozenset({"ti", "d", "laptop", "mobile"}),
        source="NVIDIA Ada whitepaper, RTX 4090, FP32-accumulate dense rates",
    ),
    # ---- Ampere (workstation / consumer) -----------------------------------
    DeviceSpec(
        "RTX A6000",
        "NVIDIA",
        (("a6000",),),
        {"bf16": 154.8e12, "fp16": 154.8e12, "tf32": 77.4e12, "fp32": 38.7e12},
        _AMPERE_DC,
        excludes=frozenset({"ada"}),
        source="NVIDIA RTX A6000 datasheet: tensor 309.7* TFLOPS (sparse), FP32 38.7 TFLOPS",
    ),
    DeviceSpec(
        "RTX 3090",
        "NVIDIA",
        (("rtx", "3090"),),
        {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
        _AMPERE_DC,
        excludes=frozenset({"ti", "laptop", "mobile"}),
        source="NVIDIA GA102 whitepaper, RTX 3090, FP32-accumulate dense rates",
    ),
    # ---- Volta ----------------------------------------------------------------
    DeviceSpec(
        "V100 SXM2",
        "NVIDIA",
        (("v100", "sxm2"), ("v100", "sxm")),
        {"fp16": 125e12, "fp32": 15.7e12},
        _VOLTA_LACKS,
        source="NVIDIA V100 datasheet, SXM2: tensor 125, FP32 15.7 TFLOPS",
    ),
    DeviceSpec(
        "V100 PCIe",
        "NVIDIA",
        (("v100", "pcie"),),
        {"fp16": 112e12, "fp32": 14e12},
        _VOLTA_LACKS,
        source="NVIDIA V100 datasheet, PCIe: tensor 112, FP32 14 TFLOPS",
    ),
    DeviceSpec(
        "V100S PCIe",
        "NVIDIA",
        (("v100s",),),
        {"fp16": 130e12, "fp32": 16.4e12},
        _VOLTA_LACKS,
        source="NVIDIA V100S datasheet: tensor 130, FP32 16.4 TFLOPS",
    ),
    # ---- AMD Instinct ----------------------------------------------------------
    DeviceSpec(
        "MI300X",
        "AMD",
        (("mi300x",),),
        {"fp8": 2614.9e12, "bf16": 1307.4e12, "fp16": 1307.4e12, "tf32": 653.7e12, "fp32": 163.4e12},
        source="AMD Instinct MI300X datasheet (dense; FP32 = matrix rate)",
    ),
    DeviceSpec(
        "MI250X (per GCD)",
        "AMD",
        (("mi250x",),),  # also "AMD Instinct MI250X/MI250"
        {"bf16": 191.5e12, "fp16": 191.5e12, "fp32": 47.85e12},
        frozenset({"tf32", "fp8"}),
        source="AMD Instinct MI250X datasheet: BF16/FP16 383, FP32 matrix 95.7 TFLOPS per module = 2 GCDs (halved)",
    ),
)

# families whose variants differ, so the bare family name is refused as ambiguous
_AMBIGUOUS = {
    "h100": "H100 variant not identifiable: SXM 989, NVL 835, PCIe 756 TFLOP/s dense bf16 differ",
    "v100": "V100 variant not identifiable: SXM2 125 vs PCIe 112 TFLOP/s fp16 differ",
}


def _tokens(name: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", name.lower()))


def _best_matches(name: str) -> tuple[int, list[DeviceSpec]]:
    tokens = _tokens(name)
    best, found = 0, []
    for spec in DEVICES:
        if tokens & spec.excludes:
            continue
        score = max((len(sig) for sig in spec.signatures if set(sig) <= tokens), default=0)
        if score > best:
            best, found = score, [spec]
        elif score and score == best:
            found.append(spec)
    return best, found


def match_device(name: str) -> DeviceSpec | None:
    """The table entry for a device name (``torch.cuda.get_device_name()``), or None.

    None when nothing matches, or when two different entries match equally
    specifically (ambiguous) - a wrong peak is worse than none.
    """
    _, found = _best_matches(name)
    return found[0] if len(found) == 1 else None


def _no_match_reason(name: str) -> str:
    _, found = _best_matches(name)
    if len(found) > 1:
        return f"device name {name!r} is ambiguous between {', '.join(s.name for s in found)}"
    tokens = _tokens(name)
    for family, why in _AMBIGUOUS.items():
        if family in tokens:
            return f"device name {name!r}: {why}"
    return f"device name {name!r} is not in the peak FLOP/s table"


def normalize_dtype(dtype: Any) -> str | None:
    """Canonical table key for a dtype given as a string or a ``torch.dtype``.

    ``torch.bfloat16`` / ``"bfloat16"`` / ``"bf16"`` -> ``"bf16"``; any float8
    variant -> ``"fp8"``; unknown -> None. Works without importing torch
    (``str(torch.float16) == "torch.float16"``).
    """
    text = str(dtype).strip().lower()
    if text.startswith("torch."):
        text = text[len("torch.") :]
    return _DTYPE_ALIASES.get(text)


def peak_flops(name: str, dtype: Any) -> tuple[float | None, str]:
    """Dense peak FLOP/s of device ``name`` for ``dtype``, as ``(value, reason)``.

    ``value`` is None - never a guess - when the device is unknown or
    ambiguous, the dtype is unknown, the device lacks the dtype (V100 bf16),
    or no verified figure is tabulated. ``reason`` always says which entry
    and source were used, or why there is no value.
    """
    spec = match_device(name)
    if spec is None:
        return None, _no_match_reason(name)
    key = normalize_dtype(dtype)
    if key is None:
        return None, f"dtype {dtype!r} has no peak entry (known: {', '.join(DTYPES)})"
    if key in spec.lacks:
        return None, f"{spec.name} has no {key} tensor/matrix-core support"
    value = spec.flops.get(key)
    if value is None:
        return None, f"{spec.name}: no verified dense {key} peak tabulated"
    caveat = "" if spec.datasheet else " (not a vendor datasheet value)"
    return value, f"{spec.name} dense {key} peak {value / 1e12:g} TFLOP/s; source: {spec.source}{caveat}"


def mfu(flops: float | None, seconds: float | None, peak: float | None) -> tuple[float | None, str]:
    """Model FLOPs utilisation ``flops / seconds / peak`` as ``(value, reason)``.

    None-aware so a missing peak or timing propagates as a reason instead of a
    fabricated number.
    """
    if flops is None:
        return None, "no FLOP count"
    if peak is None or peak <= 0:
        return None, "no peak FLOP/s for this device/dtype"
    if seconds is None or seconds <= 0:
        return None, "no positive step time"
    return flops / seconds / peak, "ok"
