"""Researchers: whatever edits the Variable files in a round.

* :class:`CommandResearcher`: any program (a coding agent's CLI, a script)
  started with the round's prompt file and ``SPML_*`` environment
  variables; it reports its strategy in ``$SPML_STRATEGY``.
* :class:`SampleResearcher`: for users without an agent; samples the
  structured ranges of ``variable.range`` and writes the values into the
  Variable file that holds each key (``lr: 0.001``, ``lr = 1e-3``,
  ``"lr": 0.001``). Uses Optuna's TPE sampler when Optuna is installed
  (fed with every earlier round), uniform / log-uniform sampling otherwise.
* :class:`ScriptResearcher`: replays a list of patches, one per round
  (reproducible demos and tests).

A researcher's failure is a recorded round, never a dead loop.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import gitcmd
from ..errors import InputError
from ..protocol import Protocol
from .experiences import RoundRow


@dataclass
class ResearchContext:
    round: int
    base: str
    root: Path
    protocol: Protocol
    round_dir: Path
    prompt_path: Path
    strategy_path: Path
    env: dict[str, str]
    rows: list[RoundRow]
    seed: int
    # run a command under the loop's supervision: (command, log, timeout) -> ChildResult
    run: Callable[..., Any]


@dataclass
class ResearchResult:
    ok: bool
    strategy: str = ""
    insight: str = ""
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    exhausted: bool = False  # no more ideas: the loop stops before this round
    interrupted: bool = False
    seconds: float = 0.0


def read_strategy(path: Path) -> tuple[str, str]:
    """``strategy: ...`` / ``insight: ...`` lines (a file of plain text is all strategy)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", ""
    strategy, insight, plain = "", "", []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "strategy":
            strategy = value.strip()
        elif sep and key.strip().lower() == "insight":
            insight = value.strip()
        elif line.strip():
            plain.append(line.strip())
    return strategy or " ".join(plain)[:300], insight


class CommandResearcher:
    name = "command"

    def __init__(self, command: str, timeout_s: float):
        self.command = command
        self.timeout_s = timeout_s

    def research(self, ctx: ResearchContext) -> ResearchResult:
        import shlex

        command = self.command.replace("{prompt}", shlex.quote(str(ctx.prompt_path)))
        result = ctx.run(command, ctx.round_dir / "researcher.log", self.timeout_s)
        strategy, insight = read_strategy(ctx.strategy_path)
        out = ResearchResult(ok=result.ok, strategy=strategy, insight=insight, seconds=result.seconds,
                             interrupted=result.stopped == "interrupted")
        if not result.ok:
            out.reason = f"researcher {result.describe()}"
        return out


# ------------------------------------------------------------------------------------------------ sampling

@dataclass(frozen=True)
class Dimension:
    name: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False
    choices: tuple[Any, ...] = ()


def parse_ranges(value: Any, protocol_path: Path) -> list[Dimension]:
    """``variable.range`` as sampling dimensions; anything unreadable is bad input naming the key."""
    if not isinstance(value, dict) or not value:
        raise InputError("the sample researcher needs 'variable.range' in the protocol: a mapping such as "
                         "{lr: [1.0e-4, 1.0e-2], hidden_size: [64, 512], optimizer: [adam, sgd, adamw]}",
                         protocol_path)
    dims = []
    for name, spec in value.items():
        if isinstance(spec, dict):
            if "choices" in spec and isinstance(spec["choices"], list) and spec["choices"]:
                dims.append(Dimension(str(name), choices=tuple(spec["choices"])))
                continue
            low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
        elif isinstance(spec, list) and len(spec) == 2 and all(_is_number(v) for v in spec):
            low, high, log = spec[0], spec[1], None
        elif isinstance(spec, list) and spec:
            dims.append(Dimension(str(name), choices=tuple(spec)))
            continue
        else:
            raise InputError(f"variable.range.{name} must be [low, high], a list of choices, or "
                             f"{{low, high, log}}, got {spec!r}", protocol_path)
        if not (_is_number(low) and _is_number(high)) or not low < high:
            raise InputError(f"variable.range.{name} needs numbers low < high, got {spec!r}", protocol_path)
        integer = isinstance(low, int) and isinstance(high, int)
        if log is None:  # spans of a decade or more are searched on a log scale
            log = low > 0 and high / low >= 10
        if log and low <= 0:
            raise InputError(f"variable.range.{name}: a log scale needs low > 0, got {spec!r}", protocol_path)
        dims.append(Dimension(str(name), float(low), float(high), integer, bool(log)))
    return dims


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _format(value: Any, old: str) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4g}"
        if "." not in text and "e" not in text:
            text += ".0"
    else:
        text = str(value)
    quote = old[:1] if old[:1] in "\"'" and old[-1:] == old[:1] else ""
    return f"{quote}{text}{quote}"


