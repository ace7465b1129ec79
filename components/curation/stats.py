"""Per-cell statistics, computed while each cell is decoded once.

Everything later stages need from the rasters is measured here: cloud and no-data fractions per
source, DEM statistics and the landform inputs the captions stage classifies (Hammond 1964 as
reimplemented by Karagulle et al. 2017): the share of gentle slope (< 8 %, with the pixel spacing
in metres), local relief (99th - 1st percentile) and the profile (share of the gentle land in the
upper half of the relief).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.captions.landform import landform_inputs

DEM_PIXEL_M = 30.0


def image_statistics(rgb: Sequence[np.ndarray], cloud_mask: np.ndarray, cloud_classes: Sequence[int]) -> dict:
    """No-data (all bands 0) and cloud fractions of one Sentinel-2 tile, and its invalid mask.

    Returns {"shape": side in px, "nodata_fraction", "cloud_fraction" (of the data pixels),
    "invalid": bool array (no data or cloud/shadow)}.
    """
    nodata = np.logical_and.reduce([band == 0 for band in rgb])
    cloud = np.isin(cloud_mask, np.asarray(cloud_classes, dtype=cloud_mask.dtype)) & ~nodata
    n_data = int((~nodata).sum())
    return {
        "shape": int(rgb[0].shape[0]),
        "nodata_fraction": float(nodata.mean()),
        "cloud_fraction": float(cloud.sum() / n_data) if n_data else 1.0,
        "invalid": nodata | cloud,
    }


def dem_statistics(dem: np.ndarray, nodata_value: float | None) -> dict:
    """Finite fraction, elevation statistics and landform inputs of a DEM tile (metres, 30 m)."""
    valid = np.isfinite(dem)
    if nodata_value is not None and np.isfinite(nodata_value):
        valid &= dem != nodata_value
    stats = {"shape": int(dem.shape[0]), "finite_fraction": float(valid.mean())}
    if valid.any():
        values = dem[valid].astype(np.float64)
        p1, p50, p99 = np.percentile(values, [1.0, 50.0, 99.0])
        stats.update(mean_m=float(values.mean()), min_m=float(values.min()), max_m=float(values.max()),
                     p01_m=float(p1), p50_m=float(p50), p99_m=float(p99))
    else:
        stats.update(mean_m=np.nan, min_m=np.nan, max_m=np.nan, p01_m=np.nan, p50_m=np.nan, p99_m=np.nan)
    stats.update(landform_inputs(dem, DEM_PIXEL_M, valid))
    stats["valid"] = valid
    return stats


def valid_fraction(image_invalid: np.ndarray, dem_valid: np.ndarray | None) -> float:
    """Share of image pixels usable for training: data, no cloud, and a valid DEM under them."""
    usable = ~image_invalid
    if dem_valid is not None:
        factor = image_invalid.shape[0] // dem_valid.shape[0]
        # Each 30 m DEM pixel covers a factor x factor block of 10 m image pixels.
        usable = usable & np.kron(dem_valid, np.ones((factor, factor), dtype=bool))[: usable.shape[0], : usable.shape[1]]
    return float(usable.mean())
