"""`mesa`: the one command-line entry point (every command has --help)."""
from __future__ import annotations

from flows.settings import configure_environment

configure_environment()  # before Prefect, DVC or HF libraries are imported anywhere below

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(help="MESA text-to-terrain: data, training and MLOps pipeline.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Data steps that are useful alone (synth, ingest, validate, captions, summary).",
                       no_args_is_help=True)
profile_app = typer.Typer(help="Parameter profiles (demo, micro, paper).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(profile_app, name="profile")


def _root() -> Path:
    from flows.settings import project_root

    return project_root()


@app.command()
def retrain(
    profile: Optional[str] = typer.Option(None, help="Apply this profile to params.yaml first (demo, micro, paper)."),
    stage: Optional[list[str]] = typer.Option(None, "--stage", help="Run only these stages (repeatable)."),
    force: bool = typer.Option(False, help="Rerun stages even when DVC says they are up to date."),
    retries: int = typer.Option(1, min=0, help="Run a failed stage again this often (training resumes from its "
                                               "last checkpoint); 0 stops at the first failure."),
    wait: float = typer.Option(0.0, min=0, help="Seconds to wait for a retrain already running in this "
                                                "workspace to finish (default: refuse at once)."),
) -> None:
    """The main job: every pipeline stage (DVC) as Prefect tasks on one Prefect API, then a summary."""
    from flows.main import run_main_job

    run_main_job(_root(), profile=profile, stages=stage, force=force, stage_retries=retries, lock_wait_s=wait)


@app.command()
def demo(
    force: bool = typer.Option(False, help="Rerun stages even when up to date."),
    wait: float = typer.Option(0.0, min=0, help="Seconds to wait for a retrain already running here to finish."),
) -> None:
    """The main job on the embedded defaults (demo profile, synthetic world, CPU)."""
    from flows.main import run_main_job

    run_main_job(_root(), profile="demo", stages=None, force=force, lock_wait_s=wait)


@app.command()
def promote(
    rollback: bool = typer.Option(False, "--rollback", help="Move champion back to the previous champion."),
    version: Optional[int] = typer.Option(None, help="Judge this version instead of the challenger alias."),
) -> None:
    """Judge the challenger against the champion (gate: params registry.gate); move champion only if it passes."""
    from flows.prefect_api import owned_prefect_api
    from flows.promote import decision_summary, promote_flow

    with owned_prefect_api():
        try:
            outcome = promote_flow(project_dir=str(_root()), rollback=rollback, version=version)
        except LookupError as err:  # no challenger, no champion, nothing to roll back to: say what to do
            raise SystemExit(str(err)) from None
    if rollback:
        typer.echo(f"{outcome['model']}: champion is version {outcome['champion']} again (was {outcome['was']})")
        return
    typer.echo(f"{outcome['model']}: {decision_summary(outcome)}")
    for reason in outcome["reasons"]:
        typer.echo(f"  {reason}")


@app.command("stage")
def stage_command(name: str = typer.Argument(..., help="Stage name as in dvc.yaml (e.g. synth).")) -> None:
    """Run one pipeline stage (what dvc.yaml's cmd calls). Reads params.yaml, writes the stage's outs."""
    from flows.stages import run_stage

    run_stage(name, _root())


@app.command()
def generate(
    prompt: str = typer.Argument(..., help='Caption, e.g. "A Sentinel-2 image of deserts and mountains in Chile in March".'),
    model: str = typer.Option("models/pipeline", help="A pipeline folder, or an MLflow URI (models:/mesa@champion, runs:/ID/pipeline)."),
    seed: list[int] = typer.Option([42], "--seed", help="Seed (repeatable: one generation per seed)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: params sample.steps, 50)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: sample.guidance, 7)."),
    sampler: Optional[str] = typer.Option(None, help="ddim, ddpm, euler, dpm++, pndm or a diffusers scheduler class."),
    negative_prompt: Optional[str] = typer.Option(None, help="What to steer away from."),
    grid_cell: Optional[str] = typer.Option(None, help="Place the GeoTIFFs on this Major TOM cell (e.g. 454U_120R)."),
    out: Path = typer.Option(Path("generated"), help="Output folder (GeoTIFFs, heightmaps, previews, generation.json)."),
) -> None:
    """Generate an RGB image and its DEM in metres from a caption, and export them for GIS and 3D tools."""
    from components.export.generation import generate_and_export
    from components.params import load_params
    from components.tracking.models import load_pipeline

    root = _root()
    defaults = (load_params(root).get("sample") or {}) if (root / "params.yaml").exists() else {}
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


@app.command()
def evaluate(
    model: str = typer.Option("models/pipeline", help="A pipeline folder or an MLflow URI (models:/mesa@champion)."),
    compare_with: Optional[list[str]] = typer.Option(None, "--compare-with",
                                                     help="Another model drawn beside it on the Table 4 captions (repeatable)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: reports/evaluations/<model>)."),
) -> None:
    """Grids and terrain metrics of any model on the held-out cells: metrics.json, eval.md, eval/*.png."""
    import re

    from flows.stages.evaluate import evaluate_stage_flow

    root = _root()
    out = out or root / "reports" / "evaluations" / re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")
    report = evaluate_stage_flow(project_dir=str(root), model=model, compare_with=compare_with, reports_dir=str(out))
    accuracy = report["metrics"]["landform_balanced_accuracy"]["value"]
    typer.echo(f"landform balanced accuracy {accuracy} (chance {report['landform_chance']}); "
               f"report: {out / 'eval.md'}")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(Path("data/raw"), help="Folder for s2l2a/, s2l1c/, dem/ and layers/."),
    cells: Optional[int] = typer.Option(None, help="Good cells to generate (default: params synth.cells)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: params synth.seed)."),
    broken: Optional[bool] = typer.Option(None, "--broken/--no-broken", help="Add deliberately broken rows."),
    workers: Optional[int] = typer.Option(None, help="Shards built in parallel."),
) -> None:
    """Generate a synthetic Major TOM world (upstream schema) into OUT."""
    from components.majortom.synthetic.world import SynthParams, build_world
    from components.params import load_params

    root = _root()
    params = load_params(root).get("synth", {}) if (root / "params.yaml").exists() else {}
    overrides = {k: v for k, v in dict(cells=cells, seed=seed, broken_rows=broken, workers=workers).items()
                 if v is not None}
    synth = SynthParams(**{**params, **overrides})
    report = build_world(out, synth, progress=_progress_printer("synth"))
    typer.echo(f"Wrote {report['cells_total']} cells ({report['cells_broken']} deliberately broken) in "
               f"{report['shards']} shards per source, {report['bytes'] / 1e6:.1f} MB, "
               f"{report['seconds']:.1f} s -> {out}/")


