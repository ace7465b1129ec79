"""`mesa generate` and `mesa evaluate`: use any model, a pipeline folder or an MLflow URI."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from components.layout import EVALUATIONS_DIR, PARAMS_FILE, PIPELINE_DIR


def generate_command(
    prompt: str = typer.Argument(..., help='Caption, e.g. "A Sentinel-2 image of deserts and mountains in Chile in March".'),
    model: str = typer.Option(PIPELINE_DIR.as_posix(),
                              help="A pipeline folder, or an MLflow URI (models:/mesa@champion, runs:/ID/pipeline)."),
    seed: list[int] = typer.Option([42], "--seed", help="Seed (repeatable: one generation per seed)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: params sample.steps, 50)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: params sample.guidance)."),
    sampler: Optional[str] = typer.Option(None, help="ddim, ddpm, euler, dpm++, pndm or a diffusers scheduler class."),
    negative_prompt: Optional[str] = typer.Option(None, help="What to steer away from."),
    grid_cell: Optional[str] = typer.Option(None, help="Place the GeoTIFFs on this Major TOM cell (e.g. 454U_120R)."),
    out: Path = typer.Option(Path("generated"), help="Output folder (GeoTIFFs, heightmaps, previews, generation.json)."),
) -> None:
    """Generate an RGB image and its DEM in metres from a caption, and export them for GIS and 3D tools."""
    from components.export.generation import generate_and_export
    from components.params import load_params
    from components.tracking.models import load_pipeline
    from flows.settings import project_root

    root = project_root()
    defaults = (load_params(root).get("sample") or {}) if (root / PARAMS_FILE).exists() else {}
    pipeline = load_pipeline(model, root)
    written = generate_and_export(
        pipeline, prompt, seeds=seed, out_dir=out, model=model,
        steps=int(steps or defaults.get("steps", 50)),
        guidance=float(guidance if guidance is not None else defaults.get("guidance", 7.0)),
        sampler=sampler or defaults.get("sampler"), eta=float(defaults.get("eta", 0.0)),
        negative_prompt=negative_prompt, grid_cell=grid_cell,
    )
    for item in written["generations"]:
        typer.echo(f"seed {item['seed']}: DEM {item['dem_min_m']:.0f}..{item['dem_max_m']:.0f} m "
                   f"(base {item['base_elevation_m']:.0f} m from {item['base_elevation_key'] or 'global median'!r})")
    typer.echo(f"wrote {len(written['files'])} files -> {out}/ (generation.json lists them)")


def evaluate_command(
    model: str = typer.Option(PIPELINE_DIR.as_posix(),
                              help="A pipeline folder or an MLflow URI (models:/mesa@champion)."),
    compare_with: Optional[list[str]] = typer.Option(None, "--compare-with",
                                                     help="Another model drawn beside it on the Table 4 captions (repeatable)."),
    out: Optional[Path] = typer.Option(None, help=f"Output folder (default: {EVALUATIONS_DIR}/<model>)."),
) -> None:
    """Grids and terrain metrics of any model on the held-out cells: metrics.json, eval.md, eval/*.png."""
    import re

    from flows.settings import project_root
    from flows.stages.evaluate import evaluate_stage_flow

    root = project_root()
    out = out or root / EVALUATIONS_DIR / re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")
    report = evaluate_stage_flow(project_dir=str(root), model=model, compare_with=compare_with, reports_dir=str(out))
    accuracy = report["metrics"]["landform_balanced_accuracy"]["value"]
    typer.echo(f"landform balanced accuracy {accuracy} (chance {report['landform_chance']}); "
               f"report: {out / 'eval.md'}")
