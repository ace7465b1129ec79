"""The main job: every DVC stage in order, each a Prefect task, all on one Prefect API.

DVC decides what is stale (a stage whose deps and params did not change is skipped); Prefect
runs, retries and logs. After the stages: `dvc push`, registration of the trained pipeline as a
model version (alias challenger) and the promotion gate (flows/promote.py).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.runtime import task_run

from flows.prefect_api import STAGE_STARTED_ENV, stage_process_env

RETRAIN_LOCK = ".mesa-retrain.lock"  # one retrain per workspace: stages share data/, models/, dvc.lock


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and ends with its last output lines."""


def dvc_stages(project_dir: str | Path) -> list[str]:
    """Stage names in dvc.yaml order (dvc.yaml lists them in the order they run)."""
    spec = yaml.safe_load((Path(project_dir) / "dvc.yaml").read_text()) or {}
    return list((spec.get("stages") or {}).keys())


def stage_changes(project_dir: str | Path, stage: str) -> list:
    """What DVC finds changed for `stage` (its `dvc status --json` entry; [] when up to date)."""
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
    """
    if stage_process_started:
        return "ran"
    if changed_after:
        raise RuntimeError(f"dvc repro neither ran the stage nor made it up to date: {changed_after}")
    return "restored" if changed_before else "skipped"


def _signal_name(returncode: int) -> str:
    import signal

    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


@task(retries=1, retry_delay_seconds=5, task_run_name="stage {stage}")
def run_dvc_stage(stage: str, project_dir: str, force: bool = False) -> dict:
    """`dvc repro --single-item STAGE` in `project_dir`, streaming its output to the Prefect log.

    The command runs in its own process group: stopping the run (SIGTERM, Ctrl-C) stops the stage
    and everything it started, and a kill drill can kill exactly the stage.
    """
    from components.processes import run_streaming

    logger = get_run_logger()
    api_url = current_api_url()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    started = time.perf_counter()
    before = stage_changes(project_dir, stage)
    tail: deque[str] = deque(maxlen=30)

    def show(line: str) -> None:
        tail.append(line)
        logger.info("[%s] %s", stage, line)

    with tempfile.TemporaryDirectory(prefix=f"mesa-stage-{stage}-") as scratch:
        # The stage process touches this file when it starts: DVC's run cache restores outputs
        # without running it, and only this tells the two apart without parsing DVC's text.
        marker = Path(scratch) / "started"
        env = {**stage_process_env(api_url, task_run.id), STAGE_STARTED_ENV: str(marker)}
        returncode = run_streaming(command, cwd=project_dir, env=env, on_line=show)
        process_started = marker.exists()
    if returncode != 0:
        raise StageFailed(f"stage {stage!r} failed (dvc repro {_signal_name(returncode)}). Last output:\n"
                          + "\n".join(tail))
    outcome = stage_outcome(before, process_started, stage_changes(project_dir, stage))
    if outcome != "skipped":
        # repro copies new outputs into the cache; relinking makes the workspace share them
        # (cache.type reflink/hardlink), so the data is on disk once.
        subprocess.run([sys.executable, "-m", "dvc", "checkout", "--relink", "--quiet", stage],
                       cwd=project_dir, check=True, env=stage_process_env(api_url, None))
    return {"stage": stage, "ran": outcome == "ran", "outcome": outcome,
            "changed": before, "seconds": round(time.perf_counter() - started, 1)}


def current_api_url() -> str:
    """The Prefect API this process reports to (the run's server: ephemeral, team or test harness)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RuntimeError("no Prefect API URL is set: run retrain through `mesa retrain` (which starts one) "
                           "or set PREFECT_API_URL")
    return str(url)


@task(retries=2, retry_delay_seconds=10, task_run_name="dvc push")
def push_data_versions(project_dir: str, remote: str | None = None) -> dict:
    """`dvc push`: every output of this run to the DVC remote (the default one, or `remote`)."""
    command = [sys.executable, "-m", "dvc", "push", "--quiet"] + (["--remote", remote] if remote else [])
    done = subprocess.run(command, cwd=project_dir, capture_output=True, text=True,
                          env=stage_process_env(current_api_url(), None))
    if done.returncode != 0:
        raise RuntimeError(f"dvc push{' --remote ' + remote if remote else ''} failed (exit {done.returncode}); "
                           f"the run's data stays in the local cache. Output:\n{done.stdout}{done.stderr}")
    print(f"[versioning] pushed the run's data and models to DVC remote {remote or '(default)'}")
    return {"pushed": True, "remote": remote}


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str, stages: list[str] | None = None, force: bool = False, stage_retries: int = 1,
            lock_wait_s: float = 0.0) -> dict:
    """Run the pipeline's stages in order, then version, register and judge what they made.

    After a full run (no `stages` subset): `dvc push` (params ``versioning``), then the trained
    pipeline is registered with the alias ``challenger`` and the promotion gate runs (params
    ``registry``). A failing stage stops the run before any of that: data versions and the
    registry stay as they were.

    Args:
        project_dir (str): the project (holds dvc.yaml and params.yaml).
        stages (list[str] | None, default None): run only these stages (nothing is registered).
        force (bool, default False): rerun stages even when DVC finds them up to date.
        stage_retries (int, default 1): how often a failed stage is run again (training resumes
            from its last checkpoint); 0 stops at the first failure.
        lock_wait_s (float, default 0): one retrain per workspace; when another holds it, wait up
            to this long for it to finish (0: refuse at once, naming the running one).

    Returns:
        ``{"stages": [{stage, ran, outcome, changed, seconds}], "pushed": {...} | None,
        "registration": {...} | None, "promotion": {...} | None}``; ``outcome`` is ``ran``,
        ``skipped`` (up to date) or ``restored`` (from DVC's run cache).
    """
    from components.locks import exclusive_lock

    with exclusive_lock(Path(project_dir) / RETRAIN_LOCK, purpose="a retrain", wait_s=lock_wait_s, reentrant=True):
        return _retrain_locked(project_dir, stages, force, stage_retries)


def _retrain_locked(project_dir: str, stages: list[str] | None, force: bool, stage_retries: int) -> dict:
    from components.params import load_params
    from flows.promote import promote_challenger, register_trained_model, registry_settings

    names = stages or dvc_stages(project_dir)
    unknown = sorted(set(names) - set(dvc_stages(project_dir)))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; dvc.yaml has {dvc_stages(project_dir)}")
    run_stage = run_dvc_stage.with_options(retries=int(stage_retries))
    outcome: dict = {"stages": [], "pushed": None, "registration": None, "promotion": None}
    for name in names:
        # One after the other: each stage reads what the previous one wrote.
        outcome["stages"].append(run_stage(name, project_dir, force))
    if stages:
        print(f"[retrain] only stages {names} ran: nothing pushed, registered or promoted")
        return outcome
    versioning = load_params(project_dir).get("versioning") or {}
    if versioning.get("push", False):
        outcome["pushed"] = push_data_versions(project_dir, versioning.get("remote"))
    settings = registry_settings(project_dir)
    if settings.get("register", True):
        outcome["registration"] = register_trained_model(project_dir)
    registration = outcome["registration"]
    if registration and registration["new"] and settings.get("promote", True):
        outcome["promotion"] = promote_challenger(project_dir, registration["version"])
    return outcome
