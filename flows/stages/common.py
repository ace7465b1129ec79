"""What every stage shares: small helpers (the project's paths are in components.layout).

Each stage is its own module so that dvc.yaml can name exactly the code a stage depends on:
editing one stage reruns that stage and what follows it, not the whole DAG.
"""
from __future__ import annotations

from pathlib import Path


def relative_to_project(text: str, root: Path) -> str:
    """Text with the project's absolute path taken out of the file paths it names."""
    return text.replace(f"{Path(root).resolve()}/", "").replace(f"{root}/", "")
