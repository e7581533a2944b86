"""L0 rules: precision. fp16 without loss scaling, scaling without fp16, fp32 where TF32 is free."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from ..context import FileContext, constant, keyword
from ..model import Finding, Rule
from ..registry import rule
from .device import after_training, optimized_modules

_FP16 = frozenset(("torch.float16", "torch.half"))
_BF16 = frozenset(("torch.bfloat16",))
_FP32 = frozenset(("torch.float32", "torch.float"))
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
# Any of these in the source means the author chose a low precision somewhere (a config string, a
# framework flag, a model loaded in bf16): TF32 advice would be noise.
_LOW_PRECISION = re.compile(r"float16|\bbf16|\bfp16|mixed_precision")
_FP16_MENTION = re.compile(r"(?<!b)float16|torch\.half\b|\.half\(|\bfp16\b")
_MASTER_FP32 = re.compile(r"float32|torch\.float\b")
# cuDNN convolutions use TF32 by default (cudnn.allow_tf32 is True): only matmuls need the switch.
_CONV = re.compile(r"\bConv(?:Transpose)?[123]d\b")
_MATMUL = re.compile(r"\bLinear\b|\bmatmul\b|\bbmm\b|\bmm\(|einsum|Transformer|Attention|scaled_dot_product|"
                     r"Embedding|\bAutoModel|from_pretrained|\bmodels\.|\btimm\b|\bGRU\b|\bLSTM\b|\bRNN\b")


def _dtype_kind(ctx: FileContext, expr: ast.expr) -> str | None:
    name = ctx.dotted(ctx.resolve(expr) or expr) or ""
    return "fp16" if name in _FP16 else "bf16" if name in _BF16 else "fp32" if name in _FP32 else None


def _device_default(ctx: FileContext, device: ast.expr | None) -> str | None:
    """The dtype ``torch.autocast(device_type)`` picks by default: fp16 on CUDA (and MPS), bf16 on CPU/XPU/HPU."""
    value = ctx.resolve(device) if device is not None else None
    branches = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
    kinds = {str(constant(b)).split(":")[0] for b in branches if b is not None and isinstance(constant(b), str)}
    if kinds & {"cuda", "mps"}:
        return "fp16"
    if kinds and kinds <= {"cpu", "xpu", "hpu"}:
        return "bf16"
    return "fp16" if ctx.uses_cuda else None  # unknown device in a CUDA file: CUDA's default


def autocast_kind(ctx: FileContext, call: ast.Call) -> str | None:
    """"fp16", "bf16", "fp32", "off" (``enabled=False``) or None (cannot tell) for an autocast call."""
    name = ctx.call_name(call) or ""
    if not name.startswith("torch."):
        return None  # accelerator.autocast() and friends: the framework decides
    legacy = name.startswith(("torch.cuda.amp", "torch.cpu.amp"))  # autocast(enabled, dtype, ...)
    enabled = keyword(call, "enabled") or (call.args[0] if legacy and call.args else None)
    if constant(enabled) is False:
        return "off"
    dtype = keyword(call, "dtype") or (call.args[1] if len(call.args) > 1 else None)
    if dtype is not None:
        return _dtype_kind(ctx, dtype)
    if name.startswith("torch.cuda."):
        return "fp16"
    if name.startswith("torch.cpu."):
        return "bf16"
    return _device_default(ctx, keyword(call, "device_type") or (call.args[0] if call.args else None))


def _scaled(ctx: FileContext) -> bool:
    """Is the loss scaled somewhere: a GradScaler (any kind), a scaler passed in, or a framework's backward?"""
    if any(name.rsplit(".", 1)[-1].endswith("GradScaler") for name in ctx.calls_by_name):
        return True
    if ctx.method_calls("scale") or ctx.method_calls("unscale_"):
        return True
    # accelerator.backward(loss), engine.backward(loss): Accelerate and DeepSpeed scale fp16 losses themselves
    return any(call.args and isinstance(call.func, ast.Attribute)
               and not (ctx.call_name(call) or "").startswith("torch.") for call in ctx.method_calls("backward"))


