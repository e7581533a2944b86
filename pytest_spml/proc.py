"""Child processes the loop owns: started in their own process group, stopped as a group.

Training commands fork (DataLoader workers, ``torchrun`` ranks, shell
pipelines), so signalling only the direct child leaves orphans holding the
GPU. Every command the watchdog or the round runner starts gets a new session
(its own process group), and stopping it means SIGTERM to the whole group,
a grace period, then SIGKILL to whatever is left. POSIX only, like the rest
of the loop.

Standard library only: this module runs inside long-lived loops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Mapping, Sequence

__all__ = ["spawn", "terminate", "wait", "describe_exit", "signal_of", "group_alive"]


def spawn(command: str | Sequence[str], *, cwd: str | os.PathLike | None = None,
          env: Mapping[str, str] | None = None, log: str | os.PathLike | None = None,
          stdout: int | IO | None = None) -> subprocess.Popen:
    """Start ``command`` in a new process group.

    A string runs through ``/bin/sh -c`` (commands come from protocols and
    config files, written the way users type them); a sequence runs as is.
    With ``log``, stdout and stderr are appended to that file (created with
    its folder), so a restarted run extends its log instead of replacing it.
    """
    shell = isinstance(command, str)
    out: int | IO | None = stdout
    handle = None
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        handle = open(log, "ab", buffering=0)  # noqa: SIM115 - handed to the child, closed below
        out = handle
    try:
        return subprocess.Popen(
            command, shell=shell, cwd=cwd, env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
    finally:
        if handle is not None:
            handle.close()  # the child holds its own descriptor


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies of our own child excepted)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user: it exists
        return True
    return True


def wait(proc: subprocess.Popen, timeout: float | None) -> int | None:
    """The exit status of ``proc`` within ``timeout`` seconds, or None when it is still running."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def terminate(proc: subprocess.Popen, grace: float = 10.0) -> int:
    """Stop ``proc`` and every process of its group: SIGTERM, ``grace`` seconds, then SIGKILL.

    Returns the leader's exit status. Safe to call on a process that already
    exited: the rest of its group (orphaned workers) is still signalled.
    """
    pgid = proc.pid  # start_new_session made the child a group leader: pgid == pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace)
    code = wait(proc, max(0.0, grace))
    # the leader may be gone while workers it forked still hold resources
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    if code is None:
        code = proc.wait()
    return code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    """``exit 0``, ``exit 1``, ``killed by SIGKILL (exit 137)``: how people read exit statuses.

    Popen reports a signal death as a negative code; shells (and ``torchrun``
    wrappers) report it as 128 + signal. Both read the same here.
    """
    if code is None:
        return "still running"
    number = -code if code < 0 else code - 128 if 128 < code < 160 else None
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name} (exit {128 + number})"
    return f"exit {code}"


def signal_of(code: int | None) -> int | None:
    """The signal that ended a process with status ``code`` (negative or 128+N), else None."""
    if code is None:
        return None
    if code < 0:
        return -code
    if 128 < code < 160:
        return code - 128
    return None
