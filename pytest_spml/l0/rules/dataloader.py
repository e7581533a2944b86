"""L0 rules: dataloader. How batches reach the GPU decides whether it waits, and in what order the model learns."""

from __future__ import annotations

import ast
import re
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..context import FileContext, constant, keyword
from ..model import Finding, Rule
from ..registry import rule

_LOADERS = ("torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader",
            "torchdata.stateful_dataloader.StatefulDataLoader")
# DataLoader's positional parameters, in order (the rest are keyword-only).
_PARAMS = ("dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "num_workers", "collate_fn",
           "pin_memory", "drop_last", "timeout", "worker_init_fn", "multiprocessing_context", "generator")
_SAMPLERS = ("torch.utils.data.DistributedSampler", "torch.utils.data.distributed.DistributedSampler")
_SUFFIX = r"(loader|dataloader|dl|set|ds|dataset|data|iter|split|sampler)?s?$"
_EVAL = re.compile(r"^(val|valid|validation|test|testing|eval|evaluation|holdout|heldout)" + _SUFFIX)
_TRAIN = re.compile(r"^(train|training|trn)" + _SUFFIX)
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")  # snake_case, camelCase, paths: "data/valLoader2"
# Calls that hand their first argument's batches through unchanged: `for b in tqdm(enumerate(loader))`.
_WRAPPERS = frozenset({"enumerate", "tqdm", "track", "islice", "iter", "cycle", "trange"})
_ITERABLE_HINTS = ("Iterable", "Stream", "WebDataset")


@dataclass(frozen=True)
class _Loader:
    call: ast.Call
    args: dict[str, ast.expr]  # parameter name -> expression (positional, keyword and visible **dicts)
    complete: bool  # False when some argument hides behind `*args` / an opaque `**kwargs`
    role: str | None  # "train", "eval" or None (cannot tell)

    def value(self, ctx: FileContext, name: str) -> object:
        """The literal value of a parameter (``...`` when not literal, ``None`` when absent)."""
        expr = self.args.get(name)
        return None if expr is None else constant(ctx.resolve(expr))

    def shown(self) -> str:
        name = _target_name(self.call)
        return f"`{name}`" if name else "this `DataLoader`"


_CACHE: weakref.WeakKeyDictionary[FileContext, list[_Loader]] = weakref.WeakKeyDictionary()


def _loaders(ctx: FileContext) -> list[_Loader]:
    if ctx not in _CACHE:
        calls = ctx.calls_to(*_LOADERS)
        if "DataLoader" not in ctx.classes:  # an unresolved `DataLoader` (star import, snippet) is torch's
            calls = sorted(calls + ctx.calls_by_name.get("DataLoader", []), key=lambda c: (c.lineno, c.col_offset))
        _CACHE[ctx] = [_describe(ctx, call) for call in calls]
    return _CACHE[ctx]


def _describe(ctx: FileContext, call: ast.Call) -> _Loader:
    args: dict[str, ast.expr] = {}
    complete = True
    for name, arg in zip(_PARAMS, call.args):
        if isinstance(arg, ast.Starred):
            complete = False
            break
        args[name] = arg
    for kw in call.keywords:
        if kw.arg is not None:
            args[kw.arg] = kw.value
        else:
            spread = _visible_dict(ctx, kw.value)
            if spread is None:
                complete = False
            else:
                args.update(spread)
    return _Loader(call, args, complete, _role_of(ctx, call, args.get("dataset")))


def _visible_dict(ctx: FileContext, expr: ast.expr) -> dict[str, ast.expr] | None:
    """``**kw`` where ``kw`` is one dict literal (or ``dict(...)``) never changed afterwards; else None."""
    name = ctx.dotted(expr, resolve=False) if isinstance(expr, (ast.Name, ast.Attribute)) else None
    if name is not None:
        if len(ctx.assignments.get(name, ())) != 1 or _mutated(ctx, name):
            return None
        expr = ctx.assignments[name][0][1]
    if isinstance(expr, ast.Dict) and all(isinstance(k, ast.Constant) and isinstance(k.value, str)
                                          for k in expr.keys):
        return {k.value: v for k, v in zip(expr.keys, expr.values)}  # type: ignore[union-attr]
    if isinstance(expr, ast.Call) and ctx.call_name(expr) == "dict" and not expr.args \
            and all(k.arg for k in expr.keywords):
        return {k.arg: k.value for k in expr.keywords}  # type: ignore[misc]
    return None


