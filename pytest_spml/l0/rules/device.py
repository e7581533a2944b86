"""L0 rules: device. A tensor on the wrong device is an error or a silent copy every step."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from ..context import FileContext, constant, keyword
from ..model import Finding, Rule
from ..registry import rule

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def _device_variables(ctx: FileContext) -> set[str]:
    """Names assigned a ``torch.device(...)`` (or passed to ``.to(name)``): the file's device variables."""
    names = {name for name, values in ctx.assignments.items()
             if any(isinstance(v, ast.Call) and ctx.call_name(v) == "torch.device" for _, v in values)}
    for call in ctx.method_calls("to"):
        if call.args and isinstance(call.args[0], (ast.Name, ast.Attribute)):
            name = ctx.dotted(call.args[0], resolve=False)
            if name and "device" in name.lower():
                names.add(name)
    return names


def _defines(ctx: FileContext, node: ast.AST, variables: set[str]) -> bool:
    stmt = next((a for a in ctx.ancestors(node) if isinstance(a, ast.stmt)), None)
    return isinstance(stmt, ast.Assign) and any(
        ctx.dotted(t, resolve=False) in variables for t in stmt.targets)


@rule(
    "DEV001", "hard-coded-cuda-device", "device",
    what="A hard-coded `.cuda()` or `\"cuda:N\"` in a file that also places tensors with a device variable, "
         "or two different hard-coded CUDA indices.",
    why="Mixed placement works on a one-GPU laptop and breaks (or silently copies) as soon as the device "
        "variable points elsewhere: another GPU index under DDP, the CPU in CI, `mps` on a Mac.",
    bad='device = torch.device(args.device)\nmodel.to(device)\nx = batch.cuda()            # always GPU 0',
    fix='device = torch.device(args.device)\nmodel.to(device)\nx = batch.to(device, non_blocking=True)',
)
def hard_coded_cuda(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    variables = _device_variables(ctx)
    indices = {m.group(1): s for s in ctx.strings if (m := _CUDA_INDEX.match(s.value))}
    if variables:
        # device = torch.device("cuda:0" if ... else "cpu") is where the choice is made, not a hard-coding
        indices = {i: s for i, s in indices.items() if not _defines(ctx, s, variables)}
        for call in ctx.method_calls("cuda"):
            if isinstance(call.func, ast.Attribute):
                yield ctx.finding(rule_, call, f"hard-coded `.cuda()` while the file places tensors with "
                                  f"`{sorted(variables)[0]}`: use `.to({sorted(variables)[0]})` so one setting moves "
                                  "everything")
        for index, node in sorted(indices.items()):
            yield ctx.finding(rule_, node, f"hard-coded device \"cuda:{index}\" while the file places tensors with "
                              f"`{sorted(variables)[0]}`: pass the device variable instead")
    elif len(indices) > 1:
        for index, node in sorted(indices.items()):
            yield ctx.finding(rule_, node, f"hard-coded \"cuda:{index}\" next to other CUDA indices "
                              f"({', '.join(sorted(indices))}): choose the device once, in one variable")


# ---------------------------------------------------------------------------- shared helpers
# (precision.py imports optimized_modules, device_move and after_training from here)

_FACTORIES = tuple(f"torch.{name}" for name in (
    "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "randperm", "tensor", "eye",
    "linspace"))
_DTYPES = frozenset(("float16", "half", "bfloat16", "float32", "float", "float64", "double", "int64", "long",
                     "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
                     "float8_e4m3fn", "float8_e5m2"))
_READ_OUT = frozenset(("item", "tolist", "numpy", "cpu"))  # a CPU tensor made to be read on the host
_LOGGING = frozenset(("print", "log", "info", "debug", "warning", "add_scalar", "add_scalars", "write",
                      "set_postfix", "set_description"))
_OPTIMIZER_NAME = re.compile(r"Adam|SGD|Lion|Lamb|LAMB|Adafactor|RMSprop|Adagrad|Adadelta|LBFGS|Muon|Sophia|"
                             r"Shampoo|Prodigy|Ranger")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _is_optimizer(name: str | None) -> bool:
    if not name:
        return False
    module, _, cls = name.rpartition(".")
    if not cls[:1].isupper() or "Scheduler" in cls or "lr_scheduler" in module:
        return False
    return "optim" in module.lower() or bool(_OPTIMIZER_NAME.search(cls))


def _parameter_owners(ctx: FileContext, expr: ast.AST) -> set[str]:
    """``model`` for every ``model.parameters()`` / ``model.named_parameters()`` under ``expr``."""
    owners = set()
    for node in ast.walk(expr):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("parameters", "named_parameters"):
            owner = ctx.dotted(node.func.value, resolve=False)
            if owner:
                owners.add(owner)
    return owners


def optimized_modules(ctx: FileContext) -> list[tuple[ast.Call, set[str]]]:
    """(optimizer call, modules whose parameters it optimizes), following param-group names one step back."""
    result = []
    for name in [n for n in ctx.calls_by_name if _is_optimizer(n)]:
        for call in ctx.calls_by_name[name]:
            args = [*call.args, *(k.value for k in call.keywords if k.arg == "params")]
            owners: set[str] = set()
            for arg in args:
                owners |= _parameter_owners(ctx, arg)
                for inner in ast.walk(arg):  # decay = [p for n, p in model.named_parameters() ...]
                    if isinstance(inner, ast.Name):
                        value = ctx.last_assignment(inner.id, before=call)
                        if value is not None:
                            owners |= _parameter_owners(ctx, value)
            if owners:
                result.append((call, owners))
    return result


def _is_dtype(ctx: FileContext, expr: ast.expr) -> bool:
    name = ctx.dotted(ctx.resolve(expr) or expr) or ""
    head, _, last = name.rpartition(".")
    return (head == "torch" and last in _DTYPES) or "dtype" in (ctx.dotted(expr, resolve=False) or "").lower()


def device_of(ctx: FileContext, expr: ast.expr | None) -> str | None:
    """``"cpu"``, ``"cuda"`` (index unknown) or ``"cuda:N"`` when ``expr`` resolves to a literal device; else None."""
    value = ctx.resolve(expr) if expr is not None else None
    if isinstance(value, ast.Call) and ctx.call_name(value) == "torch.device" and value.args:
        kind, index = constant(value.args[0]), constant(value.args[1]) if len(value.args) > 1 else None
        if isinstance(kind, str):
            return f"{kind}:{index}" if isinstance(index, int) and ":" not in kind else kind
        return None
    literal = constant(value) if value is not None else ...
    if isinstance(literal, bool):
        return None
    if isinstance(literal, int):
        return f"cuda:{literal}"
    return literal if isinstance(literal, str) and literal.split(":")[0] in ("cpu", "cuda", "mps", "xpu") else None


def device_move(ctx: FileContext, call: ast.Call) -> tuple[bool, str | None]:
    """(does ``x.to(...)`` / ``x.cuda()`` / ``x.cpu()`` move to a device?, which one when literal)."""
    if not isinstance(call.func, ast.Attribute):
        return False, None
    method = call.func.attr
    if method == "cpu":
        return True, "cpu"
    if method == "cuda":
        index = keyword(call, "device") or (call.args[0] if call.args else None)
        if index is None:
            return True, "cuda"
        found = device_of(ctx, index)
        return True, found if found and found.startswith("cuda") else "cuda"
    if method != "to":
        return False, None
    target = keyword(call, "device") or (call.args[0] if call.args else None)
    if target is None or (keyword(call, "device") is None and _is_dtype(ctx, target)):
        return False, None
    return True, device_of(ctx, target)


def _chain(ctx: FileContext, call: ast.Call) -> tuple[ast.expr, list[ast.Call]]:
    """The outermost expression of ``call.m1().m2()...`` and the method calls applied on the way up."""
    top: ast.expr = call
    applied = []
    while isinstance(parent := ctx.parent(top), ast.Attribute) \
            and isinstance(grand := ctx.parent(parent), ast.Call) and grand.func is parent:
        applied.append(grand)
        top = grand
    return top, applied


def _assigned_name(ctx: FileContext, expr: ast.expr) -> str | None:
    """``name`` in ``name = <expr>`` (also ``name = <expr> * k + 1``)."""
    stmt = ctx.parent(expr)
    while isinstance(stmt, (ast.BinOp, ast.UnaryOp)):
        stmt = ctx.parent(stmt)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            and isinstance(stmt.targets[0], (ast.Name, ast.Attribute)):
        return ctx.dotted(stmt.targets[0], resolve=False)
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    return None


def after_training(ctx: FileContext, node: ast.AST) -> bool:
    """Is ``node`` after a training loop of its own function (export, saving, evaluation)?"""
    scope = ctx.enclosing_function(node)
    return any(ctx.enclosing_function(loop) is scope and node.lineno > (loop.end_lineno or loop.lineno)
               for loop in ctx.training_loops)


def _device_aware(ctx: FileContext) -> bool:
    """Does the file think about devices at all? On a CPU-only script a device-less tensor is right."""
    if ctx.uses_cuda or _device_variables(ctx):
        return True
    return any(constant(k.value) != "cpu" for call in ctx.calls for k in call.keywords if k.arg == "device")


# ---------------------------------------------------------------------------- DEV002

def _cpu_scalar(ctx: FileContext, call: ast.Call, top: ast.expr) -> bool:
    """A 0-d CPU tensor mixes with CUDA tensors like a Python number, and a host-side coin flip is right.

    ``torch.tensor(0.5)``, ``torch.tensor(weight)``, ``torch.rand([])`` (LayerDrop), ``torch.rand(1) < p``.
    """
    if isinstance(ctx.parent(top), ast.Compare):
        return True
    if ctx.call_name(call) == "torch.tensor":
        data = ctx.resolve(call.args[0]) if call.args else None
        return not isinstance(data, (ast.List, ast.Tuple, ast.ListComp, ast.GeneratorExp))
    shape = call.args[-1] if ctx.call_name(call) == "torch.randint" and call.args else (
        call.args[0] if len(call.args) == 1 else keyword(call, "size"))
    return isinstance(shape, (ast.List, ast.Tuple)) and not shape.elts


def _settles(ctx: FileContext, call: ast.Call) -> bool:
    """A method applied right after creation that moves the tensor or reads it on the host."""
    method = call.func.attr  # type: ignore[attr-defined]
    return method in _READ_OUT or method == "type_as" or device_move(ctx, call)[0]


def _in_logging_call(ctx: FileContext, node: ast.AST) -> bool:
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.stmt):
            return False
        if isinstance(ancestor, ast.Call):
            func = ancestor.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in _LOGGING:
                return True
    return False


