"""L0 rules: attention. Attention written so that PyTorch cannot use its flash / memory-efficient kernels."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator

from ..context import FileContext, FunctionNode, constant, keyword
from ..model import Finding, Rule
from ..registry import rule

_SDPA = "torch.nn.functional.scaled_dot_product_attention"
_MHA = "torch.nn.MultiheadAttention"
_SOFTMAX_FUNCTIONS = frozenset({"torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"})
_MATMUL_FUNCTIONS = frozenset({"torch.matmul", "torch.bmm", "torch.einsum", "torch.baddbmm"})
_MATMUL_METHODS = frozenset({"matmul", "bmm"})
_TRANSPOSE_METHODS = frozenset({"transpose", "permute", "swapaxes", "swapdims", "t", "transpose_"})
_TRANSPOSE_ATTRS = frozenset({"T", "mT", "mH", "H"})
# Tensor methods that keep a mask what it is (shape, dtype, device).
_MASK_PASSTHROUGH = frozenset({"view", "reshape", "to", "bool", "float", "half", "bfloat16", "unsqueeze", "expand",
                               "expand_as", "cuda", "type", "type_as", "contiguous", "detach", "clone",
                               "logical_not"})
_MASK_FILLS = frozenset({"torch.zeros", "torch.ones", "torch.full", "torch.empty", "torch.zeros_like",
                         "torch.ones_like", "torch.full_like", "torch.empty_like"})
_MAX_DEPTH = 5
# Functions that are the manual path on purpose: a reference to test kernels against, an eager fallback.
_REFERENCE_NAME = re.compile(r"naive|reference|(^|_)ref(_|$)|eager|baseline|manual|slow|(^|_)math(_|$)")


def _code(node: ast.AST) -> str:
    """Short source text for a message (``ast.unparse``: ``ctx.segment`` re-splits the whole file per call)."""
    return ast.unparse(node)


# ---------------------------------------------------------------------------------------------- local names



def _is_matmul(ctx: FileContext, node: ast.AST) -> list[ast.expr] | None:
    """The operands of a matrix product (``a @ b``, ``torch.matmul``, ``bmm``, ``einsum``), else None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return [node.left, node.right]
    if not isinstance(node, ast.Call):
        return None
    name = ctx.call_name(node)
    if name in _MATMUL_FUNCTIONS:
        operands = list(node.args)
        if name == "torch.einsum" and len(operands) == 2 and isinstance(operands[1], (ast.List, ast.Tuple)):
            operands = [operands[0], *operands[1].elts]
        return operands
    if isinstance(node.func, ast.Attribute) and node.func.attr in _MATMUL_METHODS:
        return [node.func.value, *node.args]
    return None


def _contains(ctx: FileContext, expr: ast.expr, test: Callable[[ast.AST], bool], function: FunctionNode | None,
              depth: int = 0, seen: set[int] | None = None) -> bool:
    """Does ``expr`` (following local names to their earlier assignments) contain a node passing ``test``?"""
    seen = set() if seen is None else seen
    if depth > _MAX_DEPTH or id(expr) in seen:
        return False
    seen.add(id(expr))
    for node in ast.walk(expr):
        if test(node):
            return True
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            value = ctx.assigned_in_scope_before(node.id, node, function)
            if value is not None and _contains(ctx, value, test, function, depth + 1, seen):
                return True
    return False


def _scores_product(ctx: FileContext, expr: ast.expr, function: FunctionNode | None) -> bool:
    """``expr`` is built from ``q @ k.transpose(...)`` (or ``einsum("...", q, k)``), through local names."""

    def transposed(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and node.attr in _TRANSPOSE_ATTRS:
            return True
        return isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr in _TRANSPOSE_METHODS)
            or ctx.call_name(node) == "torch.transpose")

    def scores(node: ast.AST) -> bool:
        operands = _is_matmul(ctx, node)
        if operands is None:
            return False
        if isinstance(node, ast.Call) and ctx.call_name(node) == "torch.einsum":
            return len(operands) >= 3  # the equation plus two tensors: the transpose is in the equation
        return any(_contains(ctx, o, transposed, function) for o in operands)

    return _contains(ctx, expr, scores, function)


