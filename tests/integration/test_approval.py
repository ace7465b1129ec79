"""Human approval before a promotion (registry.gate.require_approval), on a real Prefect server (the test
harness) and a real SQLite MLflow registry whose versions point at empty folders (their evaluation
is current, so nothing is evaluated again; the lineage check is allowed past: these versions have no
training runs, and tests/integration/test_retrain_flow.py covers it).

The promote flow runs in a thread, pauses, and the test resumes it through the API as the Prefect
UI's Resume form or `mesa promote --approve N` would. About 40 s (Prefect polls a paused run every
10 s).
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

LOSS = "heldout_denoising_loss"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project whose registry has `mesa` v1 (champion) and v2, v3 (better), all evaluated on "fp"."""
    from components.tracking.store import mlflow_client

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("dvc.yaml", "configs"):
        (shutil.copytree if (PROJECT_ROOT / name).is_dir() else shutil.copy)(PROJECT_ROOT / name, tmp_path / name)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["registry"]["gate"].update(metrics=[LOSS], require_approval=True, approval_timeout_h=0.1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text('{"evaluation_fingerprint": "fp"}')
    client = mlflow_client(tmp_path)
    client.create_registered_model("mesa")
    for version, loss in ((1, 0.5), (2, 0.45), (3, 0.44), (4, 0.43)):
        (tmp_path / f"model{version}").mkdir()
        client.create_model_version("mesa", source=str(tmp_path / f"model{version}"), tags={
            "mesa.evaluation_fingerprint": "fp", f"metric.{LOSS}": repr(loss),
            f"metric.{LOSS}.direction": "lower_is_better"})
    client.set_registered_model_alias("mesa", "champion", "1")
    return tmp_path, client


def _promote_in_background(root: Path, version: int) -> tuple[threading.Thread, dict]:
    from flows.promote import promote_flow

    box: dict = {}

    def run():
        try:
            box["outcome"] = promote_flow(project_dir=str(root), version=version, allow_unreproducible=True)
        except BaseException as err:  # surfaced by the test
            box["error"] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _resume_when_paused(key: str, answer: dict, timeout_s: float = 120.0) -> str:
    from flows.prefect_api import resume_paused

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        resumed = resume_paused(key, answer)
        if resumed:
            return resumed
        time.sleep(1.0)
    raise AssertionError(f"no flow run paused under {key!r} within {timeout_s} s")


def _champion(client) -> str:
    return str(client.get_registered_model("mesa").aliases["champion"])


def test_a_passing_challenger_waits_for_a_reviewer_and_moves_champion_only_when_approved(project, prefect_api):
    from prefect.artifacts import Artifact

    root, client = project
    thread, box = _promote_in_background(root, 2)
    _resume_when_paused("approve-mesa-v2", {"approve": True, "reviewer": "ana", "note": "grids look right"})
    thread.join(timeout=120)
    assert "error" not in box, box.get("error")
    outcome = box["outcome"]
    assert outcome["promoted"] and outcome["champion"] == 2 and _champion(client) == "2"
    tags = client.get_model_version("mesa", "2").tags
    assert tags["promotion.review"] == "approved by ana: grids look right" and tags["promotion.decision"] == "promoted"
    # what the reviewer was shown: the comparison, as a Prefect artifact keyed by the version
    shown = Artifact.get("approve-mesa-v2")
    assert shown is not None and "waiting for review" in shown.data and f"| {LOSS} |" in shown.data

    # A rejection is recorded like a gate failure: the champion stays.
    thread, box = _promote_in_background(root, 3)
    _resume_when_paused("approve-mesa-v3", {"approve": False, "reviewer": "bob", "note": "too blurry"})
    thread.join(timeout=120)
    outcome = box["outcome"]
    assert not outcome["promoted"] and outcome["reasons"][0] == "review: rejected by bob: too blurry"
    assert _champion(client) == "2"
    tags = client.get_model_version("mesa", "3").tags
    assert tags["promotion.decision"] == "rejected" and tags["promotion.review"] == "rejected by bob: too blurry"


def test_a_review_given_up_front_needs_no_pause_and_a_failing_gate_needs_no_reviewer(project, prefect_api):
    from flows.promote import promote_flow

    root, client = project
    # `mesa promote --approve 4` when nothing is paused: judged at once with the approval
    outcome = promote_flow(project_dir=str(root), version=4, allow_unreproducible=True,
                           review={"approve": True, "reviewer": "ana", "note": ""})
    assert outcome["promoted"] and _champion(client) == "4"
    assert client.get_model_version("mesa", "4").tags["promotion.review"] == "approved by ana"
    # version 1 is worse than the champion now: rejected by the gate without waiting for anyone
    outcome = promote_flow(project_dir=str(root), version=1, allow_unreproducible=True)
    assert not outcome["promoted"] and outcome["review"] is None and _champion(client) == "4"
