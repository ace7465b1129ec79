"""What every region layer shares: the protocol, point checks and polygon repair.

Pure components: no Prefect, no network, no global state.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import shapely

#: Mean Earth radius (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0  # ~111 195 m per degree of latitude


@runtime_checkable
class RegionLayer(Protocol):
    """What a caption builder needs from a region layer."""

    name: str
    source: str  # human-readable provenance
    is_proxy: bool  # True when the values approximate another dataset (biome from climate)
    columns: tuple[str, ...]

    def lookup(self, lat: Any, lon: Any) -> pd.DataFrame:
        """One row per point, columns ``self.columns``, ``None`` where nothing applies."""
        ...


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing (executing) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed; it ships the layer data")
    return Path(list(spec.submodule_search_locations)[0])


def dist_version(dist: str) -> str:
    """The installed version of distribution `dist` (for a layer's provenance), or "unknown version"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - defensive
        return "unknown version"


def check_distance(max_distance_m: Any) -> float:
    """`max_distance_m` as a float of metres; raises ValueError unless it is finite and >= 0."""
    try:
        value = float(max_distance_m)
    except (TypeError, ValueError):
        raise ValueError(f"max_distance_m must be a number of metres, got {max_distance_m!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"max_distance_m must be finite and >= 0, got {max_distance_m!r}")
    return value


def prepare_points(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten lat/lon (scalars or equal-length arrays) to float64.

    Returns ``(lat, lon, valid)`` with lon normalised to [-180, 180) (so 180 -> -180) and
    ``valid`` False where a coordinate is NaN/inf.  Latitudes beyond +-90 are an error.
    """
    la = np.asarray(lat, dtype=np.float64)
    lo = np.asarray(lon, dtype=np.float64)
    if la.ndim == 0:
        la = la.reshape(1) if lo.ndim == 0 else np.full(lo.shape, float(la))
    if lo.ndim == 0:
        lo = np.full(la.shape, float(lo))
    if la.shape != lo.shape:
        raise ValueError(f"lat and lon must have the same length, got {la.shape} and {lo.shape}")
    la = la.ravel()
    lo = lo.ravel()
    valid = np.isfinite(la) & np.isfinite(lo)
    if np.any(np.abs(la[valid]) > 90.0):
        bad = la[valid][np.abs(la[valid]) > 90.0][:3]
        raise ValueError(f"latitude must be within [-90, 90], got e.g. {bad.tolist()}")
    lo = np.where(valid, np.mod(lo + 180.0, 360.0) - 180.0, lo)
    # fmod rounding can give exactly 180.0 for tiny negative inputs; keep the half-open range
    lo[lo >= 180.0] -= 360.0
    return la, lo, valid


def object_frame(data: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """DataFrame of object columns (keeps ``None``; pandas 3 would otherwise infer ``str``)."""
    return pd.DataFrame({col: pd.Series(values, dtype=object) for col, values in data.items()})


def _polygons_of(geom: Any) -> list[shapely.Polygon]:
    """Non-empty Polygon parts of any geometry (multi-parts and collections flattened)."""
    if geom is None or shapely.is_empty(geom):
        return []
    if isinstance(geom, shapely.Polygon):
        return [geom]
    if isinstance(geom, (shapely.MultiPolygon, shapely.GeometryCollection)):
        out: list[shapely.Polygon] = []
        for part in shapely.get_parts(geom):
            out.extend(_polygons_of(part))
        return out
    return []  # points and lines never contain a point in the caption sense


def valid_polygons(geom: Any) -> list[shapely.Polygon]:
    """Polygon parts of ``geom`` after repairing it (e.g. rings that self-intersect)."""
    if geom is None or shapely.is_empty(geom):
        return []
    if not shapely.is_valid(geom):
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return [p for p in _polygons_of(geom) if p.area > 0]
