"""The registry steps: register a trained pipeline, promote a challenger, roll the champion back.

`retrain` calls `register_trained_model` and `promote_challenger` after its stages; `mesa promote`
runs the `promote` flow on its own. The steps themselves: :mod:`components.tracking.promotion`
(the gate: params.yaml ``registry.gate``, :mod:`components.tracking.registry`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.input import RunInput

from components.layout import EVALUATIONS_DIR, REGISTRY_LOCK
from components.params import load_params


def registry_settings(project_dir: str | Path) -> dict[str, Any]:
    """params.yaml ``registry`` (load_params has checked it against the schema)."""
    return dict(load_params(project_dir).get("registry") or {})


@task(name="register model", retries=2, retry_delay_seconds=5)
def register_trained_model(project_dir: str) -> dict[str, Any] | None:
    """Register models/pipeline from the run in models/train_run.json (alias challenger when new).

    Returns:
        ``{"model", "version", "run_id", "new"}``, or None when there is no trained pipeline yet.
    """
    from components.tracking.promotion import register_trained

    root = Path(project_dir)
    return register_trained(root, registry_settings(root)["model_name"], lock_path=root / REGISTRY_LOCK)


def current_evaluation(project_dir: str | Path, model: str, label: str) -> dict[str, Any]:
    """Evaluate `model` on the project's current held-out set into reports/evaluations/<label>/."""
    from flows.stages.evaluate import evaluate_stage_flow

    out = Path(project_dir) / EVALUATIONS_DIR / label
    return evaluate_stage_flow(project_dir=str(project_dir), model=model, reports_dir=str(out))


class Review(RunInput):
    """A reviewer's answer to a promotion waiting for approval (the form the Prefect UI shows)."""

    approve: bool = False
    reviewer: str = ""
    note: str = ""


def approval_key(name: str, version: int) -> str:
    """The pause key of the promotion of `name` version `version` (what `mesa promote --approve` finds)."""
    return f"approve-{name}-v{version}"


@task(name="promotion gate")
def promote_challenger(project_dir: str, version: int | None = None, allow_unreproducible: bool = False,
                       preview: bool = False, review: dict[str, Any] | None = None) -> dict[str, Any]:
    """Judge the challenger (or `version`) against the champion with the gate in params.

    Both are compared on the current held-out evaluation: a version evaluated otherwise is
    evaluated again first (the evaluate stage's flow, as a subflow). An unreproducible challenger
    (uncommitted changes, data not pushed) is refused unless `allow_unreproducible` (recorded).
    `preview` decides without recording anything; `review` is a reviewer's answer.
    """
    from components.tracking.promotion import judge_challenger
    from components.tracking.registry import PromotionGate
    from components.tracking.store import mlflow_client

    root = Path(project_dir)
    settings = registry_settings(root)
    name, gate = settings["model_name"], PromotionGate.from_params(settings.get("gate"))
    remote = (load_params(root).get("versioning") or {}).get("remote")
    outcome = judge_challenger(root, mlflow_client(root), name, gate,
                               lambda model, label: current_evaluation(root, model, label),
                               version=version, lock_path=root / REGISTRY_LOCK,
                               allow_unreproducible=allow_unreproducible, remote=remote, preview=preview,
                               review=review)
    if preview:
        verdict = "passes the gate" if outcome["promoted"] else "fails the gate"
    else:
        verdict = "promoted: it is the champion" if outcome["promoted"] else "rejected: the champion stays"
    print(f"[promote] {name} version {outcome['version']} {verdict} "
          f"(champion now {outcome['champion']}); " + ("; ".join(outcome["reasons"]) or "all checks passed"))
    return outcome


def judge_with_review(project_dir: str, version: int | None = None, allow_unreproducible: bool = False,
                      review: dict[str, Any] | None = None) -> dict[str, Any]:
    """The promotion step of a flow: the gate, and with ``registry.gate.require_approval`` a pause
    for a reviewer between a passing gate and the move of ``champion``.

    Called in a flow's body (Prefect pauses flow runs, not tasks). The pause shows the
    challenger-vs-champion table (also a Prefect artifact) and waits for a :class:`Review` from the
    Prefect UI or `mesa promote --approve N` / `--reject N`, up to ``approval_timeout_h``. A
    `review` given up front (those commands when nothing is paused) skips the pause.
    """
    from prefect import pause_flow_run
    from prefect.artifacts import create_markdown_artifact

    from components.layout import EVAL_GRIDS, EVAL_GRIDS_DIR
    from components.tracking.review import promotion_markdown

    gate = registry_settings(project_dir).get("gate") or {}
    if review is not None or not gate.get("require_approval"):
        return promote_challenger(project_dir, version, allow_unreproducible, review=review)
    preview = promote_challenger(project_dir, version, allow_unreproducible, preview=True)
    if not preview["promoted"]:  # a failing gate needs no reviewer: record it as it is
        return promote_challenger(project_dir, preview["version"], allow_unreproducible)
    grids = [str(Path(project_dir) / EVAL_GRIDS_DIR / f"{name}.png") for name in EVAL_GRIDS]
    text = promotion_markdown(preview, grids).replace("**promoted**", "**passes the gate; waiting for review**")
    create_markdown_artifact(key=approval_key(preview["model"], preview["version"]), markdown=text,
                             description="Approve or reject in the paused run's Resume form")
    print(f"[promote] waiting for a review of {preview['model']} version {preview['version']}: resume the flow "
          f"run in the Prefect UI, or `mesa promote --approve {preview['version']}` / `--reject "
          f"{preview['version']}`")
    answer = pause_flow_run(wait_for_input=Review.with_initial_data(description=text),
                            timeout=int(float(gate.get("approval_timeout_h", 24)) * 3600),
                            key=approval_key(preview["model"], preview["version"]))
    return promote_challenger(project_dir, preview["version"], allow_unreproducible,
                              review={"approve": answer.approve, "reviewer": answer.reviewer, "note": answer.note})


@task(name="rollback")
def rollback_champion(project_dir: str) -> dict[str, Any]:
    """Move ``champion`` back to the version the current champion replaced."""
    from components.tracking.promotion import roll_back
    from components.tracking.store import mlflow_client

    root = Path(project_dir)
    name = registry_settings(root)["model_name"]
    outcome = roll_back(mlflow_client(root), name, lock_path=root / REGISTRY_LOCK)
    print(f"[promote] rolled back: {name} champion is version {outcome['champion']} again (was {outcome['was']})")
    return outcome


@flow(name="promote", log_prints=True)
def promote_flow(project_dir: str, rollback: bool = False, version: int | None = None,
                 allow_unreproducible: bool = False, review: dict[str, Any] | None = None) -> dict[str, Any]:
    """`mesa promote`: judge the challenger (or `version`) and move ``champion`` if it passes (and,
    with ``registry.gate.require_approval``, a reviewer approves); with `rollback`, move
    ``champion`` back to the previous champion instead."""
    if rollback:
        return rollback_champion(project_dir)
    return judge_with_review(project_dir, version, allow_unreproducible, review)


def decision_summary(outcome: dict[str, Any] | None) -> str:
    """One line for the main job's summary."""
    if not outcome:
        return "no promotion run"
    verdict = "promoted to champion" if outcome["promoted"] else "rejected (champion unchanged)"
    return f"version {outcome['version']} {verdict}; champion is version {outcome['champion']}"
