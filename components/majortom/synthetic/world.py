"""The synthetic Major TOM world: real land cells on the real grid, written in the upstream schema.

Real Major TOM cannot be downloaded here, so the demo and the tests train on a stand-in that is
structurally exact (same shards, columns, GeoTIFFs, CRSs, sizes) and statistically meaningful:
landform classes with clearly different relief, colours from the biome the captions will name,
seasons, clouds, no-data borders, and an L1C variant that keeps the terrain shading that L2A
flattens. A few deliberately broken rows give validation something to catch.

Three steps, so a flow can map the middle one over shards:
    plan = plan_world(params)          # which cells, what each looks like (deterministic by seed)
    build_shard(out, plan, shard_idx)  # render + encode + write one shard per source
    finish_world(out, plan, results)   # metadata.parquet per source, region layers, world manifest
"""
from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from components.atomic import atomic_write
from components.captions.layers.factory import open_layer
from components.config import SynthConfig as SynthParams  # the typed `synth` group, under its older name
from components.majortom.geotiff import encode_geotiff
from components.majortom.grid import EARTH_RADIUS_KM, cell_footprint, default_grid, utm_epsg
from components.majortom.schema import S2_BAND_RESOLUTION_M, S2_BANDS_L1C, S2_BANDS_L2A, TILE_SIDE_M
from components.majortom.shards import METADATA_FILE, SHARD_DIR, write_metadata, write_shard
from components.majortom.synthetic.names import DIRECTIONS, ecoregion_names, landform_region_name
from components.majortom.synthetic.render import render_cell
from components.majortom.synthetic.terrain import synth_dem, upsample_dem
from components.radiometry.hillshade import Sun, hillshade

WORLD_MANIFEST = "world.parquet"  # ground truth per cell (landform, biome, broken kind): not upstream
LAYERS_DIR = "layers"
BROKEN_KINDS = ("corrupt_geotiff", "all_cloud", "ocean_flat", "antarctica", "crs_mismatch", "missing_dem")
DEM_NODATA = -32768.0
# The DEM thumbnails' light: Sentinel-2's ~10:30 overpass in the northern mid-latitudes.
THUMBNAIL_SUN = Sun(azimuth_deg=150.0, altitude_deg=40.0)
# Processing baseline 04.00 (from 2022-01-25) adds +1000 to Sentinel-2 digital numbers.
BASELINE_04_START = datetime(2022, 1, 25)
RADIOMETRIC_OFFSET = 1000

_BASE_ELEVATION_M = {"plains": (0, 400), "tablelands": (400, 1600), "hills": (100, 900),
                     "low mountains": (200, 1500), "high mountains": (800, 2600)}
# A country's cells of one biome become one ecoregion per ~4 cells, at most as many as have direction words.
CELLS_PER_ECOREGION = 4
MAX_ECOREGIONS_PER_GROUP = max(DIRECTIONS)


@dataclass(frozen=True)
class CellPlan:
    """Everything that decides how one cell looks; rendering is a pure function of it."""

    index: int
    grid_cell: str
    row: int
    col: int
    centre_lat: float
    centre_lon: float
    landform: str
    base_elevation_m: float
    country: str | None
    biome_num: int | None
    biome_name: str | None
    acquired: datetime
    cloud_cover: float
    nodata_border: bool
    broken: str | None
    seed: int


@dataclass(frozen=True)
class WorldPlan:
    params: SynthParams
    cells: tuple[CellPlan, ...]

    def shards(self) -> list[list[CellPlan]]:
        n = self.params.cells_per_shard
        return [list(self.cells[i:i + n]) for i in range(0, len(self.cells), n)]


# ---------------------------------------------------------------------------------------------
# 1. Plan


