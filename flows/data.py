"""`mesa data ...`: the data steps that are useful alone (synth, ingest, summary, validate, captions)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from components.layout import PARAMS_FILE, SYNTH_OUT

data_app = typer.Typer(help="Data steps that are useful alone (synth, ingest, validate, captions, summary, "
                            "ecoregion-phrases).",
                       no_args_is_help=True)


def _params(root: Path) -> dict:
    from components.params import load_params

    return load_params(root) if (root / PARAMS_FILE).exists() else {}


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(SYNTH_OUT, help="Folder for s2l2a/, s2l1c/, dem/ and layers/."),
    cells: Optional[int] = typer.Option(None, help="Good cells to generate (default: params synth.cells)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: params synth.seed)."),
    broken: Optional[bool] = typer.Option(None, "--broken/--no-broken", help="Add deliberately broken rows."),
    workers: Optional[int] = typer.Option(None, help="Shards built in parallel."),
) -> None:
    """Generate a synthetic Major TOM world (upstream schema) into OUT."""
    from components.majortom.synthetic.world import SynthParams, build_world
    from components.progress import progress_printer
    from flows.settings import project_root

    overrides = {k: v for k, v in dict(cells=cells, seed=seed, broken_rows=broken, workers=workers).items()
                 if v is not None}
    synth = SynthParams(**{**_params(project_root()).get("synth", {}), **overrides})
    report = build_world(out, synth, progress=progress_printer("synth", stream=sys.stderr, elapsed=True))
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
    from components.majortom.ingest_options import ingest_settings
    from flows.settings import project_root

    root = project_root()
    try:
        settings = ingest_settings(
            (_params(root).get("data") or {}).get("ingest") or {}, metadata=metadata, base_url=base_url, bbox=bbox,
            region_file=region_file, date_from=date_from, date_to=date_to, cloud_min=cloud_min,
            cloud_max=cloud_max, nodata_max=nodata_max, need_l1c=l1c, sample=sample, seed=seed,
            max_cells=max_cells, concurrency=concurrency, retries=retries)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
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
    raw: Path = typer.Argument(SYNTH_OUT, help="Folder with s2l2a/, s2l1c/, dem/."),
    decode: bool = typer.Option(True, help="Decode RGB + cloud mask + DEM of every cell (reads it all back)."),
) -> None:
    """Read a Major TOM folder back and print a summary (cells per class, shards, bytes, decode speed)."""
    from components.majortom.summary import format_summary, summarise_world

    typer.echo(format_summary(summarise_world(raw, decode=decode)))


@data_app.command("validate")
def data_validate() -> None:
    """Curate data.raw_dir: contracts, per-cell statistics, the paper's filters (the validate stage)."""
    from flows.settings import project_root
    from flows.stages import run_stage

    run_stage("validate", project_root())


@data_app.command("captions")
def data_captions() -> None:
    """Describe every kept cell and build its caption (the captions stage)."""
    from flows.settings import project_root
    from flows.stages import run_stage

    run_stage("captions", project_root())


@data_app.command("ecoregion-phrases")
def data_ecoregion_phrases(
    table: Path = typer.Argument(..., help="RESOLVE Ecoregions2017 (.shp, .dbf, .gpkg) or any table with the names "
                                           "(.csv, .parquet)."),
    field: str = typer.Option("ECO_NAME", help="The field that holds the ecoregion names."),
    out: Optional[Path] = typer.Option(None, help="Also write name, phrase, note as CSV here."),
    odd_only: bool = typer.Option(False, "--odd-only", help="Print only the names with a note."),
) -> None:
    """Print the habitat phrase each ecoregion anonymises to (the paper's rule), to check it by eye."""
    import csv

    from components.atomic import atomic_write
    from components.captions.ecoregions import phrase_report
    from components.captions.layers.vector import read_field

    try:
        rows = phrase_report(read_field(table, field))
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="TABLE") from None
    width = max((len(r.name) for r in rows), default=10)
    for row in rows:
        if row.note or not odd_only:
            typer.echo(f"{row.name:<{width}}  ->  {row.phrase or '(none: biome short form)'}"
                       + (f"   [{row.note}]" if row.note else ""))
    noted = sum(bool(r.note) for r in rows)
    typer.echo(f"{len(rows)} ecoregions, {sum(r.phrase is None for r in rows)} without habitat words, "
               f"{noted} with a note", err=True)
    if out is not None:
        def write(tmp):
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["name", "phrase", "note"])
                writer.writerows((r.name, r.phrase or "", r.note) for r in rows)
        atomic_write(out, write)
        typer.echo(f"wrote {out}", err=True)
