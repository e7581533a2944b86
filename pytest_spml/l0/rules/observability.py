"""L0 rules: observability. A run you cannot see is a run you cannot debug, compare or resume.

Every rule here judges a training file as a whole. They share one picture of the file (:class:`_Facts`): which
calls write somewhere (``print``, loggers, ``writer.add_scalar``, ``wandb.log``, ``json.dump``, ``f.write``, and
same-file helpers that do), and which names and strings reach those calls, following variables back through
their assignments (``record = {"loss": loss.item()}; log.write(json.dumps(record))`` logs ``loss``).
"""

from __future__ import annotations

import ast
import re
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..context import FileContext, LoopNode, constant
from ..model import Finding, Rule
from ..registry import rule

# Method (or bare function) names that write a value somewhere a person or a tool will read it.
_SINK_METHODS = frozenset({
    "print", "info", "warning", "warn", "error", "critical", "exception", "debug", "log", "log_metric",
    "log_metrics", "log_dict", "log_scalar", "log_scalars", "add_scalar", "add_scalars", "write", "writerow",
    "writerows", "dump", "set_postfix", "set_postfix_str", "set_description", "record",
})
# ...except the maths and tensor functions that share those names (`torch.log(x)`, `np.log(x)`).
_MATH_PREFIXES = ("torch.", "math.", "numpy.", "cmath.", "jax.", "scipy.")
_DASHBOARDS = ("wandb.", "mlflow.", "json.", "pickle.", "yaml.", "csv.")
# Sinks a progress bar rate-limits itself, and levels that are off by default: no frequency control needed.
_RATE_LIMITED = frozenset({"set_postfix", "set_postfix_str", "set_description", "debug"})
_TIMERS = frozenset({"time.time", "time.perf_counter", "time.monotonic", "time.time_ns", "time.perf_counter_ns",
                     "time.monotonic_ns", "timeit.default_timer"})
_TIME_WORDS = frozenset({"dt", "time", "elapsed", "duration", "latency", "throughput", "mfu", "ms", "sec", "secs",
                         "seconds", "tps", "ips"})
_TIME_MARKS = ("per_sec", "per_second", "persec", "it/s", "s/it", "tok/s", "tokens/s", "samples/s", "img/s")
_PROGRESS_MODULES = ("tqdm", "rich.progress", "alive_progress", "progressbar", "enlighten")
_SAVERS = frozenset({"save_pretrained", "save_checkpoint", "save_state", "save_model", "save_file",
                     "save_state_dict", "save_weights"})
_SAVE_RECEIVERS = frozenset({"accelerator", "fabric", "dcp", "checkpointer", "checkpoint", "torch"})
_SEED_HELPERS = frozenset({"seed_everything", "set_seed", "set_seeds", "seed_all", "set_random_seed",
                           "set_random_seeds", "setup_seed", "fix_seed", "fix_seeds", "init_seeds"})
# Receivers that collect metrics for display: `metric_logger.update(loss=...)`, `meters["img/s"].update(...)`.
_COLLECTOR = re.compile(r"(logger|meters?|tracker|writer|monitor|recorder|progress|pbar|console)$")
# Checkpoint savers by name: `utils.save_on_master(...)`, `save_ckpt(...)`; not `save_image` or `savefig`.
# (`torch.utils.checkpoint.checkpoint` is activation checkpointing and `load_checkpoint` reads: neither saves.)
_SAVER_NAME = re.compile(r"^(save|write|dump)_?(on_master|ckpt|checkpoint|model|state|weights|pretrained)"
                         r"|(ckpt|checkpoint)_?save")
_MAX_HOPS = 3  # how far a logged name is followed back through assignments
_PART = re.compile(r"[a-z0-9/]+")