# ---------------------------------------------------------------------------------------------- ATT001

def _softmax_modules(ctx: FileContext) -> set[str]:
    """Names bound to an ``nn.Softmax(...)`` module: ``self.softmax = nn.Softmax(dim=-1)``."""
    names: set[str] = set()
    for call in ctx.calls_to("torch.nn.Softmax"):
        parent = ctx.parent(call)
        if isinstance(parent, ast.Assign):
            names.update(n for t in parent.targets if (n := ctx.dotted(t, resolve=False)))
    return names


def _softmax_input(ctx: FileContext, call: ast.Call, modules: set[str]) -> ast.expr | None:
    """What a softmax call normalizes: ``F.softmax(x)``, ``x.softmax(-1)``, ``self.softmax(x)`` -> ``x``."""
    func = call.func
    name = ctx.call_name(call)
    if name in _SOFTMAX_FUNCTIONS or ctx.dotted(func, resolve=False) in modules:
        return call.args[0] if call.args else keyword(call, "input")
    if not isinstance(func, ast.Attribute) or func.attr != "softmax":
        return None
    receiver = func.value
    head = receiver
    while isinstance(head, ast.Attribute):
        head = head.value
    if isinstance(head, ast.Name) and (head.id in ctx.imports or receiver is head and head.id == "self"):
        return None  # a library's softmax we do not know (jax, scipy), or a method of the module itself
    return receiver


def _weights_use(ctx: FileContext, call: ast.Call, function: FunctionNode) -> str | None:
    """How the softmax output is used: ``"matmul"`` (multiplied with V), ``"returned"`` (the caller wants
    the attention weights, which SDPA cannot give) or None."""
    for ancestor in ctx.ancestors(call):
        if isinstance(ancestor, ast.stmt):
            statement = ancestor
            break
        operands = _is_matmul(ctx, ancestor)
        if operands is not None and any(call is o or ctx.inside(call, o) for o in operands):
            return "matmul"
    else:
        return None
    if not isinstance(statement, ast.Assign):
        return None
    tainted = {t.id for t in statement.targets if isinstance(t, ast.Name)}
    end = statement.end_lineno or statement.lineno
    later = sorted((n for n in ast.walk(function) if getattr(n, "lineno", 0) > end
                    and isinstance(n, (ast.Assign, ast.Return, ast.BinOp, ast.Call))),
                   key=lambda n: (n.lineno, n.col_offset))
    use = None
    for node in later:
        if isinstance(node, ast.Assign) and _mentions(node.value, tainted):
            tainted.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Return) and node.value is not None and _returns_name(node.value, tainted):
            return "returned"
        elif use is None and (operands := _is_matmul(ctx, node)) is not None \
                and any(_mentions(o, tainted) for o in operands):
            use = "matmul"
    return use


def _mentions(expr: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(expr))


def _returns_name(value: ast.expr, names: set[str]) -> bool:
    """``return out, attn``: the weights themselves (not a product of them) leave the function."""
    elements = value.elts if isinstance(value, ast.Tuple) else [value]
    return any(isinstance(e, ast.Name) and e.id in names for e in elements)