def _on_device_names(ctx: FileContext, scope: ast.AST) -> set[str]:
    """Names ``scope`` assigns a device move to: ``images = images.to(device)``, ``x, y = x.cuda(), y.cuda()``."""
    names = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(
                isinstance(c, ast.Call) and device_move(ctx, c)[0] and device_move(ctx, c)[1] != "cpu"
                for c in ast.walk(node.value)):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _handled_later(ctx: FileContext, scope: ast.AST, name: str, after: ast.AST, loop: bool) -> bool:
    """``name`` is moved with ``.to``/``.cuda`` later in ``scope``, or (in a loop) only indexes CPU data."""
    indexed: set[str | None] = set()
    for node in ast.walk(scope):
        if getattr(node, "lineno", after.lineno) < after.lineno:  # comprehensions have no lineno
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and ctx.dotted(node.func.value, resolve=False) == name and device_move(ctx, node)[0]:
            return True
        if loop and isinstance(node, ast.Subscript) and name in {
                n.id for n in ast.walk(node.slice) if isinstance(n, ast.Name)}:
            indexed.add(_root(node.value))
        if loop and isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.iter, ast.Name) \
                and node.iter.id == name:
            return True
    # ix = torch.randint(...); data[ix] is right for CPU data, a copy per step for a batch already on the GPU
    return bool(indexed) and not indexed & _on_device_names(ctx, scope)


