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
    params["ablation"].update(shadow=[True, False], caption_dropout=[True], seeds=[0], experiment="test-ablation")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "params.yaml", "configs")
    _git(tmp_path, "commit", "-q", "-m", "params")
    return tmp_path


def _training_run(run: ablation_run.AblationRun, variant: Variant, metrics: dict | None, loss: float,
                  per_cell=None) -> str:
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
    if per_cell is not None:
        path = run.root / variant.name / "metrics_per_cell.parquet"
        per_cell.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), "evaluation")
    client.set_terminated(run_id)
    return run_id


def test_the_variants_runs_become_the_comparison_and_its_reports(project):
    run = ablation_run.start_ablation(project)
    assert [v.name for v in run.variants] == ["shadow-on_dropout-on_seed-0", "shadow-off_dropout-on_seed-0"]
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
    assert said == ["[ablation] shadow-on_dropout-on_seed-0: no finished, evaluated training run in MLflow; its row "
                    "stays empty"]
    assert entries[0]["run_id"] is None and entries[0]["metrics"] == {}
    assert entries[1]["run_id"] == evaluated and entries[1]["validation_loss"] == 0.3
    assert entries[1]["model_uri"] == f"runs:/{evaluated}/pipeline"  # no logged model: the run's artifact path

    summary = ablation_run.write_reports(run, entries, grid=None)
    assert json.loads((project / ABLATION_JSON).read_text()) == json.loads(json.dumps(summary))
    table = (project / ABLATION_MD).read_text()
    assert f"`{run.commit}`" in table and ("shadow-on_dropout-on_seed-0 (trained), shadow-off_dropout-on_seed-0 "
                                           "(already in DVC)") in table
    assert f"| shadow-off_dropout-on_seed-0 | off | on | 0 | 0.5 | 0.3 | `{evaluated}` |" in table  # none bold
    assert "No per-cell evaluation came back" in table and summary["effects"] == {}
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
    assert command[1:] == ["-m", "dvc", "exp", "run", "--temp", "-n", "shadow-off_dropout-on_seed-0",
                           "-S", "shadow.enabled=false", "-S", "captions.augmentation.caption_dropout=true",
                           "-S", "train.seed=0", "-S", "train.experiment='test-ablation'"]
    # a job's threads are pinned; on a GPU machine it sees only its own GPU
    pinned = ablation_run.pin_job(env, threads=3, gpu=1)
    assert [pinned[name] for name in ablation_run.THREAD_VARIABLES] == ["3", "3", "3"]
    assert pinned["CUDA_VISIBLE_DEVICES"] == "1" and "CUDA_VISIBLE_DEVICES" not in ablation_run.pin_job(env, 3, None)
    assert ablation_run.threads_per_job({"parallel": 2}, cpu_count=16) == 8
    assert ablation_run.threads_per_job({"parallel": 4, "threads_per_job": 1}, cpu_count=16) == 1
    assert ablation_run.threads_per_job({"parallel": 8}, cpu_count=2) == 1


def test_a_failing_variant_names_itself_and_ends_with_its_output(tmp_path, monkeypatch):
    variant = Variant(shadow=True, caption_dropout=False)
    monkeypatch.setattr(ablation_run, "variant_command",
                        lambda v, e: ["sh", "-c", "echo one; echo two; exit 4"])
    lines: list[str] = []
    with pytest.raises(ablation_run.VariantFailed, match=r"'shadow-on_dropout-off_seed-0' failed \(dvc exp run exit 4\)"
                                                         r"(.|\n)*Last output:\none\ntwo$"):
        ablation_run.run_variant_experiment(tmp_path, variant, "x", env={"PATH": "/bin:/usr/bin"},
                                            on_line=lines.append)
    assert lines == ["echo one; echo two; exit 4", "one", "two"]  # the command line (after the interpreter), then its output
    # a job that ends well reports its time; a running one is registered, so stopping the ablation stops it
    jobs = ablation_run.RunningJobs()
    monkeypatch.setattr(ablation_run, "variant_command", lambda v, e: ["sh", "-c", "echo fine"])
    done = ablation_run.run_variant_experiment(tmp_path, variant, "x", env={"PATH": "/bin:/usr/bin"},
                                               on_line=lines.append, jobs=jobs)
    assert done["ran"] and isinstance(done["seconds"], float) and not jobs._live
    monkeypatch.setattr(ablation_run, "variant_command", lambda v, e: ["sh", "-c", "echo go; sleep 60"])
    import threading

    box: dict = {}
    runner = threading.Thread(target=_run_catching, args=(box, tmp_path, variant, jobs))
    runner.start()
    for _ in range(100):
        if jobs._live:
            break
        threading.Event().wait(0.05)
    jobs.stop_all(grace_s=1.0)
    runner.join(timeout=20)
    assert not runner.is_alive() and "exit -15" in str(box["error"]) and jobs.stopping


