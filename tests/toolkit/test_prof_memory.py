"""memory: params/grads/optimizer-state bytes; CUDA fields None on CPU, computed with a fake cuda."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_spml.toolkit.profiling.memory import memory_stats, peak_rss_bytes, tensor_bytes  # noqa: E402


def _model() -> "torch.nn.Module":
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))


def test_adamw_after_one_step_on_cpu() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    n_params = sum(p.numel() for p in model.parameters())
    stats = memory_stats(model, opt, "cpu")
    assert stats.param_bytes == n_params * 4
    assert stats.grad_bytes == n_params * 4
    step_bytes = sum(s["step"].numel() * s["step"].element_size() for s in opt.state.values())
    # exp_avg + exp_avg_sq = 2x params, plus one scalar step tensor per parameter
    assert stats.optimizer_state_bytes - step_bytes == 2 * stats.param_bytes
    assert stats.static_bytes == stats.param_bytes + stats.grad_bytes + stats.optimizer_state_bytes
    assert stats.peak_allocated_bytes is None and stats.peak_reserved_bytes is None
    assert stats.fragmentation is None
    assert stats.device_reason and "not CUDA" in stats.device_reason
    assert stats.peak_rss_bytes and stats.peak_rss_bytes > 1 << 20


def test_before_any_step_there_is_no_grad_or_state() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    stats = memory_stats(model, opt)  # device inferred from parameters
    assert stats.grad_bytes == 0 and stats.optimizer_state_bytes == 0
    assert stats.device_reason


def test_tied_weights_counted_once() -> None:
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleList([emb, head])
    assert memory_stats(model).param_bytes == 10 * 4 * 4


def test_bf16_params_use_element_size() -> None:
    model = torch.nn.Linear(8, 8, bias=False).to(torch.bfloat16)
    assert memory_stats(model).param_bytes == 64 * 2


class FakeCuda:
    def __init__(self, alloc: int, reserved: int) -> None:
        self.alloc, self.reserved = alloc, reserved

    def max_memory_allocated(self, device: object) -> int:
        return 900

    def max_memory_reserved(self, device: object) -> int:
        return 1200

    def memory_allocated(self, device: object) -> int:
        return self.alloc

    def memory_reserved(self, device: object) -> int:
        return self.reserved


def test_cuda_path_with_fake_allocator() -> None:
    stats = memory_stats(_model(), None, "cuda:0", cuda=FakeCuda(alloc=600, reserved=800))
    assert stats.peak_allocated_bytes == 900 and stats.peak_reserved_bytes == 1200
    assert stats.fragmentation == pytest.approx(0.25)
    assert stats.device_reason is None


def test_cuda_path_with_empty_allocator() -> None:
    stats = memory_stats(_model(), None, "cuda", cuda=FakeCuda(alloc=0, reserved=0))
    assert stats.fragmentation is None and "fragmentation" in (stats.device_reason or "")


def test_cuda_without_cuda_is_none_with_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    stats = memory_stats(_model(), None, "cuda")
    assert stats.peak_allocated_bytes is None and "is_available" in (stats.device_reason or "")


def test_tensor_bytes_nested_and_deduplicated() -> None:
    t = torch.zeros(5)
    assert tensor_bytes({"a": t, "b": [t, torch.zeros(2, dtype=torch.float64)], "c": 3}) == 20 + 16


def test_peak_rss() -> None:
    value, reason = peak_rss_bytes()
    assert (value is not None and value > 0) or reason
