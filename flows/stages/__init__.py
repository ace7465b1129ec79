"""`mesa stage NAME`: one DVC stage, as a Prefect flow (a subflow of the retrain run when there is one).

Each stage reads params.yaml, writes only its own outs (dvc.yaml) and its own metrics file.
Per-shard work is Prefect task mapping, so it shows up per shard on the run's Prefect server.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from components.params import load_params
from flows.prefect_api import run_as_subflow
from flows.settings import record_imported_files

STAGES = ("synth", "ingest", "validate", "captions", "prepare", "vae", "latents", "train", "evaluate")


def stage_flow(name: str):
    """The Prefect flow of stage `name` (imported on demand: a stage loads only its own libraries)."""
    if name not in STAGES:
        raise SystemExit(f"unknown stage {name!r}; stages: {list(STAGES)}")
    return getattr(importlib.import_module(f"flows.stages.{name}"), f"{name}_stage_flow")


RUNNER_KINDS = ("threads", "dask")


def task_runner(params: dict, stage: str):
    """The Prefect task runner for a stage's per-shard tasks, from params ``runner``.

    ``threads`` (default): a thread pool of the stage's own ``workers`` in this process.
    ``dask``: prefect-dask, on the cluster at ``runner.dask_address`` when set, else on a local
    cluster of ``runner.dask_workers`` worker processes started for the stage. The runner never
    changes what a stage writes (it is not a DVC param): only where the shards are computed.
    """
    settings = params.get("runner") or {}
    kind = settings.get("kind", "threads")
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=int((params.get(stage) or {}).get("workers", 1)))
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.get("dask_address"):
            return DaskTaskRunner(address=str(settings["dask_address"]))
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(settings.get("dask_workers", 2)),
                                              "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    raise SystemExit(f"params runner.kind is {kind!r}; choose one of {list(RUNNER_KINDS)}")


def run_stage(name: str, project_dir: str | Path) -> object:
    """Run stage `name` in `project_dir` (as a subflow of the retrain run when started by one)."""
    flow = stage_flow(name).with_options(task_runner=task_runner(load_params(project_dir), name))
    try:
        return run_as_subflow(flow, project_dir=str(project_dir))
    finally:
        # MESA_RECORD_IMPORTS: what this stage process imported, held against dvc.yaml's code deps.
        record_imported_files(name)
