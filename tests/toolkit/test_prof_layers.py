"""layers: per-module forward/backward time on the CPU, and the event path with fakes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_spml.toolkit.profiling.layers import LayerTime, layer_timing  # noqa: E402


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 64)
        self.block = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.LayerNorm(64))
        self.head = nn.Linear(64, 2)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.head(self.block(self.embed(x)))


def test_every_leaf_module_reported_with_nonnegative_times() -> None:
    model = Tiny()
    times = layer_timing(model, torch.randn(16, 8), steps=2)
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    assert {t.name for t in times} == leaves == {"embed", "block.0", "block.1", "block.2", "head"}
    for t in times:
        assert isinstance(t, LayerTime)
        assert t.forward_s >= 0 and t.backward_s >= 0 and t.total_s == t.forward_s + t.backward_s
        assert t.calls == 1
    totals = [t.total_s for t in times]
    assert totals == sorted(totals, reverse=True)
    assert any(t.backward_s > 0 for t in times)
    # the first layer's input needs no grad: its weight-grad work is still captured
    assert next(t for t in times if t.name == "embed").backward_s > 0


def test_hooks_removed_and_grads_cleared() -> None:
    model = Tiny()
    layer_timing(model, torch.randn(4, 8), steps=1)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())
    out = model(torch.randn(2, 8))  # still usable
    assert out.shape == (2, 2)


def test_loss_fn_tuple_inputs_and_containers() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
            return self.a(x) + self.b(y)

    model = TwoIn()
    target = torch.randn(3, 4)
    times = layer_timing(
        model, (torch.randn(3, 4), torch.randn(3, 4)), loss_fn=lambda out: ((out - target) ** 2).mean(),
        steps=1, leaf_only=False,
    )
    assert {t.name for t in times} == {"(model)", "a", "b"}


def test_repeated_module_counts_calls() -> None:
    shared = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = shared

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            return self.lin(self.lin(x))

    times = layer_timing(Twice(), torch.randn(2, 4), steps=2)
    assert times[0].name == "lin" and times[0].calls == 2


def test_output_without_grad_needs_loss_fn() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="loss_fn"):
        layer_timing(model, torch.randn(1, 2), steps=1)


def test_event_clock_path_with_fake_events() -> None:
    class Ev:
        syncs = 0
        ticks = 0

        def __init__(self) -> None:
            self.t = 0

        def record(self) -> None:
            Ev.ticks += 1
            self.t = Ev.ticks

        def synchronize(self) -> None:
            Ev.syncs += 1

        def elapsed_time(self, end: "Ev") -> float:
            return float(end.t - self.t)  # one "ms" per recorded event

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    times = layer_timing(model, torch.randn(2, 3), steps=2, warmup=1, device="cuda", event_factory=Ev)
    assert Ev.syncs == 3  # one per step (1 warm-up + 2 timed), never per hook
    assert all(t.forward_s > 0 and t.backward_s > 0 for t in times)


def test_steps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        layer_timing(nn.Linear(1, 1), torch.randn(1, 1), steps=0)
