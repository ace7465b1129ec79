"""`mesa stage vae`: the VAE both modalities share."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.atomic import write_json_atomic
from components.config import ModelConfig
from components.layout import SAMPLE_STATS, SAMPLES_DIR, VAE_DIR, VAE_REPORT
from components.params import load_config


def _pretrained_vae(model: ModelConfig) -> str | None:
    """The pretrained VAE folder: model.vae, else model.pretrained's vae/ (SD 2.1 layout), else None."""
    if model.vae:
        return model.vae
    if model.pretrained:
        return str(Path(model.pretrained) / "vae")
    return None


@flow(name="stage-vae")
def vae_stage_flow(project_dir: str) -> dict:
    """The VAE both modalities share: trained on the plain-L2A samples, or a pretrained one linked."""
    import json

    from components.model.vae_stage import run_vae_stage

    root = Path(project_dir)
    config = load_config(root)
    stats = json.loads((root / SAMPLE_STATS).read_text())
    shards = sorted(str(p) for p in (root / SAMPLES_DIR).glob("*.parquet"))
    pretrained = _pretrained_vae(config.model)
    if pretrained and not Path(pretrained).is_absolute():
        pretrained = str(root / pretrained)
    report = run_vae_stage(shards, stats, config.vae, root / VAE_DIR,
                           pretrained=pretrained, progress=lambda line: print(f"[vae] {line}", flush=True))
    write_json_atomic(root / VAE_REPORT, report)
    print(f"[vae] -> {root / VAE_DIR}; report {VAE_REPORT}", flush=True)
    return report
