"""components.tracking.promotion: the registry steps' decisions around the gate (a real SQLite MLflow
registry whose versions point at empty folders; registering a real pipeline is in test_registry.py
and the retrain integration tests)."""
from __future__ import annotations

import json

import pytest

from components.tracking import promotion, registry


@pytest.fixture
def store(tmp_path, monkeypatch):
    """(project folder, client) on the project's own SQLite store, with `mesa` version 1 registered."""
    from components.tracking.store import mlflow_client

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = mlflow_client(tmp_path)
    (tmp_path / "model").mkdir()
    client.create_registered_model("mesa")
    client.create_model_version("mesa", source=str(tmp_path / "model"), tags={registry.EVALUATION_TAG: "old"})
    return tmp_path, client


def test_nothing_is_registered_before_a_pipeline_is_trained_and_no_store_is_created(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    said: list[str] = []
    assert promotion.register_trained(tmp_path, "mesa", say=said.append) is None
    assert said == ["[register] no models/train_run.json: nothing trained yet, nothing registered"]
    assert not (tmp_path / "mlruns.db").exists()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/train_run.json").write_text(json.dumps({"run_id": "r"}))
    with pytest.raises(FileNotFoundError, match="run the evaluate stage before registering"):
        promotion.register_trained(tmp_path, "mesa")


def test_a_stale_evaluation_is_redone_and_retagged_a_current_one_is_kept(store):
    root, client = store
    version = client.get_model_version("mesa", "1")
    evaluated: list[tuple[str, str]] = []

    def evaluate(model: str, label: str) -> dict:
        evaluated.append((model, label))
        return {"evaluation_fingerprint": "new", "metrics": {"loss": {"value": 0.25, "direction": "lower_is_better"}}}

    assert promotion.refresh_if_stale(client, "mesa", version, "old", evaluate) == "old" and not evaluated
    said: list[str] = []
    assert promotion.refresh_if_stale(client, "mesa", version, "new", evaluate, say=said.append) == "new"
    assert evaluated == [("models:/mesa/1", "mesa-v1")] and "evaluating it again" in said[0]
    tags = client.get_model_version("mesa", "1").tags
    assert tags[registry.EVALUATION_TAG] == "new" and tags["metric.loss"] == "0.25"
    assert promotion.refresh_if_stale(client, "mesa", None, "fp", evaluate) == "fp"  # no champion yet


def test_judging_needs_a_challenger_and_a_rollback_a_previous_champion(store):
    root, client = store
    with pytest.raises(LookupError, match="has no challenger: run `mesa retrain`"):
        promotion.judge_challenger(root, client, "mesa", registry.PromotionGate.from_params(None),
                                   evaluate=lambda model, label: {})
    with pytest.raises(LookupError, match="has no 'champion' alias"):
        promotion.roll_back(client, "mesa")
    assert promotion.current_fingerprint(root) is None
    (root / "reports").mkdir()
    (root / "reports/metrics.json").write_text(json.dumps({"evaluation_fingerprint": "abc"}))
    assert promotion.current_fingerprint(root) == "abc"
    assert promotion.model_exists(client, "mesa") and not promotion.model_exists(client, "other")
