"""Exclusive file locks that say who holds them.

`fcntl.flock` locks belong to the open file: the kernel drops them when the holder exits, even
on SIGKILL, so a killed run never leaves a stale lock behind. The holder writes who it is into
the file, so a second caller can be told which process to wait for.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path


_HELD: dict[str, int] = {}  # reentrant locks this process holds: real path -> depth
_HELD_GUARD = threading.Lock()


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names it and what to do."""


def holder_of(path: str | Path) -> dict:
    """What the current (or last) holder wrote into the lock file, or {} when nothing readable is there."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive_lock(path: str | Path, *, purpose: str, wait_s: float | None = None, poll_s: float = 1.0,
                   reentrant: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the ``with`` block.

    Args:
        path (str | Path): the lock file (created with its folder when missing).
        purpose (str): what the lock guards, for the message a second caller gets.
        wait_s (float | None, default None): None waits as long as it takes; 0 refuses at once;
            otherwise waits up to this many seconds, then refuses.
        poll_s (float, default 1.0): how often a waiting caller tries again.
        reentrant (bool, default False): when this process already holds `path` through a
            reentrant call, enter at once (the CLI holds a retrain's lock around the flow that
            takes it again). Otherwise two holders in one process exclude each other, as two
            processes do (flock locks belong to the open file).

    Raises:
        LockHeld: the lock is held and the wait ran out; names the holder (pid, host, since, command).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    if reentrant:
        with _HELD_GUARD:
            held_here = _HELD.get(key, 0) > 0
            if held_here:
                _HELD[key] += 1
        if held_here:
            try:
                yield
            finally:
                with _HELD_GUARD:
                    _HELD[key] -= 1
            return
    # Opened per call: two threads of one process then exclude each other as two processes do.
    with open(path, "a+") as handle:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(_held_message(path, purpose, wait_s)) from None
                if not announced:
                    print(f"[lock] waiting up to {wait_s:.0f} s: {_describe(holder_of(path))} holds {path}",
                          flush=True)
                    announced = True
                time.sleep(poll_s)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                                     "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     "command": " ".join(sys.argv)}) + "\n")
            handle.flush()
            if reentrant:
                with _HELD_GUARD:
                    _HELD[key] = 1
            yield
        finally:
            if reentrant:
                with _HELD_GUARD:
                    _HELD.pop(key, None)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')}: "
            f"{holder.get('command') or holder.get('purpose')})")


def _held_message(path: Path, purpose: str, wait_s: float) -> str:
    waited = "" if not wait_s else f" after waiting {wait_s:.0f} s"
    return (f"{purpose} is already running in this workspace{waited}: {_describe(holder_of(path))} holds "
            f"{path}. Wait for it to finish (or stop it), or pass a wait time to queue behind it.")
