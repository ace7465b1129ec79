"""The preflight (`mesa check`) is the first task of every retrain: a failing check stops the run
before a stage starts, and `mesa retrain --profile P` checks the profile before it rewrites params.yaml."""
from __future__ import annotations

import pytest

from tests.conftest import make_micro_project, set_params


def test_a_failing_check_stops_the_retrain_before_any_stage(tmp_path, prefect_api):
    from components.ops.preflight import PreflightFailed
    from flows.retrain import retrain

    root = make_micro_project(tmp_path / "project")
    set_params(root, model__pretrained="models/nowhere")
    with pytest.raises(PreflightFailed) as failure:
        retrain(project_dir=str(root))
    message = str(failure.value)
    assert "1 preflight check(s) failed (pretrained weights)" in message
    assert f"{root / 'models/nowhere'} does not exist" in message and "point model.pretrained" in message
    assert not (root / "dvc.lock").exists() and not (root / "data/raw").exists()  # no stage ran


def test_retrain_with_a_profile_this_machine_cannot_run_leaves_params_as_they_were(tmp_path, prefect_api):
    import torch

    from flows.main import run_main_job

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has the paper profile's 8 GPUs")
    root = make_micro_project(tmp_path / "project")
    before = (root / "params.yaml").read_text()
    with pytest.raises(SystemExit) as stopped:
        run_main_job(root, profile="paper", stages=None, force=False)
    message = str(stopped.value)
    assert "The main job did not start" in message and "No stage ran" in message
    assert "pretrained weights" in message and "accelerate config" in message
    assert (root / "params.yaml").read_text() == before and not (root / "dvc.lock").exists()
