"""The PostgreSQL-backed MLflow server under two kinds of concurrency: two training runs logging at
once, and the registry moving ``champion`` while another client keeps loading it."""
from __future__ import annotations

import threading
import time

import pytest

STEPS = 150


def _loss(run: int, step: int) -> float:
    return 1.0 / (step + 1) + run


def test_two_concurrent_training_runs_keep_every_metric_step(team_servers, mlflow_client, tmp_path):
    from components.tracking.run_logger import RunLogger

    start = threading.Barrier(2)
    loggers: dict[int, RunLogger] = {}
    errors: list[BaseException] = []

    def train(run: int) -> None:
        try:
            logger = RunLogger.start("team-concurrency", f"client-{run}", tmp_path / f"client-{run}",
                                     uri=team_servers.mlflow_url, system_metrics=False)
            loggers[run] = logger
            logger.log_params({"train": {"client": run}})
            start.wait(60)
            for step in range(STEPS):
                logger.log_metrics({"loss": _loss(run, step), "lr": 1e-4 * (run + 1)}, step=step)
                if step % 10 == 0:
                    time.sleep(0.01)  # a training step's worth of pause now and then
            assert logger.finish(timeout_s=120) is None, "nothing should be left to spill"
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=train, args=(run,), name=f"client-{run}") for run in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert len(loggers) == 2 and loggers[0].run_id != loggers[1].run_id

    for run, logger in loggers.items():
        history = mlflow_client.get_metric_history(logger.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(STEPS)), f"client {run} lost steps"
        assert all(m.value == pytest.approx(_loss(run, m.step)) for m in history)
        assert len(mlflow_client.get_metric_history(logger.run_id, "lr")) == STEPS
        info = mlflow_client.get_run(logger.run_id)
        assert info.info.status == "FINISHED" and info.data.params["train.client"] == str(run)
        assert not logger.dropped


# ----------------------------------------------------------------------------- registry
ACC = "landform_balanced_accuracy"
JS = "biome_adherence_js"


def _report(acc: float, js: float) -> dict:
    return {"metrics": {ACC: {"direction": "higher_is_better", "value": acc},
                        JS: {"direction": "lower_is_better", "value": js}}}