@rule(
    "ATT001", "hand-written-attention", "attention",
    what="Attention written by hand, `softmax(q @ k.transpose(-2, -1) * scale) @ v`, instead of "
         "`torch.nn.functional.scaled_dot_product_attention`.",
    why="The hand-written form materializes the full (batch, heads, n, n) score and probability matrices: "
        "O(n^2) memory (at n=8192 with 16 heads in bf16, 2 GiB per matrix per layer for a single sequence, kept "
        "for backward) and several memory-bound kernels. SDPA dispatches to FlashAttention or memory-efficient "
        "kernels that never store the n x n matrix: the same math in O(n) memory, typically 2-4x faster.",
    bad="att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))\natt = att.masked_fill(mask == 0, float('-inf'))\n"
        "att = F.softmax(att, dim=-1)\ny = att @ v",
    fix="y = F.scaled_dot_product_attention(q, k, v, is_causal=True,\n"
        "                                   dropout_p=self.dropout if self.training else 0.0)",
)
def hand_written_attention(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    modules = _softmax_modules(ctx)
    calls = ctx.method_calls(*({"softmax"} | {m.rsplit(".", 1)[-1] for m in modules}))
    if not calls:
        return
    with_sdpa = {id(f) for c in ctx.calls_to(_SDPA) if (f := ctx.enclosing_function(c)) is not None}
    for call in calls:
        scores = _softmax_input(ctx, call, modules)
        function = ctx.enclosing_function(call)
        # A function that also calls SDPA keeps the manual path as a fallback (for old PyTorch or weights).
        if scores is None or function is None or id(function) in with_sdpa \
                or _REFERENCE_NAME.search(function.name.lower()):
            continue
        if _scores_product(ctx, scores, function) and _weights_use(ctx, call, function) == "matmul":
            yield ctx.finding(rule_, call, "hand-written attention (softmax of `q @ k.transpose(...)`, then "
                              "`@ v`) stores the n x n score matrix: use `F.scaled_dot_product_attention(q, k, v, "
                              "attn_mask=..., dropout_p=..., is_causal=...)`, which runs flash / memory-efficient "
                              "kernels")


# ---------------------------------------------------------------------------------------------- MHA calls

def _instance_calls(ctx: FileContext, cls: str = _MHA) -> Iterator[ast.Call]:
    """Calls of instances built as ``self.x = nn.MultiheadAttention(...)`` (same class) or ``x = ...`` (same
    function) in this file."""
    for build in ctx.calls_to(cls):
        parent = ctx.parent(build)
        if not isinstance(parent, (ast.Assign, ast.AnnAssign)):
            continue
        targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
        for target in targets:
            name = ctx.dotted(target, resolve=False)
            if not name or (isinstance(target, ast.Attribute) and name.count(".") != 1) or \
                    (isinstance(target, ast.Attribute) and not name.startswith("self.")):
                continue
            scope: ast.AST | None = ctx.enclosing_class(parent) if name.startswith("self.") \
                else ctx.enclosing_function(parent)
            for call in ctx.method_calls(name.rsplit(".", 1)[-1]):
                if ctx.dotted(call.func, resolve=False) != name:
                    continue
                owner = ctx.enclosing_class(call) if name.startswith("self.") else ctx.enclosing_function(call)
                if owner is scope:
                    yield call


def _argument(call: ast.Call, name: str, position: int) -> ast.expr | None:
    given = keyword(call, name)
    if given is None and len(call.args) > position:
        given = call.args[position]
    return given


def _weights_discarded(ctx: FileContext, call: ast.Call) -> bool:
    """``attn(...)[0]``, ``out, _ = attn(...)`` or an unpacked weights name never read again."""
    parent = ctx.parent(call)
    if isinstance(parent, ast.Subscript):
        return constant(parent.slice) == 0
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Tuple):
        elements = parent.targets[0].elts
        if len(elements) != 2 or not isinstance(elements[1], ast.Name):
            return False
        weights = elements[1].id
        if weights.startswith("_"):
            return True
        function = ctx.enclosing_function(call)
        return function is not None and not any(
            isinstance(n, ast.Name) and n.id == weights and isinstance(n.ctx, ast.Load) for n in ast.walk(function))
    return False


