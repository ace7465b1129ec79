"""The registry steps of the main job: register the trained pipeline, judge a challenger, roll back.

Every decision is made with the gate in params.yaml ``registry.gate``
(:class:`components.tracking.registry.PromotionGate`), against numbers from the same held-out
evaluation: a version whose evaluation fingerprint differs from the current one (the held-out set,
the evaluate settings or the metric code changed) is evaluated again first, by the `evaluate`
callback the caller passes (flows/promote.py runs the evaluate stage's flow).

Gated metrics with a per-cell form are compared pair by pair on both versions' per-cell tables
(kept on the version's training run under ``evaluations/<fingerprint>/v<N>/`` when it is
registered or evaluated again): the challenger passes when the worse end of the paired interval is
within the metric's margin (:mod:`components.evaluation.noninferiority`; margins from params, the
seed spread an ablation measured in ``reports/seed_spread.json``, or the documented default).
The challenger's lineage must be reproducible (committed tree, data on the DVC remote) unless the
caller allows otherwise, which is recorded.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from components.layout import (DVC_LOCK, METRICS_PER_CELL_FILE, METRICS_PER_CELL_REPORT, METRICS_REPORT,
                               PIPELINE_DIR, PROMOTION_REPORT, RUN_RECORD, SEED_SPREAD)

# (model URI, label) -> the evaluate stage's report of that model on the current held-out set
Evaluate = Callable[[str, str], dict[str, Any]]
EVALUATIONS_ARTIFACT = "evaluations"  # evaluations/<fingerprint>/v<version>/: a version's per-cell table
UNREPRODUCIBLE_TAG = "promotion.unreproducible_allowed"
REVIEW_TAG = "promotion.review"
N_BOOT = 1000


def model_exists(client: Any, name: str) -> bool:
    """Whether the registry has a registered model `name`.

    Args:
        client (mlflow.MlflowClient): a client on the project's store.
        name (str): the registered model's name.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def register_trained(project_dir: str | Path, name: str, *, client: Any = None, lock_path: str | Path | None = None,
                     say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Register models/pipeline from the run in models/train_run.json, with its evaluation as tags.

    Idempotent: a logged model that already has a version is not registered again (``new`` is
    False and no alias moves); a resumed run that trained further logs a new model and gets a new
    version. A new version gets the alias ``challenger``.

    Args:
        project_dir (str | Path): the project.
        name (str): the registered model's name (params ``registry.model_name``).
        client (mlflow.MlflowClient | None, default None): a client on its store; None: the
            project's, opened only once there is something to register (a SQLite store is created
            on opening).
        lock_path (str | Path | None, default None): the file that serialises registry changes.
        say (Callable[[str], None], default print): what happened, one line.

    Returns:
        ``{"model", "version", "run_id", "new"}``, or None when there is no trained pipeline yet.

    Raises:
        FileNotFoundError: a trained pipeline without reports/metrics.json (run the evaluate stage).
    """
    from components.tracking import registry
    from components.tracking.pyfunc import log_pipeline_model

    root = Path(project_dir)
    record_path, metrics_path = root / RUN_RECORD, root / METRICS_REPORT
    if not record_path.exists():
        say("[register] no models/train_run.json: nothing trained yet, nothing registered")
        return None
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: run the evaluate stage before registering "
                                "(the promotion gate judges the version by it)")
    record, report = json.loads(record_path.read_text()), json.loads(metrics_path.read_text())
    if client is None:
        from components.tracking.store import mlflow_client

        client = mlflow_client(root)
    known = model_exists(client, name)
    model_uri = record.get("model_uri")
    if not model_uri:  # train.log_model was off: log it now, once per run
        logged = registry.find_version_for_run(client, name, record["run_id"]) if known else None
        model_uri = logged.source if logged else log_pipeline_model(
            record["run_id"], root / PIPELINE_DIR, uri=client.tracking_uri)
    before = registry.find_version_for_model(client, name, record["run_id"], model_uri) if known else None
    version = registry.register_pipeline(client, name, record["run_id"], model_uri, report, lock_path=lock_path)
    # Registering and naming the challenger are one step: a version a killed run left without its
    # alias is completed here, and counts as new so that the gate judges it.
    new = not registry.registration_complete(version)
    log_per_cell(client, version, report.get("evaluation_fingerprint"), root / METRICS_PER_CELL_REPORT)
    if new:
        registry.complete_registration(client, name, version.version)
    state = ("registered (alias challenger)" if before is None else
             "completed: a stopped run had registered it without its challenger alias" if new else
             "already registered (this logged model): nothing new")
    say(f"[register] {name} version {version.version} {state}")
    return {"model": name, "version": int(version.version), "run_id": record["run_id"], "new": new}


def current_fingerprint(project_dir: str | Path) -> str | None:
    """The evaluation fingerprint of reports/metrics.json (None without one, e.g. in a fresh checkout).

    Args:
        project_dir (str | Path): the project.
    """
    metrics = Path(project_dir) / METRICS_REPORT
    return json.loads(metrics.read_text()).get("evaluation_fingerprint") if metrics.exists() else None


def refresh_if_stale(client: Any, name: str, version: Any, fingerprint: str | None, evaluate: Evaluate,
                     say: Callable[[str], None] = print) -> str | None:
    """Re-evaluate `version` when its evaluation is not the current one (or there is no current one
    in this checkout), retag it, and return the fingerprint its metrics now carry.

    Args:
        client (mlflow.MlflowClient): a client on the project's store.
        name (str): the registered model.
        version (mlflow.entities.model_registry.ModelVersion | None): the version; None does nothing.
        fingerprint (str | None): the current evaluation's fingerprint.
        evaluate (Callable[[str, str], dict]): (model URI, label) -> its evaluation report.
        say (Callable[[str], None], default print): progress lines.
    """
    from components.tracking import registry

    if version is None:
        return fingerprint
    if fingerprint is not None and (version.tags or {}).get(registry.EVALUATION_TAG) == fingerprint:
        return fingerprint
    say(f"[promote] version {version.version} was not evaluated on this checkout's held-out set and "
        "metric code: evaluating it again")
    report = evaluate(f"models:/{name}/{version.version}", f"{name}-v{version.version}")
    registry.retag_evaluation(client, name, version.version, report)
    if report.get("per_cell"):
        log_per_cell(client, version, report.get("evaluation_fingerprint"), report["per_cell"])
    return report.get("evaluation_fingerprint")


def per_cell_path(fingerprint: str, version: int | str) -> str:
    """Where a version's per-cell evaluation lives on its training run: one folder per evaluation
    and version (a resumed run logs several models, each a version of its own)."""
    return f"{EVALUATIONS_ARTIFACT}/{fingerprint}/v{version}"


def log_per_cell(client: Any, version: Any, fingerprint: str | None, table_path: str | Path) -> None:
    """Keep `table_path` (a metrics_per_cell.parquet) as `version`'s per-cell evaluation with `fingerprint`."""
    if version.run_id and fingerprint and Path(table_path).exists():
        client.log_artifact(version.run_id, str(table_path), per_cell_path(fingerprint, version.version))


