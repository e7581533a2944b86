"""Advisory rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import findings, lines

from pytest_spml.l0.runner import lint_source


def test_adv001_torch_load_without_weights_only() -> None:
    assert lines('import torch\nstate = torch.load("ckpt.pt")\n', "ADV001") == [2]
    assert lines('from torch import load\nstate = load("ckpt.pt", weights_only=False)\n', "ADV001") == [2]
    (finding,) = findings('import torch\nstate = torch.load("ckpt.pt")\n', "ADV001")
    assert finding.severity == "advisory" and finding.category == "advisory"


def test_adv001_quiet_with_weights_only() -> None:
    assert lines('import torch\nstate = torch.load("ckpt.pt", map_location="cpu", weights_only=True)\n',
                 "ADV001") == []


# ---------------------------------------------------------------- a clean trainer gets no advisory at all

CLEAN_TRAINER = """
    import json, random, time
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    class Net(nn.Module):
        def __init__(self, vocab_size, d, p=0.1):
            super().__init__()
            self.tok = nn.Embedding(vocab_size, d)
            self.drop = nn.Dropout(p)
            self.head = nn.Linear(d, vocab_size, bias=False)
            self.p = p

        def forward(self, x):
            h = self.drop(self.tok(x))
            h = F.dropout(h, self.p, training=self.training)
            return self.head(h)

    @torch.no_grad()
    def evaluate(model, val_loader):
        model.eval()
        total = 0.0
        for x, y in val_loader:
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
        model.train()
        return total / len(val_loader)

    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    data = np.load("train_tokens.npy", mmap_mode="r")
    model = torch.compile(Net(50304, 768).cuda())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=4, pin_memory=True,
                        persistent_workers=True, drop_last=True)
    val_loader = DataLoader(data, batch_size=64, num_workers=2)
    log = open("metrics.jsonl", "a")
    running = torch.zeros((), device="cuda")
    step, t0 = 0, time.perf_counter()
    model.train()
    for x, y in tqdm(loader):
        x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        step += 1
        if step % 100 == 0:
            torch.cuda.synchronize()
            log.write(json.dumps({"step": step, "loss": running.item() / 100, "grad_norm": grad_norm.item(),
                                  "step_time_s": (time.perf_counter() - t0) / 100}) + "\\n")
            running.zero_()
            t0 = time.perf_counter()
        if step % 1000 == 0:
            print("val", evaluate(model, val_loader))
            torch.save({"model": model.state_dict(), "step": step}, f"ckpt_{step}.pt")
