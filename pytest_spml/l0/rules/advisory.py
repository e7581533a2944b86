"""L0 rules: advisory. Worth fixing, never blocking."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import TypeVar
from weakref import WeakKeyDictionary

from ..context import FileContext, constant, keyword
from ..model import Finding, Rule
from ..registry import rule


@rule(
    "ADV001", "torch-load-without-weights-only", "advisory",
    what="`torch.load` without `weights_only=True`.",
    why="A checkpoint is a pickle: without `weights_only=True` loading one can run arbitrary code, and "
        "PyTorch 2.6 changed the default, so old code now fails or warns depending on the version.",
    bad='state = torch.load("ckpt.pt")',
    fix='state = torch.load("ckpt.pt", map_location="cpu", weights_only=True)',
)
def torch_load_weights_only(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.calls_to("torch.load"):
        if constant(keyword(call, "weights_only")) is not True:
            yield ctx.finding(rule_, call, "`torch.load` without `weights_only=True` unpickles arbitrary objects: "
                              "pass `weights_only=True` (and `map_location`)")


# ====================================================================== shared helpers (ADV002 onwards)

FunctionDefs = (ast.FunctionDef, ast.AsyncFunctionDef)
FunctionLike = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
Loops = (ast.For, ast.AsyncFor, ast.While)

T = TypeVar("T")
_MEMO: WeakKeyDictionary[FileContext, dict[str, object]] = WeakKeyDictionary()


def _memo(ctx: FileContext, key: str, compute: Callable[[FileContext], T]) -> T:
    """Per-file cache: several rules share the same derived facts, computed once."""
    cache = _MEMO.setdefault(ctx, {})
    if key not in cache:
        cache[key] = compute(ctx)
    return cache[key]  # type: ignore[return-value]


def _last(name: str | None) -> str:
    return (name or "").rsplit(".", 1)[-1]


def _prior_value(ctx: FileContext, name: str, node: ast.AST) -> ast.expr | None:
    """The value last assigned to ``name`` on a line strictly before ``node`` (``x = x.view(...)`` safe)."""
    line = getattr(node, "lineno", 0)
    best: tuple[int, int] | None = None
    found: ast.expr | None = None
    for stmt, value in ctx.assignments.get(name, ()):
        key = (stmt.lineno, stmt.col_offset)  # type: ignore[attr-defined]
        if key[0] < line and (best is None or key > best):
            best, found = key, value
    return found


def _value_of(ctx: FileContext, name: str, node: ast.AST) -> ast.expr | None:
    """The strictly earlier assignment; for a function parameter (or ``self.x`` set in a method further
    down), the file's last assignment of that name: ``train(model, ...)`` is usually called with the
    ``model`` that ``main`` builds."""
    value = _prior_value(ctx, name, node)
    if value is None and ctx.assignments.get(name) and _parameter_like(ctx, name, node):
        stmt, value = max(ctx.assignments[name], key=lambda sv: (sv[0].lineno, sv[0].col_offset))  # type: ignore
        if ctx.inside(node, stmt):
            return None
    return value


def _parameter_like(ctx: FileContext, name: str, node: ast.AST) -> bool:
    if "." in name:
        return name.startswith("self.")
    fn = ctx.enclosing_function(node)
    if fn is None:
        return False
    arguments = fn.args
    return any(a.arg == name for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs)


def _int_literal(expr: ast.expr | None) -> int | None:
    """An int literal, or simple arithmetic on int literals (``5 * 8``, ``2 ** 16``)."""
    if isinstance(expr, ast.Constant) and type(expr.value) is int:
        return expr.value
    if isinstance(expr, ast.BinOp):
        left, right = _int_literal(expr.left), _int_literal(expr.right)
        if left is None or right is None:
            return None
        op = type(expr.op)
        if op is ast.Mult:
            return left * right
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.FloorDiv and right:
            return left // right
        if op is ast.Pow and 0 <= right <= 64:
            return left ** right
        if op is ast.LShift and 0 <= right <= 64:
            return left << right
    return None


def _assigned_names(ctx: FileContext, node: ast.AST) -> list[str]:
    parent = ctx.parent(node)
    targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target] if isinstance(
        parent, ast.AnnAssign) else []
    return [n for t in targets if (n := ctx.dotted(t, resolve=False))]


def _is_nested_scope(node: ast.AST) -> bool:
    return isinstance(node, FunctionLike) or isinstance(node, ast.ClassDef)


def _walk_scope(root: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` of a small subtree that does not descend into nested defs, lambdas or classes."""
    stack = list(ast.iter_child_nodes(root))
    while stack:
        node = stack.pop()
        yield node
        if not _is_nested_scope(node):
            stack.extend(ast.iter_child_nodes(node))


def _step_functions(ctx: FileContext) -> set[ast.AST]:
    """Functions that run one training step: a ``.backward()`` not inside a loop of their own."""
    found: set[ast.AST] = set()
    for call in ctx.method_calls("backward"):
        for anc in ctx.ancestors(call):
            if isinstance(anc, Loops):
                break
            if isinstance(anc, FunctionLike):
                found.add(anc)
                break
    return found


def _hot_loops(ctx: FileContext) -> set[ast.AST]:
    """Loops whose every iteration is one training step: a ``.backward()`` or a step-function call directly inside.

    Unlike ``ctx.training_loops`` this excludes an epoch loop that merely calls ``train_one_epoch()``.
    """
    steps = {f.name for f in _memo(ctx, "step_functions", _step_functions) if not isinstance(f, ast.Lambda)}
    triggers = list(ctx.method_calls("backward"))
    for name in steps:
        triggers += [c for c in ctx.method_calls(name)
                     if isinstance(c.func, ast.Name) or (isinstance(c.func, ast.Attribute)
                                                          and isinstance(c.func.value, ast.Name)
                                                          and c.func.value.id == "self")]
    hot: set[ast.AST] = set()
    for call in triggers:
        for anc in ctx.ancestors(call):
            if isinstance(anc, Loops):
                hot.add(anc)
                break
            if isinstance(anc, FunctionLike):
                break
    return hot


def _per_step_scope(ctx: FileContext, node: ast.AST) -> ast.AST | None:
    """The hot loop or step function in which ``node`` runs on every step, or None.

    ``None`` when an ``if`` (``if step % N == 0``, ``if rank == 0``) guards it on the way up, or
    when it sits in no hot loop. Inner loops (over parameters, say) still run every step.
    """
    hot = _memo(ctx, "hot_loops", _hot_loops)
    steps = _memo(ctx, "step_functions", _step_functions)
    previous: ast.AST = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, (ast.If, ast.IfExp)) and previous is not anc.test:
            return None
        if isinstance(anc, Loops):
            if anc in hot and not (isinstance(anc, (ast.For, ast.AsyncFor)) and previous is anc.iter):
                return anc
        elif isinstance(anc, FunctionLike):
            return anc if anc in steps else None
        elif isinstance(anc, ast.ClassDef):
            return None
        previous = anc
    return None


_PASS_THROUGH_METHODS = {"to", "cuda", "cpu", "float", "half", "bfloat16", "double", "train", "eval",
                         "requires_grad_", "to_empty"}
_PASS_THROUGH_CALLS = {"torch.compile", "torch.nn.parallel.DistributedDataParallel",
                       "torch.nn.parallel.DataParallel", "torch.nn.DataParallel", "DistributedDataParallel",
                       "DDP", "DataParallel", "FSDP", "FullyShardedDataParallel", "copy.deepcopy"}


def _origin(ctx: FileContext, expr: ast.expr | None, depth: int = 0) -> ast.expr | None:
    """Follow an expression back to where it was built.

    Names through strictly earlier assignments, same-file function returns, and wrappers that hand
    back the same module (``.to(device)``, ``torch.compile(m)``, ``DDP(m)``).
    """
    if expr is None or depth > 6:
        return expr
    if isinstance(expr, (ast.Name, ast.Attribute)):
        name = ctx.dotted(expr, resolve=False)
        value = _value_of(ctx, name, expr) if name else None
        return _origin(ctx, value, depth + 1) if value is not None else expr
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute) and func.attr in _PASS_THROUGH_METHODS:
            return _origin(ctx, func.value, depth + 1)
        name = ctx.call_name(expr) or ""
        if (name in _PASS_THROUGH_CALLS or _last(name) in _PASS_THROUGH_CALLS) and expr.args:
            return _origin(ctx, expr.args[0], depth + 1)
        if isinstance(func, ast.Name) and func.id in ctx.functions and func.id not in ctx.classes:
            returned = ctx.returned_value(ctx.functions[func.id])
            if returned is not None:
                return _origin(ctx, returned, depth + 1)
    return expr


_MODEL_WORD = re.compile(r"model|^(net|network|module|backbone|classifier|transformer|unet|vae|generator|"
                         r"discriminator|policy|ema)$|.net$|^net_", re.I)
_NOT_MODEL_WORD = re.compile(r"state|dict|sd$|ckpt|checkpoint|path|file|dir|name|cfg|conf|args|param|weight|"
                             r"type|cls|class|url|fn$|func|out|pred|loss|kind|id$|_ids?$|"
                             r"^(get|build|create|make|load|init|set|save|to|from|is|has)_", re.I)
_MODULE_METHODS = ("parameters", "named_parameters", "modules", "named_modules", "children", "buffers",
                   "register_forward_hook", "zero_grad", "eval")