def _mutated(ctx: FileContext, name: str) -> bool:
    updated = any(isinstance(c.func, ast.Attribute) and ctx.dotted(c.func.value, resolve=False) == name
                  for c in ctx.method_calls("update", "setdefault"))
    return updated or any(isinstance(s.ctx, ast.Store) and ctx.dotted(s.value, resolve=False) == name
                          for s in ctx.subscripts)


# ---------------------------------------------------------------- train or eval?

def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(text)]


def _role(words: Iterable[str]) -> str | None:
    words = list(words)
    evaluates = any(_EVAL.match(w) for w in words)
    trains = any(_TRAIN.match(w) for w in words)
    if evaluates != trains:
        return "eval" if evaluates else "train"
    return None


def _target_name(node: ast.AST) -> str | None:
    """The name a value is stored under: ``val_loader = ...``, ``{"val": ...}``, ``f(val_loader=...)``."""
    parent = getattr(node, "parent", None)
    if isinstance(parent, ast.Assign) and parent.value is node:
        target = parent.targets[0]
        if isinstance(target, (ast.Name, ast.Attribute)):
            return ast.unparse(target)
    if isinstance(parent, ast.AnnAssign) and parent.value is node:
        return ast.unparse(parent.target)
    if isinstance(parent, ast.keyword) and parent.arg:
        return parent.arg
    if isinstance(parent, ast.Dict):
        for key, value in zip(parent.keys, parent.values):
            if value is node and isinstance(key, ast.Constant) and isinstance(key.value, str):
                return key.value
    return None


def _role_of(ctx: FileContext, call: ast.Call, dataset: ast.expr | None) -> str | None:
    name = _target_name(call)
    role = _role(_words(name)) if name else None
    if role is None and isinstance(getattr(call, "parent", None), ast.Return):
        function = ctx.enclosing_function(call)
        role = _role(_words(function.name)) if function else None
    if role is None and dataset is not None:
        role = _dataset_role(ctx, dataset)
    return role


def _dataset_role(ctx: FileContext, dataset: ast.expr) -> str | None:
    """Role from the dataset: its name, ``ds["validation"]``, ``MNIST(train=False)``, ``split="test"``, paths."""
    words: list[str] = []
    for node in (dataset, dataset.value if isinstance(dataset, ast.Subscript) else None):
        if isinstance(node, (ast.Name, ast.Attribute)):
            words += _words(ast.unparse(node))
    if isinstance(dataset, ast.Subscript) and isinstance(dataset.slice, ast.Constant) \
            and isinstance(dataset.slice.value, str):
        words += _words(dataset.slice.value)
    role = _role(words)
    if role is not None:
        return role
    built = ctx.resolve(dataset)
    if not isinstance(built, ast.Call):
        return None
    train_flag = constant(keyword(built, "train"))
    if isinstance(train_flag, bool):
        return "train" if train_flag else "eval"
    words = [w for arg in [*built.args, *(k.value for k in built.keywords)] for w in _arg_words(arg)]
    return _role(words)


def _arg_words(arg: ast.expr) -> list[str]:
    """Words of a dataset constructor argument: variable names at the top, strings (paths, splits) anywhere."""
    words = _words(ast.unparse(arg)) if isinstance(arg, (ast.Name, ast.Attribute)) else []
    if isinstance(arg, (ast.Constant, ast.Call, ast.BinOp, ast.JoinedStr)):
        words += [w for n in ast.walk(arg) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  for w in _words(n.value)]
    return words


# ---------------------------------------------------------------- datasets

def _dataset_call(ctx: FileContext, loader: _Loader) -> ast.Call | None:
    built = ctx.resolve(loader.args.get("dataset"))
    return built if isinstance(built, ast.Call) else None


def _is_tensor_dataset(ctx: FileContext, loader: _Loader) -> bool:
    built = _dataset_call(ctx, loader)
    name = ctx.call_name(built) if built is not None else None
    return bool(name) and name.rsplit(".", 1)[-1] == "TensorDataset"  # type: ignore[union-attr]


