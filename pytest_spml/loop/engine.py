"""The round engine: researcher -> compliance -> train -> restore + re-check -> eval -> verdict -> commit or roll back -> record.

The seam (for ``spml-loop iterate`` and other loops)
----------------------------------------------------
:class:`Engine` runs rounds and owns everything that must not go wrong:
the branch, compliance, supervision of commands, rollback, crash safety
and the history. It never decides whether a round was good. It builds an
:class:`~pytest_spml.loop.judge.Outcome` (metric, every number the eval
reported, which step failed) and asks its judge::

    judge.judge(outcome, state) -> Verdict(action in {"commit", "rollback", "accept"}, reason, improved, insight)
    judge.finished(state) -> str | None   # why the loop is done, e.g. "target reached"

``commit`` and ``accept`` both commit the round's tree on the loop's branch;
only an ``improved`` verdict moves ``state.best``. ``rollback`` restores the
base and keeps the rejected diff under ``.spml/rounds/``. Autoresearch uses
:class:`~pytest_spml.loop.judge.ImprovementJudge` ("strictly better than
the best by more than min_delta / the noise floor, in the protocol's
direction"); a judge of compound criteria plugs in the same way, and may
read ``outcome.evidence`` (train log path, watchdog findings, timings).

Steps and crash safety
----------------------
``state.json`` names the step of the round in progress and is saved
(atomically) when each step starts. ``--resume`` after a ``kill -9``:

* kills what is left of the step's command (its process group);
* folds commits that are not the loop's (an *unverified commit*) back into
  uncommitted changes, keeping their diff;
* interrupted in ``researcher``: the edits may be half made; they are
  rolled back (diff kept) and the round starts again;
* interrupted in ``compliance``/``train``/``restore``/``eval``: the
  researcher had finished; the round is finished from the compliance check
  with the edits as they are (*uncommitted edits*; a *clean* tree means the
  researcher changed nothing);
* interrupted in ``verdict``/``commit``/``rollback``/``record``: the verdict
  is saved; it is applied (idempotently: the branch moves by
  compare-and-swap from the base to the commit recorded before the move) and
  the row is written once.

Test hook: ``SPML_LOOP_KILL_AT=N:STEP`` makes the loop ``kill -9`` itself
when round N enters STEP (after saving the state), ``N:STEP:running`` once
STEP's command has started (train, eval, researcher).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import gitcmd, proc
from ..errors import InputError
from ..fixedfiles.compliance import Rules, Violation
from ..fsutil import atomic_write
from ..protocol import Protocol
from . import control
from .experiences import RoundRow, fmt_metric, load_rows, write_history
from .gitops import STATE_EXCLUDE, LoopGit
from .judge import Judge, Outcome, Verdict, noise_floor
from .prompt import build_prompt
from .researcher import ResearchContext, ResearchResult
from .rounds import (ChildResult, EvalFailure, Supervisor, TrainWatch, child_env, describe_exit, eval_env,
                     import_shadows, read_result)
from .state import LoopPaths, LoopState, RoundState, save_state

PLATEAU_ROUNDS = 5


@dataclass
class EngineOptions:
    last_rows: int = 5
    researcher_timeout_s: float = 3600.0
    eval_timeout_s: float | None = None  # default: the protocol's time limit
    budget_s: float | None = None  # wall-clock budget of this invocation
    measure_noise: bool = False
    metrics_logs: tuple[Path, ...] = ()
    thresholds: Any = None
    watch: bool = True
    poll_s: float = 0.5
    seed: int = 0
    progress: TextIO | None = field(default_factory=lambda: sys.stderr)
    # spml-loop iterate: its own researcher prompt, called like prompt.build_prompt (None: autoresearch's)
    prompt_builder: Any = None


class _Interrupted(Exception):
    pass


class _StepFailed(Exception):
    """A step failed: the round goes straight to its verdict."""

    def __init__(self, step: str, reason: str, evidence: dict[str, Any] | None = None):
        super().__init__(reason)
        self.step, self.reason, self.evidence = step, reason, evidence or {}


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a leftover child from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
        return data.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Engine:
    def __init__(self, root: Path, protocol: Protocol, state: LoopState, paths: LoopPaths, judge: Judge,
                 researcher: Any, options: EngineOptions):
        self.root, self.protocol, self.state, self.paths = root, protocol, state, paths
        self.judge, self.researcher, self.options = judge, researcher, options
        self.git = LoopGit(root, state.branch)
        self.rules = Rules.from_protocol(protocol)
        self.rows: list[RoundRow] = load_rows(paths)
        self.kill_at = os.environ.get("SPML_LOOP_KILL_AT", "")
        self.started = time.monotonic()
        self.exhausted: str | None = None
        self.recorded: list[RoundRow] = []  # rows recorded by this invocation
        self._interrupt: str | None = None
        self._modules: dict[str, tuple[list[str], set[str], set[str]]] = {}
        self._cur: RoundState | None = None
        self._child_step = ""
        self.supervisor = Supervisor(on_start=self._child_started, interrupted=lambda: self._interrupt,
                                     poll_s=options.poll_s)

    # ---------------------------------------------------------------------------------------------- plumbing
    def _save(self) -> None:
        save_state(self.paths, self.state)

    def _say(self, line: str) -> None:
        if self.options.progress is not None:
            self.options.progress.write(f"spml-loop: {line}\n")
            self.options.progress.flush()

    def _maybe_kill(self, point: str) -> None:
        if self.kill_at and self.kill_at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def _point(cur: RoundState) -> str:
        return f"b{cur.n}" if cur.kind == "baseline" else str(cur.n)

    def _step(self, cur: RoundState, name: str) -> None:
        cur.step = name
        self._child_step = name
        self._save()
        self._maybe_kill(f"{self._point(cur)}:{name}")

    def _child_started(self, pid: int) -> None:
        cur = self._cur
        if cur is None:
            return
        cur.child_pgid = pid
        cur.steps.setdefault("_child", {})["start"] = _proc_start(pid)
        self._save()
        self._maybe_kill(f"{self._point(cur)}:{self._child_step}:running")

    def _child_done(self, cur: RoundState, result: ChildResult) -> None:
        cur.child_pgid = None
        cur.child_seconds += result.seconds

    def _set(self, cur: RoundState, step: str, status: str, message: str, seconds: float = 0.0,
             **extra: Any) -> None:
        cur.steps[step] = {"status": status, "message": message, "seconds": round(seconds, 3), **extra}

    def _round_dir(self, cur: RoundState) -> Path:
        name = f"baseline-{cur.n}" if cur.kind == "baseline" else cur.n
        folder = self.paths.round_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _handle_signal(self, signum: int, _frame: Any) -> None:
        self._interrupt = signal.Signals(signum).name

    # ---------------------------------------------------------------------------------------------- the loop
    def run(self) -> str:
        """Run rounds until a stop condition; returns the stop reason."""
        previous: dict[int, Any] = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._handle_signal)
        except ValueError:  # not the main thread: stop files still work
            previous = {}
        self.state.pid = os.getpid()
        self.state.status = "running"
        self.state.stop_reason = None
        self._save()
        reason = ""
        try:
            try:
                if self.state.current is not None and self.state.current.step != "done":
                    self._resume_round(self.state.current)
                if self.options.measure_noise and self.state.noise is None:
                    self._measure_noise()
                while True:
                    reason = self._stop_reason()
                    if reason:
                        break
                    # --- human on the loop (loop/control.py): `spml-loop pause` holds the loop here, between rounds
                    paused_at = time.monotonic()
                    if control.wait_if_paused(self.paths, self.state, save=self._save, say=self._say,
                                              interrupted=lambda: self._interrupt, poll_s=self.options.poll_s):
                        # the budget is for rounds: time a human held the loop does not count
                        self.started += time.monotonic() - paused_at
                        continue  # check the stop conditions again before the next round
                    # ---
                    self._round(self.state.rounds_done + 1)
            except _Interrupted:
                reason = f"interrupted by {self._interrupt}"
            status = "interrupted" if self._interrupt else "stopped"
            if not self._interrupt and (self.judge.finished(self.state)
                                         or self.state.rounds_done >= self.state.max_rounds):
                status = "finished"
            self.state.status, self.state.stop_reason, self.state.pid = status, reason, None
            self._save()
            write_history(self.paths, self.state, self.rows, self.protocol.research_question)
            self._say(f"stopped: {reason}; best {self.protocol.eval_metric} {fmt_metric(self.state.best)}"
                      + (f" (round {self.state.best_round}, {self.state.best_commit[:12]})"
                         if self.state.best_commit else ""))
            return reason
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_reason(self) -> str:
        if self._interrupt:
            return f"interrupted by {self._interrupt}"
        done = self.judge.finished(self.state)
        if done:
            return done
        if self.state.rounds_done >= self.state.max_rounds:
            return f"max_rounds reached ({self.state.max_rounds})"
        if self.exhausted:
            return self.exhausted
        budget = self.options.budget_s
        if budget is not None and time.monotonic() - self.started >= budget:
            return f"wall-clock budget of {budget:g} s used"
        if self.paths.stop.exists():
            self.paths.stop.unlink(missing_ok=True)
            return f"stop requested ({self.paths.rel(self.paths.stop)})"
        return ""

    # ---------------------------------------------------------------------------------------------- one round
    def _round(self, n: int, cur: RoundState | None = None) -> None:
        base = self.git.tip()
        if base is None:
            raise InputError(f"the loop's branch {self.state.branch} is gone; restore it from the reflog "
                             f"(best commit {self.state.best_commit})", self.root)
        cur = cur or RoundState(n=n, base=base)
        self.state.current = self._cur = cur
        folder = self._round_dir(cur)
        try:
            result = self._research(cur, folder)
            if result.exhausted:
                self.exhausted = f"the researcher has nothing more to try ({result.reason})"
                self.state.current = None
                self._save()
                return
            self._after_researcher(cur, result)
        except _Interrupted:
            self._abort(cur)
            raise

    def _research(self, cur: RoundState, folder: Path) -> ResearchResult:
        self._step(cur, "researcher")
        prompt = folder / "prompt.md"
        strategy = folder / "strategy.txt"
        strategy.unlink(missing_ok=True)
        text = (self.options.prompt_builder or build_prompt)(self.protocol, self.state, self.rows, cur.n,
                                                            self.options.last_rows)
        # --- human on the loop (loop/control.py): notes left with `spml-loop note` reach this round's prompt and row
        human = control.claim_notes(self.paths, folder)
        text += control.prompt_section(human)
        cur.notes.extend(n for n in control.row_notes(human) if n not in cur.notes)
        # ---
        atomic_write(prompt, text)
        env = child_env({
            "SPML_ROUND": str(cur.n), "SPML_PROMPT": str(prompt), "SPML_STRATEGY": str(strategy),
            "SPML_PROTOCOL": str(self.protocol.path), "SPML_EXPERIENCES": str(self.paths.experiences),
            "SPML_RESULTS": str(self.paths.results_jsonl), "SPML_BASE": cur.base, "SPML_BRANCH": self.state.branch,
            "SPML_ROUND_DIR": str(folder), "SPML_REPO": str(self.root),
        })

        def run(command: str, log: Path, timeout: float) -> ChildResult:
            result = self.supervisor.run(command, cwd=self.root, env=env, log=log, time_limit=timeout,
                                         grace=min(30.0, timeout))
            self._child_done(cur, result)
            return result

        ctx = ResearchContext(round=cur.n, base=cur.base, root=self.root, protocol=self.protocol, round_dir=folder,
                              prompt_path=prompt, strategy_path=strategy, env=env, rows=self.rows,
                              seed=self.options.seed, run=run)
        started = time.monotonic()
        try:
            result = self.researcher.research(ctx)
        except InputError:
            raise
        except Exception as exc:  # a built-in researcher's bug or I/O error is a failed round, not a dead loop
            result = ResearchResult(False, reason=f"researcher raised {type(exc).__name__}: {exc}")
        if result.interrupted or self._interrupt:
            raise _Interrupted()
        cur.strategy, cur.insight = result.strategy, result.insight
        cur.steps["researcher"] = {"status": "pass" if result.ok else "error",
                                   "message": result.strategy if result.ok else result.reason,
                                   "seconds": round(time.monotonic() - started, 3), "params": result.params}
        return result

    def _after_researcher(self, cur: RoundState, result: ResearchResult | None) -> None:
        """Everything after the researcher; also where a resumed round picks up."""
        try:
            notes = self._fold(cur)
            cur.notes.extend(notes)
            if result is not None and not result.ok:
                raise _StepFailed("researcher", result.reason)
            self._step(cur, "compliance")
            self._check(cur, "compliance", phase="researcher")
            if self.git.snapshot(cur.base) == self.git.tree_of(cur.base):
                self._set(cur, "train", "skip", "the researcher changed nothing")
                raise _StepFailed("researcher", "no change: the researcher changed nothing", {"changed": False})
            outcome = self._train_and_eval(cur)
        except _StepFailed as failed:
            outcome = Outcome(cur.n, False, failed_step=failed.step, reason=failed.reason,
                              changed=failed.evidence.get("changed", True), evidence=failed.evidence)
        self._conclude(cur, outcome)

    def _train_and_eval(self, cur: RoundState) -> Outcome:
        self._step(cur, "train")
        trained = self._train(cur)
        self._step(cur, "restore")
        self._check(cur, "restore", phase="train")
        self._step(cur, "eval")
        metric, metrics = self._eval(cur)
        return Outcome(cur.n, True, metric=metric, metrics=metrics,
                       evidence={"train_seconds": round(trained.seconds, 3),
                                 "train_log": self.paths.rel(self._round_dir(cur) / "train.log")})

    # ---------------------------------------------------------------------------------------------- steps
    def _fold(self, cur: RoundState) -> list[str]:
        """Undo what the researcher did to history, keeping its diff: the loop is the only writer."""
        notes = []
        moved = self.git.ensure_on_branch()
        if moved:
            notes.append(f"HEAD was left on {moved.removeprefix('refs/heads/')}; put back on {self.state.branch}")
        tip = self.git.tip()
        if tip is None:
            self.git.git(["update-ref", "-m", "spml-loop: restore the loop's branch", self.git.ref, cur.base])
            notes.append(f"the loop's branch was deleted; restored at {cur.base[:12]}")
        elif tip != cur.base:
            folder = self._round_dir(cur)
            log = self.git.log(cur.base, tip)
            patch = self.git.diff(cur.base, tip)
            header = "".join(f"# {line}\n" for line in (log or f"branch moved to {tip}").splitlines())
            target = folder / "researcher-commits.patch"
            atomic_write(target, header.encode() + patch)
            self.git.move_branch(cur.base, tip, "fold commits the loop did not make")
            count = len(log.splitlines()) if log else 0
            what = f"{count} commit(s)" if count else f"a branch move to {tip[:12]}"
            notes.append(f"history written outside the loop ({what}) folded back into the round's changes; "
                         f"diff kept in {self.paths.rel(target)}")
        self.git.reset_index()
        return notes

    def _modules_of(self, base: str) -> tuple[list[str], set[str], set[str]]:
        cached = self._modules.get(base)
        if cached is None:
            paths = gitcmd.split_z(self.git.git(["ls-tree", "-r", "-z", "--name-only", "--full-tree", base]))
            fixed = [p for p in paths if p.endswith(".py") and self.rules.is_fixed(p)]
            dirs = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}
            cached = self._modules[base] = (fixed, set(paths), dirs)
            if len(self._modules) > 4:
                self._modules.pop(next(iter(self._modules)))
        return cached

    def _compliance(self, base: str) -> list[Violation]:
        from ..commands.fixed_files import check

        info = gitcmd.repo_info(self.root)
        compliance = check(info, self.protocol.path, self.protocol.relpath, base,
                           extra_variable=(f"{STATE_EXCLUDE}/",))
        # the loop's own state is never judged, even under a Fixed glob such as "**"
        return [v for v in compliance.violations if not v.path.startswith(f"{STATE_EXCLUDE}/")]

    def _check(self, cur: RoundState, step: str, phase: str) -> None:
        """Compliance against the round's base. ``phase`` train/eval: outputs inside Fixed paths are removed first."""
        started = time.monotonic()
        base = cur.base
        removed: list[str] = []
        for attempt in range(2):
            violations = self._compliance(base)
            modules, base_paths, base_dirs = self._modules_of(base)
            bytecode, shadows = import_shadows(self.root, modules, base_paths, base_dirs)
            removable = [v.path for v in violations if v.fixed and set(v.kinds) == {"new"}
                         and (phase != "researcher" or "/__pycache__/" in f"/{v.path}")]
            removable += [p for p in bytecode if p not in removable]
            if attempt == 0 and removable:
                for path in removable:
                    try:
                        (self.root / path).unlink()
                    except OSError:
                        pass
                removed = removable
                continue
            break
        if removed:
            shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
            when = {"researcher": "before training", "train": "before the eval", "eval": "after the eval"}[phase]
            cur.notes.append(f"removed {len(removed)} file(s) inside Fixed paths or standing in for Fixed code "
                             f"{when} ({shown})")
        problems = [f"{v.path}: {v.reason}" for v in violations] + [f"{path}: {why}" for path, why in shadows]
        seconds = time.monotonic() - started
        for path, _why in shadows:
            # ignored files survive a rollback: a stand-in for Fixed code must not outlive its round
            target = self.root / path.rstrip("/")
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if problems:
            when = {"researcher": "", "train": " during training", "eval": " during the eval"}[phase]
            message = f"{len(problems)} violation(s){when}: " + "; ".join(problems[:5])
            self._set(cur, step, "fail", message, seconds, violations=problems[:50])
            raise _StepFailed("compliance" if phase == "researcher" else step, f"violation{when}: "
                              + "; ".join(p.split(':', 1)[0] for p in problems[:5]), {"violations": problems[:50]})
        what = {"researcher": "only Variable paths differ from the base",
                "train": "Fixed files as in the base after training; nothing shadows them",
                "eval": "the tree is unchanged by the eval"}[phase]
        if phase == "eval":
            cur.steps["eval"]["message"] += f"; {what}"
        else:
            self._set(cur, step, "pass", what + (f" (removed {len(removed)} output file(s) in Fixed paths)"
                                                 if removed else ""), seconds)

    def _train(self, cur: RoundState) -> ChildResult:
        folder = self._round_dir(cur)
        log = folder / "train.log"
        metrics = folder / "metrics.jsonl"
        pycache = Path(tempfile.mkdtemp(prefix="spml-train-pycache-"))
        limit = self.protocol.time_limit_s
        extra = {"SPML_ROUND": str(cur.n), "SPML_ROUND_DIR": str(folder), "SPML_METRICS_LOG": str(metrics),
                 "SPML_TIME_LIMIT": f"{limit:g}", "PYTHONPYCACHEPREFIX": str(pycache)}
        if self.protocol.epoch_limit is not None:
            extra["SPML_EPOCH_LIMIT"] = str(self.protocol.epoch_limit)
        watch = None
        if self.options.watch:
            logs = [p if p.is_absolute() else self.root / p for p in self.options.metrics_logs]
            watch = TrainWatch([log], [metrics, *logs], self.options.thresholds)
        try:
            # SIGTERM at the time limit, SIGKILL to the whole group at twice the limit
            result = self.supervisor.run(self.protocol.train_command, cwd=self.root, env=child_env(extra), log=log,
                                         time_limit=limit, grace=limit, watch=watch)
        finally:
            shutil.rmtree(pycache, ignore_errors=True)
        self._child_done(cur, result)
        if result.stopped == "interrupted":
            raise _Interrupted()
        tail = _tail(log)
        if not result.ok:
            status = "fail"
            message = f"training {result.describe()}" + (f"; last output: {tail}" if tail and not result.stopped else "")
            self._set(cur, "train", status, message, result.seconds, exit=result.code, stopped=result.stopped,
                      **({"watchdog": result.evidence} if result.evidence else {}))
            short = {"watchdog": f"stopped early: {result.detail}", "time limit": "timeout"}.get(
                result.stopped or "", f"train crashed ({describe_exit(result.code)}; see {self.paths.rel(log)})")
            raise _StepFailed("train", short, {"watchdog": result.evidence} if result.evidence else {})
        records = watch.records if watch is not None else 0
        self._set(cur, "train", "pass", f"finished in {result.seconds:.1f} s ({records} metric records watched)",
                  result.seconds, exit=result.code)
        return result

    def _eval(self, cur: RoundState) -> tuple[float, dict[str, float]]:
        folder = self._round_dir(cur)
        tmp = Path(tempfile.mkdtemp(prefix="spml-eval-"))
        try:
            result_path = tmp / "result.json"
            pycache = tmp / "pycache"
            pycache.mkdir()
            command = self.protocol.eval_command.replace("{result}", shlex.quote(str(result_path)))
            env = eval_env(result_path, pycache, {"SPML_ROUND": str(cur.n)})
            limit = self.options.eval_timeout_s or self.protocol.time_limit_s
            result = self.supervisor.run(command, cwd=self.root, env=env, log=folder / "eval.log", time_limit=limit,
                                         grace=min(limit, 30.0))
            self._child_done(cur, result)
            if result.stopped == "interrupted":
                raise _Interrupted()
            if not result.ok:
                tail = _tail(folder / "eval.log")
                self._set(cur, "eval", "error", f"eval {result.describe()}" + (f"; last output: {tail}" if tail else ""),
                          result.seconds, exit=result.code)
                raise _StepFailed("eval", f"eval failed ({result.describe()})")
            try:
                metric, metrics = read_result(result_path, self.protocol.eval_metric)
            except EvalFailure as exc:
                self._set(cur, "eval", "error", str(exc), result.seconds)
                raise _StepFailed("eval", str(exc)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._set(cur, "eval", "pass", f"{self.protocol.eval_metric} = {metric:.6g} (read from the round's result "
                                       "file only)", result.seconds, metric=metric)
        # the eval imports Variable code: make sure nothing it ran changed the tree we are about to commit
        self._check(cur, "eval", phase="eval")
        return metric, metrics

    # ---------------------------------------------------------------------------------------------- verdicts
    def _conclude(self, cur: RoundState, outcome: Outcome) -> None:
        for step in ("compliance", "train", "restore", "eval"):
            cur.steps.setdefault(step, {"status": "skip", "message": f"skipped: {outcome.failed_step} failed"})
        verdict = self.judge.judge(outcome, self.state)
        cur.outcome, cur.verdict = outcome.to_dict(), verdict.to_dict()
        self._step(cur, "verdict")
        self._apply(cur, verdict)

    def _apply(self, cur: RoundState, verdict: Verdict) -> None:
        if verdict.action in ("commit", "accept"):
            if self._commit(cur, verdict):
                self._record(cur)
                return
            verdict = Verdict("rollback", verdict.reason + "; nothing to commit")
            cur.verdict = verdict.to_dict()
        self._rollback(cur)
        self._record(cur)

    def _commit(self, cur: RoundState, verdict: Verdict) -> bool:
        tree = self.git.snapshot(cur.base)
        if tree == self.git.tree_of(cur.base):
            return False
        outcome = Outcome.from_dict(cur.outcome or {})
        metric = self.protocol.eval_metric
        was = fmt_metric(self.state.best)
        strategy = cur.strategy or "no strategy given"
        subject = f"spml-loop round {cur.n}: {metric} {fmt_metric(outcome.metric)} (best was {was}) - {strategy}"
        if len(subject) > 120:
            subject = subject[:119] + "…"
        body = [subject, "", f"Strategy: {strategy}"]
        if cur.insight:
            body.append(f"Insight: {cur.insight}")
        body += ["", f"Verdict: {verdict.action}: {verdict.reason}", "",
                 f"spml-round: {cur.n}", f"spml-metric: {metric}={outcome.metric!r}",
                 f"spml-direction: {self.protocol.eval_direction}", f"spml-base: {cur.base}"]
        commit = self.git.commit_tree(tree, cur.base, "\n".join(body) + "\n")
        cur.commit, cur.tree = commit, tree
        self._step(cur, "commit")
        self._move_to_commit(cur)
        return True

    def _move_to_commit(self, cur: RoundState) -> None:
        assert cur.commit is not None
        tip = self.git.tip()
        if tip != cur.commit:
            if tip != cur.base:
                raise InputError(f"the loop's branch {self.state.branch} moved to {tip} while round {cur.n} was "
                                 f"committing {cur.commit}; the loop does not rewrite history it did not write. "
                                 f"Inspect it, then reset the branch to {cur.base} and --resume", self.root)
            self.git.move_branch(cur.commit, cur.base, f"round {cur.n}")
        self.git.reset_index()
        if cur.commit not in self.state.commits:
            self.state.commits.append(cur.commit)

    def _rollback(self, cur: RoundState, patch_name: str = "rejected.patch") -> None:
        if cur.step != "rollback":
            tree = self.git.snapshot(cur.base)
            if tree != self.git.tree_of(cur.base):
                target = self._round_dir(cur) / patch_name
                atomic_write(target, self.git.diff(cur.base, tree))
                cur.patch = self.paths.rel(target)
            self._step(cur, "rollback")
        done = self.git.restore(cur.base, self.rules)
        self.git.reset_index()
        if done["removed"]:
            cur.notes.append(f"rollback removed {len(done['removed'])} untracked file(s)")

    def _abort(self, cur: RoundState) -> None:
        """An interrupted round: roll back, keep the diff, record nothing (``--resume`` starts it again)."""
        self.git.ensure_on_branch()
        tip = self.git.tip()
        if cur.step in ("commit", "record") or (tip is not None and tip == cur.commit):
            return  # the verdict was being applied: --resume finishes it
        if tip != cur.base:
            self._fold(cur)
        self._rollback(cur, "interrupted.patch")
        self.state.current = None
        self._save()

    def _record(self, cur: RoundState) -> None:
        self._step(cur, "record")
        verdict = Verdict.from_dict(cur.verdict or {"action": "rollback", "reason": "no verdict"})
        outcome = Outcome.from_dict(cur.outcome or {"round": cur.n, "ok": False})
        existing = [r for r in self.rows if r.round == cur.n and r.kind == cur.kind]
        if existing:
            row = existing[0]
        else:
            row = self._row(cur, outcome, verdict)
            self.rows.append(row)
            self.recorded.append(row)
        self._refresh_from_rows()
        write_history(self.paths, self.state, self.rows, self.protocol.research_question)
        cur.step = "done"
        self.state.current = None
        self._save()
        self._progress(row)

    def _refresh_from_rows(self) -> None:
        """Best, counts and the plateau streak, derived from the rows: idempotent after any crash."""
        rounds = [r for r in self.rows if r.kind == "round"]
        self.state.rounds_done = len(rounds)
        streak = 0
        for row in rounds:
            if row.improved:
                self.state.best, self.state.best_round, self.state.best_commit = row.metric, row.round, row.commit
                streak = 0
            else:
                streak += 1
        self.state.no_improvement = streak

    def _row(self, cur: RoundState, outcome: Outcome, verdict: Verdict) -> RoundRow:
        compliance = cur.steps.get("compliance", {}).get("status", "skip")
        restore = cur.steps.get("restore", {}).get("status")
        compliance_text = {"pass": "pass", "fail": "violation"}.get(compliance, "skipped")
        if restore == "fail":
            compliance_text = "violation (during training)"
        result = fmt_metric(outcome.metric) if outcome.ok else outcome.reason
        short = (cur.commit or "")[:12]
        verdict_text = {"commit": f"committed {short}", "accept": f"accepted {short}"}.get(
            verdict.action, "rolled back")
        improved = verdict.improved and verdict.action == "commit"
        best_after = outcome.metric if improved else self.state.best
        streak = 0 if improved else self.state.no_improvement + 1
        notes = list(cur.notes)
        if not verdict.improved and outcome.ok:
            notes.insert(0, verdict.reason)
        if streak and streak % PLATEAU_ROUNDS == 0:
            notes.append(f"plateau: {streak} rounds without improvement")
        finished = time.time()
        seconds = finished - cur.started_at
        steps = {k: v for k, v in cur.steps.items() if not k.startswith("_")}
        steps["verdict"] = {"status": "pass", "message": f"{verdict_text}: {verdict.reason}"}
        return RoundRow(
            round=cur.n, base=cur.base, compliance=compliance_text, result=result, verdict=verdict_text,
            action=verdict.action, metric=outcome.metric, improved=improved, strategy=cur.strategy,
            insight=cur.insight or verdict.insight, note="; ".join(notes), commit=cur.commit, patch=cur.patch,
            best=best_after, kind=cur.kind, params=dict(cur.steps.get("researcher", {}).get("params") or {}),
            steps=steps, started_at=cur.started_at, finished_at=finished, seconds=round(seconds, 3),
            overhead_s=round(max(0.0, seconds - cur.child_seconds), 3))

    def _progress(self, row: RoundRow) -> None:
        strategy = f" [{row.strategy[:60]}]" if row.strategy else ""
        self._say(f"round {row.round}/{self.state.max_rounds} {row.verdict}: {row.result} "
                  f"(best {fmt_metric(self.state.best)}){strategy} {row.seconds:.1f}s")
        if row.note and "plateau:" in row.note:
            self._say(f"warning: {self.state.no_improvement} rounds in a row without improvement; the researcher "
                      "should change strategy")

    # ---------------------------------------------------------------------------------------------- resume
    def _resume_round(self, cur: RoundState) -> None:
        self._cur = cur
        self._kill_leftover(cur)
        step = cur.step
        if cur.kind == "baseline":
            # a noise-floor run: nothing to keep; restore and measure again
            self.git.ensure_on_branch()
            self.git.restore(cur.base, self.rules)
            self.git.reset_index()
            self.state.current = None
            self._save()
            return
        self._say(f"resuming round {cur.n}, interrupted at step '{step}'")
        if step in ("verdict", "commit", "rollback", "record"):
            # the verdict is saved: apply it (idempotently) and record the row once
            self.git.ensure_on_branch()
            if step == "commit" and cur.commit:
                self._move_to_commit(cur)
            elif step == "rollback":
                self._rollback(cur)
            elif step == "verdict":
                if self.git.tip() != cur.base:
                    cur.notes.extend(self._fold(cur))
                cur.notes.append("resumed after a crash before the verdict was applied")
                self._apply(cur, Verdict.from_dict(cur.verdict or {"action": "rollback", "reason": "no verdict"}))
                return
            self._record(cur)
            return
        tip = self.git.tip()
        tree_state = "an unverified commit" if tip is not None and tip != cur.base else ""
        notes = self._fold(cur)
        changed = self.git.snapshot(cur.base) != self.git.tree_of(cur.base)
        kind = tree_state or ("uncommitted edits" if changed else "a clean tree")
        if step == "researcher":
            # the researcher may have been half-way through its edits: discard them (diff kept) and redo the round
            if changed:
                self._rollback(cur, "interrupted.patch")
            self._say(f"round {cur.n}: the researcher was interrupted ({kind}); starting the round again")
            patch = cur.patch
            fresh = RoundState(n=cur.n, base=cur.base)
            fresh.notes.append(f"restarted after a crash during the researcher ({kind}"
                               + (f"; its partial diff kept in {patch}" if patch else "") + ")")
            self._round(cur.n, fresh)
            return
        self._say(f"round {cur.n}: finishing from the compliance check ({kind})")
        cur.notes.extend(notes)
        cur.notes.append(f"resumed after a crash during {step} ({kind}); finished from the compliance check")
        for name in ("compliance", "train", "restore", "eval"):
            cur.steps.pop(name, None)
        self.state.current = cur
        try:
            self._after_researcher(cur, None)
        except _Interrupted:
            self._abort(cur)
            raise

    def _kill_leftover(self, cur: RoundState) -> None:
        pgid = cur.child_pgid
        if not pgid:
            return
        started = cur.steps.get("_child", {}).get("start")
        if started is not None and _proc_start(pgid) not in (started, None):
            return  # the pid was reused by another process
        if proc.group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            deadline = time.monotonic() + 5
            while proc.group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            cur.notes.append(f"killed the interrupted {cur.step} command left running (process group {pgid})")
        cur.child_pgid = None

    # ---------------------------------------------------------------------------------------------- noise floor
    def _measure_noise(self) -> None:
        if self.state.rounds_done > 0:
            self._say("the noise floor is measured before the first round only; skipping")
            return
        runs: list[float] = []
        for k in (1, 2):
            base = self.git.tip()
            assert base is not None
            cur = RoundState(n=k, base=base, kind="baseline")
            self.state.current = self._cur = cur
            try:
                self._train_and_eval(cur)
            except _StepFailed as failed:
                raise InputError(f"baseline run {k} (for the noise floor) failed: {failed.reason}; the unchanged "
                                 f"base must train and evaluate before rounds start (see "
                                 f"{self.paths.rel(self._round_dir(cur))})", self.protocol.path) from None
            except _Interrupted:
                self.git.restore(base, self.rules)
                self.state.current = None
                self._save()
                raise
            runs.append(float(cur.steps["eval"]["metric"]))
            self.git.restore(base, self.rules)
            self.git.reset_index()
            self._say(f"baseline run {k}: {self.protocol.eval_metric} {fmt_metric(runs[-1])}")
        floor = noise_floor(runs)
        start = sum(runs) / len(runs)
        self.state.noise = {"runs": runs, "floor": floor, "best_start": start}
        self.state.best = start
        self.state.current = None
        self._save()
        write_history(self.paths, self.state, self.rows, self.protocol.research_question)
        self._say(f"noise floor {fmt_metric(floor)} (2 sigma of {', '.join(fmt_metric(r) for r in runs)}); "
                  f"best starts at the measured mean {fmt_metric(start)}")


def _tail(path: Path, limit: int = 200) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = [line for line in fh.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:limit] if lines else ""