def _module_receivers(ctx: FileContext) -> set[str]:
    """Names that are certainly modules: something calls ``.parameters()``, ``.eval()``, ... on them."""
    names = set()
    for call in ctx.method_calls(*_MODULE_METHODS):
        if isinstance(call.func, ast.Attribute) and not call.args:
            name = ctx.dotted(call.func.value, resolve=False)
            if name and not (call.func.attr == "zero_grad" and "opt" in name.lower()):
                names.add(name)
    for call in ctx.method_calls("train"):
        if isinstance(call.func, ast.Attribute) and not call.args and not call.keywords:
            name = ctx.dotted(call.func.value, resolve=False)
            if name:
                names.add(name)
    return names


def _module_class(ctx: FileContext, name: str) -> bool:
    cls = ctx.classes.get(name)
    if cls is None:
        return False
    return f"{name}.forward" in ctx.functions or any(
        _last(ctx.dotted(b)).endswith(("Module", "Sequential", "Model")) for b in cls.bases)


def _constructs_module(ctx: FileContext, call: ast.Call) -> bool:
    name = ctx.call_name(call) or ""
    last = _last(name)
    if isinstance(call.func, ast.Name) and _module_class(ctx, call.func.id):
        return True
    if name.startswith("torch.nn.") and last[:1].isupper() and last not in ("Parameter", "ParameterList",
                                                                            "ParameterDict"):
        return True
    if name.startswith("torchvision.models.") or name == "timm.create_model":
        return True
    if last == "from_pretrained" and isinstance(call.func, ast.Attribute):
        owner = _last(ctx.dotted(call.func.value, resolve=False))
        return "Model" in owner or "For" in owner
    return bool(re.search(r"(build|create|make|get|load|init)_?model$", last, re.I))


def _model_name(name: str | None) -> bool:
    last = _last(name)
    return bool(last) and bool(_MODEL_WORD.search(last)) and not _NOT_MODEL_WORD.search(last)


_NOT_MODULE_BUILDERS = {"state_dict", "dict", "OrderedDict"}


def _is_module(ctx: FileContext, expr: ast.expr) -> bool:
    """Does ``expr`` (a name, ``self.net``) refer to an ``nn.Module``? By use, by name, or by construction."""
    origin = _origin(ctx, expr)
    if isinstance(origin, (ast.Dict, ast.List, ast.Tuple, ast.Constant, ast.ListComp, ast.DictComp)) or (
            isinstance(origin, ast.Call) and _last(ctx.call_name(origin)) in _NOT_MODULE_BUILDERS):
        return False  # `model = net.state_dict()` is named like a module but is not one
    if isinstance(expr, (ast.Name, ast.Attribute)):
        name = ctx.dotted(expr, resolve=False)
        if name in _memo(ctx, "module_receivers", _module_receivers) or _model_name(name):
            return True
    return isinstance(origin, ast.Call) and _constructs_module(ctx, origin)


def _model_calls(ctx: FileContext, scope: ast.AST) -> list[ast.Call]:
    """Forward calls (``model(x)``, ``self.net(x)``, ``model.forward(x)``) inside a small subtree."""
    found = []
    for node in _walk_scope(scope):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "forward":
            func = func.value
        if isinstance(func, (ast.Name, ast.Attribute)) and _is_module(ctx, func):
            found.append(node)
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


_EVAL_TOKENS = {"eval", "evaluate", "evaluation", "validate", "validation", "valid", "val", "test", "testing",
                "dev", "holdout"}
_LOADER_TOKENS = {"loader", "loaders", "dataloader", "dataloaders", "dl", "dls", "data", "dataset", "ds",
                  "batches", "iter", "split", "set"}
_LIGHTNING_HOOK = re.compile(r"_step$|_epoch_end$|^on_")


_EVAL_HINT = re.compile(r"eval|val|test|dev|holdout", re.I)  # cheap prefilter before tokenizing


@lru_cache(maxsize=4096)
def _tokens(text: str) -> frozenset[str]:
    """``valLoader`` / ``val_loader`` -> {"val", "loader"}."""
    return frozenset(t for t in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text).lower()) if t)


def _pytest_file(path: str) -> bool:
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base.startswith("test_") or base.endswith("_test.py") or "/tests/" in f"/{path}"


def _eval_function(ctx: FileContext, fn: ast.AST) -> bool:
    name = getattr(fn, "name", "")
    if not _EVAL_HINT.search(name) or name.startswith("__") or "train" in name.lower():
        return False
    cls = ctx.enclosing_class(fn)
    if cls is not None and (_LIGHTNING_HOOK.search(name) or cls.name.startswith("Test")):
        return False  # Lightning disables grad for its hooks; unittest classes are tests, not evaluation
    tokens = _tokens(name)
    if tokens & (_EVAL_TOKENS - {"test", "testing"}):
        return True
    return bool(tokens & {"test", "testing"}) and not _pytest_file(ctx.path)


def _eval_loop(ctx: FileContext, loop: ast.AST) -> bool:
    """``for x, y in val_loader:`` / ``for batch in tqdm(loaders["test"]):`` (and it does not train)."""
    if not isinstance(loop, (ast.For, ast.AsyncFor)):
        return False
    lines = _memo(ctx, "lines", lambda c: c.source.splitlines())
    header = lines[loop.lineno - 1:getattr(loop.iter, "end_lineno", loop.lineno) or loop.lineno]
    if not any(_EVAL_HINT.search(line) for line in header):
        return False  # cheap text check before walking the iterable
    idents = [n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else n.value
              for n in ast.walk(loop.iter) if isinstance(n, (ast.Name, ast.Attribute))
              or (isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) < 40)]
    if not any(_EVAL_HINT.search(i) for i in idents):
        return False
    words: set[str] = set().union(*(_tokens(i) for i in idents))
    if not (words & _EVAL_TOKENS and words & _LOADER_TOKENS) or "train" in words:
        return False
    return not any(ctx.inside(c, loop) for c in ctx.method_calls("backward"))


def _eval_scopes(ctx: FileContext) -> list[tuple[ast.AST, ast.Call]]:
    """(evaluation function or loop, its first forward call) in source order; loops inside an evaluation
    function count once, as the function."""
    scopes: list[tuple[ast.AST, ast.Call]] = []
    seen: set[ast.AST] = set()
    for fn in {id(f): f for f in ctx.functions.values()}.values():  # "name" and "Class.name" share defs
        if _eval_function(ctx, fn) and not _calls_backward(ctx, fn):
            calls = _model_calls(ctx, fn)
            if calls:
                scopes.append((fn, calls[0]))
                seen.add(fn)
    for loop in ctx.loops:
        if _eval_loop(ctx, loop):
            fn = ctx.enclosing_function(loop)
            if fn in seen:
                continue
            calls = _model_calls(ctx, loop)
            if calls:
                scopes.append((loop, calls[0]))
    return sorted(scopes, key=lambda s: (s[1].lineno, s[1].col_offset))


def _calls_backward(ctx: FileContext, scope: ast.AST) -> bool:
    return any(ctx.inside(c, scope) for c in ctx.method_calls("backward")) or any(
        ctx.inside(c, scope) for c in ctx.calls_to("torch.autograd.grad"))


_NO_GRAD = ("no_grad", "inference_mode", "set_grad_enabled")


def _grad_free_decorator(ctx: FileContext, fn: ast.AST) -> bool:
    for decorator in getattr(fn, "decorator_list", ()):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _last(ctx.dotted(target)) in ("no_grad", "inference_mode"):
            return True
    return False


def _grad_free(ctx: FileContext, node: ast.AST, depth: int = 0) -> bool:
    """Does ``node`` run with autograd off: under ``with torch.no_grad()``, in a decorated function, or in a
    function whose every same-file caller runs grad-free itself?"""
    if ctx.in_with(node, *_NO_GRAD):
        return True
    fn = ctx.enclosing_function(node)
    while fn is not None:
        if _grad_free_decorator(ctx, fn):
            return True
        if any(ctx.inside(c, fn) and constant(c.args[0] if c.args else keyword(c, "mode")) is False
               for c in ctx.calls_to("torch.set_grad_enabled", "torch.autograd.set_grad_enabled")):
            return True
        callers = [c for c in ctx.method_calls(fn.name) if not ctx.inside(c, fn)]
        if callers and depth < 3 and all(_grad_free(ctx, c, depth + 1) for c in callers):
            return True
        fn = ctx.enclosing_function(fn)
    return False


