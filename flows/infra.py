"""`mesa infra`: the team's MLflow and Prefect servers on PostgreSQL, as local processes.

``mesa infra up --native --postgres postgresql://USER@HOST:5432`` starts both servers and prints the
lines to export; ``mesa infra down`` stops exactly what `up` started; ``mesa infra status`` says
whether they run and answer. What each does: :mod:`components.ops.infra`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from components.layout import POSTGRES_URL_ENV
from components.ops.infra import (
    DEFAULT_MLFLOW_PORT,
    DEFAULT_POSTGRES,
    DEFAULT_PREFECT_PORT,
    ENV_FILE,
    infra_down,
    infra_status,
    infra_up,
)

infra_app = typer.Typer(help="Team servers: MLflow + Prefect on PostgreSQL (up / status / down).",
                        no_args_is_help=True)


def _default_state_dir() -> Path:
    from flows.settings import project_root

    return project_root() / ".mesa-infra"


_STATE_DIR_HELP = "Folder for the state file, logs, env.sh and artifacts (default: <project>/.mesa-infra)."


@infra_app.command("up")
def up_command(
    native: bool = typer.Option(False, "--native", help="Start the servers as local processes (required here; "
                                                        "for containers use infra/docker-compose.yml)."),
    postgres: str = typer.Option(DEFAULT_POSTGRES, envvar=POSTGRES_URL_ENV,
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