@data_app.command("ingest")
def data_ingest(
    out: Optional[Path] = typer.Option(None, help="Ingest folder (default: params data.ingest.out_dir, data/majortom)."),
    metadata: Optional[list[str]] = typer.Option(
        None, "--metadata", help="SOURCE=PATH_OR_URL of a metadata.parquet (repeatable; s2l2a, s2l1c, dem)."),
    base_url: Optional[str] = typer.Option(None, help="Relative --metadata entries are URLs under this."),
    bbox: Optional[str] = typer.Option(None, help="Region as min_lon,min_lat,max_lon,max_lat (degrees)."),
    region_file: Optional[Path] = typer.Option(None, help="Region as any OGR polygon file (GeoPackage, GeoJSON, ...)."),
    date_from: Optional[str] = typer.Option(None, help="First acquisition date (ISO, inclusive)."),
    date_to: Optional[str] = typer.Option(None, help="Last acquisition date (ISO, inclusive)."),
    cloud_min: Optional[float] = typer.Option(None, help="Minimum cloud cover, percent."),
    cloud_max: Optional[float] = typer.Option(None, help="Maximum cloud cover, percent."),
    nodata_max: Optional[float] = typer.Option(None, help="Maximum no-data fraction (0-1)."),
    l1c: Optional[bool] = typer.Option(None, "--l1c/--no-l1c", help="Also fetch S2L1C and keep only cells that have it."),
    sample: Optional[int] = typer.Option(None, help="Draw this many cells at random after filtering."),
    seed: Optional[int] = typer.Option(None, help="Seed of the random sample."),
    max_cells: Optional[int] = typer.Option(None, help="Cap on cells (the first in grid_cell order)."),
    concurrency: Optional[int] = typer.Option(None, help="Cells fetched at the same time."),
    retries: Optional[int] = typer.Option(None, help="Extra attempts for dropped connections, timeouts, 5xx."),
    progress: bool = typer.Option(True, help="Show a progress bar (cells and bytes)."),
) -> None:
    """Fetch a filtered subset of real Major TOM (only the needed row groups and columns) into OUT.

    Defaults come from params data.ingest; options override them for this run only (the DVC
    stage `ingest` reads params alone). A rerun fetches only what is missing or failed.
    """
    from components.majortom.ingest import IngestConfig, failure_verdict, run_ingest, summary_line
    from components.params import load_params

    root = _root()
    params = load_params(root) if (root / "params.yaml").exists() else {}
    settings = dict((params.get("data") or {}).get("ingest") or {})
    filters = dict(settings.get("filters") or {})
    for entry in metadata or []:
        source, sep, location = entry.partition("=")
        if not sep:
            raise typer.BadParameter(f"--metadata {entry!r}: write SOURCE=PATH_OR_URL, e.g. dem=data/dem/metadata.parquet")
        settings.setdefault("metadata", {})
        settings["metadata"] = {**settings["metadata"], source: location}
    if base_url is not None:
        settings["base_url"] = base_url
    if bbox is not None:
        try:
            filters["bbox"] = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise typer.BadParameter(f"--bbox {bbox!r}: write min_lon,min_lat,max_lon,max_lat") from None
    if region_file is not None:
        filters["region_file"] = str(region_file)
    dates = list(filters.get("date_range") or [None, None])
    clouds = list(filters.get("cloud_cover") or [0.0, 100.0])
    nodata = list(filters.get("nodata") or [0.0, 1.0])
    for values, index, value in ((dates, 0, date_from), (dates, 1, date_to), (clouds, 0, cloud_min),
                                 (clouds, 1, cloud_max), (nodata, 1, nodata_max)):
        if value is not None:
            values[index] = value
    filters.update(date_range=dates, cloud_cover=clouds, nodata=nodata)
    settings["filters"] = filters
    for key, value in dict(need_l1c=l1c, sample=sample, seed=seed, max_cells=max_cells,
                           concurrency=concurrency, retries=retries).items():
        if value is not None:
            settings[key] = value
    config = IngestConfig(**settings)
    folder = out or root / config.out_dir
    report = run_ingest(config, folder, base_dir=root, progress=progress, log=lambda line: typer.echo(line, err=True))
    typer.echo(summary_line(report, folder) + f" in {report['seconds']:.1f} s")
    verdict = failure_verdict(report, config.max_failed_share)
    if verdict:
        typer.echo(verdict, err=True)
        raise typer.Exit(1)