def _evaluating(ctx: FileContext, node: ast.AST) -> bool:
    """Under ``no_grad`` / ``inference_mode`` (a with block or a decorator): no backward, no scaler needed."""
    if ctx.in_with(node, "torch.no_grad", "torch.inference_mode"):
        return True
    function = ctx.enclosing_function(node)
    return function is not None and any(
        (ctx.dotted(d.func if isinstance(d, ast.Call) else d) or "").rsplit(".", 1)[-1] in ("no_grad", "inference_mode")
        for d in function.decorator_list)


@rule(
    "PRC001", "fp16-autocast-without-grad-scaler", "precision",
    what="float16 autocast in a training file with no GradScaler (explicit `dtype=torch.float16`, or the "
         "CUDA default of `torch.autocast(\"cuda\")` / `torch.cuda.amp.autocast()`).",
    why="fp16 has a 5-bit exponent: values below ~6e-8 flush to zero. Without loss scaling many gradients "
        "(often most of them in late training) underflow, the optimizer sees zeros, and the loss plateaus "
        "with no error. A GradScaler multiplies the loss (2^16 by default) before backward and unscales before "
        "the step, skipping steps whose gradients overflowed.",
    bad='with torch.autocast("cuda"):              # fp16 by default on CUDA\n    loss = loss_fn(model(x), y)\n'
        'loss.backward()\noptimizer.step()',
    fix='scaler = torch.amp.GradScaler("cuda")\nwith torch.autocast("cuda", dtype=torch.float16):\n'
        '    loss = loss_fn(model(x), y)\nscaler.scale(loss).backward()\nscaler.step(optimizer)\nscaler.update()\n'
        '# or, on Ampere+: torch.autocast("cuda", dtype=torch.bfloat16) and no scaler',
)
def fp16_without_scaler(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer:
        return
    fp16 = [c for c in ctx.method_calls("autocast") if autocast_kind(ctx, c) == "fp16" and not _evaluating(ctx, c)]
    if not fp16 or _scaled(ctx):
        return
    for call in fp16:
        yield ctx.finding(rule_, call, "fp16 autocast with no GradScaler: small gradients underflow to zero; "
                          "use `scaler = torch.amp.GradScaler(\"cuda\")` with `scaler.scale(loss).backward()`, "
                          "or `dtype=torch.bfloat16`")


@rule(
    "PRC002", "grad-scaler-with-bf16", "precision",
    what="A GradScaler in a file whose autocast is bfloat16 only.",
    why="bfloat16 keeps fp32's 8-bit exponent, so gradients do not underflow and loss scaling buys nothing. "
        "The scaler still costs an unscale pass and an inf/NaN check (a host sync) every step, turns real "
        "inf/NaN gradients into silently skipped steps instead of a visible failure, and tells readers the run "
        "is fp16.",
    bad='scaler = torch.amp.GradScaler("cuda")\nwith torch.autocast("cuda", dtype=torch.bfloat16):\n'
        '    loss = loss_fn(model(x), y)\nscaler.scale(loss).backward()',
    fix='with torch.autocast("cuda", dtype=torch.bfloat16):\n    loss = loss_fn(model(x), y)\nloss.backward()\n'
        'optimizer.step()\n# a scaler that follows a dtype switch is fine: GradScaler(enabled=(dtype == "float16"))',
)
def scaler_with_bf16(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    scalers = [c for name, calls in ctx.calls_by_name.items()
               if name.startswith("torch.") and name.endswith("GradScaler")
               for c in calls if keyword(c, "enabled") is None or constant(keyword(c, "enabled")) is True]
    if not scalers:
        return
    kinds = {autocast_kind(ctx, c) for c in ctx.method_calls("autocast")} - {"off"}
    if "bf16" not in kinds or not kinds <= {"bf16", "fp32"} or _FP16_MENTION.search(ctx.source):
        return
    for call in scalers:
        yield ctx.finding(rule_, call, "GradScaler next to bf16-only autocast: bf16 has fp32's exponent range and "
                          "needs no loss scaling; drop the scaler (plain `loss.backward()`, `optimizer.step()`)")


def _fp16_casts(ctx: FileContext) -> list[ast.Call]:
    casts = [c for c in ctx.method_calls("half") if isinstance(c.func, ast.Attribute) and not c.args]
    for call in ctx.method_calls("to"):
        dtypes = [*call.args, *(k.value for k in call.keywords if k.arg == "dtype")]
        if any(_dtype_kind(ctx, a) == "fp16" for a in dtypes):
            casts.append(call)
    return casts


def _cast_subject(ctx: FileContext, call: ast.Call) -> str | None:
    """``model`` in ``model.half()`` and in ``model = Net().to(device).half()``."""
    receiver = ctx.dotted(call.func.value, resolve=False)  # type: ignore[attr-defined]
    if receiver:
        return receiver
    top: ast.AST = call
    while isinstance(ctx.parent(top), (ast.Attribute, ast.Call)):
        top = ctx.parent(top)  # type: ignore[assignment]
    stmt = ctx.parent(top)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        return ctx.dotted(stmt.targets[0], resolve=False)
    return None


def _master_weights(ctx: FileContext) -> bool:
    """fp32 copies of the weights: ``torch.float32`` anywhere, or ``.float()`` on parameters."""
    if _MASTER_FP32.search(ctx.source):
        return True
    for call in ctx.method_calls("float"):
        stmt = next((a for a in ctx.ancestors(call) if isinstance(a, ast.stmt)), None)
        if stmt is not None and "param" in ctx.segment(stmt):
            return True
    return False


@rule(
    "PRC003", "pure-fp16-training", "precision",
    what="The model is cast to float16 (`.half()`, `.to(torch.float16)`) and an optimizer trains it, with no "
         "autocast, no GradScaler and no fp32 master weights.",
    why="With fp16 weights the update `w - lr * g` is rounded to fp16: fp16 has 10 mantissa bits, so an update "
        "smaller than ~1/2048 of the weight is lost entirely and training stalls; gradients also underflow "
        "without loss scaling. Mixed precision keeps fp32 weights and runs only the math in fp16.",
    bad="model = Net().cuda().half()\noptimizer = torch.optim.AdamW(model.parameters())\n"
        "loss = loss_fn(model(x.half()), y)\nloss.backward()\noptimizer.step()",
    fix='model = Net().cuda()                        # fp32 master weights\n'
        'optimizer = torch.optim.AdamW(model.parameters())\n'
        'with torch.autocast("cuda", dtype=torch.bfloat16):\n    loss = loss_fn(model(x), y)\n'
        'loss.backward()\noptimizer.step()',
)
def pure_fp16_training(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.is_trainer:
        return
    casts = _fp16_casts(ctx)
    if not casts or ctx.method_calls("autocast") or _scaled(ctx) or _master_weights(ctx):
        return
    models = {m for _, modules in optimized_modules(ctx) for m in modules}
    for call in casts:
        subject = _cast_subject(ctx, call)
        if subject in models and not after_training(ctx, call):
            yield ctx.finding(rule_, call, f"`{subject}` is cast to fp16 and trained without fp32 master weights: "
                              "small updates round away; keep the model fp32 and use "
                              "`torch.autocast(\"cuda\", dtype=torch.bfloat16)` (or fp16 autocast + GradScaler)")


def _is_autocast_manager(ctx: FileContext, expr: ast.expr) -> bool:
    value = ctx.resolve(expr) if isinstance(expr, (ast.Name, ast.Attribute)) else expr
    options = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]  # nullcontext() if cpu else ...
    return any(isinstance(o, ast.Call) and (ctx.call_name(o) or "").rsplit(".", 1)[-1] == "autocast"
               and autocast_kind(ctx, o) != "off" for o in options)


def _autocast_block(ctx: FileContext, node: ast.AST) -> ast.With | ast.AsyncWith | None:
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, _SCOPES):
            return None
        if isinstance(ancestor, (ast.With, ast.AsyncWith)) and any(
                _is_autocast_manager(ctx, item.context_expr) for item in ancestor.items):
            return ancestor
    return None


@rule(
    "PRC004", "backward-inside-autocast", "precision",
    what="`.backward()` is called inside a `with autocast(...)` block.",
    why="PyTorch's AMP docs: autocast should wrap only the forward pass and the loss computation; backward "
        "passes under autocast are not recommended. Backward ops already run in the dtype autocast chose for "
        "the matching forward ops, so the wider block gains nothing, and the matmuls of whatever else runs in "
        "it (a gradient penalty, `create_graph=True` double backward, custom backward code) are cast to low "
        "precision without anyone having chosen that.",
    bad='with torch.autocast("cuda", dtype=torch.bfloat16):\n    loss = loss_fn(model(x), y)\n    loss.backward()',
    fix='with torch.autocast("cuda", dtype=torch.bfloat16):\n    loss = loss_fn(model(x), y)\nloss.backward()',
)
def backward_in_autocast(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not ctx.method_calls("autocast"):
        return
    for call in ctx.method_calls("backward"):
        block = _autocast_block(ctx, call)
        if block is not None:
            yield ctx.finding(rule_, call, f"`.backward()` runs inside the autocast block of line {block.lineno}: "
                              "dedent it so only the forward pass and the loss are autocast")


def _has_optimizer(ctx: FileContext) -> bool:
    """An optimizer is built here, or stepped under an optimizer-like name: the file really trains weights."""
    if optimized_modules(ctx):
        return True
    return any(isinstance(c.func, ast.Attribute) and "opt" in (ctx.dotted(c.func.value, resolve=False) or "").lower()
               for c in ctx.method_calls("step"))


def _conv_only(ctx: FileContext) -> bool:
    """The file's own networks are convolutions only (DCGAN-style): TF32 is already on for them."""
    if not _CONV.search(ctx.source) or _MATMUL.search(ctx.source):
        return False
    return not any(isinstance(b.op, ast.MatMult) for b in ctx.binops)


def _tf32_set(ctx: FileContext) -> bool:
    """``allow_tf32 = ...`` / ``fp32_precision = ...`` / ``set_float32_matmul_precision(...)``: the choice was made."""
    if any(name.endswith(("allow_tf32", "fp32_precision")) for name in ctx.assignments):
        return True
    return bool(ctx.calls_to("torch.set_float32_matmul_precision"))


@rule(
    "PRC005", "fp32-cuda-training-without-tf32", "precision",
    what="A CUDA training file that runs its matmuls in full fp32: no autocast, no low-precision dtype and TF32 "
         "never enabled.",
    why="Since PyTorch 1.12 fp32 matmuls do not use TF32 by default. On Ampere and newer GPUs that leaves the "
        "tensor cores idle: an A100 does 19.5 TFLOP/s in fp32 against 156 in TF32 (H100 SXM: 67 against ~495), "
        "so matmul-bound training runs several times slower for precision that training does not need. "
        "Quiet when autocast or a bf16/fp16 dtype is used (the matmuls are not fp32 then), when the file "
        "sets `allow_tf32` / `set_float32_matmul_precision` either way, and for visibly convolution-only "
        "networks (cuDNN convolutions already default to TF32 through `torch.backends.cudnn.allow_tf32`).",
    bad='device = "cuda"\nmodel = Net().to(device)\nfor x, y in loader:\n'
        '    loss = loss_fn(model(x.to(device)), y.to(device))\n    loss.backward()',
    fix='torch.backends.cuda.matmul.allow_tf32 = True      # or torch.set_float32_matmul_precision("high")\n'
        'torch.backends.cudnn.allow_tf32 = True\n'
        '# or: with torch.autocast("cuda", dtype=torch.bfloat16): ...',
)
def fp32_without_tf32(rule_: Rule, ctx: FileContext) -> Iterator[Finding]:
    if not (ctx.is_trainer and ctx.uses_cuda and _has_optimizer(ctx)):
        return
    if ctx.method_calls("autocast") or ctx.method_calls("half") or ctx.method_calls("bfloat16") or _tf32_set(ctx) \
            or _LOW_PRECISION.search(ctx.source) or _conv_only(ctx):
        return
    yield ctx.file_finding(rule_, "CUDA training in full fp32 with TF32 off: Ampere+ tensor cores sit idle; set "
                           "`torch.backends.cuda.matmul.allow_tf32 = True` (or "
                           "`torch.set_float32_matmul_precision(\"high\")`), or train under bf16 autocast")