"""


def test_clean_trainer_gets_no_advisory() -> None:
    assert [(f.rule, f.line) for f in findings(CLEAN_TRAINER) if f.rule.startswith("ADV")] == []


# ---------------------------------------------------------------- ADV002 loss accumulated with its graph


def test_adv002_running_total_and_list_of_losses() -> None:
    bad = """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss
            epoch_losses.append(loss)
            weighted += loss * x.size(0)
            mean_total += loss.mean()
    """
    assert lines(bad, "ADV002") == [6, 7, 8, 9]


def test_adv002_hf_outputs_loss() -> None:
    bad = """
        for batch in train_dataloader:
            outputs = model(**batch)
            outputs.loss.backward()
            optimizer.step()
            total_loss += outputs.loss
    """
    assert lines(bad, "ADV002") == [6]


def test_adv002_quiet_when_detached() -> None:
    good = """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            running += loss.detach()
            losses.append(float(loss))
            seen += x.size(0)
            numel += loss.numel()
    """
    assert lines(good, "ADV002") == []


def test_adv002_quiet_on_purposeful_sum_and_detached_rebinding() -> None:
    summed = """
        total = 0
        for x, y in pairs:
            loss = criterion(model(x), y)
            total += loss
        total.backward()
    """
    rebound = """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            loss = loss.item()
            total_loss += loss
    """
    under_no_grad = """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            with torch.no_grad():
                total_loss += loss
    """
    assert lines(summed, "ADV002") == lines(rebound, "ADV002") == lines(under_no_grad, "ADV002") == []


def test_adv002_step_function_returning_a_tensor_or_a_float() -> None:
    leaky = """
        def train_step(x, y):
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            return loss

        for x, y in loader:
            loss = train_step(x, y)
            total += loss
    """
    fine = leaky.replace("return loss\n", "return loss.item()\n")
    assert lines(leaky, "ADV002") == [10]
    assert lines(fine, "ADV002") == []


# ---------------------------------------------------------------- ADV003 host sync every step


def test_adv003_item_cpu_tolist_every_step() -> None:
    bad = """
        import torch
        model = Net().cuda()
        for step, (x, y) in enumerate(loader):
            loss = criterion(model(x.cuda()), y.cuda())
            loss.backward()
            optimizer.step()
            pbar.set_postfix(loss=loss.item())
            preds.append(model_out.argmax(1).cpu())
            ids = y.tolist()
            if not torch.isfinite(loss).item():
                raise RuntimeError("nan")
    """
    assert lines(bad, "ADV003") == [8, 9, 10, 11]


def test_adv003_inside_a_step_function() -> None:
    bad = """
        def train_step(batch):
            loss = model(batch.cuda()).mean()
            loss.backward()
            optimizer.step()
            return loss.item()

        for batch in loader:
            train_step(batch)
    """
    assert lines(bad, "ADV003") == [6]


def test_adv003_quiet_under_a_logging_condition() -> None:
    good = """
        model = Net().cuda()
        for step, (x, y) in enumerate(loader):
            loss = criterion(model(x.cuda()), y.cuda())
            loss.backward()
            optimizer.step()
            if step % log_every == 0:
                print(step, loss.item())
        print("final", loss.item())
    """
    assert lines(good, "ADV003") == []


def test_adv003_quiet_without_cuda_or_outside_the_step_loop() -> None:
    cpu = """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            print(loss.item())
    """
    per_epoch = """
        def train_one_epoch(model, loader):
            for x, y in loader:
                loss = criterion(model(x.cuda()), y.cuda())
                loss.backward()
                optimizer.step()
            return loss

        for epoch in range(10):
            loss = train_one_epoch(model, loader)
            print(epoch, loss.item())
    """
    assert lines(cpu, "ADV003") == lines(per_epoch, "ADV003") == []


# ---------------------------------------------------------------- ADV004 softmax into cross-entropy


def test_adv004_softmax_inline_and_via_a_variable() -> None:
    bad = """
        import torch.nn as nn
        import torch.nn.functional as F
        criterion = nn.CrossEntropyLoss()
        loss = criterion(F.softmax(logits, dim=-1), y)
        probs = logits.softmax(dim=-1)
        loss = F.cross_entropy(probs.view(-1, V), y.view(-1))
        logp = torch.log_softmax(logits, -1)
        loss = nn.CrossEntropyLoss()(logp, y)
    """
    assert lines(bad, "ADV004") == [5, 7, 9]


def test_adv004_model_forward_returns_softmax() -> None:
    bad = """
        import torch.nn as nn
        import torch.nn.functional as F

        class Net(nn.Module):
            def forward(self, x):
                return F.softmax(self.fc(x), dim=1)

        def train(model, loader):
            criterion = nn.CrossEntropyLoss()
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
    """
    assert lines(bad, "ADV004") == [7]


def test_adv004_nll_loss_wants_log_softmax() -> None:
    bad = """
        import torch.nn.functional as F
        loss = F.nll_loss(F.softmax(out, dim=1), target)
    """
    good = """
        import torch.nn.functional as F
        loss = F.nll_loss(F.log_softmax(out, dim=1), target)
    """
    assert lines(bad, "ADV004") == [3]
    assert lines(good, "ADV004") == []


def test_adv004_quiet_on_logits_and_softmax_for_reporting() -> None:
    good = """
        import torch.nn as nn
        import torch.nn.functional as F
        criterion = nn.CrossEntropyLoss()
        logits = model(x)
        loss = criterion(logits, y)
        probs = F.softmax(logits, dim=-1)
        confidence = probs.max(dim=-1).values
    """
    assert lines(good, "ADV004") == []


# ---------------------------------------------------------------- ADV005 evaluation without no_grad


def test_adv005_eval_function_and_val_loop() -> None:
    bad = """
        import torch
        def validate(model, loader):
            model.eval()
            for x, y in loader:
                out = model(x)

        for epoch in range(10):
            for x, y in val_loader:
                acc += (net(x).argmax(1) == y).sum()
    """
    assert lines(bad, "ADV005") == [3, 9]


def test_adv005_quiet_with_decorator_context_or_grad_free_callers() -> None:
    decorated = """
        import torch
        @torch.inference_mode()
        def evaluate(model, loader):
            return [model(x) for x, _ in loader]
    """
    wrapped = """
        import torch
        def evaluate(model, loader):
            with torch.no_grad():
                return [model(x) for x, _ in loader]
    """
    caller = """
        import torch
        def evaluate(model, loader):
            return [model(x) for x, _ in loader]

        with torch.no_grad():
            score = evaluate(model, val_loader)
    """
    for good in (decorated, wrapped, caller):
        assert lines(good, "ADV005") == []


def test_adv005_near_misses_pytest_lightning_and_grad_based_eval() -> None:
    lightning = """
        class Lit(pl.LightningModule):
            def validation_step(self, batch, idx):
                return self.model(batch)
    """
    saliency = """
        def evaluate_saliency(model, x):
            out = model(x)
            out.sum().backward()
            return x.grad
    """
    training_loop = """
        def train(model, train_loader):
            for x, y in train_loader:
                loss = model(x).mean()
                loss.backward()
    """
    assert lines(lightning, "ADV005") == lines(saliency, "ADV005") == lines(training_loop, "ADV005") == []
    pytest_file = lint_source("def test_forward():\n    out = model(x)\n", path="tests/test_net.py")
    assert [f for f in pytest_file if f.rule == "ADV005"] == []


# ---------------------------------------------------------------- ADV006 eval/train mode


def test_adv006_eval_in_the_epoch_loop_without_train() -> None:
    bad = """
        model.train()
        for epoch in range(epochs):
            for x, y in train_loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
            model.eval()
            validate(model, val_loader)
    """
    assert lines(bad, "ADV006") == [8]


def test_adv006_eval_inside_a_helper_called_from_training() -> None:
    bad = """
        @torch.no_grad()
        def estimate_loss():
            model.eval()
            return model(x).mean()

        for it in range(max_iters):
            if it % 100 == 0:
                print(estimate_loss())
            loss = model(x).mean()
            loss.backward()
            optimizer.step()
    """
    good = """
        @torch.no_grad()
        def estimate_loss():
            model.eval()
            out = model(x).mean()
            model.train()
            return out

        for it in range(max_iters):
            if it % 100 == 0:
                print(estimate_loss())
            loss = model(x).mean()
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "ADV006") == [4]
    assert lines(good, "ADV006") == []


