"""What `mesa deploy` registers, and the Prefect server it registers it on (no Prefect import here).

One set of definitions (:func:`deployment_specs`: names, entrypoints, schedule and parameters from
params.yaml's ``deploy`` group) feeds two ways of running them (flows/deploy.py): served by the
`mesa deploy` process itself, or registered for a process work pool that a worker serves.

Deployments live on a Prefect server that outlives the command: the one PREFECT_API_URL (or the
Prefect profile) names, else a `prefect server start` already listening on 127.0.0.1:4200; served
mode starts that local server itself when none answers (:func:`deployment_server`; its database
stays in the project's PREFECT_HOME, .prefect/), a work pool needs one already running.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.ops.health import health_problem

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
    "ablation-variant": ("flows/ablation.py:ablation_variant_flow",
                         "One ablation variant x seed (`dvc exp run --temp`) on a worker's checkout, for "
                         "ablations spread over a work pool (ablation.work_pool)."),
}
# Runs of these may overlap: each works in a temporary copy of the repository (DVC's --temp).
CONCURRENT_FLOWS = ("ablation-variant",)


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
            running waits in the queue; the flows share the project's data, models and registry;
            None: no limit, for ablation variants, which run in copies).
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
    concurrency_limit: int | None = 1

    @property
    def full_name(self) -> str:
        """The name `prefect deployment run` and `run_deployment` take."""
        return f"{self.flow_name}/{self.name}"


def deployment_specs(project_dir: str | Path, deploy: dict[str, Any], flows: list[str] | None = None
                     ) -> list[DeploymentSpec]:
    """The project's deployments from params.yaml's ``deploy`` group (pure: no I/O).

    Only retrain is scheduled (``retrain_cron`` in ``timezone``; a null cron means on demand
    only); ablation and promote run when triggered.

    Args:
        project_dir (str | Path): the project root; runs get it as `project_dir`.
        deploy (dict): the ``deploy`` group (``retrain_cron``, ``timezone``, ``work_pool``), checked.
        flows (list[str] | None, default None): a subset of ``FLOWS``' names; None: all of them.

    Raises:
        ValueError: a flow name that is not in ``FLOWS``.
    """
    root = Path(project_dir).resolve()
    cron = deploy.get("retrain_cron")
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
            concurrency_limit=None if flow_name in CONCURRENT_FLOWS else 1,
        ))
    return specs


def describe_specs(specs: list[DeploymentSpec], api_url: str) -> str:
    """What was deployed where, and how to trigger a run and find it (lines for the terminal).

    Args:
        specs (list[DeploymentSpec]): the deployments, at least one.
        api_url (str): the Prefect API they live on.
    """
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


# --- the Prefect API the deployments live on ---------------------------------------------------

class NoPrefectServer(RuntimeError):
    """No Prefect API answers where one is expected; the message says how to start or name one."""


def _port_option(port: int) -> str:
    return "" if port == LOCAL_PORT else f" --port {port}"


@contextlib.contextmanager
def deployment_server(configured: str | None, *, start_local: bool, port: int = LOCAL_PORT,
                      home_dir: str | Path | None = None, startup_timeout: float = 120.0,
                      say: Callable[[str], None] = print) -> Iterator[str]:
    """Yield the URL of a Prefect API that keeps deployments: configured, local, or started here.

    Args:
        configured (str | None): the API URL the process is set up with (PREFECT_API_URL or the
            Prefect profile); it must answer.
        start_local (bool): with no `configured` API and none answering on 127.0.0.1:`port`,
            start `prefect server start` there (stopped again when the block ends); False raises
            NoPrefectServer instead.
        port (int, default 4200): the local server's port (Prefect's own default).
        home_dir (str | Path | None, default None): the started server's PREFECT_HOME (its
            database) and the folder of its log, prefect-server.log; None: the working directory.
        startup_timeout (float, default 120.0): seconds to wait for a started server to answer.
        say (Callable[[str], None], default print): progress lines.

    Raises:
        NoPrefectServer: the configured API does not answer, nothing answers locally and
            `start_local` is False, or the started server exits or does not answer in time.
    """
    from components.tracking.server import start_prefect_server

    if configured:
        problem = health_problem(f"{configured.rstrip('/')}/health", timeout_s=3.0)
        if problem:
            raise NoPrefectServer(
                f"the Prefect API at {configured} (PREFECT_API_URL or the Prefect profile) does not answer "
                f"({problem}). Start it (`prefect server start`) or point PREFECT_API_URL at the team server.")
        yield configured
        return
    local = f"http://{LOCAL_HOST}:{port}/api"
    if health_problem(f"{local}/health", timeout_s=1.0) is None:
        yield local
        return
    if not start_local:
        raise NoPrefectServer(
            "no Prefect server to register the deployments on: PREFECT_API_URL is not set and nothing answers "
            f"at {local}. Start one in another shell (`prefect server start{_port_option(port)}`) and rerun, "
            "or set PREFECT_API_URL to the team server (http://HOST:4200/api).")
    home = Path(home_dir or Path.cwd())
    log_path = home / "prefect-server.log"
    say(f"No Prefect server set or running: starting one at {local} (log: {log_path})")
    # Its own session: Ctrl-C stops this process, which then stops the server.
    server = start_prefect_server(None, home, host=LOCAL_HOST, port=port, log_path=log_path)
    try:
        try:
            server.wait_healthy(startup_timeout)
        except RuntimeError as err:
            raise NoPrefectServer(f"{err}\n(port {port} in use? choose another with --server-port)") from None
        yield server.api_url
    finally:
        server.stop(timeout=20)
