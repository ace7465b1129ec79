"""GeoTIFF bytes <-> numpy arrays with their CRS and transform (rasterio MemoryFile)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

# Quiet GDAL: corrupt bytes are reported by our own errors, not by GDAL's stderr chatter.
_GDAL_ENV = {"CPL_LOG": "/dev/null", "GDAL_PAM_ENABLED": "NO"}


@dataclass(frozen=True)
class Raster:
    """One decoded band: `array` (rows, cols), `crs` as "EPSG:n", `transform`, `nodata` value or None."""

    array: np.ndarray
    crs: str
    transform: Affine
    nodata: float | None = None


def encode_geotiff(
    array: np.ndarray,
    crs: str,
    transform: Affine,
    nodata: float | None = None,
    compress: str = "zstd",
    tile_px: int = 256,
    level: int = 3,
) -> bytes:
    """Encode a 2-D array as a tiled, compressed single-band GeoTIFF and return its bytes.

    Args:
        array: (rows, cols) array; its dtype is kept.
        crs: e.g. "EPSG:32632".
        transform: pixel -> CRS affine transform.
        nodata: the no-data value to record in the file, or None.
        compress: GDAL compression ("zstd", "deflate", "lzw").
        tile_px: internal tile size; tiles larger than the raster fall back to strips.
        level: compression level; ZSTD 3 is ~3x faster than GDAL's default 9 for ~3 % more bytes.
    """
    if array.ndim != 2:
        raise ValueError(f"encode_geotiff expects a 2-D array, got shape {array.shape}")
    rows, cols = array.shape
    # Horizontal differencing for integers, floating-point predictor for floats.
    predictor = 3 if np.issubdtype(array.dtype, np.floating) else 2
    profile = dict(
        driver="GTiff", height=rows, width=cols, count=1, dtype=array.dtype.name, crs=crs,
        transform=transform, nodata=nodata, compress=compress, predictor=predictor,
    )
    if compress.lower() == "zstd":
        profile["zstd_level"] = level
    elif compress.lower() == "deflate":
        profile["zlevel"] = level
    if rows >= tile_px and cols >= tile_px:
        profile.update(tiled=True, blockxsize=tile_px, blockysize=tile_px)
    with rasterio.Env(**_GDAL_ENV), MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(array, 1)
        return memfile.read()


def decode_geotiff(data: bytes | memoryview) -> Raster:
    """Decode single-band GeoTIFF bytes. Raises rasterio errors on corrupt input (callers add context)."""
    with rasterio.Env(**_GDAL_ENV), MemoryFile(data) as memfile, memfile.open() as src:
        array = src.read(1)
        crs = src.crs.to_string() if src.crs is not None else ""
        return Raster(array=array, crs=crs, transform=src.transform, nodata=src.nodata)
