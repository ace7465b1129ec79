"""The registry steps: register a trained pipeline, promote a challenger, roll the champion back.

`retrain` calls `register_trained_model` and `promote_challenger` after its stages; `mesa promote`
runs the `promote` flow on its own. Every decision is made with the gate in params.yaml
``registry.gate`` (components/tracking/registry.py), against numbers from the same held-out
evaluation: a version whose evaluation fingerprint differs from the current one (the held-out set,
the evaluate settings or the metric code changed) is evaluated again first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from components.params import load_params, reject_unknown_keys
from flows.stages.common import MODELS_DIR, REPORTS_DIR

LOCK_FILE = ".mesa-registry.lock"  # serialises promotions and rollbacks of this project's registry
REGISTRY_KEYS = {"model_name", "register", "promote", "gate"}


def registry_settings(project_dir: str | Path) -> dict[str, Any]:
    """params.yaml ``registry``, checked for unknown keys."""
    settings = dict(load_params(project_dir).get("registry") or {})
    reject_unknown_keys("registry", settings, REGISTRY_KEYS)
    return settings


def _client(project_dir: str | Path):
    from components.tracking.runs import _client_for

    return _client_for(project_dir, None)[1]


@task(name="register model", retries=2, retry_delay_seconds=5)
def register_trained_model(project_dir: str) -> dict[str, Any] | None:
    """Register models/pipeline from the run in models/train_run.json, with its evaluation as tags.

    Idempotent: a logged model that already has a version is not registered again (``new`` is
    False and no alias moves); a resumed run that trained further logs a new model and gets a new
    version. A new version gets the alias ``challenger``.

    Returns:
        ``{"model", "version", "run_id", "new"}``, or None when there is no trained pipeline yet.
    """
    from components.tracking import registry
    from components.tracking.pyfunc import log_pipeline_model

    root = Path(project_dir)
    record_path, metrics_path = root / MODELS_DIR / "train_run.json", root / REPORTS_DIR / "metrics.json"
    if not record_path.exists():
        print("[register] no models/train_run.json: nothing trained yet, nothing registered")
        return None
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: run the evaluate stage before registering "
                                "(the promotion gate judges the version by it)")
    record, report = json.loads(record_path.read_text()), json.loads(metrics_path.read_text())
    name = registry_settings(root)["model_name"]
    client = _client(root)
    known = _model_exists(client, name)
    model_uri = record.get("model_uri")
    if not model_uri:  # train.log_model was off: log it now, once per run
        logged = registry.find_version_for_run(client, name, record["run_id"]) if known else None
        model_uri = logged.source if logged else log_pipeline_model(
            record["run_id"], root / MODELS_DIR / "pipeline", uri=client.tracking_uri)
    before = registry.find_version_for_model(client, name, record["run_id"], model_uri) if known else None
    version = registry.register_pipeline(client, name, record["run_id"], model_uri, report,
                                         lock_path=root / LOCK_FILE)
    # Registering and naming the challenger are one step: a version a killed run left without its
    # alias is completed here, and counts as new so that the gate judges it.
    new = not registry.registration_complete(version)
    if new:
        registry.complete_registration(client, name, version.version)
    state = ("registered (alias challenger)" if before is None else
             "completed: a stopped run had registered it without its challenger alias" if new else
             "already registered (this logged model): nothing new")
    print(f"[register] {name} version {version.version} {state}")
    return {"model": name, "version": int(version.version), "run_id": record["run_id"], "new": new}


def _model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def current_evaluation(project_dir: str | Path, model: str, label: str) -> dict[str, Any]:
    """Evaluate `model` on the project's current held-out set into reports/evaluations/<label>/."""
    from flows.stages.evaluate import evaluate_stage_flow

    out = Path(project_dir) / REPORTS_DIR / "evaluations" / label
    return evaluate_stage_flow(project_dir=str(project_dir), model=model, reports_dir=str(out))


def _refresh_if_stale(root: Path, client, name: str, version, fingerprint: str | None) -> str | None:
    """Re-evaluate `version` when its evaluation is not the current one (or there is no current one
    in this checkout), retag it, and return the fingerprint its metrics now carry."""
    from components.tracking import registry

    if version is None:
        return fingerprint
    if fingerprint is not None and (version.tags or {}).get(registry.EVALUATION_TAG) == fingerprint:
        return fingerprint
    print(f"[promote] version {version.version} was not evaluated on this checkout's held-out set and "
          "metric code: evaluating it again")
    report = current_evaluation(root, f"models:/{name}/{version.version}", f"{name}-v{version.version}")
    registry.retag_evaluation(client, name, version.version, report)
    return report.get("evaluation_fingerprint")


