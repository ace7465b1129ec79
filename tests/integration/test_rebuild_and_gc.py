"""Rebuilding a registered version from its lineage, and a garbage collection that keeps it rebuildable.

One micro project for the module: `retrain` registers version 1 and pushes its data to the local
DVC remote. Real DVC in a temporary git repository, real MLflow on SQLite, the Prefect test harness.

Slow tier: one micro retrain, one rebuild of it (a second pipeline run) and two gc passes,
about 4.5 minutes of one worker in a two-worker `make test` on 2 cores (2026-12-07).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_micro_project, set_params

pytestmark = pytest.mark.slow(minutes=4.5)

DATA_OUTS = {"data/raw", "data/curated/index.parquet", "data/curated/rejected.parquet",
             "data/captions/captions.parquet", "data/samples", "models/vae", "data/latents"}


@contextlib.contextmanager
def _inside(folder: Path):
    """The CLI finds its project from the working directory (and DVC resolves targets against it)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    """A micro project whose retrain registered version 1 and pushed its data to dvc-remote/."""
    from flows.retrain import retrain

    root = make_micro_project(tmp_path_factory.mktemp("lineage-project"))
    with _inside(root):
        outcome = retrain(project_dir=str(root))
    assert outcome["registration"]["version"] == 1 and outcome["pushed"]
    return root


def _client(project):
    from components.tracking.store import mlflow_client

    return mlflow_client(project)


def _mesa(project, *args: str):
    from typer.testing import CliRunner

    from flows.cli import app

    with _inside(project):
        result = CliRunner().invoke(app, list(args))
    print(result.output)
    return result


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _object(store: Path, digest: str) -> Path:
    return store / "files" / "md5" / digest[:2] / digest[2:]


def _objects_of(store: Path, lock_text: str, outs) -> list[Path]:
    """Every object (listings and files) the outputs `outs` of a dvc.lock need in a cache or remote."""
    from components.versioning.dvc_git import lock_outs

    needed = []
    for out, digest in lock_outs(lock_text).items():
        if out not in outs:
            continue
        needed.append(_object(store, digest))
        if digest.endswith(".dir"):
            needed += [_object(store, entry["md5"]) for entry in json.loads(_object(store, digest).read_text())]
    return needed


@pytest.mark.timeout(1500)  # the module's retrain and a full rebuild: two pipeline runs on a shared machine
def test_rebuild_reproduces_version_1_data_and_weights(project, prefect_api, tmp_path):
    from components.versioning.rebuild import read_lineage, rebuild_version
    from flows.prefect_api import stage_process_env

    client = _client(project)
    lineage = read_lineage(client, "mesa", 1, tmp_path)
    # The lineage: the commit, the params and dvc.lock as the training saw them.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert lineage.commit == head and lineage.record["git_dirty"] == "false"
    assert lineage.segment == "lineage/steps-000012"
    assert {"dvc.lock", "params.yaml", "lineage.json"} <= set(lineage.files)
    run_tags = client.get_run(lineage.run_id).data.tags
    assert {out: run_tags[f"mesa.dvc.{out}"] for out in DATA_OUTS} == {
        out: digest for out, digest in lineage.recorded_outs().items() if out in DATA_OUTS}

    lines: list[str] = []
    report = rebuild_version(project, lineage, client, env=stage_process_env(prefect_api, None), log=lines.append)
    print("\n".join(lines[-40:]) + "\n" + report.table())
    checks = {check.out: check for check in report.outs}
    assert DATA_OUTS <= set(checks)
    assert {out: (c.recorded == run_tags[f"mesa.dvc.{out}"], c.equal, c.remote) for out, c in checks.items()
            if out in DATA_OUTS} == {out: (True, True, "pulled") for out in DATA_OUTS}
    assert report.weights is not None and report.weights.tensors > 0
    assert report.weights.equal, (report.weights.differing_tensors[:5], report.weights.differing_files)
    assert report.ok
    # Really rerun: every upstream stage ran again (no run cache), and its MLflow run went to the
    # worktree's throwaway store, not the project's.
    ran = {line.split("'")[1] for line in lines if "Running stage '" in line}
    assert ran == {"synth", "validate", "captions", "prepare", "vae", "latents", "train"}
    assert len(client.search_runs([client.get_run(lineage.run_id).info.experiment_id])) == 1
    # The worktree is gone, and git knows it.
    assert not report.workdir.exists()
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=project, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1


