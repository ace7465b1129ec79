"""Reading and writing Major TOM shards: round trips, column projection, errors that say where."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.majortom import shards as shards_module
from components.majortom.errors import RejectedRow, ShardError
from components.majortom.geotiff import encode_geotiff
from components.majortom.grid import cell_footprint
from components.majortom.schema import METADATA_SCHEMA, S2_BAND_RESOLUTION_M, S2_BANDS_L2A, SHARD_SCHEMAS
from components.majortom.shards import (
    pair_sources, read_metadata, read_shard, resolve_url, shard_file_metadata, write_metadata, write_shard,
)

CELLS = ["454U_120R", "533U_963L", "497D_1333R"]


def _band(cell: str, band: str, value: int, dtype=np.uint16, side: int | None = None, crs: str | None = None):
    footprint = cell_footprint(cell)
    res = S2_BAND_RESOLUTION_M[band]
    side = side or 10_680 // res
    array = (np.arange(side * side, dtype=np.uint32).reshape(side, side) % 997 + value).astype(dtype)
    return array, encode_geotiff(array, crs or footprint.crs, footprint.transform(float(res)))


def _s2_row(cell: str, seed: int = 0, **replace) -> dict:
    row = {"product_id": f"S2A_MSIL2A_{seed}", "grid_cell": cell, "product_datetime": "20200101T103000",
           "thumbnail": b"png"}
    for band in S2_BANDS_L2A + ("cloud_mask",):
        dtype = np.uint8 if band == "cloud_mask" else np.uint16
        row[band] = _band(cell, band, 7 + seed, dtype)[1]
    row.update(replace)
    return row


@pytest.fixture(scope="module")
def good_shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "part_00000.parquet"
    write_shard(path, "s2l2a", [_s2_row(c, i) for i, c in enumerate(CELLS)], file_metadata={"mesa:note": "x"})
    return path


def test_round_trip_returns_arrays_crs_and_transform(good_shard):
    cells = list(read_shard(good_shard, "s2l2a", ["B04", "cloud_mask"]))
    assert [c.grid_cell for c in cells] == CELLS
    assert [c.row for c in cells] == [0, 1, 2]
    for i, cell in enumerate(cells):
        expected, _ = _band(cell.grid_cell, "B04", 7 + i)
        np.testing.assert_array_equal(cell.rasters["B04"].array, expected)
        assert cell.rasters["B04"].crs == cell_footprint(cell.grid_cell).crs
        assert cell.rasters["B04"].transform == cell_footprint(cell.grid_cell).transform(10.0)
        assert cell.rasters["cloud_mask"].array.dtype == np.uint8
        assert set(cell.rasters) == {"B04", "cloud_mask"}
    assert shard_file_metadata(good_shard) == {"mesa:note": "x"}


def test_one_row_group_per_cell_and_exact_schema(good_shard):
    parquet = pq.ParquetFile(good_shard)
    assert parquet.num_row_groups == len(CELLS)
    assert parquet.schema_arrow.remove_metadata().equals(SHARD_SCHEMAS["s2l2a"])


def test_a_tile_cut_in_its_product_zone_not_the_grid_points_zone_is_accepted(tmp_path):
    # Core tiles use the Sentinel-2 product's UTM zone, sometimes the neighbour of the grid point's.
    cell = CELLS[0]
    other = cell_footprint(cell, epsg=cell_footprint(cell).epsg + 1)
    array = np.ones((1068, 1068), np.uint16)
    row = _s2_row(cell, B04=encode_geotiff(array, other.crs, other.transform(10.0)))
    write_shard(tmp_path / "p.parquet", "s2l2a", [row])
    [decoded] = read_shard(tmp_path / "p.parquet", "s2l2a", ["B04"])
    assert decoded.rasters["B04"].crs == other.crs


def test_rows_selects_cells(good_shard):
    assert [c.grid_cell for c in read_shard(good_shard, "s2l2a", ["B02"], rows=[2])] == [CELLS[2]]


def test_columns_not_asked_for_are_never_decoded(tmp_path, monkeypatch):
    # B05 holds garbage: reading RGB must not touch it, and must decode exactly what was asked.
    path = tmp_path / "part.parquet"
    write_shard(path, "s2l2a", [_s2_row(c, i, B05=b"not a tiff") for i, c in enumerate(CELLS)])
    calls = []
    real_decode = shards_module.decode_geotiff
    monkeypatch.setattr(shards_module, "decode_geotiff", lambda data: calls.append(len(data)) or real_decode(data))
    cells = list(read_shard(path, "s2l2a", ["B04", "B03", "B02"]))
    assert len(cells) == len(CELLS)
    assert len(calls) == 3 * len(CELLS)


def test_column_projection_reads_only_the_requested_columns_from_disk(good_shard, monkeypatch):
    requested = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        requested.append(tuple(columns))
        return real(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    list(read_shard(good_shard, "s2l2a", ["B04"]))
    assert requested and all(set(cols) == {"grid_cell", "product_id", "product_datetime", "B04"} for cols in requested)


@pytest.mark.parametrize("kind, reason, needle", [
    ("corrupt", "corrupt_geotiff", "cannot be decoded"),
    ("dtype", "wrong_dtype", "dtype is uint8, expected uint16"),
    ("shape", "wrong_shape", "shape is (100, 100), expected (1068, 1068)"),
    ("crs", "crs_mismatch", "misaligned with its grid cell"),
    ("not_utm", "crs_mismatch", "not a UTM zone"),
    ("null", "missing_value", "null"),
])
def test_bad_cells_name_shard_row_cell_and_column(tmp_path, kind, reason, needle):
    bad_cell = CELLS[1]
    if kind == "corrupt":
        value = _s2_row(bad_cell)["B04"][:500]
    elif kind == "dtype":
        value = _band(bad_cell, "B04", 3, dtype=np.uint8)[1]
    elif kind == "shape":
        value = _band(bad_cell, "B04", 3, side=100)[1]
    elif kind == "crs":
        # Labelled as the neighbouring zone but cut in the cell's own: the origin lands far off.
        zone = cell_footprint(bad_cell).epsg
        value = _band(bad_cell, "B04", 3, crs=f"EPSG:{zone + 1}")[1]
    elif kind == "not_utm":
        value = _band(bad_cell, "B04", 3, crs="EPSG:3857")[1]
    else:
        value = None
    path = tmp_path / "part.parquet"
    write_shard(path, "s2l2a", [_s2_row(CELLS[0]), _s2_row(bad_cell, B04=value), _s2_row(CELLS[2])])

    with pytest.raises(ShardError) as caught:
        list(read_shard(path, "s2l2a", ["B04"]))
    err = caught.value
    assert (err.shard, err.row, err.grid_cell, err.column, err.reason) == (str(path), 1, bad_cell, "B04", reason)
    message = str(err)
    assert str(path) in message and "row 1" in message and bad_cell in message and "'B04'" in message
    assert needle in message

    # A stage collects the bad row and keeps going.
    items = list(read_shard(path, "s2l2a", ["B04"], on_error="collect"))
    assert [type(i).__name__ for i in items] == ["CellData", "RejectedRow", "CellData"]
    assert items[1].reason == reason and items[1].grid_cell == bad_cell


def test_missing_column_rejects_every_row_of_the_shard(tmp_path):
    table = pa.Table.from_pylist([{k: v for k, v in _s2_row(c).items() if k != "B04"} for c in CELLS[:2]])
    path = tmp_path / "no_b04.parquet"
    pq.write_table(table, path)
    with pytest.raises(ShardError, match=r"column 'B04': the column is missing"):
        list(read_shard(path, "s2l2a", ["B04"]))
    rejected = list(read_shard(path, "s2l2a", ["B04"], on_error="collect"))
    assert all(isinstance(r, RejectedRow) and r.reason == "missing_column" for r in rejected)
    assert [r.grid_cell for r in rejected] == CELLS[:2]


def test_wrong_column_type_is_named(tmp_path):
    rows = [dict(_s2_row(c), B04=123) for c in CELLS[:1]]
    path = tmp_path / "int_b04.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(ShardError, match=r"'B04': the column has type int64, expected binary"):
        list(read_shard(path, "s2l2a", ["B04"]))


def _metadata(source: str, cells: list[str], cloud: list[float], folder) -> pd.DataFrame:
    return pd.DataFrame({
        "grid_cell": cells, "grid_row_u": [1] * len(cells), "grid_col_r": [2] * len(cells),
        "product_id": [f"{source}-{i}" for i in range(len(cells))],
        "timestamp": [datetime(2020, 1, 1 + i) for i in range(len(cells))],
        "cloud_cover": cloud, "nodata": [0.0] * len(cells),
        "centre_lat": [1.0] * len(cells), "centre_lon": [2.0] * len(cells), "crs": ["EPSG:32631"] * len(cells),
        "parquet_url": ["images/part_00000.parquet"] * len(cells), "parquet_row": list(range(len(cells))),
    })


def test_metadata_round_trip_has_the_upstream_schema(tmp_path):
    frame = _metadata("s2l2a", CELLS, [1.0, 2.0, 3.0], tmp_path)
    path = write_metadata(tmp_path / "metadata.parquet", frame)
    assert pq.read_schema(path).remove_metadata().equals(METADATA_SCHEMA)
    back = read_metadata(path)
    assert back["grid_cell"].tolist() == CELLS
    assert pd.api.types.is_datetime64_any_dtype(back["timestamp"])
    with pytest.raises(ValueError, match="not in the Major TOM metadata schema"):
        write_metadata(tmp_path / "bad.parquet", frame.assign(extra=1))


def test_resolve_url_keeps_urls_and_anchors_relative_paths(tmp_path):
    meta = tmp_path / "s2l2a" / "metadata.parquet"
    assert resolve_url(meta, "images/part_00001.parquet") == str(tmp_path / "s2l2a" / "images/part_00001.parquet")
    assert resolve_url(meta, "https://host/x.parquet") == "https://host/x.parquet"


def test_pairing_resolves_duplicates_by_the_documented_rule_and_reports_unpaired(tmp_path):
    l2a = _metadata("s2l2a", ["A", "B", "B", "C"], [5.0, 30.0, 10.0, 1.0], tmp_path)
    dem = _metadata("dem", ["A", "B", "D"], [0.0, 0.0, 0.0], tmp_path)
    l1c = _metadata("s2l1c", ["A"], [5.0], tmp_path)
    paths = {s: tmp_path / s / "metadata.parquet" for s in ("s2l2a", "dem", "s2l1c")}
    pairing = pair_sources({"s2l2a": l2a, "dem": dem, "s2l1c": l1c}, paths)
    assert pairing.cells["grid_cell"].tolist() == ["A", "B"]
    # B appeared twice in L2A: the less cloudy product (10 %) is kept.
    b = pairing.cells.set_index("grid_cell").loc["B"]
    assert b["s2l2a_cloud_cover"] == 10.0 and b["s2l2a_product_id"] == "s2l2a-2"
    assert pd.isna(b["s2l1c_product_id"])
    assert pairing.duplicates[["source", "grid_cell", "product_id", "kept_product_id"]].values.tolist() == [
        ["s2l2a", "B", "s2l2a-1", "s2l2a-2"]]
    assert pairing.unpaired.values.tolist() == [["C", "s2l2a", "dem"], ["D", "dem", "s2l2a"]]
    assert pairing.cells.loc[0, "s2l2a_shard"] == str(tmp_path / "s2l2a" / "images/part_00000.parquet")


def test_shards_and_metadata_read_through_fsspec_urls(good_shard, tmp_path):
    # Real Major TOM lives behind URLs: the reader goes through fsspec, not open().
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/majortom/s2l2a/images/part_00000.parquet", good_shard.read_bytes())
    cells = list(read_shard("memory:///majortom/s2l2a/images/part_00000.parquet", "s2l2a", ["B02"]))
    assert [c.grid_cell for c in cells] == CELLS
    meta = write_metadata(tmp_path / "metadata.parquet", _metadata("s2l2a", CELLS, [1.0, 2.0, 3.0], tmp_path))
    memory.pipe("/majortom/s2l2a/metadata.parquet", meta.read_bytes())
    assert read_metadata("memory:///majortom/s2l2a/metadata.parquet")["grid_cell"].tolist() == CELLS
