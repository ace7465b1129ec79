"""The team's MLflow and Prefect servers on PostgreSQL, as local processes (`mesa infra`).

:func:`infra_up` creates the two databases when missing, starts

- ``mlflow server`` (backend store: ``postgresql+psycopg2://.../mesa_mlflow``; ``--serve-artifacts`` with a local
  artifacts folder, so clients upload through the server and need no access to the folder), and
- ``prefect server start`` (``PREFECT_SERVER_DATABASE_CONNECTION_URL`` =
  ``postgresql+asyncpg://.../mesa_prefect``),

both bound to 127.0.0.1 unless told otherwise, waits until both answer their health endpoints and
records what it started in ``<state-dir>/state.json`` (and the client settings in ``env.sh``).
:func:`infra_down` stops exactly those processes (by process id, checked against the start time
recorded with it, so a reused pid is never signalled) and nothing else.

infra/docker-compose.yml runs the same servers with the same flags in containers
(tests/team/test_compose.py keeps the two in step).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from components.atomic import write_text_atomic
from components.ops.health import health_problem, port_in_use
from components.tracking.server import (
    ServerProcess,
    ensure_database,
    postgres_answers,
    postgres_url,
    redact,
    start_mlflow_server,
    start_prefect_server,
)

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_PREFECT_PORT = 4200
STATE_FILE = "state.json"
ENV_FILE = "env.sh"


# ----------------------------------------------------------------------------- state
@dataclass
class StartedServer:
    """One server `up` started, as the state file records it.

    Attributes:
        name (str): ``mlflow`` or ``prefect``.
        pid (int): its process id (also its process group id: it leads a session of its own).
        create_time (float): the process start time (psutil), so `down` never signals a reused pid.
        url (str): where it answers.
        health_url (str): its health endpoint.
        log (str): its log file.
        database (str): its PostgreSQL URL (password redacted).
    """

    name: str
    pid: int
    create_time: float
    url: str
    health_url: str
    log: str
    database: str


@dataclass
class InfraState:
    """What `up` started (``<state-dir>/state.json``).

    Attributes:
        started_at (str): UTC, ISO 8601.
        servers (list[StartedServer]): the processes, MLflow first.
        env (dict[str, str]): the client settings to export (MLFLOW_TRACKING_URI, PREFECT_API_URL).
        artifacts_dir (str): MLflow's proxied artifact store.
    """

    started_at: str
    servers: list[StartedServer] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    artifacts_dir: str = ""

    def save(self, state_dir: Path) -> Path:
        """Write ``state.json`` and ``env.sh`` into `state_dir`; return the state file's path."""
        # Atomic: a reader (`mesa infra status`, a shell sourcing the env file) never sees half a file.
        path = write_text_atomic(state_dir / STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")
        exports = "".join(f"export {key}={value}\n" for key, value in self.env.items())
        write_text_atomic(state_dir / ENV_FILE, exports)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> InfraState | None:
        """The state `save` wrote into `state_dir`, or None when there is none."""
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(started_at=raw["started_at"], servers=[StartedServer(**s) for s in raw.get("servers", [])],
                   env=dict(raw.get("env", {})), artifacts_dir=raw.get("artifacts_dir", ""))


def is_ours(server: StartedServer) -> bool:
    """Whether `server.pid` is still the process `up` started (same pid and start time).

    Args:
        server (StartedServer): a server from the state file.
    """
    import psutil

    try:
        return abs(psutil.Process(server.pid).create_time() - server.create_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


# ----------------------------------------------------------------------------- up / down
def infra_up(
    postgres: str = DEFAULT_POSTGRES,
    *,
    state_dir: str | Path,
    host: str = "127.0.0.1",
    mlflow_port: int = DEFAULT_MLFLOW_PORT,
    prefect_port: int = DEFAULT_PREFECT_PORT,
    mlflow_db: str = "mesa_mlflow",
    prefect_db: str = "mesa_prefect",
    artifacts_dir: str | Path | None = None,
    mlflow_workers: int = 2,
    ui: bool = True,
    timeout_s: float = 180.0,
    say=print,
) -> InfraState:
    """Start the MLflow and Prefect servers on PostgreSQL and wait until both answer.

    Args:
        postgres (str, default "postgresql://postgres@127.0.0.1:5432/postgres"): the PostgreSQL
            server; its user must be allowed to create databases (when they are missing) and
            the database part is only used for that.
        state_dir (str | Path): where the state file, the logs, ``env.sh`` and (by default) the
            artifacts go.
        host (str, default "127.0.0.1"): interface both servers bind. Anything else exposes them
            without authentication: put them behind a reverse proxy instead (docs/team.md).
        mlflow_port (int, default 5000): MLflow's port.
        prefect_port (int, default 4200): Prefect's port.
        mlflow_db (str, default "mesa_mlflow"): MLflow's database (created when missing).
        prefect_db (str, default "mesa_prefect"): Prefect's database (created when missing).
        artifacts_dir (str | Path | None, default None): MLflow's artifact store; None uses
            ``<state_dir>/mlartifacts``.
        mlflow_workers (int, default 2): MLflow server worker processes.
        ui (bool, default True): serve Prefect's web UI (MLflow's is always on).
        timeout_s (float, default 180.0): seconds to wait for both health endpoints.
        say (Callable[[str], None], default print): progress lines.

    Returns:
        InfraState: what was started (also written to ``<state_dir>/state.json``).

    Raises:
        RuntimeError: PostgreSQL does not answer, a port is taken, servers from an earlier `up`
            still run, or a server did not become healthy (its log tail is in the message; what
            was started is stopped again).
    """
    state_dir = Path(state_dir).resolve()
    previous = InfraState.load(state_dir)
    if previous is not None and any(is_ours(s) for s in previous.servers):
        raise RuntimeError(f"servers from an earlier `mesa infra up` still run ({state_dir / STATE_FILE}): "
                           f"run `mesa infra down --state-dir {state_dir}` first")
    problem = postgres_answers(postgres)
    if problem:
        raise RuntimeError(f"PostgreSQL at {redact(postgres)} does not answer ({problem}); start it "
                           "(e.g. `pg_ctlcluster 15 main start`, or `docker compose ... up postgres`) "
                           "or pass --postgres")
    for name, port in (("MLflow", mlflow_port), ("Prefect", prefect_port)):
        if port_in_use(host, port):
            raise RuntimeError(f"port {port} on {host} is taken, so {name} cannot bind it: stop what listens "
                               f"there or pass --{name.lower()}-port")
    for database in (mlflow_db, prefect_db):
        if ensure_database(postgres, database):
            say(f"created database {database!r} on {redact(postgres)}")

    artifacts = Path(artifacts_dir).resolve() if artifacts_dir else state_dir / "mlartifacts"
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project pins psycopg2.
    mlflow_backend = postgres_url(postgres, mlflow_db, driver="psycopg2")
    prefect_backend = postgres_url(postgres, prefect_db, driver="asyncpg")
    logs = state_dir / "logs"
    mlflow = start_mlflow_server(mlflow_backend, artifacts, host=host, port=mlflow_port,
                                 workers=mlflow_workers, log_path=logs / "mlflow.log")
    prefect = start_prefect_server(prefect_backend, state_dir / "prefect-home", host=host, port=prefect_port,
                                   log_path=logs / "prefect.log", ui=ui)
    started: list[ServerProcess] = [mlflow, prefect]
    say(f"started mlflow (pid {mlflow.pid}) and prefect (pid {prefect.pid}); waiting for them to answer ...")
    began = time.perf_counter()

    def wait(server: ServerProcess) -> None:
        server.wait_healthy(timeout_s)
        say(f"{server.label} answers after {time.perf_counter() - began:.0f} s")

    try:
        # Both start at once (each spends most of its start-up migrating its database).
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(wait, s) for s in started]:
                future.result()
    except BaseException:
        for server in started:
            server.stop()
        raise

    state = InfraState(
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        servers=[StartedServer(name, s.pid, _create_time(s.pid), s.url, f"{s.url}{s.health_path}",
                               str(s.log_path), redact(backend))
                 for name, s, backend in (("mlflow", mlflow, mlflow_backend), ("prefect", prefect, prefect_backend))],
        env={"MLFLOW_TRACKING_URI": mlflow.url, "PREFECT_API_URL": prefect.api_url},
        artifacts_dir=str(artifacts),
    )
    state.save(state_dir)
    return state


def infra_down(state_dir: str | Path, timeout_s: float = 20.0, say=print) -> list[str]:
    """Stop the servers `infra_up` recorded in `state_dir` (only those), then forget them.

    Each recorded process gets SIGTERM on its process group (the server and its workers), then
    SIGKILL after `timeout_s`. A pid that now belongs to another process is left alone.

    Args:
        state_dir (str | Path): the folder `infra_up` wrote its state to.
        timeout_s (float, default 20.0): seconds to wait for a clean exit.
        say (Callable[[str], None], default print): progress lines.

    Returns:
        list[str]: the names of the servers stopped now.
    """
    import psutil

    state_dir = Path(state_dir).resolve()
    state = InfraState.load(state_dir)
    if state is None:
        say(f"nothing to stop: no {STATE_FILE} in {state_dir}")
        return []
    ours = []
    for server in state.servers:
        if not is_ours(server):
            say(f"{server.name} (pid {server.pid}) is not running any more")
            continue
        try:
            process = psutil.Process(server.pid)
            os.killpg(server.pid, signal.SIGTERM)  # up started it as a session (and group) leader
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        ours.append((server, process))
    # All were told to stop at once; now wait for each (shutdowns overlap).
    stopped = []
    for server, process in ours:
        try:
            process.wait(timeout_s)
        except psutil.TimeoutExpired:
            say(f"{server.name} (pid {server.pid}) ignored SIGTERM for {timeout_s:g} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            process.wait(timeout_s)
        except psutil.NoSuchProcess:
            pass
        _reap(server.pid)
        stopped.append(server.name)
        say(f"stopped {server.name} (pid {server.pid})")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    (state_dir / ENV_FILE).unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (up and down in one process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def infra_status(state_dir: str | Path) -> list[dict]:
    """Each recorded server with whether it still runs and answers its health endpoint.

    Args:
        state_dir (str | Path): the folder `infra_up` wrote its state to.

    Returns:
        list[dict]: per server ``name``, ``pid``, ``running``, ``healthy``, ``url``, ``log``; empty
        when nothing is recorded.
    """
    state = InfraState.load(Path(state_dir).resolve())
    return [{"name": server.name, "pid": server.pid, "running": is_ours(server),
             "healthy": health_problem(server.health_url) is None, "url": server.url, "log": server.log}
            for server in (state.servers if state else [])]
