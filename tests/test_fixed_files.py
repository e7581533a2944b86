"""Black-box tests for ``spml fixed-files`` (the Fixed-file compliance gate).

Every test builds a real git repository under ``tmp_path`` and runs the
command either in-process (``pytest_spml.cli.main``) or as a subprocess.
The assertions only use the documented contract: the exit code (0 compliant,
1 violation, 2 bad input) and the JSON document's ``compliant``,
``violations[].path/reason/kinds``, ``enforced``, ``notes`` and ``error`` keys.

The repository is an ML-ish project whose protocol freezes ``train.py``,
``eval/`` and ``data/`` and lets ``model.py`` and ``configs/*.yaml`` change.
Many tests first prove that *git itself* has been fooled (``git status`` is
empty) and then that the gate is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_spml import cli

PROTOCOL = "autoresearch-protocol.md"
BRANCH = "autoresearch/r1"

PROTOCOL_TEXT = """\
---
research_question: Does a wider hidden layer lower validation loss on the toy dataset?
target: 0.30
baseline: 0.42
max_rounds: 5
fixed:
  files:
    - train.py
    - eval/
    - data/
  time_limit: 5m
  epoch_limit: 3
variable:
  files:
    - model.py
    - configs/*.yaml
  range:
    hidden_size: [64, 512]
    lr: [0.0001, 0.01]
train:
  command: python train.py --config configs/hparams.yaml
eval:
  command: python -m eval.evaluate
  metric: val_loss
  direction: minimize
---

# Autoresearch protocol

Only the model and its hyper-parameters may change between rounds.
"""

BASE_FILES: dict[str, bytes] = {
    "train.py": (
        b'"""Train the toy model for a fixed budget (Fixed)."""\n'
        b"import yaml\n\n"
        b"from model import build_model\n\n\n"
        b'def main(config="configs/hparams.yaml"):\n'
        b"    with open(config) as fh:\n"
        b"        hparams = yaml.safe_load(fh)\n"
        b"    return build_model(**hparams)\n\n\n"
        b'if __name__ == "__main__":\n'
        b"    main()\n"
    ),
    "eval/__init__.py": b"",
    "eval/evaluate.py": (
        b'"""Held-out evaluation: the metric the loop optimises (Fixed)."""\n'
        b'REVISION = "$Id$"\n\n\n'
        b"def evaluate(predictions, labels):\n"
        b"    correct = sum(int(p == y) for p, y in zip(predictions, labels))\n"
        b"    return 1.0 - correct / max(len(labels), 1)\n"
    ),
    "data/prepare.py": (
        b'"""Deterministic split of the toy dataset (Fixed)."""\n'
        b"SEED = 1234\n\n\n"
        b"def split(rows):\n"
        b"    return rows[: len(rows) * 4 // 5], rows[len(rows) * 4 // 5 :]\n"
    ),
    "model.py": (
        b'"""The model under study (Variable)."""\n\n\n'
        b"def build_model(hidden_size=128, lr=0.001):\n"
        b'    return {"hidden_size": hidden_size, "lr": lr}\n'
    ),
    "configs/hparams.yaml": b"hidden_size: 128\nlr: 0.001\n",
    ".gitignore": b"__pycache__/\n*.pyc\ncheckpoints/\nruns/\n*.log\n",
    PROTOCOL: PROTOCOL_TEXT.encode(),
}

skip_on_windows = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes, symlinks and file names")


# --------------------------------------------------------------------------- helpers


def _git(cwd: Path, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=cwd, input=input, capture_output=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout


@dataclass
class Repo:
    path: Path
    base: str = ""

    def git(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        return _git(self.path, *args, input=input, check=check)

    def write(self, rel: str | bytes, data: bytes | str) -> Path:
        target = self._abs(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        return target

    def append(self, rel: str, data: str) -> None:
        with open(self._abs(rel), "ab") as fh:
            fh.write(data.encode())

    def read(self, rel: str) -> bytes:
        return self._abs(rel).read_bytes()

    def _abs(self, rel: str | bytes) -> Path:
        if isinstance(rel, bytes):
            return Path(os.fsdecode(os.path.join(os.fsencode(self.path), rel)))
        return self.path / rel

    def commit(self, message: str = "change", *paths: str) -> str:
        self.git("add", "-A", *paths)
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").decode().strip()

    def status(self) -> str:
        return self.git("status", "--porcelain", "--untracked-files=all").decode()


def make_repo(path: Path, files: dict[str, bytes] | None = None, branch: str = BRANCH) -> Repo:
    path.mkdir(parents=True, exist_ok=True)
    repo = Repo(path)
    repo.git("init", "-q")
    repo.git("symbolic-ref", "HEAD", f"refs/heads/{branch}")
    for rel, data in (BASE_FILES if files is None else files).items():
        repo.write(rel, data)
    repo.base = repo.commit("base")
    return repo


@dataclass
class Result:
    code: int
    out: str
    err: str
    doc: dict

    @property
    def paths(self) -> set[str]:
        return {v["path"] for v in self.doc.get("violations", [])}

    def describe(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def _parse(code: int, out: str, err: str) -> Result:
    try:
        doc = json.loads(out) if out.strip() else {}
    except json.JSONDecodeError as exc:  # pragma: no cover - reported as a failure below
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{out}\nstderr:\n{err}") from None
    return Result(code, out, err, doc)


def spml(capsys, repo: Repo | Path, *args: str, protocol: str | None = PROTOCOL, fmt: str = "json") -> Result:
    """Run ``spml fixed-files`` in-process; the test's cwd is the repository (see the fixtures)."""
    root = repo.path if isinstance(repo, Repo) else repo
    argv = ["fixed-files", "--repo", str(root), *args]
    if protocol is not None:
        argv += ["--protocol", protocol]
    if fmt:
        argv += ["--format", fmt]
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    if fmt == "json":
        return _parse(code, captured.out, captured.err)
    return Result(code, captured.out, captured.err, {})


def spml_subprocess(cwd: Path, *args: str, script: bool = False) -> Result:
    if script:
        exe = Path(sys.executable).with_name("spml.exe" if os.name == "nt" else "spml")
        if not exe.exists():
            pytest.fail(f"no spml console script next to {sys.executable}: install the package (pip install -e .)")
        cmd = [str(exe)]
    else:
        cmd = [sys.executable, "-m", "pytest_spml.cli"]
    proc = subprocess.run([*cmd, "fixed-files", *args], cwd=cwd, capture_output=True, timeout=300)
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", errors="replace")
    if "--format" in args and args[args.index("--format") + 1] == "json":
        return _parse(proc.returncode, out, err)
    return Result(proc.returncode, out, err, {})


def _check_doc_shape(res: Result) -> None:
    doc = res.doc
    assert isinstance(doc.get("compliant"), bool), res.describe()
    assert isinstance(doc.get("violations"), list), res.describe()
    assert isinstance(doc.get("enforced"), bool), res.describe()
    for v in doc["violations"]:
        assert isinstance(v.get("path"), str) and v["path"], v
        assert isinstance(v.get("reason"), str) and v["reason"].strip(), v
        assert isinstance(v.get("kinds"), list) and v["kinds"], v
        assert all(isinstance(k, str) and k for k in v["kinds"]), v
    assert "Traceback" not in res.err, res.describe()


def assert_caught(res: Result, *expected: str, exact: bool = True) -> None:
    """Exit 1, compliant false, enforced, and exactly (or at least) these paths reported."""
    _check_doc_shape(res)
    assert res.code == 1, res.describe()
    assert res.doc["compliant"] is False, res.describe()
    assert res.doc["enforced"] is True, res.describe()
    if exact:
        assert res.paths == set(expected), res.describe()
    else:
        assert set(expected) <= res.paths, res.describe()


def assert_compliant(res: Result, enforced: bool = True) -> None:
    _check_doc_shape(res)
    assert res.code == 0, res.describe()
    assert res.doc["compliant"] is True, res.describe()
    assert res.doc["violations"] == [], res.describe()
    assert res.doc["enforced"] is enforced, res.describe()


def assert_bad_input(res: Result, *needles: str, line: int | None = None, json_doc: bool = True) -> None:
    """Exit 2, one stderr line (no traceback) naming the problem; JSON error doc on stdout."""
    assert res.code == 2, res.describe()
    assert "Traceback" not in res.err, res.describe()
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.describe()
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named in: {lines[0]}"
    if line is not None:
        match = re.search(re.escape(PROTOCOL) + r":(\d+)", lines[0])
        assert match, f"no '{PROTOCOL}:LINE' in: {lines[0]}"
        assert int(match.group(1)) == line, f"expected line {line}: {lines[0]}"
    if json_doc:
        assert res.doc.get("error"), res.describe()


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory, monkeypatch):
    """Keep the developer's git configuration (and any hook environment) out of the tests."""
    home = tmp_path_factory.mktemp("gitconfig")
    global_config = home / "gitconfig"
    global_config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))  # default core.excludesFile location
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CEILING_DIRECTORIES",
                "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(var, raising=False)
    return global_config


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Repo:
    """The ML-ish repository committed as the base on ``autoresearch/r1``; cwd is its root."""
    r = make_repo(tmp_path / "proj")
    monkeypatch.chdir(r.path)
    assert r.status() == ""
    return r


# =========================================================================== must PASS


def test_clean_tree_passes(capsys, repo):
    assert_compliant(spml(capsys, repo))


def test_clean_tree_passes_without_cache(capsys, repo):
    assert_compliant(spml(capsys, repo, "--no-cache"))


def test_edits_to_variable_files_pass(capsys, repo):
    repo.write("model.py", repo.read("model.py").replace(b"hidden_size=128", b"hidden_size=256"))
    repo.write("configs/hparams.yaml", b"hidden_size: 256\nlr: 0.003\n")
    assert_compliant(spml(capsys, repo))


def test_staged_edits_to_variable_files_pass(capsys, repo):
    repo.append("model.py", "\n# wider\n")
    repo.write("configs/hparams.yaml", b"hidden_size: 512\nlr: 0.001\n")
    repo.git("add", "model.py", "configs/hparams.yaml")
    assert_compliant(spml(capsys, repo))
    assert_compliant(spml(capsys, repo, "--staged"))


def test_new_variable_file_passes(capsys, repo):
    repo.write("configs/new.yaml", b"hidden_size: 64\n")
    assert_compliant(spml(capsys, repo))
    repo.git("add", "configs/new.yaml")
    assert_compliant(spml(capsys, repo))


def test_deleting_a_variable_file_passes(capsys, repo):
    (repo.path / "configs/hparams.yaml").unlink()
    assert_compliant(spml(capsys, repo))
    repo.git("rm", "-q", "--cached", "configs/hparams.yaml")
    assert_compliant(spml(capsys, repo))


def test_run_outputs_ignored_by_the_base_gitignore_pass(capsys, repo):
    repo.write("checkpoints/ckpt.pt", os.urandom(256))
    repo.write("runs/x/events.out", b"\x00event\x01")
    repo.write("train.log", b"epoch 1 loss 0.9\n")
    repo.write("configs/sweep.log", b"sweep\n")
    assert_compliant(spml(capsys, repo))
    assert_compliant(spml(capsys, repo, "--no-cache"))


def test_pyc_files_outside_fixed_folders_pass(capsys, repo):
    repo.write("__pycache__/model.cpython-311.pyc", b"\x00pyc")
    repo.write("model.pyc", b"\x00pyc")
    repo.write("configs/__pycache__/hparams.cpython-311.pyc", b"\x00pyc")
    repo.write("tools/__pycache__/helper.cpython-311.pyc", b"\x00pyc")
    assert_compliant(spml(capsys, repo))
    assert_compliant(spml(capsys, repo, "--no-cache"))


def test_variable_only_commit_after_base_passes(capsys, repo):
    repo.write("model.py", repo.read("model.py") + b"\n# round 1\n")
    repo.write("configs/round1.yaml", b"hidden_size: 384\n")
    repo.commit("round 1")
    repo.write("configs/hparams.yaml", b"hidden_size: 384\nlr: 0.002\n")
    repo.commit("round 2")
    assert_compliant(spml(capsys, repo, "--base", repo.base))


def test_variable_commit_then_delete_after_base_passes(capsys, repo):
    repo.write("configs/tmp.yaml", b"a: 1\n")
    repo.commit("add")
    (repo.path / "configs/tmp.yaml").unlink()
    repo.commit("remove")
    assert_compliant(spml(capsys, repo, "--base", repo.base))


# =========================================================================== must be CAUGHT: the work tree


def test_tracked_edit_of_fixed_file_is_caught(capsys, repo):
    repo.append("eval/evaluate.py", "\ndef evaluate(predictions, labels):\n    return 0.0\n")
    assert_caught(spml(capsys, repo), "eval/evaluate.py")


def test_tracked_edit_of_fixed_file_is_caught_without_cache(capsys, repo):
    repo.append("train.py", "\n# five more epochs\n")
    assert_caught(spml(capsys, repo, "--no-cache"), "train.py")


def test_edit_of_fixed_file_next_to_variable_edits_reports_only_the_fixed_one(capsys, repo):
    repo.append("model.py", "\n# wider\n")
    repo.write("configs/new.yaml", b"hidden_size: 64\n")
    repo.append("data/prepare.py", "\nSEED = 1\n")
    assert_caught(spml(capsys, repo), "data/prepare.py")


@pytest.mark.parametrize("how", ["worktree", "git rm"])
def test_deleting_a_fixed_file_is_caught(capsys, repo, how):
    if how == "worktree":
        (repo.path / "data/prepare.py").unlink()
    else:
        repo.git("rm", "-q", "data/prepare.py")
    assert_caught(spml(capsys, repo), "data/prepare.py")


def test_deleting_a_whole_fixed_folder_is_caught(capsys, repo):
    shutil.rmtree(repo.path / "eval")
    assert_caught(spml(capsys, repo), "eval/evaluate.py", "eval/__init__.py")


@skip_on_windows
def test_mode_change_of_fixed_file_is_caught(capsys, repo):
    os.chmod(repo.path / "train.py", 0o755)
    assert_caught(spml(capsys, repo), "train.py")


@skip_on_windows
def test_mode_change_is_caught_even_when_git_ignores_modes(capsys, repo):
    repo.git("config", "core.fileMode", "false")
    os.chmod(repo.path / "train.py", 0o755)
    assert repo.status() == ""  # git no longer sees it
    assert_caught(spml(capsys, repo), "train.py")


@skip_on_windows
def test_fixed_file_replaced_by_symlink_is_caught(capsys, repo):
    # A symlink to a copy with the very same bytes: content equal, type not.
    repo.write("elsewhere/train.py", repo.read("train.py"))
    (repo.path / "train.py").unlink()
    os.symlink("elsewhere/train.py", repo.path / "train.py")
    res = spml(capsys, repo)
    assert_caught(res, "train.py", exact=False)
    assert res.paths <= {"train.py", "elsewhere/train.py"}, res.describe()


@skip_on_windows
def test_fixed_symlink_retargeted_is_caught(capsys, repo):
    os.symlink("prepare.py", repo.path / "data/latest.py")
    repo.base = repo.commit("add a symlink in data/")
    assert_compliant(spml(capsys, repo))
    (repo.path / "data/latest.py").unlink()
    os.symlink("../model.py", repo.path / "data/latest.py")
    assert_caught(spml(capsys, repo), "data/latest.py")


@skip_on_windows
def test_fixed_symlink_replaced_by_regular_file_is_caught(capsys, repo):
    os.symlink("prepare.py", repo.path / "data/latest.py")
    repo.base = repo.commit("add a symlink in data/")
    (repo.path / "data/latest.py").unlink()
    repo.write("data/latest.py", b"prepare.py")  # same bytes as the link target string
    assert_caught(spml(capsys, repo), "data/latest.py")


@skip_on_windows
def test_fixed_folder_replaced_by_symlink_to_identical_copy_is_caught(capsys, repo, tmp_path):
    # lstat("eval/evaluate.py") follows the 'eval' link, so a naive reader sees unchanged bytes.
    outside = tmp_path / "outside_eval"
    shutil.copytree(repo.path / "eval", outside)
    shutil.rmtree(repo.path / "eval")
    os.symlink(outside, repo.path / "eval")
    res = spml(capsys, repo)
    assert_caught(res, exact=False)
    assert any(p == "eval" or p.startswith("eval/") for p in res.paths), res.describe()


def test_fixed_file_replaced_by_folder_is_caught(capsys, repo):
    (repo.path / "train.py").unlink()
    repo.write("train.py/__main__.py", repo.read("model.py"))
    res = spml(capsys, repo)
    assert_caught(res, "train.py", exact=False)
    assert res.paths <= {"train.py", "train.py/__main__.py"}, res.describe()


@pytest.mark.parametrize("how", ["mv", "git mv"])
def test_rename_of_fixed_file_reports_old_and_new_path(capsys, repo, how):
    if how == "mv":
        os.rename(repo.path / "train.py", repo.path / "train_old.py")
    else:
        repo.git("mv", "train.py", "train_old.py")
    assert_caught(spml(capsys, repo), "train.py", "train_old.py")


def test_rename_of_fixed_file_into_a_variable_path_still_reports_the_old_path(capsys, repo):
    repo.git("mv", "eval/evaluate.py", "configs/evaluate.yaml")
    assert_caught(spml(capsys, repo), "eval/evaluate.py")


@pytest.mark.parametrize("path", ["utils.py", "configs/extra.json", "configs/sub/deep.yaml", "lib/model.py",
                                  "notes/train.py"])
def test_new_untracked_file_outside_variable_globs_is_caught(capsys, repo, path):
    # configs/*.yaml does not reach into sub-folders and model.py is anchored at the root.
    repo.write(path, b"x = 1\n")
    assert_caught(spml(capsys, repo), path)


def test_new_staged_file_outside_variable_globs_is_caught(capsys, repo):
    repo.write("utils.py", b"x = 1\n")
    repo.git("add", "utils.py")
    assert_caught(spml(capsys, repo), "utils.py")


@pytest.mark.parametrize("staged", [False, True], ids=["untracked", "staged"])
def test_new_file_inside_fixed_folder_is_caught(capsys, repo, staged):
    repo.write("eval/helper.py", b"def leak():\n    return open('data/test.csv').read()\n")
    if staged:
        repo.git("add", "eval/helper.py")
    assert_caught(spml(capsys, repo), "eval/helper.py")


def test_new_files_in_a_new_nested_folder_inside_fixed_folder_are_caught(capsys, repo):
    repo.write("data/extra/more/rows.csv", b"1,2\n")
    res = spml(capsys, repo)
    assert_caught(res, "data/extra/more/rows.csv")


def test_worktree_gitignore_cannot_whitelist_new_files(capsys, repo):
    # The work tree's own .gitignore is writable by the agent; only the base's counts.
    repo.append(".gitignore", "helper.py\nscratch/\n")
    repo.write("helper.py", b"x = 1\n")
    repo.write("scratch/.gitignore", b"*\n")
    repo.write("scratch/cheat.py", b"x = 2\n")
    repo.write("configs/.gitignore", b"*.py\n")
    repo.write("configs/cheat.py", b"x = 3\n")
    res = spml(capsys, repo)
    assert_caught(res, ".gitignore", "helper.py", "scratch/cheat.py", "configs/cheat.py", exact=False)
    assert res.paths <= {".gitignore", "helper.py", "scratch/.gitignore", "scratch/cheat.py",
                         "configs/.gitignore", "configs/cheat.py"}, res.describe()


@pytest.mark.parametrize("path", ["eval/__pycache__/evaluate.cpython-311.pyc", "eval/debug.log",
                                  "data/checkpoints/ckpt.pt", "data/prepare.pyc"])
def test_ignored_file_inside_fixed_folder_is_caught(capsys, repo, path):
    # Ignored by the base .gitignore, but Fixed folders may not gain files (a planted .pyc runs first).
    repo.write(path, b"\x00planted")
    assert "eval" not in repo.status() and "data" not in repo.status()  # git does not list it
    assert_caught(spml(capsys, repo), path)
    assert_caught(spml(capsys, repo, "--no-cache"), path)


# =========================================================================== must be CAUGHT: the index


def test_staged_change_that_differs_from_the_work_tree_is_caught(capsys, repo):
    original = repo.read("eval/evaluate.py")
    repo.write("eval/evaluate.py", original.replace(b"return 1.0 -", b"return 0.0 *"))
    repo.git("add", "eval/evaluate.py")
    repo.write("eval/evaluate.py", original)  # the work tree looks untouched again
    assert repo.read("eval/evaluate.py") == original
    assert_caught(spml(capsys, repo), "eval/evaluate.py")
    assert_caught(spml(capsys, repo, "--staged"), "eval/evaluate.py")


@pytest.mark.parametrize("how", ["content", "mode"])
def test_index_differs_while_work_tree_has_base_bytes_is_caught(capsys, repo, how):
    original = repo.read("train.py")
    if how == "content":
        blob = repo.git("hash-object", "-w", "--stdin", input=original + b"EPOCHS = 100\n").decode().strip()
        repo.git("update-index", "--cacheinfo", f"100644,{blob},train.py")
    else:
        repo.git("update-index", "--chmod=+x", "train.py")
    assert repo.read("train.py") == original
    assert_caught(spml(capsys, repo), "train.py")


def test_git_rm_cached_of_fixed_file_is_caught(capsys, repo):
    repo.git("rm", "-q", "--cached", "data/prepare.py")
    assert (repo.path / "data/prepare.py").read_bytes() == BASE_FILES["data/prepare.py"]
    assert_caught(spml(capsys, repo), "data/prepare.py")
    assert_caught(spml(capsys, repo, "--staged"), "data/prepare.py")


# =========================================================================== must be CAUGHT: commits after the base


@pytest.mark.parametrize("change", ["modify", "delete", "add", "chmod"])
def test_commit_after_base_touching_fixed_path_is_caught(capsys, repo, change):
    if change == "modify":
        repo.append("eval/evaluate.py", "\n# tweak\n")
        expected = "eval/evaluate.py"
    elif change == "delete":
        (repo.path / "data/prepare.py").unlink()
        expected = "data/prepare.py"
    elif change == "add":
        repo.write("eval/extra.py", b"x = 1\n")
        expected = "eval/extra.py"
    else:
        if os.name == "nt":
            pytest.skip("POSIX modes")
        os.chmod(repo.path / "train.py", 0o755)
        expected = "train.py"
    repo.commit("sneaky")
    assert repo.status() == ""
    assert_caught(spml(capsys, repo, "--base", repo.base), expected)


def test_commit_that_edits_then_reverts_fixed_file_is_caught(capsys, repo):
    original = repo.read("eval/evaluate.py")
    repo.write("eval/evaluate.py", original + b"\nLEAK = open('data/test.csv').read()\n")
    repo.commit("edit eval")
    repo.write("eval/evaluate.py", original)
    repo.commit("revert eval")
    assert repo.git("diff", repo.base, "HEAD") == b""  # the trees are identical
    assert_caught(spml(capsys, repo, "--base", repo.base), "eval/evaluate.py")


def test_commit_that_adds_then_removes_file_in_fixed_folder_is_caught(capsys, repo):
    repo.write("eval/tmp_cheat.py", b"x = 1\n")
    repo.commit("add")
    (repo.path / "eval/tmp_cheat.py").unlink()
    repo.commit("remove")
    assert_caught(spml(capsys, repo, "--base", repo.base), "eval/tmp_cheat.py")


def test_base_given_as_branch_name_or_short_sha_works(capsys, repo):
    repo.git("branch", "baseline")
    repo.append("train.py", "\n# more epochs\n")
    repo.commit("sneaky")
    assert_caught(spml(capsys, repo, "--base", "baseline"), "train.py")
    assert_caught(spml(capsys, repo, "--base", repo.base[:10]), "train.py")
    assert_caught(spml(capsys, repo, "--base", "HEAD~1"), "train.py")


# =========================================================================== must be CAUGHT: git told not to look


@pytest.mark.parametrize("flag", ["--assume-unchanged", "--skip-worktree"])
def test_edit_hidden_by_update_index_flag_is_caught(capsys, repo, flag):
    repo.git("update-index", flag, "eval/evaluate.py")
    repo.append("eval/evaluate.py", "\ndef evaluate(predictions, labels):\n    return 0.0\n")
    assert repo.status() == ""  # git was fooled
    assert repo.git("diff", "HEAD") == b""
    assert_caught(spml(capsys, repo), "eval/evaluate.py")
    assert_caught(spml(capsys, repo, "--no-cache"), "eval/evaluate.py")


@pytest.mark.parametrize("flag", ["--assume-unchanged", "--skip-worktree"])
def test_mode_change_hidden_by_update_index_flag_is_caught(capsys, repo, flag):
    if os.name == "nt":
        pytest.skip("POSIX modes")
    repo.git("update-index", flag, "train.py")
    os.chmod(repo.path / "train.py", 0o755)
    assert repo.status() == ""
    assert_caught(spml(capsys, repo), "train.py")


def test_edit_hidden_by_clean_filter_is_caught(capsys, repo):
    (repo.path / ".git/info").mkdir(exist_ok=True)
    (repo.path / ".git/info/attributes").write_text("eval/evaluate.py filter=hide\n")
    repo.git("config", "filter.hide.clean", "cat >/dev/null; git show HEAD:eval/evaluate.py")
    repo.git("config", "filter.hide.smudge", "cat")
    original = repo.read("eval/evaluate.py")
    time.sleep(0.01)
    # Same size: git only asks the filter when the size did not change.
    repo.write("eval/evaluate.py", original.replace(b"return 1.0 -", b"return 0.0 *"))
    assert repo.read("eval/evaluate.py") != original
    assert repo.status() == ""  # git was fooled: the clean filter hands it the base bytes
    assert repo.git("diff", "HEAD") == b""
    assert_caught(spml(capsys, repo), "eval/evaluate.py")
    assert_caught(spml(capsys, repo, "--no-cache"), "eval/evaluate.py")


def test_edit_hidden_by_clean_filter_declared_in_worktree_gitattributes_is_caught(capsys, repo):
    # A new .gitattributes is itself a new non-variable file; the edit must be reported too.
    repo.write(".gitattributes", b"train.py filter=hide\n")
    repo.git("config", "filter.hide.clean", "cat >/dev/null; git show HEAD:train.py")
    original = repo.read("train.py")
    edited = original.replace(b"    main()\n", b"    exit()\n")  # same size: git trusts the filter
    assert edited != original and len(edited) == len(original)
    repo.write("train.py", edited)
    assert "train.py" not in repo.status()
    assert_caught(spml(capsys, repo), "train.py", ".gitattributes")


def test_edit_hidden_by_ident_attribute_in_info_attributes_is_caught(capsys, repo):
    # `ident` collapses "$Id: ... $" back to "$Id$" when git hashes the file.
    (repo.path / ".git/info").mkdir(exist_ok=True)
    (repo.path / ".git/info/attributes").write_text("eval/*.py ident\n")
    original = repo.read("eval/evaluate.py")
    cheat = original.replace(
        b'REVISION = "$Id$"',
        b'REVISION = "$Id: " + str(__import__("os").environ.setdefault("EVAL_CHEAT", "1")) + " $"',
    )
    assert cheat != original
    repo.write("eval/evaluate.py", cheat)
    repo.git("add", "-A")  # git hashes it through `ident`: the index keeps the base blob
    assert repo.status() == ""  # git was fooled
    assert repo.git("diff", "HEAD") == b""
    assert_caught(spml(capsys, repo), "eval/evaluate.py")


def test_edit_hidden_by_text_attribute_in_info_attributes_is_caught(capsys, repo):
    # `text` makes git normalise CRLF to LF, so a CRLF rewrite is invisible to git.
    (repo.path / ".git/info").mkdir(exist_ok=True)
    (repo.path / ".git/info/attributes").write_text("data/*.py text\n")
    original = repo.read("data/prepare.py")
    repo.write("data/prepare.py", original.replace(b"\n", b"\r\n"))
    repo.git("add", "-A")  # git normalises it: the index keeps the base blob
    assert repo.status() == ""  # git was fooled
    assert repo.git("diff", "HEAD") == b""
    assert_caught(spml(capsys, repo), "data/prepare.py")


def test_new_files_hidden_by_info_exclude_are_caught(capsys, repo):
    (repo.path / ".git/info").mkdir(exist_ok=True)
    (repo.path / ".git/info/exclude").write_text("sitecustomize.py\neval/_cheat.py\n")
    repo.write("sitecustomize.py", b"import os\nos.environ['EVAL_CHEAT'] = '1'\n")
    repo.write("eval/_cheat.py", b"x = 1\n")
    assert repo.status() == ""  # git was fooled
    assert_caught(spml(capsys, repo), "sitecustomize.py", "eval/_cheat.py")


def test_new_files_hidden_by_global_excludes_file_are_caught(capsys, repo, isolated_git, tmp_path):
    excludes = tmp_path / "global-excludes"
    excludes.write_text("usercustomize.py\n*.csv\n")
    isolated_git.write_text(f"[core]\n\texcludesFile = {excludes.as_posix()}\n")
    repo.write("usercustomize.py", b"import os\n")
    repo.write("data/labels.csv", b"1\n0\n")
    assert repo.status() == ""  # git was fooled
    assert_caught(spml(capsys, repo), "usercustomize.py", "data/labels.csv")


def test_new_files_hidden_by_default_xdg_excludes_file_are_caught(capsys, repo, tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    (xdg / "git").mkdir(parents=True)
    (xdg / "git/ignore").write_text("conftest.py\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    repo.write("conftest.py", b"import os\n")
    assert repo.status() == ""
    assert_caught(spml(capsys, repo), "conftest.py")


@skip_on_windows
def test_edit_hidden_by_a_lying_fsmonitor_is_caught(capsys, repo):
    # core.fsmonitor names a hook that always answers "nothing changed".
    liar = repo.path / ".git" / "liar-fsmonitor"
    liar.write_text("#!/bin/sh\nprintf 'token\\0'\n")
    liar.chmod(0o755)
    repo.git("config", "core.fsmonitor", str(liar))
    time.sleep(1.1)  # out of git's racy-timestamp window
    repo.status()
    repo.git("update-index", "--fsmonitor")
    repo.status()  # records the token and marks every entry fsmonitor-valid
    repo.append("eval/evaluate.py", "\ndef evaluate(predictions, labels):\n    return 0.0\n")
    assert repo.status() == ""  # git was fooled
    assert_caught(spml(capsys, repo), "eval/evaluate.py")


def test_same_size_same_mtime_edit_hidden_by_check_stat_minimal_is_caught(capsys, repo):
    # With checkStat=minimal and trustctime=false git compares only size and mtime seconds.
    repo.git("config", "core.checkStat", "minimal")
    repo.git("config", "core.trustctime", "false")
    time.sleep(1.1)
    repo.git("read-tree", "HEAD")
    repo.git("update-index", "-q", "--refresh")  # fresh, non-racy stat data in git's index
    _same_size_edit_keeping_mtime(repo.path / "train.py")
    assert repo.status() == ""  # git was fooled
    assert_caught(spml(capsys, repo), "train.py")


def test_edit_hidden_by_a_replace_ref_on_the_base_commit_is_caught(capsys, repo):
    # `git replace BASE FAKE` makes every git command read FAKE's tree (here with a widened
    # protocol and an edited evaluator) whenever it asks for BASE.
    repo.write(PROTOCOL, _widen(repo.read(PROTOCOL)))
    repo.write("eval/evaluate.py", repo.read("eval/evaluate.py").replace(b"return 1.0 -", b"return 0.0 *"))
    repo.git("add", "-A")
    tree = repo.git("write-tree").decode().strip()
    fake = repo.git("commit-tree", tree, "-m", "base").decode().strip()
    repo.git("replace", repo.base, fake)
    assert repo.status() == ""  # git was fooled
    assert repo.git("diff", repo.base) == b""
    assert repo.head() == repo.base
    assert_caught(spml(capsys, repo), PROTOCOL, "eval/evaluate.py")
    assert_caught(spml(capsys, repo, "--base", repo.base), PROTOCOL, "eval/evaluate.py")
    assert_caught(spml(capsys, repo, "--no-cache"), PROTOCOL, "eval/evaluate.py")


def test_edit_then_revert_hidden_by_a_replace_graft_is_caught(capsys, repo):
    original = repo.read("eval/evaluate.py")
    repo.write("eval/evaluate.py", original + b"\nLEAK = open('data/test.csv').read()\n")
    repo.commit("edit eval")
    repo.write("eval/evaluate.py", original)
    head = repo.commit("revert eval")
    repo.git("replace", "--graft", "HEAD", repo.base)  # git now sees one empty commit after the base
    assert repo.git("log", "--format=%H", "--name-only", f"{repo.base}..HEAD").decode().split() == [head]
    assert_caught(spml(capsys, repo, "--base", repo.base), "eval/evaluate.py")


# =========================================================================== the protocol itself


def test_editing_the_protocol_is_caught(capsys, repo):
    text = repo.read(PROTOCOL).replace(b"max_rounds: 5", b"max_rounds: 50")
    repo.write(PROTOCOL, text)
    assert_caught(spml(capsys, repo), PROTOCOL)


def test_protocol_is_fixed_even_when_a_variable_glob_matches_it(capsys, tmp_path, monkeypatch):
    files = dict(BASE_FILES)
    files[PROTOCOL] = PROTOCOL_TEXT.replace("    - configs/*.yaml\n", "    - configs/*.yaml\n    - '*.md'\n").encode()
    repo = make_repo(tmp_path / "proj", files)
    monkeypatch.chdir(repo.path)
    repo.write("NOTES.md", b"notes\n")
    assert_compliant(spml(capsys, repo))
    repo.write(PROTOCOL, repo.read(PROTOCOL) + b"\nMore prose.\n")
    assert_caught(spml(capsys, repo), PROTOCOL)


def _widen(text: bytes) -> bytes:
    widened = text.replace(b"    - configs/*.yaml\n", b"    - configs/*.yaml\n    - eval/\n    - train.py\n")
    assert widened != text
    return widened.replace(b"    - train.py\n    - eval/\n    - data/\n", b"    - data/\n", 1)


def test_widening_the_protocol_in_the_work_tree_does_not_free_fixed_files(capsys, repo):
    repo.write(PROTOCOL, _widen(repo.read(PROTOCOL)))
    repo.append("eval/evaluate.py", "\n# now 'variable'\n")
    repo.append("train.py", "\n# now 'variable'\n")
    assert_caught(spml(capsys, repo), PROTOCOL, "eval/evaluate.py", "train.py")


def test_widening_the_protocol_in_a_commit_does_not_free_fixed_files(capsys, repo):
    repo.write(PROTOCOL, _widen(repo.read(PROTOCOL)))
    repo.commit("widen the protocol")
    repo.append("eval/evaluate.py", "\n# now 'variable'\n")
    repo.commit("edit eval")
    assert_caught(spml(capsys, repo, "--base", repo.base), PROTOCOL, "eval/evaluate.py")


def test_rules_follow_the_base_protocol_not_the_work_tree_copy(capsys, repo):
    # Narrowing the protocol in the work tree cannot make a base-allowed edit fail either:
    # the protocol edit itself is the only violation.
    text = repo.read(PROTOCOL).replace(b"    - model.py\n", b"")
    repo.write(PROTOCOL, text)
    repo.append("model.py", "\n# wider\n")
    assert_caught(spml(capsys, repo), PROTOCOL)


# =========================================================================== glob semantics


def test_fixed_wins_over_variable_and_globs_are_anchored(capsys, tmp_path, monkeypatch):
    files = {
        "train.py": b"top\n",
        "models/train.py": b"nested\n",
        "models/a.py": b"a\n",
        "models/deep/er/b.py": b"b\n",
        "models/frozen/c.py": b"c\n",
        "eval/evaluate.py": b"e\n",
        PROTOCOL: PROTOCOL_TEXT.replace(
            "    - train.py\n    - eval/\n    - data/\n",
            "    - train.py\n    - eval/\n    - models/frozen/\n",
        ).replace("    - model.py\n    - configs/*.yaml\n", "    - models/**/*.py\n    - eval/*.py\n    - train.py\n").encode(),
    }
    repo = make_repo(tmp_path / "proj", files)
    monkeypatch.chdir(repo.path)
    # Variable and not Fixed: anchored 'train.py' does not freeze models/train.py.
    repo.append("models/train.py", "more\n")
    repo.append("models/a.py", "more\n")
    repo.append("models/deep/er/b.py", "more\n")
    repo.write("models/new/d.py", b"d\n")
    assert_compliant(spml(capsys, repo))
    # Both Fixed and Variable: Fixed wins.
    repo.append("train.py", "more\n")
    repo.append("eval/evaluate.py", "more\n")
    repo.append("models/frozen/c.py", "more\n")
    repo.write("models/frozen/new.py", b"n\n")
    assert_caught(spml(capsys, repo), "train.py", "eval/evaluate.py", "models/frozen/c.py", "models/frozen/new.py")


# =========================================================================== --staged


def test_staged_mode_ignores_unstaged_fixed_edit(capsys, repo):
    repo.append("eval/evaluate.py", "\n# unstaged\n")
    repo.write("utils.py", b"x = 1\n")  # untracked: not part of the next commit
    res = spml(capsys, repo, "--staged")
    assert_compliant(res)
    assert_caught(spml(capsys, repo), "eval/evaluate.py", "utils.py")


def test_staged_mode_catches_staged_fixed_edit(capsys, repo):
    repo.append("eval/evaluate.py", "\n# staged\n")
    repo.git("add", "eval/evaluate.py")
    assert_caught(spml(capsys, repo, "--staged"), "eval/evaluate.py")


def test_staged_mode_catches_staged_new_file_and_allows_staged_variable_edit(capsys, repo):
    repo.append("model.py", "\n# wider\n")
    repo.write("utils.py", b"x = 1\n")
    repo.git("add", "model.py", "utils.py")
    assert_caught(spml(capsys, repo, "--staged"), "utils.py")


# =========================================================================== --governed-branches-only


def test_governed_only_does_not_enforce_on_main(capsys, repo):
    repo.git("checkout", "-q", "-b", "main")
    repo.append("eval/evaluate.py", "\n# edit on main\n")
    res = spml(capsys, repo, "--governed-branches-only")
    assert_compliant(res, enforced=False)
    assert res.doc.get("notes") and all(isinstance(n, str) and n for n in res.doc["notes"]), res.describe()
    # Without the flag the same tree is judged.
    assert_caught(spml(capsys, repo), "eval/evaluate.py")


def test_governed_only_enforces_on_autoresearch_branch(capsys, repo):
    repo.git("checkout", "-q", "-b", "autoresearch/x")
    repo.append("eval/evaluate.py", "\n# edit\n")
    assert_caught(spml(capsys, repo, "--governed-branches-only"), "eval/evaluate.py")


def test_governed_only_enforces_on_the_base_branch(capsys, repo):
    repo.append("train.py", "\n# edit\n")
    assert_caught(spml(capsys, repo, "--governed-branches-only"), "train.py")


def test_governed_only_with_explicit_base_always_enforces(capsys, repo):
    repo.git("checkout", "-q", "-b", "main")
    repo.append("eval/evaluate.py", "\n# edit\n")
    repo.commit("edit on main")
    assert_caught(spml(capsys, repo, "--governed-branches-only", "--base", repo.base), "eval/evaluate.py")


def test_governed_only_uses_the_protocol_branch_pattern(capsys, tmp_path, monkeypatch):
    files = dict(BASE_FILES)
    files[PROTOCOL] = PROTOCOL_TEXT.replace("max_rounds: 5\n", "max_rounds: 5\nbranch: exp/*\n").encode()
    repo = make_repo(tmp_path / "proj", files, branch="exp/1")
    monkeypatch.chdir(repo.path)
    repo.append("train.py", "\n# edit\n")
    assert_caught(spml(capsys, repo, "--governed-branches-only"), "train.py")
    repo.git("checkout", "-q", "-b", "autoresearch/r9")
    assert_compliant(spml(capsys, repo, "--governed-branches-only"), enforced=False)


# =========================================================================== bad input (exit 2)


def _commit_protocol(repo: Repo, text: str) -> None:
    repo.write(PROTOCOL, text)
    repo.base = repo.commit("protocol")


def test_missing_fixed_files_is_bad_input(capsys, repo):
    text = PROTOCOL_TEXT.replace("fixed:\n  files:\n    - train.py\n    - eval/\n    - data/\n", "fixed:\n")
    _commit_protocol(repo, text)
    res = spml(capsys, repo)
    assert res.code == 2, res.describe()
    line = int(re.search(re.escape(PROTOCOL) + r":(\d+)", res.err).group(1))
    fixed_line = line_of(text, "fixed:")
    # The field is missing, so its parent's line (or a line inside that block) is the place to point at.
    assert fixed_line <= line <= line_of(text, "epoch_limit:"), res.describe()
    assert_bad_input(res, PROTOCOL, "fixed.files")
    assert "fixed.files" in json.dumps(res.doc["error"])


def test_bad_eval_direction_is_bad_input(capsys, repo):
    text = PROTOCOL_TEXT.replace("direction: minimize", "direction: sideways")
    _commit_protocol(repo, text)
    res = spml(capsys, repo)
    assert_bad_input(res, PROTOCOL, "eval.direction", "sideways", line=line_of(text, "direction: sideways"))


def test_zero_max_rounds_is_bad_input(capsys, repo):
    text = PROTOCOL_TEXT.replace("max_rounds: 5", "max_rounds: 0")
    _commit_protocol(repo, text)
    res = spml(capsys, repo)
    assert_bad_input(res, PROTOCOL, "max_rounds", line=line_of(text, "max_rounds: 0"))


def test_malformed_yaml_is_bad_input_with_the_yaml_error_line(capsys, repo):
    text = PROTOCOL_TEXT.replace("baseline: 0.42", "baseline: 0.42: oops")
    _commit_protocol(repo, text)
    res = spml(capsys, repo)
    assert_bad_input(res, PROTOCOL, line=line_of(text, "baseline: 0.42: oops"))


def test_protocol_without_front_matter_is_bad_input(capsys, repo):
    text = PROTOCOL_TEXT.split("---\n", 2)[2]
    _commit_protocol(repo, text)
    res = spml(capsys, repo)
    assert_bad_input(res, PROTOCOL)
    assert "front matter" in res.err.lower(), res.describe()


def test_protocol_file_not_found_is_bad_input(capsys, repo):
    res = spml(capsys, repo, protocol="no-such-protocol.md")
    assert_bad_input(res, "no-such-protocol.md")


def test_default_protocol_missing_is_bad_input(capsys, tmp_path, monkeypatch):
    files = {k: v for k, v in BASE_FILES.items() if k != PROTOCOL}
    repo = make_repo(tmp_path / "proj", files)
    monkeypatch.chdir(repo.path)
    res = spml(capsys, repo, protocol=None)
    assert_bad_input(res, PROTOCOL)


def test_unknown_base_revision_is_bad_input(capsys, repo):
    res = spml(capsys, repo, "--base", "nope-no-such-rev")
    assert_bad_input(res, "nope-no-such-rev")


def test_not_a_git_repository_is_bad_input(capsys, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / PROTOCOL).write_text(PROTOCOL_TEXT)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # even if TMPDIR sits inside a repository
    monkeypatch.chdir(plain)
    res = spml(capsys, plain)
    assert res.code == 2, res.describe()
    assert "Traceback" not in res.err
    assert len([ln for ln in res.err.splitlines() if ln.strip()]) == 1, res.describe()


def test_bad_input_in_text_format_is_one_stderr_line(capsys, repo):
    text = PROTOCOL_TEXT.replace("max_rounds: 5", "max_rounds: 0")
    _commit_protocol(repo, text)
    res = spml(capsys, repo, fmt="text")
    assert res.code == 2, res.describe()
    assert_bad_input(res, PROTOCOL, "max_rounds", line=line_of(text, "max_rounds: 0"), json_doc=False)


def test_bad_input_subprocess_has_no_traceback(repo):
    text = PROTOCOL_TEXT.replace("direction: minimize", "direction: sideways")
    _commit_protocol(repo, text)
    res = spml_subprocess(repo.path, "--protocol", PROTOCOL, "--format", "json")
    assert_bad_input(res, PROTOCOL, "eval.direction", line=line_of(text, "direction: sideways"))


# =========================================================================== file names


@skip_on_windows
def test_non_utf8_file_names_round_trip(capsys, repo):
    raw_new = b"eval/caf\xe9.py"
    raw_tracked = b"data/\xff\xferaw.bin"
    try:
        repo.write(raw_tracked, b"tracked\n")
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    repo.base = repo.commit("non-utf8 name")
    repo.write(raw_tracked, b"changed\n")
    repo.write(raw_new, b"x = 1\n")
    res = spml(capsys, repo)
    assert_caught(res, os.fsdecode(raw_new), os.fsdecode(raw_tracked))
    assert {os.fsencode(p) for p in res.paths} == {raw_new, raw_tracked}


@skip_on_windows
def test_space_and_unicode_file_names_round_trip(capsys, repo):
    tracked = "eval/my metric – ünïcødé 名前.py"
    repo.write(tracked, "x = 1\n")
    repo.write("configs/größe é.yaml", "a: 1\n")
    repo.base = repo.commit("unicode names")
    assert_compliant(spml(capsys, repo))
    repo.write(tracked, "x = 2\n")
    new_names = ["notes with spaces.txt", "données/ø.py", 'eval/we"ird\tname\n.py', "eval/-dash.py"]
    for name in new_names:
        repo.write(name, "y = 1\n")
    repo.write("configs/größe é.yaml", "a: 2\n")  # variable: allowed
    res = spml(capsys, repo)
    assert_caught(res, tracked, *new_names)
    assert_caught(spml(capsys, repo, "--no-cache"), tracked, *new_names)


@skip_on_windows
def test_file_names_round_trip_through_a_subprocess(repo):
    raw = b"eval/\xe9t\xe9 \xe2\x98\x83.py"  # latin-1 bytes, a space, then UTF-8
    try:
        repo.write(raw, b"x = 1\n")
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    res = spml_subprocess(repo.path, "--protocol", PROTOCOL, "--format", "json")
    assert_caught(res, os.fsdecode(raw))
    assert {os.fsencode(p) for p in res.paths} == {raw}


# =========================================================================== invocation


def test_subprocess_module_run_catches_and_passes(repo):
    res = spml_subprocess(repo.path, "--protocol", PROTOCOL, "--format", "json")
    assert_compliant(res)
    repo.append("train.py", "\n# edit\n")
    res = spml_subprocess(repo.path, "--protocol", PROTOCOL, "--format", "json")
    assert_caught(res, "train.py")


def test_console_script_catches_and_passes(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = spml_subprocess(elsewhere, "--repo", str(repo.path), "--protocol", str(repo.path / PROTOCOL),
                          "--format", "json", script=True)
    assert_compliant(res)
    repo.append("eval/evaluate.py", "\n# edit\n")
    res = spml_subprocess(elsewhere, "--repo", str(repo.path), "--protocol", str(repo.path / PROTOCOL),
                          "--format", "json", script=True)
    assert_caught(res, "eval/evaluate.py")


def test_run_from_a_subfolder_with_default_protocol_reports_root_relative_paths(capsys, repo, monkeypatch):
    repo.append("eval/evaluate.py", "\n# edit\n")
    repo.write("configs/extra.json", b"{}\n")
    monkeypatch.chdir(repo.path / "configs")
    capsys.readouterr()
    code = cli.main(["fixed-files", "--format", "json"])
    res = _parse(code, *capsys.readouterr())
    assert_caught(res, "eval/evaluate.py", "configs/extra.json")


def test_repo_option_from_another_cwd_with_absolute_protocol(capsys, repo, tmp_path, monkeypatch):
    repo.append("data/prepare.py", "\n# edit\n")
    monkeypatch.chdir(tmp_path)
    res = spml(capsys, repo, protocol=str(repo.path / PROTOCOL))
    assert_caught(res, "data/prepare.py")
    res = spml(capsys, repo, protocol=None)  # default: the protocol at the repository root
    assert_caught(res, "data/prepare.py")


def test_text_format_exit_codes_and_paths(capsys, repo):
    res = spml(capsys, repo, fmt="text")
    assert res.code == 0, res.describe()
    repo.append("train.py", "\n# edit\n")
    res = spml(capsys, repo, fmt="text")
    assert res.code == 1, res.describe()
    assert "train.py" in res.out


def test_json_output_is_one_document_and_exit_code_agrees(capsys, repo):
    repo.append("train.py", "\n# edit\n")
    res = spml(capsys, repo)
    assert json.loads(res.out) == res.doc
    assert res.code == (0 if res.doc["compliant"] else 1)
    assert all(v["path"] in res.out for v in res.doc["violations"])


# =========================================================================== a large-ish repository and the cache


def _large_files() -> dict[str, bytes]:
    files = dict(BASE_FILES)
    for i in range(800):
        files[f"data/shards/{i // 100:02d}/shard_{i:04d}.txt"] = f"row {i}\n".encode() * 8
    for i in range(800):
        files[f"lib/pkg{i // 40:02d}/mod_{i:04d}.py"] = f"VALUE = {i}\n".encode()
    for i in range(400):
        files[f"configs/c{i:04d}.yaml"] = f"seed: {i}\n".encode()
    return files


def _same_size_edit_keeping_mtime(path: Path) -> None:
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[0:3] = b"ROW" if data[0:3] != b"ROW" else b"row"
    with open(path, "r+b") as fh:  # same inode, same size
        fh.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_large_repo_same_answer_with_and_without_cache(capsys, tmp_path, monkeypatch):
    files = _large_files()
    assert len(files) > 2000
    repo = make_repo(tmp_path / "big", files)
    monkeypatch.chdir(repo.path)
    # Let the files age past any reasonable "racily clean" window so a stat cache may trust them.
    time.sleep(2.5)

    assert_compliant(spml(capsys, repo))  # first run: fills the cache
    assert_compliant(spml(capsys, repo))  # second run: from the cache
    assert_compliant(spml(capsys, repo, "--no-cache"))

    # Edits made after the cache was filled.
    shard = repo.path / "data/shards/03/shard_0305.txt"
    original_shard = shard.read_bytes()
    _same_size_edit_keeping_mtime(shard)  # only ctime betrays it
    module = repo.path / "lib/pkg05/mod_0200.py"
    original_module = module.read_bytes()
    module.write_bytes(b"VALUE = -1\n")
    repo.write("lib/new_module.py", b"x = 1\n")
    repo.write("configs/c0007.yaml", b"seed: 700\n")  # variable
    (repo.path / "data/shards/00/shard_0001.txt").unlink()
    expected = {"data/shards/03/shard_0305.txt", "lib/pkg05/mod_0200.py", "lib/new_module.py",
                "data/shards/00/shard_0001.txt"}

    cached = spml(capsys, repo)
    uncached = spml(capsys, repo, "--no-cache")
    cached_again = spml(capsys, repo)
    for res in (cached, uncached, cached_again):
        assert_caught(res, *expected)
    assert cached.paths == uncached.paths == cached_again.paths

    # Put everything back: the cache must not remember the violations either.
    _same_size_edit_keeping_mtime(shard)
    assert shard.read_bytes() == original_shard
    module.write_bytes(original_module)
    (repo.path / "lib/new_module.py").unlink()
    repo.write("data/shards/00/shard_0001.txt", files["data/shards/00/shard_0001.txt"])
    assert_compliant(spml(capsys, repo))
    assert_compliant(spml(capsys, repo, "--no-cache"))
    assert_compliant(spml(capsys, repo))


def test_cache_is_not_fooled_by_a_same_size_same_mtime_edit(capsys, repo):
    time.sleep(2.5)
    assert_compliant(spml(capsys, repo))
    assert_compliant(spml(capsys, repo))
    _same_size_edit_keeping_mtime(repo.path / "data/prepare.py")
    assert_caught(spml(capsys, repo), "data/prepare.py")
    assert_caught(spml(capsys, repo, "--no-cache"), "data/prepare.py")


def test_cache_is_not_fooled_by_a_file_swapped_in_with_the_same_stat(capsys, repo):
    # Replace the file by a new inode of the same size and mtime (rename over it).
    time.sleep(2.5)
    assert_compliant(spml(capsys, repo))
    target = repo.path / "eval/evaluate.py"
    st = os.stat(target)
    data = target.read_bytes()
    swapped = repo.path / "eval/.swap"
    swapped.write_bytes(data.replace(b"1.0 -", b"0.0 *"))
    assert swapped.stat().st_size == st.st_size
    os.utime(swapped, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(swapped, target)
    assert_caught(spml(capsys, repo), "eval/evaluate.py")


# --- messages that tell the user what to do ------------------------------------------


def test_first_protocol_commit_on_a_round_branch_says_what_to_do(tmp_path, capsys, monkeypatch):
    files = {k: v for k, v in BASE_FILES.items() if k != PROTOCOL}
    repo = make_repo(tmp_path / "proj", files=files)
    monkeypatch.chdir(repo.path)
    repo.write(PROTOCOL, BASE_FILES[PROTOCOL])
    repo.git("add", PROTOCOL)
    res = spml(capsys, repo, "--staged")
    assert res.code == 1, res.describe()
    (violation,) = res.doc["violations"]
    assert violation["path"] == PROTOCOL
    assert "commit the protocol on the base branch before the rounds start" in violation["reason"]


def test_renamed_fixed_file_reads_as_one_new_file(repo, capsys):
    repo.git("mv", "train.py", "train2.py")
    res = spml(capsys, repo)
    reasons = {v["path"]: v["reason"] for v in res.doc["violations"]}
    assert set(reasons) == {"train.py", "train2.py"}
    assert "untracked" not in reasons["train2.py"] and "work tree" not in reasons["train2.py"]


def test_bytecode_in_a_fixed_folder_explains_the_risk(repo, capsys):
    repo.write("eval/__pycache__/evaluate.cpython-311.pyc", b"\x00" * 16)
    res = spml(capsys, repo)
    (violation,) = res.doc["violations"]
    assert "Python could load it instead of the Fixed source" in violation["reason"]
    assert "PYTHONPYCACHEPREFIX" in violation["reason"]
