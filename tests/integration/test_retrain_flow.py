"""The main job's spine: the retrain flow runs the DVC stages as Prefect tasks on one Prefect API.

Real Prefect (the test harness server), real DVC in a temporary git repository.

Slow tier: two micro retrains from empty (the module's first run and the forced one) and four
shorter ones (train and evaluate only), about 10 minutes of one worker in a two-worker
`make test` on 2 cores (2026-12-07).
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import commit_project, make_micro_project, set_params

pytestmark = pytest.mark.slow(minutes=10)

STAGES = ("synth", "ingest", "validate", "captions", "prepare", "vae", "latents", "train", "evaluate")


@pytest.fixture(scope="module")
def recorded_imports(tmp_path_factory):
    """Where every stage process of this module's runs records the project files it imported."""
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="module")
def project(tmp_path_factory, recorded_imports):
    """A copy of the project in a fresh git repo, on the micro profile, with `mesa` on PATH.

    While the module's tests run, stage processes record their imports (MESA_RECORD_IMPORTS).
    """
    from components.layout import RECORD_IMPORTS_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RECORD_IMPORTS_ENV, str(recorded_imports))
        yield _fresh_project(tmp_path_factory)


@pytest.fixture(scope="module")
def first_run(project, prefect_api):
    """The project's first retrain (every stage, version 1), and what it left, read right after it:
    later tests change the project (train longer, promote, roll back), in whatever order they run.

    Cost: one full micro retrain, about 2.5 minutes on 2 cores.
    """
    from flows.retrain import retrain

    state = retrain(project_dir=str(project), return_state=True)
    client = _registry_client(project)
    version = client.get_model_version("mesa", "1")
    read = lambda relative: json.loads((project / relative).read_text())  # noqa: E731
    return {
        "state": state, "outcome": state.result(), "lock": yaml.safe_load((project / "dvc.lock").read_text()),
        "lock_outs": _lock_outs(project), "weights": _weights_digest(project / "models/pipeline"),
        "synth": read("reports/synth.json"), "curation": read("reports/curation.json"), "vae": read("reports/vae.json"),
        "latents": read("data/latents/manifest.json"), "train_run": read("models/train_run.json"),
        "metrics": read("reports/metrics.json"), "v1_aliases": set(version.aliases), "v1_tags": dict(version.tags),
        "files": {relative: (project / relative).exists() for relative in (
            "data/raw/s2l2a/metadata.parquet", "data/captions/captions.parquet", "models/pipeline/dem_rule.json",
            "reports/eval.md", "reports/eval/seed_variability.png")},
    }


def _fresh_project(tmp_path_factory):
    return make_micro_project(tmp_path_factory.mktemp("project"))


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


def test_the_first_retrain_runs_every_stage_registers_and_promotes(project, first_run):
    outcome = first_run["outcome"]
    assert [(r["stage"], r["ran"]) for r in outcome["stages"]] == [(s, True) for s in STAGES]

    lock = first_run["lock"]
    assert lock["stages"]["synth"]["params"]["params.yaml"]["synth"]["cells"] == 24  # the micro profile
    assert any(out["path"] == "data/raw" for out in lock["stages"]["synth"]["outs"])
    assert first_run["synth"]["cells_good"] == 24 and first_run["synth"]["cells_broken"] == 6
    assert all(first_run["files"].values()), first_run["files"]

    # Each stage's own flow ran in its DVC subprocess, on the same server, as a subflow of the run.
    subflows = _subflows(first_run["state"].state_details.flow_run_id)
    assert sorted(f.name for f in subflows) == sorted(f"stage-{s}" for s in STAGES)
    assert all(f.state.is_completed() for f in subflows)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    synth_run = next(f for f in subflows if f.name == "stage-synth")
    with get_client(sync_client=True) as client:
        shard_tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[synth_run.id])), task_run_filter=TaskRunFilter())
    assert sum(t.name.startswith("synth shard") for t in shard_tasks) == 4  # 30 cells / 8 per shard

    assert first_run["curation"]["kept_cells"] == 24 and first_run["curation"]["rejected_cells"] == 6
    # The model side: a trained VAE, cached latents, a pipeline folder and its MLflow run.
    assert first_run["vae"]["source"] == "trained"
    assert first_run["latents"]["enabled"] is True
    assert first_run["train_run"]["run_id"]
    # Evaluation of the trained micro model: metrics with directions, the report, the grids.
    metrics = first_run["metrics"]
    assert metrics["metrics"]["landform_balanced_accuracy"]["direction"] == "higher_is_better"

    # After the stages: data pushed, the pipeline registered (alias challenger) and, being the
    # first model and passing the (empty) floors, promoted to champion.
    assert outcome["pushed"]["pushed"] and any((project / "dvc-remote").rglob("*"))
    registration = outcome["registration"]
    assert registration["new"] and registration["version"] == 1
    assert registration["run_id"] == first_run["train_run"]["run_id"]
    assert outcome["promotion"]["promoted"] and outcome["promotion"]["champion"] == 1
    assert first_run["v1_aliases"] == {"challenger", "champion"}
    assert first_run["v1_tags"]["metric.heldout_denoising_loss.direction"] == "lower_is_better"
    assert first_run["v1_tags"]["mesa.evaluation_fingerprint"] == metrics["evaluation_fingerprint"]


