"""Process groups, SIGTERM handling, workspace locks and how a stage's outcome is read (real processes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from components.locks import LockHeld, exclusive_lock, holder_of
from components.processes import run_streaming

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A shell that starts a grandchild in the background, reports both pids, then waits.
FAMILY = 'sleep 60 & echo "child $$ grandchild $!"; wait'


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_run_streaming_passes_lines_and_returns_the_exit_status(tmp_path):
    lines: list[str] = []
    status = run_streaming(["sh", "-c", "echo one; echo; echo two >&2; exit 3"], cwd=tmp_path, on_line=lines.append)
    assert status == 3 and lines == ["one", "two"]


def test_an_interrupted_caller_stops_the_command_and_everything_it_started(tmp_path):
    pids: dict[str, int] = {}

    def stop_after_first_line(line: str) -> None:
        words = line.split()
        pids.update(child=int(words[1]), grandchild=int(words[3]))
        assert os.getpgid(pids["grandchild"]) == pids["child"] != os.getpgid(0)  # a group of its own
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_streaming(["sh", "-c", FAMILY], cwd=tmp_path, on_line=stop_after_first_line, grace_s=1.0)
    assert _gone(pids["child"]) and _gone(pids["grandchild"])


def test_a_command_kept_in_the_callers_group_is_stopped_alone(tmp_path):
    pids: dict[str, int] = {}

    def stop_after_first_line(line: str) -> None:
        words = line.split()
        pids.update(child=int(words[1]), grandchild=int(words[3]))
        assert os.getpgid(pids["child"]) == os.getpgid(0)  # our group: signals to it reach the command too
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            run_streaming(["sh", "-c", FAMILY], cwd=tmp_path, on_line=stop_after_first_line, grace_s=1.0,
                          new_session=False)
        assert _gone(pids["child"])  # the command, not the group (that would be this test process)
    finally:
        if "grandchild" in pids:
            os.kill(pids["grandchild"], signal.SIGKILL)


def test_output_that_is_not_utf8_does_not_end_the_stream(tmp_path):
    lines: list[str] = []
    assert run_streaming(["sh", "-c", r"printf 'a\377b\nnext\n'"], cwd=tmp_path, on_line=lines.append) == 0
    assert lines == ["a\ufffdb", "next"]


def test_sigterm_unwinds_the_parent_which_stops_its_command_group(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from components.processes import run_streaming, stop_on_sigterm
        with stop_on_sigterm():
            try:
                run_streaming(["sh", "-c", {FAMILY!r}], cwd=".", on_line=lambda line: print(line, flush=True))
            finally:
                print("cleanup ran", flush=True)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    words = parent.stdout.readline().split()
    child, grandchild = int(words[1]), int(words[3])
    parent.send_signal(signal.SIGTERM)
    rest, _ = parent.communicate(timeout=20)
    assert parent.returncode == 128 + signal.SIGTERM and "cleanup ran" in rest
    assert _gone(child) and _gone(grandchild)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import time
        from components.locks import exclusive_lock
        with exclusive_lock({str(path)!r}, purpose="a retrain"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_process_whose_lifeline_ends_stops_its_children_and_exits_with_the_signal(tmp_path):
    # A parent that runs a "server" and a worker under lifeline(server), then waits forever.
    script = textwrap.dedent("""
        import subprocess, sys, time
        from components.processes import lifeline
        server = subprocess.Popen(["sleep", "60"])
        worker = subprocess.Popen(["sleep", "60"])
        print(server.pid, worker.pid, flush=True)
        with lifeline(server, "the test server"):
            time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    server, worker = map(int, parent.stdout.readline().split())
    os.kill(server, signal.SIGTERM)
    assert parent.wait(timeout=15) == 128 + signal.SIGTERM
    assert "the test server ended (exit -15)" in parent.stderr.read()
    assert _gone(worker)


def test_leaving_a_lifeline_first_makes_the_end_of_its_process_expected(tmp_path):
    script = textwrap.dedent("""
        import subprocess
        from components.processes import lifeline
        server = subprocess.Popen(["sleep", "60"])
        with lifeline(server, "the test server"):
            pass
        server.terminate(); server.wait()
        print("still here", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout.strip()) == (0, "still here")


def test_a_held_lock_refuses_at_once_naming_its_holder(tmp_path):
    path = tmp_path / ".mesa-retrain.lock"
    holder = _hold_lock(path, 30)
    try:
        with pytest.raises(LockHeld, match=rf"a retrain is already running in this workspace: process {holder.pid} "):
            with exclusive_lock(path, purpose="a retrain", wait_s=0):
                pass
        assert holder_of(path)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: no stale lock to clean up by hand.
    with exclusive_lock(path, purpose="a retrain", wait_s=0):
        assert holder_of(path)["pid"] == os.getpid()


def test_a_waiting_caller_gets_the_lock_when_the_holder_finishes(tmp_path):
    path = tmp_path / "lock"
    holder = _hold_lock(path, 1.5)
    started = time.monotonic()
    with exclusive_lock(path, purpose="a retrain", wait_s=30, poll_s=0.1):
        assert time.monotonic() - started > 0.5
    holder.wait()


def test_a_reentrant_lock_lets_its_holder_in_again_and_nobody_else(tmp_path):
    path = tmp_path / "lock"
    with exclusive_lock(path, purpose="a retrain", reentrant=True):
        with exclusive_lock(path, purpose="a retrain", wait_s=0, reentrant=True):
            pass
        with pytest.raises(LockHeld):  # a plain (non-reentrant) caller is still excluded
            with exclusive_lock(path, purpose="a retrain", wait_s=0):
                pass
    with exclusive_lock(path, purpose="a retrain", wait_s=0):
        pass


@pytest.mark.parametrize("before, started, after, expected", [
    ([{"changed deps": {"params.yaml": {"train": "modified"}}}], True, [], "ran"),
    ([], True, [], "ran"),                      # --force
    ([], False, [], "skipped"),
    ([{"changed outs": {"data/raw": "deleted"}}], False, [], "restored"),  # from DVC's run cache
])
def test_a_stage_outcome_comes_from_dvc_status_and_whether_the_stage_ran(before, started, after, expected):
    from components.versioning.stages import stage_outcome

    assert stage_outcome(before, started, after) == expected


def test_a_stage_that_neither_ran_nor_became_up_to_date_is_an_error():
    from components.versioning.stages import stage_outcome

    with pytest.raises(RuntimeError, match="neither ran the stage nor made it up to date"):
        stage_outcome([{"changed deps": {}}], False, [{"changed deps": {}}])
