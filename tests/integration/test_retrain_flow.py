"""The main job's spine: the retrain flow runs the DVC stages as Prefect tasks on one Prefect API.

Real Prefect (the test harness server), real DVC in a temporary git repository.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.params import apply_profile
from tests.conftest import PROJECT_ROOT

PROJECT_FILES = ["params.yaml", "dvc.yaml", "configs", "components", "flows", "infra", ".dvc/config", ".dvcignore",
                 ".gitignore"]


STAGES = ("synth", "validate", "captions", "prepare", "vae", "latents", "train", "evaluate")


def _run(cmd, cwd):
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project in a fresh git repo, on the micro profile, with `mesa` on PATH."""
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name)
    apply_profile("micro", root)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    _run(["git", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], root)
    return root


def _subflows(parent_flow_run_id):
    """Flow runs whose parent task belongs to the given flow run (its subflows), with their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])))
        for run in runs:
            run.name = client.read_flow(run.flow_id).name  # the flow's name, not the run's
    return runs


def test_retrain_runs_the_stages_then_skips_them_when_nothing_changed(project, prefect_api):
    from flows.retrain import retrain

    state = retrain(project_dir=str(project), return_state=True)
    results = state.result()
    assert [(r["stage"], r["ran"]) for r in results] == [(s, True) for s in STAGES]

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["synth"]["params"]["params.yaml"]["synth"]["cells"] == 24  # the micro profile
    assert any(out["path"] == "data/raw" for out in lock["stages"]["synth"]["outs"])
    report = json.loads((project / "reports" / "synth.json").read_text())
    assert report["cells_good"] == 24 and report["cells_broken"] == 6
    assert (project / "data/raw/s2l2a/metadata.parquet").exists()

    # Each stage's own flow ran in its DVC subprocess, on the same server, as a subflow of the run.
    subflows = _subflows(state.state_details.flow_run_id)
    assert sorted(f.name for f in subflows) == sorted(f"stage-{s}" for s in STAGES)
    assert all(f.state.is_completed() for f in subflows)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    synth_run = next(f for f in subflows if f.name == "stage-synth")
    with get_client(sync_client=True) as client:
        shard_tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[synth_run.id])), task_run_filter=TaskRunFilter())
    assert sum(t.name.startswith("synth shard") for t in shard_tasks) == 4  # 30 cells / 8 per shard

    curation = json.loads((project / "reports" / "curation.json").read_text())
    assert curation["kept_cells"] == 24 and curation["rejected_cells"] == 6
    assert (project / "data/captions/captions.parquet").exists()
    # The model side: a trained VAE, cached latents, a pipeline folder and its MLflow run.
    assert json.loads((project / "reports" / "vae.json").read_text())["source"] == "trained"
    assert json.loads((project / "data/latents/manifest.json").read_text())["enabled"] is True
    assert (project / "models/pipeline/dem_rule.json").exists()
    assert json.loads((project / "models/train_run.json").read_text())["run_id"]
    # Evaluation of the trained micro model: metrics with directions, the report, the grids.
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["metrics"]["landform_balanced_accuracy"]["direction"] == "higher_is_better"
    assert (project / "reports/eval.md").exists() and (project / "reports/eval/seed_variability.png").exists()

    again = retrain(project_dir=str(project))
    assert [(r["stage"], r["ran"]) for r in again] == [(s, False) for s in STAGES]
    status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout.lower()


def test_a_failing_stage_fails_the_flow_and_names_the_stage(project, prefect_api, tmp_path):
    from flows.retrain import StageFailed, retrain

    broken = tmp_path / "broken"
    shutil.copytree(project, broken, ignore=shutil.ignore_patterns("data", ".dvc/cache"))
    params = (broken / "params.yaml").read_text().replace("cells: 24", "cells: 0")
    (broken / "params.yaml").write_text(params)
    with pytest.raises(StageFailed, match=r"stage 'synth' failed.*\n(.|\n)*cells"):
        retrain(project_dir=str(broken))
