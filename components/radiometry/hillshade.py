"""Terrain shading: how bright a DEM's ground is under a given sun (Lambert's cosine law).

One shading serves the whole project, each caller with its own sun:

- the synthetic world lights every scene with the sun of its acquisition (``sun_position`` in
  :mod:`components.majortom.synthetic.render`) and draws its DEM thumbnails under a Sentinel-2
  morning sun;
- exported previews and evaluation grids use the cartographic sun from the north-west
  (:data:`components.export.terrain.PREVIEW_SUN`);
- the RGB / DEM coherence metric tries suns from every direction.

Everything is float32: the synthetic world's bytes depend on it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Sun", "gradients", "hillshade", "shade_from_gradients"]


class Sun(NamedTuple):
    """Where the light comes from.

    Attributes:
        azimuth_deg (float): degrees clockwise from north (150: a south-eastern morning sun).
        altitude_deg (float): degrees above the horizon.
    """

    azimuth_deg: float
    altitude_deg: float


def gradients(dem: np.ndarray, pixel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Surface gradient (dz/d east, dz/d north) in m/m, float32, central differences.

    Rows run southwards, hence the sign flip on axis 0.

    Args:
        dem (np.ndarray): elevations in metres (2-D, at least 2 x 2), row 0 north.
        pixel_m (float): pixel spacing in metres.
    """
    d_row, d_col = np.gradient(np.asarray(dem, dtype=np.float32), np.float32(pixel_m))
    return d_col, -d_row


def shade_from_gradients(gx: np.ndarray, gy: np.ndarray, sun: Sun) -> np.ndarray:
    """Lambertian shading from precomputed gradients (see :func:`gradients`); float32 in [0, 1].

    Args:
        gx (np.ndarray): dz/d east (float32).
        gy (np.ndarray): dz/d north (float32).
        sun (Sun): the light.
    """
    az, alt = np.deg2rad(sun.azimuth_deg), np.deg2rad(sun.altitude_deg)
    sx, sy, sz = np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt)
    # Unit normal (-gx, -gy, 1) / |.| dotted with the unit vector pointing at the sun.
    shade = np.float32(sz) - gx * np.float32(sx) - gy * np.float32(sy)
    shade /= np.sqrt(np.float32(1.0) + gx * gx + gy * gy)
    return np.clip(shade, 0.0, 1.0, out=shade)


def hillshade(dem: np.ndarray, pixel_m: float, sun: Sun) -> np.ndarray:
    """Lambertian hillshade: cosine of the angle between the surface normal and the sun.

    Args:
        dem (np.ndarray): elevations in metres (2-D), row 0 north; NaN where unknown.
        pixel_m (float): pixel spacing in metres.
        sun (Sun): the light (no default: each caller says whose sun it draws with).

    Returns:
        np.ndarray: float32 (H, W) in [0, 1]; flat ground gives sin(altitude), NaN where the DEM is
        NaN (the gradients there take the mean of the known elevations).
    """
    dem = np.asarray(dem)
    valid = np.isfinite(dem)
    if min(dem.shape) < 2:  # no gradient across a single row or column: lit as flat ground
        shade = np.full(dem.shape, np.sin(np.deg2rad(sun.altitude_deg)), dtype=np.float32)
    elif valid.all():
        return shade_from_gradients(*gradients(dem, pixel_m), sun)
    else:
        # The fill value in float64 whatever the DEM's dtype, so a float32 and a float64 DEM shade alike.
        fill = dem[valid].astype(np.float64).mean() if valid.any() else np.float64(0.0)
        shade = shade_from_gradients(*gradients(np.where(valid, dem, fill), pixel_m), sun)
    shade[~valid] = np.nan
    return shade
