"""From a caption to files: run the terrain pipeline per seed and export every result.

What ``mesa generate`` calls. Writes, per seed, the GeoTIFFs, heightmaps and previews of
``components.export.terrain.export_all`` (named ``seed_<seed>_*``), and ``generation.json``: the
prompt, the settings, the model, and for each seed its files and DEM range, so a result can be
regenerated exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import write_json_atomic
from components.export.terrain import PAPER_EXTENT_M, export_all


def generate_and_export(pipeline, prompt: str, seeds: Sequence[int], out_dir: str | Path, *, model: str = "",
                        steps: int = 50, guidance: float = 7.0, sampler: str | None = None, eta: float = 0.0,
                        negative_prompt: str | None = None, grid_cell: str | None = None,
                        extent_m: float = PAPER_EXTENT_M) -> dict[str, Any]:
    """Generate ``prompt`` once per seed (one batched call) and export each result.

    Args:
        pipeline: a ``TerrainPipeline``.
        prompt: the caption.
        seeds: one generation per seed (the same seed gives the same terrain).
        out_dir: output folder (created).
        model: what the pipeline was loaded from (recorded, not read).
        steps, guidance, eta: sampling settings (the paper: 50, 7, 0).
        sampler: a scheduler short name (``components.model.factories.SAMPLERS``) or None to keep
            the pipeline's own.
        negative_prompt: optional.
        grid_cell: a Major TOM cell to georeference the GeoTIFFs on (None: nominal placement).
        extent_m: ground width of one generation (768 px at 10 m by default).
    Returns:
        ``{"generations": [...], "files": [...], "manifest": Path}``.
    """
    from components.model.factories import sampling_scheduler

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    if sampler:
        pipeline.scheduler = sampling_scheduler(sampler, dict(pipeline.scheduler.config))
    output = pipeline(prompt=[prompt] * len(seeds), seed=seeds, negative_prompt=negative_prompt,
                      num_inference_steps=int(steps), guidance_scale=float(guidance), eta=float(eta))
    _, base_key = pipeline.dem_rule.base_elevation_for(prompt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generations, files = [], []
    for i, seed in enumerate(seeds):
        dem = np.asarray(output.dem_m[i], dtype=np.float32)
        paths = export_all(output.rgb[i], dem, out, name=f"seed_{seed}", grid_cell=grid_cell, extent_m=extent_m,
                           prompt=prompt, seed=str(seed), model=model or "unknown")
        names = sorted(p.name for p in paths.values())
        files.extend(names)
        generations.append({"seed": seed, "files": names, "dem_min_m": float(np.nanmin(dem)),
                            "dem_max_m": float(np.nanmax(dem)),
                            "base_elevation_m": float(output.base_elevation_m[i]), "base_elevation_key": base_key})
    manifest = out / "generation.json"
    write_json_atomic(manifest, {"prompt": prompt, "negative_prompt": negative_prompt, "model": model,
                                 "settings": _plain(output.settings), "grid_cell": grid_cell, "extent_m": extent_m,
                                 "generations": generations})
    return {"generations": generations, "files": files + [manifest.name], "manifest": manifest}


def _plain(value: Any) -> Any:
    """JSON-safe copy of the pipeline's settings (numpy scalars and tuples included)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