@rule(
    "ATT002", "multihead-attention-computes-weights", "attention",
    what="An `nn.MultiheadAttention` call whose attention weights are discarded but not turned off: "
         "`need_weights` defaults to True.",
    why="With `need_weights=True` MultiheadAttention computes softmax(QK^T) explicitly (an n x n matrix per "
        "head, O(n^2) memory, kept for backward) so it can return the weights; with `need_weights=False` it "
        "calls `scaled_dot_product_attention` and gets the flash / memory-efficient kernels. Throwing the "
        "weights away (`[0]`, `out, _ = ...`) pays for them anyway.",
    bad="x = x + self.attn(x, x, x)[0]",
    fix="x = x + self.attn(x, x, x, need_weights=False)[0]",
)
def multihead_attention_weights(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.calls_by_name.get(_MHA):
        return
    for call in _instance_calls(ctx):
        if any(k.arg is None for k in call.keywords):
            continue
        need = _argument(call, "need_weights", 4)
        if (need is None or constant(need) is True) and _weights_discarded(ctx, call):
            yield ctx.finding(rule_, call, f"`{ctx.dotted(call.func, resolve=False)}(...)` "
                              "(nn.MultiheadAttention) computes attention weights that are thrown away: "
                              "`need_weights` defaults to True and forces the explicit softmax(QK^T) path; "
                              "pass `need_weights=False` to use scaled_dot_product_attention")


# ---------------------------------------------------------------------------------------------- ATT003

def _buffer_value(ctx: FileContext, attribute: ast.Attribute) -> ast.expr | None:
    """``self.mask`` -> the value given to ``self.register_buffer("mask", value)`` or ``self.mask = value``."""
    cls = ctx.enclosing_class(attribute)
    if cls is None:
        return None
    for call in ctx.method_calls("register_buffer"):
        if len(call.args) >= 2 and constant(call.args[0]) == attribute.attr and ctx.enclosing_class(call) is cls:
            return call.args[1]
    assigned = [v for s, v in ctx.assignments.get(f"self.{attribute.attr}", ()) if ctx.enclosing_class(s) is cls]
    return assigned[0] if len(assigned) == 1 else None


def _is_parameter(function: FunctionNode, name: str) -> bool:
    args = function.args
    return any(a is not None and a.arg == name for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                          args.vararg, args.kwarg))


def _prefix_slices(index: ast.expr) -> bool:
    """``[:, :, :T, :T]`` or ``[None, None]``: a top-left crop or new axes, never an offset window (a KV
    cache slice like ``[past:past + q]`` is not what ``is_causal=True`` means)."""
    parts = index.elts if isinstance(index, ast.Tuple) else [index]
    for part in parts:
        if isinstance(part, ast.Slice):
            if part.step is not None or (part.lower is not None and constant(part.lower) != 0):
                return False
        elif not (isinstance(part, ast.Constant) and part.value is None):
            return False
    return True


def _causal(ctx: FileContext, expr: ast.expr | None, depth: int = 0) -> bool:
    """Is ``expr`` purely a causal mask (tril/triu-derived), with nothing else (padding) mixed in?"""
    if expr is None or depth > _MAX_DEPTH:
        return False
    if isinstance(expr, ast.Name):
        function = ctx.enclosing_function(expr)
        value = ctx.assigned_in_scope_before(expr.id, expr, function)
        if value is None and function is not None and not _is_parameter(function, expr.id):
            value = ctx.assigned_in_scope_before(expr.id, expr, None)  # a module-level mask
        return _causal(ctx, value, depth + 1)
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return _causal(ctx, _buffer_value(ctx, expr), depth + 1)
    if isinstance(expr, ast.Subscript):
        return _prefix_slices(expr.slice) and _causal(ctx, expr.value, depth + 1)
    if isinstance(expr, ast.Compare):
        return len(expr.comparators) == 1 and isinstance(expr.comparators[0], ast.Constant) \
            and _causal(ctx, expr.left, depth + 1)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.Invert, ast.Not)):
        return _causal(ctx, expr.operand, depth + 1)
    if isinstance(expr, ast.Call):
        return _causal_call(ctx, expr, depth)
    return False


def _causal_call(ctx: FileContext, call: ast.Call, depth: int) -> bool:
    name = ctx.call_name(call) or ""
    method = call.func.attr if isinstance(call.func, ast.Attribute) else (
        call.func.id if isinstance(call.func, ast.Name) else "")
    if name in ("torch.tril", "torch.triu") or method == "generate_square_subsequent_mask":
        return True
    if name in ("torch.logical_not",):
        return bool(call.args) and _causal(ctx, call.args[0], depth + 1)
    if name == "torch.where":
        return len(call.args) == 3 and _causal(ctx, call.args[0], depth + 1) and all(
            constant(a) is not ... or isinstance(a, ast.Call) and ctx.call_name(a) == "float" for a in call.args[1:])
    if isinstance(call.func, ast.Attribute) and not name.startswith("torch."):
        receiver = call.func.value
        if method in ("tril", "triu"):
            return True
        if method in _MASK_PASSTHROUGH:
            return _causal(ctx, receiver, depth + 1)
        if method in ("masked_fill", "masked_fill_") and call.args:
            blank = isinstance(receiver, ast.Call) and ctx.call_name(receiver) in _MASK_FILLS
            return blank and _causal(ctx, call.args[0], depth + 1) or _causal(ctx, receiver, depth + 1)
    if isinstance(call.func, ast.Name) and call.func.id in ctx.functions:
        return _causal(ctx, ctx.returned_value(ctx.functions[call.func.id]), depth + 1)
    return False


