"""The synthetic Major TOM world: upstream schema, every cell accounted for, meaningful statistics."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.majortom.errors import RejectedRow
from components.majortom.schema import METADATA_SCHEMA, SHARD_SCHEMAS, SOURCES
from components.majortom.shards import SHARD_DIR, pair_sources, read_metadata, read_shard
from components.majortom.summary import summarise_world
from components.majortom.synthetic.render import sun_position
from components.majortom.synthetic.terrain import classify_landform, landform_stats, upsample_dem
from components.majortom.synthetic.world import BROKEN_KINDS, build_world
from components.radiometry.hillshade import hillshade
from tests.conftest import micro_synth_params

# REFERENCE.md section 2, written out: the columns and their types, in order.
UPSTREAM_S2L2A = ["product_id", "grid_cell", "product_datetime", "thumbnail", "B01", "B02", "B03", "B04", "B05",
                  "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "cloud_mask"]
UPSTREAM_S2L1C = UPSTREAM_S2L2A[:14] + ["B10"] + UPSTREAM_S2L2A[14:]
UPSTREAM_DEM = ["grid_cell", "thumbnail", "compressed", "DEM"]
UPSTREAM_METADATA = ["grid_cell", "grid_row_u", "grid_col_r", "product_id", "timestamp", "cloud_cover", "nodata",
                     "centre_lat", "centre_lon", "crs", "parquet_url", "parquet_row"]


@pytest.fixture(scope="module")
def world(micro_world):
    raw, report = micro_world
    return raw, report, pd.read_parquet(raw / "world.parquet")


def test_columns_and_types_match_the_upstream_schema(world):
    raw, _, _ = world
    expected = {"s2l2a": UPSTREAM_S2L2A, "s2l1c": UPSTREAM_S2L1C, "dem": UPSTREAM_DEM}
    for source in SOURCES:
        for shard in sorted((raw / source / SHARD_DIR).glob("*.parquet")):
            schema = pq.read_schema(shard)
            assert schema.names == expected[source], shard
            for name in schema.names:
                want = pa.string() if name in ("product_id", "grid_cell", "product_datetime") else pa.binary()
                assert schema.field(name).type == want, (shard, name)
            assert schema.remove_metadata().equals(SHARD_SCHEMAS[source])
            # Upstream stores one cell per row group.
            parquet = pq.ParquetFile(shard)
            assert parquet.num_row_groups == parquet.metadata.num_rows
        meta = pq.read_schema(raw / source / "metadata.parquet")
        assert meta.names == UPSTREAM_METADATA
        assert meta.remove_metadata().equals(METADATA_SCHEMA)


def test_every_cell_is_accounted_for_and_each_broken_row_is_caught(world):
    raw, report, manifest = world
    params = micro_synth_params()
    assert report["cells_good"] == params.cells
    assert sorted(manifest["broken"].dropna()) == sorted(BROKEN_KINDS)
    metadata = {s: read_metadata(raw / s / "metadata.parquet") for s in SOURCES}
    assert len(metadata["s2l2a"]) == len(metadata["s2l1c"]) == len(manifest)
    assert len(metadata["dem"]) == len(manifest) - 1  # the S2 cell without a DEM

    summary = summarise_world(raw)
    assert summary["sources"]["s2l2a"]["rejected"] == {"corrupt_geotiff": 1, "crs_mismatch": 1}
    assert summary["sources"]["s2l1c"]["rejected"] == {"crs_mismatch": 1}
    assert summary["sources"]["dem"]["rejected"] == {"crs_mismatch": 1}
    broken = manifest.set_index("broken")["grid_cell"]
    rejected = {item.reason: item.grid_cell
                for shard in sorted((raw / "s2l2a" / SHARD_DIR).glob("*.parquet"))
                for item in read_shard(shard, "s2l2a", ["B04"], on_error="collect") if isinstance(item, RejectedRow)}
    assert rejected == {"corrupt_geotiff": broken["corrupt_geotiff"], "crs_mismatch": broken["crs_mismatch"]}

    paths = {s: raw / s / "metadata.parquet" for s in SOURCES}
    pairing = pair_sources(metadata, paths)
    assert pairing.unpaired["grid_cell"].tolist() == [broken["missing_dem"]]
    assert len(pairing.cells) == len(manifest) - 1


def test_good_cells_are_on_land_with_balanced_landforms(world):
    _, _, manifest = world
    good = manifest[manifest["broken"].isna()]
    assert good["country"].notna().all() and good["biome_num"].notna().all()
    counts = good["landform"].value_counts()
    assert set(counts.index) == set(micro_synth_params().landforms)
    assert counts.max() - counts.min() <= 1
    assert good["grid_cell"].is_unique
    antarctic = manifest[manifest["broken"] == "antarctica"]
    assert (antarctic["centre_lat"] < -60).all()


def _decoded(raw: Path, source: str, columns) -> dict[str, dict]:
    cells = {}
    for shard in sorted((raw / source / SHARD_DIR).glob("*.parquet")):
        for item in read_shard(shard, source, columns, on_error="collect"):
            if not isinstance(item, RejectedRow):
                cells[item.grid_cell] = {k: r.array for k, r in item.rasters.items()}
    return cells


def test_landform_classes_are_recoverable_from_the_stored_dems(world):
    raw, _, manifest = world
    dems = _decoded(raw, "dem", ["DEM"])
    good = manifest[manifest["broken"].isna()]
    hits = [classify_landform(landform_stats(dems[c]["DEM"], 30.0)) == lf
            for c, lf in zip(good["grid_cell"], good["landform"])]
    assert np.mean(hits) >= 0.85, f"only {np.mean(hits):.0%} of stored DEMs classify as their class"


def _luminance(rasters: dict, offset: float) -> np.ndarray:
    rgb = [rasters[b].astype(np.float32) - offset for b in ("B04", "B03", "B02")]
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def test_l1c_keeps_the_terrain_shading_that_l2a_flattens(world):
    """Data-level: L1C luminance correlates with the DEM's hillshade clearly more than L2A's."""
    raw, _, manifest = world
    l2a = _decoded(raw, "s2l2a", ["B04", "B03", "B02", "cloud_mask"])
    l1c = _decoded(raw, "s2l1c", ["B04", "B03", "B02", "cloud_mask"])
    dems = _decoded(raw, "dem", ["DEM"])
    relief = manifest[manifest["broken"].isna() & manifest["landform"].isin(["hills", "low mountains", "high mountains"])]
    gaps, r_l1c_all = [], []
    for cell, lat, acquired in zip(relief["grid_cell"], relief["centre_lat"], relief["acquired"]):
        sun = sun_position(lat, acquired.month)  # the sun of that acquisition
        shade = hillshade(upsample_dem(dems[cell]["DEM"], 3), 10.0, sun)
        valid = (l2a[cell]["cloud_mask"] == 0) & (l2a[cell]["B04"] > 0)
        if valid.mean() < 0.3:
            continue
        r_l2a = np.corrcoef(_luminance(l2a[cell], 0)[valid], shade[valid])[0, 1]
        r_l1c = np.corrcoef(_luminance(l1c[cell], 0)[valid], shade[valid])[0, 1]
        gaps.append(r_l1c - r_l2a)
        r_l1c_all.append(r_l1c)
    assert len(gaps) >= 5
    assert np.median(gaps) > 0.3, f"median r(L1C) - r(L2A) = {np.median(gaps):.2f}"
    assert np.median(r_l1c_all) > 0.5
    assert np.mean(np.array(gaps) > 0) >= 0.9


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    params = micro_synth_params(cells=3, cells_per_shard=2, broken_rows=False, workers=2)
    build_world(tmp_path / "a", params)
    build_world(tmp_path / "b", params)
    build_world(tmp_path / "c", params.model_copy(update={"seed": params.seed + 1}))
    first, second, other = (_digest(tmp_path / x) for x in "abc")
    assert first == second
    assert any(path.endswith(".gpkg") for path in first)
    assert first["s2l2a/images/part_00000.parquet"] != other["s2l2a/images/part_00000.parquet"]
