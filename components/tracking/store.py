"""Where MLflow runs live: the tracking URI, a client on it, the project's experiments.

The embedded default is SQLite inside the project (``mlruns.db``) with artifacts in
``mlartifacts/``; MLFLOW_TRACKING_URI points at a team server instead. MLflow's own HTTP client
retries each request (7 times with back-off, 120 s timeout by default: minutes per call). Against a
server, `configure_client_retries` turns that down so an outage reaches the caller quickly (the
run logger buffers through it); these environment variables are read by MLflow at each request:

- ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (we set 1),
- ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (we set 1),
- ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (seconds; we set 10).

Values the user already set are kept.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from components.layout import ARTIFACTS_DIR, MLFLOW_DB

CLIENT_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# Error codes the server returns for a request that will never succeed as sent; everything else
# (connection refused, timeouts, 5xx, a locked database) is treated as an outage and retried.
_PERMANENT_ERROR_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST",
})


def tracking_uri(project_dir: str | Path) -> str:
    """The tracking URI: MLFLOW_TRACKING_URI when set, else SQLite inside the project.

    Args:
        project_dir (str | Path): the project root.

    Returns:
        str: e.g. ``http://mlflow:5000`` or ``sqlite:////abs/project/mlruns.db``.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path(project_dir).resolve() / MLFLOW_DB}"


def mlflow_client(project_dir: str | Path | None = None, uri: str | None = None):
    """The MLflow client of this project: on `uri`, else on the project's :func:`tracking_uri`.

    Against a server, MLflow's own HTTP retries are turned down first (:func:`configure_client_retries`),
    so an outage surfaces in seconds rather than minutes. ``client.tracking_uri`` says where it points.

    Args:
        project_dir (str | Path | None, default None): the project root (needed when `uri` is None).
        uri (str | None, default None): a tracking URI that wins over the project's.

    Returns:
        mlflow.MlflowClient: a client with explicit run ids (thread-safe, unlike the fluent API).
    """
    from mlflow import MlflowClient

    if uri is None:
        if project_dir is None:
            raise TypeError("mlflow_client needs project_dir or uri")
        uri = tracking_uri(project_dir)
    configure_client_retries(uri)
    return MlflowClient(uri)


def artifact_root(project_dir: str | Path) -> str:
    """The file URI of the project's artifact folder, ``{project}/mlartifacts``.

    Args:
        project_dir (str | Path): the project root.
    """
    return (Path(project_dir).resolve() / ARTIFACTS_DIR).as_uri()


def is_server_uri(uri: str) -> bool:
    """Whether `uri` names a tracking server (HTTP), not a database or folder we write directly.

    Args:
        uri (str): a tracking URI.
    """
    return uri.split(":", 1)[0].lower() in {"http", "https"}


def configure_client_retries(uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Turn MLflow's own HTTP retries down when `uri` is a server (see the module docstring).

    Args:
        uri (str): the tracking URI in use.
        env (dict[str, str] | None, default None): the environment to change (os.environ).

    Returns:
        dict[str, str]: the variables this call set (empty for non-HTTP URIs or when the user had
        set them all already).
    """
    env = os.environ if env is None else env
    if not is_server_uri(uri):
        return {}
    changed = {}
    for key, value in CLIENT_HTTP_ENV.items():
        if key not in env:
            env[key] = value
            changed[key] = value
    return changed


def ensure_experiment(client: Any, name: str, project_dir: str | Path) -> str:
    """The id of experiment `name`, created when missing (restored when deleted).

    Args:
        client (mlflow.MlflowClient): a client for the tracking URI in use.
        name (str): experiment name.
        project_dir (str | Path): the project root; for a database or folder store, artifacts of a
            new experiment go to ``{project}/mlartifacts`` (without an explicit location MLflow
            writes them under ./mlruns of whatever the working directory is). A server chooses
            its own location (its proxied artifact store).

    Returns:
        str: the experiment id.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        location = None if is_server_uri(client.tracking_uri) else artifact_root(project_dir)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as err:
            # Another process (a second rank, a parallel ablation) created it first.
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def is_transient(err: BaseException) -> bool:
    """Whether sending may succeed later (an outage), as opposed to a request the server refuses.

    Args:
        err (BaseException): what a send raised.
    """
    from mlflow.exceptions import MlflowException

    # A missing local file or a malformed value: retrying the same call cannot help.
    if isinstance(err, (FileNotFoundError, ValueError, TypeError)):
        return False
    if isinstance(err, MlflowException):
        return err.error_code not in _PERMANENT_ERROR_CODES
    return True


def read_parquet_artifact(client: Any, run_id: str, path: str):
    """The parquet table a run holds at artifact `path` (read through a temporary folder), or None
    when the run has no such artifact.

    Args:
        client (mlflow.MlflowClient): a client on the run's store.
        run_id (str): the run.
        path (str): e.g. ``evaluation/metrics_per_cell.parquet``.
    """
    import tempfile

    import mlflow.artifacts
    import pandas as pd

    folder = path.rpartition("/")[0]
    if path not in {f.path for f in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory() as local:
        return pd.read_parquet(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=local, tracking_uri=client.tracking_uri))
