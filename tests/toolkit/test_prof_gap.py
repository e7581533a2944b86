"""gap: TCA vs MFU diagnosis, None-aware."""

from __future__ import annotations

import math

import pytest

from pytest_spml.toolkit.profiling.gap import IDLE_CAUSES, INEFFICIENT_CAUSES, tca_mfu_gap


def test_high_tca_low_mfu_is_inefficient() -> None:
    r = tca_mfu_gap(0.8, 0.15)
    assert r.verdict == "tensor_cores_inefficient"
    assert r.gap == pytest.approx(0.65) and r.efficiency == pytest.approx(0.1875)
    assert "low efficiency" in r.explanation
    assert r.causes == INEFFICIENT_CAUSES
    assert any("small" in c for c in r.causes) and any("padded" in c for c in r.causes)


def test_low_tca_is_idle_tensor_cores() -> None:
    r = tca_mfu_gap(0.1, 0.05)
    assert r.verdict == "tensor_cores_idle"
    assert r.causes == IDLE_CAUSES
    text = " ".join(r.causes)
    assert "TF32" in text and "elementwise" in text and "data loading" in text


def test_healthy() -> None:
    assert tca_mfu_gap(0.7, 0.5).verdict == "healthy"


def test_mixed_middle_ground() -> None:
    r = tca_mfu_gap(0.4, 0.25)
    assert r.verdict == "mixed" and r.causes


def test_mfu_above_tca_is_inconsistent() -> None:
    r = tca_mfu_gap(0.2, 0.45)
    assert r.verdict == "inconsistent"
    assert any("overcounted" in c for c in r.causes)


def test_mfu_above_one_is_implausible() -> None:
    assert tca_mfu_gap(None, 1.3).verdict == "mfu_implausible"
    assert tca_mfu_gap(0.9, 1.3).verdict == "mfu_implausible"


def test_both_none() -> None:
    r = tca_mfu_gap(None, None)
    assert r.verdict == "unmeasured" and r.gap is None and r.efficiency is None


def test_tca_missing() -> None:
    r = tca_mfu_gap(None, 0.1)
    assert r.verdict == "tca_unavailable" and r.gap is None
    assert set(IDLE_CAUSES) <= set(r.causes) and set(INEFFICIENT_CAUSES) <= set(r.causes)
    assert tca_mfu_gap(None, 0.5).verdict == "healthy"


def test_mfu_missing() -> None:
    low = tca_mfu_gap(0.05, None)
    assert low.verdict == "mfu_unavailable" and low.causes == IDLE_CAUSES
    high = tca_mfu_gap(0.9, None)
    assert high.verdict == "mfu_unavailable" and "busy" in high.explanation


@pytest.mark.parametrize(("tca", "mfu"), [(-0.1, 0.1), (1.5, 0.1), (math.nan, 0.1), (0.5, -0.2), (0.5, math.nan)])
def test_invalid_inputs(tca: float, mfu: float) -> None:
    assert tca_mfu_gap(tca, mfu).verdict == "invalid"


def test_zero_tca_has_no_efficiency() -> None:
    r = tca_mfu_gap(0.0, 0.0)
    assert r.efficiency is None and r.verdict == "tensor_cores_idle"


def test_summary_line() -> None:
    r = tca_mfu_gap(0.8, 0.1)
    assert r.summary.startswith("tensor_cores_inefficient: ") and "\n" not in r.summary