def test_replicated_arms_give_effects_with_intervals_a_forest_plot_and_the_seed_spread(project):
    """Two arms x three seeds whose per-cell tables differ by a known amount: the report's effects,
    its forest plot and reports/seed_spread.json (what the promotion gate reads for its margins)."""
    import numpy as np

    from components.evaluation.per_cell import denoising_rows
    from components.layout import ABLATION_FOREST, SEED_SPREAD
    from components.tracking.promotion import seed_spread

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ablation"]["seeds"] = [0, 1, 2]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(project, "commit", "-qam", "three seeds")
    run = ablation_run.start_ablation(project)
    assert len(run.variants) == 6
    rng = np.random.default_rng(3)
    cells = [f"cell{c}" for c in range(12)] * 3
    base = rng.gamma(4.0, 10.0, len(cells))
    direction = {"heldout_denoising_loss": {"value": 0.5, "direction": "lower_is_better"}}
    for variant in run.variants:
        worse = 1.0 if variant.shadow else 1.5  # shadow off denoises 50 % worse on every cell
        error = base * worse * (1 + rng.normal(0, 0.02)) + rng.normal(0, 0.5, len(cells))
        table = denoising_rows(cells, error, error * 2, np.full(len(cells), 100.0))
        _training_run(run, variant, direction, loss=0.3, per_cell=table)
    outcomes = {v.name: {"variant": v.name, "ran": True, "seconds": 1.0} for v in run.variants}
    entries = ablation_run.collect_entries(run, outcomes)
    assert all(entry["table"] is not None for entry in entries)
    summary = ablation_run.write_reports(run, entries, grid=None, n_boot=300)

    [effect] = summary["effects"]["heldout_denoising_loss"]["effects"]
    assert effect["name"] == "shadow on - off" and effect["verdict"] == "better" and effect["high"] < 0
    assert effect["seeds_needed"] == 2  # a large effect against a small seed spread
    arms = summary["effects"]["heldout_denoising_loss"]["arms"]
    assert arms["shadow-off_dropout-on"]["estimate"] > arms["shadow-on_dropout-on"]["estimate"]
    table = (project / ABLATION_MD).read_text()
    assert "| heldout_denoising_loss | lower is better |" in table and "| shadow on - off |" in table
    assert (project / ABLATION_FOREST).stat().st_size > 1000 and "![effects](ablation/effects.png)" in table
    spread = seed_spread(project)
    assert spread == json.loads((project / SEED_SPREAD).read_text()) and run.parent_id in spread["source"]
    assert 0 < spread["metrics"]["heldout_denoising_loss"]["sd"] < 0.1
    assert spread["metrics"]["heldout_denoising_loss"]["pair_half_width"] > 0  # part of the gate's margin
    assert "table" not in json.loads((project / ABLATION_JSON).read_text())["variants"][0]
    artifacts = {f.path for f in run.client.list_artifacts(run.parent_id, "ablation")}
    assert {"ablation/effects.png", "ablation/seed_spread.json", "ablation/effects_table.json"} <= artifacts


def _run_catching(box, tmp_path, variant, jobs):
    try:
        ablation_run.run_variant_experiment(tmp_path, variant, "x", env={"PATH": "/bin:/usr/bin"},
                                            on_line=lambda line: None, jobs=jobs)
    except ablation_run.VariantFailed as err:
        box["error"] = err


def test_job_slots_hand_out_each_slot_once_until_given_back():
    import queue

    slots: queue.Queue = queue.Queue()
    ablation_run.open_job_slots(slots, 2)
    assert sorted([slots.get_nowait(), slots.get_nowait()]) == [0, 1]
    assert slots.empty()
    ablation_run.open_job_slots(slots, 0)
    assert slots.get_nowait() == 0  # at least one job at a time


def test_a_variant_job_refuses_a_checkout_at_another_commit(project):
    baseline = _git(project, "rev-parse", "HEAD")
    ablation_run.require_checkout(project, baseline)  # the ablation's own commit: no complaint
    (project / "note.txt").write_text("a later commit\n")
    _git(project, "add", "note.txt")
    _git(project, "commit", "-qm", "later")
    with pytest.raises(RuntimeError, match=rf"at commit \w{{7}}, the ablation at {baseline[:7]}: check out"):
        ablation_run.require_checkout(project, baseline)


def test_jobs_take_their_dvc_queue_entry_one_at_a_time_and_a_job_that_ran_another_fails(tmp_path, monkeypatch):
    """`dvc exp run --temp` runs whatever the repository's experiment queue holds: a job starts only
    once the previous one printed "Reproducing experiment" (its entry taken), and a job that still
    ran someone else's entry fails, naming it."""
    import threading

    # Each fake job logs when it starts, announces its entry a little later, then works on.
    log = tmp_path / "starts.log"
    script = (f"echo start $$ >> {log}; sleep 0.5; echo \"Reproducing experiment 'x'\"; "
              f"echo taken $$ >> {log}; sleep 0.5; echo 'Ran experiment(s): '$NAME")
    monkeypatch.setattr(ablation_run, "variant_command", lambda v, e: ["sh", "-c", script])
    variants = [Variant(True, True, 0), Variant(False, True, 0)]
    threads = [threading.Thread(target=ablation_run.run_variant_experiment,
                                args=(tmp_path, v, "x", {"PATH": "/bin:/usr/bin", "NAME": v.name}, lambda line: None))
               for v in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["start", "taken", "start", "taken"]  # never two jobs between start and taken

    monkeypatch.setattr(ablation_run, "variant_command",
                        lambda v, e: ["sh", "-c", "echo 'Ran experiment(s): shadow-on_dropout-on_seed-0, exp-a660f'"])
    with pytest.raises(ablation_run.VariantFailed, match=r"also ran exp-a660f"):
        ablation_run.run_variant_experiment(tmp_path, variants[0], "x", {"PATH": "/bin:/usr/bin"}, lambda line: None)