def _key_pattern(key: str) -> re.Pattern[str]:
    # `key: value`, `key = value`, `"key": value,` - one assignment per line, comments kept
    return re.compile(rf"""(?m)^(?P<pre>[ \t]*["']?{re.escape(key)}["']?[ \t]*[:=][ \t]*)(?P<val>[^\s,#][^,#\n]*?)"""
                      rf"""(?P<post>[ \t]*,?[ \t]*(?:#.*)?)$""")


_EDITABLE = (".yaml", ".yml", ".json", ".toml", ".py", ".cfg", ".ini", ".conf")


class SampleResearcher:
    name = "sample"

    def __init__(self, protocol: Protocol, use_optuna: bool | None = None):
        self.dims = parse_ranges(protocol.variable_range, protocol.path)
        self.use_optuna = use_optuna

    def _optuna(self) -> Any:
        if self.use_optuna is False:
            return None
        try:
            import optuna  # noqa: F401 - optional
        except ImportError:
            if self.use_optuna:
                raise InputError("--sampler tpe needs Optuna: pip install optuna") from None
            return None
        return optuna

    def sample(self, ctx: ResearchContext) -> tuple[dict[str, Any], str]:
        optuna = self._optuna()
        if optuna is not None:
            return self._sample_tpe(optuna, ctx), "optuna-tpe"
        rng = random.Random(f"{ctx.seed}:{ctx.round}")
        params: dict[str, Any] = {}
        for d in self.dims:
            if d.choices:
                params[d.name] = rng.choice(d.choices)
                continue
            assert d.low is not None and d.high is not None
            if d.log:
                value = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                value = rng.uniform(d.low, d.high)
            params[d.name] = min(int(d.high), max(int(d.low), round(value))) if d.integer else value
        return params, "random"

    def _sample_tpe(self, optuna: Any, ctx: ResearchContext) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists: dict[str, Any] = {}
        for d in self.dims:
            if d.choices:
                dists[d.name] = CategoricalDistribution(list(d.choices))
            elif d.integer:
                dists[d.name] = IntDistribution(int(d.low or 0), int(d.high or 0), log=d.log)
            else:
                dists[d.name] = FloatDistribution(float(d.low or 0), float(d.high or 0), log=d.log)
        direction = "maximize" if ctx.protocol.eval_direction == "maximize" else "minimize"
        study = optuna.create_study(direction=direction,
                                    sampler=optuna.samplers.TPESampler(seed=ctx.seed * 100003 + ctx.round))
        for row in ctx.rows:
            params = {k: v for k, v in row.params.items() if k in dists}
            if set(params) != set(dists):
                continue
            try:
                if row.metric is not None and math.isfinite(row.metric):
                    study.add_trial(create_trial(params=params, distributions=dists, value=row.metric))
                else:
                    study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL))
            except ValueError:
                continue  # a value outside today's ranges (the protocol changed): not evidence any more
        return dict(study.ask(dists).params)

    def research(self, ctx: ResearchContext) -> ResearchResult:
        params, how = self.sample(ctx)
        files = _editable_files(ctx.root, ctx.protocol)
        edited: dict[Path, str] = {}
        where: dict[str, str] = {}
        for name, value in params.items():
            pattern = _key_pattern(name)
            for path in files:
                text = edited.get(path)
                if text is None:
                    try:
                        text = path.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError):
                        continue
                match = pattern.search(text)
                if match is None:
                    continue
                new = match.group("pre") + _format(value, match.group("val").strip()) + match.group("post")
                edited[path] = text[: match.start()] + new + text[match.end():]
                where[name] = path.relative_to(ctx.root).as_posix()
                break
        missing = [n for n in params if n not in where]
        if missing:
            return ResearchResult(False, reason=f"sample researcher: no Variable file sets {', '.join(missing)} "
                                                f"(looked for 'key: value' / 'key = value' lines in "
                                                f"{', '.join(p.relative_to(ctx.root).as_posix() for p in files) or 'no files'})",
                                  params=params)
        for path, text in edited.items():
            path.write_text(text, encoding="utf-8")
        shown = ", ".join(f"{k}={_format(v, '')}" for k, v in params.items())
        return ResearchResult(True, strategy=f"{how}: {shown}", params=params)


