"""Start and stop the team's server processes: `mlflow server` and `prefect server start`.

Used by tests, outage drills, `mesa infra up --native` (components/ops/infra.py) and the local
Prefect server of `mesa deploy` (components/ops/deployments.py). Nothing here imports
Prefect or MLflow: the servers are subprocesses of this interpreter's environment, and the
PostgreSQL helpers talk to the database with psycopg2 only.

Secrets stay off command lines (anyone on the machine can read those with ``ps``): a password in
a PostgreSQL URL is moved into the child's ``PGPASSWORD`` (libpq and asyncpg both read it), so
``--backend-store-uri`` only ever shows ``postgresql://user@host:port/db``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from components.ops.health import health_problem, wait_until_healthy


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it).

    Args:
        host (str, default "127.0.0.1"): the interface to bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _script(name: str) -> Path:
    return Path(sys.executable).parent / name


def mlflow_command() -> list[str]:
    """The `mlflow` executable of the running interpreter's environment (its venv), or
    ``python -m mlflow`` when there is no such script (the same installation either way)."""
    script = _script("mlflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


def prefect_command() -> list[str]:
    """The `prefect` executable of the running interpreter's environment, or ``python -m prefect``."""
    script = _script("prefect")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "prefect"]


@dataclass
class ServerProcess:
    """A server subprocess with an HTTP health endpoint (base of `MlflowServer`, `PrefectServer`).

    Attributes:
        url (str): ``http://host:port``.
        command (list[str]): the command line (kept so `restart` starts the same server).
        log_path (Path): the server's stdout and stderr.
        env (dict[str, str] | None): the server's environment (None: this process's).
        process (subprocess.Popen | None): the server process (None once stopped).
        label (str): what error messages call it.
        health_path (str): the path that answers 200 once the server serves requests.
    """

    url: str
    command: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    label: str = "server"
    health_path: str = "/health"

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id), None when not started."""
        return None if self.process is None else self.process.pid

    def start(self) -> ServerProcess:
        """Start the process (in its own process group, so `stop` also ends its workers)."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps writing to it)
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        finally:
            log.close()
        return self

    def healthy(self) -> bool:
        """Whether the health endpoint answers (2xx) now."""
        return health_problem(f"{self.url}{self.health_path}") is None

    def wait_healthy(self, timeout: float = 60.0) -> ServerProcess:
        """Block until the health endpoint answers.

        Args:
            timeout (float, default 60.0): seconds to wait.

        Raises:
            RuntimeError: when the process exits or does not answer in time (the message ends
                with the last lines of its log).
        """
        if self.process is None:
            raise RuntimeError(f"{self.label} {self.url} was never started (or is stopped): call start() first")
        wait_until_healthy(f"{self.url}{self.health_path}", timeout, label=self.label, exit_code=self.process.poll,
                           details=lambda: f"log {self.log_path}:\n{self.log_tail()}")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server and its workers (SIGTERM, then SIGKILL after `timeout` seconds).

        Args:
            timeout (float, default 15.0): seconds to wait for a clean exit.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout)
        self.process = None

    def restart(self, timeout: float = 60.0) -> ServerProcess:
        """Start the same command again (same port, same stores) and wait until it answers."""
        self.stop()
        return self.start().wait_healthy(timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _signal(self, sig: int) -> None:
        # The group is the one start() created for this process (start_new_session=True).
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class MlflowServer(ServerProcess):
    """A running `mlflow server` started by `start_mlflow_server`; `url` is the tracking URI."""

    label: str = "mlflow server"
    health_path: str = "/health"


@dataclass
class PrefectServer(ServerProcess):
    """A running `prefect server start` started by `start_prefect_server`."""

    label: str = "prefect server"
    health_path: str = "/api/health"

    @property
    def api_url(self) -> str:
        """The PREFECT_API_URL to give clients (``http://host:port/api``)."""
        return f"{self.url}/api"


def mlflow_server_args(backend_uri: str, artifacts_destination: str, host: str, port: int,
                       workers: int) -> list[str]:
    """The arguments after ``mlflow`` that start the tracking server; infra/docker-compose.yml
    uses the same flags (tests/team/test_compose.py checks it).

    Args:
        backend_uri (str): the backend store (runs and registry), without a password.
        artifacts_destination (str): the proxied artifact store (a folder, ``s3://...``).
        host (str): interface to bind.
        port (int): port.
        workers (int): server worker processes.
    """
    return ["server", "--backend-store-uri", backend_uri,
            "--serve-artifacts", "--artifacts-destination", artifacts_destination,
            "--host", host, "--port", str(port), "--workers", str(workers)]


def start_mlflow_server(
    backend_uri: str,
    artifacts_dir: str | Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    log_path: str | Path | None = None,
    job_execution: bool = False,
) -> MlflowServer:
    """Start ``mlflow server`` serving artifacts from `artifacts_dir` (returns without waiting).

    Args:
        backend_uri (str): the backend store, e.g. ``sqlite:////tmp/x/mlflow.db`` or
            ``postgresql://user@host/db`` (a password in it goes to the server's PGPASSWORD, not
            onto its command line).
        artifacts_dir (str | Path): the proxied artifact store (``--artifacts-destination``);
            clients upload through the server, so they need no access to the folder.
        host (str, default "127.0.0.1"): interface to bind.
        port (int | None, default None): port; None picks a free one.
        workers (int, default 1): server worker processes (MLflow's default is 4: too many for
            small machines and tests).
        log_path (str | Path | None, default None): where the server's output goes; default
            ``mlflow-server-<port>.log`` next to `artifacts_dir`.
        job_execution (bool, default False): MLflow's background job executor (huey worker
            processes for its GenAI features); this project uses none of them, and without it
            the server starts about three times faster (8 s instead of 22 s on 2 busy cores).

    Returns:
        MlflowServer: call ``.wait_healthy(timeout)`` before use, ``.stop()`` when done.
    """
    artifacts = Path(artifacts_dir).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    backend_uri, password = split_password(backend_uri)
    command = [*mlflow_command(), *mlflow_server_args(backend_uri, str(artifacts), host, port, workers)]
    log = Path(log_path) if log_path else artifacts.parent / f"mlflow-server-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_execution else "false"}
    if password is not None:
        env["PGPASSWORD"] = password
    return MlflowServer(url=f"http://{host}:{port}", command=command, log_path=log, env=env).start()


def prefect_server_args(host: str, port: int) -> list[str]:
    """The arguments after ``prefect`` that start the API server (the database comes from the
    environment: ``PREFECT_SERVER_DATABASE_CONNECTION_URL``); infra/docker-compose.yml uses the
    same flags.

    Args:
        host (str): interface to bind.
        port (int): port.
    """
    return ["server", "start", "--host", host, "--port", str(port)]


def start_prefect_server(
    database_url: str | None,
    home_dir: str | Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: str | Path | None = None,
    ui: bool = True,
) -> PrefectServer:
    """Start ``prefect server start`` on `database_url` (returns without waiting).

    The server runs its database migrations at start (the first start on an empty PostgreSQL
    database takes longer: about 20 s on 2 busy cores).

    Args:
        database_url (str | None): ``postgresql+asyncpg://user[:password]@host:port/db`` (or
            ``sqlite+aiosqlite:///path``); given to the server through its environment only. None:
            Prefect's default, a SQLite database in `home_dir`.
        home_dir (str | Path): the server's PREFECT_HOME (its profiles, UI build, local files).
        host (str, default "127.0.0.1"): interface to bind.
        port (int | None, default None): port; None picks a free one.
        log_path (str | Path | None, default None): default ``prefect-server-<port>.log`` in
            `home_dir`'s parent.
        ui (bool, default True): serve the web UI (tests turn it off: faster start).

    Returns:
        PrefectServer: ``.api_url`` is the PREFECT_API_URL for clients.
    """
    home = Path(home_dir).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    command = [*prefect_command(), *prefect_server_args(host, port)]
    log = Path(log_path) if log_path else home.parent / f"prefect-server-{port}.log"
    env = {key: value for key, value in os.environ.items()
           # A client setting in the server's environment would only confuse its own CLI.
           if key not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
    })
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return PrefectServer(url=f"http://{host}:{port}", command=command, log_path=log, env=env).start()


