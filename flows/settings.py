"""Process settings every entry point applies before importing Prefect, MLflow, DVC or HF libraries."""
from __future__ import annotations

import os
from pathlib import Path

from components.layout import DVC_FILE, PARAMS_FILE, PREFECT_HOME_DIR, RECORD_IMPORTS_ENV

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
        if (folder / PARAMS_FILE).exists() and (folder / DVC_FILE).exists():
            return folder
    return here


def configure_environment(root: str | Path | None = None) -> Path:
    """Set the offline variables (unless the user set them) and a project-local PREFECT_HOME."""
    root = project_root(root)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # Prefect's database and settings live in the project, not in the user's home.
    os.environ.setdefault("PREFECT_HOME", str(root / PREFECT_HOME_DIR))
    return root


def record_imported_files(label: str) -> Path | None:
    """With MESA_RECORD_IMPORTS=FOLDER, write FOLDER/<label>.<pid>.json: the project files this process imported.

    What really ran, to hold against dvc.yaml's code deps, which `mesa dev deps` computes statically
    (tests/integration/test_retrain_flow.py). Paths are relative to the folder holding the imported
    `components` and `flows` packages (a stage may run the installed checkout's code).
    """
    folder = os.environ.get(RECORD_IMPORTS_ENV)
    if not folder:
        return None
    import json
    import sys

    packages = ("components", "flows")
    roots = {Path(sys.modules[p].__file__).resolve().parents[1] for p in packages
             if getattr(sys.modules.get(p), "__file__", None)}
    files = set()
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        if not source or not source.endswith(".py"):
            continue
        path = Path(source).resolve()
        for root in roots:
            if path.is_relative_to(root) and path.relative_to(root).parts[0] in packages:
                files.add(path.relative_to(root).as_posix())
    target = Path(folder) / f"{label}.{os.getpid()}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"label": label, "pid": os.getpid(), "argv": sys.argv,
                                  "roots": sorted(map(str, roots)), "files": sorted(files)}, indent=1))
    return target