def test_gc_lists_then_deletes_an_old_unregistered_run_and_keeps_version_1(project, prefect_api, tmp_path):
    from flows.retrain import retrain

    client = _client(project)
    v1 = client.get_model_version("mesa", "1")
    v1_run = client.get_run(v1.run_id)
    # A second training with another seed: a configuration of its own (own checkpoint folder, own
    # MLflow run), trained only up to train, so nothing registers it.
    committed = (project / "params.yaml").read_text()
    set_params(project, train__seed=1)
    try:
        with _inside(project):
            retrain(project_dir=str(project), stages=["train"])
    finally:
        (project / "params.yaml").write_text(committed)
    second = json.loads((project / "models/train_run.json").read_text())["run_id"]
    assert second != v1.run_id
    second_run = client.get_run(second)
    folders = sorted(p.name for p in (project / "models/checkpoints").iterdir())
    assert len(folders) == 2
    second_model = next(m for m in client.search_logged_models([second_run.info.experiment_id])
                        if m.source_run_id == second)

    stores = [project / "mlartifacts", project / "models/checkpoints", project / ".dvc/cache", project / "dvc-remote"]
    before = {store: _files(store) for store in stores}
    dry = _mesa(project, "gc", "--keep-runs", "0", "--older-than", "0", "--cloud")
    assert dry.exit_code == 0
    listed = {line.split()[0]: line for line in dry.output.splitlines() if line.startswith("  ")}
    assert "delete" in listed[second[:12]] and "registered: mesa v1" in listed[v1.run_id[:12]]
    assert "dry run: nothing deleted" in dry.output
    assert {store: _files(store) for store in stores} == before  # a dry run deletes nothing

    applied = _mesa(project, "gc", "--apply", "--keep-runs", "0", "--older-than", "0", "--cloud")
    assert applied.exit_code == 0
    # The unregistered run: artifacts, logged model, checkpoints and the run itself are gone.
    assert client.get_run(second).info.lifecycle_stage == "deleted"
    assert not _files(Path(second_run.info.artifact_uri.removeprefix("file://")))
    assert not _files(Path(second_model.artifact_location.removeprefix("file://")))
    assert not (project / "models/train_run.json").exists()  # it named the deleted run
    from components.versioning.retention import _checkpoint_runs

    assert [_checkpoint_runs(p) for p in (project / "models/checkpoints").iterdir()] == [[v1.run_id]]
    # Version 1 keeps its run, model artifacts, checkpoints and data (cache and remote).
    assert client.get_run(v1.run_id).info.lifecycle_stage == "active"
    assert _files(Path(v1_run.info.artifact_uri.removeprefix("file://")))
    v1_model = client.get_logged_model(v1.source.removeprefix("models:/"))
    assert any(f.endswith(".safetensors") for f in _files(Path(v1_model.artifact_location.removeprefix("file://"))))
    from components.versioning.rebuild import read_lineage

    lock = read_lineage(client, "mesa", 1, tmp_path).files["dvc.lock"]
    for store in (project / ".dvc/cache", project / "dvc-remote"):
        missing = [p for p in _objects_of(store, lock, DATA_OUTS) if not p.exists()]
        assert not missing, missing
    assert any(before[store] - _files(store) for store in stores[2:])  # DVC did collect something
    # (The next test pulls all of version 1's data from the remote again, verified file by file.)


def test_a_tampered_record_or_remote_is_reported_with_a_non_zero_exit(project, prefect_api):
    """Runs after the gc test: the outputs nobody tampered with still come back from the remote."""
    client = _client(project)
    run = client.get_run(client.get_model_version("mesa", "1").run_id)
    lineage_dir = Path(run.info.artifact_uri.removeprefix("file://")) / "lineage/steps-000012"

    # Changed params in the record: refused before anything runs (exit 2).
    params = lineage_dir / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("cells: 24", "cells: 20"))
    try:
        refused = _mesa(project, "rebuild", "--version", "1")
    finally:
        params.write_text(original)
    assert refused.exit_code == 2
    assert "params hash" in refused.output and "cannot be rebuilt faithfully" in refused.output

    # A damaged file of data/samples in the remote, and a recorded data/raw that this code and
    # these params do not make: both show in the table, and the exit code is 1.
    lock_path = lineage_dir / "dvc.lock"
    lock_text = lock_path.read_text()
    recorded = yaml.safe_load(lock_text)
    raw = next(o for o in recorded["stages"]["synth"]["outs"] if o["path"] == "data/raw")["md5"]
    samples = next(o for o in recorded["stages"]["prepare"]["outs"] if o["path"] == "data/samples")["md5"]
    remote = project / "dvc-remote"
    victim = _object(remote, json.loads(_object(remote, samples).read_text())[0]["md5"])
    victim_bytes, victim_mode = victim.read_bytes(), victim.stat().st_mode
    forged_raw = "0" * 32 + ".dir"
    try:
        victim.chmod(0o644)
        victim.write_bytes(victim_bytes + b"tampered")
        lock_path.write_text(lock_text.replace(raw, forged_raw))
        tampered = _mesa(project, "rebuild", "--version", "1", "--until", "synth")
    finally:
        victim.write_bytes(victim_bytes)
        victim.chmod(victim_mode)
        lock_path.write_text(lock_text)
    assert tampered.exit_code == 1
    rows = {line.split()[0]: line.split() for line in tampered.output.splitlines()
            if line.startswith(("data/", "models/"))}
    assert rows["data/raw"][1] == forged_raw and rows["data/raw"][2] == raw and rows["data/raw"][3] == "NO"
    assert rows["data/samples"][-3:] == ["missing", "or", "damaged"]
    untouched = set(DATA_OUTS) - {"data/raw", "data/samples"}
    assert {out: rows[out][-1] for out in untouched} == {out: "pulled" for out in untouched}
    assert "does NOT reproduce" in tampered.output
