"""Optimizer rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import findings, lines

IDIOMATIC = """
    import torch

    def build_optimizer(model, lr, wd):
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, fused=True)

    def main(args):
        device = torch.device("cuda")
        model = Net().to(device)
        optimizer = build_optimizer(model, args.lr, args.wd)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps)
        model.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x.to(device)).loss(y.to(device))
            loss.backward()
            optimizer.step()
            scheduler.step()
"""


def test_idiomatic_trainer_is_clean() -> None:
    assert [f.rule for f in findings(IDIOMATIC) if f.rule.startswith("OPT")] == []


# ---------------------------------------------------------------------------------------------- OPT001

def test_opt001_step_without_zero_grad() -> None:
    bad = """
        import torch
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for epoch in range(10):
            for x, y in loader:
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
    """
    assert lines(bad, "OPT001") == [8]
    (finding,) = findings(bad, "OPT001")
    assert finding.severity == "error" and "zero_grad" in finding.message


def test_opt001_zero_grad_only_once_per_epoch() -> None:
    bad = """
        def train(model, loader, optimizer, epochs):
            for epoch in range(epochs):
                optimizer.zero_grad()
                for x, y in loader:
                    model(x).loss(y).backward()
                    optimizer.step()
    """
    assert lines(bad, "OPT001") == [7]


def test_opt001_gan_zeroes_only_one_of_two_optimizers() -> None:
    # netD.zero_grad() clears D's gradients; G's accumulate (the generator update lost its netG.zero_grad()).
    bad = """
        import torch
        optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
        optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
        for real in loader:
            netD.zero_grad()
            criterion(netD(real), ones).backward()
            optimizerD.step()
            criterion(netD(netG(noise)), ones).backward()
            optimizerG.step()
    """
    assert lines(bad, "OPT001") == [10]
    good = bad.replace("            criterion(netD(netG", "            netG.zero_grad()\n            criterion(netD(netG")
    assert lines(good, "OPT001") == []
    shared = bad.replace("netD.zero_grad()", "model.zero_grad()")  # a module we cannot tie to either optimizer
    assert lines(shared, "OPT001") == []


def test_opt001_zero_grad_before_the_loop_is_not_enough() -> None:
    bad = """
        def train(model, loader, optimizer):
            optimizer.zero_grad()
            for x, y in loader:
                model(x).loss(y).backward()
                optimizer.step()
    """
    assert lines(bad, "OPT001") == [6]


def test_opt001_quiet_with_zero_grad_set_to_none_at_the_top() -> None:
    good = """
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    """
    assert lines(good, "OPT001") == []


def test_opt001_quiet_with_gradient_accumulation() -> None:
    good = """
        for step, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y) / accum
            scaler.scale(loss).backward()
            if (step + 1) % accum == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
    """
    assert lines(good, "OPT001") == []
    assert lines(good, "OPT002") == []


def test_opt001_quiet_when_a_helper_zeroes_or_grads_are_set_to_none() -> None:
    good = """
        def train_step(model, optimizer, x, y):
            loss = model(x).loss(y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        for x, y in loader:
            train_step(model, optimizer, x, y)

        for x, y in loader:
            model(x).loss(y).backward()
            optimizer.step()
            for p in model.parameters():
                p.grad = None
    """
    assert lines(good, "OPT001") == []


def test_opt001_quiet_on_an_engine_that_zeroes_in_step() -> None:
    # DeepSpeed's engine.step() zeroes the gradients itself.
    good = """
        for batch in loader:
            loss = model_engine(batch)
            model_engine.backward(loss)
            model_engine.step()
    """
    assert lines(good, "OPT001") == []


# ---------------------------------------------------------------------------------------------- OPT002

def test_opt002_scheduler_before_optimizer() -> None:
    bad = """
        import torch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
        for epoch in range(90):
            scheduler.step()
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    assert lines(bad, "OPT002") == [5]


def test_opt002_in_the_same_loop_body() -> None:
    bad = """
        for x, y in loader:
            lr_scheduler.step()
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    assert lines(bad, "OPT002") == [3]


def test_opt002_quiet_after_optimizer_and_on_plateau_after_validation() -> None:
    good = """
        from torch.optim.lr_scheduler import ReduceLROnPlateau
        plateau = ReduceLROnPlateau(optimizer, patience=3)
        for epoch in range(90):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            val_loss = evaluate(model)
            plateau.step(val_loss)
    """
    assert lines(good, "OPT002") == []


# ---------------------------------------------------------------------------------------------- OPT003

def test_opt003_adamw_default_decay_on_all_parameters() -> None:
    bad = """
        import torch
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    """
    assert lines(bad, "OPT003") == [3]
    (finding,) = findings(bad, "OPT003")
    assert "0.01" in finding.message and "default" in finding.message


def test_opt003_explicit_decay_through_a_variable_and_argparse() -> None:
    bad = """
        import argparse
        from torch import optim
        parser = argparse.ArgumentParser()
        parser.add_argument("--weight-decay", type=float, default=5e-4)
        args = parser.parse_args()
        params = filter(lambda p: p.requires_grad, model.parameters())
        sgd = optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=args.weight_decay)
    """
    assert lines(bad, "OPT003") == [8]


def test_opt003_optimizer_built_in_a_helper() -> None:
    bad = """
        import torch

        def make_optimizer(model, cfg):
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

        class Config:
            lr: float = 3e-4
            weight_decay: float = 0.1

        optimizer = make_optimizer(model, Config())
    """
    assert lines(bad, "OPT003") == [6]
    (finding,) = findings(bad, "OPT003")
    assert "weight_decay=0.1" in finding.message


def test_opt003_quiet_with_param_groups_or_no_decay() -> None:
    good = """
        import torch
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        a = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": no_decay, "weight_decay": 0.0}], lr=3e-4)
        b = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
        c = torch.optim.Adam(model.parameters(), lr=3e-4)
        d = torch.optim.SGD(decay, lr=0.1, weight_decay=1e-4)
        e = torch.optim.AdamW(model.parameters(), weight_decay=cfg["wd"])
    """
    assert lines(good, "OPT003") == []


def test_opt003_quiet_with_param_groups_from_a_helper() -> None:
    good = """
        import torch

        def param_groups(model, wd):
            decay, no_decay = [], []
            for name, p in model.named_parameters():
                (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
            return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]

        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-4)
    """
    assert lines(good, "OPT003") == []


# ---------------------------------------------------------------------------------------------- OPT004

def test_opt004_freeze_after_the_optimizer_is_built() -> None:
    bad = """
        import torch
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for p in model.backbone.parameters():
            p.requires_grad = False
    """
    assert lines(bad, "OPT004") == [6]


def test_opt004_unfreeze_after_a_filtered_optimizer() -> None:
    bad = """
        import torch
        model.backbone.requires_grad_(False)
        optimizer = torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3)
        for epoch in range(20):
            if epoch == 5:
                model.backbone.requires_grad_(True)
            train_one_epoch(model, optimizer)
    """
    assert lines(bad, "OPT004") == [7]


def test_opt004_quiet_when_frozen_first_or_param_group_added() -> None:
    good = """
        import torch
        model.backbone.requires_grad_(False)
        optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-3)
        for epoch in range(20):
            if epoch == 5:
                model.backbone.requires_grad_(True)
                optimizer.add_param_group({"params": model.backbone.parameters(), "lr": 1e-5})
            train_one_epoch(model, optimizer)
    """
    assert lines(good, "OPT004") == []


def test_opt004_embeddings_resized_or_head_replaced_after_the_build() -> None:
    bad = """
        import torch
        from torch import nn

        def main(args):
            groups = [{"params": [p for n, p in model.named_parameters() if "bias" not in n], "weight_decay": 0.01},
                      {"params": [p for n, p in model.named_parameters() if "bias" in n], "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW(groups, lr=args.lr)
            tokenizer.add_special_tokens({"additional_special_tokens": ["[E1]"]})
            model.resize_token_embeddings(len(tokenizer))
            model.classifier = nn.Linear(768, args.num_labels)
            train(model, optimizer)
    """
    assert lines(bad, "OPT004") == [10]
    head = """
        import torch
        from torch import nn
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.fc = nn.Linear(2048, 10)
    """
    assert lines(head, "OPT004") == [5]


def test_opt004_quiet_when_replaced_before_the_build() -> None:
    good = """
        import torch
        from torch import nn
        model.resize_token_embeddings(len(tokenizer))
        model.fc = nn.Linear(2048, 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        probe = nn.Linear(2048, 10)
        ema.shadow = nn.Linear(2048, 10)  # another object than the optimized model
    """
    assert lines(good, "OPT004") == []


def test_opt004_submodule_optimizer_while_the_whole_model_trains() -> None:
    bad = """
        import torch
        model = Classifier()
        optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "OPT004") == [4]


def test_opt004_quiet_on_linear_probe_or_gan() -> None:
    probe = """
        import torch
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    gan = """
        import torch
        opt_g = torch.optim.Adam(gan.generator.parameters(), lr=2e-4)
        opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=2e-4)
        gan.train()
        for x in loader:
            opt_d.zero_grad()
            gan(x).backward()
            opt_d.step()
    """
    assert lines(probe, "OPT004") == []
    assert lines(gan, "OPT004") == []


# ---------------------------------------------------------------------------------------------- OPT005

def test_opt005_scheduler_on_a_fresh_optimizer() -> None:
    bad = """
        import torch
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.AdamW(model.parameters()), T_max=100)
    """
    assert lines(bad, "OPT005") == [4]


def test_opt005_optimizer_rebuilt_after_the_scheduler() -> None:
    bad = """
        import torch
        from torch.optim.lr_scheduler import LambdaLR
        optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
        scheduler = LambdaLR(optimizer, lambda s: min(1.0, s / 1000))
        model.requires_grad_(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """
    assert lines(bad, "OPT005") == [5]


def test_opt005_optimizer_rebuilt_in_the_epoch_loop_scheduler_kept() -> None:
    bad = """
        import torch
        from torch.optim.lr_scheduler import CosineAnnealingLR

        def main(args):
            optimizer = torch.optim.SGD(model.fc.parameters(), lr=args.lr, momentum=0.9)
            scheduler = CosineAnnealingLR(optimizer, T_max=args.epochs)
            for epoch in range(args.epochs):
                if epoch == args.unfreeze_at:
                    model.layer4.requires_grad_(True)
                    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * 0.1, momentum=0.9)
                train_one_epoch(model, loader, optimizer)
                scheduler.step()
    """
    assert lines(bad, "OPT005") == [7]
    good = bad.replace("momentum=0.9)\n                train_one",
                       "momentum=0.9)\n                    scheduler = CosineAnnealingLR(optimizer, args.epochs)\n"
                       "                train_one")
    assert lines(good, "OPT005") == []


def test_opt005_quiet_when_bound_through_helpers() -> None:
    good = """
        import torch

        def make_optimizer(model):
            return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)

        def make_scheduler(optimizer, steps):
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

        optimizer = make_optimizer(model)
        scheduler = make_scheduler(optimizer, 1000)
        direct = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """
    assert lines(good, "OPT005") == []


# ---------------------------------------------------------------------------------------------- OPT006

CUDA_TRAINER = """
    import torch
    model = Net().cuda()
    optimizer = {build}
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x.cuda()), y.cuda()).backward()
        optimizer.step()