@dataclass
class _Facts:
    sinks: list[ast.Call] = field(default_factory=list)  # calls that write or collect metrics (helpers included)
    emitters: list[ast.Call] = field(default_factory=list)  # the sinks that write now (not metric collectors)
    helpers: set[str] = field(default_factory=set)  # same-file functions that write, directly or not
    tokens: set[str] = field(default_factory=set)  # lower-cased names and strings that reach a sink
    reached: set[str] = field(default_factory=set)  # dotted names of calls whose value reaches a sink

    def logged(self, pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(t) for t in self.tokens)

    def logged_part(self, words: Iterable[str], marks: Iterable[str] = ()) -> bool:
        """Is one of ``words`` a whole part of a logged name/string (``step_time_s`` has ``time``)?"""
        wanted, marks = set(words), tuple(marks)
        return any(wanted.intersection(_PART.findall(t)) or any(m in t for m in marks) for t in self.tokens)


_CACHE: weakref.WeakKeyDictionary[FileContext, _Facts] = weakref.WeakKeyDictionary()


def _facts(ctx: FileContext) -> _Facts:
    if ctx not in _CACHE:
        facts = _Facts()
        direct = [c for m in _SINK_METHODS for c in ctx.calls_by_method.get(m, ()) if _is_sink(ctx, c)]
        facts.helpers = _helpers(ctx, direct)
        helper_calls = [c for c in ctx.calls if _local_callee(ctx, c) in facts.helpers]
        emitters = {id(c): c for c in direct + helper_calls}  # `log_metrics` is both a sink name and a helper
        collectors = {id(c): c for c in ctx.calls if id(c) not in emitters and _collects(ctx, c)}
        facts.emitters = sorted(emitters.values(), key=lambda c: (c.lineno, c.col_offset))
        facts.sinks = sorted([*emitters.values(), *collectors.values()], key=lambda c: (c.lineno, c.col_offset))
        _follow(ctx, facts)
        _CACHE[ctx] = facts
    return _CACHE[ctx]


def _is_sink(ctx: FileContext, call: ast.Call) -> bool:
    if not (call.args or call.keywords):
        return False  # `probs.log()`, `event.record()`: maths and timers, not output
    name = ctx.call_name(call) or ""
    return not name.startswith(_MATH_PREFIXES)


def _collects(ctx: FileContext, call: ast.Call) -> bool:
    """``metric_logger.update(loss=...)``, ``metric_logger.log_every(loader, freq)``: a metrics collector's call."""
    if not isinstance(call.func, ast.Attribute) or not (call.args or call.keywords):
        return False
    if call.func.attr.startswith("log_"):
        return True
    receiver: ast.AST = call.func.value
    while isinstance(receiver, (ast.Subscript, ast.Call)):
        receiver = receiver.value if isinstance(receiver, ast.Subscript) else receiver.func
    name = ctx.dotted(receiver, resolve=False) if isinstance(receiver, (ast.Name, ast.Attribute)) else None
    return name is not None and any(_COLLECTOR.search(part) for part in name.lower().replace("_", ".").split("."))


