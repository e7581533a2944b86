"""peak_flops: whole-token device matching and dense peaks, never a guess."""

from __future__ import annotations

import pytest

from pytest_spml.toolkit.profiling import peak_flops as pf

# (name as torch.cuda.get_device_name() reports it, table entry, dtype, dense FLOP/s)
KNOWN = [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", "bf16", 989e12),
    ("NVIDIA H100 SXM5 80GB", "H100 SXM", "bf16", 989e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 NVL", "H100 NVL", "bf16", 835e12),
    ("NVIDIA H200", "H200", "bf16", 989e12),
    ("NVIDIA H200 NVL", "H200 NVL", "bf16", 835e12),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4", "bf16", 312e12),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4", "bf16", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", "bf16", 312e12),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe", "bf16", 312e12),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4", "tf32", 156e12),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe", "fp32", 19.5e12),
    ("NVIDIA A10", "A10", "bf16", 125e12),
    ("NVIDIA A10G", "A10G", "bf16", 70e12),
    ("NVIDIA L4", "L4", "bf16", 121e12),
    ("NVIDIA L40", "L40", "bf16", 181e12),
    ("NVIDIA L40S", "L40S", "bf16", 362e12),
    ("NVIDIA B200", "B200", "bf16", 2.25e15),
    ("Tesla V100-SXM2-16GB", "V100 SXM2", "fp16", 125e12),
    ("Tesla V100-SXM2-32GB", "V100 SXM2", "fp16", 125e12),
    ("Tesla V100-PCIE-16GB", "V100 PCIe", "fp16", 112e12),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", "bf16", 71e12),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", "bf16", 165.2e12),
    ("NVIDIA RTX A6000", "RTX A6000", "bf16", 154.8e12),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", "bf16", 364.2e12),
    ("AMD Instinct MI300X", "MI300X", "bf16", 1307.4e12),
    ("AMD Instinct MI250X", "MI250X (per GCD)", "bf16", 191.5e12),
    ("AMD Instinct MI250X/MI250", "MI250X (per GCD)", "bf16", 191.5e12),
]


@pytest.mark.parametrize(("name", "entry", "dtype", "value"), KNOWN)
def test_known_devices(name: str, entry: str, dtype: str, value: float) -> None:
    spec = pf.match_device(name)
    assert spec is not None and spec.name == entry
    got, reason = pf.peak_flops(name, dtype)
    assert got == pytest.approx(value)
    assert entry in reason and "dense" in reason


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
    ],
)
def test_whole_token_variants_do_not_bleed(name: str, entry: str) -> None:
    assert pf.match_device(name).name == entry  # type: ignore[union-attr]


def test_l4_l40_l40s_are_distinct_values() -> None:
    values = {n: pf.peak_flops(n, "bf16")[0] for n in ("NVIDIA L4", "NVIDIA L40", "NVIDIA L40S")}
    assert values == {"NVIDIA L4": 121e12, "NVIDIA L40": 181e12, "NVIDIA L40S": 362e12}


def test_h100_variants_differ() -> None:
    values = [pf.peak_flops(n, "bf16")[0] for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL")]
    assert values == [989e12, 756e12, 835e12]


def test_every_table_value_is_dense_and_sane() -> None:
    for spec in pf.DEVICES:
        assert set(spec.flops) <= set(pf.DTYPES), spec.name
        assert not set(spec.flops) & spec.lacks, spec.name
        for dtype, value in spec.flops.items():
            assert 1e12 < value < 1e16, (spec.name, dtype)
        # bf16/fp16 tensor rate is never below the fp32 rate; fp8 is 2x bf16 where both exist
        if "bf16" in spec.flops and "fp32" in spec.flops:
            assert spec.flops["bf16"] >= spec.flops["fp32"], spec.name
        if "fp8" in spec.flops and "bf16" in spec.flops:
            assert spec.flops["fp8"] == pytest.approx(2 * spec.flops["bf16"], rel=0.03), spec.name


@pytest.mark.parametrize(
    "name",
    ["NVIDIA H100", "Quadro RTX 6000", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce RTX 4090 D", "NVIDIA T4", "", "cpu"],
)
def test_unknown_or_ambiguous_devices_give_none(name: str) -> None:
    assert pf.match_device(name) is None
    value, reason = pf.peak_flops(name, "bf16")
    assert value is None and reason


def test_bare_h100_reason_says_ambiguous_variant() -> None:
    value, reason = pf.peak_flops("NVIDIA H100", "bf16")
    assert value is None and "variant" in reason


def test_dtype_the_device_lacks() -> None:
    value, reason = pf.peak_flops("Tesla V100-SXM2-16GB", "bfloat16")
    assert value is None and "no bf16" in reason
    value, reason = pf.peak_flops("NVIDIA A100-SXM4-80GB", "fp8")
    assert value is None and "fp8" in reason
    value, reason = pf.peak_flops("AMD Instinct MI250X", "tf32")
    assert value is None


def test_untabulated_dtype_is_not_guessed() -> None:
    value, reason = pf.peak_flops("NVIDIA B200", "fp32")
    assert value is None and "no verified" in reason


def test_unknown_dtype() -> None:
    value, reason = pf.peak_flops("NVIDIA H100 PCIe", "int4")
    assert value is None and "int4" in reason


@pytest.mark.parametrize(
    ("dtype", "key"),
    [
        ("torch.bfloat16", "bf16"),
        ("bfloat16", "bf16"),
        ("torch.float16", "fp16"),
        ("half", "fp16"),
        ("torch.float32", "fp32"),
        ("tf32", "tf32"),
        ("torch.float8_e4m3fn", "fp8"),
        ("float8_e5m2", "fp8"),
        ("int8", None),
    ],
)
def test_normalize_dtype(dtype: str, key: str | None) -> None:
    assert pf.normalize_dtype(dtype) == key


def test_torch_dtype_objects_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    assert pf.peak_flops("NVIDIA H100 PCIe", torch.bfloat16)[0] == 756e12
    assert pf.peak_flops("NVIDIA H100 PCIe", torch.float32)[0] == 51e12


def test_non_datasheet_value_is_flagged() -> None:
    value, reason = pf.peak_flops("NVIDIA A10G", "bf16")
    assert value == 70e12 and "not a vendor datasheet value" in reason


def test_mfu_helper_is_none_aware() -> None:
    assert pf.mfu(2e12, 0.01, 1e15)[0] == pytest.approx(0.2)
    assert pf.mfu(2e12, 0.01, None)[0] is None
    assert pf.mfu(None, 0.01, 1e15)[0] is None
    assert pf.mfu(2e12, 0.0, 1e15)[0] is None
