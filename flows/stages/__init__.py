"""`mesa stage NAME`: one DVC stage, as a Prefect flow (a subflow of the retrain run when there is one).

Each stage reads params.yaml, writes only its own outs (dvc.yaml) and its own metrics file.
Per-shard work is Prefect task mapping, so it shows up per shard on the run's Prefect server.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from components.params import load_params
from flows.prefect_api import run_as_subflow

STAGES = ("synth", "validate", "captions", "prepare", "vae", "latents", "train", "evaluate")


def stage_flow(name: str):
    """The Prefect flow of stage `name` (imported on demand: a stage loads only its own libraries)."""
    if name not in STAGES:
        raise SystemExit(f"unknown stage {name!r}; stages: {list(STAGES)}")
    return getattr(importlib.import_module(f"flows.stages.{name}"), f"{name}_stage_flow")


def run_stage(name: str, project_dir: str | Path) -> object:
    """Run stage `name` in `project_dir` (as a subflow of the retrain run when started by one)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    flow = stage_flow(name)
    workers = int(load_params(project_dir).get(name, {}).get("workers", 1))
    flow = flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    return run_as_subflow(flow, project_dir=str(project_dir))
