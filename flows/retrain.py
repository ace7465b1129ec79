"""The main job: every DVC stage in order, each a Prefect task, all on one Prefect API.

DVC decides what is stale (a stage whose deps and params did not change is skipped); Prefect
runs, retries and logs. After the stages: `dvc push`, registration of the trained pipeline as a
model version (alias challenger) and the promotion gate (flows/promote.py). How a stage is run
and judged: :mod:`components.versioning.stages`.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import task_run

from components.layout import RETRAIN_LOCK, STAGE_STARTED_ENV
from components.versioning.stages import StageFailed  # noqa: F401 (what callers of retrain catch)
from flows.prefect_api import current_api_url, stage_process_env


@task(retries=1, retry_delay_seconds=5, task_run_name="stage {stage}")
def run_dvc_stage(stage: str, project_dir: str, force: bool = False) -> dict:
    """`dvc repro --single-item STAGE` in `project_dir` (its own process group), streaming to the Prefect log."""
    from components.versioning.stages import repro_stage

    logger = get_run_logger()
    api_url = current_api_url()
    return repro_stage(project_dir, stage, force=force, env=stage_process_env(api_url, task_run.id),
                       started_env=STAGE_STARTED_ENV,
                       on_line=lambda line: logger.info("[%s] %s", stage, line))


@task(task_run_name="preflight")
def preflight_checks(project_dir: str) -> int:
    """`mesa check` on params.yaml before any stage (PreflightFailed, with the table, stops the run)."""
    from components.ops.preflight import check_project, table
    from components.params import load_config

    checks = check_project(Path(project_dir), load_config(project_dir))
    print(f"[preflight] every check holds:\n{table(checks)}")
    return len(checks)


@task(retries=2, retry_delay_seconds=10, task_run_name="dvc push")
def push_data_versions(project_dir: str, remote: str | None = None) -> dict:
    """`dvc push`: every output of this run to the DVC remote (the default one, or `remote`)."""
    from components.versioning.stages import push_data

    push_data(project_dir, remote, env=stage_process_env(current_api_url(), None))
    print(f"[versioning] pushed the run's data and models to DVC remote {remote or '(default)'}")
    return {"pushed": True, "remote": remote}


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str, stages: list[str] | None = None, force: bool = False, stage_retries: int = 1,
            lock_wait_s: float = 0.0, allow_unreproducible: bool = False) -> dict:
    """Run the pipeline's stages in order, then version, register and judge what they made.

    After a full run (no `stages` subset): `dvc push` (params ``versioning``), then the trained
    pipeline is registered with the alias ``challenger`` and the promotion gate runs (params
    ``registry``). A failing stage stops the run before any of that: data versions and the
    registry stay as they were.

    Args:
        project_dir (str): the project (holds dvc.yaml and params.yaml).
        stages (list[str] | None, default None): run only these stages (nothing is registered).
        force (bool, default False): rerun stages even when DVC finds them up to date.
        stage_retries (int, default 1): how often a failed stage is run again (training resumes
            from its last checkpoint); 0 stops at the first failure.
        lock_wait_s (float, default 0): one retrain per workspace; when another holds it, wait up
            to this long for it to finish (0: refuse at once, naming the running one).
        allow_unreproducible (bool, default False): let the gate judge a model trained from
            uncommitted changes or with data not on the DVC remote (recorded on the version).

    Returns:
        ``{"stages": [{stage, ran, outcome, changed, seconds}], "pushed": {...} | None,
        "registration": {...} | None, "promotion": {...} | None}``; ``outcome`` is ``ran``,
        ``skipped`` (up to date) or ``restored`` (from DVC's run cache).
    """
    from components.locks import exclusive_lock

    with exclusive_lock(Path(project_dir) / RETRAIN_LOCK, purpose="a retrain", wait_s=lock_wait_s, reentrant=True):
        return _retrain_locked(project_dir, stages, force, stage_retries, allow_unreproducible)


def _retrain_locked(project_dir: str, stages: list[str] | None, force: bool, stage_retries: int,
                    allow_unreproducible: bool) -> dict:
    from components.params import load_params
    from components.versioning.stages import dvc_stages
    from flows.promote import judge_with_review, register_trained_model, registry_settings

    names = stages or dvc_stages(project_dir)
    unknown = sorted(set(names) - set(dvc_stages(project_dir)))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; dvc.yaml has {dvc_stages(project_dir)}")
    preflight_checks(project_dir)  # what would fail hours in fails now, before a stage starts
    run_stage = run_dvc_stage.with_options(retries=int(stage_retries))
    outcome: dict = {"stages": [], "pushed": None, "registration": None, "promotion": None}
    for name in names:
        # One after the other: each stage reads what the previous one wrote.
        outcome["stages"].append(run_stage(name, project_dir, force))
    if stages:
        print(f"[retrain] only stages {names} ran: nothing pushed, registered or promoted")
        return outcome
    versioning = load_params(project_dir).get("versioning") or {}
    if versioning.get("push", False):
        outcome["pushed"] = push_data_versions(project_dir, versioning.get("remote"))
    settings = registry_settings(project_dir)
    if settings.get("register", True):
        outcome["registration"] = register_trained_model(project_dir)
    registration = outcome["registration"]
    if registration and registration["new"] and settings.get("promote", True):
        outcome["promotion"] = judge_with_review(project_dir, registration["version"], allow_unreproducible)
    publish_summary(project_dir, outcome)
    return outcome


def publish_summary(project_dir: str, outcome: dict) -> None:
    """The run's outcome as Prefect artifacts: a Markdown summary and the promotion's comparison table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from components.layout import EVAL_GRIDS, EVAL_GRIDS_DIR
    from components.tracking.review import comparison_rows, retrain_markdown

    grids = [str(Path(project_dir) / EVAL_GRIDS_DIR / f"{name}.png") for name in EVAL_GRIDS]
    create_markdown_artifact(key="retrain-summary", markdown=retrain_markdown(outcome, grids),
                             description="Stages, data push, registration and the promotion decision")
    promotion = outcome.get("promotion")
    if promotion and promotion.get("compared"):
        create_table_artifact(key="promotion-comparison", table=comparison_rows(promotion["compared"]),
                              description=f"Version {promotion['version']} against the champion")