def test_adv006_quiet_when_train_is_called_each_epoch() -> None:
    per_epoch = """
        for epoch in range(epochs):
            model.train()
            for x, y in train_loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
            model.eval()
            validate(model, val_loader)
    """
    in_helper = """
        def train_one_epoch(model, loader):
            model.train()
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()

        for epoch in range(epochs):
            train_one_epoch(model, train_loader)
            model.eval()
            validate(model, val_loader)
    """
    after_training = """
        for x, y in train_loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        test(model)
    """
    for good in (per_epoch, in_helper, after_training):
        assert lines(good, "ADV006") == []


def test_adv006_evaluation_without_eval_mode() -> None:
    bad = """
        import torch
        @torch.no_grad()
        def evaluate(model, loader):
            return sum((model(x).argmax(1) == y).sum() for x, y in loader)
    """
    good = """
        import torch
        @torch.no_grad()
        def evaluate(model, loader):
            model.eval()
            return sum((model(x).argmax(1) == y).sum() for x, y in loader)
    """
    pretrained = """
        import torch
        model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")
        @torch.no_grad()
        def evaluate(model, loader):
            return [model(**b).logits for b in loader]
    """
    assert lines(bad, "ADV006") == [4]
    assert lines(good, "ADV006") == lines(pretrained, "ADV006") == []


