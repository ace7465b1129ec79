"""The main job: every DVC stage in order, each a Prefect task, all on one Prefect API.

DVC decides what is stale (a stage whose deps and params did not change is skipped); Prefect
runs, retries and logs. Later issues add register / evaluate / promote after the stages.
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


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str, stages: list[str] | None = None, force: bool = False) -> list[dict]:
    """Run the pipeline's stages in order; return what each did (ran or skipped, seconds)."""
    names = stages or dvc_stages(project_dir)
    unknown = sorted(set(names) - set(dvc_stages(project_dir)))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; dvc.yaml has {dvc_stages(project_dir)}")
    results = []
    for name in names:
        # One after the other: each stage reads what the previous one wrote.
        results.append(run_dvc_stage(name, project_dir, force))
    return results