def _optimizer_step(ctx: FileContext, call: ast.Call) -> bool:
    """``optimizer.step()`` / ``scaler.step(optimizer)``, not ``scheduler.step()``."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr != "step":
        return False
    receiver = ctx.dotted(call.func.value, resolve=False) or ""
    low = _last(receiver).lower()
    if "sched" in low or low.startswith("lr") or "warmup" in low:
        return False
    if "scaler" in low:
        return True
    resolved = ctx.resolved_call_name(call.func.value) or ""
    return "optim" in resolved or "opt" in low


_TORCH_PACKAGES = ("torch", "torchvision", "transformers", "lightning", "pytorch_lightning", "timm", "accelerate")


def _torch_file(ctx: FileContext) -> bool:
    """Does the file use PyTorch at all (an import of it or its ecosystem, or a training step)?"""
    return ctx.is_trainer or any(q.split(".", 1)[0] in _TORCH_PACKAGES for q in ctx.imports.values())


def _source_has(ctx: FileContext, *needles: str) -> bool:
    return any(n in ctx.source for n in needles)


# ====================================================================== ADV002 accumulate loss with graph

# Methods whose result holds no autograd graph: detached copies, Python numbers, shapes.
_DETACHING_METHODS = {"item", "detach", "tolist", "numpy", "detach_", "numel", "size", "dim", "nelement",
                      "ndimension", "argmax", "argmin", "isnan", "isfinite", "eq", "ne"}
_DETACHING_CALLS = {"float", "int", "math.isfinite", "numpy.asarray", "numpy.array"}


def _loss_names(ctx: FileContext) -> tuple[set[str], set[str]]:
    """(names whose ``.backward()`` runs: ``loss``, ``outputs.loss``; every name in a backward receiver)."""
    losses: set[str] = set()
    mentioned: set[str] = set()
    for call in ctx.method_calls("backward"):
        if not isinstance(call.func, ast.Attribute):
            continue
        receiver = call.func.value
        mentioned |= {ctx.dotted(n, resolve=False) or "" for n in ast.walk(receiver)
                      if isinstance(n, (ast.Name, ast.Attribute))}
        while True:
            if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute):
                receiver = receiver.args[0] if receiver.func.attr == "scale" and receiver.args \
                    else receiver.func.value
            elif isinstance(receiver, ast.BinOp):
                receiver = receiver.left
            else:
                break
        if isinstance(receiver, (ast.Name, ast.Attribute)) and (name := ctx.dotted(receiver, resolve=False)):
            losses.add(name)
    return losses, mentioned


def _detached(ctx: FileContext, node: ast.AST, root: ast.AST) -> bool:
    """Is ``node`` (inside ``root``) wrapped in ``.item()``/``.detach()``/``float()`` on the way up?"""
    previous = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.Attribute) and anc.attr == "data":
            return True
        if isinstance(anc, ast.Call):
            func = anc.func
            if isinstance(func, ast.Attribute) and func.attr in _DETACHING_METHODS and previous is func:
                return True
            if ctx.call_name(anc) in _DETACHING_CALLS and previous is not func:
                return True
        if anc is root:
            return False
        previous = anc
    return False


def _carries_graph(ctx: FileContext, value: ast.expr, losses: set[str], depth: int = 0) -> ast.AST | None:
    """The loss reference in ``value`` that still holds its autograd graph (not detached), if any."""
    for node in ast.walk(value):
        if not isinstance(node, (ast.Name, ast.Attribute)) or _detached(ctx, node, value):
            continue
        name = ctx.dotted(node, resolve=False)
        parent = ctx.parent(node)
        if name not in losses or (isinstance(parent, ast.Attribute) and not (
                isinstance(ctx.parent(parent), ast.Call) and ctx.parent(parent).func is parent)):  # type: ignore
            continue  # `loss.shape` is no graph; `loss.mean()` still is
        prior = _prior_value(ctx, name, node)
        if isinstance(prior, ast.Call) and isinstance(prior.func, ast.Name) and prior.func.id in ctx.functions \
                and depth < 2:
            returned = ctx.returned_value(ctx.functions[prior.func.id])
            if returned is None or _carries_graph(ctx, returned, losses, depth + 1) is None:
                continue
        elif prior is not None and _detached_expr(ctx, prior):
            continue
        return node
    return None


def _detached_expr(ctx: FileContext, expr: ast.expr) -> bool:
    if isinstance(expr, ast.Call):
        func = expr.func
        return (isinstance(func, ast.Attribute) and func.attr in _DETACHING_METHODS) or \
            ctx.call_name(expr) in _DETACHING_CALLS
    return False


@rule(
    "ADV002", "loss-accumulated-with-graph", "advisory",
    what="A loss tensor summed (`total += loss`) or collected (`losses.append(loss)`) in the training loop "
         "without `.item()` or `.detach()`.",
    why="The running total is a tensor that references every step's loss, and each loss keeps its whole "
        "autograd graph (the saved activations of the forward pass) alive. Memory grows by one step's "
        "activations per iteration until the run dies with CUDA out-of-memory, often hours in.",
    bad="for x, y in loader:\n    loss = criterion(model(x), y)\n    loss.backward()\n    optimizer.step()\n"
        "    total_loss += loss",
    fix="for x, y in loader:\n    loss = criterion(model(x), y)\n    loss.backward()\n    optimizer.step()\n"
        "    total_loss += loss.detach()      # or loss.item() when you log it anyway",
)
def loss_accumulated_with_graph(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer:
        return
    losses, mentioned = _memo(ctx, "loss_names", _loss_names)
    if not losses:
        return
    hot = _memo(ctx, "hot_loops", _hot_loops)
    candidates: list[tuple[ast.AST, ast.expr, str]] = [
        (a, a.value, "+=") for a in ctx.augassigns if isinstance(a.op, ast.Add)]
    candidates += [(c, c.args[0], ".append()") for c in ctx.method_calls("append")
                   if isinstance(c.func, ast.Attribute) and len(c.args) == 1]
    for node, value, how in candidates:
        if not any(ctx.inside(node, loop) for loop in hot) or ctx.in_with(node, *_NO_GRAD):
            continue
        target = node.target if isinstance(node, ast.AugAssign) else node.func.value  # type: ignore[attr-defined]
        if ctx.dotted(target, resolve=False) in mentioned:
            continue  # summed on purpose, then backpropagated: `total.backward()`
        ref = _carries_graph(ctx, value, losses)
        if ref is not None:
            name = ctx.dotted(ref, resolve=False)
            yield ctx.finding(rule_, node, f"`{ctx.segment(node).strip()[:60]}` keeps every step's autograd graph "
                              f"alive ({how} of a tensor): accumulate `{name}.detach()` or `{name}.item()`, or "
                              "memory grows until out-of-memory")


# ====================================================================== ADV003 host sync every step

_SYNC_METHODS = ("item", "cpu", "numpy", "tolist")


@rule(
    "ADV003", "host-sync-every-step", "advisory",
    what="`.item()`, `.cpu()`, `.numpy()` or `.tolist()` on every step of a CUDA training loop, not only "
         "under an `if step % N == 0` logging condition.",
    why="CUDA runs asynchronously: the CPU queues kernels ahead of the GPU. Copying a value to the host makes "
        "the CPU wait until the GPU has drained the queue, so the next step's kernels launch late and the GPU "
        "idles. The cost ranges from negligible for a large model to 10-30% of throughput for a small, "
        "launch-bound one, and grows with each value synced (loss, accuracy, grad norm).",
    bad="for step, (x, y) in enumerate(loader):\n    loss = train_step(x, y)\n"
        "    pbar.set_postfix(loss=loss.item())      # waits for the GPU every step",
    fix="for step, (x, y) in enumerate(loader):\n    loss = train_step(x, y)\n    if step % log_every == 0:\n"
        "        pbar.set_postfix(loss=loss.item())",
)
def host_sync_every_step(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.is_trainer and ctx.uses_cuda):
        return
    reported: set[int] = set()
    for call in ctx.method_calls(*_SYNC_METHODS):
        if call.args or call.keywords or not isinstance(call.func, ast.Attribute) or call.lineno in reported:
            continue
        if _per_step_scope(ctx, call) is None:
            continue
        reported.add(call.lineno)
        method = call.func.attr
        yield ctx.finding(rule_, call, f"`.{method}()` on every training step waits for the GPU (a host sync): "
                          "do it only every N steps (`if step % log_every == 0:`) or keep the value on the device")


# ====================================================================== ADV004 softmax into cross-entropy

_SOFTMAX_CALLS = {"torch.softmax": "softmax", "torch.nn.functional.softmax": "softmax",
                  "torch.special.softmax": "softmax", "torch.log_softmax": "log_softmax",
                  "torch.nn.functional.log_softmax": "log_softmax", "torch.special.log_softmax": "log_softmax"}
_SOFTMAX_MODULES = {"torch.nn.Softmax": "softmax", "torch.nn.LogSoftmax": "log_softmax"}
_SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze",
                  "float", "to", "type", "view_as", "reshape_as", "clone"}
_CE = ("torch.nn.CrossEntropyLoss", "torch.nn.functional.cross_entropy")
_NLL = ("torch.nn.NLLLoss", "torch.nn.functional.nll_loss")


Normalized = tuple[str, ast.AST]  # ("softmax" | "log_softmax", the call that produced it)


def _normalizer(ctx: FileContext, expr: ast.expr | None, depth: int = 0) -> Normalized | None:
    """(kind, producer) when ``expr`` is (a reshaped view of) a softmax or log-softmax output."""
    if expr is None or depth > 6:
        return None
    if isinstance(expr, ast.Name):
        return _normalizer(ctx, _value_of(ctx, expr.id, expr), depth + 1)
    if isinstance(expr, ast.Subscript):
        return _normalizer(ctx, expr.value, depth + 1)
    if not isinstance(expr, ast.Call):
        return None
    name = ctx.call_name(expr) or ""
    if name in _SOFTMAX_CALLS:
        return _SOFTMAX_CALLS[name], expr
    func = expr.func
    if name == "torch.log" and expr.args:
        return ("log_softmax", expr) if _normalizer(ctx, expr.args[0], depth + 1) else None
    if isinstance(func, ast.Attribute):
        if func.attr in ("softmax", "log_softmax") and not name.startswith("torch.nn.functional."):
            return func.attr, expr
        if func.attr == "log" and not expr.args:
            return ("log_softmax", expr) if _normalizer(ctx, func.value, depth + 1) else None
        if func.attr in _SHAPE_METHODS:
            return _normalizer(ctx, func.value, depth + 1)
    return _module_output(ctx, expr, depth)


def _module_output(ctx: FileContext, call: ast.Call, depth: int) -> Normalized | None:
    """What a called module returns: ``nn.Softmax(1)(x)``, ``self.softmax(x)``, ``model(x)`` whose same-file
    ``forward`` ends in a softmax, or an ``nn.Sequential`` whose last layer is one."""
    func = call.func
    built = func if isinstance(func, ast.Call) else _origin(ctx, func) if isinstance(
        func, (ast.Name, ast.Attribute)) else None
    if not isinstance(built, ast.Call):
        return None
    name = ctx.call_name(built) or ""
    if name in _SOFTMAX_MODULES:
        return _SOFTMAX_MODULES[name], call
    if name == "torch.nn.Sequential" and built.args and isinstance(built.args[-1], ast.Call):
        kind = _SOFTMAX_MODULES.get(ctx.call_name(built.args[-1]) or "")
        return (kind, built.args[-1]) if kind else None
    if isinstance(built.func, ast.Name) and (forward := ctx.functions.get(f"{built.func.id}.forward")):
        return _normalizer(ctx, ctx.returned_value(forward), depth + 1)
    return None


def _loss_calls(ctx: FileContext, names: tuple[str, str]) -> Iterator[ast.Call]:
    """Calls of a loss: the functional form, ``nn.X()(a, b)``, and a criterion variable built from ``nn.X``."""
    module_name, functional = names
    yield from ctx.calls_to(functional)
    for built in ctx.calls_to(module_name):
        parent = ctx.parent(built)
        if isinstance(parent, ast.Call) and parent.func is built:
            yield parent
        for variable in _assigned_names(ctx, built):
            yield from (c for c in ctx.method_calls(_last(variable))
                        if ctx.dotted(c.func, resolve=False) == variable)


def _softmax_forwards(ctx: FileContext) -> Iterator[Normalized]:
    """Same-file modules whose ``forward`` returns probabilities (or log-probabilities)."""
    for key, fn in ctx.functions.items():
        if key.endswith(".forward") and _module_class(ctx, key.split(".")[0]):
            for node in _walk_scope(fn):
                if isinstance(node, ast.Return) and (found := _normalizer(ctx, node.value)):
                    yield found


def _cross_entropy_findings(ctx: FileContext) -> Iterator[tuple[ast.AST, str]]:
    """(anchor, message) for softmax outputs reaching cross-entropy / NLL, each producer once."""
    reported: set[int] = set()
    uses = {names: bool(ctx.calls_to(*names)) for names in (_CE, _NLL)}
    for names, bad_kinds in ((_CE, ("softmax", "log_softmax")), (_NLL, ("softmax",))):
        loss = "cross-entropy" if names is _CE else "NLL loss"
        does = "applies log_softmax itself" if names is _CE else "expects log-probabilities"
        for call in _loss_calls(ctx, names):
            found = _normalizer(ctx, call.args[0] if call.args else keyword(call, "input"))
            if found is None or found[0] not in bad_kinds or id(found[1]) in reported:
                continue
            reported.add(id(found[1]))
            # Point at the line to change: the softmax itself when it hides in another function (forward).
            anchor = found[1] if ctx.enclosing_function(found[1]) is not ctx.enclosing_function(call) else call
            yield anchor, f"{loss} gets a {found[0]} output but {does}: pass the raw logits" + (
                " (or use `log_softmax`)" if names is _NLL else "")
    if ctx.is_trainer and uses[_CE]:
        for kind, producer in _softmax_forwards(ctx):
            if id(producer) not in reported and (kind == "softmax" or not uses[_NLL]):
                reported.add(id(producer))
                yield producer, (f"`forward` returns a {kind} output and the file trains with cross-entropy, which "
                                 "applies log_softmax itself: return the raw logits (softmax only for reporting)")


@rule(
    "ADV004", "softmax-before-cross-entropy", "advisory",
    what="A softmax (or log-softmax) output passed to `CrossEntropyLoss` / `F.cross_entropy`, which applies "
         "`log_softmax` itself (directly, through a variable, or a model whose `forward` returns it); or a "
         "plain softmax passed to `NLLLoss`, which expects log-probabilities.",
    why="Cross-entropy then computes log_softmax(softmax(z)): the probabilities are squashed into [0, 1], "
        "so the loss can never approach 0, gradients shrink by orders of magnitude as the model grows "
        "confident, and training stalls at a worse accuracy without any error. (log_softmax twice is "
        "harmless but wasted work.)",
    bad="probs = F.softmax(model(x), dim=-1)\nloss = criterion(probs, y)      # criterion = nn.CrossEntropyLoss()",
    fix="logits = model(x)\nloss = criterion(logits, y)     # raw logits; softmax only for reporting probabilities",
)
def softmax_before_cross_entropy(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _source_has(ctx, "oftmax", "Softmax") or not ctx.calls_to(*_CE, *_NLL):
        return
    for anchor, message in _cross_entropy_findings(ctx):
        yield ctx.finding(rule_, anchor, message)


# ====================================================================== ADV005 evaluation with autograd on

@rule(
    "ADV005", "eval-without-no-grad", "advisory",
    what="An evaluation function (`evaluate`, `validate`, `test`, ...) or a loop over a validation/test "
         "loader calls the model outside `torch.no_grad()` / `torch.inference_mode()`.",
    why="With autograd on, every forward pass records its graph and keeps each layer's activations for a "
        "backward that never comes: evaluation holds the whole forward's activations instead of one "
        "layer's at a time, often several times the memory (the OOM that only happens at eval time, with "
        "a bigger eval batch), and runs slower.",
    bad="def evaluate(model, loader):\n    model.eval()\n    for x, y in loader:\n        out = model(x)",
    fix="@torch.no_grad()\ndef evaluate(model, loader):\n    model.eval()\n    for x, y in loader:\n"
        "        out = model(x)",
)
def eval_without_no_grad(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _torch_file(ctx):
        return
    for scope, first in _memo(ctx, "eval_scopes", _eval_scopes):
        if _grad_free(ctx, first):
            continue
        where = f"`{scope.name}()`" if isinstance(scope, FunctionDefs) else "the evaluation loop"
        callee = ctx.dotted(first.func, resolve=False) or "the model"
        yield ctx.finding(rule_, scope, f"{where} calls `{callee}` with autograd on: wrap evaluation in "
                          "`with torch.no_grad():` (or decorate it `@torch.no_grad()`), or it stores activations "
                          "for a backward that never runs")


# ====================================================================== ADV006 eval/train mode

def _train_mode_calls(ctx: FileContext) -> list[ast.Call]:
    return [c for c in ctx.method_calls("train") if isinstance(c.func, ast.Attribute)
            and constant(c.args[0] if c.args else keyword(c, "mode") or ast.Constant(True)) is True]


def _eval_mode_calls(ctx: FileContext) -> list[ast.Call]:
    evals = [c for c in ctx.method_calls("eval")
             if isinstance(c.func, ast.Attribute) and not c.args and not c.keywords]
    return evals + [c for c in ctx.method_calls("train") if isinstance(c.func, ast.Attribute)
                    and constant(c.args[0] if c.args else keyword(c, "mode")) is False]


def _call_graph(ctx: FileContext) -> dict[str, set[str]]:
    """Same-file function -> same-file functions it calls (by bare name or ``self.name``)."""
    graph: dict[str, set[str]] = {}
    for call in ctx.calls:
        callee = call.func.id if isinstance(call.func, ast.Name) else (
            call.func.attr if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "self" else None)
        if callee in ctx.functions:
            outer = ctx.enclosing_function(call)
            graph.setdefault(outer.name if outer else "<module>", set()).add(callee)
    return graph


def _reachable(ctx: FileContext, loop: ast.AST) -> set[str]:
    """Same-file functions that run inside ``loop``, directly or through other same-file functions."""
    graph = _memo(ctx, "call_graph", _call_graph)
    frontier = [n.func.id if isinstance(n.func, ast.Name) else n.func.attr  # type: ignore[attr-defined]
                for n in _walk_scope(loop) if isinstance(n, ast.Call) and (
                    (isinstance(n.func, ast.Name) and n.func.id in ctx.functions) or (
                        isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                        and n.func.value.id == "self" and n.func.attr in ctx.functions))]
    seen = set(frontier)
    while frontier:
        for callee in graph.get(frontier.pop(), ()):
            if callee not in seen:
                seen.add(callee)
                frontier.append(callee)
    return seen


def _runs_in(ctx: FileContext, node: ast.AST, loop: ast.AST, reachable: set[str]) -> bool:
    if ctx.inside(node, loop):
        return True
    fn = ctx.enclosing_function(node)
    return fn is not None and fn.name in reachable


@rule(
    "ADV006", "eval-mode-not-restored", "advisory",
    what="`model.eval()` inside the training loop with no `model.train()` to switch back, or an evaluation "
         "that never calls `model.eval()` at all.",
    why="`eval()` turns dropout off and freezes batch-norm statistics. If training resumes without "
        "`train()`, every later step trains without dropout and with stale batch-norm statistics: a "
        "silently different (usually worse, overfitting) model. Evaluating in train mode instead leaves "
        "dropout active, so the metric is random and biased low, and batch-norm updates its running "
        "statistics from validation data.",
    bad="model.train()\nfor epoch in range(epochs):\n    for x, y in train_loader:\n        ...\n"
        "    model.eval()\n    validate(model, val_loader)     # training continues in eval mode",
    fix="for epoch in range(epochs):\n    model.train()\n    for x, y in train_loader:\n        ...\n"
        "    model.eval()\n    validate(model, val_loader)",
)
def eval_mode_not_restored(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _torch_file(ctx):
        return
    evals = _eval_mode_calls(ctx)
    if evals and ctx.is_trainer:
        yield from _eval_without_train(rule_, ctx, evals)
    if not evals:
        yield from _eval_without_eval_mode(rule_, ctx)


def _eval_without_train(rule_: Rule, ctx: FileContext, evals: list[ast.Call]) -> Iterator[Finding]:
    trains = _train_mode_calls(ctx)
    cycles = [(loop, _reachable(ctx, loop)) for loop in ctx.loops
              if any(t is loop or ctx.inside(t, loop) for t in ctx.training_loops)]
    for call in evals:
        running = [(loop, reachable) for loop, reachable in cycles if _runs_in(ctx, call, loop, reachable)]
        if running and not any(_runs_in(ctx, t, loop, reachable) for loop, reachable in running for t in trains):
            model = ctx.dotted(call.func.value, resolve=False)  # type: ignore[attr-defined]
            yield ctx.finding(rule_, call, f"`{model}.eval()` runs between training steps but nothing in the "
                              f"training loop calls `{model}.train()` again: later steps train with dropout off "
                              "and frozen batch-norm; call `.train()` after evaluating")


def _eval_without_eval_mode(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer and ctx.method_calls("from_pretrained"):
        return  # `from_pretrained` already returns the model in eval mode
    scopes = _memo(ctx, "eval_scopes", _eval_scopes)
    if scopes:
        scope, first = scopes[0]
        callee = ctx.dotted(first.func, resolve=False) or "the model"
        yield ctx.finding(rule_, scope, f"evaluation calls `{callee}` but the file never calls `.eval()`: dropout "
                          "stays active and batch-norm uses batch statistics, so the metric is noisy and biased; "
                          f"call `{_last(callee) if callee != 'the model' else 'model'}.eval()` first")


# ====================================================================== ADV007 torch.save of a module

@rule(
    "ADV007", "save-whole-module", "advisory",
    what="`torch.save(model, ...)` (or a checkpoint dict holding the module itself) instead of "
         "`model.state_dict()`.",
    why="Saving a module pickles the object by reference to its class: the checkpoint only loads with the "
        "same code at the same import path, breaks when the class is renamed or moved, needs "
        "`weights_only=False` (arbitrary code execution on load), and drags along wrappers (DDP, "
        "torch.compile) that do not unpickle cleanly.",
    bad='torch.save(model, "model.pt")',
    fix='torch.save(model.state_dict(), "model.pt")\n# load: model = Net(); model.load_state_dict(torch.load(p, '
        'weights_only=True))',
)
def save_whole_module(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.calls_to("torch.save"):
        obj = call.args[0] if call.args else keyword(call, "obj")
        if obj is None:
            continue
        value = _origin(ctx, obj) if isinstance(obj, ast.Name) else obj
        entries = [v for v in value.values if v is not None] if isinstance(value, ast.Dict) else [obj]
        for entry in entries:
            if isinstance(entry, (ast.Name, ast.Attribute)) and _is_module(ctx, entry):
                name = ctx.dotted(entry, resolve=False)
                yield ctx.finding(rule_, call, f"`torch.save` pickles the module `{name}` itself: save "
                                  f"`{name}.state_dict()` so the checkpoint loads without this exact code "
                                  "and with `weights_only=True`")
                break


# ====================================================================== ADV008 accumulation without scaling

def _has_mod(test: ast.expr) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) for n in ast.walk(test))


def _periodic_if(ctx: FileContext, node: ast.AST, loop: ast.AST) -> ast.If | None:
    """The ``if ... % n == 0:`` inside ``loop`` whose body holds ``node``."""
    previous = node
    for anc in ctx.ancestors(node):
        if anc is loop:
            return None
        if isinstance(anc, ast.If) and previous is not anc.test and _has_mod(anc.test):
            return anc
        previous = anc
    return None


def _skip_guard(ctx: FileContext, node: ast.AST, loop: ast.AST) -> ast.If | None:
    """``if micro % accum != 0: continue`` earlier in the loop body: what follows it runs every N-th time."""
    statement = next((a for a in [node, *ctx.ancestors(node)] if ctx.parent(a) is loop), None)
    body = getattr(loop, "body", [])
    if statement not in body:
        return None
    for earlier in body[:body.index(statement)]:
        if isinstance(earlier, ast.If) and _has_mod(earlier.test) and any(
                isinstance(n, ast.Continue) for n in earlier.body):
            return earlier
    return None


def _scaled(ctx: FileContext, expr: ast.expr | None, before: ast.AST, depth: int = 0) -> bool:
    """Was the loss divided (or multiplied) by something on its way to ``backward()``?"""
    if expr is None or depth > 5:
        return False
    if isinstance(expr, ast.BinOp):
        return isinstance(expr.op, (ast.Div, ast.Mult, ast.FloorDiv)) or _scaled(ctx, expr.left, before, depth + 1)
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute) and func.attr in ("scale", "div", "div_", "mul", "mul_", "true_divide"):
            return func.attr != "scale" or _scaled(ctx, expr.args[0] if expr.args else None, before, depth + 1)
        if isinstance(func, ast.Attribute) and func.attr in ("mean", "sum", "float", "to", "squeeze"):
            return _scaled(ctx, func.value, before, depth + 1)
        if isinstance(func, ast.Name) and func.id in ctx.functions:
            returned = ctx.returned_value(ctx.functions[func.id])
            return _scaled(ctx, returned, returned or before, depth + 1)
        return False
    if isinstance(expr, (ast.Name, ast.Attribute)):
        name = ctx.dotted(expr, resolve=False)
        if name is None:
            return False
        line = getattr(before, "lineno", 0)
        for aug in ctx.augassigns:
            if isinstance(aug.op, (ast.Div, ast.Mult)) and aug.lineno < line \
                    and ctx.dotted(aug.target, resolve=False) == name:
                return True
        value = _prior_value(ctx, name, before)
        return value is not None and value is not expr and _scaled(ctx, value, value, depth + 1)
    return False


def _backward_loss(call: ast.Call) -> ast.expr | None:
    """The loss a ``loss.backward()`` (tensor method, no positional gradient) differentiates."""
    if not isinstance(call.func, ast.Attribute) or call.args:
        return None
    return call.func.value


def _accumulation_sites(ctx: FileContext) -> Iterator[tuple[ast.Call, ast.Call]]:
    """(backward, optimizer step) pairs where the step runs once per several backwards."""
    hot = _memo(ctx, "hot_loops", _hot_loops)
    steps = [c for c in ctx.method_calls("step") if _optimizer_step(ctx, c)]
    for backward in ctx.method_calls("backward"):
        loop = next((a for a in ctx.ancestors(backward) if isinstance(a, Loops + FunctionLike)), None)
        if loop is None or loop not in hot:
            continue
        inside = [(s, _periodic_if(ctx, s, loop) or _skip_guard(ctx, s, loop)) for s in steps if ctx.inside(s, loop)]
        if any(guard is None for _, guard in inside):
            continue  # an optimizer step on every iteration: no accumulation here
        periodic = [s for s, guard in inside if guard is not None and (
            not ctx.inside(backward, guard) if ctx.inside(s, guard) else backward.lineno < guard.lineno)]
        if periodic:
            yield backward, periodic[0]
        elif not inside:
            yield from _after_micro_loop(ctx, backward, loop, steps)


def _after_micro_loop(ctx: FileContext, backward: ast.Call, loop: ast.AST,
                      steps: list[ast.Call]) -> Iterator[tuple[ast.Call, ast.Call]]:
    """nanoGPT's shape: ``for micro in range(n): ...backward()``, then one ``optimizer.step()`` after it."""
    if not _micro_loop(ctx, loop):
        return
    container = _container(ctx, loop)
    for step in steps:
        if container is not None and ctx.inside(step, container) and \
                step.lineno > getattr(loop, "end_lineno", loop.lineno):  # type: ignore[attr-defined]
            yield backward, step
            return


