"""Start and stop an `mlflow server` process (tests, local team set-ups, outage drills)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it).

    Args:
        host (str, default "127.0.0.1"): the interface to bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def mlflow_command() -> list[str]:
    """The `mlflow` executable of the running interpreter's environment (its venv), or
    ``python -m mlflow`` when there is no such script (the same installation either way)."""
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@dataclass
class MlflowServer:
    """A running `mlflow server` started by `start_mlflow_server`.

    Attributes:
        url (str): ``http://host:port``, the tracking URI to give clients.
        command (list[str]): the command line (kept so `restart` starts the same server).
        env (dict[str, str] | None): the server's environment (None: this process's).
        log_path (Path): the server's stdout and stderr.
        process (subprocess.Popen | None): the server process (None once stopped).
    """

    url: str
    command: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> MlflowServer:
        """Start the process (in its own process group, so `stop` also ends its workers)."""
        if self.process is not None and self.process.poll() is None:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps writing to it)
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        finally:
            log.close()
        return self

    def healthy(self) -> bool:
        """Whether ``/health`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 60.0) -> MlflowServer:
        """Block until ``/health`` answers.

        Args:
            timeout (float, default 60.0): seconds to wait.

        Raises:
            RuntimeError: when the process exits or does not answer in time (the message ends
                with the last lines of its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return self
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"mlflow server {self.url} exited before answering /health:\n{self.log_tail()}")
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server {self.url} did not answer /health within {timeout:g} s:\n{self.log_tail()}")

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

    def restart(self, timeout: float = 60.0) -> MlflowServer:
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

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


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
            ``postgresql://user@host/db``.
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
    command = [*mlflow_command(), "server", "--backend-store-uri", backend_uri,
               "--serve-artifacts", "--artifacts-destination", str(artifacts),
               "--host", host, "--port", str(port), "--workers", str(workers)]
    log = Path(log_path) if log_path else artifacts.parent / f"mlflow-server-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_execution else "false"}
    return MlflowServer(url=f"http://{host}:{port}", command=command, log_path=log, env=env).start()