def _sample_land_cells(rng: np.random.Generator, wanted: int) -> pd.DataFrame:
    """Unique grid cells whose centres are on land (country and biome known), outside Antarctica."""
    grid = default_grid()
    country_layer, biome_layer = open_layer({"kind": "country"}), open_layer({"kind": "biome_proxy"})
    found: dict[str, dict] = {}
    while len(found) < wanted:
        n = max(4 * wanted, 2000)
        # Uniform on the sphere between 56 S and 72 N (where nearly all land but Antarctica is).
        lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-56)), np.sin(np.radians(72)), n)))
        lon = rng.uniform(-180, 180, n)
        rows, cols = grid.latlon_to_rowcol(lat, lon)
        clat, clon = grid.cell_centre_latlon(rows, cols)
        country = country_layer.lookup(clat, clon)
        biome = biome_layer.lookup(clat, clon)
        on_land = country["country"].notna().to_numpy() & biome["biome_num"].notna().to_numpy()
        for i in np.flatnonzero(on_land):
            name = grid.cell_name(int(rows[i]), int(cols[i]))
            if name in found:
                continue
            found[name] = dict(grid_cell=name, row=int(rows[i]), col=int(cols[i]), centre_lat=float(clat[i]),
                               centre_lon=float(clon[i]), country=country["country"].iloc[i],
                               biome_num=int(biome["biome_num"].iloc[i]), biome_name=biome["biome_name"].iloc[i])
            if len(found) == wanted:
                break
    return pd.DataFrame(list(found.values()))


def _cell_at(lat: float, lon: float) -> dict:
    grid = default_grid()
    row, col = grid.latlon_to_rowcol(lat, lon)
    clat, clon = grid.cell_centre_latlon(row, col)
    return dict(grid_cell=grid.cell_name(row, col), row=int(row), col=int(col), centre_lat=float(clat),
                centre_lon=float(clon), country=None, biome_num=None, biome_name=None)


def plan_world(params: SynthParams) -> WorldPlan:
    """Choose the cells and how each looks; deterministic for a given params (seed included)."""
    rng = np.random.default_rng(params.seed)
    land = _sample_land_cells(rng, params.cells)
    # Balanced classes: a shuffled round robin, so every class gets cells / len(classes) (+1).
    landforms = [params.landforms[i % len(params.landforms)] for i in range(len(land))]
    rng.shuffle(landforms)
    land["landform"] = landforms
    land["broken"] = None
    if params.broken_rows:
        land = pd.concat([land, _broken_cells(land, rng)], ignore_index=True)

    start, end = (datetime.fromisoformat(d) for d in params.date_range)
    span_s = (end - start).total_seconds()
    cells = []
    for index, cell in enumerate(land.itertuples(index=False)):
        low, high = _BASE_ELEVATION_M[cell.landform]
        # Base elevation varies smoothly with location (continental-scale highs and lows) and per cell.
        regional = 0.5 + 0.5 * np.sin(np.radians(cell.centre_lat * 3)) * np.cos(np.radians(cell.centre_lon * 2))
        base = low + (high - low) * (0.6 * regional + 0.4 * rng.uniform())
        # Sentinel-2 passes at about 10:30 local solar time.
        day = start + timedelta(seconds=float(rng.uniform(0, span_s)))
        solar_offset = timedelta(hours=cell.centre_lon / 15.0)
        acquired = (day.replace(hour=10, minute=30, second=0, microsecond=0) - solar_offset
                    + timedelta(minutes=float(rng.uniform(-20, 20)))).replace(microsecond=0)
        cloudy = rng.uniform() < params.cloudy_share
        nodata_border = bool(rng.uniform() < params.nodata_border_share)
        # A good cell keeps most of its area usable: a swath edge comes with at most light cloud.
        max_cloud = min(params.max_cloud_cover, 0.15) if nodata_border else params.max_cloud_cover
        cloud_cover = float(rng.uniform(0.02, max_cloud)) if cloudy else 0.0
        broken = cell.broken if isinstance(cell.broken, str) else None
        if broken == "all_cloud":
            cloud_cover, nodata_border = 1.0, False
        if broken == "ocean_flat":
            base, cloud_cover, nodata_border = 0.0, 0.0, False  # clear open sea, painted after rendering
        cells.append(CellPlan(
            index=index, grid_cell=cell.grid_cell, row=cell.row, col=cell.col,
            centre_lat=cell.centre_lat, centre_lon=cell.centre_lon, landform=cell.landform,
            base_elevation_m=round(float(base), 1), country=cell.country if isinstance(cell.country, str) else None,
            biome_num=None if pd.isna(cell.biome_num) else int(cell.biome_num),
            biome_name=cell.biome_name if isinstance(cell.biome_name, str) else None,
            acquired=acquired, cloud_cover=cloud_cover, nodata_border=nodata_border, broken=broken,
            seed=int(rng.integers(0, 2**31 - 1)),
        ))
    return WorldPlan(params=params, cells=tuple(cells))


