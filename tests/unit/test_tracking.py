"""components.tracking: run logging (queued, retried, spilled), lineage tags, the pyfunc model."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

from components.tracking import run_logger
from components.tracking.lineage import flatten_params, lineage_tags, params_hash
from components.tracking.run_logger import PARAM_VALUE_MAX, RunLogger
from components.tracking.spill import replay_spill
from components.tracking.store import configure_client_retries, ensure_experiment, tracking_uri


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    # A developer's MLFLOW_TRACKING_URI must not send test runs to their server.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One project folder (one SQLite store: its first migration takes seconds) for the module."""
    return tmp_path_factory.mktemp("tracking-project")


@pytest.fixture
def messages(monkeypatch):
    """The status lines RunLogger prints, collected."""
    said: list[str] = []
    monkeypatch.setattr(run_logger, "_say", said.append)
    return said


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _new_run(project, name):
    """A run created directly (so a test can wrap the client the logger sends with)."""
    client = _client(tracking_uri(project))
    experiment_id = ensure_experiment(client, "unit", project)
    return client, client.create_run(experiment_id, run_name=name).info.run_id


class GatedClient:
    """An MlflowClient whose log_batch waits until the test opens the gate."""

    def __init__(self, client):
        self._client = client
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def log_batch(self, *args, **kwargs):
        assert self.gate.wait(120), "the test never opened the gate"
        return self._client.log_batch(*args, **kwargs)


class FlakyClient:
    """An MlflowClient that fails like an unreachable server while `down` is set."""

    SENDING = ("log_batch", "log_artifact", "log_artifacts", "set_terminated")

    def __init__(self, client):
        self._client = client
        self.down = threading.Event()
        self.failures = 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in self.SENDING:
            return attr

        def call(*args, **kwargs):
            if self.down.is_set():
                from mlflow.exceptions import MlflowException

                self.failures += 1
                raise MlflowException("API request failed with exception Connection refused")
            return attr(*args, **kwargs)

        return call


def _wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- uris and params
def test_tracking_uri_prefers_the_environment(tmp_path, monkeypatch):
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_client_retries_turned_down_only_for_servers():
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    assert configure_client_retries("sqlite:///x.db", env) == {}
    changed = configure_client_retries("http://127.0.0.1:5000", env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the user's value stays
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in changed


def test_flatten_params_dots_and_strings():
    flat = flatten_params({"train": {"lr": 1e-4, "steps": 10, "ema": True, "sizes": [1, 2]},
                           "data": {"raw_dir": "data/raw", "extra": None, "empty": {}}})
    assert flat == {"train.lr": "0.0001", "train.steps": "10", "train.ema": "true",
                    "train.sizes": "[1, 2]", "data.raw_dir": "data/raw", "data.extra": "null",
                    "data.empty": "{}"}


def test_experiment_artifacts_live_in_the_project(project):
    client = _client(tracking_uri(project))
    experiment_id = ensure_experiment(client, "placement", project)
    assert ensure_experiment(client, "placement", project) == experiment_id
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (project.resolve() / "mlartifacts").as_uri()


def test_params_tags_flattened_and_logged(project, messages):
    many = {f"k{i:03d}": i for i in range(150)}  # more than one log_batch holds
    logger = RunLogger.start("unit", "params", project, tags={"purpose": "test"}, system_metrics=False)
    logger.log_params({"train": {"lr": 1e-4, "note": "x" * 900}, "many": many})
    logger.set_tags({"stage": "train"})
    assert logger.finish() is None
    run = _client(logger.tracking_uri).get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0001"
    assert len(run.data.params["train.note"]) == PARAM_VALUE_MAX
    assert run.data.params["train.note"].endswith("...")
    assert sum(k.startswith("many.") for k in run.data.params) == 150
    assert run.data.tags["purpose"] == "test" and run.data.tags["stage"] == "train"
    assert messages == []


# --------------------------------------------------------------------------- metrics
def test_log_metrics_returns_before_anything_is_sent(project):
    client, run_id = _new_run(project, "non-blocking")
    gated = GatedClient(client)
    logger = RunLogger(gated, run_id, project / "mlruns-spill")
    for step in range(200):
        logger.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-4}, step=step)
    # The sender is stuck in its first log_batch, so all 200 calls returned without sending.
    assert logger.pending_metrics == 400
    gated.gate.set()
    assert logger.finish(timeout_s=120) is None
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(200))
    assert [m.value for m in history] == pytest.approx([1.0 / (s + 1) for s in range(200)])
    assert len(client.get_metric_history(run_id, "lr")) == 200