def _indexes_host_data(ctx: FileContext, loop: ast.AST, index: ast.expr) -> bool:
    """``data[torch.randperm(n)]`` where ``data`` is not a batch the loop moved to the device."""
    parent = ctx.parent(index)
    if isinstance(parent, ast.Tuple):
        parent = ctx.parent(parent)
    return isinstance(parent, ast.Subscript) and parent.value is not index \
        and _root(parent.value) not in _on_device_names(ctx, loop)


def _creation_scope(ctx: FileContext, call: ast.Call) -> tuple[ast.AST, bool] | None:
    """(scope, is a training loop) for a factory call in ``forward`` or a training loop."""
    if ctx.in_forward(call):
        return ctx.enclosing_function(call), False  # type: ignore[return-value]
    loop = ctx.in_training_loop(call)
    return (loop, True) if loop is not None else None


def _places_on_device(ctx: FileContext, scope: ast.AST | None) -> bool:
    """Does the code around a training loop (its class, else its function) put anything on a device?

    A CPU-only training loop in a file that uses CUDA elsewhere (tests, benchmarks) is not wrong.
    """
    if scope is None:
        return True  # a top-level script: the file-level check decided
    for node in ast.walk(scope):
        if isinstance(node, ast.Call):
            if device_move(ctx, node)[0] and device_move(ctx, node)[1] != "cpu":
                return True
            if any(k.arg == "device" and constant(k.value) != "cpu" for k in node.keywords):
                return True
    return False


