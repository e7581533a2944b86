"""Observability rules: each fires on a bad trainer and stays quiet on the idiomatic fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

from l0helpers import findings, lines

from pytest_spml.l0.registry import load_rules

OBS = ("OBS001", "OBS002", "OBS003", "OBS004", "OBS005", "OBS006", "OBS007", "OBS008")

# nanoGPT-style: JSONL every `log_interval` steps through a same-file helper (loss, grad norm, lr, step time),
# every generator seeded, checkpoints every `args.ckpt_interval` steps, periodic prints.
CLEAN = """
    import argparse
    import json
    import math
    import random
    import time

    import numpy as np
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--ckpt-interval", type=int, default=1000)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    log_file = open("metrics.jsonl", "a")


    def log_metrics(step, **metrics):
        log_file.write(json.dumps({"step": step, **metrics}) + "\\n")
        log_file.flush()


    def get_lr(step):
        if step < args.warmup:
            return args.lr * step / args.warmup
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * step / args.max_steps))


    model = GPT(config).to("cuda")
    step = 0
    t0 = time.perf_counter()
    while step < args.max_steps:
        lr = get_lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro_step in range(args.grad_accum):
            x, y = get_batch("train")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(x, y)
            (loss / args.grad_accum).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % args.log_interval == 0:
            t1 = time.perf_counter()
            dt = (t1 - t0) / args.log_interval
            t0 = t1
            log_metrics(step, loss=loss.item(), grad_norm=grad_norm.item(), lr=lr, step_time=dt)
            print(f"step {step}: loss {loss.item():.4f}, {dt * 1000:.1f} ms")
        if step % args.ckpt_interval == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                       "ckpt.pt")
"""

# The smallest trainer that gets every observability finding.
BARE = textwrap.dedent("""
    import torch

    for epoch in range(10):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
""")


def obs(source: str) -> list[str]:
    return sorted({f.rule for f in findings(source) if f.rule.startswith("OBS")})


def test_clean_trainer_is_quiet() -> None:
    assert obs(CLEAN) == []


def test_project_example_is_quiet() -> None:
    source = (Path(__file__).parents[2] / "examples" / "mnist-mlp" / "train.py").read_text()
    assert obs(source) == []


def test_bare_trainer_gets_every_finding_once_at_the_training_loop() -> None:
    found = [f for f in findings(BARE) if f.rule.startswith("OBS")]
    assert sorted(f.rule for f in found) == ["OBS001", "OBS002", "OBS003", "OBS004", "OBS005", "OBS006", "OBS008"]
    assert {f.line for f in found} == {5}  # file-level findings sit at the first training loop
    assert all(f.severity == "error" and f.category == "observability" for f in found)


# torchvision's reference scripts: metrics go through a MetricLogger defined in another file.
METRIC_LOGGER = """
    import time
    import torch
    import utils

    def train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args):
        metric_logger = utils.MetricLogger(delimiter="  ")
        for image, target in metric_logger.log_every(data_loader, args.print_freq, f"Epoch: [{epoch}]"):
            start_time = time.time()
            loss = criterion(model(image.to(device)), target.to(device))
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
            metric_logger.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm)
            metric_logger.meters["img/s"].update(image.shape[0] / (time.time() - start_time))

    def main(args):
        torch.manual_seed(args.seed)
        for epoch in range(args.start_epoch, args.epochs):
            train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args)
            with torch.no_grad():
                out = torch.utils.checkpoint.checkpoint(model, sample)  # activation checkpointing: no save
            utils.save_on_master({"model": model.state_dict(), "epoch": epoch}, f"{args.output_dir}/ckpt.pth")