def per_cell_table(client: Any, version: Any, fingerprint: str | None):
    """The per-cell table of `version`'s evaluation with `fingerprint`, or None (evaluated before
    per-cell tables were kept, or never on this evaluation).

    Args:
        client (mlflow.MlflowClient): a client on the project's store.
        version (ModelVersion | None): the version (its training run holds the table).
        fingerprint (str | None): the evaluation wanted.
    """
    from components.tracking.store import read_parquet_artifact

    if version is None or not version.run_id or not fingerprint:
        return None
    return read_parquet_artifact(client, version.run_id,
                                 f"{per_cell_path(fingerprint, version.version)}/{METRICS_PER_CELL_FILE}")


def seed_spread(project_dir: str | Path) -> dict[str, Any] | None:
    """reports/seed_spread.json (an ablation's measured seed-to-seed spread), or None."""
    path = Path(project_dir) / SEED_SPREAD
    return json.loads(path.read_text()) if path.exists() else None


def paired_checks(gate: Any, challenger, champion, champion_metrics: dict[str, dict],
                  spread: dict[str, Any] | None) -> dict[str, Any]:
    """The non-inferiority check of every gated metric with a per-cell form (pure but for the bootstrap).

    Args:
        gate (PromotionGate): margins, spread_multiple, max_regression, confidence, metrics.
        challenger, champion (pandas.DataFrame): both versions' per-cell tables (same evaluation).
        champion_metrics (dict): the champion's ``metrics_from_tags`` (directions, default margins).
        spread (dict | None): from :func:`seed_spread`.
    """
    from components.evaluation import noninferiority, per_cell

    checks = {}
    for name in gate.metrics if gate.metrics is not None else sorted(champion_metrics):
        entry = champion_metrics.get(name) or {}
        if name not in per_cell.PER_CELL_METRICS or not entry.get("direction"):
            continue
        difference = per_cell.paired_bootstrap(challenger, champion, per_cell.metric_statistic(name), n_boot=N_BOOT,
                                               level=gate.confidence)
        margin = noninferiority.margin_for(name, gate.margins, spread, gate.spread_multiple, gate.max_regression,
                                           entry.get("value"))
        checks[name] = noninferiority.check(name, entry["direction"], difference, margin)
    return checks