def _device_hint(ctx: FileContext, scope: ast.AST, loop: bool) -> str:
    if not loop and isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        params = [a.arg for a in scope.args.args if a.arg not in ("self", "ctx", "cls")]
        return f"{params[0]}.device" if params else "x.device"
    variables = sorted(_device_variables(ctx))
    return variables[0] if variables else "device"


@rule(
    "DEV002", "tensor-created-without-device", "device",
    what="A tensor built inside `forward` or the training loop with `torch.zeros/ones/arange/randn/tensor/...` "
         "and no `device=`, in a file that runs on a device.",
    why="Factory functions default to the CPU. Next to CUDA activations that is either a \"tensors on different "
        "devices\" error the first time the code meets a GPU, or (for index tensors) a silent host-to-device copy "
        "on every step that makes the CPU wait for the GPU. Creating the tensor where it is used is free.\n"
        "Not flagged: `torch.tensor(<scalar>)` (a 0-d CPU tensor combines with CUDA tensors like a Python "
        "number), tensors moved right away (`.to(device)`, `.cuda()`, `.type_as(x)`) or later in the same "
        "scope, tensors read on the host (`.item()`, `.tolist()`, printing), CPU indices into CPU data in the "
        "training loop, `*_like` factories, and files that never mention CUDA or a device.",
    bad="def forward(self, x):\n    pos = torch.arange(x.size(1))          # CPU\n"
        "    return self.emb(x) + self.pos(pos)",
    fix="def forward(self, x):\n    pos = torch.arange(x.size(1), device=x.device)\n"
        "    return self.emb(x) + self.pos(pos)",
)
def tensor_without_device(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    candidates = [(call, found) for call in ctx.calls_to(*_FACTORIES)
                  if keyword(call, "device") is None and (found := _creation_scope(ctx, call)) is not None]
    if not candidates or not _device_aware(ctx):
        return
    on_device: dict[ast.AST | None, bool] = {}
    for call, (scope, loop) in candidates:
        if loop:
            around = ctx.enclosing_class(scope) or ctx.enclosing_function(scope)
            if around not in on_device:
                on_device[around] = _places_on_device(ctx, around)
            if not on_device[around]:
                continue
        top, applied = _chain(ctx, call)
        if _cpu_scalar(ctx, call, top) or _in_logging_call(ctx, top) or any(_settles(ctx, c) for c in applied):
            continue
        if loop and _indexes_host_data(ctx, scope, top):
            continue
        name = _assigned_name(ctx, top)
        if name and _handled_later(ctx, scope, name, call, loop):
            continue
        where = "the training loop" if loop else "`forward`"
        factory = ctx.call_name(call)
        yield ctx.finding(rule_, call, f"`{factory}(...)` in {where} has no `device=`: it is built on the CPU and "
                          f"copied (or fails) next to device tensors; pass `device={_device_hint(ctx, scope, loop)}`")


# ---------------------------------------------------------------------------- DEV003

def _model_placements(ctx: FileContext, models: set[str]) -> list[tuple[ast.Call, str | None]]:
    placements = []
    for call in ctx.method_calls("to", "cuda"):
        moved, device = device_move(ctx, call)
        if not moved or after_training(ctx, call) or ctx.in_training_loop(call):
            continue
        receiver = ctx.dotted(call.func.value, resolve=False)  # type: ignore[attr-defined]
        top, _ = _chain(ctx, call)
        if receiver in models or _assigned_name(ctx, top) in models:
            placements.append((call, device))
    return placements


def _batch_names(ctx: FileContext, loop: ast.AST) -> set[str]:
    """Names a training loop gets its batches in: loop targets (this and enclosing loops) and ``next(it)``."""
    names: set[str] = set()
    for node in (loop, *ctx.ancestors(loop)):
        if isinstance(node, _SCOPES):
            break
        if isinstance(node, (ast.For, ast.AsyncFor)):
            names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    for node in ast.walk(loop):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "next":
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _root(expr: ast.expr) -> str | None:
    while isinstance(expr, (ast.Attribute, ast.Subscript, ast.Call)):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _is_placement(ctx: FileContext, call: ast.Call) -> bool:
    """Is the moved value stored (``x = x.to(d)``, ``x, y = ...``, ``{k: v.to(d) ...}``), not just compared?"""
    top, _ = _chain(ctx, call)
    parent = ctx.parent(top)
    if isinstance(parent, (ast.Tuple, ast.DictComp, ast.ListComp, ast.Dict)):
        parent = ctx.parent(parent)
    return isinstance(parent, (ast.Assign, ast.AnnAssign))


def _batch_moves(ctx: FileContext, loop: ast.AST) -> Iterator[tuple[ast.Call, str | None]]:
    names = _batch_names(ctx, loop)
    comprehension_vars: dict[str, str | None] = {}
    for node in ast.walk(loop):
        if isinstance(node, ast.comprehension):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    comprehension_vars[target.id] = _root(node.iter)
    for node in ast.walk(loop):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("to", "cuda")):
            continue
        root = _root(node.func.value)
        if root not in names and comprehension_vars.get(root or "") not in names:
            continue
        moved, device = device_move(ctx, node)
        if moved and _is_placement(ctx, node):
            yield node, device


