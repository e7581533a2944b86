"""L0 rules: optimizer. The update itself: what gets stepped, zeroed, decayed and scheduled, and how fast."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from ..context import FileContext, FunctionNode, LoopNode, constant, keyword
from ..model import Finding, Rule
from ..registry import rule

# torch.optim classes (last part of the resolved name); lr_scheduler lives in the same package.
_OPTIMIZERS = frozenset({"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
                         "ASGD", "Rprop", "LBFGS", "SparseAdam", "Adafactor"})
_NO_WEIGHT_DECAY = frozenset({"Rprop", "LBFGS", "SparseAdam"})
_DEFAULT_WEIGHT_DECAY = {"AdamW": 0.01}
# Positional index of weight_decay where it is the fifth parameter.
_WD_POSITION = {"Adam": 4, "AdamW": 4, "SGD": 4, "RMSprop": 4, "Adamax": 4, "NAdam": 4, "RAdam": 4, "Adagrad": 3}
_OPTIMIZER_NAME = re.compile(r"(^|_)(opt|optim|optimizer|optimiser)s?(_|\d|$)|optimi[sz]er", re.IGNORECASE)
_PARAMETERLESS = frozenset({"Identity", "Flatten", "Unflatten", "ReLU", "ReLU6", "GELU", "SiLU", "Mish", "Tanh",
                            "Sigmoid", "Softmax", "LogSoftmax", "LeakyReLU", "ELU", "Hardswish", "Upsample",
                            "ZeroPad2d", "ConstantPad1d", "ConstantPad2d", "ModuleList", "ModuleDict"})
_MAX_DEPTH = 6
_MAX_REACH = 24


def _code(node: ast.AST) -> str:
    """Short source text for a message (``ast.unparse``: ``ctx.segment`` re-splits the whole file per call)."""
    return ast.unparse(node)


# ---------------------------------------------------------------------------------------------- resolution

def _params_of(function: FunctionNode) -> set[str]:
    args = function.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return {a.arg for a in every if a is not None}


def _value_of(ctx: FileContext, expr: ast.expr | None, depth: int = 0) -> ast.expr | None:
    """Follow ``expr`` to the value it was built from, within its scope.

    Stricter than ``ctx.resolve``: a function parameter stays unresolved (the caller decides what it is),
    a local name only follows assignments in the same function before the use, and ``self.x`` follows the
    assignments in the same class (the last one before the use when in the same method, else a unique one).
    """
    if expr is None or depth > _MAX_DEPTH:
        return expr
    value: ast.expr | None = None
    if isinstance(expr, ast.Name):
        function = ctx.enclosing_function(expr)
        if function is not None and expr.id in _params_of(function):
            return expr
        value = ctx.assigned_in_scope_before(expr.id, expr, function)
        if value is None and function is not None:
            module_level = [v for s, v in ctx.assignments.get(expr.id, ()) if ctx.enclosing_function(s) is None]
            value = module_level[0] if len(module_level) == 1 else None
    elif isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        cls = ctx.enclosing_class(expr)
        name = f"self.{expr.attr}"
        same_class = [(s, v) for s, v in ctx.assignments.get(name, ()) if ctx.enclosing_class(s) is cls]
        value = ctx.assigned_in_scope_before(name, expr, ctx.enclosing_function(expr))
        if value is None and len(same_class) == 1:
            value = same_class[0][1]
    elif isinstance(expr, ast.Call):
        function = _local_function(ctx, expr)
        if function is not None:
            value = ctx.returned_value(function)
    if value is None or value is expr:
        return expr
    return _value_of(ctx, value, depth + 1)




def _local_function(ctx: FileContext, call: ast.Call) -> FunctionNode | None:
    """The same-file function ``f(...)`` or ``self.f(...)`` calls."""
    func = call.func
    if isinstance(func, ast.Name):
        return ctx.functions.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
        cls = ctx.enclosing_class(call)
        return ctx.functions.get(f"{cls.name}.{func.attr}") if cls is not None else None
    return None


def _optimizer_class(ctx: FileContext, node: ast.AST | None) -> str | None:
    """``AdamW`` for a ``torch.optim.AdamW(...)`` call (any import spelling)."""
    if not isinstance(node, ast.Call):
        return None
    name = ctx.call_name(node)
    if not name or not name.startswith("torch.optim.") or "lr_scheduler" in name:
        return None
    short = name.rsplit(".", 1)[-1]
    return short if short in _OPTIMIZERS else None


def _optimizer_builds(ctx: FileContext) -> list[ast.Call]:
    return [c for name, calls in ctx.calls_by_name.items()
            if name.startswith("torch.optim.") and name.rsplit(".", 1)[-1] in _OPTIMIZERS
            and "lr_scheduler" not in name for c in calls]


def _is_scheduler_name(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return (name.startswith("torch.optim.lr_scheduler.") and last[:1].isupper()) or (
        name.startswith("transformers.") and "schedule" in last)


def _is_scheduler_build(ctx: FileContext, node: ast.AST | None) -> bool:
    return isinstance(node, ast.Call) and _is_scheduler_name(ctx.call_name(node) or "")


def _scheduled_optimizer(ctx: FileContext, call: ast.Call) -> ast.expr | None:
    """The optimizer a scheduler is built on (``get_scheduler(name, optimizer, ...)`` takes it second)."""
    position = 1 if (ctx.call_name(call) or "").endswith(".get_scheduler") else 0
    return call.args[position] if len(call.args) > position else keyword(call, "optimizer")


def _label(ctx: FileContext, expr: ast.expr) -> str:
    return ctx.dotted(expr, resolve=False) or _code(expr) or "optimizer"


# ---------------------------------------------------------------------------------------------- step calls

def _stepped_optimizer(ctx: FileContext, call: ast.Call) -> ast.expr | None:
    """The optimizer a ``.step(...)`` call steps: ``opt.step()`` -> ``opt``, ``scaler.step(opt)`` -> ``opt``."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr != "step":
        return None
    receiver = call.func.value
    value = _value_of(ctx, receiver)
    built = ctx.call_name(value) if isinstance(value, ast.Call) else None
    label = (ctx.dotted(receiver, resolve=False) or "").rsplit(".", 1)[-1].lower()
    if (built and built.endswith("GradScaler")) or "scaler" in label:
        return call.args[0] if call.args else None
    if _optimizer_class(ctx, value):
        return receiver
    if isinstance(value, ast.Call) or "sched" in label:
        return None
    return receiver if _OPTIMIZER_NAME.search(label) else None