def lineage_blockers(project_dir: str | Path, client: Any, run_id: str, remote: str | None) -> list[str]:
    """Why the training run behind a version cannot be reproduced from git and the DVC remote ([] if it can):
    every training segment's commit and dirty flag (its ``lineage/steps-N/lineage.json``), the
    training inputs' data versions against the workspace's, and the remote."""
    from components.tracking.lineage import dvc_out_hashes, reproducibility_problems
    from components.versioning.stages import stage_inputs, unpushed_outputs

    root = Path(project_dir)
    workspace = dvc_out_hashes(root / DVC_LOCK)
    try:
        unpushed: list[str] | None = unpushed_outputs(root, remote)
    except RuntimeError:
        unpushed = None
    problems = reproducibility_problems(client.get_run(run_id).data.tags, workspace, unpushed,
                                        stage_inputs(root, "train", workspace), training_segments(client, run_id))
    return [f"unreproducible: {problem}" for problem in problems]


def training_segments(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's lineage.json records, one per training segment, in step order."""
    import tempfile

    import mlflow.artifacts

    from components.tracking.lineage import SNAPSHOT_DIR, SNAPSHOT_RECORD

    records = []
    with tempfile.TemporaryDirectory() as local:
        for folder in sorted(f.path for f in client.list_artifacts(run_id, SNAPSHOT_DIR) if f.is_dir):
            if f"{folder}/{SNAPSHOT_RECORD}" in {f.path for f in client.list_artifacts(run_id, folder)}:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{folder}/{SNAPSHOT_RECORD}",
                                                           dst_path=local, tracking_uri=client.tracking_uri)
                records.append(json.loads(Path(path).read_text()))
    return records


