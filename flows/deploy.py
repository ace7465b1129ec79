"""`mesa deploy`: the weekly retrain, the ablation and the promotion gate as Prefect deployments.

One set of definitions (`deployment_specs`, pure: names, entrypoints, schedule and parameters from
params.yaml's `deploy` group) feeds two ways of running them:

- served (the default, one machine): this process registers the deployments and runs their flow
  runs itself (`prefect.serve`) until it is stopped (Ctrl-C). The schedule fires only while it runs.
- a work pool (`--pool`): the deployments are registered for a process work pool and a worker
  (`prefect worker start --pool mesa-process`) runs them; prefect.yaml describes the same
  deployments for `prefect deploy --all`.

Deployments live on a Prefect server that outlives this command: the one PREFECT_API_URL (or the
Prefect profile) names, else a `prefect server start` already listening on 127.0.0.1:4200; served
mode starts that local server itself when none answers (its database stays in the project's
PREFECT_HOME, .prefect/), a work pool needs one already running.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 4200  # `prefect server start`'s default, so a plain `prefect ...` in another shell finds it

# flow name -> (entrypoint relative to the project root, deployment description)
FLOWS: dict[str, tuple[str, str]] = {
    "retrain": ("flows/retrain.py:retrain",
                "The main job: the DVC stages that changed, then registration and promotion of the model."),
    "ablation": ("flows/ablation.py:ablation_flow",
                 "Shadow correction x caption dropout as DVC experiments, compared in MLflow."),
    "promote": ("flows/promote.py:promote_flow",
                "The promotion gate: move `champion` to the challenger if it passes (or roll back)."),
}


@dataclass(frozen=True)
class DeploymentSpec:
    """What one deployment is, independent of how it runs (served or on a work pool).

    Attributes:
        flow_name: the Prefect flow's name ("retrain"); runs are named `<flow_name>/<name>`.
        name: the deployment's name ("mesa-retrain").
        entrypoint: `path/to/file.py:function`, relative to the project root.
        parameters: default parameters of every run (the project folder).
        cron: a cron schedule, or None for a deployment that runs only when triggered.
        timezone: the cron's time zone (IANA name), None without a schedule.
        description: one line shown in the Prefect UI.
        work_pool: the work pool it is registered for in `--pool` mode.
        tags: labels for filtering in the UI.
        concurrency_limit: runs of this deployment at once (1: a run that comes due while one is
            running waits in the queue; the flows share the project's data, models and registry).
    """

    flow_name: str
    name: str
    entrypoint: str
    parameters: dict[str, Any]
    cron: str | None
    timezone: str | None
    description: str
    work_pool: str
    tags: tuple[str, ...] = field(default=("mesa",))
    concurrency_limit: int = 1

    @property
    def full_name(self) -> str:
        """The name `prefect deployment run` and `run_deployment` take."""
        return f"{self.flow_name}/{self.name}"


def deployment_specs(project_dir: str | Path, params: dict[str, Any] | None = None,
                     flows: list[str] | None = None) -> list[DeploymentSpec]:
    """The project's deployments, from params.yaml's `deploy` group (no Prefect import, no I/O beyond params).

    Args:
        project_dir (str | Path): the project root (holds params.yaml); runs get it as `project_dir`.
        params (dict, optional): params.yaml already loaded; default: read from `project_dir`.
        flows (list[str], optional): a subset of "retrain", "ablation", "promote"; default: all three.

    Only retrain is scheduled (`deploy.retrain_cron` in `deploy.timezone`; a null cron means on
    demand only); ablation and promote run when triggered.
    """
    from components.params import load_params

    root = Path(project_dir).resolve()
    params = load_params(root) if params is None else params
    deploy = params.get("deploy") or {}
    unknown = sorted(set(deploy) - {"retrain_cron", "timezone", "work_pool"})
    if unknown:
        raise ValueError(f"params.yaml deploy: unknown keys {unknown}; the group takes retrain_cron, timezone "
                         f"and work_pool")
    cron = deploy.get("retrain_cron")
    if cron is not None and len(str(cron).split()) not in (5, 6):
        raise ValueError(f"params.yaml deploy.retrain_cron {cron!r} is not a cron expression: five fields "
                         f"(minute hour day-of-month month day-of-week), e.g. \"0 3 * * 1\" for Mondays 03:00, "
                         f"or null for no schedule")
    chosen = list(flows) if flows else list(FLOWS)
    unknown_flows = sorted(set(chosen) - set(FLOWS))
    if unknown_flows:
        raise ValueError(f"unknown flows {unknown_flows}: choose from {list(FLOWS)}")
    specs = []
    for flow_name in chosen:
        entrypoint, description = FLOWS[flow_name]
        scheduled = flow_name == "retrain" and cron is not None
        specs.append(DeploymentSpec(
            flow_name=flow_name, name=f"mesa-{flow_name}", entrypoint=entrypoint,
            parameters={"project_dir": str(root)},
            cron=str(cron) if scheduled else None,
            timezone=str(deploy.get("timezone") or "UTC") if scheduled else None,
            description=description, work_pool=str(deploy.get("work_pool") or "mesa-process"),
        ))
    return specs


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


# --- the Prefect API the deployments live on ---------------------------------------------------

class NoPrefectServer(RuntimeError):
    """No Prefect API answers where one is expected; the message says how to start or name one."""


def _healthy(api_url: str, timeout: float = 3.0) -> str | None:
    """None when `api_url` answers /health, else why not (one line)."""
    import httpx

    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
        response.raise_for_status()
        return None
    except Exception as exc:  # connection refused, timeout, HTTP error: all mean "not usable"
        return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _use_api(api_url: str) -> Iterator[str]:
    """Make `api_url` this process's API and its children's (served flow runs are subprocesses)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def _port_option(port: int) -> str:
    return "" if port == LOCAL_PORT else f" --port {port}"


@contextlib.contextmanager
def deployment_api(start_local: bool, port: int = LOCAL_PORT, log_dir: Path | None = None,
                   startup_timeout: float = 120.0) -> Iterator[str]:
    """Yield the URL of a Prefect API that keeps deployments: configured, local, or started here.

    Args:
        start_local (bool): start `prefect server start` on 127.0.0.1:`port` when no API is set and
            none answers there (stopped again when the block ends); False raises NoPrefectServer.
        port (int): the local server's port (default 4200, Prefect's own default).
        log_dir (Path, optional): where the started server writes prefect-server.log.
        startup_timeout (float): seconds to wait for a started server to answer.
    """
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        problem = _healthy(str(configured))
        if problem:
            raise NoPrefectServer(
                f"the Prefect API at {configured} (PREFECT_API_URL or the Prefect profile) does not answer "
                f"({problem}). Start it (`prefect server start`) or point PREFECT_API_URL at the team server.")
        yield str(configured)
        return
    local = f"http://{LOCAL_HOST}:{port}/api"
    if _healthy(local, timeout=1.0) is None:
        with _use_api(local):
            yield local
        return
    if not start_local:
        raise NoPrefectServer(
            "no Prefect server to register the deployments on: PREFECT_API_URL is not set and nothing answers "
            f"at {local}. Start one in another shell (`prefect server start{_port_option(port)}`) and rerun, "
            "or set PREFECT_API_URL to the team server (http://HOST:4200/api).")
    log_path = (log_dir or Path.cwd()) / "prefect-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"No Prefect server set or running: starting one at {local} (log: {log_path})", flush=True)
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", LOCAL_HOST, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # Ctrl-C stops us, then we stop it
    try:
        deadline = time.monotonic() + startup_timeout
        while _healthy(local, timeout=1.0) is not None:
            if server.poll() is not None:
                raise NoPrefectServer(f"`prefect server start` exited with {server.returncode} before answering; "
                                      f"see {log_path} (port {port} in use? choose another with --server-port)")
            if time.monotonic() > deadline:
                raise NoPrefectServer(f"the Prefect server did not answer at {local} within {startup_timeout:.0f} s; "
                                      f"see {log_path}")
            time.sleep(0.5)
        with _use_api(local):
            yield local
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


# --- the two ways of running them ---------------------------------------------------------------

def serve_deployments(deployments: list[Any], limit: int | None = None) -> None:
    """Register `deployments` (from `runner_deployments`) and run their flow runs here until interrupted."""
    from prefect import serve

    # Ctrl-C and `kill PID` (SIGTERM) both end it cleanly: the runner pauses the schedules and returns;
    # the next serve (or deploy) of the same names unpauses them.
    serve(*deployments, limit=limit, print_starting_message=False)


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


def _describe(specs: list[DeploymentSpec], api_url: str) -> str:
    lines = []
    for spec in specs:
        when = f"cron {spec.cron!r} ({spec.timezone})" if spec.cron else "on demand"
        lines.append(f"  {spec.full_name:24s} {when}; parameters {spec.parameters}")
    ui = api_url.removesuffix("/api")
    lines += [
        "Trigger a run by hand (from another shell):",
        f"  PREFECT_API_URL={api_url} prefect deployment run '{specs[0].full_name}'",
        "  (override a parameter with --param KEY=JSON, e.g. --param force=true)",
        f"Runs, logs and schedules: {ui} (Deployments, Runs)",
    ]
    return "\n".join(lines)


def deploy_command(
    pool: bool = typer.Option(False, "--pool", help="Register the deployments for a process work pool instead of "
                              "serving them from this process; a worker then runs them."),
    work_pool: Optional[str] = typer.Option(None, "--work-pool", help="Work pool name (implies --pool; "
                                            "default: params deploy.work_pool, mesa-process)."),
    flow: Optional[list[str]] = typer.Option(None, "--flow", help="Deploy only these flows (repeatable: retrain, "
                                             "ablation, promote; default all three)."),
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
    from components.params import load_params
    from flows.settings import project_root

    root = project_root()
    os.chdir(root)  # entrypoints are relative to the project root
    try:
        specs = deployment_specs(root, load_params(root), flows=flow)
        deployments = runner_deployments(root, specs)  # no server needed yet: fail early on a missing flow
        to_pool = pool or work_pool is not None
        pool_name = work_pool or specs[0].work_pool
        home = Path(os.environ.get("PREFECT_HOME", root / ".prefect"))  # the started server's database and log
        with deployment_api(start_local=not to_pool, port=server_port, log_dir=home) as api_url:
            if to_pool:
                deploy_to_work_pool(deployments, pool_name)
                typer.echo(f"Registered on {api_url} for the work pool {pool_name!r}:\n{_describe(specs, api_url)}")
                typer.echo(f"Runs start once a worker polls the pool: PREFECT_API_URL={api_url} "
                           f"prefect worker start --pool {pool_name}")
                return
            typer.echo(f"Serving from this process (pid {os.getpid()}; Ctrl-C stops it and pauses the schedule) "
                       f"on {api_url}:\n{_describe(specs, api_url)}")
            serve_deployments(deployments, limit=limit)
            typer.echo("Stopped serving; the deployments stay registered (schedules paused) until the next "
                       "`mesa deploy`.")
    except (NoPrefectServer, FileNotFoundError, ValueError) as exc:
        typer.echo(f"mesa deploy: {exc}", err=True)
        raise typer.Exit(code=1) from exc
