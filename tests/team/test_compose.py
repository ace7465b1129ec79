"""infra/docker-compose.yml runs the servers `mesa infra up --native` starts, with the same flags.

Docker cannot run here, so the file is parsed: services, images (the versions this environment
pins), published ports (loopback only), commands (the arguments the native code builds), health
checks, and no secret in the file or in the example env files. Needs no PostgreSQL.
"""
from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from components.tracking.server import mlflow_server_args, prefect_server_args
from components.ops import infra
from tests.conftest import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "infra" / "docker-compose.yml"
ENV_EXAMPLES = sorted((PROJECT_ROOT / "infra" / "env").glob("*.env.example"))
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}|\$\$")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution (``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, kind, arg = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if kind == "-" else ""

    return _VARIABLE.sub(replace, value)


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The compose file with the example settings filled in (as `--env-file compose.env.example`)."""
    return interpolate(raw, read_env_file(PROJECT_ROOT / "infra" / "env" / "compose.env.example"))


def flags(args: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs of a command line (None for a flag without a value)."""
    found: dict[str, str | None] = {}
    for i, token in enumerate(args):
        if token.startswith("--"):
            following = args[i + 1] if i + 1 < len(args) else None
            found[token] = None if following is None or following.startswith("--") else following
    return found


def test_the_services_are_the_team_set(compose):
    assert set(compose["services"]) == {"postgres", "mlflow", "prefect-server", "prefect-worker"}
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"service {name} has no health check"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} starts before {dependency} is healthy"


def test_images_are_the_versions_this_environment_pins(compose):
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:15"  # the machine's PostgreSQL (shared/STACK.md)
    inline = services["mlflow"]["build"]["dockerfile_inline"]
    assert f"FROM ghcr.io/mlflow/mlflow:v{version('mlflow')}\n" in inline
    assert f"psycopg2-binary=={version('psycopg2-binary')}" in inline
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{version('prefect')}-python3.11"
    worker = services["prefect-worker"]["build"]["dockerfile_inline"]
    assert f"torch=={version('torch').split('+')[0]}" in worker and "FROM python:3.11" in worker


def test_ports_are_published_on_loopback_only(compose):
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["postgres"] == [] and published["prefect-worker"] == []
    assert published["mlflow"] == [f"127.0.0.1:{infra.DEFAULT_MLFLOW_PORT}:{infra.DEFAULT_MLFLOW_PORT}"]
    assert published["prefect-server"] == [f"127.0.0.1:{infra.DEFAULT_PREFECT_PORT}:{infra.DEFAULT_PREFECT_PORT}"]


def test_mlflow_runs_with_the_native_flags(compose):
    service = compose["services"]["mlflow"]
    command = service["command"]
    assert command[0] == "mlflow"
    native = mlflow_server_args("postgresql+psycopg2://mesa@postgres:5432/mesa_mlflow", "/mlartifacts",
                                "0.0.0.0", infra.DEFAULT_MLFLOW_PORT, 2)
    in_compose = flags(command[1:])
    # Only the Host-header allow list is extra: containers call the server by its service name.
    assert set(in_compose) - set(flags(native)) == {"--allowed-hosts"}
    assert {k: v for k, v in in_compose.items() if k != "--allowed-hosts"} == flags(native)
    assert command[1] == native[0] == "server"
    # The artifact store is the volume, the database is MLflow's, and no password is on the line.
    assert any(volume.endswith(":/mlartifacts") for volume in service["volumes"])
    backend = in_compose["--backend-store-uri"]
    assert backend.endswith("/mesa_mlflow") and not re.search(r"//[^/@]*:[^/@]*@", backend)
    assert service["environment"]["PGPASSWORD"] == "change-me"  # from the example env file


def test_prefect_server_runs_with_the_native_flags_on_postgres(compose):
    service = compose["services"]["prefect-server"]
    assert service["command"] == ["prefect", *prefect_server_args("0.0.0.0", infra.DEFAULT_PREFECT_PORT)]
    database = service["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://") and database.endswith("@postgres:5432/mesa_prefect")


def test_the_databases_are_the_native_defaults(compose):
    import inspect

    defaults = inspect.signature(infra.infra_up).parameters
    postgres = compose["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_DB"] == defaults["mlflow_db"].default
    assert postgres["PREFECT_DB"] == defaults["prefect_db"].default
    assert compose["configs"]["create-prefect-database"]["content"].count("CREATE DATABASE") == 1


def test_the_worker_serves_the_deployments_work_pool(compose):
    from components.params import load_params

    service = compose["services"]["prefect-worker"]
    command = flags(service["command"][3:])
    assert service["command"][:3] == ["prefect", "worker", "start"]
    assert command["--pool"] == load_params(PROJECT_ROOT)["deploy"]["work_pool"]
    assert command["--type"] == "process" and "--with-healthcheck" in command
    assert service["environment"]["PREFECT_API_URL"] == f"http://prefect-server:{infra.DEFAULT_PREFECT_PORT}/api"
    assert service["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{infra.DEFAULT_MLFLOW_PORT}"


def test_no_secret_is_in_the_repository(raw):
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})  # without an env file, compose refuses to start
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"(?i)password|secret|token", key):
                assert str(value).startswith("${"), f"{name}: {key} is a literal, not ${{...}} from the env file"
            for password in re.findall(r"://[^/@\s:]*:([^@\s]+)@", str(value)):
                assert password.startswith("${"), f"{name}: {key} carries a literal password"
    assert {p.name for p in ENV_EXAMPLES} >= {"compose.env.example", "native.env.example", "client.env.example"}
    for path in ENV_EXAMPLES:
        for key, value in read_env_file(path).items():
            if re.search(r"(?i)password|secret|token", key):
                assert value in ("", "change-me"), f"{path.name}: {key} holds a value that looks real"
    tracked = subprocess.run(["git", "ls-files", "infra/env"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert all(name.endswith(".env.example") for name in tracked), f"real env files are committed: {tracked}"