"""


def test_metric_logger_collectors_count_as_logging() -> None:
    assert obs(METRIC_LOGGER) == []


def test_image_samples_and_activation_checkpoints_are_not_checkpoints() -> None:
    source = textwrap.dedent(METRIC_LOGGER).replace(
        'utils.save_on_master({"model": model.state_dict(), "epoch": epoch}, f"{args.output_dir}/ckpt.pth")',
        'torchvision.utils.save_image(out, f"{args.output_dir}/sample_{epoch}.png")')
    assert "no checkpoint" in findings(source, "OBS006")[0].message


def test_files_that_do_not_train_are_quiet() -> None:
    library = """
        import torch

        def train_step(model, batch, optimizer):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            return loss

        def evaluate(model, loader):
            for x, y in loader:
                print(model(x).argmax(-1).eq(y).float().mean())
    """
    assert obs(library) == []


def test_every_rule_is_registered_with_its_doc() -> None:
    rules = load_rules()
    for rule_id in OBS:
        rule = rules[rule_id]
        assert rule.category == "observability" and rule.default_severity == "error"
        assert rule.doc.what and rule.doc.why and rule.doc.bad and rule.doc.fix


# ---------------------------------------------------------------- OBS001

def test_obs001_loss_never_logged() -> None:
    bad = """
        import torch
        for step, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                print(f"step {step}")
    """
    assert lines(bad, "OBS001") == [3]


def test_obs001_follows_names_into_dicts_and_helpers() -> None:
    through_dict = """
        import json
        for step, (x, y) in enumerate(loader):
            out = model(x, labels=y)
            out.loss.backward()
            optimizer.step()
            record = {"step": step}
            record["train"] = out.loss.item()
            if step % 10 == 0:
                fh.write(json.dumps(record) + "\\n")
    """
    assert lines(through_dict, "OBS001") == []
    through_helper = """
        import json

        def log_metrics(step, **m):
            with open("m.jsonl", "a") as f:
                json.dump({"step": step, **m}, f)

        for step, (x, y) in enumerate(loader):
            objective = model(x, y)
            objective.backward()
            optimizer.step()
            if step % 10 == 0:
                log_metrics(step, objective=objective.item())
    """
    assert lines(through_helper, "OBS001") == []
    accumulated = """
        for epoch in range(10):
            running = 0.0
            for x, y in loader:
                l = model(x, y)
                l.backward()
                optimizer.step()
                running += l.item()
            logger.info("epoch %d: %.4f", epoch, running / len(loader))
    """
    assert lines(accumulated, "OBS001") == []


def test_obs001_accelerator_backward_takes_the_loss_as_argument() -> None:
    bad = """
        for step, batch in enumerate(train_dataloader):
            outputs = model(**batch)
            accelerator.backward(outputs.loss)
            optimizer.step()
            if step % 100 == 0:
                accelerator.print(f"step {step} on {accelerator.device}")
    """
    assert lines(bad, "OBS001") == [2]
    good = bad.replace('f"step {step} on {accelerator.device}"', 'step, outputs.loss.item()')
    assert lines(good, "OBS001") == []


def test_obs001_a_log_of_something_else_does_not_count() -> None:
    bad = """
        import math
        for step, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            probs = model(x).softmax(-1).log()
            if step % 100 == 0:
                writer.add_scalar("accuracy", acc, step)
                print(math.log(step + 1))
    """
    assert lines(bad, "OBS001") == [3]


# ---------------------------------------------------------------- OBS002

def test_obs002_no_step_time() -> None:
    bad = """
        import time
        start = time.time()
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                print(f"step {step} loss {loss.item():.3f}")
        total = time.time() - start
    """
    assert lines(bad, "OBS002") == [4]


def test_obs002_quiet_with_timer_throughput_or_progress_bar() -> None:
    timed = """
        import time
        for step, (x, y) in enumerate(loader):
            t = time.perf_counter()
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                wandb.log({"loss": loss.item(), "tokens_per_sec": x.numel() / (time.perf_counter() - t)})
    """
    assert lines(timed, "OBS002") == []
    cuda_events = """
        import torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for step, (x, y) in enumerate(loader):
            start.record()
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            end.record()
            if step % 100 == 0:
                torch.cuda.synchronize()
                logger.info("loss %.3f step %.1f", loss.item(), start.elapsed_time(end))
    """
    assert lines(cuda_events, "OBS002") == []
    bar = """
        from tqdm import tqdm
        for x, y in tqdm(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
    """
    assert lines(bar, "OBS002") == []


# ---------------------------------------------------------------- OBS003

def test_obs003_no_gradient_norm() -> None:
    assert lines(BARE, "OBS003") == [5]
    value_clip = BARE.replace("optimizer.step()", "torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)\n"
                              "        optimizer.step()")
    assert lines(value_clip, "OBS003") == [5]  # clipping values computes no norm


def test_obs003_a_clipped_norm_that_is_thrown_away() -> None:
    clipped = BARE.replace("optimizer.step()", "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                           "        optimizer.step()")
    (finding,) = findings(clipped, "OBS003")
    assert "`torch.nn.utils.clip_grad_norm_` returns (line 9) is thrown away" in finding.message


def test_obs003_quiet_when_the_norm_is_logged() -> None:
    clipped = BARE.replace("optimizer.step()", "gn = accelerator.clip_grad_norm_(model.parameters(), 1.0)\n"
                           "        optimizer.step()\n"
                           "        accelerator.log({'g': gn.item()})")
    assert lines(clipped, "OBS003") == []
    explicit = BARE.replace("optimizer.step()", "optimizer.step()\n"
                            "        total = sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5\n"
                            "        if epoch % 10 == 0:\n"
                            "            writer.add_scalar('train/gnorm', total, epoch)")
    assert lines(explicit, "OBS003") == []


# ---------------------------------------------------------------- OBS004

def test_obs004_no_learning_rate() -> None:
    bad = """
        import torch
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=1000)
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if step % 100 == 0:
                print(f"step {step} loss {loss.item():.3f}")
    """
    assert lines(bad, "OBS004") == [4]


def test_obs004_quiet_with_lr_read_back_or_logged() -> None:
    read_back = """
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                print(step, loss.item(), optimizer.param_groups[0]["lr"])
    """
    assert lines(read_back, "OBS004") == []
    named = """
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            current = schedule(step)
            if step % 100 == 0:
                wandb.log({"train/learning_rate": current, "loss": loss.item()})
    """
    assert lines(named, "OBS004") == []


# ---------------------------------------------------------------- OBS005

def test_obs005_names_the_missing_seeds() -> None:
    bad = """
        import random
        import numpy as np
        import torch
        torch.manual_seed(0)
        random.shuffle(files)
        rng = np.random.default_rng()  # seeded from the OS: not reproducible
        for x, y in loader:
            loss = model(x, y)
            loss.backward()
            optimizer.step()
    """
    (finding,) = findings(bad, "OBS005")
    assert finding.line == 8
    assert "`random.seed(seed)`" in finding.message and "`np.random.seed(seed)`" in finding.message
    assert "torch.manual_seed" not in finding.message
    assert "`torch.manual_seed(seed)`" in findings(BARE, "OBS005")[0].message


def test_obs005_quiet_with_helpers_and_only_for_generators_the_file_draws_from() -> None:
    lightning = BARE.replace("import torch", "import torch\nimport lightning as L\nL.seed_everything(42)")
    assert lines(lightning, "OBS005") == []
    local_helper = """
        import random
        import numpy as np
        import torch

        def set_seed(seed):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)

        set_seed(args.seed)
        idx = np.random.permutation(len(ds))
        for x, y in loader:
            loss = model(x, y)
            loss.backward()
            optimizer.step()
    """
    assert lines(local_helper, "OBS005") == []
    # nanoGPT: numpy only reads the token file, batches are drawn with torch.randint.
    numpy_for_arrays = BARE.replace("import torch", "import numpy as np\nimport random\nimport torch\n"
                                    "torch.manual_seed(1337)\ndata = np.memmap('train.bin', dtype=np.uint16)")
    assert lines(numpy_for_arrays, "OBS005") == []


def test_obs005_cuda_seed_alone_leaves_the_cpu_generator() -> None:
    cuda_only = BARE.replace("import torch", "import torch\ntorch.cuda.manual_seed_all(0)")
    assert "`torch.manual_seed(seed)`" in findings(cuda_only, "OBS005")[0].message


def test_obs005_an_incomplete_local_helper_does_not_count() -> None:
    bad = """
        import random
        import torch

        def set_seed(seed):
            torch.manual_seed(seed)

        set_seed(0)
        for x, y in loader:
            if random.random() < 0.5:
                x = x.flip(-1)
            loss = model(x, y)
            loss.backward()
            optimizer.step()
    """
    (finding,) = findings(bad, "OBS005")
    assert "`random.seed(seed)`" in finding.message and "torch" not in finding.message


# ---------------------------------------------------------------- OBS006

def test_obs006_no_checkpoint_at_all() -> None:
    assert lines(BARE, "OBS006") == [5]
    assert "no checkpoint" in findings(BARE, "OBS006")[0].message


def test_obs006_checkpoint_only_at_the_end() -> None:
    bad = BARE + "torch.save(model.state_dict(), 'final.pt')\n"
    (finding,) = findings(bad, "OBS006")
    assert finding.line == 5 and "only after training (line 10)" in finding.message


def test_obs006_literal_interval() -> None:
    bad = """
        import torch
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if step > 0 and step % 5000 == 0:
                torch.save(model.state_dict(), f"ckpt_{step}.pt")
    """
    (finding,) = findings(bad, "OBS006")
    assert finding.line == 3 and "literal 5000 (line 8)" in finding.message
    through_helper = """
        import torch

        def save_checkpoint(path):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)

        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if (step + 1) % 500 == 0:
                save_checkpoint("ckpt.pt")
    """
    assert "literal 500" in findings(through_helper, "OBS006")[0].message


def test_obs006_quiet_with_configurable_or_per_epoch_checkpoints() -> None:
    per_epoch = """
        import torch

        def train_one_epoch(model, loader):
            for x, y in loader:
                loss = model(x, y)
                loss.backward()
                optimizer.step()

        class Trainer:
            def save(self):
                self.accelerator.save(self.model.state_dict(), "ckpt.pt")

            def fit(self):
                for epoch in range(self.epochs):
                    train_one_epoch(self.model, self.loader)
                    self.save()
    """
    assert lines(per_epoch, "OBS006") == []
    named_constant = """
        import torch
        SAVE_EVERY = 2000  # a setting at the top of the script (nanoGPT style)
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if step % SAVE_EVERY == 0:
                model.save_pretrained(out_dir)
    """
    assert lines(named_constant, "OBS006") == []


# ---------------------------------------------------------------- OBS007

def test_obs007_logging_on_every_step() -> None:
    bad = """
        import wandb
        for epoch in range(10):
            for step, (x, y) in enumerate(loader):
                loss = model(x, y)
                loss.backward()
                optimizer.step()
                wandb.log({"loss": loss.item()})
                with timer:
                    writer.add_scalar("loss", loss.item(), step)
                if step % 100 == 0:
                    print(f"step {step}")
            print(f"epoch {epoch} done")  # once per epoch is fine
    """
    (finding,) = findings(bad, "OBS007")
    assert finding.line == 4 and "line 8, 10" in finding.message


def test_obs007_outer_step_loop_of_gradient_accumulation() -> None:
    bad = """
        while step < max_steps:
            for micro_step in range(grad_accum_steps):
                loss = model(*get_batch())
                (loss / grad_accum_steps).backward()
            optimizer.step()
            print(f"step {step} loss {loss.item():.4f}")
            step += 1
    """
    assert lines(bad, "OBS007") == [3]


def test_obs007_unconditional_helper_counts_a_self_gating_one_does_not() -> None:
    bad = """
        import json

        def log_metrics(step, **m):
            json.dump({"step": step, **m}, fh)

        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            log_metrics(step, loss=loss.item())
    """
    assert lines(bad, "OBS007") == [7]
    gated = textwrap.dedent(bad).replace("    json.dump",
                                         "    if step % args.log_every:\n        return\n    json.dump")
    assert lines(gated, "OBS007") == []


def test_obs007_quiet_under_conditions_and_for_progress_bars() -> None:
    good = """
        from tqdm import tqdm
        pbar = tqdm(loader)
        for step, (x, y) in enumerate(pbar):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            pbar.set_postfix(loss=f"{loss.item():.3f}")  # tqdm rate-limits its own refresh
            if torch.isnan(loss):
                logger.error("NaN loss at step %d", step)
            if step % args.log_every == 0 and rank == 0:
                logger.info("step %d loss %.4f", step, loss.item())
            logger.debug("step %d done", step)  # off unless asked for
    """
    assert lines(good, "OBS007") == []


def test_obs007_epoch_loop_calling_a_training_function_is_not_a_step_loop() -> None:
    good = """
        def train_one_epoch(model, loader):
            for x, y in loader:
                loss = model(x, y)
                loss.backward()
                optimizer.step()
            return loss.item()

        for epoch in range(10):
            avg = train_one_epoch(model, loader)
            print(f"epoch {epoch}: loss {avg:.4f}")
    """
    assert lines(good, "OBS007") == []


# ---------------------------------------------------------------- OBS008

def test_obs008_silent_trainer() -> None:
    bad = BARE + "print('done')\n"  # after training: not progress
    assert lines(bad, "OBS008") == [5]
    only_files = """
        import json
        for step, (x, y) in enumerate(loader):
            loss = model(x, y)
            loss.backward()
            optimizer.step()
            if step % 10 == 0:
                fh.write(json.dumps({"loss": loss.item()}) + "\\n")
    """
    assert lines(only_files, "OBS008") == [3]


def test_obs008_quiet_with_a_bar_or_prints_around_the_loop() -> None:
    rich_bar = BARE.replace("import torch", "import torch\nfrom rich.progress import track")
    assert lines(rich_bar, "OBS008") == []
    per_epoch = BARE + "    print(f'epoch {epoch}: {loss.item():.4f}')\n"
    assert lines(per_epoch, "OBS008") == []