# ---------------------------------------------------------------- ADV007 torch.save of a module


def test_adv007_whole_module_and_module_in_a_dict() -> None:
    bad = """
        import torch
        model = Net().to(device)
        torch.save(model, "model.pt")
        torch.save({"model": model, "step": step}, "ckpt.pt")
        ckpt = {"net": self.net, "optimizer": optimizer.state_dict()}
        torch.save(ckpt, "ckpt.pt")
        torch.save(model.module, "ddp.pt")
    """
    assert lines(bad, "ADV007") == [4, 5, 7, 8]


def test_adv007_quiet_with_state_dicts_and_tensors() -> None:
    good = """
        import torch
        torch.save(model.state_dict(), "model.pt")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, "ckpt.pt")
        state = model.state_dict()
        torch.save(state, "model.pt")
        torch.save(model_state, "model.pt")
        torch.save(embeddings, "emb.pt")
        torch.save(optimizer, "opt.pt")
    """
    assert lines(good, "ADV007") == []


# ---------------------------------------------------------------- ADV008 accumulation without scaling


def test_adv008_periodic_step_without_scaling() -> None:
    bad = """
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    scaler = """
        for i, (x, y) in enumerate(loader):
            with torch.autocast("cuda", dtype=torch.float16):
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            if (i + 1) % accum_steps == 0:
                scaler.step(optimizer)
                scaler.update()
    """
    assert lines(bad, "ADV008") == [4]
    assert lines(scaler, "ADV008") == [5]


def test_adv008_micro_step_loop_without_scaling() -> None:
    bad = """
        while step < max_steps:
            for micro_step in range(grad_accum):
                loss = model(*get_batch())
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    """
    good = bad.replace("loss = model(*get_batch())", "loss = model(*get_batch()) / grad_accum")
    assert lines(bad, "ADV008") == [5]
    assert lines(good, "ADV008") == []


def test_adv008_quiet_when_scaled() -> None:
    divided = """
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y) / accum_steps
            loss.backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
    """
    inline = """
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            (loss / accum_steps).backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
    """
    aug = """
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss /= accum_steps
            scaler.scale(loss).backward()
            if (i + 1) % accum_steps == 0:
                scaler.step(optimizer)
    """
    continue_shape = """
        for x, y in loader:
            loss = criterion(model(x), y) / accum
            loss.backward()
            micro += 1
            if micro % accum != 0:
                continue
            optimizer.step()
    """
    for good in (divided, inline, aug, continue_shape):
        assert lines(good, "ADV008") == []


def test_adv008_quiet_without_accumulation() -> None:
    every_step = """
        for step, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                scheduler.step()
    """
    continue_unscaled = """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            micro += 1
            if micro % accum != 0:
                continue
            optimizer.step()
    """
    assert lines(every_step, "ADV008") == []
    assert lines(continue_unscaled, "ADV008") == [4]


# ---------------------------------------------------------------- ADV009 batch arithmetic


def test_adv009_names_and_config_dict() -> None:
    bad = """
        global_batch = 512
        micro_batch = 16
        accum_steps = 8
    """
    config = """
        config = {"global_batch_size": 256, "micro_batch_size": 8, "gradient_accumulation_steps": 4,
                  "world_size": 4}
    """
    assert lines(bad, "ADV009") == [4]
    assert lines(config, "ADV009") == [2]


def test_adv009_quiet_when_consistent_or_not_literal() -> None:
    consistent = """
        global_batch = 512
        micro_batch = 16
        accum_steps = 8
        world_size = 4
    """
    derived = """
        global_batch = 512
        micro_batch = 16
        accum_steps = global_batch // micro_batch
    """
    distributed = """
        import torch.distributed as dist
        total_batch_size = 512
        micro_batch_size = 16
        grad_accum_steps = 4
        world_size = dist.get_world_size()
    """
    no_global = """
        batch_size = 16
        accum_steps = 8
    """
    for good in (consistent, derived, distributed, no_global):
        assert lines(good, "ADV009") == []


# ---------------------------------------------------------------- ADV010 cudnn.benchmark


CONV_TRAINER = """
    import torch
    import torch.nn as nn
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)).cuda()
    model = torch.compile(model)
    for x, y in loader:
        loss = criterion(model(x.cuda()), y.cuda())
        loss.backward()
        optimizer.step()
