"""The Major TOM on-disk schema: column names and Arrow types of the shards and of metadata.parquet.

Upstream (ESA Phi-lab, Major TOM Core datasets) stores one cell per row group; band and mask
columns hold whole GeoTIFF files as bytes. We write exactly these columns so that real shards
and synthetic ones are read by the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SOURCES = ("s2l2a", "s2l1c", "dem")

S2_BANDS_L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
# L1C keeps the cirrus band B10, which L2A drops.
S2_BANDS_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RGB_BANDS = ("B04", "B03", "B02")

# Native resolution of each Sentinel-2 band, in metres. A 10,680 m tile is 1068 px at 10 m.
S2_BAND_RESOLUTION_M = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "cloud_mask": 10,
}
DEM_RESOLUTION_M = 30


def _s2_schema(bands: tuple[str, ...]) -> pa.Schema:
    fields = [
        pa.field("product_id", pa.string()),
        pa.field("grid_cell", pa.string()),
        pa.field("product_datetime", pa.string()),
        pa.field("thumbnail", pa.binary()),
    ]
    fields += [pa.field(band, pa.binary()) for band in bands]
    fields.append(pa.field("cloud_mask", pa.binary()))
    return pa.schema(fields)


SHARD_SCHEMAS: dict[str, pa.Schema] = {
    "s2l2a": _s2_schema(S2_BANDS_L2A),
    "s2l1c": _s2_schema(S2_BANDS_L1C),
    "dem": pa.schema([
        pa.field("grid_cell", pa.string()),
        pa.field("thumbnail", pa.binary()),
        pa.field("compressed", pa.binary()),
        pa.field("DEM", pa.binary()),
    ]),
}

METADATA_SCHEMA = pa.schema([
    pa.field("grid_cell", pa.string()),
    pa.field("grid_row_u", pa.int64()),
    pa.field("grid_col_r", pa.int64()),
    pa.field("product_id", pa.string()),
    pa.field("timestamp", pa.timestamp("us")),
    pa.field("cloud_cover", pa.float64()),
    pa.field("nodata", pa.float64()),
    pa.field("centre_lat", pa.float64()),
    pa.field("centre_lon", pa.float64()),
    pa.field("crs", pa.string()),
    pa.field("parquet_url", pa.string()),
    pa.field("parquet_row", pa.int64()),
])


@dataclass(frozen=True)
class RasterSpec:
    """What a decoded raster column must look like: dtype and side length in pixels."""

    dtype: np.dtype
    side_px: int


TILE_SIDE_M = 10_680


def raster_spec(source: str, column: str) -> RasterSpec:
    """The expected dtype and shape of a GeoTIFF column (e.g. B04 -> uint16, 1068 px)."""
    if source == "dem":
        if column != "DEM":
            raise KeyError(f"column {column!r} of a DEM shard is not a raster column")
        return RasterSpec(np.dtype("float32"), TILE_SIDE_M // DEM_RESOLUTION_M)
    if column not in S2_BAND_RESOLUTION_M:
        raise KeyError(f"column {column!r} of an {source} shard is not a raster column")
    dtype = np.dtype("uint8") if column == "cloud_mask" else np.dtype("uint16")
    return RasterSpec(dtype, TILE_SIDE_M // S2_BAND_RESOLUTION_M[column])


def raster_columns(source: str) -> tuple[str, ...]:
    """Every GeoTIFF column of a source, in schema order."""
    if source == "dem":
        return ("DEM",)
    bands = S2_BANDS_L1C if source == "s2l1c" else S2_BANDS_L2A
    return bands + ("cloud_mask",)