def _local_callee(ctx: FileContext, call: ast.Call) -> str | None:
    """The same-file function a call runs: ``helper(...)`` or ``self.helper(...)``."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in ctx.functions and func.id not in ctx.imports:
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" \
            and func.attr in ctx.functions:
        return func.attr
    return None


def _helpers(ctx: FileContext, sinks: list[ast.Call]) -> set[str]:
    """Same-file functions that write (``def log_metrics(step, **m): json.dump(...)``), except training ones."""
    writing = {f.name for c in sinks if (f := ctx.enclosing_function(c)) is not None}
    if not writing:
        return set()
    callers: dict[str, set[str]] = defaultdict(set)
    for call in ctx.calls:
        callee = _local_callee(ctx, call)
        if callee is not None and (outer := ctx.enclosing_function(call)) is not None:
            callers[callee].add(outer.name)
    result, frontier = set(writing), list(writing)
    while frontier:
        for caller in callers.get(frontier.pop(), ()):
            if caller not in result:
                result.add(caller)
                frontier.append(caller)
    # `train(model, loader)` prints inside, but its arguments are not what it logs.
    return result - ctx.functions_calling_backward - {"main"}


def _follow(ctx: FileContext, facts: _Facts) -> None:
    """Collect what reaches the sinks, following names back through their assignments (a few hops)."""
    extra = _indirect_values(ctx)
    seen: set[tuple[str, int]] = set()
    frontier: list[tuple[ast.AST, int]] = [(c, 0) for c in facts.sinks]
    budget = 20_000  # nodes; a pathological file degrades to "logged enough", never to a slow lint
    while frontier and budget > 0:
        root, hops = frontier.pop()
        if hops and _constructed(ctx, root):
            continue  # `optimizer = AdamW(params, lr=...)` is an object, not a logged value
        nodes = [*root.args, *root.keywords] if isinstance(root, ast.Call) and hops == 0 else [root]
        if isinstance(root, ast.Call) and hops == 0:
            facts.tokens.update(k.arg.lower() for k in root.keywords if k.arg)
        for node in (n for top in nodes for n in ast.walk(top)):
            budget -= 1
            name = None
            if isinstance(node, ast.Name):
                facts.tokens.add(node.id.lower())
                name = node.id
            elif isinstance(node, ast.Attribute):
                facts.tokens.add(node.attr.lower())
                name = ctx.dotted(node, resolve=False)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                facts.tokens.add(node.value.lower())
            elif isinstance(node, ast.Call):
                called = ctx.call_name(node)
                if called:
                    facts.reached.add(called)
                    if called.rsplit(".", 1)[-1][:1].islower():  # dict(loss=...), not AdamW(lr=...)
                        facts.tokens.update(k.arg.lower() for k in node.keywords if k.arg)
            if name and hops < _MAX_HOPS:
                scope = ctx.enclosing_function(node)
                if (name, id(scope)) not in seen:
                    seen.add((name, id(scope)))
                    frontier += [(v, hops + 1) for v in _values(ctx, name, scope, extra)]


def _constructed(ctx: FileContext, value: ast.AST) -> bool:
    if not isinstance(value, ast.Call):
        return False
    called = ctx.call_name(value) or ""
    return called.rsplit(".", 1)[-1][:1].isupper()


def _values(ctx: FileContext, name: str, scope: ast.AST | None, extra: dict[str, list[ast.AST]]) -> list[ast.AST]:
    """What ``name`` may hold where it is used: assignments in the same function, else module-level ones.

    Scoped so that a logged ``x`` in the training loop is not confused with every other ``x`` in the file.
    """
    found: list[tuple[ast.AST, ast.AST]] = [*ctx.assignments.get(name, ()), *((v, v) for v in extra.get(name, ()))]
    if "." in name:  # `self.loss`: attributes live across methods
        return [v for _, v in found]
    local = [v for stmt, v in found if ctx.enclosing_function(stmt) is scope]
    if local or scope is None:
        return local
    return [v for stmt, v in found if ctx.enclosing_function(stmt) is None]


def _indirect_values(ctx: FileContext) -> dict[str, list[ast.AST]]:
    """Values that reach a name without a plain assignment: ``m["lr"] = lr``, ``t += dt``, ``m.update(...)``."""
    values: dict[str, list[ast.AST]] = defaultdict(list)
    for aug in ctx.augassigns:
        if (name := ctx.dotted(aug.target, resolve=False)) is not None:
            values[name].append(aug.value)
    for sub in ctx.subscripts:
        parent = getattr(sub, "parent", None)
        if isinstance(sub.ctx, ast.Store) and isinstance(parent, ast.Assign) \
                and (name := ctx.dotted(sub.value, resolve=False)) is not None:
            values[name] += [sub.slice, parent.value]
    for call in ctx.method_calls("update", "append", "extend", "setdefault"):
        if isinstance(call.func, ast.Attribute) and (name := ctx.dotted(call.func.value, resolve=False)):
            values[name].append(call)
    return values


def _logs_step_time(facts: _Facts) -> bool:
    """A timer's reading (``time.perf_counter() - t0``, ``start.elapsed_time(end)``) or a time-ish name is logged."""
    if facts.reached & _TIMERS or any(name.endswith(".elapsed_time") for name in facts.reached):
        return True
    return facts.logged_part(_TIME_WORDS, _TIME_MARKS)


