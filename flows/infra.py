"""`mesa infra`: the team's MLflow and Prefect servers on PostgreSQL, as local processes.

``mesa infra up --native --postgres postgresql://USER@HOST:5432`` creates the two databases when
missing, starts

- ``mlflow server`` (backend store: ``postgresql+psycopg2://.../mesa_mlflow``; ``--serve-artifacts`` with a local
  artifacts folder, so clients upload through the server and need no access to the folder), and
- ``prefect server start`` (``PREFECT_SERVER_DATABASE_CONNECTION_URL`` =
  ``postgresql+asyncpg://.../mesa_prefect``),

both bound to 127.0.0.1 unless told otherwise, waits until both answer their health endpoints,
prints the URLs and the lines to export, and records what it started in ``<state-dir>/state.json``.
``mesa infra down`` stops exactly those processes (by process id, checked against the start time
recorded with it, so a reused pid is never signalled) and nothing else.

infra/docker-compose.yml runs the same servers with the same flags in containers
(tests/team/test_compose.py keeps the two in step).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from components.atomic import write_text_atomic
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

infra_app = typer.Typer(help="Team servers: MLflow + Prefect on PostgreSQL (up / status / down).",
                        no_args_is_help=True)


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
        # Atomic: a reader (`mesa infra status`, a shell sourcing the env file) never sees half a file.
        path = write_text_atomic(state_dir / STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")
        exports = "".join(f"export {key}={value}\n" for key, value in self.env.items())
        write_text_atomic(state_dir / ENV_FILE, exports)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> InfraState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(started_at=raw["started_at"], servers=[StartedServer(**s) for s in raw.get("servers", [])],
                   env=dict(raw.get("env", {})), artifacts_dir=raw.get("artifacts_dir", ""))


def _is_ours(server: StartedServer) -> bool:
    """Whether `server.pid` is still the process `up` started (same pid and start time)."""
    import psutil

    try:
        return abs(psutil.Process(server.pid).create_time() - server.create_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _default_state_dir() -> Path:
    from flows.settings import project_root

    return project_root() / ".mesa-infra"


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
    if previous is not None and any(_is_ours(s) for s in previous.servers):
        raise RuntimeError(f"servers from an earlier `mesa infra up` still run ({state_dir / STATE_FILE}): "
                           f"run `mesa infra down --state-dir {state_dir}` first")
    problem = postgres_answers(postgres)
    if problem:
        raise RuntimeError(f"PostgreSQL at {redact(postgres)} does not answer ({problem}); start it "
                           "(e.g. `pg_ctlcluster 15 main start`, or `docker compose ... up postgres`) "
                           "or pass --postgres")
    for name, port in (("MLflow", mlflow_port), ("Prefect", prefect_port)):
        if _port_in_use(host, port):
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
        if not _is_ours(server):
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
    """Each recorded server with whether it still runs and answers its health endpoint."""
    import urllib.request

    state = InfraState.load(Path(state_dir).resolve())
    rows = []
    for server in (state.servers if state else []):
        healthy = False
        try:
            with urllib.request.urlopen(server.health_url, timeout=2) as answer:
                healthy = answer.status == 200
        except OSError:
            pass
        rows.append({"name": server.name, "pid": server.pid, "running": _is_ours(server),
                     "healthy": healthy, "url": server.url, "log": server.log})
    return rows


# ----------------------------------------------------------------------------- CLI
_STATE_DIR_HELP = "Folder for the state file, logs, env.sh and artifacts (default: <project>/.mesa-infra)."


@infra_app.command("up")
def up_command(
    native: bool = typer.Option(False, "--native", help="Start the servers as local processes (required here; "
                                                        "for containers use infra/docker-compose.yml)."),
    postgres: str = typer.Option(DEFAULT_POSTGRES, envvar="MESA_POSTGRES_URL",
                                 help="PostgreSQL server URL (a user that may create databases). Keep the "
                                      "password out of it: PGPASSWORD or ~/.pgpass are read."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback: put a reverse proxy with auth in front)."),
    mlflow_port: int = typer.Option(DEFAULT_MLFLOW_PORT, help="MLflow tracking server port."),
    prefect_port: int = typer.Option(DEFAULT_PREFECT_PORT, help="Prefect API server port."),
    mlflow_db: str = typer.Option("mesa_mlflow", help="MLflow's database (created when missing)."),
    prefect_db: str = typer.Option("mesa_prefect", help="Prefect's database (created when missing)."),
    artifacts_dir: Optional[Path] = typer.Option(None, help="MLflow's artifact store "
                                                             "(default <state-dir>/mlartifacts)."),
    mlflow_workers: int = typer.Option(2, help="MLflow server worker processes."),
    ui: bool = typer.Option(True, help="Serve Prefect's web UI."),
    state_dir: Optional[Path] = typer.Option(None, help=_STATE_DIR_HELP),
    timeout: float = typer.Option(180.0, help="Seconds to wait for both servers to answer."),
) -> None:
    """Start MLflow (PostgreSQL backend, served artifacts) and Prefect (PostgreSQL) servers; print what to export."""
    if not native:
        typer.echo("Containers: docker compose --env-file infra/env/compose.env -f infra/docker-compose.yml up -d "
                   "--wait\nLocal processes: mesa infra up --native --postgres postgresql://USER@HOST:5432",
                   err=True)
        raise typer.Exit(2)
    state_dir = state_dir or _default_state_dir()
    started = time.perf_counter()
    try:
        state = infra_up(postgres, state_dir=state_dir, host=host, mlflow_port=mlflow_port,
                         prefect_port=prefect_port, mlflow_db=mlflow_db, prefect_db=prefect_db,
                         artifacts_dir=artifacts_dir, mlflow_workers=mlflow_workers, ui=ui, timeout_s=timeout,
                         say=typer.echo)
    except RuntimeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    for server in state.servers:
        typer.echo(f"{server.name}: {server.url} (pid {server.pid}, database {server.database}, log {server.log})")
    typer.echo(f"artifacts: {state.artifacts_dir}")
    typer.echo(f"ready in {time.perf_counter() - started:.0f} s. Point clients at the servers with:")
    for key, value in state.env.items():
        typer.echo(f"export {key}={value}")
    typer.echo(f"(or: source {Path(state_dir).resolve() / ENV_FILE}); stop them with: mesa infra down"
               + ("" if state_dir == _default_state_dir() else f" --state-dir {state_dir}"))


@infra_app.command("down")
def down_command(state_dir: Optional[Path] = typer.Option(None, help=_STATE_DIR_HELP)) -> None:
    """Stop the servers `mesa infra up` started (by process id; nothing else is touched)."""
    stopped = infra_down(state_dir or _default_state_dir(), say=typer.echo)
    typer.echo(f"stopped {len(stopped)} server(s)")


@infra_app.command("status")
def status_command(state_dir: Optional[Path] = typer.Option(None, help=_STATE_DIR_HELP)) -> None:
    """Show the servers `mesa infra up` started: running, healthy, URL, log."""
    rows = infra_status(state_dir or _default_state_dir())
    if not rows:
        typer.echo("no servers recorded (run `mesa infra up --native`)")
    for row in rows:
        typer.echo(f"{row['name']}: pid {row['pid']} {'running' if row['running'] else 'not running'}, "
                   f"{'healthy' if row['healthy'] else 'not answering'}, {row['url']} (log {row['log']})")


if __name__ == "__main__":  # `python -m flows.infra up --native ...`: the same commands as `mesa infra`
    from flows.settings import configure_environment

    configure_environment()
    infra_app()
