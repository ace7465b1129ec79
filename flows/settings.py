"""Process settings every entry point applies before importing Prefect, MLflow, DVC or HF libraries."""
from __future__ import annotations

import os
from pathlib import Path

# Offline always: nothing may download weights or data at run time, and no telemetry leaves.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MPLBACKEND": "Agg",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding params.yaml, searched upwards from `start` (default: the working directory)."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").exists() and (folder / "dvc.yaml").exists():
            return folder
    return here


def configure_environment(root: str | Path | None = None) -> Path:
    """Set the offline variables (unless the user set them) and a project-local PREFECT_HOME."""
    root = project_root(root)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # Prefect's database and settings live in the project, not in the user's home.
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    return root
