"""The pytest plugin: options, ini keys, markers, gate items and fixtures.

Loaded for every pytest run in an environment that has pytest-spml, so this
module imports nothing heavy: torch, wandb and tensorboard are reached only
from inside tests that ask for them, and the gate modules only when a gate
is configured.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from .report import CheckResult, Status

if TYPE_CHECKING:
    from .plan.model import Plan
    from .protocol import Protocol

MARKERS = {
    "spml_l0": "spml_l0(*paths): L0 static checks of the given training files before the test; error findings fail it",
    "spml_l1": "L1 runtime validation: trains the real pipeline; skipped unless --spml-l1 is given",
    "spml_integration": "the plan's [INTEGRATION] subtask test: the assembled training pipeline",
}


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Settings:
    """Resolved pytest-spml settings, command line over ini over defaults."""

    l1: bool
    l1_minutes: float
    l1_steps: int | None
    device: str
    peak_flops: float | None
    report: str | None
    plans: tuple[str, ...]
    protocol: str | None
    l0: tuple[str, ...]
    fixed_files_base: str | None

    def header(self) -> str:
        l1 = (f"L1 on (budget {self.l1_minutes:g} min" + (f", {self.l1_steps} steps" if self.l1_steps else "")
              + f", device {self.device})") if self.l1 else "L1 off (enable with --spml-l1)"
        gates = ", ".join([*self.plans, *([self.protocol] if self.protocol else []), *self.l0]) or "none configured"
        peak = f"{self.peak_flops:g} FLOP/s" if self.peak_flops else "from device table"
        return f"spml: {l1}; peak {peak}; gates: {gates}"


settings_key = pytest.StashKey[Settings]()
l1_report_key = pytest.StashKey[Any]()
gates_key = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("spml", "pytest-spml: ML pipeline validation")
    group.addoption("--spml-l1", action="store_true", default=False,
                    help="run L1 runtime validation tests (marked spml_l1): train the real pipeline for a bounded time")
    group.addoption("--spml-l1-minutes", type=float, default=None, metavar="MIN",
                    help="L1 training time budget in minutes (ini: spml_l1_minutes; default 5)")
    group.addoption("--spml-l1-steps", type=int, default=None, metavar="N",
                    help="L1 training step limit, whichever of steps/minutes comes first (ini: spml_l1_steps)")
    group.addoption("--spml-l1-device", default=None, metavar="DEVICE",
                    help="device for L1: auto, cpu, cuda, cuda:N (ini: spml_l1_device; default auto)")
    group.addoption("--spml-peak-flops", type=float, default=None, metavar="FLOPS",
                    help="peak FLOP/s for MFU, overriding the device table (needed for MFU on CPU)")
    group.addoption("--spml-report", default=None, metavar="PATH",
                    help="write the L1 measurements as JSON to PATH (ini: spml_report)")

    parser.addini("spml_plans", type="linelist", default=[],
                  help="plan globs (relative to rootdir) gated as test items, one test per plan-gate rule")
    parser.addini("spml_protocol", default="",
                  help="autoresearch protocol gated as a test item (validated; see spml_fixed_files_base)")
    parser.addini("spml_l0", type="linelist", default=[],
                  help="training-code globs checked by L0 static checks, one test item per file")
    parser.addini("spml_fixed_files_base", default="",
                  help="when set (e.g. origin/main), also gate Fixed-file compliance against this revision")
    parser.addini("spml_l1_pipeline", default="",
                  help="module:attribute of your L1Pipeline (class or instance); instead of a spml_pipeline fixture")
    parser.addini("spml_l1_minutes", default="5", help="L1 training time budget in minutes (default 5)")
    parser.addini("spml_l1_steps", default="", help="L1 training step limit")
    parser.addini("spml_l1_device", default="auto", help="device for L1 (default auto)")
    parser.addini("spml_peak_flops", default="", help="peak FLOP/s for MFU, overriding the device table")
    parser.addini("spml_report", default="", help="path for the L1 JSON report")


def _number(config: pytest.Config, option: str, ini: str, kind: type) -> Any:
    value = config.getoption(option)
    if value is not None:
        return value
    raw = str(config.getini(ini)).strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise pytest.UsageError(f"ini key {ini} = {raw!r} is not a {kind.__name__}; fix it in your pytest config") from None


def _settings(config: pytest.Config) -> Settings:
    minutes = _number(config, "spml_l1_minutes", "spml_l1_minutes", float)
    if minutes is not None and not 0 < minutes < float("inf"):
        raise pytest.UsageError(f"--spml-l1-minutes / spml_l1_minutes must be a positive number, got {minutes}")
    steps = _number(config, "spml_l1_steps", "spml_l1_steps", int)
    if steps is not None and steps < 1:
        raise pytest.UsageError(f"--spml-l1-steps / spml_l1_steps must be at least 1, got {steps}")
    peak = _number(config, "spml_peak_flops", "spml_peak_flops", float)
    if peak is not None and not 0 < peak < float("inf"):
        raise pytest.UsageError(f"--spml-peak-flops / spml_peak_flops must be a positive FLOP/s figure, got {peak}")
    device = config.getoption("spml_l1_device") or str(config.getini("spml_l1_device")) or "auto"
    if not DEVICE_PATTERN.fullmatch(device):
        raise pytest.UsageError(f"--spml-l1-device / spml_l1_device: {device!r} is not one of auto, cpu, cuda, "
                                "cuda:N, mps")
    return Settings(
        l1=bool(config.getoption("spml_l1")),
        l1_minutes=minutes if minutes is not None else 5.0,
        l1_steps=steps,
        device=device,
        peak_flops=peak,
        report=config.getoption("spml_report") or (str(config.getini("spml_report")) or None),
        plans=tuple(config.getini("spml_plans")),
        l0=tuple(config.getini("spml_l0")),
        protocol=str(config.getini("spml_protocol")) or None,
        fixed_files_base=str(config.getini("spml_fixed_files_base")) or None,
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    settings = _settings(config)
    config.stash[settings_key] = settings
    config.stash[gates_key] = _gate_paths(config, settings)


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[settings_key].header()


def torch_missing_reason() -> str | None:
    """Why L1 cannot run here, without importing torch to find out."""
    if importlib.util.find_spec("torch") is None:
        return "L1 needs PyTorch, which is not installed: pip install 'pytest-spml[torch]'"
    return None


# ---------------------------------------------------------------- gate items


class GateFailure(Exception):
    """A gate rule failed; carries the result for the failure report."""

    def __init__(self, result: CheckResult):
        super().__init__(result.message)
        self.result = result


class GateItem(pytest.Item):
    """One gate rule applied to one file: its outcome is the rule's status."""

    def __init__(self, *, result: CheckResult, **kwargs: Any):
        super().__init__(**kwargs)
        self.result = result
        if result.status is Status.SKIP:
            # a marker, not pytest.skip() in runtest: the report then points at the plan, not at this plugin
            self.add_marker(pytest.mark.skip(reason=result.message))

    def runtest(self) -> None:
        if self.result.status in (Status.FAIL, Status.ERROR):
            raise GateFailure(self.result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateFailure):
            from .render import format_result

            return format_result(excinfo.value.result)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        line = self.result.line - 1 if self.result.line else 0  # 0-based, as pytest reports it
        return self.path, line, f"{self.result.id} {self.result.name}".strip()