def _trains(ctx: FileContext) -> bool:
    """A file that runs training (a training loop), not a library piece with a `train_step` to be called."""
    return ctx.is_trainer and bool(ctx.training_loops)


def _uses_progress_bar(ctx: FileContext) -> bool:
    return any(v == m or v.startswith(m + ".") for v in ctx.imports.values() for m in _PROGRESS_MODULES)


# ---------------------------------------------------------------- loops

def _step_loops(ctx: FileContext) -> list[LoopNode]:
    """Loops whose every iteration is one optimizer step (not the epoch loop, not a micro-batch loop)."""
    result: list[LoopNode] = []
    for loop in ctx.training_loops:
        if not _steps_directly(ctx, loop):
            continue  # `for epoch in ...: train_one_epoch(...)`: the steps happen in the callee's loop
        if _is_micro_loop(loop):
            outer = next((a for a in ctx.ancestors(loop) if isinstance(a, (ast.For, ast.AsyncFor, ast.While))), None)
            loop = outer if outer is not None else loop
        if all(loop is not r for r in result):
            result.append(loop)
    return result


def _steps_directly(ctx: FileContext, loop: LoopNode) -> bool:
    for call in ctx.method_calls("backward"):
        if _nearest_loop(ctx, call) is loop:
            return True
    for name in ctx.functions_calling_backward:
        function = ctx.functions.get(name)
        if function is None or any(ctx.inside(t, function) for t in ctx.training_loops):
            continue  # a function with its own training loop is an epoch, not a step
        for call in ctx.method_calls(name):
            if _local_callee(ctx, call) == name and _nearest_loop(ctx, call) is loop:
                return True
    return False


def _nearest_loop(ctx: FileContext, node: ast.AST) -> ast.AST | None:
    return next((a for a in ctx.ancestors(node) if isinstance(a, (ast.For, ast.AsyncFor, ast.While))), None)


def _is_micro_loop(loop: LoopNode) -> bool:
    """``for micro_step in range(grad_accum_steps)``: gradient accumulation inside one optimizer step."""
    head = ast.unparse(loop.target) + " " + ast.unparse(loop.iter) if isinstance(loop, (ast.For, ast.AsyncFor)) \
        else ast.unparse(loop.test)
    return any(word in head.lower() for word in ("micro", "accum"))


def _conditional(ctx: FileContext, node: ast.AST, stop: ast.AST) -> bool:
    """Is ``node`` under an ``if``/``except`` (or a conditional expression) below ``stop``?"""
    child: ast.AST = node
    for ancestor in ctx.ancestors(node):
        if ancestor is stop:
            return False
        if isinstance(ancestor, ast.If) and child is not ancestor.test:
            return True
        if isinstance(ancestor, (ast.ExceptHandler, ast.IfExp)) or \
                isinstance(ancestor, ast.BoolOp) and child is not ancestor.values[0]:
            return True
        if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True  # defined in the loop, run who knows when
        child = ancestor
    return False


def _loops_around_training(ctx: FileContext) -> list[ast.AST]:
    loops: list[ast.AST] = []
    for loop in ctx.training_loops:
        for node in (loop, *ctx.ancestors(loop)):
            if isinstance(node, (ast.For, ast.AsyncFor, ast.While)) and all(node is not x for x in loops):
                loops.append(node)
    return loops


# ---------------------------------------------------------------- rules