def _optimizer_steps(ctx: FileContext) -> list[ast.Call]:
    return [c for c in ctx.method_calls("step") if _stepped_optimizer(ctx, c) is not None]


def _is_scheduler_step(ctx: FileContext, call: ast.Call) -> bool:
    """``scheduler.step()`` of a per-iteration schedule (a metric argument means ReduceLROnPlateau)."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr != "step" or call.args or call.keywords:
        return False
    value = _value_of(ctx, call.func.value)
    if isinstance(value, ast.Call):
        return _is_scheduler_build(ctx, value) and not (ctx.call_name(value) or "").endswith("ReduceLROnPlateau")
    label = (ctx.dotted(call.func.value, resolve=False) or "").rsplit(".", 1)[-1].lower()
    return "sched" in label and "plateau" not in label


# ---------------------------------------------------------------------------------------------- reach

def _links(ctx: FileContext) -> list[tuple[ast.AST, FunctionNode]]:
    """(site, function) for every call of a same-file function and every one passed on as an argument
    (an LBFGS closure, a callback): the edges ``_reach`` follows. Built from the call index, no walk."""
    links: list[tuple[ast.AST, FunctionNode]] = []
    for call in ctx.calls:
        target = _local_function(ctx, call)
        if target is not None:
            links.append((call, target))
        for arg in call.args:
            if isinstance(arg, ast.Name) and arg.id in ctx.functions:
                links.append((arg, ctx.functions[arg.id]))
    return links


def _reach(ctx: FileContext, node: ast.AST, links: list[tuple[ast.AST, FunctionNode]]) -> list[ast.AST]:
    """``node`` plus the same-file functions it calls or passes on, transitively."""
    found: list[ast.AST] = [node]
    seen: set[int] = {id(node)}
    grew = True
    while grew and len(found) < _MAX_REACH:
        grew = False
        for site, target in links:
            if id(target) not in seen and _within(ctx, site, found):
                seen.add(id(target))
                found.append(target)
                grew = True
    return found


def _within(ctx: FileContext, node: ast.AST, parts: list[ast.AST]) -> bool:
    ids = {id(p) for p in parts}
    return id(node) in ids or any(id(a) in ids for a in ctx.ancestors(node))


def _exclusive(ctx: FileContext, a: ast.AST, b: ast.AST) -> bool:
    """Do ``a`` and ``b`` sit in different branches of one ``if``/``try``/``match`` (never both run)?"""
    path: dict[int, ast.AST] = {}  # ancestor id -> the child on the way to ``a``
    child = a
    for ancestor in ctx.ancestors(a):
        path[id(ancestor)] = child
        child = ancestor
    child = b
    for ancestor in ctx.ancestors(b):
        if id(ancestor) in path:
            if not isinstance(ancestor, (ast.If, ast.Try, ast.Match)):
                return False
            return _branch(ancestor, path[id(ancestor)]) != _branch(ancestor, child)
        child = ancestor
    return False


def _branch(node: ast.AST, child: ast.AST) -> tuple[str, int]:
    for field, value in ast.iter_fields(node):
        if value is child:
            return field, 0
        if isinstance(value, list):
            for index, item in enumerate(value):
                if item is child:
                    # if/try bodies are one branch; each except handler or match case is its own.
                    return field, index if field in ("handlers", "cases") else 0
    return "", 0


def _loops_outward(ctx: FileContext, loop: LoopNode) -> Iterator[LoopNode]:
    yield loop
    for ancestor in ctx.ancestors(loop):
        if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return
        if isinstance(ancestor, (ast.For, ast.AsyncFor, ast.While)):
            yield ancestor


def _zeroings(ctx: FileContext, parts: list[ast.AST]) -> list[str | None]:
    """What ``parts`` zero: the receiver of each ``x.zero_grad()``, or None for zeroing we cannot attribute
    (a bare ``zero_grad()``, ``p.grad = None``, ``p.grad.zero_()``), which covers every optimizer."""
    found: list[str | None] = []
    for call in ctx.method_calls("zero_grad"):
        if _within(ctx, call, parts):
            found.append(ctx.dotted(call.func.value, resolve=False) if isinstance(call.func, ast.Attribute)
                         else None)
    for call in ctx.method_calls("zero_", "detach_"):
        if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Attribute) \
                and call.func.value.attr == "grad" and _within(ctx, call, parts):
            found.append(None)
    for name, assigned in ctx.assignments.items():
        if name.endswith(".grad") and any(isinstance(v, ast.Constant) and v.value is None
                                          and _within(ctx, s, parts) for s, v in assigned):
            found.append(None)
    return found


def _owner_module(ctx: FileContext, optimizer: ast.expr) -> str | None:
    """``netG`` for an optimizer built on ``netG.parameters()``."""
    built = _value_of(ctx, optimizer)
    if not _optimizer_class(ctx, built):
        return None
    module = _whole_parameters(ctx, _params_arg(built))  # type: ignore[arg-type]
    return ctx.dotted(module, resolve=False) if module is not None else None


def _unzeroed(ctx: FileContext, steps: list[ast.Call], zeros: list[str | None]) -> list[ast.Call]:
    """The first step of each optimizer whose gradients nothing in ``zeros`` clears.

    ``netD.zero_grad()`` clears what ``optimizerD`` (built on ``netD.parameters()``) steps, not what
    ``optimizerG`` steps; a zeroing we cannot tie to one optimizer is taken to clear them all.
    """
    if None in zeros:
        return []
    owners: dict[str, str | None] = {}
    first: dict[str, ast.Call] = {}
    for step in sorted(steps, key=lambda c: (c.lineno, c.col_offset)):
        optimizer = _stepped_optimizer(ctx, step)
        label = ctx.dotted(optimizer, resolve=False) if optimizer is not None else None
        if label is None:
            return []
        if label not in first:
            first[label], owners[label] = step, _owner_module(ctx, optimizer)  # type: ignore[arg-type]
    missing = []
    for label, step in first.items():
        module = owners[label]
        others = {x for other, m in owners.items() if other != label for x in (other, m) if x}
        if not any(z == label or (module and (z == module or module.startswith(f"{z}."))) or z not in others
                   for z in zeros):
            missing.append(step)
    return missing


# ---------------------------------------------------------------------------------------------- parameters

def _whole_parameters(ctx: FileContext, expr: ast.expr | None, depth: int = 0) -> ast.expr | None:
    """The module ``m`` when ``expr`` is every parameter of ``m`` in one group: ``m.parameters()``,
    ``filter(lambda p: p.requires_grad, m.parameters())``, ``[p for p in m.parameters() if p.requires_grad]``."""
    expr = _value_of(ctx, expr)
    if expr is None or depth > 3:
        return None
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute) and func.attr == "parameters" and not expr.args:
            return func.value
        if isinstance(func, ast.Name) and func.id in ("list", "tuple") and len(expr.args) == 1:
            return _whole_parameters(ctx, expr.args[0], depth + 1)
        if isinstance(func, ast.Name) and func.id == "filter" and len(expr.args) == 2 \
                and _only_requires_grad(expr.args[0]):
            return _whole_parameters(ctx, expr.args[1], depth + 1)
        return None
    if isinstance(expr, (ast.ListComp, ast.GeneratorExp)) and len(expr.generators) == 1:
        gen = expr.generators[0]
        if isinstance(expr.elt, ast.Name) and isinstance(gen.target, ast.Name) and expr.elt.id == gen.target.id \
                and all(_only_requires_grad(cond) for cond in gen.ifs):
            return _whole_parameters(ctx, gen.iter, depth + 1)
    return None


def _only_requires_grad(expr: ast.AST) -> bool:
    """A filter that only keeps trainable parameters (so biases and norms stay in)."""
    return {n.attr for n in ast.walk(expr) if isinstance(n, ast.Attribute)} == {"requires_grad"}


def _requires_grad_filtered(ctx: FileContext, expr: ast.expr | None) -> ast.expr | None:
    """The module ``m`` when ``expr`` keeps only ``m``'s currently trainable parameters."""
    value = _value_of(ctx, expr)
    mentions = value is not None and any(isinstance(n, ast.Attribute) and n.attr == "requires_grad"
                                         for n in ast.walk(value))
    return _whole_parameters(ctx, expr) if mentions else None


