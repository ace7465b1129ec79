"""`mesa stage NAME`: one DVC stage, as a Prefect flow (a subflow of the retrain run when there is one).

Each stage reads params.yaml, writes only its own outs (dvc.yaml) and its own metrics file.
Per-shard work is Prefect task mapping, so it shows up per shard on the run's Prefect server.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from components.config import PipelineConfig
from components.params import load_config
from flows.prefect_api import run_as_subflow
from flows.settings import record_imported_files

STAGES = ("synth", "ingest", "validate", "captions", "prepare", "vae", "latents", "train", "evaluate")


def stage_module(name: str):
    """The module of stage `name` (imported on demand: a stage loads only its own libraries)."""
    if name not in STAGES:
        raise SystemExit(f"unknown stage {name!r}; stages: {list(STAGES)}")
    return importlib.import_module(f"flows.stages.{name}")


def stage_flow(name: str):
    """The Prefect flow of stage `name`."""
    return getattr(stage_module(name), f"{name}_stage_flow")


def task_runner(config: PipelineConfig, stage: str):
    """The Prefect task runner for a stage's per-shard tasks, from params ``runner``.

    ``threads`` (default): a thread pool of the stage's own ``workers`` (1 for a stage without
    any) in this process. ``dask``: prefect-dask, on the cluster at ``runner.dask_address`` when
    set, else on a local cluster of ``runner.dask_workers`` worker processes started for the stage.
    The runner never changes what a stage writes (it is not a DVC param): only where the shards
    are computed.
    """
    runner = config.runner
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=getattr(getattr(config, stage, None), "workers", 1))
    from prefect_dask import DaskTaskRunner

    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": runner.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def run_stage(name: str, project_dir: str | Path) -> object:
    """Run stage `name` in `project_dir` (as a subflow of the retrain run when started by one).

    params.yaml is checked in full before the flow starts, and so are the files it names when the
    stage module has a ``check_params(config, root)``: a bad value stops the stage with one
    ``ParamsError`` before a Prefect server is asked for anything.
    """
    config, module = load_config(project_dir), stage_module(name)
    if hasattr(module, "check_params"):
        module.check_params(config, Path(project_dir))
    flow = getattr(module, f"{name}_stage_flow").with_options(task_runner=task_runner(config, name))
    try:
        return run_as_subflow(flow, project_dir=str(project_dir))
    finally:
        # MESA_RECORD_IMPORTS: what this stage process imported, held against dvc.yaml's code deps.
        record_imported_files(name)