@rule(
    "OBS001", "loss-not-logged", "observability",
    what="A training file whose loss value never reaches a print, a logger, a metrics writer or a file.",
    why="The loss curve is the first thing anyone asks of a run: without it you cannot tell divergence from "
        "slow progress, compare two runs, or notice that a change did nothing - the run's cost buys no evidence.",
    bad="for x, y in loader:\n    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n    optimizer.step()",
    fix='for step, (x, y) in enumerate(loader):\n    loss = F.cross_entropy(model(x), y)\n    ...\n'
        '    if step % args.log_interval == 0:\n'
        '        log.write(json.dumps({"step": step, "loss": loss.item()}) + "\\n")',
)
def loss_not_logged(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx):
        return
    facts = _facts(ctx)
    # `scaler.scale(loss / accum).backward()` backpropagates `loss` (and `accum`), not `scaler`;
    # `accelerator.backward(loss)` backpropagates its argument.
    losses = {n.id.lower() for c in ctx.method_calls("backward") if isinstance(c.func, ast.Attribute)
              for top in (c.args[:1] or [c.func.value]) for n in ast.walk(top)
              if isinstance(n, ast.Name) and not _is_callee(n, c.func)}
    if "loss" in " ".join(facts.tokens) or losses & facts.tokens:
        return
    yield ctx.file_finding(rule_, "the loss is never printed, logged or written: log `loss.item()` every "
                           "`log_interval` steps (print, logger, JSONL, TensorBoard or wandb)")


def _is_callee(name: ast.Name, backward: ast.expr) -> bool:
    """``scaler`` in ``scaler.scale(loss)``: the receiver of a method call other than ``.backward`` itself."""
    parent = getattr(name, "parent", None)
    call = getattr(parent, "parent", None)
    return isinstance(parent, ast.Attribute) and parent is not backward and isinstance(call, ast.Call) \
        and call.func is parent


@rule(
    "OBS002", "step-time-not-logged", "observability",
    what="A training file that logs no step time or throughput (no `time.perf_counter()`/CUDA-event timing "
         "that reaches a log, no progress bar).",
    why="Step time is how you notice an input-bound loader, a recompiling `torch.compile`, a slow node or a "
        "regression from a change, and how you turn a step budget into a wall-clock budget; without it a 2x "
        "slowdown looks exactly like a healthy run.",
    bad='if step % args.log_interval == 0:\n    print(f"step {step} loss {loss.item():.4f}")',
    fix='t0 = time.perf_counter()\n...\nif step % args.log_interval == 0:\n'
        '    dt = (time.perf_counter() - t0) / args.log_interval\n'
        '    print(f"step {step} loss {loss.item():.4f} {dt * 1000:.1f} ms/step")\n    t0 = time.perf_counter()',
)
def step_time_not_logged(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx) or _uses_progress_bar(ctx):
        return  # a progress bar shows it/s by itself
    if _logs_step_time(_facts(ctx)):
        return
    yield ctx.file_finding(rule_, "no step time or throughput is logged: time the steps with "
                           "`time.perf_counter()` and log ms/step (or tokens/s) with the loss")


@rule(
    "OBS003", "grad-norm-not-logged", "observability",
    what="A training file that never logs the gradient norm (not even the value `clip_grad_norm_` returns).",
    why="The gradient norm is the early warning of a diverging run: spikes precede loss spikes and NaNs, and a "
        "norm that collapses to zero shows dead or disconnected parameters. `clip_grad_norm_` computes it anyway "
        "and returns it, so logging it is free.",
    bad="loss.backward()\noptimizer.step()",
    fix="loss.backward()\ngrad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n"
        "optimizer.step()\n...\nlog(step=step, loss=loss.item(), grad_norm=grad_norm.item())",
)
def grad_norm_not_logged(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx):
        return
    facts = _facts(ctx)
    if any(name.rsplit(".", 1)[-1] in _NORM_CALLS for name in facts.reached):
        return  # `grad_norm = clip_grad_norm_(...)` and the value is logged
    if facts.logged_part(("norm", "gnorm", "gradnorm")) or any("norm" in t for t in facts.tokens if "grad" in t):
        return
    clipped = ctx.method_calls(*_NORM_CALLS)
    hint = (f"the norm `{ast.unparse(clipped[0].func)}` returns (line {clipped[0].lineno}) is thrown away"
            if clipped else "the gradient norm is never computed")
    yield ctx.file_finding(rule_, f"{hint}: log `grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), "
                           "max_norm)` with the loss")


