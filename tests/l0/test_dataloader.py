"""Dataloader rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from pathlib import Path

from l0helpers import findings, lines

from pytest_spml.l0.registry import load_rules

DAT = ("DAT001", "DAT002", "DAT003", "DAT004", "DAT005", "DAT006")

# A CUDA trainer with an idiomatic input pipeline: nothing here should fire.
CLEAN = """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    device = torch.device("cuda")
    train_sampler = DistributedSampler(train_ds)
    train_loader = DataLoader(train_ds, batch_size=64, sampler=train_sampler, num_workers=8,
                              pin_memory=True, persistent_workers=True, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=256, shuffle=False, num_workers=4,
                            pin_memory=True, persistent_workers=True)
    for epoch in range(args.epochs):
        train_sampler.set_epoch(epoch)
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
"""


def test_clean_pipeline_is_quiet() -> None:
    assert [f.rule for f in findings(CLEAN) if f.rule.startswith("DAT")] == []


def test_project_example_is_quiet() -> None:
    # In-memory TensorDataset, num_workers=0 on purpose, pin_memory computed from the device.
    source = (Path(__file__).parents[2] / "examples" / "mnist-mlp" / "train.py").read_text()
    assert [f.rule for f in findings(source) if f.rule.startswith("DAT")] == []


def test_every_rule_is_registered_with_its_doc() -> None:
    rules = load_rules()
    for rule_id in DAT:
        rule = rules[rule_id]
        assert rule.category == "dataloader" and rule.default_severity == "error"
        assert rule.doc.what and rule.doc.why and rule.doc.bad and rule.doc.fix


# ---------------------------------------------------------------- DAT001

def test_dat001_no_workers_in_a_cuda_trainer() -> None:
    bad = """
        import torch
        from torch.utils.data import DataLoader
        train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, pin_memory=True)
        loader2 = DataLoader(train_ds, batch_size=64, shuffle=True, num_workers=0, pin_memory=True)
        model = Net().cuda()
        for x, y in train_loader:
            loss = model(x.cuda(), y.cuda())
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "DAT001") == [4, 5]
    (first, second) = findings(bad, "DAT001")
    assert "no `num_workers`" in first.message and "`num_workers=0`" in second.message
    assert first.severity == "error" and first.category == "dataloader"


def test_dat001_quiet_with_workers_for_eval_loaders_and_off_cuda() -> None:
    good = """
        import torch
        from torch.utils.data import DataLoader
        train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, num_workers=args.workers,
                                  pin_memory=True, persistent_workers=True)
        val_loader = DataLoader(val_ds, batch_size=256, shuffle=False, pin_memory=True)
        testloader = DataLoader(testset, batch_size=256, pin_memory=True)
        model = Net().cuda()
        for x, y in train_loader:
            loss = model(x.cuda(), y.cuda())
            loss.backward()
            optimizer.step()
    """
    assert lines(good, "DAT001") == []
    cpu_only = """
        from torch.utils.data import DataLoader
        train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)
        for x, y in train_loader:
            loss = model(x, y)
            loss.backward()
            optimizer.step()
    """
    assert lines(cpu_only, "DAT001") == []


def test_dat001_near_misses_in_memory_and_hidden_kwargs() -> None:
    # TensorDataset batches are slices of tensors already in memory: workers only add IPC.
    # `**loader_kwargs` built elsewhere: we cannot see num_workers, so we do not guess.
    near = """
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, pin_memory=True)
        other = DataLoader(train_ds, batch_size=64, shuffle=True, **loader_kwargs)
        for xb, yb in loader:
            loss = model(xb.cuda(), yb.cuda())
            loss.backward()
            optimizer.step()
    """
    assert lines(near, "DAT001") == []


