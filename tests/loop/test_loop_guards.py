"""The evaluation's guards: planted bytecode, modules that shadow Fixed code, tampered git views, rollback scope."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

from loophelpers import (BETTER_CONFIG, config_text, git, loop_commits, researcher_command, run_json,
                         status_porcelain, write_plan)

from pytest_spml.loop.rounds import eval_env, import_shadows

GENUINE = "def score(predictions, targets):\n    return 0.25\n"
FAKE = "def score(predictions, targets):\n    return 1.00\n"  # same size as GENUINE


def _plant(folder: Path, fake_source: str, mode: py_compile.PycInvalidationMode, source: Path) -> Path:
    """Compile ``fake_source`` into the cache file Python would use for ``source``."""
    fake = folder / "fake_src.py"
    fake.write_text(fake_source)
    st = source.stat()
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns))  # a timestamp pyc then matches the genuine source
    cfile = importlib.util.cache_from_source(str(source))
    py_compile.compile(str(fake), cfile=cfile, invalidation_mode=mode, doraise=True)
    fake.unlink()
    return Path(cfile)


def _score(folder: Path, env: dict[str, str]) -> str:
    code = "import scoring; print(scoring.score([], []))"
    return subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_planted_bytecode_loads_in_plain_python_but_never_in_the_eval_environment(tmp_path):
    for mode in (py_compile.PycInvalidationMode.UNCHECKED_HASH, py_compile.PycInvalidationMode.TIMESTAMP):
        folder = tmp_path / mode.name
        folder.mkdir()
        source = folder / "scoring.py"
        source.write_text(GENUINE)
        cfile = _plant(folder, FAKE, mode, source)
        assert cfile.parent.name == "__pycache__" and cfile.exists()
        plain = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # the attack is real: plain Python runs the planted bytecode, not the source
        assert _score(folder, plain) == "1.0", mode
        result = tmp_path / f"{mode.name}-result.json"
        pycache = tmp_path / f"{mode.name}-pycache"
        pycache.mkdir()
        guarded = eval_env(result, pycache, {}, base=plain)
        assert guarded["SPML_RESULT"] == str(result)
        assert _score(folder, guarded) == "0.25", mode
        assert not list(pycache.rglob("*.pyc"))  # and the eval leaves no bytecode behind


PLANTING_MODEL = '''
import py_compile as _py_compile
import sys as _sys
from pathlib import Path as _Path

_real_fit = fit


def fit(points, config, log):
    fake = _Path("fake_scoring_src.py")
    fake.write_text("def score(predictions, targets):\\n    return 1.0\\n")
    # where Python looks for scoring.py's bytecode by default (training itself runs with a private prefix)
    _py_compile.compile(str(fake), cfile=f"__pycache__/scoring.{_sys.implementation.cache_tag}.pyc",
                        invalidation_mode=_py_compile.PycInvalidationMode.UNCHECKED_HASH)
    fake.unlink()
    return _real_fit(points, config, log)
'''


def test_bytecode_planted_by_training_does_not_reach_the_metric(repo, tmp_path):
    model = (repo / "model.py").read_text() + PLANTING_MODEL
    plan = write_plan(tmp_path, {1: {"write": {"model.py": model}, "strategy": "plant a scoring pyc"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    (row,) = doc["rounds"]
    assert row["steps"]["eval"]["status"] == "pass", row
    assert 0.07 < row["metric"] < 0.08  # the genuine score of the unchanged config, not the planted 1.0
    assert "__pycache__/scoring." in row["note"] and "standing in for Fixed code" in row["note"]
    assert not list((repo / "__pycache__").glob("scoring.*.pyc"))
    assert row["action"] == "rollback" and loop_commits(repo, "autoresearch/t1") == []


def test_an_ignored_extension_module_next_to_a_fixed_module_fails_the_round(repo, tmp_path):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    plan = write_plan(tmp_path, {1: {"write": {f"scoring{suffix}": "not really an ELF file",
                                               "config.json": config_text(BETTER_CONFIG)}}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    (row,) = doc["rounds"]
    assert proc.returncode == 1
    assert row["compliance"] == "violation" and f"scoring{suffix}" in row["steps"]["compliance"]["message"]
    assert "instead of the Fixed scoring.py" in row["steps"]["compliance"]["message"]
    assert row["steps"]["train"]["status"] == "skip"
    assert not (repo / f"scoring{suffix}").exists()  # a violating file does not survive the rollback


def test_import_shadows_finds_what_python_would_load_instead_of_fixed_modules(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "metric.py").write_text("")
    (tmp_path / "pkg" / "__pycache__" / "metric.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "pkg" / "other.py").write_text("")  # tracked, not Fixed: not our business
    (tmp_path / "helper").mkdir()
    (tmp_path / "helper" / "__init__.py").write_text("")
    (tmp_path / "helper.py").write_text("")
    (tmp_path / "json.py").write_text("")  # new, shadows the standard library for scripts at the root
    (tmp_path / "typing.py").write_text("")  # tracked in the base: the project's own module
    fixed = ["pkg/metric.py", "helper.py"]
    base = {"pkg/metric.py", "pkg/other.py", "helper.py", "typing.py"}
    bytecode, shadows = import_shadows(tmp_path, fixed, base, {"pkg"})
    assert bytecode == ["pkg/__pycache__/metric.cpython-311.pyc"]
    found = {path: why for path, why in shadows}
    assert set(found) == {"helper/", "json.py"}
    assert "instead of the Fixed helper.py" in found["helper/"] and "standard-library module 'json'" in found["json.py"]


def test_edits_hidden_from_git_are_caught_and_rolled_back_and_ignored_outputs_kept(repo, tmp_path):
    evaluate = (repo / "evaluate.py").read_bytes()
    (repo / "checkpoints").mkdir()
    (repo / "checkpoints" / "keep.bin").write_bytes(b"an ignored output of an earlier run")
    plan = write_plan(tmp_path, {1: {
        "append": {"evaluate.py": "\n# tweak\n", ".git/info/exclude": "notes.txt\n"},
        "write": {"notes.txt": "hidden by info/exclude", "scratch/new_module.py": "x = 1\n"},
        "shell": ["git update-index --assume-unchanged evaluate.py"],
    }})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    (row,) = doc["rounds"]
    message = row["steps"]["compliance"]["message"]
    assert row["compliance"] == "violation" and "evaluate.py" in message and "notes.txt" in message
    assert (repo / "evaluate.py").read_bytes() == evaluate
    assert not (repo / "notes.txt").exists() and not (repo / "scratch").exists()
    assert (repo / "checkpoints" / "keep.bin").read_bytes() == b"an ignored output of an earlier run"
    assert "h evaluate.py" not in git(repo, "ls-files", "-v")  # the assume-unchanged bit is gone too
    assert status_porcelain(repo) == ""
    patch = (repo / row["patch"]).read_text()
    assert "# tweak" in patch and "new_module.py" in patch


def test_the_protocol_itself_is_fixed(repo, tmp_path):
    plan = write_plan(tmp_path, {1: {"append": {"autoresearch-protocol.md": "\nfixed files are optional\n"}}})
    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)
    (row,) = doc["rounds"]
    assert row["compliance"] == "violation" and "autoresearch-protocol.md" in row["result"]
    assert "optional" not in (repo / "autoresearch-protocol.md").read_text()
    assert json.loads((repo / "config.json").read_text())["lr"] == 0.02


def test_fixed_files_check_follows_a_moving_base(repo, capsys):
    """The shadow index moves to a new base even when the work tree differs from the old one (each improving round)."""
    from pytest_spml import cli

    git(repo, "checkout", "-q", "-b", "autoresearch/x")
    (repo / "config.json").write_text(config_text(BETTER_CONFIG))
    assert cli.main(["fixed-files", "--repo", str(repo)]) == 0  # the shadow index caches config.json's old stat
    git(repo, "commit", "-q", "-am", "round 1")
    (repo / "model.py").write_text((repo / "model.py").read_text() + "# more\n")
    assert cli.main(["fixed-files", "--repo", str(repo)]) == 0
    (repo / "train.py").write_text("print('edited')\n")
    assert cli.main(["fixed-files", "--repo", str(repo), "--format", "json"]) == 1
    assert [v["path"] for v in json.loads(capsys.readouterr().out.splitlines()[-1])["violations"]] == ["train.py"]