# ----------------------------------------------------------------------------- PostgreSQL
def split_password(url: str) -> tuple[str, str | None]:
    """(`url` without its password, the password or None); URLs other than PostgreSQL pass through.

    Args:
        url (str): e.g. ``postgresql://mesa:secret@db:5432/mlflow``.
    """
    if not url.lower().startswith("postgresql"):
        return url, None
    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    if parsed.password is None:
        return url, None
    # URL.set(password=None) keeps the password (None means "unchanged"): build it anew.
    bare = URL.create(parsed.drivername, username=parsed.username, host=parsed.host, port=parsed.port,
                      database=parsed.database, query=parsed.query)
    return bare.render_as_string(hide_password=False), str(parsed.password)


def postgres_url(base_url: str, database: str, driver: str | None = None) -> str:
    """`base_url` pointing at `database` (and using `driver`, e.g. ``asyncpg``).

    Args:
        base_url (str): ``postgresql://user[:password]@host:port[/anydb]``.
        database (str): the database name to put in.
        driver (str | None, default None): SQLAlchemy driver, e.g. ``psycopg2`` or ``asyncpg``
            (None: SQLAlchemy's default, which since SQLAlchemy 2.1 is psycopg 3: not installed
            here, so name psycopg2 for MLflow).

    Returns:
        str: e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5432/mesa_prefect``.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(base_url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"{redact(base_url)} is not a PostgreSQL URL: give postgresql://user@host:port")
    name = "postgresql" + (f"+{driver}" if driver else "")
    return parsed.set(drivername=name, database=database).render_as_string(hide_password=False)


def redact(url: str) -> str:
    """`url` with its password shown as ``***`` (for messages and state files)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL at all: show it as given, it holds no parsed password
        return url


