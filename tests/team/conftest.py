"""The team set-up for real: PostgreSQL databases of the session's own, and the MLflow and Prefect
servers that `mesa infra up --native` starts on them (loopback, free ports).

PostgreSQL comes from MESA_TEST_POSTGRES_URL (default ``postgresql://postgres@127.0.0.1:5432/postgres``:
the machine's server, trust auth). When it does not answer, the tests that need it skip, except
under ``CI=true``, where they fail: CI must not pass by skipping the team set-up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.tracking.server import drop_database, free_port, postgres_answers, redact
from tests.conftest import PROJECT_ROOT

POSTGRES_URL = os.environ.get("MESA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _infra(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`python -m flows.infra ARGS` (the commands `mesa infra` has), from the project root."""
    return subprocess.run([sys.executable, "-m", "flows.infra", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def postgres() -> str:
    """The PostgreSQL URL, once it answers (skip, or fail under CI=true, when it does not)."""
    problem = postgres_answers(POSTGRES_URL, timeout_s=5)
    if problem:
        message = (f"PostgreSQL at {redact(POSTGRES_URL)} does not answer ({problem}). Start it "
                   "(`pg_ctlcluster --skip-systemctl-redirect 15 main start`) or set MESA_TEST_POSTGRES_URL.")
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and the team tests need PostgreSQL: {message}")
        pytest.skip(message)
    return POSTGRES_URL


@dataclass
class TeamServers:
    """The servers `mesa infra up --native` started for the session.

    Attributes:
        mlflow_url (str): MLFLOW_TRACKING_URI for clients.
        prefect_api_url (str): PREFECT_API_URL for clients.
        postgres (str): the PostgreSQL server URL.
        mlflow_db (str): MLflow's database (dropped at the end).
        prefect_db (str): Prefect's database (dropped at the end).
        state_dir (Path): infra's state folder (state.json, logs, artifacts).
        state (dict): state.json as `up` wrote it.
    """

    mlflow_url: str
    prefect_api_url: str
    postgres: str
    mlflow_db: str
    prefect_db: str
    state_dir: Path
    state: dict


def _running(pid: int, create_time: float) -> bool:
    """Whether the process `up` started (same pid, same start time) still runs (a zombie does not)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - create_time) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="session")
def team_servers(postgres, tmp_path_factory):
    """MLflow (PostgreSQL backend, served artifacts) and Prefect (PostgreSQL) servers for the session."""
    suffix = uuid.uuid4().hex[:10]
    mlflow_db, prefect_db = f"mesa_test_{suffix}_mlflow", f"mesa_test_{suffix}_prefect"
    state_dir = tmp_path_factory.mktemp("team-infra")
    up = _infra("up", "--native", "--postgres", postgres, "--mlflow-port", str(free_port()),
                "--prefect-port", str(free_port()), "--mlflow-db", mlflow_db, "--prefect-db", prefect_db,
                "--state-dir", str(state_dir), "--mlflow-workers", "2", "--no-ui", "--timeout", "240",
                timeout=300)
    state_file = state_dir / "state.json"
    try:
        assert up.returncode == 0, f"mesa infra up failed:\n{up.stdout}\n{up.stderr}"
        state = json.loads(state_file.read_text())
        servers = TeamServers(mlflow_url=state["env"]["MLFLOW_TRACKING_URI"],
                              prefect_api_url=state["env"]["PREFECT_API_URL"], postgres=postgres,
                              mlflow_db=mlflow_db, prefect_db=prefect_db, state_dir=state_dir, state=state)
        assert f"export MLFLOW_TRACKING_URI={servers.mlflow_url}" in up.stdout
        assert f"export PREFECT_API_URL={servers.prefect_api_url}" in up.stdout
        yield servers
    finally:
        pids = json.loads(state_file.read_text())["servers"] if state_file.exists() else []
        down = _infra("down", "--state-dir", str(state_dir), timeout=120)
        try:
            assert down.returncode == 0, f"mesa infra down failed:\n{down.stdout}\n{down.stderr}"
            still = [s for s in pids if _running(s["pid"], s["create_time"])]
            assert not still, f"mesa infra down left servers running: {still}"
        finally:
            for database in (mlflow_db, prefect_db):
                drop_database(postgres, database)


@pytest.fixture
def mlflow_client(team_servers):
    """An MlflowClient on the team server (MLflow's own HTTP retries turned down, as RunLogger does)."""
    from mlflow import MlflowClient

    from components.tracking.store import configure_client_retries

    configure_client_retries(team_servers.mlflow_url)
    return MlflowClient(team_servers.mlflow_url)
