"""`mesa deploy`: the weekly retrain, the ablation and the promotion gate as Prefect deployments.

Served (the default, one machine): this process registers the deployments and runs their flow runs
itself (`prefect.serve`) until it is stopped (Ctrl-C); the schedule fires only while it runs. With
`--pool`: registered for a process work pool, and a worker (`prefect worker start --pool
mesa-process`) runs them; prefect.yaml describes the same deployments for `prefect deploy --all`.
What is deployed and on which server: :mod:`components.ops.deployments`.
"""
from __future__ import annotations

import faulthandler
import os
import signal
from pathlib import Path
from typing import Any, Optional

import typer

from components.layout import PREFECT_HOME_DIR
from components.ops.deployments import LOCAL_PORT, DeploymentSpec


def deployment_specs(project_dir: str | Path, params: dict[str, Any] | None = None,
                     flows: list[str] | None = None) -> list[DeploymentSpec]:
    """The project's deployments, from params.yaml's `deploy` group (no Prefect import, no I/O beyond params).

    Args:
        project_dir (str | Path): the project root (holds params.yaml); runs get it as `project_dir`.
        params (dict, optional): params.yaml already loaded; default: read from `project_dir`.
        flows (list[str], optional): a subset of "retrain", "ablation", "promote", "ablation-variant"; default: all.
    """
    from components.config import DeployConfig
    from components.ops import deployments
    from components.params import load_params

    params = load_params(Path(project_dir).resolve()) if params is None else params
    deploy = params.get("deploy") or {}
    DeployConfig.from_params(deploy)  # params passed in were not checked by load_params
    return deployments.deployment_specs(project_dir, deploy, flows)


def runner_deployments(project_dir: str | Path, specs: list[DeploymentSpec]) -> list[Any]:
    """Prefect RunnerDeployments for `specs`, with the project folder as their code source.

    The source is the local folder: a served run and a process worker's run both start by changing
    into it (the deployment's pull step), then load the entrypoint from there.
    """
    from prefect import Flow
    from prefect.schedules import Cron

    root = Path(project_dir).resolve()
    deployments = []
    for spec in specs:
        path = root / spec.entrypoint.partition(":")[0]
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: the {spec.flow_name!r} flow ({spec.entrypoint}) is not in this project; "
                f"deploy the others with `mesa deploy --flow NAME` (repeatable)")
        flow = Flow.from_source(source=str(root), entrypoint=spec.entrypoint)
        if flow.name != spec.flow_name:
            raise ValueError(f"{spec.entrypoint} defines the flow {flow.name!r}, expected {spec.flow_name!r}")
        schedules = [Cron(spec.cron, timezone=spec.timezone)] if spec.cron else None
        deployments.append(flow.to_deployment(
            name=spec.name, schedules=schedules, parameters=dict(spec.parameters),
            description=spec.description, tags=list(spec.tags), concurrency_limit=spec.concurrency_limit,
        ))
    return deployments


def deploy_to_work_pool(deployments: list[Any], work_pool: str) -> list[str]:
    """Register `deployments` (from `runner_deployments`) for the work pool `work_pool`; return their ids.

    A missing pool is created as a process pool (what `prefect work-pool create NAME --type process` does).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import deploy
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(work_pool)
            if pool.type != "process":
                print(f"note: work pool {work_pool!r} has type {pool.type!r}; its workers must be able to read "
                      f"the project folder (the deployments' pull step changes into it)")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=work_pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            print(f"created the process work pool {work_pool!r}")
    ids = deploy(*deployments, work_pool_name=work_pool, build=False, push=False,
                 print_next_steps_message=False)
    return [str(i) for i in ids]


def deploy_command(
    pool: bool = typer.Option(False, "--pool", help="Register the deployments for a process work pool instead of "
                              "serving them from this process; a worker then runs them."),
    work_pool: Optional[str] = typer.Option(None, "--work-pool", help="Work pool name (implies --pool; "
                                            "default: params deploy.work_pool, mesa-process)."),
    flow: Optional[list[str]] = typer.Option(None, "--flow", help="Deploy only these flows (repeatable: retrain, "
                                             "ablation, promote, ablation-variant; default all)."),
    server_port: int = typer.Option(LOCAL_PORT, help="Port of the local Prefect server looked for (and, when "
                                    "serving, started) if PREFECT_API_URL is not set."),
    limit: Optional[int] = typer.Option(None, help="Served mode: at most this many flow runs at once."),
) -> None:
    """Prefect deployments: retrain on the params' cron (deploy.retrain_cron), ablation and promote on demand.

    By default this process serves them (one machine; keep it running, Ctrl-C stops it).

    With --pool they are registered for a process work pool; `prefect worker start --pool NAME` runs them.

    Deployments live on PREFECT_API_URL's server, else on 127.0.0.1:4200 (started when serving).

    See docs/deploy.md.
    """
    from prefect import serve
    from prefect.settings import get_current_settings

    from components.ops.deployments import NoPrefectServer, deployment_server, describe_specs
    from flows.prefect_api import use_api
    from flows.settings import project_root

    root = project_root()
    os.chdir(root)  # entrypoints are relative to the project root
    # A served process that does not stop: `kill -USR1 PID` writes where every thread is to stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        specs = deployment_specs(root, flows=flow)
        deployments = runner_deployments(root, specs)  # no server needed yet: fail early on a missing flow
        to_pool = pool or work_pool is not None
        pool_name = work_pool or specs[0].work_pool
        home = Path(os.environ.get("PREFECT_HOME", root / PREFECT_HOME_DIR))  # a started server's database and log
        configured = get_current_settings().api.url
        with deployment_server(str(configured) if configured else None, start_local=not to_pool,
                               port=server_port, home_dir=home, say=typer.echo) as api_url, use_api(api_url):
            if to_pool:
                deploy_to_work_pool(deployments, pool_name)
                typer.echo(f"Registered on {api_url} for the work pool {pool_name!r}:\n{describe_specs(specs, api_url)}")
                typer.echo(f"Runs start once a worker polls the pool: PREFECT_API_URL={api_url} "
                           f"prefect worker start --pool {pool_name}")
                return
            typer.echo(f"Serving from this process (pid {os.getpid()}; Ctrl-C stops it and pauses the schedule) "
                       f"on {api_url}:\n{describe_specs(specs, api_url)}")
            # Ctrl-C and `kill PID` (SIGTERM) both end it cleanly: the runner pauses the schedules and
            # returns; the next serve (or deploy) of the same names unpauses them.
            serve(*deployments, limit=limit, print_starting_message=False)
            typer.echo("Stopped serving; the deployments stay registered (schedules paused) until the next "
                       "`mesa deploy`.")
    except (NoPrefectServer, FileNotFoundError, ValueError) as exc:
        typer.echo(f"mesa deploy: {exc}", err=True)
        raise typer.Exit(code=1) from exc