"""


def test_adv010_conv_trainer_without_benchmark() -> None:
    assert lines(CONV_TRAINER, "ADV010") == [6]


def test_adv010_quiet_when_set_or_deterministic_or_no_convs() -> None:
    benchmark = CONV_TRAINER.replace("model = nn.Seq", "torch.backends.cudnn.benchmark = True\n    model = nn.Seq")
    deterministic = CONV_TRAINER.replace("model = nn.Seq", "torch.backends.cudnn.deterministic = True\n"
                                         "    model = nn.Seq")
    mlp = CONV_TRAINER.replace("nn.Conv2d(3, 64, 3)", "nn.Linear(3, 64)")
    for good in (benchmark, deterministic, mlp):
        assert lines(good, "ADV010") == []


# ---------------------------------------------------------------- ADV011 torch.compile


def test_adv011_cuda_trainer_without_compile() -> None:
    bad = CONV_TRAINER.replace("    model = torch.compile(model)\n", "")
    assert lines(bad, "ADV011") == [5]


def test_adv011_quiet_when_compiled_on_cpu_or_suppressed() -> None:
    method = CONV_TRAINER.replace("model = torch.compile(model)", "model.compile()")
    cpu = CONV_TRAINER.replace(".cuda()", "").replace("    model = torch.compile(model)\n", "")
    ignored = CONV_TRAINER.replace("model = torch.compile(model)", "# spml: ignore-file[ADV011]")
    regex_only = CONV_TRAINER.replace("model = torch.compile(model)", 'import re; pat = re.compile("x")')
    assert lines(method, "ADV011") == lines(cpu, "ADV011") == lines(ignored, "ADV011") == []
    assert lines(regex_only, "ADV011") == [6]


# ---------------------------------------------------------------- ADV012 compile without drop_last


COMPILED = """
    import torch
    from torch.utils.data import DataLoader
    model = torch.compile(Net().cuda())
    train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, num_workers=4)
    val_loader = DataLoader(val_ds, batch_size=64)
    for x, y in train_loader:
        loss = model(x).mean()
        loss.backward()
        optimizer.step()
