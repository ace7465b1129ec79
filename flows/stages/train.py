"""`mesa stage train`: the diffusion model, through `accelerate launch`."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.params import load_params


@flow(name="stage-train")
def train_stage_flow(project_dir: str) -> dict:
    """Train through `accelerate launch` with the config named in train.accelerate_config."""
    import json
    import os
    import subprocess
    import sys

    root = Path(project_dir)
    params = load_params(root)
    train = params["train"]
    config = root / train["accelerate_config"]
    if not config.exists():
        raise SystemExit(f"train.accelerate_config names {config}, which does not exist (see infra/accelerate/)")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(int(train["num_processes"])), "-m", "flows.train_entry", str(root)]
    print(f"[train] {' '.join(command[2:])}", flush=True)
    process = subprocess.Popen(command, cwd=root, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in process.stdout:
        print(line.rstrip(), flush=True)
    if process.wait() != 0:
        raise SystemExit(f"training failed (exit code {process.returncode}); its log is above. "
                         "A rerun resumes from the last checkpoint in models/checkpoints/.")
    result = json.loads((root / "reports" / "train.json").read_text())
    return result