def _on_device(ctx: FileContext, loader: _Loader) -> bool:
    """A ``TensorDataset`` of tensors already moved to the GPU (pinning would raise, workers cannot share it)."""
    built = _dataset_call(ctx, loader)
    if built is None or not _is_tensor_dataset(ctx, loader):
        return False
    for arg in built.args:
        value = ctx.resolve(arg)
        for node in ast.walk(value) if value is not None else ():
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("cuda", "to"):
                return True
            if isinstance(node, ast.keyword) and node.arg == "device":
                return True
    return False


def _is_iterable_dataset(ctx: FileContext, loader: _Loader) -> bool:
    """Visibly an IterableDataset (or a stream that shuffles itself): ``shuffle=True`` is not even allowed."""
    built = _dataset_call(ctx, loader)
    if built is None:
        return False
    name = ctx.call_name(built) or ""
    last = name.rsplit(".", 1)[-1]
    cls = ctx.classes.get(last)
    if cls is not None and any("IterableDataset" in ast.unparse(base) for base in cls.bases):
        return True
    if any(hint in name for hint in _ITERABLE_HINTS) or constant(keyword(built, "streaming")) is True:
        return True
    return last in ("to_iterable_dataset", "shuffle")  # HF datasets: `ds.shuffle(seed=...)` is shuffled already


# ---------------------------------------------------------------- which loader does a training loop read?

def _loaders_of(ctx: FileContext, expr: ast.expr | None, by_call: dict[int, _Loader],
                depth: int = 0) -> list[_Loader]:
    """The loaders an iterated expression stands for, through names, helpers, wrappers and call sites."""
    while expr is not None and depth < 10:
        depth += 1
        if isinstance(expr, ast.Call):
            if id(expr) in by_call:
                return [by_call[id(expr)]]
            name = ctx.call_name(expr)
            if name and name.rsplit(".", 1)[-1] in _WRAPPERS and expr.args:
                expr = expr.args[0]
                continue
        resolved = ctx.resolve(expr)
        if resolved is expr and isinstance(expr, ast.Name):
            unpacked = _unpacked(ctx, expr.id)
            if unpacked is not None:
                expr = unpacked
                continue
            # A parameter: `def fit(loader): for b in loader` called as `fit(train_loader)`.
            return [found for passed in _arguments_for_parameter(ctx, expr)
                    for found in _loaders_of(ctx, passed, by_call, depth)]
        if resolved is expr or resolved is None:
            return []
        expr = resolved
    return []


def _unpacked(ctx: FileContext, name: str) -> ast.expr | None:
    """``train_loader, val_loader = build_loaders(cfg)`` with ``return train_loader, val_loader``: the element."""
    for call in ctx.calls:
        stmt = getattr(call, "parent", None)
        if not (isinstance(call.func, ast.Name) and call.func.id in ctx.functions and isinstance(stmt, ast.Assign)
                and stmt.value is call and isinstance(stmt.targets[0], ast.Tuple)):
            continue
        names = [t.id if isinstance(t, ast.Name) else None for t in stmt.targets[0].elts]
        returned = ctx.returned_value(ctx.functions[call.func.id])
        if name in names and isinstance(returned, ast.Tuple) and len(returned.elts) == len(names):
            return returned.elts[names.index(name)]
    return None


def _arguments_for_parameter(ctx: FileContext, name: ast.Name) -> list[ast.expr]:
    """What the call sites pass for the parameter ``name`` of its enclosing same-file function."""
    function = ctx.enclosing_function(name)
    if function is None:
        return []
    params = [a.arg for a in [*function.args.posonlyargs, *function.args.args]]
    if name.id not in params:
        return []
    index = params.index(name.id)
    passed: list[ast.expr] = []
    for call in ctx.method_calls(function.name)[:8]:
        by_keyword = keyword(call, name.id)
        shift = 1 if isinstance(call.func, ast.Attribute) and params[:1] == ["self"] else 0
        position = index - shift
        if by_keyword is not None:
            passed.append(by_keyword)
        elif (isinstance(call.func, ast.Name) or shift) and 0 <= position < len(call.args) \
                and not isinstance(call.args[position], ast.Starred):
            passed.append(call.args[position])
    return passed


