"""The pipeline's DVC stages as the main job runs them, one `dvc repro --single-item` at a time.

DVC decides what is stale; this module asks it: the stages in dvc.yaml order, what `dvc status`
finds changed for one, how `dvc repro` treated it (``ran``, ``skipped`` as up to date, or
``restored`` from DVC's run cache), `dvc push`, and the data version dvc.lock records. The Prefect
tasks around these calls live in flows/retrain.py.
"""
from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from components.layout import DVC_FILE, DVC_LOCK, SAMPLES_DIR, SYNTH_OUT
from components.processes import run_streaming
from components.versioning.dvc_git import dvc_command


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and ends with its last output lines."""


def dvc_stages(project_dir: str | Path) -> list[str]:
    """Stage names in dvc.yaml order (dvc.yaml lists them in the order they run).

    Args:
        project_dir (str | Path): the project (holds dvc.yaml).
    """
    spec = yaml.safe_load((Path(project_dir) / DVC_FILE).read_text()) or {}
    return list((spec.get("stages") or {}).keys())


def stage_changes(project_dir: str | Path, stage: str) -> list:
    """What DVC finds changed for `stage` (its `dvc status --json` entry; [] when up to date).

    Args:
        project_dir (str | Path): the project.
        stage (str): a stage name of its dvc.yaml.
    """
    from dvc.repo import Repo

    root = Path(project_dir).resolve()
    # An absolute target: DVC resolves targets against the working directory, not the repo.
    with Repo(str(root)) as repo:
        found = repo.status(targets=[f"{root / 'dvc.yaml'}:{stage}"])
    return [change for changes in found.values() for change in changes]


def stage_outcome(changed_before: list, stage_process_started: bool, changed_after: list) -> str:
    """How `dvc repro` treated a stage, from DVC's status before and after and whether its command ran.

    ``ran`` (the stage's command ran), ``skipped`` (up to date: nothing to do) or ``restored``
    (DVC's run cache had outputs for exactly these deps and params: checked out, nothing run).

    Args:
        changed_before (list): :func:`stage_changes` before `dvc repro`.
        stage_process_started (bool): whether the stage's own command started.
        changed_after (list): :func:`stage_changes` after it.

    Raises:
        RuntimeError: the stage neither ran nor became up to date.
    """
    if stage_process_started:
        return "ran"
    if changed_after:
        raise RuntimeError(f"dvc repro neither ran the stage nor made it up to date: {changed_after}")
    return "restored" if changed_before else "skipped"


def exit_description(returncode: int) -> str:
    """``exit 2``, or ``killed by SIGKILL`` for a negative status.

    Args:
        returncode (int): a subprocess's exit status.
    """
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def repro_stage(project_dir: str | Path, stage: str, *, force: bool = False, env: Mapping[str, str],
                started_env: str, on_line: Callable[[str], None], tail_lines: int = 30) -> dict:
    """`dvc repro --single-item STAGE` in `project_dir`, each output line to `on_line`.

    The command runs in its own process group: stopping the caller (SIGTERM, Ctrl-C) stops the
    stage and everything it started, and a kill drill can kill exactly the stage.

    Args:
        project_dir (str | Path): the project.
        stage (str): the stage to run.
        force (bool, default False): rerun it even when DVC finds it up to date.
        env (Mapping[str, str]): the environment of `dvc repro` (and so of the stage).
        started_env (str): the variable that names a file the stage process creates when it starts:
            DVC's run cache restores outputs without running the stage, and only this tells the
            two apart without parsing DVC's text.
        on_line (Callable[[str], None]): gets each output line.
        tail_lines (int, default 30): output lines a failure's message ends with.

    Returns:
        dict: ``{"stage", "ran", "outcome", "changed", "seconds"}``; ``outcome`` as in :func:`stage_outcome`.

    Raises:
        StageFailed: `dvc repro` exited non-zero.
    """
    started = time.perf_counter()
    before = stage_changes(project_dir, stage)
    tail: deque[str] = deque(maxlen=tail_lines)

    def show(line: str) -> None:
        tail.append(line)
        on_line(line)

    with tempfile.TemporaryDirectory(prefix=f"mesa-stage-{stage}-") as scratch:
        marker = Path(scratch) / "started"
        command = dvc_command("repro", "--single-item", stage) + (["--force"] if force else [])
        returncode = run_streaming(command, cwd=project_dir, env={**env, started_env: str(marker)}, on_line=show)
        process_started = marker.exists()
    if returncode != 0:
        raise StageFailed(f"stage {stage!r} failed (dvc repro {exit_description(returncode)}). Last output:\n"
                          + "\n".join(tail))
    outcome = stage_outcome(before, process_started, stage_changes(project_dir, stage))
    if outcome != "skipped":
        relink_outputs(project_dir, stage)
    return {"stage": stage, "ran": outcome == "ran", "outcome": outcome,
            "changed": before, "seconds": round(time.perf_counter() - started, 1)}


def relink_outputs(project_dir: str | Path, stage: str) -> None:
    """`dvc checkout --relink STAGE`, in this process (a `dvc` process would cost a second of start-up
    per stage): `dvc repro` copies new outputs into the cache, and relinking makes the workspace
    share them (cache.type reflink/hardlink), so the data is on disk once."""
    from dvc.repo import Repo

    root = Path(project_dir).resolve()
    with Repo(str(root)) as repo:
        repo.checkout(targets=[f"{root / 'dvc.yaml'}:{stage}"], relink=True)


def push_data(project_dir: str | Path, remote: str | None = None, env: Mapping[str, str] | None = None) -> None:
    """`dvc push`: every output of the workspace to the DVC remote (the default one, or `remote`).

    Args:
        project_dir (str | Path): the project.
        remote (str | None, default None): a remote name of .dvc/config; None: the default remote.
        env (Mapping[str, str] | None, default None): the command's environment (None: this process's).

    Raises:
        RuntimeError: `dvc push` failed (its output is in the message).
    """
    command = dvc_command("push", "--quiet") + (["--remote", remote] if remote else [])
    done = subprocess.run(command, cwd=project_dir, capture_output=True, text=True,
                          env=None if env is None else dict(env))
    if done.returncode != 0:
        raise RuntimeError(f"dvc push{' --remote ' + remote if remote else ''} failed (exit {done.returncode}); "
                           f"the run's data stays in the local cache. Output:\n{done.stdout}{done.stderr}")


def stage_inputs(project_dir: str | Path, stage: str, outputs: Mapping[str, str]) -> list[str]:
    """The DVC outputs (keys of `outputs`, e.g. ``dvc_out_hashes``) that `stage` reads: its deps that
    are outputs, or lie inside one (data/captions/captions.parquet -> data/captions)."""
    spec = yaml.safe_load((Path(project_dir) / DVC_FILE).read_text()) or {}
    deps = [str(d).rstrip("/") for d in ((spec.get("stages") or {}).get(stage) or {}).get("deps") or []]
    return sorted({out for out in outputs for dep in deps if dep == out or dep.startswith(out + "/")})


def unpushed_outputs(project_dir: str | Path, remote: str | None = None) -> list[str]:
    """The workspace's DVC outputs the remote lacks (``dvc status --cloud``; [] when all are pushed).

    Args:
        project_dir (str | Path): the project.
        remote (str | None, default None): a remote name of .dvc/config; None: the default remote.

    Raises:
        RuntimeError: no remote is configured or it cannot be read (DVC's message is in ours).
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(Path(project_dir).resolve())) as repo:
            found = repo.status(cloud=True, remote=remote)
    except DvcException as err:
        raise RuntimeError(f"cannot compare {project_dir}'s outputs with the DVC remote "
                           f"{remote or '(default)'}: {err}") from err
    missing = sorted(path.rstrip("/") for path, state in found.items() if state != "deleted")
    # DVC lists a directory and the files in it: name the directory once
    return [path for path in missing if not any(path.startswith(other + "/") for other in missing)]


def data_version(project_dir: str | Path, raw_dir: str = SYNTH_OUT.as_posix()) -> str:
    """The data a run used, as dvc.lock records it: short hashes of the raw data and the samples.

    Args:
        project_dir (str | Path): the project (holds dvc.lock).
        raw_dir (str, default "data/raw"): params ``data.raw_dir``: synth's out or, with
            ``data.source: ingest``, ingest's.
    """
    lock = Path(project_dir) / DVC_LOCK
    if not lock.exists():
        return "no dvc.lock yet"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    parts = []
    for stage, path in (("synth", SYNTH_OUT.as_posix()), ("ingest", raw_dir), ("prepare", SAMPLES_DIR.as_posix())):
        for out in (stages.get(stage) or {}).get("outs") or []:
            if out.get("path") == path:
                parts.append(f"{path} {out['md5'][:12]}")
    return ", ".join(parts) or "not recorded"