"""


def test_adv012_training_loader_keeps_the_short_batch() -> None:
    assert lines(COMPILED, "ADV012") == [5]
    iterated = COMPILED.replace("shuffle=True, ", "").replace("train_loader", "loader")
    assert lines(iterated, "ADV012") == [5]


def test_adv012_quiet_with_drop_last_dynamic_or_no_compile() -> None:
    drop = COMPILED.replace("num_workers=4)", "num_workers=4, drop_last=True)")
    dynamic = COMPILED.replace("torch.compile(Net().cuda())", "torch.compile(Net().cuda(), dynamic=True)")
    eager = COMPILED.replace("torch.compile(Net().cuda())", "Net().cuda()")
    configurable = COMPILED.replace("num_workers=4)", "num_workers=4, drop_last=args.drop_last)")
    for good in (drop, dynamic, eager, configurable):
        assert lines(good, "ADV012") == []


# ---------------------------------------------------------------- ADV013 .data mutation


def test_adv013_data_writes() -> None:
    bad = """
        import torch
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        for p, ema_p in zip(model.parameters(), ema.parameters()):
            ema_p.data = decay * ema_p.data + (1 - decay) * p.data

        def clip_and_prune(w, mask, x, y):
            w.data -= lr * w.grad
            model.fc.weight.data[mask] = 0
            x.data.copy_(y)
    """
    assert lines(bad, "ADV013") == [4, 6, 9, 10, 11]


def test_adv013_quiet_on_reads_init_code_and_object_attributes() -> None:
    good = """
        import torch
        class Net(nn.Module):
            def _init_weights(self, module):
                module.weight.data.normal_(mean=0.0, std=0.02)

        class Ds(Dataset):
            def __init__(self, path):
                self.data = np.load(path)

        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        trainset.data = trainset.data[:1000]
        value = loss.data.cpu().item()
        model.classifier.bias.data.zero_()     # straight-line setup before training: no graph yet
    """
    assert lines(good, "ADV013") == []
    assert lines("x.data = payload\n", "ADV013") == []      # not a PyTorch file: any object's `.data`


# ---------------------------------------------------------------- ADV014 full load instead of mmap


def test_adv014_full_loads() -> None:
    bad = """
        import numpy as np
        import torch
        from torch.utils.data import Dataset

        class Tokens(Dataset):
            def __init__(self, path):
                self.arr = np.load(path)
                self.feats = torch.load("features.pt", weights_only=True)
                self.raw = open("train.bin", "rb").read()

            def __getitem__(self, i):
                return self.arr[i]

        tokens = np.fromfile("val.bin", dtype=np.uint16)
        with open("train.bin", "rb") as f:
            blob = f.read()
    """
    assert lines(bad, "ADV014") == [8, 9, 10, 15, 17]


def test_adv014_quiet_with_memory_maps_and_small_files() -> None:
    good = """
        import numpy as np
        import torch
        from torch.utils.data import Dataset

        class Tokens(Dataset):
            def __init__(self, path):
                self.arr = np.load(path, mmap_mode="r")
                self.tokens = np.memmap("train.bin", dtype=np.uint16, mode="r")
                self.feats = torch.load("features.pt", mmap=True, weights_only=True)
                self.meta = np.load("meta.npz")

            def __getitem__(self, i):
                return torch.load(f"shard_{i}.pt", weights_only=True)

        stats = np.load("stats.npy")          # not a trainer, not a dataset: a small array
        text = open("README.md").read()
    """
    assert lines(good, "ADV014") == []


# ---------------------------------------------------------------- ADV015 vocabulary sizes


def test_adv015_embedding_and_head_disagree_with_vocab() -> None:
    bad = """
        import torch.nn as nn
        vocab_size = 50304

        class GPT(nn.Module):
            def __init__(self):
                super().__init__()
                self.wte = nn.Embedding(50257, 768)
                self.wpe = nn.Embedding(1024, 768)
                self.lm_head = nn.Linear(768, 50000, bias=False)
    """
    assert lines(bad, "ADV015") == [8, 10]


def test_adv015_config_keyword_and_smaller_embedding() -> None:
    bad = """
        import torch.nn as nn
        tokenizer = train_bpe(files, vocab_size=32000)
        embed = nn.Embedding(30000, 512)
    """
    assert lines(bad, "ADV015") == [4]


def test_adv015_quiet_when_consistent_or_padded() -> None:
    good = """
        import torch.nn as nn
        vocab_size = 50257
        self.wte = nn.Embedding(50304, 768)      # padded to a multiple of 64 on purpose
        self.lm_head = nn.Linear(768, 50304, bias=False)
        self.pos_emb = nn.Embedding(2048, 768)
        self.out_proj = nn.Linear(4096, 4096)
        self.head = nn.Linear(768, 2)
    """
    from_config = """
        import torch.nn as nn
        vocab_size = 50304
        self.wte = nn.Embedding(vocab_size, 768)
        self.lm_head = nn.Linear(768, vocab_size)
    """
    assert lines(good, "ADV015") == lines(from_config, "ADV015") == []


# ---------------------------------------------------------------- ADV016 dropout in evaluation


def test_adv016_functional_dropout_always_on() -> None:
    bad = """
        import torch
        import torch.nn.functional as F

        class Net(nn.Module):
            def forward(self, x):
                x = F.dropout(x, 0.3)
                x = F.dropout(x, p=0.1, training=True)
                x = torch.dropout(x, 0.1, True)
                return F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True)
    """
    assert lines(bad, "ADV016") == [7, 8, 9, 10]


def test_adv016_quiet_when_gated_on_training() -> None:
    good = """
        import torch
        import torch.nn.functional as F

        class Net(nn.Module):
            def forward(self, x):
                x = F.dropout(x, 0.3, training=self.training)
                x = F.dropout(x, self.p, self.training)
                x = self.drop(x)
                return F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
    """
    assert lines(good, "ADV016") == []


# ---------------------------------------------------------------- ADV017 sync / empty_cache every step


def test_adv017_sync_and_empty_cache_every_step() -> None:
    bad = """
        import torch
        for x, y in loader:
            loss = model(x).mean()
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    """
    assert lines(bad, "ADV017") == [7, 8]


def test_adv017_quiet_when_timing_or_occasional() -> None:
    good = """
        import time
        import torch
        for step, (x, y) in enumerate(loader):
            t0 = time.perf_counter()
            loss = model(x).mean()
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()
            step_time = time.perf_counter() - t0
            if step % 1000 == 0:
                torch.cuda.empty_cache()
        torch.cuda.empty_cache()
    """
    assert lines(good, "ADV017") == []


# ---------------------------------------------------------------- near-misses across rules


def test_phase_loop_with_set_grad_enabled_is_quiet() -> None:
    """The PyTorch tutorial's train/val phase loop switches modes and autograd correctly."""
    phases = """
        import torch
        for epoch in range(10):
            for phase in ["train", "val"]:
                model.train() if phase == "train" else model.eval()
                for x, y in dataloaders[phase]:
                    with torch.set_grad_enabled(phase == "train"):
                        loss = criterion(model(x), y)
                        if phase == "train":
                            loss.backward()
                            optimizer.step()
    """
    assert [f.rule for f in findings(phases) if f.rule in ("ADV005", "ADV006")] == []


