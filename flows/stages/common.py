"""What every stage shares: the project's data layout and small helpers.

Each stage is its own module so that dvc.yaml can name exactly the code a stage depends on:
editing one stage reruns that stage and what follows it, not the whole DAG.
"""
from __future__ import annotations

from pathlib import Path

REPORTS_DIR = "reports"
SYNTH_OUT = Path("data/raw")  # the synth stage's DVC output (dvc.yaml)
CURATED_DIR = Path("data/curated")
CAPTIONS_DIR = Path("data/captions")
SAMPLES_DIR = Path("data/samples")
LATENTS_DIR = Path("data/latents")
MODELS_DIR = Path("models")


def relative_to_project(text: str, root: Path) -> str:
    """Text with the project's absolute path taken out of the file paths it names."""
    return text.replace(f"{Path(root).resolve()}/", "").replace(f"{root}/", "")


def progress_printer(label: str):
    """A (done, total, *extra) callback that prints one line per call, for long loops in stages."""
    def show(done: int, total: int, *rest) -> None:
        extra = " ".join(f"{r:.4g}" if isinstance(r, float) else str(r) for r in rest)
        print(f"[{label}] {done}/{total} {extra}".rstrip(), flush=True)

    return show