class ChampionLoader:
    """Loads ``models:/mesa@champion`` in a loop on its own thread, recording every load."""

    def __init__(self, uri: str = "models:/mesa@champion"):
        self.uri = uri
        self.loads: list[dict] = []  # {"start", "end", "run_id", "ok", "error"}
        self.started = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="champion-loader", daemon=True)

    def _loop(self) -> None:
        import mlflow
        import pandas as pd

        while not self.stop.is_set():
            record = {"start": time.monotonic()}
            with self.started:
                self.loads.append(record)
                self.started.notify_all()
            try:
                model = mlflow.pyfunc.load_model(self.uri)
                # Complete: the pipeline folder arrived whole and runs (one tiny denoising step).
                out = model.predict(pd.DataFrame({"prompt": ["A Sentinel-2 image of hills"], "seed": [1],
                                                  "steps": [1]}))
                record.update(run_id=model.metadata.run_id, ok=len(out) == 1 and out[0]["dem_m"].size > 0)
            except BaseException as err:  # the assertion names it
                record.update(ok=False, error=f"{type(err).__name__}: {err}")
            record["end"] = time.monotonic()

    def wait_for_load_start(self, after: int, timeout: float = 120) -> dict:
        """Block until load number `after` (0-based) has started; return its record."""
        with self.started:
            assert self.started.wait_for(lambda: len(self.loads) > after, timeout), "the loader stalled"
            return self.loads[after]

    def wait_done(self, record: dict, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "end" not in record:
            assert time.monotonic() < deadline, "a load did not finish in time"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def logged_models(team_servers, tmp_path_factory):
    """Two tiny pipelines logged through the server (artifacts go to its proxied store)."""
    from mlflow import MlflowClient

    from components.tracking.pyfunc import log_pipeline_model
    from components.tracking.store import configure_client_retries, ensure_experiment
    from testsupport.pipelines import tiny_random_pipeline

    root = tmp_path_factory.mktemp("team-registry")
    configure_client_retries(team_servers.mlflow_url)
    client = MlflowClient(team_servers.mlflow_url)
    experiment_id = ensure_experiment(client, "team-registry", root)
    folder = root / "pipeline"
    tiny_random_pipeline(["A Sentinel-2 image of hills"], image_px=32).save_pretrained(folder)
    models = []
    for _ in range(2):
        run_id = client.create_run(experiment_id).info.run_id
        models.append((run_id, log_pipeline_model(run_id, folder, uri=team_servers.mlflow_url)))
    return models


def test_champion_loads_stay_whole_while_promotions_and_rollback_move_it(team_servers, mlflow_client,
                                                                         logged_models, monkeypatch, tmp_path):

    from components.tracking.registry import (
        PromotionGate,
        get_alias_version,
        promote,
        register_pipeline,
        rollback,
    )

    client, name, lock = mlflow_client, "mesa", tmp_path / ".mesa-registry.lock"
    gate = PromotionGate(max_regression=0.05, floors={ACC: 0.2})
    reports = [_report(0.4, 0.2), _report(0.5, 0.15)]
    versions = [int(register_pipeline(client, name, run_id, uri, rep, lock_path=lock).version)
                for (run_id, uri), rep in zip(logged_models, reports)]
    version_of_run = {run_id: version for (run_id, _), version in zip(logged_models, versions)}
    v1, v2 = versions
    assert promote(client, name, gate, v1, lock_path=lock).promote

    # The loader resolves models:/ through the global tracking URI.
    # (monkeypatch restores both after the test: later tests must not talk to a stopped server)
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_servers.mlflow_url)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", team_servers.mlflow_url)
    loader = ChampionLoader()
    reigns = [(v1, 0.0)]  # (version, monotonic time its alias move began)
    moves = []  # (before, after) of every alias move

    def move(action, then_wait_a_load: bool = False) -> None:
        """Run `action` (which moves the champion) while a load is in flight."""
        in_flight = loader.wait_for_load_start(len(loader.loads))  # the next load to start
        before = time.monotonic()
        action()
        after = time.monotonic()
        champion = int(get_alias_version(client, name, "champion").version)
        reigns.append((champion, before))
        moves.append((before, after))
        loader.wait_done(in_flight)
        if then_wait_a_load:  # a load that began after the move: it must see the new champion
            loader.wait_done(loader.wait_for_load_start(len(loader.loads)))

    loader.thread.start()
    try:
        loader.wait_done(loader.wait_for_load_start(0))
        move(lambda: promote(client, name, gate, v2, lock_path=lock))          # v1 -> v2
        rejected = promote(client, name, gate, v1, lock_path=lock)             # worse than v2: no move
        assert not rejected.promote and any(ACC in r and "0.4" in r for r in rejected.reasons)
        move(lambda: rollback(client, name, lock_path=lock))                   # v2 -> v1
        move(lambda: promote(client, name, gate, v2, lock_path=lock), then_wait_a_load=True)  # v1 -> v2
    finally:
        loader.stop.set()
        loader.thread.join(120)
    assert [v for v, _ in reigns] == [v1, v2, v1, v2]

    loads = [load for load in loader.loads if "end" in load]
    failed = [load for load in loads if not load.get("ok")]
    assert not failed, f"{len(failed)} of {len(loads)} loads failed: {failed[:3]}"
    for before, after in moves:
        assert any(load["start"] < before and load["end"] > after for load in loads), \
            "an alias move had no load in flight around it"
    for load in loads:
        version = version_of_run[load["run_id"]]
        # The version loaded must have been champion at some moment of the load.
        # Reign i begins when move i-1 begins and lasts until move i has returned.
        spans = [(start, moves[i][1] if i < len(moves) else float("inf"))
                 for i, (v, start) in enumerate(reigns) if v == version]
        assert any(start <= load["end"] and load["start"] <= end for start, end in spans), \
            f"a load got version {version}, which was not champion while it loaded"
    assert {version_of_run[load["run_id"]] for load in loads} == {v1, v2}
    assert version_of_run[loads[-1]["run_id"]] == v2  # the last load began after the last move
