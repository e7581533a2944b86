"""How a run ended, from its exit status and the tail of its console log (watch/failures.py)."""

from __future__ import annotations

import signal

import pytest

from pytest_spml.watch import failures
from pytest_spml.watch.failures import CLEAN, CODE, ENVIRONMENT, UNKNOWN, classify, find_tracebacks

USER_BUG = """\
step 120 loss 0.4312
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 88, in <module>
    main()
  File "/home/alice/proj/train.py", line 61, in main
    momentum = config["momentum"]
               ~~~~~~^^^^^^^^^^^^
KeyError: 'momentum'
"""

LIBRARY_RAISED = """\
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 70, in train_step
    logits = model(x)
  File "/opt/conda/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1532, in _wrapped_call_impl
    return self._call_impl(*args, **kwargs)
  File "/opt/conda/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 116, in forward
    return F.linear(input, self.weight, self.bias)
RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x784 and 512x10)
"""

ONLY_LIBRARY = """\
Traceback (most recent call last):
  File "/usr/lib/python3.11/multiprocessing/resource_tracker.py", line 209, in main
    cache[rtype].remove(name)
  File "/usr/lib/python3.11/multiprocessing/util.py", line 300, in _run_finalizers
    finalizer()
AttributeError: 'NoneType' object has no attribute 'close'
"""

ENOSPC_IN_USER_CODE = """\
step 4000 saving checkpoint
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 140, in save_checkpoint
    torch.save(state, path)
  File "/opt/conda/lib/python3.11/site-packages/torch/serialization.py", line 628, in save
    with _open_zipfile_writer(f) as opened_zipfile:
RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos 1234 vs 5678
During handling of the above exception, another exception occurred:
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 142, in save_checkpoint
    f.write(blob)
OSError: [Errno 28] No space left on device
"""

NCCL_TIMEOUT = """\
[rank1]:[E ProcessGroupNCCL.cpp:563] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1234, \
OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600023 milliseconds before timing out.
[rank1]:[E ProcessGroupNCCL.cpp:577] [Rank 1] Some NCCL operations have failed or timed out. Due to the asynchronous \
nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.
[rank1]:[E ProcessGroupNCCL.cpp:583] [Rank 1] To avoid data inconsistency, we are taking the entire process down.
terminate called after throwing an instance of 'c10::DistBackendError'
E0315 12:00:00.000000 140 torch/distributed/elastic/multiprocessing/api.py:826] failed (exitcode: -6) local_rank: 1 \
(pid: 1234) of binary: /usr/bin/python
Traceback (most recent call last):
  File "/usr/bin/torchrun", line 8, in <module>
    sys.exit(main())
  File "/usr/lib/python3/dist-packages/torch/distributed/run.py", line 879, in main
    run(args)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 1234)
  traceback : Signal 6 (SIGABRT) received by PID 1234
============================================================
"""