_NORM_CALLS = ("clip_grad_norm_", "clip_grad_norm", "get_total_norm")
_LR = re.compile(r"(?<![a-z])lr(?![a-z])|learning.?rate")


@rule(
    "OBS004", "learning-rate-not-logged", "observability",
    what="A training file that never logs the learning rate.",
    why="Warm-up, decay and restarts are code, and code has bugs: a scheduler stepped per epoch instead of per "
        "step, or never stepped, trains at the wrong rate silently. The logged LR is the only evidence of the "
        "schedule the run actually followed.",
    bad='print(f"step {step} loss {loss.item():.4f}")',
    fix='lr = scheduler.get_last_lr()[0]  # or optimizer.param_groups[0]["lr"]\n'
        'print(f"step {step} loss {loss.item():.4f} lr {lr:.2e}")',
)
def learning_rate_not_logged(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    # Logged, not merely computed: nanoGPT's `get_lr(it)` and `param_group["lr"] = lr` set the rate, but a
    # broken schedule only shows in the value written out (`get_last_lr()`, `["lr"]`, a name with `lr`).
    if not _trains(ctx) or _facts(ctx).logged(_LR):
        return
    yield ctx.file_finding(rule_, "the learning rate is never logged: log `scheduler.get_last_lr()[0]` "
                           "(or `optimizer.param_groups[0][\"lr\"]`) with the loss")


@rule(
    "OBS005", "seeds-not-set", "observability",
    what="A training file that does not seed every random generator it uses: `torch`, and Python's `random` "
         "and NumPy's global generator when the file draws from them.",
    why="Initialisation, dropout, shuffling and augmentation all draw from these generators; unseeded, two runs "
        "of the same code differ by noise that can be as large as the effect you are measuring, and no failure "
        "can be replayed.",
    bad="import random\nimport numpy as np\nimport torch\nmodel = Net()",
    fix="random.seed(args.seed)\nnp.random.seed(args.seed)\ntorch.manual_seed(args.seed)  # seeds CUDA too\n"
        "model = Net()",
)
def seeds_not_set(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx):
        return
    if any(name not in ctx.functions for name in _SEED_HELPERS if ctx.calls_by_method.get(name)):
        return  # seed_everything / transformers.set_seed / an imported helper: seeds all of them
    missing = []
    if _draws(ctx, "random.") and not _seeded(ctx.calls_to("random.seed", "random.Random")):
        missing.append("`random.seed(seed)`")
    if _draws(ctx, "numpy.random.") and not _seeded(ctx.calls_to("numpy.random.seed", "numpy.random.default_rng",
                                                                  "numpy.random.RandomState")):
        missing.append("`np.random.seed(seed)`")
    # `torch.cuda.manual_seed_all` alone leaves the CPU generator, which initialises the weights, unseeded.
    if not _seeded([c for c in ctx.method_calls("manual_seed", "manual_seed_all")
                    if not (ctx.call_name(c) or "").startswith("torch.cuda.")]):
        missing.append("`torch.manual_seed(seed)`")
    if missing:
        yield ctx.file_finding(rule_, f"random generators are not seeded: call {', '.join(missing)} at start-up "
                               "(or `lightning.seed_everything(seed)`) so the run can be reproduced")


def _draws(ctx: FileContext, prefix: str) -> bool:
    """Does the file draw from this generator (``random.shuffle``, ``np.random.rand``)?"""
    return any(name.startswith(prefix) for name in ctx.calls_by_name)


def _seeded(calls: list[ast.Call]) -> bool:
    """Seeded with a value: ``default_rng()`` and ``random.seed()`` draw the seed from the OS."""
    return any(c.args or c.keywords for c in calls)


@rule(
    "OBS006", "checkpoint-interval-not-configurable", "observability",
    what="A training file that saves no checkpoint, saves one only at the end, or saves every literal N steps.",
    why="A crash, a pre-emption or a NaN at hour 20 of a 24-hour run loses everything saved only at the end; and "
        "an interval hard-coded as `step % 1000` cannot be adapted to a run's length or a cluster's pre-emption "
        "rate without editing the trainer, which changes the code you are measuring.",
    bad="for step, batch in enumerate(loader):\n    ...\n    if step % 1000 == 0:\n"
        "        torch.save(model.state_dict(), \"ckpt.pt\")",
    fix="for step, batch in enumerate(loader):\n    ...\n    if step % args.ckpt_interval == 0:\n"
        "        torch.save({\"model\": model.state_dict(), \"optimizer\": optimizer.state_dict(), \"step\": step},\n"
        "                   \"ckpt.pt\")",
)
def checkpoint_interval(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx):
        return
    saves = _save_calls(ctx)
    if not saves:
        yield ctx.file_finding(rule_, "no checkpoint is ever saved: a crash loses the whole run; save model, "
                               "optimizer and step every `args.ckpt_interval` steps")
        return
    sites = saves + _calls_to_savers(ctx, saves)
    for site in sites:
        literal = _literal_interval(ctx, site)
        if literal is not None:
            yield ctx.file_finding(rule_, f"checkpoints are saved every literal {literal} (line {site.lineno}): "
                                   "make the interval a setting (`args.ckpt_interval`)")
            return
    if not any(_periodic(ctx, site) for site in sites):
        yield ctx.file_finding(rule_, f"the checkpoint is saved only after training (line {saves[0].lineno}): a "
                               "crash loses the run; also save every `args.ckpt_interval` steps")


def _save_calls(ctx: FileContext) -> list[ast.Call]:
    found = [*ctx.calls_to("torch.save"), *(c for m, calls in ctx.calls_by_method.items()
                                            if m in _SAVERS or _SAVER_NAME.search(m)
                                            for c in calls if _local_callee(ctx, c) is None)]
    for call in ctx.method_calls("save"):
        if isinstance(call.func, ast.Attribute):
            receiver = (ctx.dotted(call.func.value) or "").rsplit(".", 1)[-1]
            if receiver in _SAVE_RECEIVERS or (ctx.call_name(call) or "").startswith("torch.distributed.checkpoint"):
                found.append(call)
    return sorted({id(c): c for c in found}.values(), key=lambda c: (c.lineno, c.col_offset))


def _calls_to_savers(ctx: FileContext, saves: list[ast.Call]) -> list[ast.Call]:
    """Calls of same-file functions that save (``save_checkpoint(...)``, ``self.save()``), a few levels up."""
    savers = {f.name for c in saves if (f := ctx.enclosing_function(c)) is not None}
    sites: list[ast.Call] = []
    for _ in range(3):
        new = [c for c in ctx.calls if _local_callee(ctx, c) in savers and all(c is not s for s in sites)]
        if not new:
            break
        sites += new
        savers = {f.name for c in new if (f := ctx.enclosing_function(c)) is not None}
    return sites


def _periodic(ctx: FileContext, node: ast.AST) -> bool:
    """Inside a training loop, or a loop around one (per epoch)."""
    for loop in _loops_around_training(ctx):
        if ctx.inside(node, loop):
            return True
    return False


def _literal_interval(ctx: FileContext, site: ast.AST) -> int | None:
    """``if step % 1000 == 0: save`` (or ``every = step % 500 == 0; if every: save``): the literal."""
    child: ast.AST = site
    for ancestor in ctx.ancestors(site):
        if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
            return None
        if isinstance(ancestor, ast.If) and child is not ancestor.test:
            tests: list[ast.AST] = [ancestor.test]
            tests += [v for n in ast.walk(ancestor.test) if isinstance(n, ast.Name)
                      and (v := ctx.last_assignment(n.id, before=ancestor)) is not None]
            for test in tests:
                for node in ast.walk(test):
                    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
                        value = constant(node.right)
                        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                            return value
        child = ancestor
    return None


@rule(
    "OBS007", "logging-every-step", "observability",
    what="A print/log/metrics call in the training loop body that runs on every step, under no condition.",
    why="Logging a tensor value (`loss.item()`) forces a GPU-CPU synchronisation, so the CPU can no longer queue "
        "the next step ahead; per-step prints and writer calls also cost milliseconds each and flood the log. "
        "Log every `log_interval` steps (accumulating on the GPU in between) instead.",
    bad='for x, y in loader:\n    ...\n    loss.backward()\n    optimizer.step()\n'
        '    print(f"loss {loss.item():.4f}")',
    fix='for step, (x, y) in enumerate(loader):\n    ...\n    if step % args.log_interval == 0:\n'
        '        print(f"step {step} loss {loss.item():.4f}")',
)
def logging_every_step(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx):
        return
    facts = _facts(ctx)
    gated = {name for name in facts.helpers if _gates_itself(ctx, name)}
    unguarded = []
    for loop in _step_loops(ctx):
        for call in facts.emitters:
            method = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if method in _RATE_LIMITED or _local_callee(ctx, call) in gated or not ctx.inside(call, loop):
                continue
            if not _conditional(ctx, call, loop):
                unguarded.append(call)
    if unguarded:
        where = ", ".join(str(c.lineno) for c in unguarded[:5])
        yield ctx.file_finding(rule_, f"metrics are logged on every step (line {where}): that floods the output "
                               "and `.item()` syncs the GPU each step; log under `if step % args.log_interval == 0:`")


def _gates_itself(ctx: FileContext, name: str) -> bool:
    """A logging helper with its own condition (``if step % every: return``) controls its frequency."""
    function = ctx.functions.get(name)
    return function is not None and any(isinstance(n, ast.If) for n in ast.walk(function))


@rule(
    "OBS008", "no-progress-output", "observability",
    what="A training file with no progress output: no progress bar and no print/log in or around the "
         "training loop.",
    why="A silent trainer cannot be told apart from a hung one: you find out that it deadlocked, is waiting on "
        "the data or diverged hours later, from the absence of a result.",
    bad="for epoch in range(epochs):\n    for x, y in loader:\n        ...\n        optimizer.step()",
    fix="for epoch in range(epochs):\n    for x, y in tqdm(loader, desc=f\"epoch {epoch}\"):\n        ...\n"
        "    print(f\"epoch {epoch}: loss {loss.item():.4f}\")",
)
def no_progress_output(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _trains(ctx) or _uses_progress_bar(ctx):
        return
    loops = _loops_around_training(ctx)
    for call in _facts(ctx).sinks:
        if _is_console(ctx, call) and any(ctx.inside(call, loop) for loop in loops):
            return
    yield ctx.file_finding(rule_, "training prints no progress: add a `tqdm` bar or a print/log every "
                           "`log_interval` steps so a stalled run can be told from a working one")


def _is_console(ctx: FileContext, call: ast.Call) -> bool:
    """Output a person sees while the run goes: anything but files, TensorBoard writers and dashboards."""
    if _local_callee(ctx, call) is not None:
        return True  # a same-file helper that writes; lenient: it may well print
    name = ctx.call_name(call) or ""
    method = call.func.attr if isinstance(call.func, ast.Attribute) else name  # `getLogger().info(...)` too
    if method == "write":
        return name.startswith(("sys.stdout", "sys.stderr", "tqdm"))
    if method in _FILE_METHODS or name.startswith(_DASHBOARDS):
        return False
    return not isinstance(call.func, ast.Attribute) or not name.rsplit(".", 1)[0].lower().endswith("writer")


_FILE_METHODS = frozenset({"dump", "add_scalar", "add_scalars", "writerow", "writerows", "log_metric",
                           "log_metrics", "log_dict"})
