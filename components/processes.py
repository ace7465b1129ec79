"""Child processes that stop with their parent: own process groups, SIGTERM as an exception.

Schedulers, CI and `timeout` stop a job with SIGTERM, not Ctrl-C. Python's default for SIGTERM
ends the process at once, without `finally` blocks, so the stage subprocesses and the temporary
Prefect server it started would live on as orphans. Here:

- :func:`stop_on_sigterm` turns SIGTERM into :class:`Terminated` (a ``SystemExit``, so cleanup
  code runs and no retry logic mistakes it for a failure);
- :func:`run_streaming` starts a command in its own process group (``start_new_session``), so a
  drill or an operator can kill exactly that command and everything it started, and on any
  interruption of the caller it stops that whole group before re-raising.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

GRACE_SECONDS = 5.0  # SIGTERM first, SIGKILL after this: stages get a moment to report a crash


class Terminated(SystemExit):
    """SIGTERM arrived: unwind (running every ``finally``) and exit with 128 + 15."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread.

    Prefect's flow engine installs its own SIGTERM bridge inside flows and, when it unwinds,
    sends the signal again to the handler it found: this one. Outside the main thread (where
    signal handlers cannot be set) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, _frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process_group(process: subprocess.Popen, grace_s: float = GRACE_SECONDS) -> None:
    """SIGTERM to the process group `process` leads, SIGKILL to what is left after `grace_s`; reap it."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        group = process.pid  # the leader has exited; its group may still hold children
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        if _group_gone(group, process, wait_s):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5.0)


def _group_gone(group: int, process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until no process of `group` is left (the leader is reaped meanwhile), or the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def run_streaming(command: Sequence[str], *, cwd: str | Path, env: Mapping[str, str] | None = None,
                  on_line: Callable[[str], None], grace_s: float = GRACE_SECONDS) -> int:
    """Run `command` in a new process group, pass each non-empty output line to `on_line`.

    stdout and stderr are merged. When the caller is interrupted (SIGTERM via
    :func:`stop_on_sigterm`, Ctrl-C, a failing `on_line`), the command's whole process group is
    stopped before the exception goes on.

    Returns:
        int: the command's exit status (negative: killed by that signal).
    """
    process = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                on_line(line)
        return process.wait()
    except BaseException:
        stop_process_group(process, grace_s)
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()