def _micro_loop(ctx: FileContext, loop: ast.AST) -> bool:
    """``for micro_step in range(accum_steps):`` (a loop over a count, not over a loader)."""
    return isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call) and ctx.call_name(loop.iter) == "range"


def _container(ctx: FileContext, node: ast.AST) -> ast.AST | None:
    return next((a for a in ctx.ancestors(node) if isinstance(a, Loops + FunctionLike)), None)


@rule(
    "ADV008", "accumulation-without-loss-scaling", "advisory",
    what="Gradient accumulation (`backward()` every micro-step, `optimizer.step()` every N) where the loss is "
         "not divided by the number of accumulation steps.",
    why="Gradients add up across `backward()` calls, so without `loss / accum_steps` the update is the SUM of "
        "N micro-batch gradients: an effective learning rate N times too high (and the gradient-clipping "
        "threshold means something else). Runs diverge or need a retuned LR that no longer matches the "
        "non-accumulated baseline.",
    bad="loss = criterion(model(x), y)\nloss.backward()\nif (step + 1) % accum_steps == 0:\n    optimizer.step()\n"
        "    optimizer.zero_grad()",
    fix="loss = criterion(model(x), y) / accum_steps\nloss.backward()\nif (step + 1) % accum_steps == 0:\n"
        "    optimizer.step()\n    optimizer.zero_grad()",
)
def accumulation_without_scaling(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer:
        return
    for backward, step in _accumulation_sites(ctx):
        loss = _backward_loss(backward)
        if loss is None or _scaled(ctx, loss, backward):
            continue
        name = ctx.segment(loss) or "loss"
        yield ctx.finding(rule_, backward, f"gradients accumulate over several `backward()` calls before "
                          f"`optimizer.step()` (line {step.lineno}) but `{name}` is not divided by the "
                          "accumulation steps: the update is their sum, an N-times larger learning rate; "
                          "use `(loss / accum_steps).backward()`")


# ====================================================================== ADV009 batch arithmetic

_GLOBAL_BATCH = re.compile(r"^(global|total|effective)_?(train_)?(batch_?size|batch|bs)$", re.I)
_MICRO_BATCH = re.compile(r"^((micro|per_device|per_gpu|local|device|mini)_?(train_)?(batch_?size|batch|bs)|"
                          r"micro_?bs)$", re.I)
_PLAIN_BATCH = re.compile(r"^(train_)?(batch_?size|bs)$", re.I)
_ACCUM = re.compile(r"^(grad(ient)?_?)?accum(ulat(e|ion))?(_grad)?(_?(steps?|iters?|batches|grad_batches))?$", re.I)
_WORLD = re.compile(r"^((ddp_)?world_size|n_?gpus|num_gpus|num_devices|n_?devices|gpus)$", re.I)


def _role(key: str) -> str | None:
    for role, pattern in (("global", _GLOBAL_BATCH), ("micro", _MICRO_BATCH), ("plain", _PLAIN_BATCH),
                          ("accum", _ACCUM), ("world", _WORLD)):
        if pattern.match(key):
            return role
    return None


def _batch_scopes(ctx: FileContext) -> Iterator[dict[str, tuple[int | None, ast.AST]]]:
    """Role -> (literal value or None when not one literal, where) per scope: the file's names, each dict
    literal assigned to a name, each call with such keywords."""
    names: dict[str, tuple[int | None, ast.AST]] = {}
    for key, values in ctx.assignments.items():
        role = _role(_last(key))
        for stmt, value in values:
            if isinstance(value, ast.Dict):
                yield _pairs(zip(value.keys, value.values))
            elif role is not None:
                literal = _int_literal(value)
                if role in names and names[role][0] != literal:
                    names[role] = (None, stmt)  # two different values: not one stated literal
                else:
                    names.setdefault(role, (literal, stmt))
    yield names
    for call in ctx.calls:
        if len(call.keywords) >= 2 and sum(1 for k in call.keywords if k.arg and _role(k.arg)) >= 3:
            yield _pairs((ast.Constant(k.arg), k.value) for k in call.keywords if k.arg)


def _pairs(items: Iterable[tuple[ast.expr | None, ast.expr]]) -> dict[str, tuple[int | None, ast.AST]]:
    found: dict[str, tuple[int | None, ast.AST]] = {}
    for key, value in items:
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and (role := _role(key.value)):
            found[role] = (_int_literal(value), value)
    return found


def _distributed(ctx: FileContext) -> bool:
    return any(n.startswith("torch.distributed.") for n in ctx.calls_by_name) or _source_has(
        ctx, "world_size", "WORLD_SIZE")


@rule(
    "ADV009", "batch-arithmetic-mismatch", "advisory",
    what="A stated global batch size that is not micro-batch x accumulation steps (x world size), all as "
         "integer literals in the same file or config dict.",
    why="The global batch is what the learning rate, warmup and token budget were tuned for. If the "
        "micro-batch and accumulation steps multiply to something else, the run silently trains with a "
        "different batch (and LR/batch ratio) than the one written down, and comparisons with the baseline "
        "are wrong.",
    bad="global_batch = 512\nmicro_batch = 16\naccum_steps = 8        # 16 x 8 = 128",
    fix="global_batch = 512\nmicro_batch = 16\naccum_steps = global_batch // (micro_batch * world_size)",
)
def batch_arithmetic_mismatch(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _source_has(ctx, "accum", "ACCUM", "Accum"):
        return
    for scope in _batch_scopes(ctx):
        micro, plain = scope.get("micro"), scope.get("plain")
        total, accum, world = scope.get("global"), scope.get("accum"), scope.get("world")
        if total is None and micro is not None:
            total = plain  # `batch_size` next to an explicit micro batch is the global one
        micro = micro or plain
        if not (total and micro and accum) or None in (total[0], micro[0], accum[0]):
            continue
        product = micro[0] * accum[0]  # type: ignore[operator]
        if world is not None and world[0] is not None:
            product *= world[0]
        elif total[0] % product == 0 and _distributed(ctx):  # type: ignore[operator]
            continue  # the missing factor is presumably the world size, known only at run time
        if product != total[0]:
            shown = f"{micro[0]} x {accum[0]}" + (f" x {world[0]}" if world and world[0] is not None else "")
            yield ctx.finding(rule_, accum[1], f"micro-batch x accumulation steps = {shown} = {product}, but the "
                              f"stated global batch is {total[0]}: derive the accumulation steps "
                              "(`global_batch // (micro_batch * world_size)`)")


# ====================================================================== ADV010 cudnn.benchmark

_CONVS = tuple(f"torch.nn.{k}{d}d" for k in ("Conv", "ConvTranspose") for d in (1, 2, 3))


def _has_convolutions(ctx: FileContext) -> bool:
    return bool(ctx.calls_to(*_CONVS)) or any(
        n.startswith("torchvision.models.") or n == "timm.create_model" for n in ctx.calls_by_name)


@rule(
    "ADV010", "cudnn-benchmark-unset", "advisory",
    what="A CUDA trainer with convolutions that never sets `torch.backends.cudnn.benchmark`.",
    why="With `benchmark = True` cuDNN times its convolution algorithms for each input shape once and "
        "keeps the fastest; the default picks by heuristic. For fixed input shapes (the usual image "
        "pipeline) that is commonly a 10-30% speedup of the convolutions for one line. (Leave it off, and "
        "say so, when you need bit-exact determinism or shapes change every batch.)",
    bad="model = ResNet().cuda()\nfor x, y in loader:\n    ...",
    fix="torch.backends.cudnn.benchmark = True      # fixed input shapes\nmodel = ResNet().cuda()",
)
def cudnn_benchmark_unset(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.is_trainer and ctx.uses_cuda) or not _has_convolutions(ctx):
        return
    if any(key.endswith(("cudnn.benchmark", "cudnn.deterministic")) for key in ctx.assignments):
        return
    if ctx.calls_to("torch.use_deterministic_algorithms") or _source_has(ctx, "cudnn.benchmark"):
        return
    yield ctx.file_finding(rule_, "CUDA trainer with convolutions never sets `torch.backends.cudnn.benchmark`: "
                           "set it to True for fixed input shapes (cuDNN then picks the fastest algorithms)")


# ====================================================================== ADV011 torch.compile

def _compiles(ctx: FileContext) -> bool:
    if ctx.calls_to("torch.compile"):
        return True
    return any(isinstance(c.func, ast.Attribute) and _last(ctx.dotted(c.func.value)) not in ("re", "regex")
               and not (c.args and isinstance(c.args[0], ast.Constant)) for c in ctx.method_calls("compile"))


@rule(
    "ADV011", "no-torch-compile", "advisory",
    what="A CUDA trainer that never uses `torch.compile`.",
    why="`torch.compile` fuses elementwise operations and removes Python overhead; PyTorch 2.0 reported "
        "about 1.4x faster training on average over 160+ models on an A100 (up to 2x), at no accuracy cost. "
        "Worth a try, or a note why not (dynamic shapes, unsupported ops); silence with "
        "`# spml: ignore-file[ADV011]`.",
    bad="model = GPT(config).cuda()",
    fix="model = GPT(config).cuda()\nmodel = torch.compile(model)",
)
def no_torch_compile(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.is_trainer and ctx.uses_cuda) or _compiles(ctx):
        return
    yield ctx.file_finding(rule_, "CUDA trainer without `torch.compile`: try `model = torch.compile(model)` "
                           "(often 1.3-2x faster in training), or silence with `# spml: ignore-file[ADV011]`")


# ====================================================================== ADV012 compile + drop_last

_DATALOADERS = ("torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader")


def _training_loader(ctx: FileContext, call: ast.Call) -> bool:
    if constant(keyword(call, "shuffle")) is True:
        return True
    names = _assigned_names(ctx, call)
    if any("train" in _tokens(n) for n in names):
        return True
    if any(_tokens(n) & _EVAL_TOKENS for n in names):
        return False
    iterated = [loop for loop in ctx.loops if isinstance(loop, (ast.For, ast.AsyncFor))
                and (ctx.inside(call, loop.iter) or any(
                    ctx.dotted(n, resolve=False) in names for n in ast.walk(loop.iter)
                    if isinstance(n, (ast.Name, ast.Attribute))))]
    return any(t is loop or ctx.inside(t, loop) for loop in iterated for t in ctx.training_loops)


def _dynamic_compile(ctx: FileContext) -> bool:
    return any(constant(keyword(c, "dynamic")) is True for c in ctx.calls_to("torch.compile")) or bool(
        ctx.calls_to("torch._dynamo.mark_dynamic"))


@rule(
    "ADV012", "compiled-without-drop-last", "advisory",
    what="A compiled model (`torch.compile`) trained from a DataLoader without `drop_last=True`.",
    why="`torch.compile` specializes on tensor shapes. The last batch of each epoch is usually shorter, so "
        "it triggers a recompilation (seconds to minutes for a large model) and then, as the shape varies, "
        "a dynamic-shape graph that can be slower for every later step; it also gives that one step a "
        "different effective batch size.",
    bad="model = torch.compile(model)\nloader = DataLoader(ds, batch_size=64, shuffle=True)",
    fix="model = torch.compile(model)\nloader = DataLoader(ds, batch_size=64, shuffle=True, drop_last=True)",
)
def compiled_without_drop_last(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer or not _compiles(ctx) or _dynamic_compile(ctx):
        return
    for call in ctx.calls_to(*_DATALOADERS):
        if keyword(call, "batch_sampler") is not None or any(k.arg is None for k in call.keywords):
            continue
        drop_last = keyword(call, "drop_last") if len(call.args) < 9 else call.args[8]
        if drop_last is not None and constant(drop_last) is not False:
            continue
        if _training_loader(ctx, call):
            yield ctx.finding(rule_, call, "the model is compiled but the training DataLoader keeps the last short "
                              "batch: pass `drop_last=True`, or every epoch ends with a recompilation")


# ====================================================================== ADV013 .data mutation

_INIT_FUNCTION = re.compile(r"init|reset_param", re.I)
_TENSOR_WORD = re.compile(r"^(p|w|b|g|t|x|param\w*|parameter\w*|\w*weight\w*|\w*bias\w*|\w*grad\w*|\w*emb\w*|"
                          r"\w*tensor\w*|buf\w*|\w*_param|ema_\w+|\w*_p)$", re.I)


def _data_receiver(ctx: FileContext, target: ast.expr) -> str | None:
    """``p`` for ``p.data`` (a tensor's storage, not an object attribute called ``data``)."""
    if not (isinstance(target, ast.Attribute) and target.attr == "data"):
        return None
    receiver = target.value
    if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
        return None
    return ctx.segment(receiver) or "x"


def _tensorish(ctx: FileContext, receiver: ast.expr, value: ast.expr | None) -> bool:
    if isinstance(receiver, ast.Attribute) and receiver.attr in ("grad", "weight", "bias"):
        return True
    if isinstance(receiver, (ast.Name, ast.Attribute)) and _TENSOR_WORD.match(_last(ctx.dotted(receiver, False))):
        return True
    if value is None:
        return False
    for node in ast.walk(value):
        if isinstance(node, ast.Attribute) and node.attr == "grad":
            return True
        if isinstance(node, ast.Call) and (ctx.call_name(node) or "").startswith("torch."):
            return True
    return False


def _data_mutations(ctx: FileContext) -> Iterator[tuple[ast.AST, str, str]]:
    """(node, receiver, how) for every ``x.data`` write outside initialization code."""
    for call in ctx.calls:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr.endswith("_") and not func.attr.startswith("_") and (
                receiver := _data_receiver(ctx, func.value)):
            yield call, receiver, f".data.{func.attr}()"
    for key, values in ctx.assignments.items():
        if key.endswith(".data"):
            for stmt, value in values:
                target = next(t for t in getattr(stmt, "targets", [getattr(stmt, "target", None)])
                              if ctx.dotted(t, resolve=False) == key)
                if (receiver := _data_receiver(ctx, target)) and _tensorish(ctx, target.value, value):
                    yield stmt, receiver, ".data = ..."
    for aug in ctx.augassigns:
        if (receiver := _data_receiver(ctx, aug.target)) and _tensorish(ctx, aug.target.value, aug.value):
            yield aug, receiver, ".data " + _AUG_OPS.get(type(aug.op), "op") + "= ..."
    for sub in ctx.subscripts:
        if isinstance(sub.ctx, ast.Store) and (receiver := _data_receiver(ctx, sub.value)) and \
                _tensorish(ctx, sub.value.value, None):  # type: ignore[attr-defined]
            yield sub, receiver, ".data[...] = ..."


_DATA_WRITE = re.compile(r"\.data(\.[a-z][a-z0-9_]*_\(|\s*[-+*/]?=(?!=)|\[)")
_AUG_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@rule(
    "ADV013", "data-mutation", "advisory",
    what="A tensor modified through `.data` (`p.data = ...`, `p.data.add_(...)`, `x.data.copy_(...)`) "
         "outside initialization code.",
    why="`.data` hands out the same storage with autograd switched off and without bumping the tensor's "
        "version counter. If that tensor was saved for a backward pass, autograd can no longer detect the "
        "in-place change and computes wrong gradients silently instead of raising. `torch.no_grad()` does "
        "the same job "
        "safely. `.data` writes are also a known source of bugs with FSDP's flattened parameters and "
        "torch.compile.",
    bad="for p, ema_p in zip(model.parameters(), ema.parameters()):\n"
        "    ema_p.data.mul_(decay).add_(p.data, alpha=1 - decay)",
    fix="with torch.no_grad():\n    for p, ema_p in zip(model.parameters(), ema.parameters()):\n"
        "        ema_p.mul_(decay).add_(p, alpha=1 - decay)      # or torch._foreach_lerp_",
)
def data_mutation(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not _DATA_WRITE.search(ctx.source) or not _torch_file(ctx):
        return
    reported: set[int] = set()
    for node, receiver, how in _data_mutations(ctx):
        fn = ctx.enclosing_function(node)
        if node.lineno in reported or (fn is not None and _INIT_FUNCTION.search(fn.name)) or (  # type: ignore
                fn is None and not any(isinstance(a, Loops) for a in ctx.ancestors(node))):
            continue  # initialization (an init function, straight-line module code) runs before any graph exists
        reported.add(node.lineno)  # type: ignore[attr-defined]
        yield ctx.finding(rule_, node, f"`{receiver}{how}` changes the tensor behind autograd's back (no version "
                          f"bump, so stale saved tensors go undetected): write to `{receiver}` itself inside "
                          "`with torch.no_grad():`")


# ====================================================================== ADV014 whole dataset in memory

_BINARY_EXT = (".bin", ".npy", ".dat", ".raw", ".u16", ".u32", ".tokens")


def _dataset_class(ctx: FileContext, node: ast.AST) -> ast.ClassDef | None:
    cls = ctx.enclosing_class(node)
    if cls is None:
        return None
    if f"{cls.name}.__getitem__" in ctx.functions or any(_last(ctx.dotted(b)).endswith("Dataset")
                                                         for b in cls.bases):
        return cls
    return None


def _binary_path(ctx: FileContext, call: ast.Call) -> str | None:
    for arg in call.args[:1] + [k.value for k in call.keywords if k.arg in ("file", "path")]:
        for node in ast.walk(arg):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.lower().endswith(_BINARY_EXT):
                return node.value
    return None


def _opened_by(ctx: FileContext, receiver: ast.expr) -> ast.Call | None:
    """The ``open(...)`` call behind ``open(...).read()`` or ``with open(...) as f: f.read()``."""
    if isinstance(receiver, ast.Call) and ctx.call_name(receiver) in ("open", "io.open"):
        return receiver
    if isinstance(receiver, ast.Name):
        for anc in ctx.ancestors(receiver):
            if isinstance(anc, (ast.With, ast.AsyncWith)):
                for item in anc.items:
                    if isinstance(item.optional_vars, ast.Name) and item.optional_vars.id == receiver.id and \
                            isinstance(item.context_expr, ast.Call) and \
                            ctx.call_name(item.context_expr) in ("open", "io.open"):
                        return item.context_expr
    return None


def _full_loads(ctx: FileContext) -> Iterator[tuple[ast.Call, str]]:
    data_file = ctx.is_trainer
    for call in ctx.calls_to("numpy.load"):
        path = call.args[0] if call.args else keyword(call, "file")
        literal = constant(path)
        if keyword(call, "mmap_mode") is not None or len(call.args) > 1 or \
                constant(keyword(call, "allow_pickle")) is True or \
                (isinstance(literal, str) and literal.lower().endswith(".npz")):
            continue
        if data_file or _dataset_class(ctx, call):
            yield call, "`np.load` reads the whole array into memory: pass `mmap_mode=\"r\"` to page it in on demand"
    for call in ctx.calls_to("numpy.fromfile"):
        if data_file or _dataset_class(ctx, call) or _binary_path(ctx, call):
            yield call, "`np.fromfile` reads the whole file into memory: use `np.memmap(path, dtype, mode=\"r\")`"
    for call in ctx.calls_to("torch.load"):
        fn = ctx.enclosing_function(call)
        if fn is not None and fn.name == "__init__" and _dataset_class(ctx, call) and \
                constant(keyword(call, "mmap")) is not True:
            yield call, ("`torch.load` in a Dataset's `__init__` holds the whole tensor file in memory (per "
                         "worker): pass `mmap=True`, or store it as `.npy` and use `np.load(..., mmap_mode=\"r\")`")
    for call in ctx.method_calls("read", "read_bytes"):
        if call.args or not isinstance(call.func, ast.Attribute):
            continue
        receiver = call.func.value
        opened = _opened_by(ctx, receiver) if call.func.attr == "read" else receiver
        if isinstance(opened, ast.Call) and (path := _binary_path(ctx, opened)):
            yield call, f"reads all of `{path}` into memory: use `np.memmap(path, dtype, mode=\"r\")` instead"


@rule(
    "ADV014", "dataset-not-memory-mapped", "advisory",
    what="A dataset array read fully into memory (`np.load` without `mmap_mode`, `np.fromfile`, "
         "`open(...).read()` of a `.bin`/`.npy`, `torch.load` in a Dataset's `__init__`) where a memory map "
         "would do.",
    why="A full load costs the file's size in RAM before the first step, and DataLoader workers may each "
        "end up with their own copy (copy-on-write pages get touched by refcounting): a 20 GB token file "
        "times 8 workers does not fit. A memory map starts instantly and lets the OS page cache share one "
        "copy between all workers and processes.",
    bad='tokens = np.fromfile("train.bin", dtype=np.uint16)\nx = np.load("features.npy")',
    fix='tokens = np.memmap("train.bin", dtype=np.uint16, mode="r")\nx = np.load("features.npy", mmap_mode="r")',
)
def dataset_not_memory_mapped(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.calls_to("numpy.load", "numpy.fromfile", "torch.load") or ctx.method_calls("read", "read_bytes")):
        return
    for call, message in _full_loads(ctx):
        yield ctx.finding(rule_, call, message)


# ====================================================================== ADV015 vocabulary sizes

_VOCAB = re.compile(r"((^|_)(vocab(ulary)?(_size|_len)?|n_?vocab)|^(num|n)_?tokens|^ntokens?)$", re.I)
_TOKEN_EMBEDDING = re.compile(r"tok|word|wte|vocab|^emb(ed(ding)?s?)?$|^embeddings?$", re.I)
_OTHER_EMBEDDING = re.compile(r"pos|wpe|position|type|segment|time|label|class|speaker|lang|user|item", re.I)
_LM_HEAD = re.compile(r"lm_head|unembed|vocab|logit", re.I)
_GENERIC_HEAD = re.compile(r"^(head|output|output_layer|decoder|generator|fc_out|to_logits|proj_out)$", re.I)


def _vocab_literals(ctx: FileContext) -> dict[int, ast.AST]:
    """Stated vocabulary sizes: ``vocab_size = 50304``, ``{"vocab_size": ...}``, ``Config(vocab_size=...)``."""
    found: dict[int, ast.AST] = {}
    for key, values in ctx.assignments.items():
        for stmt, value in values:
            if _VOCAB.search(_last(key)) and (literal := _int_literal(value)) is not None:
                found.setdefault(literal, stmt)
            if isinstance(value, ast.Dict):
                for k, v in zip(value.keys, value.values):
                    if isinstance(k, ast.Constant) and isinstance(k.value, str) and _VOCAB.search(k.value) and \
                            (literal := _int_literal(v)) is not None:
                        found.setdefault(literal, v)
    for call in ctx.calls:
        for kw in call.keywords:
            if kw.arg and _VOCAB.search(kw.arg) and (literal := _int_literal(kw.value)) is not None:
                found.setdefault(literal, kw.value)
    return found


def _layers(ctx: FileContext, name: str, size_arg: int, size_kw: str,
            pattern: re.Pattern[str]) -> list[tuple[ast.Call, str, int]]:
    found = []
    for call in ctx.calls_to(name):
        size = call.args[size_arg] if len(call.args) > size_arg else keyword(call, size_kw)
        literal = _int_literal(size)
        names = _assigned_names(ctx, call) or [""]
        label = _last(names[0])
        if literal is not None and pattern.search(label):
            found.append((call, label, literal))
    return found


@rule(
    "ADV015", "vocab-size-mismatch", "advisory",
    what="A token embedding whose literal size differs from a literal `vocab_size` in the same file, or an "
         "LM head `nn.Linear(d, V)` whose literal V differs from the embedding's.",
    why="An embedding smaller than the tokenizer's vocabulary fails (an index error on CPU, a device-side "
        "assert that kills the CUDA context on GPU) the first time a high token id appears, possibly hours "
        "into the run; a head with a "
        "different V cannot be weight-tied and scores a different vocabulary than it reads. A size that "
        "is neither the vocabulary nor a padded multiple of 64 also loses the tensor-core speedup that "
        "padding (50257 -> 50304) buys.",
    bad="vocab_size = 50304\nself.wte = nn.Embedding(50257, 768)\nself.lm_head = nn.Linear(768, 50257)",
    fix="vocab_size = 50304\nself.wte = nn.Embedding(vocab_size, 768)\nself.lm_head = nn.Linear(768, vocab_size)",
)
def vocab_size_mismatch(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    embeddings = [e for e in _layers(ctx, "torch.nn.Embedding", 0, "num_embeddings", _TOKEN_EMBEDDING)
                  if not _OTHER_EMBEDDING.search(e[1])]
    if not embeddings:
        return
    vocab = _vocab_literals(ctx)
    for call, label, size in embeddings:
        if vocab and size not in vocab and not any(size > v and size % 64 == 0 and size - v < 512 for v in vocab):
            stated = ", ".join(str(v) for v in sorted(vocab))
            yield ctx.finding(rule_, call, f"`{label}` embeds {size} tokens but the file states a vocabulary of "
                              f"{stated}: build the embedding from `vocab_size`")
    sizes = {size for _, _, size in embeddings}
    heads = _layers(ctx, "torch.nn.Linear", 1, "out_features", _LM_HEAD) + [
        h for h in _layers(ctx, "torch.nn.Linear", 1, "out_features", _GENERIC_HEAD)
        if h[2] >= 1000 and not _LM_HEAD.search(h[1])]
    for call, label, size in heads:
        if size not in sizes:
            shown = ", ".join(str(s) for s in sorted(sizes))
            yield ctx.finding(rule_, call, f"LM head `{label}` outputs {size} logits but the token embedding has "
                              f"{shown} rows: use the same vocabulary size for both")


# ====================================================================== ADV016 dropout in evaluation

_FUNCTIONAL_DROPOUT = tuple(f"torch.nn.functional.{n}" for n in (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"))


def _mentions_training(expr: ast.expr) -> bool:
    return any(isinstance(n, (ast.Name, ast.Attribute)) and "train" in (
        n.id if isinstance(n, ast.Name) else n.attr).lower() for n in ast.walk(expr))


@rule(
    "ADV016", "dropout-always-on", "advisory",
    what="Functional dropout that stays on in evaluation: `F.dropout(x, p)` without `training=self.training` "
         "(its default is `training=True`), a hard-coded `training=True`, or an SDPA `dropout_p` not gated "
         "on `self.training`.",
    why="`model.eval()` only switches `nn.Dropout` modules off. Functional dropout with the default or a "
        "literal `training=True` keeps dropping activations at evaluation and inference time, so metrics "
        "are random and biased low and generations are noisier, with no error anywhere.",
    bad="def forward(self, x):\n    return F.dropout(self.fc(x), p=0.1)",
    fix="def forward(self, x):\n    return F.dropout(self.fc(x), p=0.1, training=self.training)",
)
def dropout_always_on(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if "dropout" not in ctx.source:
        return
    for call in ctx.calls_to(*_FUNCTIONAL_DROPOUT):
        training = keyword(call, "training") if len(call.args) < 3 else call.args[2]
        if training is None or constant(training) is True:
            name = _last(ctx.call_name(call))
            how = "defaults to `training=True`" if training is None else "has `training=True` hard-coded"
            yield ctx.finding(rule_, call, f"`F.{name}` {how}, so it drops activations in evaluation too: pass "
                              "`training=self.training`")
    for call in ctx.calls_to("torch.dropout", "torch.feature_dropout", "torch.alpha_dropout"):
        if len(call.args) >= 3 and constant(call.args[2]) is True:
            yield ctx.finding(rule_, call, f"`{ctx.call_name(call)}` with `train=True` hard-coded drops activations "
                              "in evaluation too: pass `self.training`")
    for call in ctx.calls_to("torch.nn.functional.scaled_dot_product_attention"):
        p = keyword(call, "dropout_p") if len(call.args) < 5 else call.args[4]
        if p is None or constant(p) == 0 or _mentions_training(p):
            continue
        if ctx.enclosing_class(call) is None and not ctx.in_forward(call):
            continue
        yield ctx.finding(rule_, call, "`scaled_dot_product_attention(dropout_p=...)` applies dropout whatever the "
                          "module's mode: pass `dropout_p=self.dropout if self.training else 0.0`")


# ====================================================================== ADV017 sync / empty_cache every step

_TIMERS = ("time.time", "time.perf_counter", "time.monotonic", "time.perf_counter_ns", "time.time_ns",
           "time.monotonic_ns", "timeit.default_timer")


def _timed(ctx: FileContext, scope: ast.AST) -> bool:
    return any(ctx.inside(c, scope) for c in ctx.calls_to(*_TIMERS)) or any(
        ctx.inside(c, scope) for c in ctx.method_calls("elapsed_time", "record"))


@rule(
    "ADV017", "sync-or-empty-cache-every-step", "advisory",
    what="`torch.cuda.synchronize()` on every training step with no timing around it, or "
         "`torch.cuda.empty_cache()` on every step.",
    why="`synchronize()` stalls the CPU until the GPU is idle, so the next step's kernels are not queued "
        "in advance (a few to tens of percent of throughput); it is only needed to time a region. "
        "`empty_cache()` returns cached blocks to the driver, so the next step has to `cudaMalloc` them "
        "again (slow, synchronizing); it does not reduce peak memory and does not fix an OOM.",
    bad="for x, y in loader:\n    train_step(x, y)\n    torch.cuda.empty_cache()",
    fix="for x, y in loader:\n    train_step(x, y)\n# empty_cache() only between phases, if another process needs "
        "the memory",
)
def sync_or_empty_cache_every_step(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer:
        return
    for call in ctx.calls_to("torch.cuda.synchronize", "torch.cuda.empty_cache"):
        scope = _per_step_scope(ctx, call)
        if scope is None:
            continue
        if _last(ctx.call_name(call)) == "synchronize":
            if not _timed(ctx, scope):
                yield ctx.finding(rule_, call, "`torch.cuda.synchronize()` on every step stalls the CPU until the "
                                  "GPU drains, with no timing that needs it: remove it, or only sync where you time")
        else:
            yield ctx.finding(rule_, call, "`torch.cuda.empty_cache()` on every step forces the allocator to "
                              "re-`cudaMalloc` next step and does not lower peak memory: remove it from the loop")
