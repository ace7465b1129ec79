"""components.evaluation.ablation_run: the parent run, what MLflow holds per variant, the reports
(a real SQLite MLflow store in a temporary git repository; no DVC experiment is run here:
tests/integration/test_ablation.py runs the whole matrix)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.evaluation import ablation_run
from components.evaluation.ablation import Variant
from components.layout import ABLATION_JSON, ABLATION_MD, MLFLOW_PARENT_RUN_ENV, MLFLOW_RUN_TAGS_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _git(root, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The project's params (and profiles) in a fresh git repository, the matrix cut to shadow on/off."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copytree(PROJECT_ROOT / "configs", tmp_path / "configs")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["ablation"].update(shadow=[True, False], caption_dropout=[True], experiment="test-ablation")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "params.yaml", "configs")
    _git(tmp_path, "commit", "-q", "-m", "params")
    return tmp_path


def _training_run(run: ablation_run.AblationRun, variant: Variant, metrics: dict | None, loss: float) -> str:
    """A finished training run of `variant` under the parent, as the training loop and evaluate stage leave it."""
    client = run.client
    tags = {**variant.tags(), ablation_run.BASELINE_TAG: run.commit, "mlflow.parentRunId": run.parent_id}
    run_id = client.create_run(run.experiment_id, tags=tags).info.run_id
    client.log_metric(run_id, ablation_run.VALIDATION_METRIC, loss)
    if metrics is not None:
        path = run.root / variant.name / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"metrics": metrics}))
        client.log_artifact(run_id, str(path), "evaluation")
    client.set_terminated(run_id)
    return run_id


def test_the_variants_runs_become_the_comparison_and_its_reports(project):
    run = ablation_run.start_ablation(project)
    assert [v.name for v in run.variants] == ["shadow-on_dropout-on", "shadow-off_dropout-on"]
    assert (run.experiment, run.dirty) == ("test-ablation", "false") and run.commit == _git(project, "rev-parse", "HEAD")
    parent = run.client.get_run(run.parent_id)
    assert set(json.loads(parent.data.tags["mesa.ablation.matrix"])) == {v.name for v in run.variants}
    assert parent.data.params["ablation.shadow"] == "[true, false]"

    on, off = run.variants
    metric = {"landform_balanced_accuracy": {"value": 0.5, "direction": "higher_is_better", "real_reference": 0.9}}
    _training_run(run, on, None, loss=0.4)  # newer runs first: this one was not evaluated (run cache)
    evaluated = _training_run(run, off, metric, loss=0.3)
    assert ablation_run.evaluated_run(run.client, run.experiment_id, on, run.commit) is None
    found, report = ablation_run.evaluated_run(run.client, run.experiment_id, off, run.commit)
    assert found.info.run_id == evaluated and report == {"metrics": metric}
    assert ablation_run.reuse_check(run, off, None) == ("DVC has no experiment of it", None)

    said: list[str] = []
    outcomes = {v.name: {"variant": v.name, "ran": v is on, "seconds": 1.0} for v in run.variants}
    entries = ablation_run.collect_entries(run, outcomes, say=said.append)
    assert said == ["[ablation] shadow-on_dropout-on: no finished, evaluated training run in MLflow; its row stays empty"]
    assert entries[0]["run_id"] is None and entries[0]["metrics"] == {}
    assert entries[1]["run_id"] == evaluated and entries[1]["validation_loss"] == 0.3
    assert entries[1]["model_uri"] == f"runs:/{evaluated}/pipeline"  # no logged model: the run's artifact path

    summary = ablation_run.write_reports(run, entries, grid=None)
    assert json.loads((project / ABLATION_JSON).read_text()) == json.loads(json.dumps(summary))
    table = (project / ABLATION_MD).read_text()
    assert f"`{run.commit}`" in table and "shadow-on_dropout-on (trained), shadow-off_dropout-on (already in DVC)" in table
    assert f"| shadow-off_dropout-on | off | on | 0.5 | 0.3 | `{evaluated}` |" in table  # one value: none bold
    artifacts = {f.path for f in run.client.list_artifacts(run.parent_id, "ablation")}
    assert artifacts == {"ablation/ablation.md", "ablation/ablation.json", "ablation/comparison.json"}
    assert json.loads(run.client.get_run(run.parent_id).data.tags["mesa.ablation.runs"]) == {
        on.name: None, off.name: evaluated}
    run.finish("FINISHED")
    assert run.client.get_run(run.parent_id).info.status == "FINISHED"


def test_a_variants_environment_and_command():
    variant = Variant(shadow=False, caption_dropout=True)
    env = ablation_run.variant_env({"PATH": "/bin", "MLFLOW_RUN_ID": "stale"}, "sqlite:///x.db", "parent", variant,
                                   "abc123")
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db" and env[MLFLOW_PARENT_RUN_ENV] == "parent"
    assert "MLFLOW_RUN_ID" not in env and env["PATH"] == "/bin"
    assert json.loads(env[MLFLOW_RUN_TAGS_ENV]) == {**variant.tags(), ablation_run.BASELINE_TAG: "abc123",
                                                      "mlflow.runName": variant.name}
    command = ablation_run.variant_command(variant, "test-ablation")
    assert command[1:] == ["-m", "dvc", "exp", "run", "--temp", "-n", "shadow-off_dropout-on",
                           "-S", "shadow.enabled=false", "-S", "captions.augmentation.caption_dropout=true",
                           "-S", "train.experiment='test-ablation'"]


def test_a_failing_variant_names_itself_and_ends_with_its_output(tmp_path, monkeypatch):
    variant = Variant(shadow=True, caption_dropout=False)
    monkeypatch.setattr(ablation_run, "variant_command",
                        lambda v, e: ["sh", "-c", "echo one; echo two; exit 4"])
    lines: list[str] = []
    with pytest.raises(ablation_run.VariantFailed, match=r"'shadow-on_dropout-off' failed \(dvc exp run exit 4\)"
                                                         r"(.|\n)*Last output:\none\ntwo$"):
        ablation_run.run_variant_experiment(tmp_path, variant, "x", env={"PATH": "/bin:/usr/bin"},
                                            on_line=lines.append)
    assert lines == ["echo one; echo two; exit 4", "one", "two"]  # the command line (after the interpreter), then its output
