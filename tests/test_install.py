"""A fresh virtual environment gets a working, lean install from the wheel."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO_ROOT)],
                   check=True, capture_output=True)
    (found,) = out.glob("pytest_spml-*.whl")
    return found


def test_wheel_carries_templates_hooks_and_toolkit(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("pytest_spml/templates/plan.md", "pytest_spml/templates/autoresearch-protocol.md",
                     "pytest_spml/templates/ci/spml.yml", "pytest_spml/templates/pre-commit-config.yaml",
                     "pytest_spml/githooks/pre-commit", "pytest_spml/toolkit/profiling/__init__.py",
                     "pytest_spml/plugin.py"):
        assert required in names, required
    packages = {str(p.parent.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "pytest_spml").rglob("__init__.py")}
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"subpackages left out of the wheel (add them to pyproject.toml): {missing}"
    assert not any(n.startswith(("toolkit/", "templates/", "hooks/", "tests/")) for n in names), \
        "nothing generic may land at the top level of site-packages"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [ln for ln in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if ln.startswith("Requires-Dist:")]
    heavy = [r for r in requires if any(h in r for h in ("torch", "wandb", "tensorboard", "nvidia-ml-py"))]
    assert heavy and all("extra ==" in r for r in heavy), heavy
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]" in text and "spml = pytest_spml.plugin" in text


@pytest.mark.slow
def test_fresh_venv_install_is_lean_and_works(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import importlib.util as u; print([m for m in ('torch', 'wandb', 'tensorboard', 'pynvml') if u.find_spec(m)])"],
        capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", "installing the core must not pull torch, wandb, tensorboard or pynvml"
    helptext = subprocess.run([str(bin_dir / "pytest"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helptext.returncode == 0 and "--spml-l1" in helptext.stdout
    for script in ("spml", "spml-loop", "spml-hook-plan-gate", "spml-hook-fixed-files"):
        assert (bin_dir / script).exists(), script
    project = tmp_path / "project"
    init = subprocess.run([str(bin_dir / "spml"), "init", str(project)], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    gate = subprocess.run([str(bin_dir / "spml"), "plan-gate", str(project / "docs/plans/experiment-plan.md")],
                          capture_output=True, text=True)
    assert gate.returncode == 0, gate.stdout + gate.stderr
