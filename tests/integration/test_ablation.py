"""`mesa ablation`: the shadow correction x caption dropout matrix as DVC experiments, compared in MLflow.

Real DVC (`dvc exp run --temp -S` in temporary copies of a fresh git repository), real MLflow (the
project's SQLite store), real Prefect (the test harness server), the micro profile. The table's
own logic has fast tests in tests/unit/test_ablation_table.py.

Slow tier: the module's fixture ablates twice: four micro trainings two at a time (ablation.parallel
2), then a rerun DVC skips, about 5 minutes on 2 cores. Replicates, intervals and parallel against
sequential: test_replicates.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import commit_project, make_micro_project, set_params

pytestmark = pytest.mark.slow(minutes=5)

ARMS = ("shadow-on_dropout-on", "shadow-on_dropout-off", "shadow-off_dropout-on", "shadow-off_dropout-off")
VARIANTS = {f"{arm}_seed-0" for arm in ARMS}
EXPERIMENT = "mesa-ablation"


def _git(root, *args):
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout


def _training_runs(client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return list(client.search_runs([experiment.experiment_id], "tags.`mesa.variant` != ''", max_results=100))


def _aliases(client):
    return {m.name: dict(m.aliases) for m in client.search_registered_models()}


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, prefect_api):
    """A micro project in a fresh git repo, ablated twice; what each run returned and saw."""
    from mlflow import MlflowClient

    from components.tracking.store import tracking_uri
    from flows.ablation import ablation_flow

    assert not os.environ.get("MLFLOW_TRACKING_URI"), "the test logs to the project's own SQLite store"
    root = make_micro_project(tmp_path_factory.mktemp("ablation-project"))
    set_params(root, ablation__seeds=[0], ablation__parallel=2, ablation__threads_per_job=1)
    commit_project(root, "one seed, two jobs at a time")

    # A champion that exists before the ablation: ablation runs must leave every alias alone.
    client = MlflowClient(tracking_uri(root))
    (root / "stand-in-model").mkdir()
    client.create_registered_model("mesa")
    version = client.create_model_version("mesa", source=str(root / "stand-in-model"))
    client.set_registered_model_alias("mesa", "champion", version.version)
    aliases_before = _aliases(client)

    started = time.perf_counter()
    first = ablation_flow(project_dir=str(root))
    first_s = time.perf_counter() - started
    runs_after_first = _training_runs(client)
    table_after_first = (root / "reports/ablation.md").read_text()

    started = time.perf_counter()
    second = ablation_flow(project_dir=str(root))
    second_s = time.perf_counter() - started
    print(f"ablation: first {first_s:.0f} s (two jobs at a time), rerun {second_s:.0f} s")
    return {"root": root, "client": client, "first": first, "second": second, "runs": runs_after_first,
            "table": table_after_first, "aliases_before": aliases_before}


def test_four_variants_train_as_tagged_runs_under_one_parent(ablated):
    client, first = ablated["client"], ablated["first"]
    runs = ablated["runs"]
    assert {r.data.tags["mesa.variant"] for r in runs} == VARIANTS and len(runs) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {first["parent_run_id"]}
    for run in runs:
        shadow, dropout = run.data.tags["mesa.arm"].replace("shadow-", "").split("_dropout-")
        assert run.data.tags["mesa.seed"] == "0" and run.data.params["train.seed"] == "0"
        assert (run.data.tags["mesa.shadow"], run.data.tags["mesa.caption_dropout"]) == (shadow, dropout)
        # The params DVC ran it with reached the run: the variant is what was trained.
        assert run.data.params["shadow.enabled"] == json.dumps(shadow == "on")
        assert run.data.params["captions.augmentation.caption_dropout"] == json.dumps(dropout == "on")
        assert run.data.params["train.experiment"] == EXPERIMENT
        # -S rewrites params.yaml with `mixed_precision: no` unquoted: training still reads the string.
        assert run.data.params["train.mixed_precision"] == "no"
        assert any(key.startswith("eval/") for key in run.data.metrics)  # the evaluate stage logged onto it
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.experiment_id == runs[0].info.experiment_id
    assert set(json.loads(parent.data.tags["mesa.ablation.matrix"])) == VARIANTS
    assert all(entry["ran"] for entry in first["variants"])
    # two jobs at a time: some variants' runs overlap in time
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))

    # DVC holds each variant as an experiment of the commit, with its params.
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=ablated["root"],
                                      check=True, capture_output=True, text=True).stdout)
    experiments = {e["name"]: e["revs"][0]["data"]["params"]["params.yaml"]["data"]
                   for row in shown for e in (row.get("experiments") or [])}
    assert set(experiments) == VARIANTS
    assert experiments["shadow-off_dropout-on_seed-0"]["shadow"]["enabled"] is False
    assert experiments["shadow-off_dropout-on_seed-0"]["captions"]["augmentation"]["caption_dropout"] is True
    assert {e["train"]["mixed_precision"] for e in experiments.values()} == {"no"}


def test_the_comparison_table_has_every_metric_per_variant(ablated):
    import mlflow

    from components.tracking.pyfunc import using_tracking_uri

    root, client, first = ablated["root"], ablated["client"], ablated["first"]
    table = ablated["table"]
    rows = [line for line in table.splitlines() if line.startswith("| shadow-")]
    assert len(rows) == 4 and {row.split("|")[1].strip() for row in rows} == VARIANTS
    header = next(line for line in table.splitlines() if line.startswith("| variant"))
    some_run = ablated["runs"][0].info.run_id
    metrics_json = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=some_run, artifact_path="evaluation/metrics.json", dst_path=str(root / "check"),
        tracking_uri=client.tracking_uri)).read_text())
    for name, metric in metrics_json["metrics"].items():
        direction = metric["direction"].replace("_", " ")
        assert f"{name} ({direction})" in header
    assert "validation_loss (lower is better)" in header
    # each variant's per-cell evaluation travels with its run, for paired comparisons later
    assert "evaluation/metrics_per_cell.parquet" in {f.path for f in client.list_artifacts(some_run, "evaluation")}
    summary = json.loads((root / "reports/ablation.json").read_text())
    assert all(entry["validation_loss"] is not None for entry in summary["variants"])
    # one training seed per arm: effects are estimated, and the report says why there is no interval
    effect = summary["effects"]["heldout_denoising_loss"]["effects"][0]
    assert effect["low"] is None and effect["verdict"] == "no interval: fewer than 2 training seeds in " + ", ".join(
        ARMS)
    assert "no interval: fewer than 2 training seeds" in table and not (root / "reports/seed_spread.json").exists()

    # The same table on the parent run, and the Markdown as its artifact.
    parent = client.get_run(first["parent_run_id"])
    # load_table searches runs through the fluent API's store; the context restores it (and the env).
    with using_tracking_uri(client.tracking_uri):
        logged = client.load_table(parent.info.experiment_id, "ablation/comparison.json", run_ids=[parent.info.run_id])
    assert sorted(logged["variant"]) == sorted(VARIANTS)
    assert set(metrics_json["metrics"]) <= set(logged.columns)
    artifacts = {f.path for f in client.list_artifacts(first["parent_run_id"], "ablation")}
    assert {"ablation/ablation.md", "ablation/shadow_correction.png"} <= artifacts


def test_the_shadow_correction_grid_shows_both_models(ablated):
    root = ablated["root"]
    png, manifest = root / "reports/ablation/shadow_correction.png", root / "reports/ablation/shadow_correction.json"
    assert png.stat().st_size > 0
    layout = json.loads(manifest.read_text())
    labels = " ".join(layout["col_labels"])
    assert "shadow-on_dropout-on_seed-0" in labels and "shadow-off_dropout-on_seed-0" in labels
    assert len(layout["col_labels"]) == 2
    assert all(uri.startswith("models:/") for uri in layout["models"].values())


def test_the_workspace_and_the_registry_are_left_alone(ablated):
    root = ablated["root"]
    assert _git(root, "status", "--porcelain", "--untracked-files=no") == ""  # the experiments ran in copies
    assert not (root / "models/pipeline").exists()  # the experiments ran in temporary copies
    assert _aliases(ablated["client"]) == ablated["aliases_before"] == {"mesa": {"champion": 1}}


def test_a_rerun_trains_nothing_and_still_writes_the_table(ablated):
    client, first, second = ablated["client"], ablated["first"], ablated["second"]
    assert not any(entry["ran"] for entry in second["variants"])
    assert {r.info.run_id for r in _training_runs(client)} == {r.info.run_id for r in ablated["runs"]}
    assert {e["run_id"] for e in second["variants"]} == {r.info.run_id for r in ablated["runs"]}
    assert second["parent_run_id"] != first["parent_run_id"]
    assert client.get_run(second["parent_run_id"]).info.status == "FINISHED"
    table = (ablated["root"] / "reports/ablation.md").read_text()
    assert second["parent_run_id"] in table and len([ln for ln in table.splitlines() if ln.startswith("| shadow-")]) == 4
    assert second["rows"] == first["rows"]

