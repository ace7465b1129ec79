"""Child processes that stop with their parent: own process groups, SIGTERM as an exception.

Schedulers, CI and `timeout` stop a job with SIGTERM, not Ctrl-C. Python's default for SIGTERM
ends the process at once, without `finally` blocks, so the stage subprocesses and the temporary
Prefect server it started would live on as orphans. Here:

- :func:`stop_on_sigterm` turns SIGTERM into :class:`Terminated` (a ``SystemExit``, so cleanup
  code runs and no retry logic mistakes it for a failure);
- :func:`run_streaming` starts a command in its own process group (``start_new_session``), so a
  drill or an operator can kill exactly that command and everything it started, and on any
  interruption of the caller it stops that whole group before re-raising. It is the one helper
  that streams a subprocess's output line by line.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
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


@contextlib.contextmanager
def lifeline(process: subprocess.Popen, what: str) -> Iterator[None]:
    """Within the block, `process` ending on its own ends this process too (children first).

    For a server the process cannot work without: when a whole process group is stopped at once
    (systemd, Ctrl-C in a terminal) the server goes first, and every later report to it would be
    retried for minutes. Leaving the block (and then stopping the server) is the expected end.
    """
    leaving = threading.Event()

    def watch():
        code = process.wait()
        if leaving.is_set():
            return
        print(f"\n{what} ended (exit {code}): stopping this process and what it started", file=sys.stderr,
              flush=True)
        stop_children()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(128 - code if code < 0 else 1)  # killed by signal N: 128 + N, like a shell

    threading.Thread(target=watch, name=f"lifeline {process.pid}", daemon=True).start()
    try:
        yield
    finally:
        leaving.set()


def stop_children(grace_s: float = 2.0) -> None:
    """SIGTERM to every descendant of this process, SIGKILL to those left after `grace_s`."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


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
                  on_line: Callable[[str], None], grace_s: float = GRACE_SECONDS, new_session: bool = True,
                  on_start: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run `command`, pass each non-empty output line (stdout and stderr merged) to `on_line`.

    When the caller is interrupted (SIGTERM via :func:`stop_on_sigterm`, Ctrl-C, a failing
    `on_line`), the command is stopped before the exception goes on: its whole process group when
    it has one of its own, else the command alone.

    Args:
        command (Sequence[str]): the program and its arguments.
        cwd (str | Path): the working directory.
        env (Mapping[str, str] | None, default None): the environment (None: this process's).
        on_line (Callable[[str], None]): gets each line, without its line break.
        grace_s (float, default 5.0): seconds between SIGTERM and SIGKILL when stopping it.
        new_session (bool, default True): start it in a process group of its own, so that a drill
            or an operator can stop exactly it and its children. False keeps it in the caller's
            group, for a command that must get the signals sent to the caller's group (the train
            stage's `accelerate launch`, which is itself the stage's group).
        on_start (Callable[[subprocess.Popen], None] | None, default None): gets the process once
            started (for a caller in another thread that must be able to stop it: an exception in
            the main thread does not reach this one).

    Returns:
        int: the command's exit status (negative: killed by that signal).
    """
    # errors="replace": a tool that prints a non-UTF-8 byte must not end the stream half-way.
    process = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                               start_new_session=new_session)
    try:
        if on_start is not None:
            on_start(process)
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                on_line(line)
        return process.wait()
    except BaseException:
        if new_session:
            stop_process_group(process, grace_s)
        else:
            stop_process(process, grace_s)  # its group is ours: signalling the group would stop the caller too
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()


def stop_process(process: subprocess.Popen, grace_s: float = GRACE_SECONDS) -> None:
    """SIGTERM to `process` alone, SIGKILL after `grace_s` when it still runs; reap it.

    Args:
        process (subprocess.Popen): a child of this process.
        grace_s (float, default 5.0): seconds it gets to exit after SIGTERM.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