def test_a_retrain_with_nothing_changed_skips_every_stage_and_registers_nothing(project, first_run):
    from flows.retrain import retrain

    client = _registry_client(project)
    versions = len(client.search_model_versions("name = 'mesa'"))
    retrain(project_dir=str(project))  # whatever an earlier test changed is made current first
    again = retrain(project_dir=str(project))
    assert [(r["stage"], r["outcome"]) for r in again["stages"]] == [(s, "skipped") for s in STAGES]
    assert again["registration"]["new"] is False and again["promotion"] is None  # nothing new
    assert len(client.search_model_versions("name = 'mesa'")) <= versions + 1
    status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout.lower()


def test_the_shadow_switch_only_makes_training_and_evaluation_stale(project, first_run):
    # shadow.enabled is read by training (and the evaluation of its model) only: switching it
    # never touches the data stages or the VAE.
    committed = (project / "params.yaml").read_text()
    try:
        before = set(json.loads(subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True,
                                                text=True, check=True).stdout))
        set_params(project, shadow__enabled=not yaml.safe_load(committed)["shadow"]["enabled"])
        status = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True, check=True)
    finally:
        (project / "params.yaml").write_text(committed)
    assert set(json.loads(status.stdout)) - before == {"train", "evaluate"} - before


def _module_name(file: str) -> str:
    """components/samples/__init__.py -> components.samples; components/samples/x.py -> components.samples.x."""
    parts = file.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_stage_imported_only_its_dvc_yaml_code_deps(project, first_run, recorded_imports):
    """What the stage processes of the first retrain really imported, against the static deps."""
    from components.devtools.stage_deps import cli_startup_files, direct_imports, is_code_entry

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    deps = {name: {e for e in stage["deps"] if is_code_entry(e, project)} for name, stage in stages.items()}
    records = [json.loads(path.read_text()) for path in sorted(recorded_imports.glob("*.json"))]
    assert {r["label"] for r in records} == set(STAGES), (
        f"stages that recorded their imports in {recorded_imports}: {sorted({r['label'] for r in records})}; "
        "the first_run fixture's retrain should have recorded every stage")
    # A `mesa stage` process also loads the CLI's modules (not deps), from the code it ran (the installed
    # checkout's, for the `mesa` on PATH).
    startup = {root: cli_startup_files(root) for root in {r for record in records for r in record["roots"]}}
    for record in records:
        allowed = set(deps[record["label"]])
        if "flows/cli.py" in record["files"]:
            allowed |= set().union(*(startup[root] for root in record["roots"]))
        assert not set(record["files"]) - allowed, (
            f"stage {record['label']} (process {record['argv']}) imported files that are not its code deps "
            f"in dvc.yaml: {sorted(set(record['files']) - allowed)}; run `mesa dev deps --write`")

    # The static deps are a little larger: modules imported inside functions that a micro run does not
    # call. Each such extra must be imported lazily by a dep, or at import time only by other extras.
    for stage in STAGES:
        ran = set().union(*(r["files"] for r in records if r["label"] == stage))
        extras = deps[stage] - ran
        print(f"{stage}: {len(deps[stage])} code deps, {len(ran & deps[stage])} imported by the micro run, "
              f"{len(extras)} static only: {sorted(extras)}")
        for extra in extras:
            lazily, eagerly = [], []
            for dep in deps[stage]:
                module = _module_name(dep)
                if _module_name(extra) not in direct_imports(project, module, stage=stage):
                    continue
                if _module_name(extra) in direct_imports(project, module, stage=stage, import_time_only=True):
                    eagerly.append(dep)
                else:
                    lazily.append(dep)
            assert (lazily or eagerly) and set(eagerly) <= extras, (
                f"stage {stage}: {extra} is a static dep that no process imported, yet it is imported lazily by "
                f"{lazily} and at import time by {eagerly} (of which {sorted(set(eagerly) - extras)} ran): "
                "the analysis and the recording disagree")