def _editable_files(root: Path, protocol: Protocol) -> list[Path]:
    out = gitcmd.run_git(root, ["ls-files", "-z"])
    variable, fixed = protocol.variable, protocol.fixed
    paths = [p for p in gitcmd.split_z(out)
             if p.endswith(_EDITABLE) and variable(p) and not fixed(p) and p != protocol.relpath]
    # configuration files before code: a key is most likely a hyperparameter there
    return [root / p for p in sorted(paths, key=lambda p: (p.endswith(".py"), p))]


# ------------------------------------------------------------------------------------------------ scripted

class ScriptResearcher:
    """Replays patches: round N applies the N-th (sorted ``*.patch``/``*.diff`` of a folder, or a list file)."""

    name = "script"

    def __init__(self, source: Path):
        self.source = source
        self.patches = self._list(source)

    @staticmethod
    def _list(source: Path) -> list[Path]:
        if source.is_dir():
            patches = sorted(p for p in source.iterdir() if p.suffix in (".patch", ".diff") and p.is_file())
        elif source.is_file() and source.suffix in (".patch", ".diff"):
            patches = [source]
        elif source.is_file():
            patches = []
            for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                path = (source.parent / line).resolve()
                if not path.is_file():
                    raise InputError(f"patch not found: {line}", source, lineno)
                patches.append(path)
        else:
            raise InputError("the script researcher needs a folder of .patch files, a .patch file, or a list of "
                             "patch paths", source)
        if not patches:
            raise InputError("no patches to replay (expected *.patch or *.diff files)", source)
        return patches

    def research(self, ctx: ResearchContext) -> ResearchResult:
        index = ctx.round - 1
        if index >= len(self.patches):
            return ResearchResult(False, exhausted=True, reason=f"the script has no patch for round {ctx.round}")
        patch = self.patches[index]
        strategy, insight = _patch_header(patch)
        proc = subprocess.run(["git", "apply", "--binary", "--whitespace=nowarn", str(patch)], cwd=ctx.root,
                              capture_output=True, env=gitcmd.git_env())
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            return ResearchResult(False, strategy=strategy or patch.name,
                                  reason=f"patch {patch.name} does not apply: {why[-1] if why else proc.returncode}")
        return ResearchResult(True, strategy=strategy or patch.stem, insight=insight)


def _patch_header(patch: Path) -> tuple[str, str]:
    """``Strategy:`` / ``Insight:`` lines before the diff (``git apply`` ignores that text)."""
    strategy = insight = ""
    try:
        text = patch.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", ""
    for line in text.splitlines():
        if line.startswith(("diff --git", "--- ")):
            break
        key, sep, value = line.lstrip("# ").partition(":")
        if sep and key.strip().lower() == "strategy":
            strategy = value.strip()
        elif sep and key.strip().lower() == "insight":
            insight = value.strip()
    return strategy, insight
