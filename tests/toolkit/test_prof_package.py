"""The profiling package stays light: no torch/pynvml at import of the package, peak_flops or gap."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "stmt",
    [
        "import pytest_spml.toolkit.profiling as p",
        "from pytest_spml.toolkit.profiling import peak_flops, gap",
        "from pytest_spml.toolkit.profiling import tca, timing",
        "import pytest_spml.toolkit.profiling as p; p.gap.tca_mfu_gap(0.5, 0.2)",
        "from pytest_spml.toolkit.profiling import flops, memory, layers",
    ],
)
def test_imports_do_not_pull_heavy_modules(stmt: str) -> None:
    code = f"{stmt}\nimport sys\nheavy = [m for m in ('torch', 'pynvml', 'numpy') if m in sys.modules]\nassert not heavy, heavy\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_lazy_submodule_attribute() -> None:
    import pytest_spml.toolkit.profiling as p

    assert p.peak_flops.peak_flops("NVIDIA L4", "bf16")[0] == 121e12
    with pytest.raises(AttributeError):
        p.not_a_module  # noqa: B018