def _params_arg(call: ast.Call) -> ast.expr | None:
    return call.args[0] if call.args else keyword(call, "params")


def _number(ctx: FileContext, expr: ast.expr | None) -> float | None:
    """A literal number, through a local name, an argparse default or a config class field."""
    value = constant(_value_of(ctx, expr))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(expr, ast.Attribute):
        return None
    candidates: set[float] = set()
    for call in ctx.method_calls("add_argument"):
        flags = {str(constant(a)).lstrip("-").replace("-", "_") for a in call.args}
        dest = constant(keyword(call, "dest"))
        if expr.attr in flags or dest == expr.attr:
            default = constant(keyword(call, "default"))
            if not isinstance(default, (int, float)) or isinstance(default, bool):
                return None
            candidates.add(float(default))
    for stmt, assigned in ctx.assignments.get(expr.attr, ()):
        if isinstance(ctx.parent(stmt), ast.ClassDef):
            literal = constant(assigned)
            if not isinstance(literal, (int, float)) or isinstance(literal, bool):
                return None
            candidates.add(float(literal))
    return candidates.pop() if len(candidates) == 1 else None


def _weight_decay(ctx: FileContext, call: ast.Call, cls: str) -> float | None:
    """The weight decay ``call`` applies (its default when omitted); None when it cannot be known."""
    given = keyword(call, "weight_decay")
    position = _WD_POSITION.get(cls)
    if given is None and position is not None and len(call.args) > position:
        given = call.args[position]
    if given is None:
        if any(k.arg is None for k in call.keywords):
            return None
        return _DEFAULT_WEIGHT_DECAY.get(cls, 0.0)
    return _number(ctx, given)