def _training_loaders(ctx: FileContext) -> Iterator[tuple[ast.AST, _Loader]]:
    """(training loop, loader it reads) for ``for b in loader`` and ``next(it)`` with ``it = iter(loader)``."""
    loaders = _loaders(ctx)
    if not loaders:
        return
    by_call = {id(loader.call): loader for loader in loaders}
    nexts = ctx.calls_by_name.get("next", [])
    for loop in ctx.training_loops:
        sources = [loop.iter] if isinstance(loop, (ast.For, ast.AsyncFor)) else []
        sources += [c.args[0] for c in nexts if c.args and ctx.inside(c, loop)]
        for source in sources:
            for loader in _loaders_of(ctx, source, by_call):
                yield loop, loader


# ---------------------------------------------------------------- rules

@rule(
    "DAT001", "dataloader-without-workers", "dataloader",
    what="A CUDA trainer's training `DataLoader` with `num_workers=0` (or no `num_workers`, whose default is 0).",
    why="With no workers, every batch is read, decoded, augmented and collated on the training thread while the "
        "GPU sits idle: a step takes data time plus compute time instead of the larger of the two. Workers "
        "prepare the next batches in parallel with the step.",
    bad="train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)",
    fix="train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, num_workers=8,\n"
        "                          pin_memory=True, persistent_workers=True)",
)
def dataloader_without_workers(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.is_trainer and ctx.uses_cuda):
        return
    for loader in _loaders(ctx):
        if loader.role == "eval" or _is_tensor_dataset(ctx, loader) or _is_iterable_dataset(ctx, loader):
            continue  # in-memory tensors gain nothing from workers; streams need sharding first
        workers = loader.value(ctx, "num_workers")
        if workers == 0 or (workers is None and loader.complete):
            said = "`num_workers=0`" if workers == 0 else "no `num_workers` (default 0)"
            yield ctx.finding(rule_, loader.call, f"{loader.shown()} has {said}: batches are loaded on the "
                              "training thread while the GPU waits; set `num_workers` (e.g. 4-8 per GPU)")


@rule(
    "DAT002", "dataloader-without-pinned-memory", "dataloader",
    what="A CUDA trainer's `DataLoader` without `pin_memory=True`.",
    why="Copies from pageable host memory go through a staging buffer and block the CPU; only pinned "
        "(page-locked) batches can be copied asynchronously, so `.to(device, non_blocking=True)` overlaps the "
        "copy with compute only when the loader pins.",
    bad="loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8)\nx = x.to(device, non_blocking=True)",
    fix="loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8, pin_memory=True)\n"
        "x = x.to(device, non_blocking=True)",
)
def dataloader_without_pinned_memory(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.is_trainer and ctx.uses_cuda):
        return
    for loader in _loaders(ctx):
        pinned = loader.value(ctx, "pin_memory")
        if (pinned is False or (pinned is None and loader.complete)) and not _on_device(ctx, loader):
            said = "`pin_memory=False`" if pinned is False else "no `pin_memory=True`"
            yield ctx.finding(rule_, loader.call, f"{loader.shown()} has {said}: host-to-GPU copies cannot "
                              "overlap compute (`non_blocking=True` needs pinned memory); pass `pin_memory=True`")


