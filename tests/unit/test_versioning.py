"""Lineage snapshots, the faithfulness checks of `mesa rebuild`, the weights comparison, checkpoint owners.

Fast: tiny git repositories and files, no pipeline run (tests/integration/test_rebuild_and_gc.py
rebuilds and collects a real one).
"""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from components.tracking.lineage import lineage_snapshot, params_hash, snapshot_folder
from components.versioning.rebuild import Lineage, check_faithful, compare_pipelines

PARAMS = "train:\n  lr: 0.1\n  steps: 12\n"
LOCK = """schema: '2.0'
stages:
  prepare:
    cmd: mesa stage prepare
    outs:
    - path: data/samples
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
"""


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "code").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "code" / "step.py").write_text("SCALE = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    (repo / "dvc.lock").write_text(LOCK)  # the pipeline does not commit it
    return repo


def _lineage(repo, files, **tags) -> Lineage:
    names = {path.rsplit("/", 1)[1]: text for path, text in files.items()}
    return Lineage(model="mesa", version="1", run_id="r" * 32, source="models:/m-1", made_at_ms=0,
                   tags={"mesa.params_hash": params_hash({"train": {"lr": 0.1, "steps": 12}}), **tags},
                   segment=snapshot_folder(12), files=names)


def test_a_clean_snapshot_holds_dvc_lock_params_and_the_commit(repo):
    files = lineage_snapshot(repo, {"train": {"lr": 0.1, "steps": 12}}, 12, started_at_ms=5)
    folder = "lineage/steps-000012"
    assert set(files) == {f"{folder}/params.yaml", f"{folder}/dvc.lock", f"{folder}/lineage.json"}
    record = json.loads(files[f"{folder}/lineage.json"])
    assert record["git_commit"] == _git(repo, "rev-parse", "HEAD") and record["git_dirty"] == "false"
    assert record["untracked"] == ["dvc.lock"] and record["started_at_ms"] == 5
    assert files[f"{folder}/dvc.lock"] == LOCK and files[f"{folder}/params.yaml"] == PARAMS
    assert check_faithful(repo, _lineage(repo, files)) == []


def test_a_dirty_snapshot_carries_its_diff_and_the_diff_restores_the_code(repo, tmp_path):
    (repo / "code" / "step.py").write_text("SCALE = 2  # changed, not committed\n")
    files = lineage_snapshot(repo, {"train": {"lr": 0.1, "steps": 12}}, 12)
    diff = files["lineage/steps-000012/git.diff"]
    assert json.loads(files["lineage/steps-000012/lineage.json"])["git_dirty"] == "true"
    lineage = _lineage(repo, files)
    assert check_faithful(repo, lineage) == []
    # What the rebuild does with it: the commit in a worktree, then the diff.
    tree = tmp_path / "tree"
    _git(repo, "worktree", "add", "--detach", str(tree), lineage.commit)
    (tree / "lineage.diff").write_text(diff)
    _git(tree, "apply", "--binary", "lineage.diff")
    assert (tree / "code" / "step.py").read_text() == "SCALE = 2  # changed, not committed\n"

    # Without the diff (a run from before snapshots), the code that ran is unknown.
    del lineage.files["git.diff"]
    assert any("differed from the commit" in p for p in check_faithful(repo, lineage))


def test_refusals_name_what_is_missing(repo):
    files = lineage_snapshot(repo, {"train": {"lr": 0.1, "steps": 12}}, 12)
    lineage = _lineage(repo, files)
    lineage.files["params.yaml"] = PARAMS.replace("0.1", "0.2")  # the record was changed afterwards
    assert any("params hash" in p and "changed after training" in p for p in check_faithful(repo, lineage))

    unknown = _lineage(repo, files)
    unknown.files["lineage.json"] = json.dumps({**unknown.record, "git_commit": "f" * 40})
    assert any("not in this repository" in p and "git fetch" in p for p in check_faithful(repo, unknown))

    # No snapshot and no committed dvc.lock: the run's tags name data nothing can pull.
    old = Lineage(model="mesa", version="1", run_id="r" * 32, source="", made_at_ms=0,
                  tags={"mesa.git_commit": _git(repo, "rev-parse", "HEAD"), "mesa.git_dirty": "false",
                        "mesa.params_hash": params_hash({"train": {"lr": 0.1, "steps": 12}}),
                        "mesa.dvc.data/samples": "0123456789abcdef0123456789abcdef.dir"})
    assert any("no lineage dvc.lock" in p and "it has none" in p for p in check_faithful(repo, old))


def test_weights_compare_tensor_by_tensor(tmp_path):
    from safetensors.torch import save_file

    for name, bias in (("registered", 0.0), ("same", 0.0), ("other", 1e-3)):
        folder = tmp_path / name / "unet"
        folder.mkdir(parents=True)
        weights = {"w": torch.ones(3, 3), "b": torch.full((3,), bias)}
        save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
        (folder / "config.json").write_text("{}")
    same = compare_pipelines(tmp_path / "registered", tmp_path / "same")
    assert same.equal and same.tensors == 2
    other = compare_pipelines(tmp_path / "registered", tmp_path / "other")
    assert not other.equal
    assert other.differing_tensors == ["unet/diffusion_pytorch_model.safetensors:b (max |diff| 0.001)"]


def test_checkpoint_folders_name_their_runs(tmp_path):
    from components.versioning.retention import _checkpoint_runs

    for step, run in ((6, "a" * 32), (12, "a" * 32)):
        folder = tmp_path / f"checkpoint-{step:06d}"
        folder.mkdir()
        torch.save({"step": step, "run_id": run, "validation": []}, folder / "custom_checkpoint_0.pkl")
        torch.save({"decay": 0.99}, folder / "custom_checkpoint_1.pkl")
    assert _checkpoint_runs(tmp_path) == ["a" * 32]


def test_run_logger_log_text_lands_as_an_artifact(tmp_path):
    from mlflow import MlflowClient

    from components.tracking.run_logger import RunLogger

    logger = RunLogger.start("unit", "text", tmp_path, system_metrics=False)
    logger.log_text("a: 1\n", "lineage/steps-000003/params.yaml")
    assert logger.finish() is None
    client = MlflowClient(logger.tracking_uri)
    local = client.download_artifacts(logger.run_id, "lineage/steps-000003/params.yaml", str(tmp_path / "out"))
    assert open(local).read() == "a: 1\n"