# ---------------------------------------------------------------------------------------------- freezing

def _freezes(ctx: FileContext, frozen: bool) -> list[tuple[ast.AST, ast.expr]]:
    """(site, module or parameter expression) for ``x.requires_grad_(frozen is False)`` and
    ``x.requires_grad = not frozen``."""
    wanted = not frozen
    found: list[tuple[ast.AST, ast.expr]] = []
    for call in ctx.method_calls("requires_grad_"):
        if not isinstance(call.func, ast.Attribute):
            continue
        arg = call.args[0] if call.args else keyword(call, "requires_grad")
        value = True if arg is None else constant(arg)
        if value is wanted:
            found.append((call, call.func.value))
    for name, assigned in ctx.assignments.items():
        if name.endswith(".requires_grad"):
            for stmt, value in assigned:
                if constant(value) is wanted and isinstance(stmt, ast.Assign):
                    target = next(t for t in stmt.targets if isinstance(t, ast.Attribute))
                    found.append((stmt, target.value))
    return found


def _module_of(ctx: FileContext, expr: ast.expr) -> str | None:
    """The dotted module a frozen object belongs to: ``model.encoder`` for ``model.encoder``, and for a loop
    variable ``p`` of ``for p in model.encoder.parameters()`` the module the loop iterates."""
    if isinstance(expr, ast.Name):
        for ancestor in ctx.ancestors(expr):
            if isinstance(ancestor, (ast.For, ast.comprehension)) and expr.id in {
                    n.id for n in ast.walk(ancestor.target) if isinstance(n, ast.Name)}:
                iterated = ancestor.iter
                while isinstance(iterated, ast.Call) and isinstance(iterated.func, ast.Attribute):
                    iterated = iterated.func.value
                return ctx.dotted(iterated, resolve=False)
            if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
    return ctx.dotted(expr, resolve=False)


def _under(module: str | None, root: str) -> bool:
    return module is not None and (module == root or module.startswith(root + "."))


# ================================================================================================ rules

