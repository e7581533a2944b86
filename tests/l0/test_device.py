"""Device rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import lines


def test_dev001_cuda_call_next_to_a_device_variable() -> None:
    bad = """
        import torch
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = Net().to(device)
        for x, y in loader:
            x = x.cuda()
            loss = model(x).sum()
            loss.backward()
    """
    assert lines(bad, "DEV001") == [6]


def test_dev001_two_hard_coded_indices() -> None:
    bad = """
        model.to("cuda:0")
        batch = batch.to("cuda:1")
    """
    assert lines(bad, "DEV001") == [2, 3]


def test_dev001_quiet_with_one_device_variable() -> None:
    good = """
        import torch
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = Net().to(device)
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            loss = model(x).sum()
            loss.backward()
    """
    assert lines(good, "DEV001") == []