def test_dat001_sees_through_a_visible_kwargs_dict() -> None:
    bad = """
        import torch
        from torch.utils.data import DataLoader
        kwargs = {"num_workers": 0, "pin_memory": True}
        train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, **kwargs)
        for x, y in train_loader:
            loss = model(x.cuda(), y.cuda())
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "DAT001") == [5]


# ---------------------------------------------------------------- DAT002

def test_dat002_unpinned_loader_in_a_cuda_trainer() -> None:
    bad = """
        import torch
        from torch.utils.data import DataLoader
        device = "cuda"
        train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, num_workers=4, persistent_workers=True)
        val_loader = DataLoader(val_ds, batch_size=64, num_workers=4, persistent_workers=True, pin_memory=False)
        for x, y in train_loader:
            x = x.to(device, non_blocking=True)
            loss = model(x, y.to(device))
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "DAT002") == [5, 6]


def test_dat002_quiet_when_pinned_or_computed_or_already_on_gpu() -> None:
    good = """
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        a = DataLoader(train_ds, batch_size=64, shuffle=True, num_workers=4, pin_memory=True)
        b = DataLoader(train_ds, batch_size=64, shuffle=True, pin_memory=device.type == "cuda")
        gpu_ds = TensorDataset(x.to(device), y.to(device))  # pinning a CUDA tensor raises
        c = DataLoader(gpu_ds, batch_size=64, shuffle=True)
        for xb, yb in a:
            loss = model(xb.to(device), yb.to(device))
            loss.backward()
            optimizer.step()
    """
    assert lines(good, "DAT002") == []


# ---------------------------------------------------------------- DAT003

def test_dat003_workers_without_persistent_workers() -> None:
    bad = """
        from torch.utils.data import DataLoader
        NUM_WORKERS = 8
        a = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8, pin_memory=True)
        b = DataLoader(ds, batch_size=64, shuffle=True, num_workers=NUM_WORKERS, persistent_workers=False)
        c = DataLoader(ds, batch_size=64, shuffle=True, num_workers=args.workers)
    """
    assert lines(bad, "DAT003") == [4, 5, 6]
    a, _, c = findings(bad, "DAT003")
    assert "`num_workers=8`" in a.message and a.message.endswith("pass `persistent_workers=True`")
    # A setting may be 0, where `persistent_workers=True` raises: the fix says so.
    assert c.message.endswith("pass `persistent_workers=args.workers > 0`")


def test_dat003_quiet_without_workers_or_when_persistent() -> None:
    good = """
        from torch.utils.data import DataLoader
        workers = 0
        a = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8, persistent_workers=True)
        b = DataLoader(ds, batch_size=64, shuffle=True, num_workers=0)
        c = DataLoader(ds, batch_size=64, shuffle=True)
        d = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
        e = DataLoader(ds, batch_size=64, num_workers=args.workers, persistent_workers=args.workers > 0)
        f = DataLoader(ds, batch_size=64, num_workers=4, **loader_kwargs)  # may well set it
    """
    assert lines(good, "DAT003") == []


# ---------------------------------------------------------------- DAT004

def test_dat004_shuffled_validation_and_test_loaders() -> None:
    bad = """
        import torchvision
        from torch.utils.data import DataLoader
        val_loader = DataLoader(val_ds, batch_size=256, shuffle=True)
        loaders = {"test": DataLoader(ds, batch_size=256, shuffle=True)}
        loader = DataLoader(torchvision.datasets.MNIST("data", train=False), batch_size=256, shuffle=True)
        evalLoader = DataLoader(eval_set, batch_size=256, shuffle=True)
        held = DataLoader(datasets["validation"], batch_size=256, shuffle=True)
    """
    assert lines(bad, "DAT004") == [4, 5, 6, 7, 8]


def test_dat004_quiet_on_training_and_unshuffled_eval_loaders() -> None:
    good = """
        from torch.utils.data import DataLoader
        train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)
        val_loader = DataLoader(val_ds, batch_size=256, shuffle=False)
        interval_loader = DataLoader(interval_ds, batch_size=64, shuffle=True)  # "interval" is not "val"
        latest = DataLoader(ds, batch_size=64, shuffle=True)  # nor is "latest" a test set
        loader = DataLoader(val_ds, batch_size=64, shuffle=args.shuffle_val)
        train_val = DataLoader(train_val_ds, batch_size=64, shuffle=True)  # train+val merged for a final fit
    """
    assert lines(good, "DAT004") == []


# ---------------------------------------------------------------- DAT005

