"""The validate stage on the micro world: every broken row rejected with exactly its reason,
no good row rejected, kept + rejected = input. Real great-expectations, real Prefect (harness)."""
from __future__ import annotations

import json

import pandas as pd

EXPECTED_REASONS = {
    "corrupt_geotiff": ["corrupt_geotiff"],
    "all_cloud": ["too_little_valid_area"],
    "ocean_flat": ["ocean_or_flat_water"],
    "antarctica": ["antarctica"],
    "crs_mismatch": ["misaligned_projection"],
    "missing_dem": ["missing_dem"],
}


def test_every_broken_row_is_rejected_with_exactly_its_reason(curated):
    project, _, world = curated
    rejected = pd.read_parquet(project / "data/curated/rejected.parquet")
    by_cell = {cell: list(reasons) for cell, reasons in zip(rejected["grid_cell"], rejected["reasons"])}
    for kind, cell in zip(world["broken"], world["grid_cell"]):
        if isinstance(kind, str):
            assert by_cell.get(cell) == EXPECTED_REASONS[kind], (kind, cell, by_cell.get(cell))


def test_no_good_row_is_rejected_and_nothing_is_lost(curated):
    project, report, world = curated
    index = pd.read_parquet(project / "data/curated/index.parquet")
    rejected = pd.read_parquet(project / "data/curated/rejected.parquet")
    good = set(world.loc[world["broken"].isna(), "grid_cell"])
    assert set(index["grid_cell"]) == good
    assert set(rejected["grid_cell"]) & good == set()
    assert len(index) + len(rejected) == len(world) == report["input_cells"]
    assert report["kept_cells"] == len(good)
    assert report["rejected_per_reason"] == {reasons[0]: 1 for reasons in EXPECTED_REASONS.values()}
    assert json.loads((project / "reports/curation.json").read_text()) == report


def test_the_index_carries_what_later_stages_need(curated):
    project, _, world = curated
    index = pd.read_parquet(project / "data/curated/index.parquet")
    for column in ("grid_cell", "centre_lat", "centre_lon", "s2l2a_shard", "s2l2a_row", "dem_shard", "dem_row",
                   "s2l1c_shard", "s2l2a_timestamp", "s2l2a_cloud_fraction", "s2l2a_nodata_fraction",
                   "dem_mean_m", "dem_p01_m", "dem_p99_m", "gentle_share", "relief_m", "profile_upper_share",
                   "valid_fraction", "date_gap_days"):
        assert column in index.columns, column
        assert index[column].notna().all(), column
    assert (index["s2l2a_shape"] == 1068).all() and (index["dem_shape"] == 356).all()
    # Relief separates the world's landform classes as generated.
    relief = index.merge(world[["grid_cell", "landform"]]).groupby("landform")["relief_m"].median()
    assert relief["plains"] < 90 < relief["hills"] < 300 < relief["low mountains"] < 900 < relief["high mountains"]


def test_contract_results_are_saved_as_json(curated):
    project, _, _ = curated
    validation = project / "data/curated/validation"
    for name in ("s2l2a_metadata.json", "s2l1c_metadata.json", "dem_metadata.json", "cell_statistics.json"):
        assert json.loads((validation / name).read_text())
    # The Data Docs site a team opens in a browser.
    assert list(validation.rglob("index.html"))