def _broken_cells(land: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One cell of each kind validation must catch; the land ones reuse nothing from the good cells."""
    taken = set(land["grid_cell"])
    extra = _sample_land_cells(rng, len(land) + 8)
    extra = extra[~extra["grid_cell"].isin(taken)].head(4).reset_index(drop=True)
    rows = []
    for kind, source in zip(("corrupt_geotiff", "all_cloud", "crs_mismatch", "missing_dem"), extra.to_dict("records")):
        rows.append({**source, "landform": "hills", "broken": kind})
    # Mid-Pacific (no land within hundreds of km) and the East Antarctic ice sheet.
    rows.append({**_cell_at(-8.0, -140.0), "landform": "plains", "broken": "ocean_flat"})
    rows.append({**_cell_at(-77.5, 106.0), "landform": "plains", "broken": "antarctica", "biome_num": None})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# 2. Build one shard per source


def _product_ids(cell: CellPlan) -> tuple[str, str, str]:
    """Sentinel-2 style product ids for L2A and L1C, and a Copernicus DEM tile id."""
    when = cell.acquired.strftime("%Y%m%dT%H%M%S")
    baseline = "N0400" if cell.acquired >= BASELINE_04_START else "N0214"
    zone = utm_epsg(cell.centre_lat, cell.centre_lon) % 100
    band = "CDEFGHJKLMNPQRSTUVWX"[min(max(int((cell.centre_lat + 80) // 8), 0), 19)]
    tile = f"T{zone:02d}{band}{'ABCDEFGH'[cell.seed % 8]}{'KLMNPQRS'[(cell.seed // 8) % 8]}"
    platform = "S2A" if cell.seed % 2 else "S2B"
    orbit = f"R{cell.seed % 143 + 1:03d}"
    processed = (cell.acquired + timedelta(hours=3)).strftime("%Y%m%dT%H%M%S")
    l2a = f"{platform}_MSIL2A_{when}_{baseline}_{orbit}_{tile}_{processed}"
    l1c = f"{platform}_MSIL1C_{when}_{baseline}_{orbit}_{tile}_{processed}"
    ns, ew = ("N" if cell.centre_lat >= 0 else "S"), ("E" if cell.centre_lon >= 0 else "W")
    dem = (f"Copernicus_DSM_COG_10_{ns}{abs(int(np.floor(cell.centre_lat))):02d}_00_"
           f"{ew}{abs(int(np.floor(cell.centre_lon))):03d}_00_DEM")
    return l2a, l1c, dem


def _thumbnail_rgb(red: np.ndarray, green: np.ndarray, blue: np.ndarray, offset: int) -> bytes:
    """Upstream's thumbnail rule: gain 1.3 * (reflectance) ** 0.6 of B04/B03/B02; a 356 px PNG here."""
    rgb = np.stack([red, green, blue], axis=-1)[::3, ::3].astype(np.float32)
    reflectance = np.clip((rgb - offset) / 10_000.0, 0, 1)
    image = np.clip(1.3 * reflectance ** 0.6 * 255, 0, 255).astype(np.uint8)
    return _png(image)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: thumbnails are small, and level 6 costs more time than bytes it saves.
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _placeholder(band: str, value: int) -> np.ndarray:
    side = TILE_SIDE_M // S2_BAND_RESOLUTION_M[band]
    return np.full((side, side), value, dtype=np.uint16)


def _render(cell: CellPlan):
    rng = np.random.default_rng(cell.seed)
    if cell.broken == "ocean_flat":
        dem30 = np.zeros((356, 356), dtype=np.float32)
    else:
        dem30 = synth_dem(cell.landform, rng, size=356, pixel_m=30.0, base_elevation_m=cell.base_elevation_m)
    dem10 = upsample_dem(dem30, 3)
    # No biome (Antarctica): the renderer's rock-and-ice palette.
    rendered = render_cell(dem10, 10.0, cell.biome_num, cell.acquired.month, cell.centre_lat, rng,
                           cloud_cover=cell.cloud_cover, nodata_border=cell.nodata_border)
    if cell.broken == "ocean_flat":
        # Open sea: dark water, a little brighter at top of atmosphere (path radiance, bluer).
        ripple = rng.normal(0.0, 0.002, dem10.shape).astype(np.float32)
        for band, water, path in (("B02", 0.045, 0.075), ("B03", 0.040, 0.045), ("B04", 0.025, 0.028)):
            rendered.l2a[band] = np.round((water + ripple) * 10_000).astype(np.uint16)
            rendered.l1c[band] = np.round((0.9 * (water + ripple) + path) * 10_000).astype(np.uint16)
    return dem30, rendered


def build_shard(out: str | Path, plan: WorldPlan, shard_index: int) -> dict:
    """Render and write shard `shard_index` of every source; return its metadata rows and sizes."""
    out = Path(out)
    cells = plan.shards()[shard_index]
    shard_name = f"{SHARD_DIR}/part_{shard_index:05d}.parquet"
    rows: dict[str, list[dict]] = {"s2l2a": [], "s2l1c": [], "dem": []}
    metadata: dict[str, list[dict]] = {"s2l2a": [], "s2l1c": [], "dem": []}
    for cell in cells:
        footprint = cell_footprint(cell.grid_cell)
        epsg = footprint.epsg
        if cell.broken == "crs_mismatch":
            epsg = epsg + 1 if epsg % 100 < 60 else epsg - 1  # the neighbouring UTM zone
        crs = f"EPSG:{epsg}"
        t10, t30 = footprint.transform(10.0), footprint.transform(30.0)
        dem30, rendered = _render(cell)
        l2a_id, l1c_id, dem_id = _product_ids(cell)
        offset = RADIOMETRIC_OFFSET if cell.acquired >= BASELINE_04_START else 0
        common = dict(grid_cell=cell.grid_cell, grid_row_u=cell.row, grid_col_r=cell.col,
                      centre_lat=cell.centre_lat, centre_lon=cell.centre_lon, crs=crs,
                      parquet_url=shard_name)
        for source, bands, product_id, level in (("s2l2a", S2_BANDS_L2A, l2a_id, rendered.l2a),
                                                 ("s2l1c", S2_BANDS_L1C, l1c_id, rendered.l1c)):
            # The offset applies to valid pixels only; no-data stays 0 as in real products.
            rgb = {b: np.where(rendered.nodata, 0, level[b].astype(np.uint32) + offset).astype(np.uint16)
                   for b in ("B02", "B03", "B04")}
            row = dict(product_id=product_id, grid_cell=cell.grid_cell,
                       product_datetime=cell.acquired.strftime("%Y%m%dT%H%M%S"),
                       thumbnail=_thumbnail_rgb(rgb["B04"], rgb["B03"], rgb["B02"], offset),
                       cloud_mask=encode_geotiff(rendered.cloud_mask, crs, t10))
            for band in bands:
                if band in rgb:
                    row[band] = encode_geotiff(rgb[band], crs, t10, nodata=0)
                else:
                    res = S2_BAND_RESOLUTION_M[band]
                    row[band] = encode_geotiff(_placeholder(band, 1000 + offset), crs,
                                               footprint.transform(float(res)), nodata=0)
            if cell.broken == "corrupt_geotiff" and source == "s2l2a":
                row["B04"] = row["B04"][: len(row["B04"]) // 3]  # a truncated download
            metadata[source].append(dict(common, product_id=product_id, timestamp=cell.acquired,
                                         cloud_cover=round(float(rendered.cloud_cover_pct), 4),
                                         nodata=round(rendered.nodata_fraction, 6),
                                         parquet_row=len(rows[source])))
            rows[source].append(row)
        if cell.broken == "missing_dem":
            continue
        shade = (hillshade(dem30, 30.0, THUMBNAIL_SUN) * 255).astype(np.uint8)
        rows["dem"].append(dict(
            grid_cell=cell.grid_cell, thumbnail=_png(shade),
            # "compressed": integer metres + 32768 as a 16-bit PNG (lossless to 1 m).
            compressed=_png(np.clip(np.round(dem30) + 32768, 0, 65535).astype(np.uint16)),
            DEM=encode_geotiff(dem30.astype(np.float32), crs, t30, nodata=DEM_NODATA),
        ))
        metadata["dem"].append(dict(common, product_id=dem_id, timestamp=datetime(2021, 4, 22),
                                    cloud_cover=0.0, nodata=0.0, parquet_row=len(rows["dem"]) - 1))
    placeholders = {"s2l2a": [b for b in S2_BANDS_L2A if b not in ("B02", "B03", "B04")],
                    "s2l1c": [b for b in S2_BANDS_L1C if b not in ("B02", "B03", "B04")], "dem": []}
    sizes = {}
    for source in rows:
        path = out / source / shard_name
        note = {"mesa:synthetic": "true", "mesa:placeholder_bands": json.dumps(placeholders[source])}
        write_shard(path, source, rows[source], file_metadata=note)
        sizes[source] = path.stat().st_size
    return {"shard": shard_index, "metadata": metadata, "bytes": sizes}


# ---------------------------------------------------------------------------------------------
# 3. Finish: metadata, region layers, manifest


def _cell_box(row: int, col: int):
    """The cell's grid box in lat/lon: from its bottom-left point to the next row's and column's."""
    from shapely.geometry import box

    grid = default_grid()
    lat0, lon0 = grid.cell_origin(row, col)
    lat1 = lat0 + 180.0 / np.ceil(np.pi * EARTH_RADIUS_KM / grid.dist_km)  # the grid's row spacing
    lon1 = lon0 + 360.0 / grid.columns_in_row(row)
    return box(lon0, lat0, lon1, lat1)


def _good(cells: Sequence[CellPlan]) -> list[CellPlan]:
    """The cells the region layers cover: not broken, with a country and a biome."""
    return [c for c in cells if c.broken is None and c.country and c.biome_name]


def ecoregion_groups(cells: Sequence[CellPlan]) -> list[tuple[str, int | None, str, list[CellPlan]]]:
    """The world's ecoregions as (ECO_NAME, BIOME_NUM, BIOME_NAME, member cells), in a fixed order.

    Good cells are grouped by country and biome; a group of n cells is cut west to east into
    ceil(n / CELLS_PER_ECOREGION) runs (at most MAX_ECOREGIONS_PER_GROUP), one ecoregion each, so a
    large country holds several ecoregions of one biome as in RESOLVE, named by ``ecoregion_names``.
    """
    by_group: dict[tuple, list[CellPlan]] = {}
    for cell in _good(cells):
        by_group.setdefault((cell.country, cell.biome_name), []).append(cell)
    groups = []
    # Keyed on names, not BIOME_NUM: Rock and Ice has none, and None does not sort against numbers.
    for (country, biome_name), members in sorted(by_group.items()):
        biome_num = members[0].biome_num
        members = sorted(members, key=lambda c: (c.centre_lon, c.centre_lat, c.grid_cell))
        runs = min(MAX_ECOREGIONS_PER_GROUP, -(-len(members) // CELLS_PER_ECOREGION))
        names = ecoregion_names(country, biome_num if biome_num is not None else biome_name, runs)
        # Near-equal contiguous runs, as numpy.array_split cuts them.
        size, extra = divmod(len(members), runs)
        bounds = list(itertools.accumulate([0] + [size + (i < extra) for i in range(runs)]))
        groups += [(name, biome_num, biome_name, members[lo:hi]) for name, lo, hi in zip(names, bounds, bounds[1:])]
    return groups


def write_region_layers(folder: str | Path, cells: Sequence[CellPlan]) -> dict[str, Path]:
    """The world's own ecoregions (RESOLVE field names) and named landform regions, as GeoPackages.

    Ecoregions are ``ecoregion_groups``; landform regions group good cells by country and class.
    Polygons are unions of the cells' grid boxes, so they never overlap.
    """
    import geopandas as gpd
    import pyogrio
    from shapely.ops import unary_union

    folder = Path(folder)
    eco_rows, landform_rows = [], []
    for name, biome_num, biome_name, members in ecoregion_groups(cells):
        eco_rows.append({"ECO_NAME": name, "BIOME_NUM": None if biome_num is None else float(biome_num),
                         "BIOME_NAME": biome_name, "REALM": _realm(members[0].centre_lat, members[0].centre_lon),
                         "geometry": unary_union([_cell_box(c.row, c.col) for c in members])})
    by_landform: dict[tuple, list[CellPlan]] = {}
    for cell in _good(cells):
        by_landform.setdefault((cell.country, cell.landform), []).append(cell)
    for (country, landform), members in sorted(by_landform.items()):
        landform_rows.append({"NAME": landform_region_name(country, landform), "LANDFORM": landform,
                              "geometry": unary_union([_cell_box(c.row, c.col) for c in members])})
    paths = {"ecoregions": folder / "ecoregions.gpkg", "landforms": folder / "landforms.gpkg"}
    folder.mkdir(parents=True, exist_ok=True)
    # GeoPackages record a "last change" time; pin it so the same world gives the same bytes.
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    for name, records in (("ecoregions", eco_rows), ("landforms", landform_rows)):
        frame = gpd.GeoDataFrame(records, geometry="geometry", crs="EPSG:4326")
        atomic_write(paths[name], lambda tmp, frame=frame, name=name: _write_gpkg(frame, tmp, name),
                     suffix=".tmp.gpkg")
    return paths


def _write_gpkg(frame, path: Path, layer: str) -> None:
    # GDAL creates a GeoPackage itself: it cannot open the empty file atomic_write reserved.
    path.unlink()
    frame.to_file(path, driver="GPKG", layer=layer)


def _realm(lat: float, lon: float) -> str:
    """A rough biogeographic realm from position (RESOLVE's REALM field), good enough for names."""
    if lon < -30:
        return "Nearctic" if lat > 15 else "Neotropic"
    if lon > 110 and lat < -10:
        return "Australasia"
    if lat > 30 or (lon < 60 and lat > 20):
        return "Palearctic"
    return "Afrotropic" if lon < 60 else "Indomalayan"


def finish_world(out: str | Path, plan: WorldPlan, shard_results: Sequence[dict]) -> dict:
    """Write each source's metadata.parquet, the region layers and the world manifest; return a report."""
    out = Path(out)
    results = sorted(shard_results, key=lambda r: r["shard"])
    for source in ("s2l2a", "s2l1c", "dem"):
        rows = [row for result in results for row in result["metadata"][source]]
        write_metadata(out / source / METADATA_FILE, pd.DataFrame(rows))
    write_region_layers(out / LAYERS_DIR, plan.cells)
    manifest = pd.DataFrame([{**asdict(c), "acquired": c.acquired} for c in plan.cells])
    manifest["shard"] = [i // plan.params.cells_per_shard for i in range(len(manifest))]
    atomic_write(out / WORLD_MANIFEST, lambda tmp: manifest.to_parquet(tmp, index=False))
    good = manifest[manifest["broken"].isna()]
    return {
        "cells_total": int(len(manifest)),
        "cells_good": int(len(good)),
        "cells_broken": int(manifest["broken"].notna().sum()),
        "cells_per_landform": {k: int(v) for k, v in good["landform"].value_counts().sort_index().items()},
        "shards": len(results),
        "bytes": int(sum(sum(r["bytes"].values()) for r in results)),
    }


def build_world(out: str | Path, params: SynthParams,
                map_shards: Callable[[Callable[[int], dict], Sequence[int]], list[dict]] | None = None,
                progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Plan, build every shard (in parallel threads unless `map_shards` is given) and finish the world.

    Args:
        out: folder that receives s2l2a/, s2l1c/, dem/, layers/ and world.parquet.
        params: the world's parameters.
        map_shards: how to run `build(shard_index)` over the shard indices (a flow passes Prefect
            task mapping here); default: a thread pool of `params.workers`.
        progress: called as progress(done, total, what) after each shard.
    """
    started = time.perf_counter()
    plan = plan_world(params)
    indices = list(range(len(plan.shards())))

    finished = itertools.count(1)  # next() is atomic, so worker threads can share it

    def build(index: int) -> dict:
        result = build_shard(out, plan, index)
        if progress:
            progress(next(finished), len(indices), "shards")
        return result

    if map_shards is None:
        with ThreadPoolExecutor(max_workers=params.workers) as pool:
            results = list(pool.map(build, indices))
    else:
        results = map_shards(build, indices)
    report = finish_world(out, plan, results)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["params"] = params.model_dump()
    return report
