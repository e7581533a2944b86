"""Advisory rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import findings, lines


def test_adv001_torch_load_without_weights_only() -> None:
    assert lines('import torch\nstate = torch.load("ckpt.pt")\n', "ADV001") == [2]
    assert lines('from torch import load\nstate = load("ckpt.pt", weights_only=False)\n', "ADV001") == [2]
    (finding,) = findings('import torch\nstate = torch.load("ckpt.pt")\n', "ADV001")
    assert finding.severity == "advisory" and finding.category == "advisory"


def test_adv001_quiet_with_weights_only() -> None:
    assert lines('import torch\nstate = torch.load("ckpt.pt", map_location="cpu", weights_only=True)\n',
                 "ADV001") == []
