"""One Prefect API per run, and stage processes that report to it as subflows.

The retrain flow owns the API: the team server when PREFECT_API_URL is set, otherwise Prefect's
ephemeral server, started once here. Stage processes (run by DVC) get its URL and the id of the
task that launched them, so their flows show up as subflows of the run on the same server.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from components.layout import PARENT_TASK_RUN_ENV, STAGE_STARTED_ENV


@contextlib.contextmanager
def owned_prefect_api() -> Iterator[str]:
    """Yield the API URL for this run, starting (and finally stopping) an ephemeral server if none is set.

    SIGTERM inside the block unwinds it like Ctrl-C (components.processes.stop_on_sigterm): stage
    subprocesses are stopped and the temporary server too, instead of living on as orphans.
    """
    from prefect.settings import get_current_settings

    from components.processes import Terminated, lifeline, stop_on_sigterm

    with stop_on_sigterm():
        configured = get_current_settings().api.url
        if configured:
            yield str(configured)
            return
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        try:
            server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
            with lifeline(server.server_process, "the temporary Prefect server"), use_api(server.api_url):
                try:
                    yield server.api_url
                except (Terminated, KeyboardInterrupt):
                    _drain_to_server(timeout_s=2)  # stopping: a short wait, then queued logs are dropped
                    raise
                except BaseException:
                    _drain_to_server()
                    raise
                else:
                    _drain_to_server()
        finally:
            server.stop()


@contextlib.contextmanager
def use_api(api_url: str) -> Iterator[str]:
    """Make `api_url` this process's Prefect API and its children's (stage processes, served flow runs)."""
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


def current_api_url() -> str:
    """The Prefect API this process reports to (the run's server: ephemeral, team or test harness)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RuntimeError("no Prefect API URL is set: run retrain through `mesa retrain` (which starts one) "
                           "or set PREFECT_API_URL")
    return str(url)


def _drain_to_server(timeout_s: float = 10) -> None:
    """Send queued logs and events while the server still listens, then stop their workers.

    A worker with anything left would retry against the stopped server for a minute at exit.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def stage_process_env(api_url: str, parent_task_run_id: str | None) -> dict[str, str]:
    """Environment for a stage subprocess: the run's API and the task to attach its flow to."""
    # DVC and the stage commands (`mesa stage ...`) come from this interpreter's environment,
    # also when it was started as .venv/bin/mesa without activating the venv.
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PREFECT_API_URL=api_url, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    if parent_task_run_id:
        env[PARENT_TASK_RUN_ENV] = str(parent_task_run_id)
    return env


def run_as_subflow(flow: Any, **parameters: Any) -> Any:
    """Run `flow(**parameters)`; under a retrain run, as a subflow of the task that started this process."""
    started = os.environ.get(STAGE_STARTED_ENV)
    if started:
        Path(started).touch()
    parent = os.environ.get(PARENT_TASK_RUN_ENV)
    if not parent:
        return flow(**parameters)
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    with get_client(sync_client=True) as client:
        _wait_for_task_run(client, UUID(parent))
        flow_run = client.create_flow_run(
            flow=flow, parameters=flow.serialize_parameters(parameters), state=Pending(),
            parent_task_run_id=UUID(parent),
        )
    return run_flow(flow, flow_run=flow_run, parameters=parameters)


def _wait_for_task_run(client: Any, task_run_id: UUID, timeout_s: float = 120.0) -> None:
    """Wait until the server has recorded the parent task run.

    The server records task runs from events, a moment after they start; a subflow created before
    that violates its foreign key (409 Conflict on PostgreSQL; SQLite does not check it).
    """
    import time

    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            client.read_task_run(task_run_id)
            return
        except ObjectNotFound:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the parent task run {task_run_id} never appeared on the Prefect server "
                                   f"within {timeout_s:.0f} s: is the stage reporting to the run's server?") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def resume_paused(pause_key: str, run_input: dict[str, Any]) -> str | None:
    """Resume the flow run paused under `pause_key` with `run_input`; its id, or None when none waits.

    Only flow runs on this API are found: a run paused on another process's ephemeral server is
    not (use a shared server, PREFECT_API_URL, for reviews from another shell).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    for run in paused:
        if run.state is not None and run.state.state_details.pause_key == pause_key:
            resume_flow_run(run.id, run_input=run_input)
            return str(run.id)
    return None
