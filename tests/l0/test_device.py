"""Device rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import findings, lines


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


def test_dev001_quiet_on_the_device_variable_definition() -> None:
    good = """
        import torch
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        model = Net().to(device)
    """
    assert lines(good, "DEV001") == []


# ---------------------------------------------------------------------------- DEV002

def test_dev002_forward_factory_without_device() -> None:
    bad = """
        import torch
        from torch import nn

        class Decoder(nn.Module):
            def forward(self, x):
                b, t = x.shape
                pos = torch.arange(t, device=x.device)
                causal = torch.ones(t, t).tril()
                return self.block(self.emb(x) + self.pos(pos), causal)
    """
    (finding,) = findings(bad, "DEV002")
    assert finding.line == 9 and "`device=x.device`" in finding.message and "`forward`" in finding.message


def test_dev002_training_loop_factory_without_device() -> None:
    bad = """
        import torch
        device = torch.device("cuda")
        model = Net().to(device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            weights = torch.tensor([1.0, 2.0, 0.5])
            mask = torch.ones(x.size(0), x.size(1))
            loss = loss_fn(model(x, mask), y, weight=weights)
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "DEV002") == [7, 8]


def test_dev002_quiet_on_the_idioms() -> None:
    good = """
        import torch
        from torch import nn
        device = torch.device("cuda")

        class Decoder(nn.Module):
            def forward(self, x):
                pos = torch.arange(x.size(1), device=x.device)
                noise = torch.randn_like(x)
                zeros = torch.zeros_like(x)
                scale = torch.tensor(0.5)                      # 0-d: mixes with CUDA tensors like a number
                bias = torch.zeros(x.size(-1)).to(x.device)    # moved right away
                col = torch.arange(x.size(1)).unsqueeze(0).type_as(x)
                if self.training and torch.rand(1) < self.layerdrop:   # a host-side coin flip
                    return x
                keep = torch.rand([])                               # 0-d
                return self.out(x + noise * scale + bias + zeros + col) * keep

        model = Decoder().to(device)
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            lengths = torch.tensor([len(s) for s in y])
            lengths = lengths.to(device)                       # moved later in the loop
            counts = torch.ones(x.size(0)) * 2 + 1
            counts = counts.cuda()
            loss = model(x).sum() * torch.tensor(loss_weight)
            loss.backward()
            optimizer.step()
            print(torch.tensor([1.0, 2.0]).mean())
            history = torch.tensor([3.0, 4.0]).tolist()
    """
    assert lines(good, "DEV002") == []


def test_dev002_quiet_in_cpu_only_files() -> None:
    cpu_script = """
        import torch
        model = Net()
        for x, y in loader:
            mask = torch.ones(x.size(0), x.size(1))
            loss = loss_fn(model(x, mask), y)
            loss.backward()
            optimizer.step()
    """
    assert lines(cpu_script, "DEV002") == []


def test_dev002_quiet_for_cpu_indices_into_cpu_data() -> None:
    good = """
        import torch
        device = "cuda"
        data = torch.from_numpy(tokens)
        while step < max_steps:
            ix = torch.randint(len(data) - block_size, (batch_size,))
            x = torch.stack([data[i:i + block_size] for i in ix]).to(device)
            loss = model(x).mean()
            loss.backward()
            optimizer.step()
    """
    assert lines(good, "DEV002") == []


def test_dev002_cpu_index_into_a_gpu_batch() -> None:
    bad = """
        import torch
        for images, target in loader:
            images, target = images.to(device), target.to(device)
            index = torch.randperm(images.size(0))
            mixed = lam * images + (1 - lam) * images[index]
            loss = lam * criterion(model(mixed), target) + (1 - lam) * criterion(model(mixed), target[index])
            loss.backward()
            optimizer.step()
            shuffled = images[torch.randperm(images.size(0))]
            pool = pool[torch.randperm(len(pool))]          # host-side data: fine
    """
    assert lines(bad, "DEV002") == [5, 10]


def test_dev002_quiet_for_a_cpu_loop_in_a_cuda_file() -> None:
    good = """
        import torch

        def test_cpu_training():
            model = nn.Linear(4, 1)
            for _ in range(3):
                model(torch.rand(8, 4)).sum().backward()

        def test_gpu_copy():
            assert torch.ones(2).cuda().is_cuda
    """
    assert lines(good, "DEV002") == []