class GateFile(pytest.File):
    """A plan or protocol file gated as a collection of rule items."""

    def __init__(self, *, kind: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.kind = kind

    def collect(self) -> Iterator[GateItem]:
        settings = self.config.stash[settings_key]
        if self.kind == "plan":
            results = _plan_results(self.path)
        elif self.kind == "l0":
            results = [l0_result(self.path, self.config.rootpath)]
        else:
            results = _protocol_results(self.path, self.config.rootpath, settings.fixed_files_base)
        seen: dict[str, int] = {}
        for result in results:
            name = f"{result.id}" if not result.name else f"{result.id} {result.name}"
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name} [{seen[name]}]"
            yield GateItem.from_parent(self, name=name, result=result)


def l0_result(path: Path, root: Path) -> CheckResult:
    """L0 on one file as one check: it fails on error findings; advisories are listed, never failing."""
    from .l0.config import load_l0_config
    from .l0.runner import lint_file

    config = load_l0_config(root)
    findings, _suppressed = lint_file(path, config)
    errors = [f for f in findings if f.severity == "error"]
    advisories = [f for f in findings if f.severity != "error"]
    lines = "\n".join(f"  {f.path}:{f.line}:{f.col}: {f.rule} [{f.category}] {f.message}" for f in errors + advisories)
    shown = config.relative(path)
    if errors:
        return CheckResult("L0", Status.FAIL, f"{len(errors)} error finding(s), {len(advisories)} advisory:\n{lines}",
                           path=shown, name="static checks")
    summary = f"no error findings ({len(advisories)} advisory)" + (f":\n{lines}" if advisories else "")
    return CheckResult("L0", Status.PASS, summary, path=shown, name="static checks")


def _plan_results(path: Path) -> list[CheckResult]:
    from .errors import InputError
    from .plan.model import parse_plan
    from .plan.rules import check_plan

    try:
        return check_plan(parse_plan(path))
    except InputError as exc:
        return [CheckResult("PG000", Status.ERROR, exc.message, path=str(path), line=exc.line, name="plan readable")]