"""


def test_opt006_adamw_without_fused_on_cuda() -> None:
    bad = CUDA_TRAINER.format(build="torch.optim.AdamW(groups, lr=3e-4)")
    assert lines(bad, "OPT006") == [4]
    (finding,) = findings(bad, "OPT006")
    assert "fused=True" in finding.message


def test_opt006_sgd_forced_to_the_for_loop() -> None:
    bad = CUDA_TRAINER.format(build="torch.optim.SGD(groups, lr=0.1, foreach=False)")
    assert lines(bad, "OPT006") == [4]


def test_opt006_plain_sgd_on_cuda_is_left_alone() -> None:
    # foreach is already SGD's default on CUDA; only forcing it off is a finding
    assert lines(CUDA_TRAINER.format(build="torch.optim.SGD(groups, lr=0.1, momentum=0.9)"), "OPT006") == []
    bad = CUDA_TRAINER.format(build="torch.optim.SGD(groups, lr=0.1, momentum=0.9, foreach=False)")
    assert lines(bad, "OPT006") == [4]


def test_opt006_quiet_with_fused_or_foreach_or_on_cpu() -> None:
    for build in ("torch.optim.AdamW(groups, lr=3e-4, fused=True)",
                  "torch.optim.Adam(groups, lr=3e-4, foreach=True)",
                  "torch.optim.AdamW(groups, lr=3e-4, fused=device.type == 'cuda')",
                  "torch.optim.SGD(groups, lr=0.1, momentum=0.9, foreach=True)"):
        assert lines(CUDA_TRAINER.format(build=build), "OPT006") == [], build
    cpu = CUDA_TRAINER.format(build="torch.optim.AdamW(groups)").replace(".cuda()", "")
    assert lines(cpu, "OPT006") == []


def test_branches_that_never_both_run_are_not_an_order() -> None:
    # The "later" rebuild / freeze sits in the other branch of the same `if`: it never follows the first.
    good = """
        import torch
        from torch.optim.lr_scheduler import StepLR

        def build(model, args):
            if args.optim == "sgd":
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.0)
                scheduler = StepLR(optimizer, 30)
            else:
                model.backbone.requires_grad_(False)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
            return optimizer, scheduler
    """
    assert lines(good, "OPT004") == []
    assert lines(good, "OPT005") == []
    sequential = good.replace("            else:\n", "            if args.probe:\n")
    assert lines(sequential, "OPT005") == [8]
    freeze = """
        import torch

        def build(model, args):
            if args.full:
                return torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.0)
            else:
                model.backbone.requires_grad_(False)
                return make_probe_optimizer(model)
    """
    assert lines(freeze, "OPT004") == []