def test_dat005_training_loader_without_shuffle() -> None:
    bad = """
        from torch.utils.data import DataLoader
        from tqdm import tqdm
        train_loader = DataLoader(train_ds, batch_size=64, num_workers=4)
        for epoch in range(10):
            for step, (x, y) in enumerate(tqdm(train_loader)):
                loss = model(x, y)
                loss.backward()
                optimizer.step()
    """
    assert lines(bad, "DAT005") == [4]
    assert "line 6" in findings(bad, "DAT005")[0].message


def test_dat005_follows_helpers_parameters_and_iter_next() -> None:
    bad = """
        from torch.utils.data import DataLoader

        def make_loader(ds):
            return DataLoader(ds, batch_size=64, shuffle=False)

        def train_one_epoch(model, loader, optimizer):
            for x, y in loader:
                model(x, y).backward()
                optimizer.step()

        train_loader = make_loader(train_ds)
        for epoch in range(10):
            train_one_epoch(model, train_loader, optimizer)

        stream = DataLoader(other_ds, batch_size=64)
        it = iter(stream)
        step = 0
        while step < max_steps:
            x, y = next(it)
            model(x, y).backward()
            optimizer.step()
            step += 1
    """
    assert lines(bad, "DAT005") == [5, 16]


def test_dat005_follows_a_tuple_returned_by_a_builder() -> None:
    bad = """
        from torch.utils.data import DataLoader

        def build_loaders(cfg):
            train_loader = DataLoader(train_ds, batch_size=cfg.bs, num_workers=cfg.workers)
            val_loader = DataLoader(val_ds, batch_size=cfg.bs, num_workers=cfg.workers)
            return train_loader, val_loader

        class Trainer:
            def fit(self, cfg):
                train_loader, val_loader = build_loaders(cfg)
                for epoch in range(cfg.epochs):
                    for x, y in train_loader:
                        self.model(x, y).backward()
                        self.optimizer.step()
    """
    assert lines(bad, "DAT005") == [5]


def test_dat005_quiet_with_shuffle_sampler_or_iterable_dataset() -> None:
    good = """
        from torch.utils.data import DataLoader, IterableDataset, RandomSampler

        class TokenStream(IterableDataset):
            def __iter__(self):
                yield from read_shards()

        a = DataLoader(train_ds, batch_size=64, shuffle=True)
        b = DataLoader(train_ds, batch_size=64, sampler=RandomSampler(train_ds))
        c = DataLoader(TokenStream(), batch_size=64)
        d = DataLoader(train_ds, batch_sampler=bucket_sampler)
        e = DataLoader(train_ds, batch_size=64, shuffle=sampler is None, sampler=sampler)
        eval_loader = DataLoader(val_ds, batch_size=64)  # iterated below, but not trained on

        def fit(loader):
            for x, y in loader:
                model(x, y).backward()
                optimizer.step()

        for loader in (a, b, c, d, e):
            fit(loader)
        fit(b)
        fit(c)
        fit(d)
        fit(e)
        for x, y in a:
            model(x, y).backward()
            optimizer.step()
        for x, y in eval_loader:
            with torch.no_grad():
                metric.update(model(x), y)
    """
    assert lines(good, "DAT005") == []


# ---------------------------------------------------------------- DAT006

def test_dat006_distributed_sampler_without_set_epoch() -> None:
    bad = """
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train_ds)
        val_sampler = DistributedSampler(val_ds, shuffle=False)
        loader = DataLoader(train_ds, batch_size=64, sampler=sampler)
        for epoch in range(10):
            for x, y in loader:
                model(x, y).backward()
                optimizer.step()
    """
    assert lines(bad, "DAT006") == [4]


def test_dat006_quiet_with_set_epoch_or_outside_a_trainer() -> None:
    good = CLEAN.replace("train_sampler.set_epoch(epoch)", "loader_epoch = epoch; "
                         "train_loader.sampler.set_epoch(loader_epoch)")
    assert lines(good, "DAT006") == []
    data_module = """
        from torch.utils.data import DataLoader, DistributedSampler
        def train_dataloader(ds):
            return DataLoader(ds, batch_size=64, sampler=DistributedSampler(ds))
    """
    assert lines(data_module, "DAT006") == []