# rank 0 has a bug; rank 1 then waits in a collective until NCCL's watchdog gives up: the bug is the cause
RANK_BUG_THEN_NCCL = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/work/proj/train.py", line 52, in <module>
[rank0]:     loss = criterion(out, batch["label"])
[rank0]: KeyError: 'label'
[rank1]:[E ProcessGroupNCCL.cpp:563] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, \
OpType=ALLREDUCE) ran for 1800000 milliseconds before timing out.
"""

XID_79 = """\
step 91000 loss 2.113
[Tue Mar 12 03:14:07 2024] NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, GPU has fallen off the bus.
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 77, in <module>
    loss.backward()
  File "/opt/conda/lib/python3.11/site-packages/torch/_tensor.py", line 522, in backward
    torch.autograd.backward(
RuntimeError: CUDA error: unspecified launch failure
"""

ECC = """\
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 80, in <module>
    optimizer.step()
RuntimeError: CUDA error: uncorrectable ECC error encountered
CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
"""

DATALOADER_OOM = """\
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 40, in <module>
    for batch in loader:
  File "/opt/conda/lib/python3.11/site-packages/torch/utils/data/_utils/signal_handling.py", line 66, in handler
    _error_if_any_worker_fails()
RuntimeError: DataLoader worker (pid 5150) is killed by signal: Killed.
"""

NAN_INPUT = """\
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 33, in <module>
    check_batch(x)
  File "/home/alice/proj/train.py", line 12, in check_batch
    raise ValueError("input batch contains NaN values at index 17")
ValueError: input batch contains NaN values at index 17
"""

TORN_CHECKPOINT = """\
Traceback (most recent call last):
  File "/home/alice/proj/train.py", line 20, in <module>
    state = torch.load(args.resume)
  File "/opt/conda/lib/python3.11/site-packages/torch/serialization.py", line 1004, in load
    with _open_zipfile_reader(opened_file) as opened_zipfile:
RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory
"""


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_exit_137_without_a_line_is_an_external_kill() -> None:
    # the kernel's OOM killer leaves nothing in the run's own log; a shell reports 128 + 9
    for code in (137, -signal.SIGKILL):
        failure = classify(code, lines("step 10 loss 0.5\nstep 11 loss 0.49"))
        assert (failure.kind, failure.category) == ("external_signal", ENVIRONMENT)
        assert failure.restartable and "out-of-memory killer" in failure.summary and "exit 137" in failure.summary


def test_oom_killer_lines_name_the_oom_kill() -> None:
    log = "step 10\n[ 8123.4412] Out of memory: Killed process 4242 (python) total-vm:81234kB, anon-rss:7999kB\nKilled"
    failure = classify(137, lines(log))
    assert (failure.kind, failure.category) == ("oom_kill", ENVIRONMENT)
    assert failure.evidence == ("[ 8123.4412] Out of memory: Killed process 4242 (python) total-vm:81234kB, "
                                "anon-rss:7999kB",)


def test_shell_killed_line_with_exit_137() -> None:
    failure = classify(137, lines("step 3 loss 1.0\nKilled"))
    assert (failure.kind, failure.category) == ("killed", ENVIRONMENT)
    assert failure.evidence == ("Killed",)


def test_dataloader_worker_killed_is_the_environment_though_raised_through_user_code() -> None:
    failure = classify(1, lines(DATALOADER_OOM))
    assert (failure.kind, failure.category) == ("oom_kill", ENVIRONMENT)
    assert "RuntimeError: DataLoader worker (pid 5150) is killed by signal: Killed." in failure.evidence


def test_external_sigterm_is_environment_but_our_own_stop_is_not() -> None:
    assert classify(-signal.SIGTERM, []).kind == "external_signal"
    assert classify(-signal.SIGTERM, []).restartable
    ours = classify(-signal.SIGTERM, [], stopped_by_us=True)
    assert (ours.kind, ours.category) == ("stopped", CLEAN) and not ours.restartable


def test_nccl_watchdog_timeout_under_torchrun() -> None:
    failure = classify(1, lines(NCCL_TIMEOUT))
    assert (failure.kind, failure.category) == ("nccl_timeout", ENVIRONMENT)
    assert any("Watchdog caught collective operation timeout" in e for e in failure.evidence)


def test_a_rank_bug_wins_over_the_nccl_timeout_it_causes() -> None:
    failure = classify(1, lines(RANK_BUG_THEN_NCCL))
    assert (failure.kind, failure.category) == ("python_error", CODE)
    assert failure.location == "/work/proj/train.py:52 in <module>"
    assert "KeyError: 'label'" in failure.evidence


@pytest.mark.parametrize("text, evidence", [
    (XID_79, "NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, GPU has fallen off the bus."),
    (ECC, "RuntimeError: CUDA error: uncorrectable ECC error encountered"),
])
def test_gpu_hardware_errors(text: str, evidence: str) -> None:
    failure = classify(1, lines(text))
    assert (failure.kind, failure.category) == ("gpu_hardware", ENVIRONMENT)
    assert any(evidence in e for e in failure.evidence)


def test_enospc_raised_in_user_code_is_a_full_disk() -> None:
    failure = classify(1, lines(ENOSPC_IN_USER_CODE))
    assert (failure.kind, failure.category) == ("disk_full", ENVIRONMENT)
    assert "OSError: [Errno 28] No space left on device" in failure.evidence
    assert failure.summary == "the disk is full (exit 1)"


def test_traceback_from_user_code_is_a_code_bug_with_its_lines() -> None:
    failure = classify(1, lines(USER_BUG))
    assert (failure.kind, failure.category) == ("python_error", CODE)
    assert not failure.restartable
    assert failure.location == "/home/alice/proj/train.py:61 in main"
    assert failure.details["innermost_is_user"] is True
    assert failure.evidence[0] == "Traceback (most recent call last):"
    assert failure.evidence[-1] == "KeyError: 'momentum'"
    assert '  File "/home/alice/proj/train.py", line 61, in main' in failure.evidence
    assert "step 120 loss 0.4312" not in failure.evidence


def test_error_raised_in_a_library_frame_points_at_the_user_caller() -> None:
    failure = classify(1, lines(LIBRARY_RAISED))
    assert (failure.kind, failure.category) == ("python_error", CODE)
    assert failure.details["innermost_is_user"] is False
    assert failure.details["raised_in"].startswith("/opt/conda/lib/python3.11/site-packages/torch/nn/modules/linear.py")
    assert failure.location == "/home/alice/proj/train.py:70 in train_step"
    assert "raised in library code" in failure.summary


def test_traceback_without_any_user_frame_is_reported_not_blamed() -> None:
    failure = classify(1, lines(ONLY_LIBRARY))
    assert (failure.kind, failure.category) == ("library_error", UNKNOWN)
    assert not failure.restartable


def test_nan_in_inputs_is_a_code_bug() -> None:
    failure = classify(1, lines(NAN_INPUT))
    assert (failure.kind, failure.category) == ("nan_input", CODE)
    assert "ValueError: input batch contains NaN values at index 17" in failure.evidence


def test_load_error_is_a_checkpoint_problem_only_when_resuming() -> None:
    resumed = classify(1, lines(TORN_CHECKPOINT), resumed_from="/ckpt/ckpt_000400.pt")
    assert (resumed.kind, resumed.category) == ("checkpoint_load", ENVIRONMENT)
    assert resumed.details == {"checkpoint": "/ckpt/ckpt_000400.pt"}
    fresh = classify(1, lines(TORN_CHECKPOINT))
    assert (fresh.kind, fresh.category) == ("python_error", CODE)


def test_clean_and_unknown_exits() -> None:
    assert classify(0, lines(USER_BUG)).category == CLEAN  # a traceback it caught and printed does not matter
    unknown = classify(3, lines("step 1\nstep 2\nbye"))
    assert (unknown.kind, unknown.category) == ("unknown_exit", UNKNOWN)
    assert unknown.evidence[-1] == "bye"
    assert classify(None, []).summary.startswith("the process ended (exit status unknown)")


def test_chained_tracebacks_are_found_separately() -> None:
    found = find_tracebacks(lines(ENOSPC_IN_USER_CODE))
    assert [tb.exception for tb in found] == [
        "RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos 1234 vs 5678",
        "OSError: [Errno 28] No space left on device"]


def test_hang_and_metric_stop() -> None:
    hang = failures.hang("no new record for 700s, more than 600s")
    assert (hang.kind, hang.category) == ("hang", ENVIRONMENT)
    from pytest_spml.watch.model import Anomaly

    stop = failures.metric_stop("step 80: nan_inf", [
        Anomaly("nan_inf", 80, "loss is nan at step 80", evidence={"line": "metrics.jsonl:80"}),
        Anomaly("plateau", 50, "flat", severity="mild")])
    assert (stop.kind, stop.category) == ("metric_trend", CODE)
    assert stop.evidence == ("nan_inf at step 80: loss is nan at step 80 [metrics.jsonl:80]",)


def test_read_tail_reads_only_this_attempt(tmp_path) -> None:
    log = tmp_path / "train.log"
    log.write_text("old attempt\nTraceback (most recent call last):\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("new attempt\nstep 1\n")
    assert failures.read_tail(log, start) == ["new attempt", "step 1"]
    assert failures.read_tail(tmp_path / "missing.log") == []
    # a window that starts mid-line drops the partial first line
    assert failures.read_tail(log, 0, limit=8) == ["step 1"]


GLOO_PEER_LOST = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/home/me/proj/train.py", line 52, in <module>
[rank0]:     loss.backward()
[rank0]:   File "/venv/lib/python3.11/site-packages/torch/autograd/graph.py", line 979, in _engine_run_backward
[rank0]:     return Variable._execution_engine.run_backward(
[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:11700: \
Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.
"""
RANK1_RAISED = """\
[rank1]: Traceback (most recent call last):
[rank1]:   File "/home/me/proj/train.py", line 45, in <module>
[rank1]:     raise ValueError("bad shape in the loss")
[rank1]: ValueError: bad shape in the loss
"""
TORCHRUN_RANK_KILLED = """\
E1121 08:44:24.304000 16149 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) \
local_rank: 1 (pid: 16154) of binary: /venv/bin/python
"""


def test_torchrun_rank_that_raised_is_the_bug_not_the_rank_that_lost_its_peer() -> None:
    failure = classify(1, lines(RANK1_RAISED + GLOO_PEER_LOST))
    assert failure.category == CODE and "bad shape in the loss" in failure.summary


def test_torchrun_rank_killed_with_a_peer_lost_traceback_is_an_environment_failure() -> None:
    failure = classify(1, lines(GLOO_PEER_LOST + TORCHRUN_RANK_KILLED))
    assert failure.category == ENVIRONMENT, failure.summary
