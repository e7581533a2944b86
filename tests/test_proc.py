"""Process groups: a stop reaches every process a command forked, not only the first."""

from __future__ import annotations

import signal
import sys
import time

from helpers import pid_alive

from pytest_spml import proc


def test_terminate_reaches_forked_workers(tmp_path):
    pidfile = tmp_path / "worker.pid"
    # the shell forks a worker that ignores nothing special; the leader just waits
    child = proc.spawn(f"{sys.executable} -c 'import time; time.sleep(60)' & echo $! > {pidfile}; wait",
                       log=tmp_path / "out.log")
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker = int(pidfile.read_text())
    code = proc.terminate(child, grace=5)
    assert proc.signal_of(code) == signal.SIGTERM
    deadline = time.monotonic() + 5
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(worker)


def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path):
    ready = tmp_path / "ready"
    script = ("import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    child = proc.spawn([sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    code = proc.terminate(child, grace=0.5)
    assert proc.signal_of(code) == signal.SIGKILL
    assert proc.describe_exit(code) == "killed by SIGKILL (exit 137)"


def test_log_is_appended_not_replaced(tmp_path):
    log = tmp_path / "logs" / "train.log"
    for word in ("first", "second"):
        assert proc.spawn(f"echo {word}", log=log).wait() == 0
    assert log.read_text().split() == ["first", "second"]


def test_describe_exit():
    assert proc.describe_exit(0) == "exit 0"
    assert proc.describe_exit(1) == "exit 1"
    assert proc.describe_exit(-9) == "killed by SIGKILL (exit 137)"
    assert proc.describe_exit(143) == "killed by SIGTERM (exit 143)"
    assert proc.describe_exit(None) == "still running"
    assert proc.signal_of(2) is None


def test_terminate_after_exit_is_harmless():
    child = proc.spawn("exit 3")
    assert child.wait() == 3
    assert proc.terminate(child, grace=0.1) == 3