def test_log_metrics_rejects_non_numbers_at_the_call(project):
    logger = RunLogger.start("unit", "bad-value", project, system_metrics=False)
    with pytest.raises(TypeError, match="step 3"):
        logger.log_metrics({"loss": "high"}, step=3)
    logger.finish()


def test_refused_request_is_reported_not_retried_forever(project, messages):
    logger = RunLogger.start("unit", "refused", project, system_metrics=False)
    logger.log_params({"lr": 1})
    logger.log_params({"lr": 2})  # MLflow refuses to change a logged param
    logger.log_metrics({"loss": 0.5}, step=0)
    assert logger.finish(timeout_s=60) is None
    assert len(logger.dropped) == 1 and logger.dropped[0].startswith("params")
    assert any("refused" in line for line in messages)
    assert [m.step for m in _client(logger.tracking_uri).get_metric_history(logger.run_id, "loss")] == [0]


def test_outage_is_announced_once_and_buffered_metrics_arrive(project, messages):
    client, run_id = _new_run(project, "outage")
    flaky = FlakyClient(client)
    logger = RunLogger(flaky, run_id, project / "mlruns-spill")
    logger.log_metrics({"loss": 0.0}, step=0)
    assert logger.flush(60)
    flaky.down.set()
    for step in range(1, 21):
        logger.log_metrics({"loss": float(step)}, step=step)
    _wait_until(lambda: flaky.failures >= 3)  # several retries, still one message
    for step in range(21, 31):
        logger.log_metrics({"loss": float(step)}, step=step)
    flaky.down.clear()
    assert logger.flush(60)
    logger.finish()
    unreachable = [m for m in messages if "unreachable" in m]
    back = [m for m in messages if "reachable again" in m]
    assert len(unreachable) == 1 and "training continues" in unreachable[0]
    assert len(back) == 1 and "sent 30 buffered metrics" in back[0]
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(31))


# --------------------------------------------------------------------------- images, artifacts
def test_images_and_artifacts_present(project, tmp_path):
    from PIL import Image

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"ok": True}))
    folder = tmp_path / "grids"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    logger = RunLogger.start("unit", "images", project, system_metrics=False)
    logger.log_image(np.zeros((8, 8, 3), dtype=np.uint8), "eval/grid.png")
    logger.log_image(np.linspace(0, 1, 64).reshape(8, 8), "eval/dem.png", step=7)
    logger.log_image(Image.new("RGB", (4, 4)), "pil.png")
    logger.log_artifact(report, "reports")
    logger.log_artifact(folder, "folder")
    with pytest.raises(FileNotFoundError):
        logger.log_artifact(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="png"):
        logger.log_image(np.zeros((4, 4)), "eval/grid.tif")
    assert logger.finish() is None
    client = _client(logger.tracking_uri)
    eval_files = {a.path for a in client.list_artifacts(logger.run_id, "eval")}
    assert eval_files == {"eval/grid.png", "eval/dem_step000007.png"}
    assert {a.path for a in client.list_artifacts(logger.run_id)} >= {"pil.png", "reports", "folder"}
    local = client.download_artifacts(logger.run_id, "eval/dem_step000007.png", str(tmp_path))
    assert Image.open(local).size == (8, 8)


