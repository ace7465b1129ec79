"""Any OGR-readable polygon file (GeoPackage, shapefile, GeoJSON, ...) as a region layer."""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.captions.layers.polygons import PolygonIndex, PolygonLayer


def _field_values(series: pd.Series) -> list[Any]:
    """Plain Python values with None for missing; integral float columns become int.

    (RESOLVE stores BIOME_NUM as a double: 4.0 -> 4.)
    """
    values = series.to_numpy(dtype=object)
    missing = np.array([v is None or (not isinstance(v, (str, bytes)) and bool(pd.isna(v))) for v in values], dtype=bool)
    present = [v for v, m in zip(values, missing) if not m]
    integral = pd.api.types.is_float_dtype(series.dtype) and all(float(v).is_integer() for v in present)
    out: list[Any] = []
    for v, m in zip(values, missing):
        if m:
            out.append(None)
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if integral:
            v = int(v)
        out.append(v)
    return out


def read_field(path: str | Path, field: str, layer: str | int | None = None) -> list[Any]:
    """One attribute column of a table, without geometry: a vector file (shapefile, its .dbf,
    GeoPackage, GeoJSON, ...), a .csv or a .parquet. ValueError naming the file and the fields
    it has when ``field`` is not one of them."""
    import pyogrio

    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        frame = pd.read_csv(path, dtype=str) if suffix == ".csv" else pd.read_parquet(path)
    else:
        try:
            frame = pyogrio.read_dataframe(path, layer=layer, read_geometry=False)
        except Exception as exc:
            raise ValueError(f"cannot read {path} as a vector file or table: {exc}") from exc
    if field not in frame.columns:
        raise ValueError(f"{path}: no field {field!r}; fields that exist: {[str(c) for c in frame.columns]}")
    return _field_values(frame[field])


def _read_vector(path: Path, attributes: Mapping[str, str], layer: str | int | None) -> PolygonIndex:
    import geopandas as gpd
    import pyogrio

    where = f"{path}" + (f" (layer {layer!r})" if layer is not None else "")
    if not path.exists():
        raise ValueError(f"vector layer file {path} does not exist")
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:
        try:
            layers = [str(row[0]) for row in pyogrio.list_layers(path)]
        except Exception:
            layers = []
        hint = f"; layers in the file: {layers}" if layers else ""
        raise ValueError(f"cannot read vector layer file {where}: {exc}{hint}") from exc
    fields = [str(f) for f in info["fields"]]
    missing = [f for f in attributes.values() if f not in fields]
    if missing:
        raise ValueError(
            f"vector layer file {where}: field(s) {missing} not found "
            f"(asked for {dict(attributes)}); fields that exist: {fields}"
        )
    wanted = list(dict.fromkeys(attributes.values()))
    try:
        gdf = gpd.read_file(path, layer=layer, columns=wanted, engine="pyogrio")
    except Exception as exc:
        raise ValueError(f"cannot read vector layer file {where}: {exc}") from exc
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if gdf.crs is None:
        # No CRS: only accept coordinates that can be lon/lat (GeoJSON is always WGS84).
        if len(gdf):
            x0, y0, x1, y1 = gdf.total_bounds
            if x0 < -180.5 or x1 > 180.5 or y0 < -90.5 or y1 > 90.5:
                raise ValueError(
                    f"vector layer file {where} has no CRS and its bounds "
                    f"{[x0, y0, x1, y1]} are not longitude/latitude in [-180, 180]; give the file a CRS"
                )
    elif gdf.crs.to_epsg() != 4326:
        # Note: polygons must already be split at the antimeridian (RESOLVE and Natural
        # Earth are); reprojecting a projected polygon that crosses it cannot fix that.
        gdf = gdf.to_crs(epsg=4326)
    geoms = list(gdf.geometry.values)
    values = {out: _field_values(gdf[field]) for out, field in attributes.items()}
    try:
        return PolygonIndex(geoms, values)
    except ValueError as exc:
        raise ValueError(f"vector layer file {where}: {exc} (found {info.get('geometry_type')})") from exc


@lru_cache(maxsize=8)
def _vector_index(
    path: str, mtime_ns: int, size: int, layer: str | int | None, attributes: tuple[tuple[str, str], ...]
) -> PolygonIndex:
    # mtime/size are part of the cache key only, so an edited file is read again
    return _read_vector(Path(path), dict(attributes), layer)


class VectorLayer(PolygonLayer):
    """Polygons from any OGR-readable file, with ``attributes`` = {output column: field}.

    E.g. RESOLVE Ecoregions 2017:
    ``VectorLayer("Ecoregions2017.shp", {"ecoregion": "ECO_NAME", "biome_name":
    "BIOME_NAME", "biome_num": "BIOME_NUM"})``.  The file is reprojected to EPSG:4326.
    A missing file, unreadable file or missing field raises ``ValueError`` naming the file,
    the missing field(s) and the fields that do exist.  Parsed files are cached per
    process (keyed by path, modification time, size, layer and attributes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        attributes: Mapping[str, str],
        layer: str | int | None = None,
        max_distance_m: float = 0.0,
        name: str | None = None,
        *,
        is_proxy: bool = False,
    ):
        if not isinstance(attributes, Mapping) or not attributes:
            raise ValueError(
                f"attributes must be a non-empty mapping of output column -> field name, got {attributes!r}"
            )
        bad = {k: v for k, v in attributes.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            raise ValueError(f"attributes must map str -> str, got {bad!r}")
        resolved = Path(path).expanduser().resolve()
        if not resolved.exists():
            raise ValueError(f"vector layer file {resolved} does not exist")
        stat = resolved.stat()
        index = _vector_index(str(resolved), stat.st_mtime_ns, stat.st_size, layer, tuple(attributes.items()))
        import pyogrio

        layer_txt = f", layer {layer!r}" if layer is not None else ""
        super().__init__(
            index,
            {col: col for col in attributes},
            name=name or resolved.stem,
            source=f"{resolved}{layer_txt} (fields {dict(attributes)}) read with pyogrio {pyogrio.__version__}",
            is_proxy=is_proxy,
            max_distance_m=max_distance_m,
        )
        self.path = resolved
        self.layer = layer
        self.attributes = dict(attributes)

    def __reduce__(self):
        # pickle by parameters: the receiving process re-reads (and caches) the file
        return (
            _make_vector_layer,
            (str(self.path), self.attributes, self.layer, self.max_distance_m, self.name, self.is_proxy),
        )


def _make_vector_layer(path, attributes, layer, max_distance_m, name, is_proxy) -> VectorLayer:
    return VectorLayer(path, attributes, layer=layer, max_distance_m=max_distance_m, name=name, is_proxy=is_proxy)
