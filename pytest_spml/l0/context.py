"""One parse, one walk: the facts every L0 rule asks about a file.

Rules never walk the whole tree themselves: the benchmark budget is 4x a
bare ``ast.parse`` for *all* rules together. :class:`FileContext` walks the
tree once, recording parents, calls (by resolved dotted name and by method
name), assignments, functions, classes and loops, and answers the questions
rules share: "what does this name refer to?", "which loops train?", "is this
file a CUDA trainer?".
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import cached_property

from .model import Finding, Rule

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
LoopNode = ast.For | ast.AsyncFor | ast.While

_MAX_RESOLVE_DEPTH = 6


def _subclasses(base: type) -> set[type]:
    found = set()
    for sub in base.__subclasses__():
        found.add(sub)
        found |= _subclasses(sub)
    return found


# Operator and context nodes: the parser shares one instance of each across a
# tree, so they must not get a `parent`, and they hold nothing rules ask about.
_LEAF_TYPES = frozenset().union(*(_subclasses(t) for t in (ast.expr_context, ast.boolop, ast.operator,
                                                          ast.unaryop, ast.cmpop)))


class FileContext:
    """Everything rules may ask about one parsed file."""

    def __init__(self, path: str, source: str, tree: ast.Module):
        self.path = path
        self.source = source
        self.tree = tree
        self.imports: dict[str, str] = {}  # local name -> fully qualified name
        self.calls: list[ast.Call] = []
        self.calls_by_name: dict[str, list[ast.Call]] = defaultdict(list)  # resolved dotted name
        self.calls_by_method: dict[str, list[ast.Call]] = defaultdict(list)  # last attribute / bare name
        self.assignments: dict[str, list[tuple[ast.AST, ast.expr]]] = defaultdict(list)  # name -> (stmt, value)
        self.functions: dict[str, FunctionNode] = {}  # name (and Class.name) -> def
        self.classes: dict[str, ast.ClassDef] = {}
        self.loops: list[LoopNode] = []
        self.withs: list[ast.With | ast.AsyncWith] = []
        self.subscripts: list[ast.Subscript] = []
        self.binops: list[ast.BinOp] = []
        self.augassigns: list[ast.AugAssign] = []
        self.strings: list[ast.Constant] = []
        self._index()

    # ------------------------------------------------------------------ indexing

    def _index(self) -> None:
        # The hot loop of the whole linter (see benchmarks/bench_l0.py): direct
        # `_fields` access, a type-keyed dispatch, and no descent into the
        # shared singleton nodes (Load, Add, ...) that carry no information.
        stack: list[ast.AST] = [self.tree]
        self.tree.parent = None  # type: ignore[attr-defined]
        pop, push = stack.pop, stack.append
        handlers = {
            ast.Call: self.calls.append,
            ast.Assign: self._on_assign,
            ast.AnnAssign: self._on_annassign,
            ast.AugAssign: self.augassigns.append,
            ast.FunctionDef: self._on_function,
            ast.AsyncFunctionDef: self._on_function,
            ast.ClassDef: self._on_class,
            ast.For: self.loops.append,
            ast.AsyncFor: self.loops.append,
            ast.While: self.loops.append,
            ast.With: self.withs.append,
            ast.AsyncWith: self.withs.append,
            ast.Import: self._on_import,
            ast.ImportFrom: self._on_import_from,
            ast.Subscript: self.subscripts.append,
            ast.BinOp: self.binops.append,
            ast.Constant: self._on_constant,
        }
        get_handler = handlers.get
        leaf_types = _LEAF_TYPES
        node_type = ast.AST
        while stack:
            node = pop()
            for field in node._fields:
                value = getattr(node, field, None)
                if type(value) is list:
                    for child in value:
                        if isinstance(child, node_type) and type(child) not in leaf_types:
                            child.parent = node  # type: ignore[attr-defined]
                            push(child)
                elif isinstance(value, node_type) and type(value) not in leaf_types:
                    value.parent = node  # type: ignore[attr-defined]
                    push(value)
            handler = get_handler(type(node))
            if handler is not None:
                handler(node)
        for cls in self.classes.values():
            for item in cls.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions[f"{cls.name}.{item.name}"] = item
        # Calls are resolved after imports are known (imports can come late).
        self.calls.sort(key=lambda n: (n.lineno, n.col_offset))
        for call in self.calls:
            func = call.func
            name = self.dotted(func)
            if name:
                self.calls_by_name[name].append(call)
            method = func.attr if isinstance(func, ast.Attribute) else (func.id if isinstance(func, ast.Name) else None)
            if method:
                self.calls_by_method[method].append(call)

    def _on_assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._record_target(target, node, node.value)

    def _on_annassign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._record_target(node.target, node, node.value)

    def _on_function(self, node: FunctionNode) -> None:
        self.functions.setdefault(node.name, node)

    def _on_class(self, node: ast.ClassDef) -> None:
        self.classes[node.name] = node

    def _on_import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            self.imports[local] = alias.name if alias.asname else local

    def _on_import_from(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            for alias in node.names:
                self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _on_constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.strings.append(node)

    def _record_target(self, target: ast.expr, stmt: ast.AST, value: ast.expr) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            # `lr, steps, decay = 6e-4, 600000, 1e-1`: pair the names with the values
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for sub_target, sub_value in zip(target.elts, value.elts):
                    self._record_target(sub_target, stmt, sub_value)
            return
        if isinstance(target, ast.Name):
            self.assignments[target.id].append((stmt, value))
        elif isinstance(target, ast.Attribute):
            name = self.dotted(target, resolve=False)
            if name:
                self.assignments[name].append((stmt, value))

    # ------------------------------------------------------------------ names

    def dotted(self, node: ast.AST, resolve: bool = True) -> str | None:
        """``F.softmax`` -> ``torch.nn.functional.softmax`` (through imports); None for non-name chains."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        head = self.imports.get(node.id, node.id) if resolve else node.id
        parts.append(head)
        return ".".join(reversed(parts))

    def call_name(self, call: ast.Call) -> str | None:
        return self.dotted(call.func)

    def calls_to(self, *names: str) -> list[ast.Call]:
        """Calls whose resolved dotted name is one of ``names`` (in source order)."""
        found = [c for name in names for c in self.calls_by_name.get(name, ())]
        return sorted(found, key=lambda n: (n.lineno, n.col_offset)) if len(names) > 1 else found

    def method_calls(self, *methods: str) -> list[ast.Call]:
        """Calls of ``x.method(...)`` (or a bare ``method(...)``) for any receiver."""
        found = [c for m in methods for c in self.calls_by_method.get(m, ())]
        return sorted(found, key=lambda n: (n.lineno, n.col_offset)) if len(methods) > 1 else found

    def last_assignment(self, name: str, before: ast.AST | None = None) -> ast.expr | None:
        """The value most recently assigned to ``name`` (a simple name or ``self.x``) before ``before``."""
        candidates = self.assignments.get(name, [])
        if before is not None:
            line = getattr(before, "lineno", 10**9)
            candidates = [(s, v) for s, v in candidates if getattr(s, "lineno", 0) <= line] or candidates
        return candidates[-1][1] if candidates else None

    def assigned_in_scope_before(self, name: str, use: ast.AST, function: FunctionNode | None) -> ast.expr | None:
        """The value last assigned to ``name`` in ``function`` (None: module level) before ``use``.

        Stricter than :meth:`last_assignment`: never an assignment after the use,
        in another function, or the statement that contains the use itself.
        """
        line = getattr(use, "lineno", 0)
        best: tuple[int, ast.expr] | None = None
        for stmt, value in self.assignments.get(name, ()):
            stmt_line = getattr(stmt, "lineno", 0)
            if stmt_line > line or self.enclosing_function(stmt) is not function or self.inside(use, stmt):
                continue
            if best is None or stmt_line >= best[0]:
                best = (stmt_line, value)
        return best[1] if best else None

    def resolve(self, expr: ast.expr | None, depth: int = 0) -> ast.expr | None:
        """Follow a name through simple assignments and same-file function returns.

        ``opt = make_optimizer(model)`` with ``def make_optimizer(m): return
        torch.optim.AdamW(...)`` resolves ``opt`` to the ``AdamW(...)`` call.
        """
        if expr is None or depth > _MAX_RESOLVE_DEPTH:
            return expr
        if isinstance(expr, (ast.Name, ast.Attribute)):
            name = self.dotted(expr, resolve=False)
            value = self.last_assignment(name, before=expr) if name else None
            if value is not None and value is not expr:
                return self.resolve(value, depth + 1)
            return expr
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in self.functions:
            returned = self.returned_value(self.functions[expr.func.id])
            if returned is not None:
                return self.resolve(returned, depth + 1)
        return expr

    def resolved_call_name(self, expr: ast.expr | None) -> str | None:
        """The dotted name of the call an expression resolves to (``opt`` -> ``torch.optim.AdamW``)."""
        value = self.resolve(expr)
        return self.call_name(value) if isinstance(value, ast.Call) else None

    @staticmethod
    def returned_value(function: FunctionNode) -> ast.expr | None:
        for node in ast.walk(function):
            if isinstance(node, ast.Return) and node.value is not None:
                return node.value
        return None

    # ------------------------------------------------------------------ structure

    @staticmethod
    def parent(node: ast.AST) -> ast.AST | None:
        return getattr(node, "parent", None)

    def ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        current = self.parent(node)
        while current is not None:
            yield current
            current = self.parent(current)

    def enclosing_function(self, node: ast.AST) -> FunctionNode | None:
        return next((a for a in self.ancestors(node) if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef))),
                    None)

    def enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        return next((a for a in self.ancestors(node) if isinstance(a, ast.ClassDef)), None)

    def inside(self, node: ast.AST, container: ast.AST) -> bool:
        return any(a is container for a in self.ancestors(node))

    def in_with(self, node: ast.AST, *names: str) -> ast.With | ast.AsyncWith | None:
        """The enclosing ``with`` whose context manager is one of ``names``.

        Matched on the full dotted name or its last part, so ``autocast``
        covers ``torch.autocast``, ``torch.amp.autocast`` and ``torch.cuda.amp.autocast``.
        """
        wanted = set(names) | {n.rsplit(".", 1)[-1] for n in names}
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, (ast.With, ast.AsyncWith)):
                for item in ancestor.items:
                    expr = item.context_expr
                    called = self.call_name(expr) if isinstance(expr, ast.Call) else self.dotted(expr)
                    if called and (called in wanted or called.rsplit(".", 1)[-1] in wanted):
                        return ancestor
        return None

    @cached_property
    def functions_calling_backward(self) -> set[str]:
        """Same-file functions that call ``.backward()``, directly or through other same-file functions."""
        direct = {f.name for call in self.method_calls("backward")
                  if (f := self.enclosing_function(call)) is not None}
        callers: dict[str, set[str]] = defaultdict(set)
        for call in self.calls:
            if isinstance(call.func, ast.Name) and call.func.id in self.functions:
                outer = self.enclosing_function(call)
                if outer is not None:
                    callers[call.func.id].add(outer.name)
            elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) \
                    and call.func.value.id == "self" and call.func.attr in self.functions:
                outer = self.enclosing_function(call)
                if outer is not None:
                    callers[call.func.attr].add(outer.name)
        result, frontier = set(direct), list(direct)
        while frontier:
            for caller in callers.get(frontier.pop(), ()):
                if caller not in result:
                    result.add(caller)
                    frontier.append(caller)
        return result

    def _trains(self, call: ast.Call) -> bool:
        if isinstance(call.func, ast.Attribute) and call.func.attr == "backward":
            return True
        name = call.func.id if isinstance(call.func, ast.Name) else (
            call.func.attr if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "self" else None)
        return name is not None and name in self.functions_calling_backward and name in self.functions

    @cached_property
    def training_loops(self) -> list[LoopNode]:
        """Innermost loops whose body runs a training step (``.backward()``, directly or via a local function)."""
        stepping: list[LoopNode] = []
        for call in self.calls:
            if not self._trains(call):
                continue
            loop = next((a for a in self.ancestors(call) if isinstance(a, (ast.For, ast.AsyncFor, ast.While))), None)
            if loop is not None and all(loop is not s for s in stepping):
                stepping.append(loop)
        return stepping

    def in_training_loop(self, node: ast.AST) -> LoopNode | None:
        for loop in self.training_loops:
            if self.inside(node, loop):
                return loop
        return None

    def in_forward(self, node: ast.AST) -> bool:
        function = self.enclosing_function(node)
        return function is not None and function.name == "forward" and self.enclosing_class(function) is not None

    @cached_property
    def is_trainer(self) -> bool:
        """Does the file train (a backward pass or an optimizer step)?"""
        return bool(self.calls_by_method.get("backward")) and bool(
            self.calls_by_method.get("step") or self.training_loops)

    @cached_property
    def uses_cuda(self) -> bool:
        """Is CUDA the intended device (``.cuda()``, ``"cuda"``, ``torch.cuda.*``)?"""
        if self.calls_by_method.get("cuda"):
            return True
        if any(s.value == "cuda" or s.value.startswith("cuda:") for s in self.strings):
            return True
        return any(name.startswith("torch.cuda.") for name in self.calls_by_name)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ""

    # ------------------------------------------------------------------ findings

    def finding(self, rule: Rule, node: ast.AST, message: str, **evidence: object) -> Finding:
        return Finding(
            rule=rule.id, category=rule.category, severity=rule.default_severity, path=self.path,
            line=getattr(node, "lineno", 1), col=getattr(node, "col_offset", 0) + 1, message=message,
            evidence=dict(evidence),
        )

    def file_finding(self, rule: Rule, message: str, **evidence: object) -> Finding:
        """A finding about the file as a whole (observability), placed at the first training loop or line 1."""
        anchor: ast.AST = self.training_loops[0] if self.training_loops else self.tree
        return self.finding(rule, anchor, message, **evidence)


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def constant(expr: ast.expr | None) -> object:
    """The literal value of a constant expression (or ``...`` when it is not a literal)."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub) and isinstance(expr.operand, ast.Constant):
        value = expr.operand.value
        return -value if isinstance(value, (int, float)) else ...
    return ...


def names_in(nodes: Iterable[ast.AST]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}
