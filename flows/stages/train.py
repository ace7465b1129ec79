"""`mesa stage train`: the diffusion model, through `accelerate launch`."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.config import ParamsError, PipelineConfig, Problem
from components.layout import CHECKPOINTS_DIR, PARAMS_FILE, TRAIN_REPORT
from components.params import load_config


def check_params(config: PipelineConfig, root: Path) -> None:
    """The accelerate config that train.accelerate_config names exists (run_stage calls this first)."""
    path = root / config.train.accelerate_config
    if not path.exists():
        raise ParamsError([Problem("train.accelerate_config", config.train.accelerate_config,
                                   f"names {path}, which does not exist (see infra/accelerate/)")],
                          file=str(root / PARAMS_FILE))


@flow(name="stage-train")
def train_stage_flow(project_dir: str) -> dict:
    """Train through `accelerate launch` with the config named in train.accelerate_config."""
    import json
    import os
    import sys

    from components.processes import run_streaming

    root = Path(project_dir)
    config = load_config(root)
    check_params(config, root)
    train = config.train
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / train.accelerate_config),
               "--num_processes", str(train.num_processes), "-m", "flows.train_entry", str(root)]
    print(f"[train] {' '.join(command[2:])}", flush=True)
    # In the stage's own process group (no new session): a signal to the stage's group reaches training too.
    returncode = run_streaming(command, cwd=root, env=os.environ, on_line=lambda line: print(line, flush=True),
                               new_session=False)
    if returncode != 0:
        raise SystemExit(f"training failed (exit code {returncode}); its log is above. "
                         f"A rerun resumes from the last checkpoint in {CHECKPOINTS_DIR}/.")
    result = json.loads((root / TRAIN_REPORT).read_text())
    return result
