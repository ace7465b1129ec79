"""`mesa stage vae`: the VAE both modalities share."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.atomic import write_json_atomic
from components.params import load_params
from flows.stages.common import MODELS_DIR, REPORTS_DIR, SAMPLES_DIR


def _pretrained_vae(model_params: dict) -> str | None:
    """The pretrained VAE folder: model.vae, else model.pretrained's vae/ (SD 2.1 layout), else None."""
    if model_params.get("vae"):
        return str(model_params["vae"])
    if model_params.get("pretrained"):
        return str(Path(model_params["pretrained"]) / "vae")
    return None


@flow(name="stage-vae")
def vae_stage_flow(project_dir: str) -> dict:
    """The VAE both modalities share: trained on the plain-L2A samples, or a pretrained one linked."""
    import json

    from components.model.vae import VaeTrainParams, run_vae_stage

    root = Path(project_dir)
    params = load_params(root)
    stats = json.loads((root / SAMPLES_DIR / "stats.json").read_text())
    shards = sorted(str(p) for p in (root / SAMPLES_DIR).glob("*.parquet"))
    pretrained = _pretrained_vae(params.get("model") or {})
    if pretrained and not Path(pretrained).is_absolute():
        pretrained = str(root / pretrained)
    report = run_vae_stage(shards, stats, VaeTrainParams.from_params(params["vae"]), root / MODELS_DIR / "vae",
                           pretrained=pretrained, progress=lambda line: print(f"[vae] {line}", flush=True))
    write_json_atomic(root / REPORTS_DIR / "vae.json", report)
    print(f"[vae] -> {root / MODELS_DIR / 'vae'}; report {REPORTS_DIR}/vae.json", flush=True)
    return report