# ---------------------------------------------------------------------------- DEV003

def test_dev003_model_and_batches_on_different_literals() -> None:
    bad = """
        model = Net().to("cuda:0")
        optimizer = torch.optim.AdamW(model.parameters())
        for x, y in loader:
            x, y = x.to("cuda:1"), y.to("cuda:1")
            loss = loss_fn(model(x), y)
            loss.backward()
    """
    assert lines(bad, "DEV003") == [5, 5]


def test_dev003_cuda_model_cpu_batch() -> None:
    bad = """
        import torch
        model = Net()
        model.cuda()
        for batch in loader:
            batch = {k: v.to("cpu") for k, v in batch.items()}
            loss = model(batch["x"]).sum()
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "DEV003") == [6]


def test_dev003_two_device_variables() -> None:
    bad = """
        import torch
        device_a = torch.device("cuda", 0)
        device_b = torch.device("cuda:1")
        model = Net().to(device_a)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            x = x.to(device_b)
            loss = loss_fn(model(x), y)
            loss.backward()
    """
    (finding,) = findings(bad, "DEV003")
    assert finding.line == 8 and '"cuda:1"' in finding.message and '"cuda:0"' in finding.message


def test_dev003_model_placed_before_set_device() -> None:
    bad = """
        import torch

        def main():
            local_rank = int(os.environ["LOCAL_RANK"])
            model = Net().cuda()
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            optimizer = torch.optim.AdamW(model.parameters())
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    found = findings(bad, "DEV003")
    assert [f.line for f in found] == [11, 11] and "set_device" in found[0].message
    fixed = bad.replace("            model = Net().cuda()\n", "").replace(
        "            optimizer =", "            model = Net().to(device)\n            optimizer =")
    assert lines(fixed, "DEV003") == []


def test_dev003_quiet_on_one_device_and_near_misses() -> None:
    good = """
        import torch
        device = torch.device("cuda:0")
        model = Net().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            x, y = x.to(device), y.to("cuda")               # "cuda" is the current device: no conflict
            loss = loss_fn(model(x), y)
            loss.backward()
            correct = (model(x).argmax(1).cpu() == y.to("cpu")).sum()   # metrics on the host
        model.to("cpu")                                      # after training: export
        torch.save(model.state_dict(), "model.pt")
    """
    assert lines(good, "DEV003") == []


def test_dev003_quiet_for_model_parallel() -> None:
    good = """
        encoder.to("cuda:0")
        decoder.to("cuda:1")
        opt = torch.optim.AdamW([*encoder.parameters(), *decoder.parameters()])
        for x, y in loader:
            x, y = x.to("cuda:0"), y.to("cuda:1")
            loss = loss_fn(decoder(encoder(x).to("cuda:1")), y)
            loss.backward()
    """
    assert lines(good, "DEV003") == []


# ---------------------------------------------------------------------------- DEV004

def test_dev004_optimizer_built_before_the_move() -> None:
    bad = """
        import torch
        model = Net()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        model.to(device)
    """
    (finding,) = findings(bad, "DEV004")
    assert finding.line == 4 and "`model.to(device)` (line 5)" in finding.message


def test_dev004_param_groups_and_self_attributes() -> None:
    bad = """
        from torch.optim import AdamW

        class Trainer:
            def __init__(self, model):
                self.model = model
                decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
                rest = [p for n, p in self.model.named_parameters() if p.ndim < 2]
                self.optimizer = AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest}])
                self.model.cuda()
    """
    assert lines(bad, "DEV004") == [9]


def test_dev004_quiet_when_moved_first() -> None:
    good = """
        import torch
        model = Net().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    """
    assert lines(good, "DEV004") == []


def test_dev004_quiet_near_misses() -> None:
    good = """
        import torch

        def train(model):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            model.to(torch.float64)                          # a dtype, not a device
            for x, y in loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
            model.to("cpu")                                  # after training: export

        def rebuild(model):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            model.cuda()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)   # rebuilt after the move
            return optimizer
    """
    assert lines(good, "DEV004") == []