def _protocol_results(path: Path, root: Path, base: str | None) -> list[CheckResult]:
    from .errors import InputError
    from .protocol import load_protocol

    try:
        load_protocol(path, root)
    except InputError as exc:
        return [CheckResult("PR001", Status.FAIL, exc.message, path=str(path), line=exc.line, name="protocol valid")]
    results = [CheckResult("PR001", Status.PASS, "protocol fields present and valid", path=str(path), name="protocol valid")]
    if base:
        results.append(_fixed_files_result(path, root, base))
    return results


def _fixed_files_result(path: Path, root: Path, base: str) -> CheckResult:
    import argparse

    from .commands import fixed_files
    from .errors import InputError

    args = argparse.Namespace(repo=str(root), protocol=str(path), base=base, staged=False, no_cache=False,
                              governed_branches_only=False)
    try:
        report = fixed_files.run(args)
    except InputError as exc:
        return CheckResult("FF000", Status.ERROR, str(exc), path=str(path), name="Fixed-file compliance")
    if report.ok:
        return CheckResult("FF000", Status.PASS, f"only Variable paths differ from {base}", path=str(path),
                           name="Fixed-file compliance")
    lines = "\n".join(f"  {v['path']}: {v['reason']}" for v in report.summary["violations"])
    return CheckResult("FF000", Status.FAIL, f"paths that may not differ from {base}:\n{lines}", path=str(path),
                       name="Fixed-file compliance")


def _ini_glob(root: Path, key: str, glob: str, what: str, advice: str, suffix: str = "") -> list[Path]:
    """The files an ini glob names under the rootdir; a bad or empty glob is a usage error."""
    if Path(glob).is_absolute() or ".." in Path(glob).parts:
        raise pytest.UsageError(f"{key}: {glob!r} must be a glob relative to the rootdir ({root})")
    try:
        matched = sorted(p for p in root.glob(glob) if p.is_file() and p.name.endswith(suffix))
    except (ValueError, NotImplementedError) as exc:
        raise pytest.UsageError(f"{key}: {glob!r} is not a valid glob ({exc})") from None
    if not matched:
        fix = f"fix the ini key or {advice}" if advice else "fix the ini key"
        raise pytest.UsageError(f"{key}: no {what} matches {glob!r} under {root}; {fix}")
    return matched


def _gate_paths(config: pytest.Config, settings: Settings) -> dict[Path, str]:
    """The files gated as tests: {path: "plan" | "protocol"}; bad ini values are usage errors."""
    root = config.rootpath
    gates: dict[Path, str] = {}
    for glob in settings.plans:
        gates.update(dict.fromkeys(_ini_glob(root, "spml_plans", glob, "plan", "add the plan"), "plan"))
    for glob in settings.l0:
        gates.update(dict.fromkeys(_ini_glob(root, "spml_l0", glob, "Python file", "", suffix=".py"), "l0"))
    if settings.protocol:
        path = root / settings.protocol
        if path.is_dir():
            raise pytest.UsageError(f"spml_protocol: {path} is a directory; name the protocol file itself")
        if not path.is_file():
            raise pytest.UsageError(f"spml_protocol: {path} does not exist; fix the ini key or run `spml init`")
        gates[path] = "protocol"
    return gates


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> GateFile | None:
    kind = parent.config.stash[gates_key].get(file_path)
    if kind is None:
        return None
    return GateFile.from_parent(parent, path=file_path, kind=kind)


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    # Gate files usually live outside testpaths (docs/plans/). When pytest was
    # not given explicit paths, add them to what it collects, so they count,
    # select (-k) and report like any test. Explicit paths are respected:
    # `pytest tests/test_x.py::test_y` runs just that test.
    config = session.config
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        return
    requested = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    for path in config.stash[gates_key]:
        if not any(path == r or r in path.parents for r in requested):
            config.args.append(str(path))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[settings_key]
    if settings.l1:
        reason = torch_missing_reason()
        skip = pytest.mark.skip(reason=reason) if reason else None
    else:
        skip = pytest.mark.skip(reason="L1 runtime validation is off: run pytest --spml-l1 to train the pipeline")
    if skip is not None:
        for item in items:
            if item.get_closest_marker("spml_l1"):
                item.add_marker(skip)
    if str(config.getini("spml_l1_pipeline")).strip() and not any(
            "spml_l1_report" in getattr(item, "fixturenames", ()) for item in items):
        items.extend(_l1_items(session, skip))