@task(name="promotion gate")
def promote_challenger(project_dir: str, version: int | None = None) -> dict[str, Any]:
    """Judge the challenger (or `version`) against the champion with the gate in params.

    Both are compared on the current held-out evaluation (reports/metrics.json's fingerprint): a
    version evaluated otherwise is evaluated again first. The decision and the compared numbers
    are tags on the version (the registry records them) and on the challenger's training run.
    """
    from components.tracking import registry

    root = Path(project_dir)
    settings = registry_settings(root)
    name, gate = settings["model_name"], registry.PromotionGate.from_params(settings.get("gate"))
    client = _client(root)
    challenger = (client.get_model_version(name, str(version)) if version is not None
                  else registry.get_alias_version(client, name, registry.CHALLENGER))
    if challenger is None:
        raise LookupError(f"registered model {name!r} has no challenger: run `mesa retrain` (it registers the "
                          "trained pipeline) or pass --version")
    # Without reports/metrics.json (e.g. a fresh checkout) the challenger's new evaluation is the reference.
    current = _refresh_if_stale(root, client, name, challenger, _current_fingerprint(root))
    _refresh_if_stale(root, client, name, registry.get_alias_version(client, name, registry.CHAMPION), current)
    decision = registry.promote(client, name, gate, challenger.version, lock_path=root / LOCK_FILE)
    champion = registry.get_alias_version(client, name, registry.CHAMPION)
    outcome = {"model": name, "version": int(challenger.version), "promoted": decision.promote,
               "champion": None if champion is None else int(champion.version), "reasons": decision.reasons,
               "compared": decision.compared}
    _record_on_run(root, challenger.run_id, outcome)
    verdict = "promoted: it is the champion" if decision.promote else "rejected: the champion stays"
    print(f"[promote] {name} version {challenger.version} {verdict} "
          f"(champion now {outcome['champion']}); " + ("; ".join(decision.reasons) or "all checks passed"))
    return outcome


def _current_fingerprint(root: Path) -> str | None:
    metrics = root / REPORTS_DIR / "metrics.json"
    return json.loads(metrics.read_text()).get("evaluation_fingerprint") if metrics.exists() else None


def _record_on_run(root: Path, run_id: str | None, outcome: dict[str, Any]) -> None:
    """The decision on the challenger's training run: tags, and the compared numbers as JSON."""
    if not run_id:
        return
    from components.tracking.runs import RunLogger

    tracker = RunLogger.resume(run_id, root, system_metrics=False)
    tracker.set_tags({"promotion.decision": "promoted" if outcome["promoted"] else "rejected",
                      "promotion.version": outcome["version"], "promotion.champion": outcome["champion"]})
    path = root / REPORTS_DIR / "promotion.json"
    from components.atomic import write_json_atomic

    write_json_atomic(path, outcome)
    tracker.log_artifact(str(path), "promotion")
    tracker.finish()


@task(name="rollback")
def rollback_champion(project_dir: str) -> dict[str, Any]:
    """Move ``champion`` back to the version the current champion replaced."""
    from components.tracking import registry

    root = Path(project_dir)
    name = registry_settings(root)["model_name"]
    client = _client(root)
    was = registry.get_alias_version(client, name, registry.CHAMPION)
    now = registry.rollback(client, name, lock_path=root / LOCK_FILE)
    print(f"[promote] rolled back: {name} champion is version {now} again (was {was.version if was else None})")
    return {"model": name, "champion": now, "was": None if was is None else int(was.version)}


@flow(name="promote", log_prints=True)
def promote_flow(project_dir: str, rollback: bool = False, version: int | None = None) -> dict[str, Any]:
    """`mesa promote`: judge the challenger (or `version`) and move ``champion`` if it passes;
    with `rollback`, move ``champion`` back to the previous champion instead."""
    if rollback:
        return rollback_champion(project_dir)
    return promote_challenger(project_dir, version)


def decision_summary(outcome: dict[str, Any] | None) -> str:
    """One line for the main job's summary."""
    if not outcome:
        return "no promotion run"
    verdict = "promoted to champion" if outcome["promoted"] else "rejected (champion unchanged)"
    return f"version {outcome['version']} {verdict}; champion is version {outcome['champion']}"