@data_app.command("summary")
def data_summary(
    raw: Path = typer.Argument(Path("data/raw"), help="Folder with s2l2a/, s2l1c/, dem/."),
    decode: bool = typer.Option(True, help="Decode RGB + cloud mask + DEM of every cell (reads it all back)."),
) -> None:
    """Read a Major TOM folder back and print a summary (cells per class, shards, bytes, decode speed)."""
    from components.majortom.summary import format_summary, summarise_world

    typer.echo(format_summary(summarise_world(raw, decode=decode)))


@data_app.command("validate")
def data_validate() -> None:
    """Curate data.raw_dir: contracts, per-cell statistics, the paper's filters (the validate stage)."""
    from flows.stages import run_stage

    run_stage("validate", _root())


@data_app.command("captions")
def data_captions() -> None:
    """Describe every kept cell and build its caption (the captions stage)."""
    from flows.stages import run_stage

    run_stage("captions", _root())


@profile_app.command("use")
def profile_use(name: str) -> None:
    """Write profile NAME's values into params.yaml (DVC then records them)."""
    from components.params import apply_profile

    changed = apply_profile(name, _root())
    for key, (old, new) in changed.items():
        typer.echo(f"{key}: {old} -> {new}")
    typer.echo(f"params.yaml now uses profile {name!r} ({len(changed)} values changed)")


@profile_app.command("show")
def profile_show() -> None:
    """List the profiles and the values each sets."""
    from components.params import available_profiles, load_params, profile_overrides

    root = _root()
    typer.echo(f"current: {load_params(root).get('profile')}")
    for name in available_profiles(root):
        typer.echo(f"{name}: {json.dumps(profile_overrides(name, root))}")


def _progress_printer(label: str):
    started = time.perf_counter()

    def show(done: int, total: int, what: str = "") -> None:
        elapsed = time.perf_counter() - started
        typer.echo(f"[{label}] {done}/{total} {what} ({elapsed:.0f} s)", err=True)

    return show


# Commands defined in their own modules (each keeps heavy imports inside its function).
# One line per module below: `from flows.X import X_command; app.command("x")(X_command)`.
# --- module commands ---
from flows.serve import serve_command; app.command("serve")(serve_command)  # noqa: E402,E702
from flows.deploy import deploy_command; app.command("deploy")(deploy_command)  # noqa: E402,E702
from flows.infra import infra_app; app.add_typer(infra_app, name="infra")  # noqa: E402,E702
from flows.ablation import ablation_command; app.command("ablation")(ablation_command)  # noqa: E402,E702
from flows.dev import dev_app; app.add_typer(dev_app, name="dev")  # noqa: E402,E702
from flows.versioning import gc_command, rebuild_command; app.command("rebuild")(rebuild_command); app.command("gc")(gc_command)  # noqa: E402,E702,E501
# --- end module commands ---


if __name__ == "__main__":
    app()