@rule(
    "DAT003", "workers-not-persistent", "dataloader",
    what="A `DataLoader` with worker processes but without `persistent_workers=True`.",
    why="Without it the worker processes are shut down at the end of every pass over the loader and forked "
        "again at the start of the next: each epoch (and each evaluation) pays the start-up again - "
        "re-importing, re-opening files, re-building the dataset in every worker - which takes seconds "
        "for a heavy dataset.",
    bad="loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8, pin_memory=True)",
    fix="loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8, pin_memory=True,\n"
        "                    persistent_workers=True)",
)
def workers_not_persistent(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for loader in _loaders(ctx):
        workers = loader.args.get("num_workers")
        if workers is None or loader.value(ctx, "num_workers") in (0, None):
            continue  # no workers, nothing to keep alive
        persistent = loader.value(ctx, "persistent_workers")
        if persistent is False or (persistent is None and loader.complete):
            shown = ast.unparse(workers)
            fix = "`persistent_workers=True`" if isinstance(loader.value(ctx, "num_workers"), int) \
                else f"`persistent_workers={shown} > 0`"
            yield ctx.finding(rule_, loader.call, f"{loader.shown()} has `num_workers={shown}` without "
                              f"`persistent_workers=True`: workers are re-forked at every epoch; pass {fix}")


@rule(
    "DAT004", "shuffled-evaluation-loader", "dataloader",
    what="A validation/test `DataLoader` (by its name or its dataset's) with `shuffle=True`.",
    why="Evaluation should see the same batches in the same order every time: shuffling makes per-batch logs, "
        "partial evaluations (`max_eval_batches`), `drop_last` and any order-dependent metric differ between "
        "runs, so two checkpoints are no longer compared on the same data, and it costs random reads.",
    bad="val_loader = DataLoader(val_ds, batch_size=256, shuffle=True)",
    fix="val_loader = DataLoader(val_ds, batch_size=256, shuffle=False)",
)
def shuffled_evaluation_loader(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for loader in _loaders(ctx):
        if loader.role == "eval" and loader.value(ctx, "shuffle") is True:
            yield ctx.finding(rule_, loader.call, f"{loader.shown()} evaluates on shuffled data: evaluation "
                              "order then changes from run to run; pass `shuffle=False`")


@rule(
    "DAT005", "training-loader-not-shuffled", "dataloader",
    what="The `DataLoader` a training loop iterates has neither `shuffle=True` nor a `sampler`/`batch_sampler`.",
    why="Without shuffling every epoch presents the samples in the same order, usually the order they were "
        "written in (sorted by class, source or length): batches are correlated, gradients are biased within "
        "an epoch, and the model can learn the order instead of the data.",
    bad="train_loader = DataLoader(train_ds, batch_size=64)\nfor x, y in train_loader:\n    ...",
    fix="train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)\n"
        "# or, distributed: DataLoader(train_ds, batch_size=64, sampler=DistributedSampler(train_ds))",
)
def training_loader_not_shuffled(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    reported: set[int] = set()
    for loop, loader in _training_loaders(ctx):
        if id(loader.call) in reported or not loader.complete or loader.role == "eval":
            continue
        if any(loader.args.get(k) is not None and constant(loader.args[k]) is not None
               for k in ("sampler", "batch_sampler")):
            continue
        shuffle = loader.value(ctx, "shuffle")
        if shuffle not in (None, False) or ("batch_size" in loader.args and loader.value(ctx, "batch_size") is None):
            continue  # shuffled (or a setting we cannot read), or a dataset that yields ready batches
        if _is_iterable_dataset(ctx, loader):
            continue
        reported.add(id(loader.call))
        yield ctx.finding(rule_, loader.call, f"{loader.shown()} feeds the training loop at line {loop.lineno} "
                          "without `shuffle=True` or a sampler: every epoch sees the same order; pass `shuffle=True`")


@rule(
    "DAT006", "distributed-sampler-without-set-epoch", "dataloader",
    what="A shuffling `DistributedSampler` in a trainer that never calls `sampler.set_epoch(epoch)`.",
    why="`DistributedSampler` seeds its shuffle with `seed + epoch`; the epoch only changes through "
        "`set_epoch`, so without it every epoch replays exactly the same permutation on every rank.",
    bad="sampler = DistributedSampler(train_ds)\nfor epoch in range(epochs):\n    for batch in loader:\n        ...",
    fix="sampler = DistributedSampler(train_ds)\nfor epoch in range(epochs):\n    sampler.set_epoch(epoch)\n"
        "    for batch in loader:\n        ...",
)
def distributed_sampler_without_set_epoch(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    samplers = ctx.calls_to(*_SAMPLERS, "DistributedSampler")
    if not samplers or not ctx.is_trainer or ctx.method_calls("set_epoch"):
        return
    for call in samplers:
        shuffle = call.args[3] if len(call.args) > 3 else keyword(call, "shuffle")
        dataset = call.args[0] if call.args else keyword(call, "dataset")
        name = _target_name(call)
        role = (_role(_words(name)) if name else None) or (_dataset_role(ctx, dataset) if dataset else None)
        if constant(shuffle) is False or role == "eval":
            continue
        yield ctx.finding(rule_, call, "`DistributedSampler` shuffles but `set_epoch` is never called: every "
                          "epoch repeats the same order; call `sampler.set_epoch(epoch)` at the start of each epoch")