def _l1_items(session: pytest.Session, skip: Any) -> list[pytest.Item]:
    """With `spml_l1_pipeline` in the ini file, the L1 checks need no test module of their own."""
    from .l1.pytest_support import CHECK_IDS, report_check

    def make(check_id: str) -> Any:
        def test_spml_l1(spml_l1_report: Any, request: pytest.FixtureRequest) -> None:
            report_check(spml_l1_report, check_id, request.node)
        return test_spml_l1

    items = []
    for check_id in CHECK_IDS:
        item = pytest.Function.from_parent(session, name=f"spml-l1[{check_id}]", callobj=make(check_id))
        item.add_marker(pytest.mark.spml_l1)
        if skip is not None:
            item.add_marker(skip)
        items.append(item)
    return items


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # In the call phase, not setup: an L0 finding fails the test, it is not a fixture error.
    marker = item.get_closest_marker("spml_l0")
    if marker is None or not marker.args:
        return
    root = item.config.rootpath
    failures = []
    for raw in marker.args:
        path = root / str(raw)
        if not path.is_file():
            pytest.fail(f"spml_l0 marker: {path} is not a file; give training files relative to {root}", pytrace=False)
        result = l0_result(path, root)
        if result.status is Status.FAIL:
            failures.append(result.message)
    if failures:
        pytest.fail("L0 static checks failed:\n" + "\n".join(failures), pytrace=False)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def spml_pipeline(pytestconfig: pytest.Config) -> Any:
    """Your L1Pipeline: override this fixture in conftest.py, or name it with the spml_l1_pipeline ini key."""
    from .l1.interface import import_pipeline_target

    target = str(pytestconfig.getini("spml_l1_pipeline")).strip()
    if not target:
        pytest.fail("L1 needs your pipeline: define a session fixture `spml_pipeline` in conftest.py returning an "
                    "L1Pipeline, or set spml_l1_pipeline = package.module:Class in the pytest ini", pytrace=False)
    try:
        obj = import_pipeline_target(target)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"spml_l1_pipeline = {target}: cannot import it ({exc}); use package.module:Class", pytrace=False)
    return obj() if isinstance(obj, type) else obj


@pytest.fixture(scope="session")
def spml_l1_report(pytestconfig: pytest.Config, spml_pipeline: Any) -> Any:
    """The L1 run (once per session): bounded training plus every pipeline probe, judged."""
    settings = pytestconfig.stash[settings_key]
    if not settings.l1:
        pytest.skip("L1 runtime validation is off: run pytest --spml-l1 to train the pipeline")
    reason = torch_missing_reason()
    if reason:
        pytest.skip(reason)
    from .l1.report_file import write_report
    from .l1.runner import L1Settings, run_l1
    from .l1.thresholds import load_thresholds

    l1_settings = L1Settings(minutes=settings.l1_minutes, steps=settings.l1_steps, device=settings.device,
                             peak_flops=settings.peak_flops, thresholds=load_thresholds(pytestconfig.rootpath))
    report = run_l1(spml_pipeline, l1_settings)
    path = Path(settings.report) if settings.report else pytestconfig.rootpath / ".spml" / "l1-report.json"
    write_report(report, path if path.is_absolute() else pytestconfig.rootpath / path)
    pytestconfig.stash[l1_report_key] = (report, path)
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    found = config.stash.get(l1_report_key, None)
    if found is None:
        return
    from .l1.report_file import summary_lines

    report, path = found
    terminalreporter.section("spml L1 runtime validation")
    for line in summary_lines(report):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"report: {path}")


@pytest.fixture(scope="session")
def spml_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved pytest-spml settings (L1 budget, device, gates)."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def spml_plans(pytestconfig: pytest.Config) -> list["Plan"]:
    """Every plan matched by the ``spml_plans`` ini globs, parsed."""
    from .plan.model import parse_plan

    root = pytestconfig.rootpath
    globs = pytestconfig.stash[settings_key].plans
    if not globs:
        pytest.fail("spml_plans fixture: set the spml_plans ini key to your plan globs (e.g. docs/plans/*.md)",
                    pytrace=False)
    paths = sorted({p for g in globs for p in root.glob(g) if p.is_file()})
    return [parse_plan(p) for p in paths]


@pytest.fixture(scope="session")
def spml_plan(spml_plans: list["Plan"]) -> "Plan":
    """The one plan of the project (fails when spml_plans matches none or several)."""
    if len(spml_plans) != 1:
        names = ", ".join(str(p.path) for p in spml_plans) or "none"
        pytest.fail(f"spml_plan fixture needs exactly one plan, spml_plans matched {len(spml_plans)}: {names}; "
                    "use the spml_plans fixture for several", pytrace=False)
    return spml_plans[0]


@pytest.fixture(scope="session")
def spml_protocol(pytestconfig: pytest.Config) -> "Protocol":
    """The parsed autoresearch protocol (ini ``spml_protocol``, default autoresearch-protocol.md)."""
    from .errors import InputError
    from .protocol import load_protocol

    root = pytestconfig.rootpath
    path = root / (pytestconfig.stash[settings_key].protocol or "autoresearch-protocol.md")
    try:
        return load_protocol(path, root)
    except InputError as exc:
        pytest.fail(f"spml_protocol fixture: {exc}", pytrace=False)