def test_adv005_eval_step_whose_callers_run_without_grad() -> None:
    good = """
        import torch
        def eval_step(model, batch):
            return model(batch)

        @torch.no_grad()
        def run_eval(model, loader):
            model.eval()
            return [eval_step(model, b) for b in loader]
    """
    assert lines(good, "ADV005") == []


def test_adv007_state_dict_named_like_a_model() -> None:
    good = """
        import torch
        model = net.state_dict()
        torch.save(model, "weights.pt")
    """
    assert lines(good, "ADV007") == []


def test_adv004_quiet_when_a_parameter_only_shares_a_name_with_a_later_softmax() -> None:
    good = """
        import torch.nn as nn
        import torch.nn.functional as F
        criterion = nn.CrossEntropyLoss()
        out = compute(batch)
        loss = criterion(out, y)
        out = F.softmax(out, dim=-1)
    """
    assert lines(good, "ADV004") == []


def test_adv012_loader_built_in_a_helper() -> None:
    bad = """
        import torch
        from torch.utils.data import DataLoader
        def build(args):
            return DataLoader(train_ds, batch_size=8, shuffle=True), DataLoader(val_ds, batch_size=8)
        train_loader, val_loader = build(args)
        model = torch.compile(Net().cuda())
        for x in train_loader:
            model(x).mean().backward()
            optimizer.step()
    """
    assert lines(bad, "ADV012") == [5]
