"""A team's `mlflow server` (PostgreSQL backend) goes down for 30 s in the middle of a run: training
must not notice, and every step must reach the server once it is back."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from components.tracking import run_logger
from components.tracking.run_logger import RunLogger
from components.tracking.server import drop_database, ensure_database, postgres_url, start_mlflow_server

OUTAGE_S = 30.0
STEP_S = 0.1


class Training:
    """A stand-in training loop: one metric every STEP_S seconds until stopped."""

    def __init__(self, logger: RunLogger):
        self.logger = logger
        self.steps = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fake-training", daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            self.logger.log_metrics({"loss": 1.0 / (self.steps + 1)}, step=self.steps)
            self.steps += 1
            time.sleep(STEP_S)


def _wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_training_continues_through_a_server_outage(postgres, tmp_path, monkeypatch):
    """Slow tier: an MLflow server stopped and restarted under a logging run, about 45 s."""
    from mlflow import MlflowClient

    # MLflow's own retries low (what configure_client_retries does for servers): our thread retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    said: list[str] = []
    monkeypatch.setattr(run_logger, "_say", said.append)

    database = f"mesa_test_{uuid.uuid4().hex[:10]}_outage"
    ensure_database(postgres, database)
    server = start_mlflow_server(postgres_url(postgres, database, driver="psycopg2"), tmp_path / "artifacts")
    try:
        server.wait_healthy(180)
        logger = RunLogger.start("outage-drill", "drill", tmp_path / "project", uri=server.url,
                                 system_metrics=False)
        logger.log_params({"train": {"lr": 1e-4}})
        training = Training(logger)
        training.thread.start()
        _wait_until(lambda: training.steps >= 10, 60)
        assert logger.flush(60)

        server.stop()
        at_stop = training.steps
        time.sleep(OUTAGE_S / 2)
        logger.log_image(np.zeros((8, 8, 3), dtype=np.uint8), "eval/during-outage.png")
        time.sleep(OUTAGE_S / 2)
        during = training.steps - at_stop
        buffered = logger.pending_metrics
        # Training kept stepping while nothing could be sent (30 s at 0.1 s a step: ~300 steps).
        assert during > 20, f"training advanced only {during} steps during the outage"
        assert buffered > 0

        server.restart(180)
        _wait_until(lambda: any("reachable again" in m for m in said), 120)
        training.stop.set()
        training.thread.join(10)
        assert logger.finish(timeout_s=120) is None, "everything should be sent once the server is back"

        client = MlflowClient(server.url)
        history = client.get_metric_history(logger.run_id, "loss")
        assert {m.step for m in history} == set(range(training.steps))
        assert all(m.value == pytest.approx(1.0 / (m.step + 1)) for m in history)
        run = client.get_run(logger.run_id)
        assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.0001"
        assert [a.path for a in client.list_artifacts(logger.run_id, "eval")] == ["eval/during-outage.png"]
        assert sum("unreachable" in m for m in said) == 1, said
        print(f"outage drill: {training.steps} steps, {during} during the {OUTAGE_S:g} s outage, "
              f"{buffered} metrics buffered at its end")
    finally:
        server.stop()
        drop_database(postgres, database)