def test_disabled_logger_logs_nothing(tmp_path):
    logger = RunLogger.start("unit", "rank-1", tmp_path, enabled=False)
    assert logger.run_id is None and not logger.enabled
    logger.log_params({"a": 1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_image(np.zeros((4, 4, 3), dtype=np.uint8), "x.png")
    logger.log_artifact(tmp_path / "does-not-matter")
    logger.set_tags({"a": "b"})
    assert logger.flush() is True
    assert logger.finish() is None
    assert list(tmp_path.iterdir()) == []  # no database, no artifacts, no spill


def test_system_metrics_are_queued(project):
    logger = RunLogger.start("unit", "system", project, system_metrics=True, system_metrics_interval_s=0.05)
    _wait_until(lambda: logger.pending_metrics > 0 or logger._monitor._logging_step > 0)
    logger.finish()
    metrics = _client(logger.tracking_uri).get_run(logger.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics


# --------------------------------------------------------------------------- spill and replay
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_spill_when_unreachable_at_finish_then_replay(project, messages):
    client, run_id = _new_run(project, "spill")
    flaky = FlakyClient(client)
    logger = RunLogger(flaky, run_id, project / "mlruns-spill")
    logger.log_params({"train": {"lr": 0.1}})
    assert logger.flush(60)
    flaky.down.set()
    for step in range(50):
        logger.log_metrics({"loss": float(step)}, step=step)
    logger.log_image(np.full((4, 4, 3), 200, dtype=np.uint8), "eval/last.png")
    spill = logger.finish(timeout_s=0.5)
    assert spill == project / "mlruns-spill" / f"{run_id}.jsonl"
    assert any(str(spill) in m for m in messages)
    assert client.get_run(run_id).info.status == "RUNNING"
    lines = [json.loads(line) for line in spill.read_text().splitlines()]
    assert lines[0] == {"kind": "run", "run_id": run_id, "tracking_uri": client.tracking_uri}
    assert lines[-1]["kind"] == "terminate"
    assert sum(len(e["metrics"]) for e in lines if e["kind"] == "metrics") == 50

    sent = replay_spill(spill)
    assert sent == len(lines) - 1
    assert not spill.exists() and spill.with_name(spill.name + ".replayed").exists()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(50))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/last.png"]


def test_replay_stops_and_keeps_the_rest_when_still_down(project, umask_022):
    client, run_id = _new_run(project, "replay-down")
    flaky = FlakyClient(client)
    logger = RunLogger(flaky, run_id, project / "mlruns-spill")
    flaky.down.set()
    logger.log_metrics({"loss": 1.0}, step=0)
    spill = logger.finish(timeout_s=0.2)
    before = spill.read_text()
    with pytest.raises(RuntimeError, match="sent 0 of"):
        replay_spill(spill, client=flaky)
    assert spill.read_text() == before
    # Rewritten atomically with the umask's mode, nothing left over.
    assert oct(spill.stat().st_mode & 0o777) == "0o644"
    assert not [p.name for p in spill.parent.iterdir() if p.name.endswith(".tmp")]
    flaky.down.clear()
    assert replay_spill(spill, client=flaky) == 2


# --------------------------------------------------------------------------- lineage
def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


DVC_LOCK = """schema: '2.0'
stages:
  prepare:
    cmd: mesa stage prepare
    outs:
    - path: data/samples
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
      size: 10
      nfiles: 2
  vae:
    cmd: mesa stage vae
    outs:
    - path: models/vae
      hash: md5
      md5: fedcba9876543210fedcba9876543210.dir
    - path: reports/vae.json
      hash: md5
      md5: 11111111111111111111111111111111
"""


def test_lineage_tags_from_git_and_dvc_lock(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "dvc.lock").write_text(DVC_LOCK)
    (repo / "params.yaml").write_text("train: {lr: 0.1}\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    (repo / "untracked.bin").write_text("stage output, not a code change")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()

    tags = lineage_tags(repo, {"train": {"lr": 0.1}}, {"train_samples": 12})
    assert tags == {
        "mesa.git_commit": commit,
        "mesa.git_dirty": "false",
        "mesa.params_hash": params_hash({"train": {"lr": 0.1}}),
        "mesa.dvc.data/samples": "0123456789abcdef0123456789abcdef.dir",
        "mesa.dvc.models/vae": "fedcba9876543210fedcba9876543210.dir",
        "mesa.dvc.reports/vae.json": "11111111111111111111111111111111",
        "mesa.data.train_samples": "12",
    }
    (repo / "params.yaml").write_text("train: {lr: 0.2}\n")
    assert lineage_tags(repo, {})["mesa.git_dirty"] == "true"


def test_lineage_outside_git_and_without_dvc_lock(tmp_path):
    tags = lineage_tags(tmp_path, {"a": 1})
    assert tags["mesa.git_commit"] == "unknown" and tags["mesa.git_dirty"] == "unknown"
    assert not any(k.startswith("mesa.dvc.") for k in tags)


def test_params_hash_ignores_key_order():
    assert params_hash({"a": 1, "b": {"c": 2, "d": 3}}) == params_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})
    assert len(params_hash({})) == 16


def test_broken_dvc_lock_says_what_to_do(tmp_path):
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    with pytest.raises(ValueError, match="dvc repro"):
        lineage_tags(tmp_path, {})


# --------------------------------------------------------------------------- pyfunc
def test_pyfunc_model_logs_loads_and_generates(project, tmp_path):
    import mlflow
    import pandas as pd

    from testsupport.pipelines import tiny_random_pipeline
    from components.tracking.pyfunc import using_tracking_uri, log_pipeline_model

    pipe = tiny_random_pipeline(["A Sentinel-2 image of hills", "plains in Spain"], image_px=32)
    pipe.save_pretrained(tmp_path / "pipeline")
    logger = RunLogger.start("unit", "pyfunc", project, system_metrics=False)
    model_uri = log_pipeline_model(logger.run_id, tmp_path / "pipeline", uri=logger.tracking_uri)
    logger.finish()

    with using_tracking_uri(logger.tracking_uri):  # models:/<id> resolves against the run's store
        model = mlflow.pyfunc.load_model(model_uri)
        requirements = (tmp_path / "req.txt")
        requirements.write_text(open(mlflow.pyfunc.get_model_dependencies(model_uri)).read())
    out = model.predict(pd.DataFrame({"prompt": ["hills", "plains"], "seed": [1, 2], "steps": [2, 2],
                                      "guidance": [2.0, 2.0]}))
    assert [o["prompt"] for o in out] == ["hills", "plains"] and [o["seed"] for o in out] == [1, 2]
    for o in out:
        assert o["rgb"].dtype == np.uint8 and o["rgb"].shape == (32, 32, 3)
        assert o["dem_m"].dtype == np.float32 and o["dem_m"].shape == (32, 32)
    # The compact answer (PNG + .npy, base64) of the same request decodes to the same arrays.
    from components.export.payload import decode_compact

    compact = model.predict(pd.DataFrame({"prompt": ["hills", "plains"], "seed": [1, 2], "steps": [2, 2],
                                          "guidance": [2.0, 2.0], "format": ["compact", "compact"]}))
    for answer, arrays in zip(compact, out):
        assert answer["format"] == "compact" and (answer["height"], answer["width"]) == (32, 32)
        rgb, dem = decode_compact(answer)
        np.testing.assert_array_equal(rgb, arrays["rgb"])
        np.testing.assert_array_equal(dem, arrays["dem_m"])
    pins = requirements.read_text()
    assert "torch==" in pins and "diffusers==" in pins and "mlflow==" in pins
    # The logged model sits in the project's artifact store, not in ./mlruns of the working dir.
    assert any((project / "mlartifacts" / "models").iterdir())


def test_pyfunc_input_needs_prompts():
    import pandas as pd

    from components.tracking.pyfunc import pinned_requirements, rows_to_requests

    with pytest.raises(ValueError, match="'prompt' column"):
        rows_to_requests(pd.DataFrame({"seed": [1]}))
    with pytest.raises(ValueError, match="row 1"):
        rows_to_requests(pd.DataFrame({"prompt": ["ok", ""]}))
    defaults = rows_to_requests(pd.DataFrame({"prompt": ["x", "y"], "seed": [7, None]}))
    assert defaults == [{"prompt": "x", "seed": 7, "steps": 50, "guidance": 7.0, "format": "arrays"},
                        {"prompt": "y", "seed": 42, "steps": 50, "guidance": 7.0, "format": "arrays"}]
    assert rows_to_requests(pd.DataFrame({"prompt": ["x"], "format": ["compact"]}))[0]["format"] == "compact"
    with pytest.raises(ValueError, match=r"row 0: format must be one of \['arrays', 'compact'\], got 'png'"):
        rows_to_requests(pd.DataFrame({"prompt": ["x"], "format": ["png"]}))
    pins = pinned_requirements()
    assert all("==" in p for p in pins) and any(p.startswith("torch==") for p in pins)
