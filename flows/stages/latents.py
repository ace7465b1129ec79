"""`mesa stage latents`: every sample encoded once by the frozen VAE."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.atomic import atomic_folder, recover_folder
from components.layout import LATENTS_DIR, SAMPLE_STATS, SAMPLES_DIR, VAE_DIR
from components.params import load_config
from components.progress import progress_printer


@flow(name="stage-latents")
def latents_stage_flow(project_dir: str) -> dict:
    """Every sample encoded once by the frozen VAE (or a 'disabled' manifest when latents.enabled is off)."""
    import json

    from diffusers import AutoencoderKL

    from components.samples.latents.encode import encode_samples_to_latents, write_disabled_manifest

    root = Path(project_dir)
    config = load_config(root)
    out = root / LATENTS_DIR
    if not config.latents.enabled:
        with atomic_folder(out) as staging:
            write_disabled_manifest(staging)
        print("[latents] latents.enabled is false: the trainer encodes on the fly", flush=True)
        return {"enabled": False}
    for folder in (root / SAMPLES_DIR, root / VAE_DIR):
        recover_folder(folder)  # a stage killed mid-swap left only <folder>.old
    stats = json.loads((root / SAMPLE_STATS).read_text())
    vae = AutoencoderKL.from_pretrained(str(root / VAE_DIR), local_files_only=True)
    shards = sorted(str(p) for p in (root / SAMPLES_DIR).glob("*.parquet"))
    # The old cache stays complete until the new one is swapped in.
    with atomic_folder(out) as staging:
        report = encode_samples_to_latents(shards, vae, staging, dem_scale_m=stats["dem_scale_m"],
                                           dem_knee_m=stats.get("dem_knee_m"),
                                           batch_size=config.latents.batch_size,
                                           progress=progress_printer("latents"))
    print(f"[latents] {report.get('samples')} samples -> {out}", flush=True)
    return report
