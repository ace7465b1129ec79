"""The main job: every DVC stage in order, each a Prefect task, all on one Prefect API.

DVC decides what is stale (a stage whose deps and params did not change is skipped); Prefect
runs, retries and logs. After the stages: `dvc push`, registration of the trained pipeline as a
model version (alias challenger) and the promotion gate (flows/promote.py).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.runtime import task_run

from flows.prefect_api import stage_process_env

_SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and ends with its last output lines."""


def dvc_stages(project_dir: str | Path) -> list[str]:
    """Stage names in dvc.yaml order (dvc.yaml lists them in the order they run)."""
    spec = yaml.safe_load((Path(project_dir) / "dvc.yaml").read_text()) or {}
    return list((spec.get("stages") or {}).keys())


@task(retries=1, retry_delay_seconds=5, task_run_name="stage {stage}")
def run_dvc_stage(stage: str, project_dir: str, force: bool = False) -> dict:
    """`dvc repro --single-item STAGE` in `project_dir`, streaming its output to the Prefect log."""
    logger = get_run_logger()
    api_url = current_api_url()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=30)
    skipped = False
    with subprocess.Popen(command, cwd=project_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=stage_process_env(api_url, task_run.id)) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            logger.info("[%s] %s", stage, line)
            skipped = skipped or bool(_SKIPPED.search(line))
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage!r} failed (dvc repro exit {proc.returncode}). Last output:\n"
                          + "\n".join(tail))
    if not skipped:
        # repro copies new outputs into the cache; relinking makes the workspace share them
        # (cache.type reflink/hardlink), so the data is on disk once.
        subprocess.run([sys.executable, "-m", "dvc", "checkout", "--relink", "--quiet", stage],
                       cwd=project_dir, check=True, env=stage_process_env(api_url, None))
    return {"stage": stage, "ran": not skipped, "seconds": round(time.perf_counter() - started, 1)}


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
def retrain(project_dir: str, stages: list[str] | None = None, force: bool = False) -> dict:
    """Run the pipeline's stages in order, then version, register and judge what they made.

    After a full run (no `stages` subset): `dvc push` (params ``versioning``), then the trained
    pipeline is registered with the alias ``challenger`` and the promotion gate runs (params
    ``registry``). A failing stage stops the run before any of that: data versions and the
    registry stay as they were.

    Returns:
        ``{"stages": [{stage, ran, seconds}], "pushed": {...} | None, "registration": {...} | None,
        "promotion": {...} | None}``.
    """
    from components.params import load_params
    from flows.promote import promote_challenger, register_trained_model, registry_settings

    names = stages or dvc_stages(project_dir)
    unknown = sorted(set(names) - set(dvc_stages(project_dir)))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; dvc.yaml has {dvc_stages(project_dir)}")
    outcome: dict = {"stages": [], "pushed": None, "registration": None, "promotion": None}
    for name in names:
        # One after the other: each stage reads what the previous one wrote.
        outcome["stages"].append(run_dvc_stage(name, project_dir, force))
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
