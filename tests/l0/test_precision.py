"""Precision rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import findings, lines

# ---------------------------------------------------------------------------- PRC001


def test_prc001_cuda_autocast_defaults_to_fp16() -> None:
    bad = """
        import torch
        for x, y in loader:
            with torch.autocast("cuda"):
                loss = loss_fn(model(x.cuda()), y.cuda())
            loss.backward()
            optimizer.step()
    """
    (finding,) = findings(bad, "PRC001")
    assert finding.line == 4 and finding.severity == "error" and "GradScaler" in finding.message


def test_prc001_legacy_autocast_and_fp16_variable() -> None:
    bad = """
        import torch
        from torch.cuda.amp import autocast
        amp_dtype = torch.float16
        for x, y in loader:
            with autocast():
                out = model(x)
            with torch.amp.autocast(device_type="cuda", dtype=amp_dtype):
                loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
    """
    assert lines(bad, "PRC001") == [6, 8]


def test_prc001_quiet_with_a_grad_scaler() -> None:
    good = """
        import torch
        scaler = torch.amp.GradScaler("cuda")
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    """
    assert lines(good, "PRC001") == []


def test_prc001_quiet_near_misses() -> None:
    good = """
        import torch
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            with torch.autocast("cpu"):                    # bf16 by default on the CPU
                aux = head(x).mean()
            with torch.autocast("cuda", enabled=False):
                extra = model(x).float().mean()
            (loss + aux + extra).backward()
            optimizer.step()

        @torch.no_grad()
        def evaluate():
            with torch.autocast("cuda"):                    # fp16 inference needs no scaler
                return model(val_x)
    """
    assert lines(good, "PRC001") == []


def test_prc001_quiet_when_a_framework_scales() -> None:
    good = """
        import torch
        for batch in loader:
            with torch.autocast("cuda"):
                loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
    """
    assert lines(good, "PRC001") == []


# ---------------------------------------------------------------------------- PRC002

def test_prc002_scaler_with_bf16_autocast() -> None:
    bad = """
        import torch
        from torch.cuda.amp import GradScaler
        scaler = GradScaler()
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    """
    (finding,) = findings(bad, "PRC002")
    assert finding.line == 4 and "bf16" in finding.message


def test_prc002_quiet_without_a_scaler_and_with_fp16() -> None:
    bf16 = """
        import torch
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    """
    assert lines(bf16, "PRC002") == []
    both = """
        import torch
        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            emb = encoder(x)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = head(emb)
        scaler.scale(loss).backward()
    """
    assert lines(both, "PRC002") == []


def test_prc002_quiet_for_a_scaler_that_follows_the_dtype() -> None:
    good = """
        import torch
        dtype = "bfloat16"
        ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        scaler = torch.cuda.amp.GradScaler(enabled=(dtype == "float16"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x)
        scaler.scale(loss).backward()
    """
    assert lines(good, "PRC002") == []


# ---------------------------------------------------------------------------- PRC003

def test_prc003_half_model_trained_directly() -> None:
    bad = """
        import torch
        model = Net().cuda().half()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for x, y in loader:
            loss = loss_fn(model(x.cuda().half()), y.cuda())
            loss.backward()
            optimizer.step()
    """
    (finding,) = findings(bad, "PRC003")
    assert finding.line == 3 and "`model`" in finding.message


def test_prc003_to_float16() -> None:
    bad = """
        import torch
        model = build_model()
        model.to(torch.float16)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    assert lines(bad, "PRC003") == [4]


def test_prc003_quiet_with_mixed_precision_or_master_weights() -> None:
    autocast = """
        import torch
        model = Net().cuda()
        optimizer = torch.optim.AdamW(model.parameters())
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    """
    assert lines(autocast, "PRC003") == []
    master = """
        import torch
        model = Net().cuda().half()
        master = [p.detach().clone().float() for p in model.parameters()]
        optimizer = torch.optim.SGD(master, lr=0.1)
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    assert lines(master, "PRC003") == []


def test_prc003_quiet_for_frozen_teacher_and_export() -> None:
    good = """
        import torch
        teacher = Teacher().cuda().half().eval()            # frozen: not optimized
        student = Student().cuda()
        optimizer = torch.optim.AdamW(student.parameters())
        for x, y in loader:
            loss = distill(student(x), teacher(x.half()))
            loss.backward()
            optimizer.step()
        student.half()                                      # after training: export
        torch.save(student.state_dict(), "student_fp16.pt")
    """
    assert lines(good, "PRC003") == []


# ---------------------------------------------------------------------------- PRC004

def test_prc004_backward_inside_autocast() -> None:
    bad = """
        import torch
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
                loss.backward()
            optimizer.step()
    """
    (finding,) = findings(bad, "PRC004")
    assert finding.line == 6 and "line 4" in finding.message


def test_prc004_through_a_context_variable() -> None:
    bad = """
        import torch
        from contextlib import nullcontext
        ctx = nullcontext() if device_type == "cpu" else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
        scaler = torch.cuda.amp.GradScaler(enabled=(dtype == "float16"))
        while True:
            with ctx:
                logits, loss = model(X, Y)
                scaler.scale(loss).backward()
            scaler.step(optimizer)
    """
    assert lines(bad, "PRC004") == [9]


def test_prc004_quiet_when_backward_is_outside() -> None:
    good = """
        import torch
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
        for x, y in loader:
            with amp:
                loss = loss_fn(model(x), y)
            loss.backward()
            with torch.autocast("cuda", enabled=False):
                reg = penalty(model)
                reg.backward()                              # autocast disabled here
            optimizer.step()
    """
    assert lines(good, "PRC004") == []


# ---------------------------------------------------------------------------- PRC005

CUDA_FP32_TRAINER = """
import torch
device = torch.device("cuda")
model = Net().to(device)
optimizer = torch.optim.AdamW(model.parameters())
for x, y in loader:
    loss = loss_fn(model(x.to(device)), y.to(device))
    loss.backward()
    optimizer.step()
"""


def test_prc005_fp32_cuda_trainer_without_tf32() -> None:
    (finding,) = findings(CUDA_FP32_TRAINER, "PRC005")
    assert finding.line == 6 and "allow_tf32" in finding.message


def test_prc005_quiet_when_tf32_is_chosen() -> None:
    for setting in ('torch.backends.cuda.matmul.allow_tf32 = True',
                    'torch.set_float32_matmul_precision("high")',
                    'torch.backends.cudnn.allow_tf32 = True',
                    'torch.backends.cuda.matmul.allow_tf32 = False  # bit-exact fp32 on purpose'):
        assert lines(setting + "\n" + CUDA_FP32_TRAINER, "PRC005") == [], setting


def test_prc005_quiet_under_autocast_and_off_cuda() -> None:
    bf16 = CUDA_FP32_TRAINER.replace("    loss = loss_fn(", "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
                                                         "        loss = loss_fn(")
    assert lines(bf16, "PRC005") == []
    cpu = CUDA_FP32_TRAINER.replace('torch.device("cuda")', 'torch.device("cpu")')
    assert lines(cpu, "PRC005") == []
    model_file = """
        import torch
        class Net(torch.nn.Module):
            def forward(self, x):
                return self.fc(x.cuda())
    """
    assert lines(model_file, "PRC005") == []


def test_prc005_quiet_for_convolution_only_networks() -> None:
    dcgan = """
        import torch
        import torch.nn as nn
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        netD = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 1, 4, 1, 0)).to(device)
        optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
        for real, _ in loader:
            errD = criterion(netD(real.to(device)).view(-1), labels)
            errD.backward()
            optimizerD.step()
    """
    assert lines(dcgan, "PRC005") == []
    with_head = dcgan.replace("nn.Conv2d(64, 1, 4, 1, 0)", "nn.Flatten(), nn.Linear(64 * 15 * 15, 1)")
    assert lines(with_head, "PRC005") == [7]
