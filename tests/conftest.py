"""Shared fixtures: isolated git, real repositories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import BIN

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the developer's git configuration out of every test."""
    home = tmp_path_factory.mktemp("gitconfig")
    config = home / "gitconfig"
    config.write_text("[user]\n\tname = spml test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    # console scripts of this environment first (spml, spml-hook-*)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return config