@rule(
    "OPT001", "gradients-never-zeroed", "optimizer",
    what="A training loop calls `optimizer.step()` but never zeroes the gradients (`zero_grad`, or "
         "`p.grad = None`) in that loop.",
    why="`.backward()` adds into `.grad`; it never overwrites it. Without `zero_grad` every step applies the "
        "sum of all gradients so far: the update grows with the step count, stale gradients keep pushing "
        "after the data has changed, and the run diverges or trains on noise. Gradient accumulation still "
        "zeroes, once per optimizer step. In a GAN, zeroing the discriminator does not zero the generator.",
    bad="for x, y in loader:\n    loss = loss_fn(model(x), y)\n    loss.backward()\n    optimizer.step()",
    fix="for x, y in loader:\n    optimizer.zero_grad(set_to_none=True)\n    loss = loss_fn(model(x), y)\n"
        "    loss.backward()\n    optimizer.step()",
)
def gradients_never_zeroed(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer or not ctx.training_loops:
        return
    all_steps = _optimizer_steps(ctx)
    if not all_steps:
        return
    links = _links(ctx)
    done: set[int] = set()
    for loop in ctx.training_loops:
        for candidate in _loops_outward(ctx, loop):
            reach = _reach(ctx, candidate, links)
            steps = [c for c in all_steps if _within(ctx, c, reach)]
            if not steps:
                continue
            if id(candidate) not in done and not _zeroed_elsewhere(ctx, candidate):
                done.add(id(candidate))
                zeros = _zeroings(ctx, reach)
                for step in _unzeroed(ctx, steps, zeros):
                    only = f" (the loop only runs `{'`, `'.join(sorted({z for z in zeros if z}))}.zero_grad()`)" \
                        if zeros else ""
                    yield ctx.finding(rule_, step, f"`{_code(step)}` in a training loop that never zeroes "
                                      f"its gradients{only}: `.backward()` accumulates into `.grad`, so each step "
                                      "applies the sum of all past gradients; call `zero_grad(set_to_none=True)` "
                                      "on this optimizer once per step")
            break


def _zeroed_elsewhere(ctx: FileContext, loop: LoopNode) -> bool:
    """A ``zero_grad`` in the file that is not visibly outside ``loop`` (in a callback we cannot follow).

    A ``zero_grad`` before the loop in the same function (or in an outer loop) is the bug itself, so only
    zeroing in other, unlinked functions keeps the rule quiet.
    """
    function = ctx.enclosing_function(loop)
    for call in ctx.method_calls("zero_grad"):
        if ctx.enclosing_function(call) is not function:
            return True
    return False


@rule(
    "OPT002", "scheduler-step-before-optimizer-step", "optimizer",
    what="`scheduler.step()` comes before `optimizer.step()` in the training loop.",
    why="Since PyTorch 1.1 the scheduler must step after the optimizer: stepping it first skips the first "
        "value of the schedule (a warmup starts one step late, a step schedule decays one epoch early) and "
        "PyTorch warns \"Detected call of `lr_scheduler.step()` before `optimizer.step()`\".",
    bad="for x, y in loader:\n    scheduler.step()\n    optimizer.zero_grad()\n    loss_fn(model(x), y).backward()\n"
        "    optimizer.step()",
    fix="for x, y in loader:\n    optimizer.zero_grad()\n    loss_fn(model(x), y).backward()\n"
        "    optimizer.step()\n    scheduler.step()",
)
def scheduler_before_optimizer(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer:
        return
    schedules = [c for c in ctx.method_calls("step") if _is_scheduler_step(ctx, c)]
    if not schedules:
        return
    steps = _optimizer_steps(ctx)
    for sched in schedules:
        function = ctx.enclosing_function(sched)
        for step in steps:
            if step.lineno <= sched.lineno or ctx.enclosing_function(step) is not function \
                    or _exclusive(ctx, sched, step):
                continue
            if _common_loop(ctx, sched, step) is not None:
                yield ctx.finding(rule_, sched, f"`{_code(sched)}` runs before `{_code(step)}` in the "
                                  "loop: call it after the optimizer step, or the first value of the schedule "
                                  "is skipped")
                break


def _common_loop(ctx: FileContext, a: ast.AST, b: ast.AST) -> LoopNode | None:
    for ancestor in ctx.ancestors(a):
        if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return None
        if isinstance(ancestor, (ast.For, ast.AsyncFor, ast.While)) and ctx.inside(b, ancestor):
            return ancestor
    return None


@rule(
    "OPT003", "weight-decay-on-biases-and-norms", "optimizer",
    what="An optimizer with weight decay built directly on `model.parameters()`: biases and normalization "
         "weights are decayed too (AdamW decays by default: `weight_decay=0.01`).",
    why="Weight decay is a prior on weight matrices. Pulling LayerNorm/BatchNorm gains and biases toward 0 "
        "fights the normalization and hurts accuracy for no regularization benefit; GPT, BERT, ViT and timm "
        "recipes all exclude 1-D parameters from decay.",
    bad="optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)",
    fix="decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]\n"
        "no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]\n"
        "optimizer = torch.optim.AdamW([{\"params\": decay, \"weight_decay\": 0.1},\n"
        "                               {\"params\": no_decay, \"weight_decay\": 0.0}], lr=3e-4, fused=True)",
)
def weight_decay_on_everything(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for call in _optimizer_builds(ctx):
        cls = _optimizer_class(ctx, call)
        if cls is None or cls in _NO_WEIGHT_DECAY:
            continue
        module = _whole_parameters(ctx, _params_arg(call))
        if module is None:
            continue
        decay = _weight_decay(ctx, call, cls)
        if decay is None or decay <= 0:
            continue
        owner = _code(module) or "model"
        source = "the AdamW default" if keyword(call, "weight_decay") is None and len(call.args) <= 4 else "set"
        yield ctx.finding(rule_, call, f"`{cls}` over `{owner}.parameters()` decays every parameter "
                          f"(weight_decay={decay:g}, {source}), biases and norm weights included: use two param "
                          "groups, `weight_decay=0.0` for `p.ndim < 2`")


@rule(
    "OPT004", "parameters-missing-from-optimizer", "optimizer",
    what="The optimizer does not hold the parameters that train: it was built before a freeze (frozen ones "
         "stay in), before an unfreeze, a module replacement or `resize_token_embeddings` (the new parameters "
         "are missing), or over one submodule while the whole model trains.",
    why="An optimizer keeps the parameter objects it was given when it was built. Parameters unfrozen later "
        "get gradients but are never updated; a replaced head or resized embedding is a new Parameter the "
        "optimizer never sees (it keeps updating the orphaned old one); parameters frozen later keep their "
        "optimizer state and still move under momentum and weight decay whenever their grads are zeros rather "
        "than None. A submodule-only optimizer while the whole model runs forward and backward pays for "
        "gradients nobody uses.",
    bad="optimizer = torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()))\n"
        "...\nmodel.backbone.requires_grad_(True)      # unfrozen, but not in the optimizer",
    fix="model.backbone.requires_grad_(True)\n"
        "optimizer.add_param_group({\"params\": model.backbone.parameters(), \"lr\": 1e-5})",
)
def parameters_missing(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    builds = _optimizer_builds(ctx)
    if not builds:
        return
    yield from _frozen_after_build(rule_, ctx, builds)
    yield from _unfrozen_after_build(rule_, ctx, builds)
    yield from _replaced_after_build(rule_, ctx, builds)
    if len(builds) == 1:
        yield from _submodule_only(rule_, ctx, builds[0])


def _later_rebuild(ctx: FileContext, builds: list[ast.Call], site: ast.AST, function: FunctionNode | None) -> bool:
    line = getattr(site, "lineno", 0)
    return any(b.lineno > line and ctx.enclosing_function(b) is function and not _exclusive(ctx, site, b)
               for b in builds) or any(ctx.enclosing_function(c) is function and c.lineno > line
                                       for c in ctx.method_calls("add_param_group"))


def _frozen_after_build(rule_: Rule, ctx: FileContext, builds: list[ast.Call]) -> Iterator[Finding]:
    for call in builds:
        module = _whole_parameters(ctx, _params_arg(call))
        root = ctx.dotted(module, resolve=False) if module is not None else None
        if root is None or _requires_grad_filtered(ctx, _params_arg(call)) is not None:
            continue
        function = ctx.enclosing_function(call)
        for site, obj in _freezes(ctx, frozen=True):
            if getattr(site, "lineno", 0) > call.lineno and ctx.enclosing_function(site) is function \
                    and not _exclusive(ctx, call, site) and _under(_module_of(ctx, obj), root) \
                    and not _later_rebuild(ctx, builds, site, function):
                yield ctx.finding(rule_, site, f"parameters of `{root}` frozen after the optimizer was built "
                                  f"over them (line {call.lineno}): they stay in the optimizer and still move "
                                  "under momentum/weight decay when their grads are zeros; freeze first, then "
                                  "build the optimizer over the trainable parameters")
                break


def _unfrozen_after_build(rule_: Rule, ctx: FileContext, builds: list[ast.Call]) -> Iterator[Finding]:
    for call in builds:
        module = _requires_grad_filtered(ctx, _params_arg(call))
        root = ctx.dotted(module, resolve=False) if module is not None else None
        if root is None:
            continue
        function = ctx.enclosing_function(call)
        for site, obj in _freezes(ctx, frozen=False):
            if getattr(site, "lineno", 0) > call.lineno and ctx.enclosing_function(site) is function \
                    and not _exclusive(ctx, call, site) and _under(_module_of(ctx, obj), root) \
                    and not _later_rebuild(ctx, builds, site, function):
                yield ctx.finding(rule_, site, f"parameters of `{root}` unfrozen after the optimizer was built "
                                  f"over the then-trainable ones (line {call.lineno}): they get gradients but are "
                                  "never updated; `optimizer.add_param_group(...)` them or rebuild the optimizer")
                break


def _parameter_owners(ctx: FileContext, expr: ast.expr | None, depth: int = 0) -> set[str]:
    """Modules whose ``parameters()``/``named_parameters()`` feed ``expr`` (through param groups and locals)."""
    value = _value_of(ctx, expr)
    owners: set[str] = set()
    if value is None or depth > 3:
        return owners
    for node in ast.walk(value):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("parameters", "named_parameters"):
            owner = ctx.dotted(node.func.value, resolve=False)
            if owner:
                owners.add(owner)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node is not value:
            owners |= _parameter_owners(ctx, node, depth + 1)
    return owners


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _new_module(ctx: FileContext, value: ast.expr) -> bool:
    """``nn.Linear(...)``, ``nn.Parameter(...)`` or a same-file class: fresh parameters (losses, activations,
    dropout, pooling and ``Identity`` have none)."""
    if not isinstance(value, ast.Call):
        return False
    name = ctx.call_name(value) or ""
    last = name.rsplit(".", 1)[-1]
    if name.startswith("torch.nn.") and last[:1].isupper():
        return not (last.endswith("Loss") or "Pool" in last or last.startswith("Dropout")
                    or last in _PARAMETERLESS)
    return isinstance(value.func, ast.Name) and value.func.id in ctx.classes


def _replaced_after_build(rule_: Rule, ctx: FileContext, builds: list[ast.Call]) -> Iterator[Finding]:
    """``model.fc = nn.Linear(...)`` or ``model.resize_token_embeddings(...)`` after the optimizer took
    ``model``'s parameters: the new parameters are not in it, the old ones it updates are gone."""
    resizes = ctx.method_calls("resize_token_embeddings")
    replaced = [(stmt, name) for name, assigned in ctx.assignments.items() if "." in name
                for stmt, value in assigned if isinstance(stmt, ast.Assign) and _new_module(ctx, value)]
    if not resizes and not replaced:
        return
    sites: list[tuple[ast.AST, str]] = [
        (r, ctx.dotted(r.func.value, resolve=False) or "") for r in resizes if isinstance(r.func, ast.Attribute)]
    sites = sorted(sites + replaced, key=lambda x: getattr(x[0], "lineno", 0))
    for call in builds:
        function = ctx.enclosing_function(call)
        owners: set[str] | None = None
        for site, target in sites:
            if getattr(site, "lineno", 0) <= call.lineno or ctx.enclosing_function(site) is not function \
                    or _exclusive(ctx, call, site):
                continue
            owners = _parameter_owners(ctx, _params_arg(call)) if owners is None else owners
            owner = next((o for o in owners if target and _related(target, o)), None)
            if owner is None or _later_rebuild(ctx, builds, site, function):
                continue
            what = "resizes the embeddings" if isinstance(site, ast.Call) else f"replaces `{target}`"
            yield ctx.finding(rule_, site, f"this {what} after the optimizer was built over `{owner}`'s "
                              f"parameters (line {call.lineno}): the new parameters are not in the optimizer and "
                              "never train; do it before building the optimizer")
            break


def _submodule_only(rule_: Rule, ctx: FileContext, call: ast.Call) -> Iterator[Finding]:
    """``AdamW(model.head.parameters())`` while ``model`` trains whole: only judged when nothing is frozen,
    nothing runs under ``no_grad`` in the file's ``forward``s, and ``model(...)`` runs in the training loop."""
    params = _value_of(ctx, _params_arg(call))
    if not (isinstance(params, ast.Call) and isinstance(params.func, ast.Attribute)
            and params.func.attr == "parameters" and not params.args):
        return
    sub = ctx.dotted(params.func.value, resolve=False)
    if not sub or "." not in sub or _freezes(ctx, frozen=True) \
            or any(ctx.in_forward(d) for d in ctx.method_calls("detach")):
        return
    for train in ctx.method_calls("train"):
        model = ctx.dotted(train.func.value, resolve=False) if isinstance(train.func, ast.Attribute) else None
        if not model or not sub.startswith(model + ".") or train.args and constant(train.args[0]) is False:
            continue
        if _runs_whole(ctx, model):
            yield ctx.finding(rule_, call, f"the optimizer only gets `{sub}.parameters()` but all of `{model}` "
                              f"trains (`{model}.train()`, `{model}(...)` in the training loop, nothing frozen): "
                              f"the rest gets gradients and is never updated; freeze it "
                              f"(`{model}.requires_grad_(False)` first) or pass `{model}.parameters()`")
            return


def _runs_whole(ctx: FileContext, model: str) -> bool:
    """``model(...)`` runs with autograd in a training loop, and no ``forward`` here hides a part under no_grad."""
    for with_ in ctx.withs:
        if ctx.in_forward(with_) and any(
                (ctx.call_name(i.context_expr) if isinstance(i.context_expr, ast.Call) else "") in (
                    "torch.no_grad", "torch.inference_mode") for i in with_.items):
            return False
    calls = [c for c in ctx.method_calls(model.rsplit(".", 1)[-1]) if ctx.dotted(c.func, resolve=False) == model
             and ctx.in_with(c, "no_grad", "inference_mode") is None]
    if not calls:
        return False
    links = _links(ctx)
    return any(_within(ctx, c, _reach(ctx, loop, links)) for loop in ctx.training_loops for c in calls)


@rule(
    "OPT005", "scheduler-not-bound-to-optimizer", "optimizer",
    what="An LR scheduler built on a different optimizer than the one the training loop steps (a fresh "
         "`torch.optim.*(...)` call, or an optimizer replaced after the scheduler was built).",
    why="A scheduler changes the `lr` of the param groups of the optimizer it was given. Bound to another "
        "optimizer, the stepped one keeps its initial LR for the whole run: no warmup, no decay, and the logged "
        "`scheduler.get_last_lr()` lies about it.",
    bad="optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)\n"
        "scheduler = CosineAnnealingLR(torch.optim.AdamW(model.parameters()), T_max=steps)",
    fix="optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)\n"
        "scheduler = CosineAnnealingLR(optimizer, T_max=steps)",
)
def scheduler_not_bound(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    schedulers = [c for name, calls in ctx.calls_by_name.items() if _is_scheduler_name(name) for c in calls]
    if not schedulers:
        return
    links = _links(ctx) if ctx.training_loops else []
    reached = {id(part) for loop in ctx.training_loops for part in _reach(ctx, loop, links)}
    stepped: list[ast.expr | None] = []
    for step in _optimizer_steps(ctx):
        function = ctx.enclosing_function(step)
        if ctx.in_training_loop(step) is not None or (function is not None and id(function) in reached):
            stepped.append(_value_of(ctx, _stepped_optimizer(ctx, step)))
    for sched in schedulers:
        bound = _scheduled_optimizer(ctx, sched)
        if bound is None:
            continue
        rebuilt = _rebuilt_after(ctx, sched, bound)
        if rebuilt is not None:
            yield ctx.finding(rule_, sched, f"`{_label(ctx, bound)}` is rebuilt on line {rebuilt.lineno} but the "
                              "scheduler keeps driving the old optimizer: build a new scheduler on the new "
                              "optimizer, or the LR of the stepped one never changes")
            continue
        if _optimizer_class(ctx, bound):
            yield ctx.finding(rule_, sched, f"the scheduler is built on a fresh `{_code(bound.func)}(...)`, "
                              "not on the optimizer the loop steps: pass that optimizer, or the LR never changes")
            continue
        value = _value_of(ctx, bound)
        if not _optimizer_class(ctx, value) or not stepped:
            continue
        if all(_optimizer_class(ctx, s) for s in stepped) and all(s is not value for s in stepped):
            used = next(s for s in stepped if s is not None)
            yield ctx.finding(rule_, sched, f"the scheduler is bound to the optimizer built on line {value.lineno}, "
                              f"but the training loop steps the one built on line {used.lineno}: build the "
                              "scheduler on the optimizer you step (after any rebuild)")


def _rebuilt_after(ctx: FileContext, sched: ast.Call, bound: ast.expr) -> ast.AST | None:
    """The statement that rebuilds the optimizer ``bound`` names after ``sched`` was built on it, when the
    scheduler itself is not rebuilt after that (same function; for ``self.x``, same class)."""
    name = ctx.dotted(bound, resolve=False) if isinstance(bound, (ast.Name, ast.Attribute)) else None
    holder = ctx.parent(sched)
    sched_name = ctx.dotted(holder.targets[0], resolve=False) \
        if isinstance(holder, ast.Assign) and len(holder.targets) == 1 else None
    if not name or not sched_name:
        return None
    function = ctx.enclosing_function(sched)
    cls = ctx.enclosing_class(sched) if name.startswith("self.") else None

    def same_scope(node: ast.AST) -> bool:
        if cls is not None:
            return ctx.enclosing_class(node) is cls
        return ctx.enclosing_function(node) is function

    for stmt, value in ctx.assignments.get(name, ()):
        if not _optimizer_class(ctx, value) or not same_scope(stmt) or stmt is holder \
                or _exclusive(ctx, sched, stmt):
            continue
        if cls is None and getattr(stmt, "lineno", 0) <= sched.lineno:
            continue
        if cls is not None and ctx.enclosing_function(stmt) is function and stmt.lineno <= sched.lineno:
            continue
        scope = ctx.enclosing_function(stmt)
        if not any(ctx.enclosing_function(s) is scope and s.lineno > stmt.lineno  # type: ignore[attr-defined]
                   and not _exclusive(ctx, s, stmt) for s, _ in ctx.assignments.get(sched_name, ())):
            return stmt
    return None


@rule(
    "OPT006", "optimizer-without-fused-kernel", "optimizer",
    what="A CUDA trainer builds `torch.optim.Adam`/`AdamW` without `fused=True`, or forces the per-parameter "
         "loop with `foreach=False` (any of Adam, AdamW, SGD).",
    why="Left to its default, PyTorch uses the `foreach` implementation on CUDA when it can: a few multi-tensor "
        "kernels per update step. `fused=True` does the whole Adam/AdamW update in a single kernel and is "
        "usually the fastest option (it supports GradScaler and bf16). Plain SGD already takes the multi-tensor "
        "path by default on CUDA, so it is left alone. `foreach=False` falls back to a Python loop with several kernel launches "
        "per parameter, which dominates step time for models with many small tensors.",
    bad="optimizer = torch.optim.AdamW(groups, lr=3e-4)",
    fix="optimizer = torch.optim.AdamW(groups, lr=3e-4, fused=True)",
)
def optimizer_without_fused(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer or not ctx.uses_cuda:
        return
    for call in _optimizer_builds(ctx):
        cls = _optimizer_class(ctx, call)
        if cls not in ("Adam", "AdamW", "SGD") or any(k.arg is None for k in call.keywords):
            continue
        fused, foreach = keyword(call, "fused"), keyword(call, "foreach")
        differentiable = constant(keyword(call, "differentiable")) is True
        if differentiable or (fused is not None and constant(fused) is not None):
            continue
        if foreach is not None and constant(foreach) is False:
            better = "`fused=True`" if cls != "SGD" else "the default `foreach` (drop `foreach=False`)"
            yield ctx.finding(rule_, call, f"`{cls}(..., foreach=False)` on CUDA runs a Python loop with "
                              f"several kernel launches per parameter: use {better}")
        elif foreach is None and cls != "SGD":
            # SGD's default on CUDA is already the multi-tensor path: nothing to gain by flagging it
            yield ctx.finding(rule_, call, f"`{cls}` on CUDA without `fused=True`: the default foreach "
                              "implementation launches several kernels per step where the fused one launches "
                              "one; pass `fused=True`")