def judge_challenger(project_dir: str | Path, client: Any, name: str, gate: Any, evaluate: Evaluate, *,
                     version: int | None = None, lock_path: str | Path | None = None,
                     allow_unreproducible: bool = False, remote: str | None = None,
                     preview: bool = False, review: Mapping[str, Any] | None = None,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """Judge the challenger (or `version`) against the champion with `gate`; move ``champion`` if it passes.

    Both are compared on the current held-out evaluation (reports/metrics.json's fingerprint): a
    version evaluated otherwise is evaluated again first; metrics with a per-cell form are compared
    pair by pair with an interval (:func:`paired_checks`). A challenger whose training run cannot
    be reproduced (uncommitted changes, data not on the DVC remote) is refused unless
    `allow_unreproducible`, which is then recorded (tag ``promotion.unreproducible_allowed``).
    The decision and the compared numbers are tags on the version (the registry records them) and
    on the challenger's training run.

    Args:
        project_dir (str | Path): the project.
        client (mlflow.MlflowClient): a client on its store.
        name (str): the registered model.
        gate (PromotionGate): the promotion gate.
        evaluate (Callable[[str, str], dict]): (model URI, label) -> its evaluation report.
        version (int | None, default None): judge this version instead of the challenger alias.
        lock_path (str | Path | None, default None): the file that serialises registry changes.
        allow_unreproducible (bool, default False): judge an unreproducible challenger anyway.
        remote (str | None, default None): the DVC remote to check (None: the default one).
        preview (bool, default False): decide only (nothing recorded, no alias moves): what a
            reviewer sees before approving.
        review (Mapping | None, default None): a reviewer's answer ``{"approve", "reviewer",
            "note"}``: a rejection fails the decision (recorded like a gate failure); either is
            recorded on the version (``promotion.review``).
        say (Callable[[str], None], default print): progress lines.

    Returns:
        ``{"model", "version", "promoted", "champion", "reasons", "compared", "unreproducible"}``.

    Raises:
        LookupError: there is no challenger (and no `version`).
    """
    from components.tracking import registry

    root = Path(project_dir)
    challenger = (client.get_model_version(name, str(version)) if version is not None
                  else registry.get_alias_version(client, name, registry.CHALLENGER))
    if challenger is None:
        raise LookupError(f"registered model {name!r} has no challenger: run `mesa retrain` (it registers the "
                          "trained pipeline) or pass --version")
    # Without reports/metrics.json (e.g. a fresh checkout) the challenger's new evaluation is the reference.
    current = refresh_if_stale(client, name, challenger, current_fingerprint(root), evaluate, say)
    champion = registry.get_alias_version(client, name, registry.CHAMPION)
    refresh_if_stale(client, name, champion, current, evaluate, say)
    problems = lineage_blockers(root, client, challenger.run_id, remote) if challenger.run_id else [
        "unreproducible: the version names no training run"]
    if problems and allow_unreproducible and not preview:
        client.set_model_version_tag(name, challenger.version, UNREPRODUCIBLE_TAG,
                                     registry.truncate_tag("; ".join(problems)))
        say(f"[promote] judged although unreproducible (allowed): {'; '.join(problems)}")
    spread = seed_spread(root)

    def compare(judged, held):
        tables = [per_cell_table(client, v, current) for v in (judged, held)]
        if any(t is None for t in tables):
            say("[promote] no per-cell evaluation for both versions: the relative check on their values decides")
            return {}
        return paired_checks(gate, *tables, registry.metrics_from_tags(held.tags or {}), spread)

    blockers = [] if allow_unreproducible else list(problems)
    review_tags = {}
    if review is not None:
        who = review.get("reviewer") or "a reviewer"
        said = f"{'approved' if review.get('approve') else 'rejected'} by {who}" + (
            f": {review['note']}" if review.get("note") else "")
        review_tags = {REVIEW_TAG: said}
        if not review.get("approve"):
            blockers.insert(0, f"review: {said}")
    decision = registry.promote(client, name, gate, challenger.version, lock_path=lock_path, compare=compare,
                                blockers=blockers, dry_run=preview, extra_tags=review_tags)
    champion = registry.get_alias_version(client, name, registry.CHAMPION)
    outcome = {"model": name, "version": int(challenger.version), "promoted": decision.promote,
               "champion": None if champion is None else int(champion.version), "reasons": decision.reasons,
               "compared": decision.compared, "unreproducible": problems,
               "unreproducible_allowed": bool(problems) and allow_unreproducible,
               "review": review_tags.get(REVIEW_TAG), "preview": preview}
    if not preview:
        record_on_run(root, challenger.run_id, outcome)
    return outcome


def record_on_run(project_dir: str | Path, run_id: str | None, outcome: dict[str, Any]) -> None:
    """The decision on the challenger's training run: tags, and the compared numbers as JSON.

    Args:
        project_dir (str | Path): the project (reports/promotion.json is written there too).
        run_id (str | None): the training run; None does nothing.
        outcome (dict): from :func:`judge_challenger`.
    """
    if not run_id:
        return
    from components.atomic import write_json_atomic
    from components.tracking.run_logger import RunLogger

    root = Path(project_dir)
    tracker = RunLogger.resume(run_id, root, system_metrics=False)
    tracker.set_tags({"promotion.decision": "promoted" if outcome["promoted"] else "rejected",
                      "promotion.version": outcome["version"], "promotion.champion": outcome["champion"]})
    path = root / PROMOTION_REPORT
    write_json_atomic(path, outcome)
    tracker.log_artifact(str(path), "promotion")
    tracker.finish()


def roll_back(client: Any, name: str, *, lock_path: str | Path | None = None) -> dict[str, Any]:
    """Move ``champion`` back to the version the current champion replaced.

    Args:
        client (mlflow.MlflowClient): a client on the project's store.
        name (str): the registered model.
        lock_path (str | Path | None, default None): the file that serialises registry changes.

    Returns:
        ``{"model", "champion", "was"}``: the champion now and before.
    """
    from components.tracking import registry

    was = registry.get_alias_version(client, name, registry.CHAMPION)
    now = registry.rollback(client, name, lock_path=lock_path)
    return {"model": name, "champion": now, "was": None if was is None else int(was.version)}