def connect_postgres(base_url: str, database: str | None = None, timeout_s: float = 5.0):
    """A psycopg2 connection to `database` (default: the one in `base_url`, else ``postgres``).

    Args:
        base_url (str): ``postgresql://user[:password]@host:port[/db]``.
        database (str | None, default None): the database to open.
        timeout_s (float, default 5.0): connection timeout (whole seconds, at least 1).
    """
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(base_url)
    return psycopg2.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
                            user=parsed.username, password=parsed.password,
                            dbname=database or parsed.database or "postgres",
                            connect_timeout=max(1, int(timeout_s)))


def postgres_answers(base_url: str, timeout_s: float = 5.0) -> str | None:
    """None when PostgreSQL at `base_url` accepts a connection, else why not (one line).

    Args:
        base_url (str): ``postgresql://user@host:port[/db]``.
        timeout_s (float, default 5.0): connection timeout.
    """
    try:
        connect_postgres(base_url, timeout_s=timeout_s).close()
        return None
    except Exception as err:
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}"


def ensure_database(base_url: str, name: str) -> bool:
    """Create database `name` on the server of `base_url` when it does not exist.

    Args:
        base_url (str): a URL whose user may create databases (its database part is only used
            to connect; default ``postgres``).
        name (str): the database to create.

    Returns:
        bool: True when it was created now, False when it existed.
    """
    from psycopg2 import errors, sql

    conn = connect_postgres(base_url)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:  # another process created it just now
                return False
            return True
    finally:
        conn.close()


def drop_database(base_url: str, name: str) -> None:
    """Drop database `name` if it exists, ending its open connections first (PostgreSQL 13+).

    Args:
        base_url (str): a URL whose user owns `name` or is a superuser.
        name (str): the database to drop.
    """
    from psycopg2 import sql

    conn = connect_postgres(base_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()