# nn.Transformer* modules: (mask keyword, its position, the matching causal flag, whether forward() detects a
# causal mask itself by comparing it with a fresh one).
_TRANSFORMERS = {
    "torch.nn.TransformerEncoder": [("mask", 1, "is_causal", True)],
    "torch.nn.TransformerEncoderLayer": [("src_mask", 1, "is_causal", False)],
    "torch.nn.TransformerDecoder": [("tgt_mask", 2, "tgt_is_causal", True)],
    "torch.nn.TransformerDecoderLayer": [("tgt_mask", 2, "tgt_is_causal", False)],
    "torch.nn.Transformer": [("src_mask", 2, "src_is_causal", True), ("tgt_mask", 3, "tgt_is_causal", True)],
}


def _transformer_masks(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for cls, masks in _TRANSFORMERS.items():
        if not ctx.calls_by_name.get(cls):
            continue
        for call in _instance_calls(ctx, cls):
            if any(k.arg is None for k in call.keywords):
                continue
            for mask_name, position, flag, detects in masks:
                mask = _argument(call, mask_name, position)
                if mask is None or keyword(call, flag) is not None or not _causal(ctx, mask):
                    continue
                short = cls.rsplit(".", 1)[-1]
                cost = (f"nn.{short} then rebuilds a causal mask and compares it with yours on every forward "
                        "(a T x T allocation and a GPU sync) to find out") if detects else (
                        f"nn.{short} applies the n x n mask and cannot use the causal flash kernel")
                yield ctx.finding(rule_, call, f"`{mask_name}={_code(mask)}` is a causal mask passed without "
                                  f"`{flag}=True`: {cost}; pass `{flag}=True` along with the mask")


@rule(
    "ATT003", "explicit-causal-mask", "attention",
    what="A causal mask built with `torch.tril`/`triu` (or `generate_square_subsequent_mask`) passed as "
         "`attn_mask` to SDPA, or to `nn.MultiheadAttention`/`nn.Transformer*` without the `is_causal` flag.",
    why="FlashAttention does not take an arbitrary `attn_mask`: with one, `scaled_dot_product_attention` falls "
        "back to the memory-efficient or math kernel and also reads an n x n mask on every call. "
        "`is_causal=True` gives the same result with the flash kernel, which also skips the masked half of the "
        "work. `nn.MultiheadAttention` and the `nn.Transformer*` layers only drop the mask when told "
        "`is_causal=True` (`nn.TransformerEncoder`/`Decoder` otherwise compare the mask with a fresh causal one "
        "on every forward, a GPU sync).",
    bad="mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))\n"
        "y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)",
    fix="y = F.scaled_dot_product_attention(q, k, v, is_causal=True)",
)
def explicit_causal_mask(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.calls_to(_SDPA):
        mask = _argument(call, "attn_mask", 3)
        if mask is not None and constant(keyword(call, "is_causal")) is not True and _causal(ctx, mask):
            yield ctx.finding(rule_, call, f"`attn_mask={_code(mask)}` is a plain causal mask: it rules out "
                              "the flash kernel and reads an n x n mask each call; drop it and pass "
                              "`is_causal=True`")
    yield from _transformer_masks(rule_, ctx)
    if not ctx.calls_by_name.get(_MHA):
        return
    for call in _instance_calls(ctx):
        mask = _argument(call, "attn_mask", 5)
        if mask is not None and constant(_argument(call, "is_causal", 7)) is not True and _causal(ctx, mask):
            yield ctx.finding(rule_, call, f"`{ctx.dotted(call.func, resolve=False)}(..., attn_mask="
                              f"{_code(mask)})` without `is_causal=True`: MultiheadAttention applies the "
                              "n x n mask and cannot use the causal flash kernel; add `is_causal=True` (and "
                              "`need_weights=False`) so it drops the mask")