def _set_device_after(ctx: FileContext, placement: ast.Call) -> ast.Call | None:
    """A ``torch.cuda.set_device(rank)`` after ``model.cuda()`` in the same function: the model stayed on GPU 0."""
    scope = ctx.enclosing_function(placement)
    return next((c for c in ctx.calls_to("torch.cuda.set_device")
                 if c.lineno > placement.lineno and ctx.enclosing_function(c) is scope and c.args
                 and device_of(ctx, c.args[0]) not in ("cuda:0",)), None)


def _conflict(a: str, b: str) -> bool:
    kind_a, _, index_a = a.partition(":")
    kind_b, _, index_b = b.partition(":")
    return kind_a != kind_b or bool(index_a and index_b and index_a != index_b)


@rule(
    "DEV003", "model-and-batch-on-different-devices", "device",
    what="The model is moved to one literal device and the training loop moves batches to another "
         "(`model.cuda()` with `x.to(\"cpu\")`, `\"cuda:0\"` with `\"cuda:1\"`, two device variables that "
         "resolve to different literals), or the model goes to the default GPU with `.cuda()` before "
         "`torch.cuda.set_device(rank)` points the batches at the rank's own GPU.",
    why="The first forward pass fails with \"Expected all tensors to be on the same device\", after data "
        "loading, compilation and warm-up have already been paid for; with a CPU batch and a CUDA model on "
        "some code paths (`.to(other)` in a helper) it becomes a silent copy every step.",
    bad='model = Net().to("cuda:0")\nfor x, y in loader:\n    x, y = x.to("cuda:1"), y.to("cuda:1")',
    fix='device = torch.device("cuda:0")\nmodel = Net().to(device)\nfor x, y in loader:\n'
        '    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)',
)
def model_batch_device_mismatch(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    moves = [move for loop in ctx.training_loops for move in _batch_moves(ctx, loop)]
    if not moves:
        return
    models = {owner for call in ctx.method_calls("parameters", "named_parameters")
              if isinstance(call.func, ast.Attribute) and (owner := ctx.dotted(call.func.value, resolve=False))}
    for loop in ctx.training_loops:  # what the loop calls on its batches: model(x), self.model(x)
        models |= {name for node in ast.walk(loop) if isinstance(node, ast.Call)
                   and isinstance(node.func, (ast.Name, ast.Attribute)) and node.args
                   and (name := ctx.dotted(node.func, resolve=False)) and name not in ctx.imports}
    placements = _model_placements(ctx, models)
    devices = {device for _, device in placements}
    if len(devices) != 1 or None in devices:  # none, unknown, or model parallel: nothing to compare with
        return
    (model_device,) = devices
    line = placements[0][0].lineno
    early = _set_device_after(ctx, placements[0][0]) if model_device == "cuda" else None
    for call, device in moves:
        if early is not None and device not in ("cpu", "cuda:0"):
            yield ctx.finding(rule_, call, f"batch moved to this rank's GPU while the model went to the default "
                              f"GPU 0 on line {line}, before `torch.cuda.set_device` (line {early.lineno}): "
                              "call set_device first, then `model.to(device)`")
        elif device and _conflict(model_device, device):
            yield ctx.finding(rule_, call, f"batch moved to \"{device}\" while the model is on "
                              f"\"{model_device}\" (line {line}): put both on one device variable")


# ---------------------------------------------------------------------------- DEV004

def _moves_of(ctx: FileContext, module: str) -> list[ast.Call]:
    return [call for call in ctx.method_calls("to", "cuda")
            if isinstance(call.func, ast.Attribute) and ctx.dotted(call.func.value, resolve=False) == module
            and device_move(ctx, call)[0]]


@rule(
    "DEV004", "optimizer-before-device-move", "device",
    what="The optimizer is built over `model.parameters()` before `model.to(device)` / `model.cuda()` in the "
         "same scope.",
    why="An optimizer keeps references to the parameter tensors it was given. `Module.to()` usually moves "
        "them in place, so the code often works, but not always: when the move swaps in new tensors "
        "(`torch.__future__.set_swap_module_params_on_conversion(True)`, XLA, some tensor subclasses) the "
        "optimizer keeps stepping stale CPU tensors and the model never learns, and optimizer state loaded "
        "before the move (`optimizer.load_state_dict`) is cast to the parameters' device at load time, the "
        "CPU, and fails on the first step. PyTorch's docs say to move the model before building its optimizer.",
    bad="model = Net()\nopt = torch.optim.AdamW(model.parameters(), lr=3e-4)\nmodel.to(device)",
    fix="model = Net().to(device)\nopt = torch.optim.AdamW(model.parameters(), lr=3e-4)",
)
def optimizer_before_move(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    built = optimized_modules(ctx)
    for call, modules in built:
        scope = ctx.enclosing_function(call)
        for module in sorted(modules):
            if any(module in mods and c.lineno > call.lineno and ctx.enclosing_function(c) is scope
                   for c, mods in built):
                continue  # rebuilt later in this scope: the last optimizer is the one that counts
            move = next((m for m in _moves_of(ctx, module)
                         if m.lineno > call.lineno and ctx.enclosing_function(m) is scope
                         and not after_training(ctx, m)), None)
            if move is not None:
                yield ctx.finding(rule_, call, f"optimizer built over `{module}` before `{ctx.segment(move)}` "
                                  f"(line {move.lineno}): move the model to its device first, then build the "
                                  "optimizer")
                break