@pytest.mark.parametrize("module", ["components/samples/dataset.py", "components/captions/builder.py"])
def test_editing_code_that_training_runs_makes_dvc_rerun_train(project, first_run, module):
    """The trainer reads the dataset and augments captions at training time: an edit reruns train."""
    path = project / module
    original = path.read_text()
    try:
        path.write_text(original + "# an edit that changes no output of the data stages\n")
        status = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True, check=True)
    finally:
        path.write_text(original)
    changed = set(json.loads(status.stdout))
    assert {"train", "evaluate"} <= changed
    assert "prepare" not in changed  # prepare never imports either module


def _lock_outs(project) -> dict[str, str]:
    """Every stage output's hash in dvc.lock (data and models)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if "md5" in out}


def _weights_digest(folder) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_a_forced_retrain_from_scratch_gives_the_same_data_and_model(first_run, prefect_api, tmp_path_factory):
    from flows.retrain import retrain

    clone = _fresh_project(tmp_path_factory)
    outcome = retrain(project_dir=str(clone), force=True)
    assert all(stage["ran"] for stage in outcome["stages"])
    first, second = first_run["lock_outs"], _lock_outs(clone)
    assert {"data/raw", "data/samples", "data/latents", "models/vae", "models/pipeline"} <= set(first)
    assert first == second  # every data and model hash, byte for byte
    assert first_run["weights"] == _weights_digest(clone / "models/pipeline")


def _registry_client(project):
    from components.tracking.store import mlflow_client

    return mlflow_client(project)


@pytest.mark.timeout(1800)  # four retrains of train and evaluate, and the module's first run when it is first
def test_promotion_moves_champion_for_a_better_challenger_not_a_broken_one_then_rolls_back(project, first_run):
    from components.tracking.registry import CHALLENGER, CHAMPION, get_alias_version
    from flows.promote import promote_flow
    from flows.retrain import retrain

    client = _registry_client(project)
    assert int(get_alias_version(client, "mesa", CHAMPION).version) == 1  # the first retrain's model
    # The team's gate: the held-out denoising loss must not regress by more than 10 % (micro has
    # too few held-out cells for an interval: the point estimate decides, against that margin).
    set_params(project, registry__gate__metrics=["heldout_denoising_loss"], registry__gate__max_regression=0.1)

    # A better challenger: the same run trained three times as long (it resumes from step 12).
    set_params(project, train__steps=36)
    commit_project(project, "train longer")  # the gate refuses models trained from uncommitted changes
    better = retrain(project_dir=str(project))
    assert [s["stage"] for s in better["stages"] if s["ran"]] == ["train", "evaluate"]
    assert better["registration"]["new"] and better["promotion"]["promoted"], better["promotion"]
    compared = better["promotion"]["compared"]["heldout_denoising_loss"]
    assert compared["challenger"] < compared["champion"]
    assert int(get_alias_version(client, "mesa", CHAMPION).version) == better["registration"]["version"]

    # A genuinely worse one: a broken setting (a learning rate of 1e-9: the weights never leave their
    # initialisation; 0 itself is refused by the params schema), really trained and really evaluated.
    set_params(project, train__learning_rate=1e-9)
    commit_project(project, "a broken learning rate")
    broken = retrain(project_dir=str(project))
    assert broken["registration"]["new"] and not broken["promotion"]["promoted"]
    assert any("heldout_denoising_loss" in reason for reason in broken["promotion"]["reasons"])
    assert int(get_alias_version(client, "mesa", CHAMPION).version) == better["registration"]["version"]
    assert int(get_alias_version(client, "mesa", CHALLENGER).version) == broken["registration"]["version"]
    rejected = client.get_model_version("mesa", str(broken["registration"]["version"]))
    assert rejected.tags["promotion.decision"] == "rejected"
    assert client.get_run(broken["registration"]["run_id"]).data.tags["promotion.decision"] == "rejected"

    # Promoting again is idempotent; rollback returns to the previous champion.
    assert not promote_flow(project_dir=str(project))["promoted"]
    assert promote_flow(project_dir=str(project), rollback=True)["champion"] == 1
    assert int(get_alias_version(client, "mesa", CHAMPION).version) == 1

    # The evaluation changes (other sampling settings) together with a new model: the champion,
    # evaluated the old way, is evaluated again the new way before the two are compared.
    set_params(project, evaluate__steps=4, train__learning_rate=0.001, train__steps=48)
    commit_project(project, "other sampling settings")
    changed = retrain(project_dir=str(project))
    assert {"train", "evaluate"} <= {s["stage"] for s in changed["stages"] if s["ran"]}
    current = json.loads((project / "reports/metrics.json").read_text())["evaluation_fingerprint"]
    champion_v1 = client.get_model_version("mesa", "1")
    assert champion_v1.tags["mesa.evaluation_fingerprint"] == current  # retagged before the decision
    assert (project / "reports/evaluations/mesa-v1/metrics.json").exists()
    assert changed["promotion"]["compared"]["heldout_denoising_loss"]["champion"] == float(
        champion_v1.tags["metric.heldout_denoising_loss"])
    # ... and was paired with the challenger on the new evaluation's per-cell table, logged on its run
    assert changed["promotion"]["compared"]["heldout_denoising_loss"]["margin_source"].startswith("default")
    logged = client.list_artifacts(champion_v1.run_id, f"evaluations/{current}/v1")
    assert [f.path.rsplit("/", 1)[-1] for f in logged] == ["metrics_per_cell.parquet"]
    # each version keeps its own per-cell evaluation, though a resumed run made several of them
    assert changed["promotion"]["compared"]["heldout_denoising_loss"]["worse_by"] != 0

    # A challenger trained from uncommitted changes is refused whatever its numbers, unless allowed.
    set_params(project, train__steps=60)
    dirty = retrain(project_dir=str(project))
    assert not dirty["promotion"]["promoted"] and dirty["promotion"]["unreproducible"]
    assert dirty["promotion"]["reasons"][0].startswith("unreproducible: it was trained from a tree with uncommitted "
                                                       "changes (segment to step 60)")
    allowed = promote_flow(project_dir=str(project), allow_unreproducible=True)
    assert allowed["unreproducible_allowed"] and "uncommitted" in client.get_model_version(
        "mesa", str(dirty["registration"]["version"])).tags["promotion.unreproducible_allowed"]
    commit_project(project, "train 60 steps")


def test_a_failing_stage_fails_the_flow_and_names_the_stage(project, first_run, tmp_path):
    from components.config import ParamsError
    from flows.retrain import StageFailed, retrain

    broken = tmp_path / "broken"
    shutil.copytree(project, broken, ignore=shutil.ignore_patterns("data", ".dvc/cache"))
    (broken / "data").write_text("a file where the data folder goes: synth cannot write data/raw")
    with pytest.raises(StageFailed, match=r"stage 'synth' failed.*\n(.|\n)*Not a directory"):
        retrain(project_dir=str(broken))
    (broken / "data").unlink()
    # Invalid params never reach a stage: the preflight (the run's first task) names the key.
    params = (broken / "params.yaml").read_text().replace("cells: 24", "cells: 0")
    (broken / "params.yaml").write_text(params)
    with pytest.raises(ParamsError, match=r"synth\.cells"):
        retrain(project_dir=str(broken))
