"""`mesa rebuild` and `mesa gc`: thin wiring of components.versioning into the CLI."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer


def _root() -> Path:
    from flows.settings import project_root

    return project_root()


def _client(root: Path):
    import os

    from components.tracking.store import mlflow_client

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per lineage file is noise
    return mlflow_client(root)


def rebuild_command(
    version: int = typer.Option(..., "--version", help="The registered model version to rebuild."),
    model: Optional[str] = typer.Option(None, "--model",
                                        help="Registered model name (default: params registry.model_name)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir",
                                           help="Where the git worktree goes (new or empty; default: a temporary "
                                                "folder)."),
    keep: bool = typer.Option(False, "--keep", help="Leave the worktree and its rebuilt data in place."),
    until: Optional[str] = typer.Option(None, "--until",
                                        help="Rerun only up to this stage (default: train, which also compares the "
                                             "weights)."),
) -> None:
    """Rebuild a registered version from its lineage (commit, recorded params, dvc.lock, data) and compare.

    Exits 1 when a rebuilt output or the weights differ from the record (or the remote lost the
    version's data), 2 when the record is not enough to rebuild faithfully.
    """
    from components.params import load_params
    from components.versioning.dvc_git import CommandFailed
    from components.versioning.rebuild import CannotRebuild, check_faithful, read_lineage, rebuild_version
    from flows.prefect_api import owned_prefect_api, stage_process_env

    root = _root()
    name = model or (load_params(root).get("registry") or {}).get("model_name") or "mesa"
    client = _client(root)
    try:
        with tempfile.TemporaryDirectory(prefix="mesa-lineage-") as scratch:
            lineage = read_lineage(client, name, version, scratch)
        typer.echo(f"[rebuild] {name} version {version}: run {lineage.run_id}, commit {lineage.commit}, "
                   f"lineage {lineage.segment or '(run tags only)'}")
        problems = check_faithful(root, lineage)  # before a Prefect server is started for nothing
        if problems:
            raise CannotRebuild(f"{name} version {version} cannot be rebuilt faithfully:\n- " + "\n- ".join(problems))
        # The stages' own flows report to one Prefect API, as under `mesa retrain`.
        with owned_prefect_api() as api_url:
            report = rebuild_version(root, lineage, client, workdir=workdir, until=until, keep=keep,
                                     env=stage_process_env(api_url, None), log=typer.echo)
    except CannotRebuild as err:
        typer.echo(f"[rebuild] refused: {err}", err=True)
        raise typer.Exit(2) from None
    except CommandFailed as err:
        typer.echo(f"[rebuild] failed: {err}\nRerun with --keep (and --workdir DIR) to look at the worktree.", err=True)
        raise typer.Exit(1) from None
    typer.echo("")
    typer.echo(report.table())
    if report.weights is not None and not report.weights.equal:
        for line in (report.weights.differing_tensors[:10] + report.weights.differing_files[:10]):
            typer.echo(f"  differs: {line}")
    for note in report.notes:
        typer.echo(f"note: {note}")
    where = f"; worktree kept at {report.workdir}" if report.kept else ""
    if report.ok:
        typer.echo(f"[rebuild] {name} version {version} reproduces: stages {', '.join(report.stages)}{where}")
        return
    typer.echo(f"[rebuild] {name} version {version} does NOT reproduce (see the rows marked NO or a damaged "
               f"remote){where}", err=True)
    raise typer.Exit(1)


def gc_command(
    apply: bool = typer.Option(False, "--apply", help="Delete (default: a dry run that only lists)."),
    keep_runs: int = typer.Option(5, "--keep-runs", min=0, help="Also keep the newest K training runs."),
    older_than: float = typer.Option(30.0, "--older-than", min=0.0,
                                     help="Only delete runs started more than DAYS ago."),
    cloud: bool = typer.Option(False, "--cloud",
                               help="Also delete unused objects from the DVC remote (dvc gc --cloud)."),
    remote: Optional[str] = typer.Option(None, "--remote", help="The DVC remote for --cloud (default: the project's)."),
) -> None:
    """Reclaim storage: old unregistered MLflow runs, their checkpoints, unused DVC cache (and remote) objects.

    Keeps every run a registered version comes from (and its data), the newest --keep-runs runs,
    runs younger than --older-than days, running runs, and the workspace's data.
    """
    from components.versioning.dvc_git import CommandFailed
    from components.versioning.retention import apply_retention, plan_retention

    root = _root()
    client = _client(root)
    try:
        plan = plan_retention(root, client, keep_runs=keep_runs, older_than_days=older_than, cloud=cloud,
                              remote=remote, log=typer.echo)
        typer.echo(plan.summary())
        if not apply:
            typer.echo("[gc] dry run: nothing deleted. Run `mesa gc --apply` with the same options to delete.")
            return
        if plan.blockers:
            typer.echo("[gc] refused, nothing deleted:\n- " + "\n- ".join(plan.blockers), err=True)
            raise typer.Exit(2)
        done = apply_retention(root, client, plan, log=typer.echo)
    except (CommandFailed, LookupError) as err:
        # e.g. DVC's lock is held by a running retrain, or --cloud without a remote
        typer.echo(f"[gc] failed: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"[gc] deleted {done['runs']} runs, {done['checkpoints']} checkpoint folders and "
               f"{done['dvc_objects']} DVC objects: {done['freed']} freed")
