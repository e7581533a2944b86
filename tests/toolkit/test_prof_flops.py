"""flops: exact MLP counts (fwd, bwd 2x / 1x), and uncounted-op detection."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from pytest_spml.toolkit.profiling.flops import count_flops, is_heavy_op_name, linear_flops_note  # noqa: E402

B, IN, HID, OUT = 8, 16, 32, 4


def _mlp() -> "nn.Module":
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT))


def test_mlp_forward_is_two_b_in_out_per_linear() -> None:
    model, x = _mlp(), torch.randn(B, IN)
    with torch.no_grad():
        fc = count_flops(model, x)
    assert fc.total == 2 * B * IN * HID + 2 * B * HID * OUT
    assert fc.by_op == {"aten.addmm": fc.total}
    assert fc.uncounted == [] and fc.complete


def test_mlp_backward_is_two_x_forward_when_input_needs_grad() -> None:
    model = _mlp()
    x = torch.randn(B, IN, requires_grad=True)
    fwd = 2 * B * IN * HID + 2 * B * HID * OUT
    fc = count_flops(lambda: model(x).sum().backward())
    assert fc.total == fwd + 2 * fwd  # fwd + bwd, bwd = 2x fwd
    assert fc.complete


def test_first_linear_without_input_grad_costs_one_x_in_backward() -> None:
    model, x = _mlp(), torch.randn(B, IN)  # raw data: no input grad
    l1, l2 = 2 * B * IN * HID, 2 * B * HID * OUT
    fc = count_flops(lambda: model(x).sum().backward())
    # layer 1: fwd + grad-weight only (2x, not 3x); layer 2: fwd + grad-input + grad-weight (3x)
    assert fc.total == 2 * l1 + 3 * l2
    assert fc.by_op["aten.mm"] == l1 + 2 * l2


def test_kwargs_are_passed() -> None:
    fc = count_flops(lambda a, *, b: a @ b, torch.randn(3, 5), b=torch.randn(5, 7))
    assert fc.total == 2 * 3 * 5 * 7


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_cpu_sdpa_is_flagged_uncounted() -> None:
    model, x = Attn(), torch.randn(2, 10, 16)
    fc = count_flops(lambda: model(x).sum().backward())
    assert not fc.complete
    assert fc.total > 0  # the projection is counted, attention is not
    assert any("attention" in op for op in fc.uncounted_ops), fc.op_calls
    assert any("attention FLOPs are missing" in r for r in fc.uncounted)
    assert all(not k.startswith("aten.") or "attention" not in k for k in fc.by_op)


@torch.library.custom_op("spmltest::fused_matmul", mutates_args=(), schema="(Tensor a, Tensor b) -> Tensor")
def fused_matmul(a, b):  # type: ignore[no-untyped-def]
    """A stand-in for flash_attn:: / transformer_engine:: kernels."""
    return a @ b


def test_custom_namespace_op_is_flagged() -> None:
    fc = count_flops(fused_matmul, torch.randn(4, 4), torch.randn(4, 4))
    assert "spmltest::fused_matmul" in fc.uncounted_ops
    assert any("custom op" in r for r in fc.uncounted)


def test_elementwise_ops_are_not_flagged() -> None:
    x = torch.randn(64)
    fc = count_flops(lambda: (x.exp() * 2 + 1).relu().sum())
    assert fc.total == 0 and fc.complete


@pytest.mark.parametrize(
    ("name", "heavy"),
    [
        ("_scaled_dot_product_flash_attention_for_cpu", True),
        ("_addmm_activation", True),
        ("_int_mm", True),
        ("mkldnn_convolution", True),
        ("linear", True),
        ("relu", False),
        ("add", False),
        ("sum", False),
        ("native_layer_norm", False),
    ],
)
def test_heavy_name_heuristic(name: str, heavy: bool) -> None:
    assert is_heavy_op_name(name) is heavy


def test_linear_flops_note_documents_the_conventions() -> None:
    note = linear_flops_note()
    assert "not halved" in note.lower() or "NOT halved" in note
    assert "2x forward, not 3x" in note
