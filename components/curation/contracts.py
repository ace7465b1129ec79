"""Data contracts as great-expectations (GX 1.x) suites, and running them on pandas tables.

Three suites, built from one params dict (``DEFAULT_CONTRACT_PARAMS`` documents each key):

- ``metadata_suite("s2l2a" | "s2l1c", params)``: a Major TOM Sentinel-2 metadata.parquet, after
  the duplicate rule (``components.majortom.shards.DUPLICATE_RULE``), so grid_cell is unique.
- ``metadata_suite("dem", params)``: Core-DEM metadata: grid, uniqueness and CRS only (GLO-30 comes
  from 2011-2015 radar acquisitions: no cloud cover, no Sentinel-2 era).
- ``stats_suite(params)``: the per-cell statistics table (``components.curation.measure``).

Grid consistency and the UTM zone are not built-in expectations. They are built-in GX
expectations on *derived columns* computed in one vectorised pass over the table
(:func:`grid_columns`), so GX sees the numbers and reports counts and examples natively:

==================== ==========================================================================
derived column       meaning (NaN where the inputs it needs are missing or malformed; then an
                     input expectation -- format, not-null, CRS format -- fails instead)
==================== ==========================================================================
name_row_u           signed row parsed from grid_cell (U >= 0, D < 0); equal to grid_row_u
name_col_r           signed column parsed from grid_cell (R >= 0, L < 0); equal to grid_col_r
name_off_grid_steps  how many grid steps the named cell lies outside the 10 km grid (0 = on it)
centre_offset_m      metres between (centre_lat, centre_lon) and the centre of the cell's
                     10,680 m tile cut in the tile's own CRS (the ``crs`` column), <= tolerance
crs_zone_offset      UTM zone of ``crs`` minus the zone of the cell's grid point, in [-1, 1]
crs_hemisphere_lat   the cell's mid latitude, positive on the CRS's side of the equator
                     (326zz: north, 327zz: south), >= -equator_margin_deg
==================== ==========================================================================

Decisions (the UTM rules):

- Core tiles are cut in the Sentinel-2 *product's* UTM zone, which for a few percent of cells is
  not the zone of the cell's own grid point (Sentinel-2 MGRS tiles overlap the zone edges). So the
  centre is computed in the tile's CRS, and the zone may be the grid point's zone or a neighbour
  (``max_zone_offset``, default 1). The grid point's zone is the regular 6-degree zone or the
  Norway / Svalbard exception zone, whichever is closer to the CRS's zone (Svalbard's zones 31,
  33, 35, 37 are 12 degrees wide, so their neighbours are two numbers away).
- Hemisphere: a 326zz tile must lie north of the equator, a 327zz one south, except within
  ``equator_margin_deg`` (default 0.1 degrees, about one cell) of it: MGRS tiles reach 9.8 km past
  the equator, so a product of either hemisphere can cover the cells in rows 0U and 1D.
- grid_cell format: ``^(0U|[1-9][0-9]*[UD])_(0R|[1-9][0-9]*[RL])$`` (``GRID_CELL_REGEX``): the
  issue's ``^(0|[1-9][0-9]*)[UD]_(0|[1-9][0-9]*)[RL]$`` without ``0D`` / ``0L``, names the grid
  never writes (its row and column 0 are ``0U`` and ``0R``).

Running: :func:`validate_table` (one GX validation, a :class:`ContractResult` with a readable
:meth:`ContractResult.summary`), :func:`row_failures` (which rows break which row-level
expectation, vectorised, for reject reasons). The GX context is ephemeral by default;
``get_context(root)`` gives a file context under ``root`` (e.g. ``data/curated/validation``)
whose Data Docs :func:`build_data_docs` builds.

GX 1.24 traps this module works around:

- "between" is vectorised only for int64 / float64 and datetime64[ns] columns; pandas 3 reads
  parquet timestamps as datetime64[us], and those, nullable and float32 columns take a
  per-element Python path (~5 s per 2 million rows). ``prepare_table`` casts.
- GX fingerprints (hashes) the whole batch DataFrame on every run (~0.7 s per 2 million strings)
  and filters the whole batch per expectation: only the checked columns are handed over.
- ``unexpected_index_column_names`` builds a Python list over *all* failing rows (30 s for a
  million), and SUMMARY's index lists and value counts cost +50 %: results are BASIC (counts,
  first failing values) and the grid_cell of the first failing rows comes from the row predicates.
- A ValidationDefinition stores itself on its first run; a second one with the same name fails
  unless registered with ``add_or_update``.
- Progress bars are on by default (``ProgressBarsConfig(globally=False)`` turns them off).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.atomic import write_text_atomic
from components.majortom.grid import EARTH_RADIUS_KM, default_grid, utm_epsg

# GX would otherwise try to send usage statistics; this project runs offline.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402

__all__ = [
    "DEFAULT_CONTRACT_PARAMS",
    "DERIVED_COLUMNS",
    "ContractResult",
    "Failure",
    "build_data_docs",
    "get_context",
    "grid_columns",
    "metadata_suite",
    "prepare_table",
    "row_failures",
    "stats_suite",
    "validate_table",
]

DEFAULT_CONTRACT_PARAMS: dict[str, Any] = {
    # Sentinel-2A launch: no Sentinel-2 product is older (ISO date, inclusive).
    "s2_era_start": "2015-06-23",
    # Optional latest acquisition (ISO date, inclusive); None = no upper bound.
    "s2_era_end": None,
    # Metadata centre vs the centre of the cell's tile in its CRS, metres.
    "centre_tolerance_m": 50.0,
    # The tile's UTM zone may differ from the grid point's by at most this many zones.
    "max_zone_offset": 1,
    # A 326zz / 327zz tile may reach this far (degrees of latitude) across the equator.
    "equator_margin_deg": 0.1,
    # |L1C - L2A acquisition time| of one cell, days (nulls allowed: no L1C).
    "max_date_gap_days": 3.0,
    # Plausible Copernicus DEM elevations, metres [min, max] (Dead Sea shore ~ -430, Everest 8849).
    "dem_range_m": [-500.0, 9000.0],
    # Side of a Core tile in pixels: 10,680 m at 10 m (Sentinel-2) and at 30 m (DEM).
    "image_px": 1068,
    "dem_px": 356,
}

METADATA_SOURCES = ("s2l2a", "s2l1c", "dem")

# Non-capturing groups: pandas warns about capturing groups in str.contains (GX's regex check).
GRID_CELL_REGEX = r"^(?:0U|[1-9][0-9]*[UD])_(?:0R|[1-9][0-9]*[RL])$"
UTM_CRS_REGEX = r"^(?:EPSG:)?32[67](?:0[1-9]|[1-5][0-9]|60)$"
_CELL_PARTS = r"^(?P<row>0|[1-9][0-9]*)(?P<ns>[UD])_(?P<col>0|[1-9][0-9]*)(?P<ew>[RL])$"
_CRS_PARTS = re.compile(r"(?:EPSG:)?(32[67])(0[1-9]|[1-5][0-9]|60)")

DERIVED_COLUMNS = ("name_row_u", "name_col_r", "name_off_grid_steps", "centre_offset_m",
                   "crs_zone_offset", "crs_hemisphere_lat")

_META_KEY = "mesa_contract"
_DATASOURCE = "mesa_contracts"
_BATCH_DEFINITION = "whole_table"
_EXAMPLES = 5
_MEAN_EARTH_RADIUS_M = 6_371_008.8
# A zone further than this from the grid point is reported by crs_zone_offset; the centre is not
# computed there (a transverse Mercator that far off its meridian is no basis for a distance).
_CENTRE_MAX_ZONES = 3


# ---------------------------------------------------------------------------------------------
# Params


def _params(params: dict | None) -> dict[str, Any]:
    """DEFAULT_CONTRACT_PARAMS overlaid with `params`; unknown keys are refused (typos)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_CONTRACT_PARAMS))
    if unknown:
        raise ValueError(f"unknown contract params {unknown}; known keys: {sorted(DEFAULT_CONTRACT_PARAMS)}")
    merged = {**DEFAULT_CONTRACT_PARAMS, **params}
    low, high = merged["dem_range_m"]
    if not low < high:
        raise ValueError(f"dem_range_m must be [min, max] with min < max, got {merged['dem_range_m']!r}")
    merged["dem_range_m"] = [float(low), float(high)]
    for key in ("s2_era_start", "s2_era_end"):  # YAML gives dates, CLIs strings: keep ISO text
        if merged[key] is not None:
            stamp = pd.Timestamp(merged[key])
            merged[key] = stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()
    return merged


def _date(value) -> dt.datetime:
    return pd.Timestamp(value).to_pydatetime().replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------
# Suites


def _expect(cls, check: str, description: str, **kwargs):
    """A GX expectation tagged with the contract's name for the rule (``meta["check"]``)."""
    return cls(meta={"check": check}, description=description, **kwargs)


def _not_null(columns, why: str) -> list:
    return [_expect(gxe.ExpectColumnValuesToNotBeNull, "required", f"{why}: {column} is set", column=column)
            for column in columns]


def _grid_expectations(p: dict) -> list:
    """Format, uniqueness, grid consistency and CRS: shared by the S2 and DEM metadata suites."""
    return [
        _expect(gxe.ExpectColumnValuesToMatchRegex, "grid_cell_format",
                "grid_cell is a Major TOM name like 454U_120R (unpadded, no 0D / 0L)",
                column="grid_cell", regex=GRID_CELL_REGEX),
        _expect(gxe.ExpectColumnValuesToBeUnique, "grid_cell_unique",
                "one row per grid cell (after the duplicate rule)", column="grid_cell"),
        _expect(gxe.ExpectColumnValuesToBeBetween, "grid_cell_on_grid",
                "the named cell exists on the 10 km grid (0 steps outside it)",
                column="name_off_grid_steps", min_value=0, max_value=0),
        _expect(gxe.ExpectColumnPairValuesToBeEqual, "grid_row_matches_name",
                "grid_row_u is the row in grid_cell", column_A="grid_row_u", column_B="name_row_u",
                ignore_row_if="either_value_is_missing"),
        _expect(gxe.ExpectColumnPairValuesToBeEqual, "grid_col_matches_name",
                "grid_col_r is the column in grid_cell", column_A="grid_col_r", column_B="name_col_r",
                ignore_row_if="either_value_is_missing"),
        _expect(gxe.ExpectColumnValuesToBeBetween, "centre_matches_cell",
                "centre_lat/centre_lon is the centre of the cell's tile in its CRS (metres off)",
                column="centre_offset_m", min_value=0, max_value=float(p["centre_tolerance_m"])),
        _expect(gxe.ExpectColumnValuesToBeBetween, "centre_lat_range", "centre latitude in degrees",
                column="centre_lat", min_value=-90.0, max_value=90.0),
        _expect(gxe.ExpectColumnValuesToBeBetween, "centre_lon_range", "centre longitude in degrees",
                column="centre_lon", min_value=-180.0, max_value=180.0),
        _expect(gxe.ExpectColumnValuesToMatchRegex, "crs_is_utm", "crs is a WGS 84 UTM zone (EPSG:326zz / 327zz)",
                column="crs", regex=UTM_CRS_REGEX),
        _expect(gxe.ExpectColumnValuesToBeBetween, "crs_zone",
                "the tile's UTM zone is the grid point's zone or a neighbour (zones off)",
                column="crs_zone_offset", min_value=-float(p["max_zone_offset"]),
                max_value=float(p["max_zone_offset"])),
        _expect(gxe.ExpectColumnValuesToBeBetween, "crs_hemisphere",
                "the cell lies on the CRS's side of the equator (degrees, margin allowed)",
                column="crs_hemisphere_lat", min_value=-float(p["equator_margin_deg"])),
    ]


def metadata_suite(source: str, params: dict | None = None) -> gx.ExpectationSuite:
    """The contract of one source's metadata.parquet (after the duplicate rule).

    Args:
        source (str): "s2l2a", "s2l1c" (Sentinel-2 metadata) or "dem" (Core-DEM metadata).
        params (dict | None): overrides of ``DEFAULT_CONTRACT_PARAMS`` (default: none).
    Returns:
        gx.ExpectationSuite: named ``"{source}_metadata"``; its ``meta`` records the source and
        the params, so :func:`validate_table` knows to add the derived grid columns.
    Raises:
        ValueError: for an unknown source or unknown params keys.
    """
    if source not in METADATA_SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {METADATA_SOURCES}")
    p = _params(params)
    required = ["grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon", "crs"]
    if source != "dem":
        required += ["timestamp", "cloud_cover", "nodata"]
    expectations = _not_null(required, "every metadata row names its cell, location and CRS")
    expectations += _grid_expectations(p)
    if source != "dem":
        era_end = None if p["s2_era_end"] is None else _date(p["s2_era_end"])
        expectations += [
            _expect(gxe.ExpectColumnValuesToBeBetween, "cloud_cover_range", "cloud cover in percent",
                    column="cloud_cover", min_value=0.0, max_value=100.0),
            _expect(gxe.ExpectColumnValuesToBeBetween, "nodata_range", "no-data share as a fraction",
                    column="nodata", min_value=0.0, max_value=1.0),
            _expect(gxe.ExpectColumnValuesToBeBetween, "s2_era",
                    "acquired within the Sentinel-2 era", column="timestamp",
                    min_value=_date(p["s2_era_start"]), max_value=era_end),
        ]
    meta = {_META_KEY: {"table": "metadata", "source": source, "params": p}}
    return gx.ExpectationSuite(name=f"{source}_metadata", expectations=expectations, meta=meta)


def stats_suite(params: dict | None = None) -> gx.ExpectationSuite:
    """The contract of the per-cell statistics table (one row per paired cell).

    Columns checked: grid_cell (set, unique); s2l2a_shape / dem_shape (side in px: ``image_px``
    / ``dem_px``), s2l1c_shape (same, nulls allowed: no L1C); dem_finite_fraction and
    valid_fraction in [0, 1]; dem_min_m / dem_max_m within ``dem_range_m`` and min <= max;
    has_s2l2a / has_dem true (the S2 / DEM pairing); date_gap_days in [0, max_date_gap_days]
    (nulls allowed). s2l1c_shape and date_gap_days may be absent (no L1C source): they are then
    treated as all-null.

    Args:
        params (dict | None): overrides of ``DEFAULT_CONTRACT_PARAMS``.
    Returns:
        gx.ExpectationSuite: named ``"cell_stats"``.
    """
    p = _params(params)
    low, high = p["dem_range_m"]
    between = gxe.ExpectColumnValuesToBeBetween
    expectations = _not_null(["grid_cell", "has_s2l2a", "has_dem", "s2l2a_shape", "dem_shape",
                              "dem_finite_fraction", "valid_fraction"], "every measured cell has it")
    expectations += [
        _expect(gxe.ExpectColumnValuesToBeUnique, "grid_cell_unique", "one row per grid cell",
                column="grid_cell"),
        _expect(gxe.ExpectColumnValuesToBeInSet, "has_s2l2a", "the cell has its S2 L2A tile (pairing)",
                column="has_s2l2a", value_set=[True]),
        _expect(gxe.ExpectColumnValuesToBeInSet, "has_dem", "the cell has its DEM tile (pairing)",
                column="has_dem", value_set=[True]),
        _expect(gxe.ExpectColumnValuesToBeInSet, "image_shape", "S2 L2A tile side in pixels",
                column="s2l2a_shape", value_set=[int(p["image_px"])]),
        _expect(gxe.ExpectColumnValuesToBeInSet, "image_shape", "S2 L1C tile side in pixels (if any)",
                column="s2l1c_shape", value_set=[int(p["image_px"])]),
        _expect(gxe.ExpectColumnValuesToBeInSet, "dem_shape", "DEM tile side in pixels",
                column="dem_shape", value_set=[int(p["dem_px"])]),
        _expect(between, "dem_finite_fraction_range", "share of finite DEM pixels",
                column="dem_finite_fraction", min_value=0.0, max_value=1.0),
        _expect(between, "dem_range", "lowest DEM value in metres", column="dem_min_m",
                min_value=low, max_value=high),
        _expect(between, "dem_range", "highest DEM value in metres", column="dem_max_m",
                min_value=low, max_value=high),
        _expect(gxe.ExpectColumnPairValuesAToBeGreaterThanB, "dem_range", "DEM max >= DEM min",
                column_A="dem_max_m", column_B="dem_min_m", or_equal=True,
                ignore_row_if="either_value_is_missing"),
        _expect(between, "valid_fraction_range", "share of usable image pixels",
                column="valid_fraction", min_value=0.0, max_value=1.0),
        _expect(between, "date_gap", "days between the L1C and L2A acquisitions (if L1C)",
                column="date_gap_days", min_value=0.0, max_value=float(p["max_date_gap_days"])),
    ]
    meta = {_META_KEY: {"table": "stats", "params": p,
                        "optional_columns": ["s2l1c_shape", "date_gap_days"]}}
    return gx.ExpectationSuite(name="cell_stats", expectations=expectations, meta=meta)


# ---------------------------------------------------------------------------------------------
# Derived grid columns (one vectorised pass)


def _wrap_zones(delta: np.ndarray) -> np.ndarray:
    """Zone differences folded into [-30, 30) (zone 60 and zone 1 are neighbours)."""
    return np.mod(delta + 30.0, 60.0) - 30.0


def _distance_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres (haversine; < 0.5 % off the ellipsoid, ample for 50 m)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * _MEAN_EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _parse_names(names: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signed row, signed col, parsed) of grid_cell names; rows / cols are NaN where malformed."""
    if not isinstance(names.dtype, pd.StringDtype):
        names = names.astype("str")
    parts = pc.extract_regex(pa.array(names, from_pandas=True, type=pa.string()), _CELL_PARTS)
    field_ = lambda name: pc.struct_field(parts, name)  # noqa: E731
    # Digits as float64: a 30-digit row cannot overflow, it is simply off the grid.
    row = pc.cast(field_("row"), pa.float64()).to_numpy(zero_copy_only=False)
    col = pc.cast(field_("col"), pa.float64()).to_numpy(zero_copy_only=False)
    south = pc.fill_null(pc.equal(field_("ns"), "D"), False).to_numpy(zero_copy_only=False)
    west = pc.fill_null(pc.equal(field_("ew"), "L"), False).to_numpy(zero_copy_only=False)
    parsed = np.isfinite(row) & ~(south & (row == 0)) & ~(west & (col == 0))
    row = np.where(parsed, np.where(south, -row, row), np.nan)
    col = np.where(parsed, np.where(west, -col, col), np.nan)
    return row, col, parsed


def _parse_crs(crs: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(UTM zone, hemisphere sign +1 north / -1 south) of each crs value; NaN where not UTM."""
    codes, uniques = pd.factorize(crs, use_na_sentinel=True)
    zone_u = np.full(len(uniques) + 1, np.nan)  # the extra last slot is what code -1 (null) picks
    sign_u = np.full(len(uniques) + 1, np.nan)
    for i, value in enumerate(uniques):
        m = _CRS_PARTS.fullmatch(str(value))
        if m:
            zone_u[i], sign_u[i] = int(m.group(2)), (1.0 if m.group(1) == "326" else -1.0)
    return zone_u[codes], sign_u[codes]


def grid_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The derived columns the metadata suites check (see the module docstring), one pass.

    Args:
        frame (pd.DataFrame): metadata rows with grid_cell, centre_lat, centre_lon and crs.
    Returns:
        pd.DataFrame: ``DERIVED_COLUMNS`` as float64 columns, on ``frame``'s index (the
        tolerances live in the suite, not here).
    """
    return pd.DataFrame(_grid_arrays(frame), index=frame.index)


def _grid_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """:func:`grid_columns` as a dict of float64 arrays (no DataFrame consolidation)."""
    grid = default_grid()
    n = len(frame)
    row, col, parsed = _parse_names(frame["grid_cell"])

    # 1. Off-grid distance in grid steps: rows first, then the column range of the row.
    row0, row1 = int(grid.row_numbers[0]), int(grid.row_numbers[-1])
    r = np.where(parsed, row, 0.0)
    row_off = np.maximum(np.maximum(row0 - r, r - row1), 0.0)
    on_rows = parsed & (row_off == 0)
    ri = np.where(on_rows, r - row0, 0).astype(np.int64)
    west_col = (grid.right_counts[ri] - grid.col_counts[ri]).astype(np.float64)
    east_col = (grid.right_counts[ri] - 1).astype(np.float64)
    c = np.where(parsed, col, 0.0)
    col_off = np.maximum(np.maximum(west_col - c, c - east_col), 0.0)
    steps = np.where(on_rows, col_off, row_off)
    on_grid = on_rows & (col_off == 0)
    steps = np.where(parsed, steps, np.nan)

    # 2. The grid point of every cell on the grid, and its UTM zone (regular and exception).
    cells = np.flatnonzero(on_grid)
    rows_i, cols_i = row[cells].astype(np.int64), col[cells].astype(np.int64)
    lat0, lon0 = grid.cell_origin(rows_i, cols_i)
    regular_zone = np.floor((lon0 + 180.0) / 6.0) % 60 + 1
    special_zone = utm_epsg(lat0, lon0) % 100

    # 3. CRS: its zone against the grid point's, and its hemisphere against the cell's latitude.
    zone, sign = _parse_crs(frame["crs"])
    zone, sign = zone[cells], sign[cells]
    to_regular, to_special = _wrap_zones(zone - regular_zone), _wrap_zones(zone - special_zone)
    zone_offset = np.where(np.abs(to_special) < np.abs(to_regular), to_special, to_regular)
    row_step = 180.0 / math.ceil(math.pi * EARTH_RADIUS_KM / grid.dist_km)
    hemisphere_lat = (lat0 + row_step / 2) * sign

    # 4. Tile centres in each tile's own CRS, grouped per EPSG code (one pyproj call per code).
    centre_offset = np.full(cells.size, np.nan)
    usable = np.flatnonzero(np.abs(zone_offset) <= _CENTRE_MAX_ZONES)  # NaN compares False
    if usable.size:
        epsg = (np.where(sign[usable] > 0, 32600, 32700) + zone[usable]).astype(np.int64)
        order = np.argsort(epsg, kind="stable")
        bounds = np.flatnonzero(np.diff(epsg[order])) + 1
        tile_lat, tile_lon = np.empty(usable.size), np.empty(usable.size)
        for group in np.split(order, bounds):
            code = int(epsg[group[0]])
            pick = usable[group]
            tile_lat[group], tile_lon[group] = grid.cell_centre_latlon(rows_i[pick], cols_i[pick], epsg=code)
        lat = frame["centre_lat"].to_numpy(dtype=np.float64, na_value=np.nan)[cells[usable]]
        lon = frame["centre_lon"].to_numpy(dtype=np.float64, na_value=np.nan)[cells[usable]]
        centre_offset[usable] = _distance_m(lat, lon, tile_lat, tile_lon)

    out = {name: np.full(n, np.nan) for name in DERIVED_COLUMNS}
    out["name_row_u"], out["name_col_r"], out["name_off_grid_steps"] = row, col, steps
    out["centre_offset_m"][cells] = centre_offset
    out["crs_zone_offset"][cells] = zone_offset
    out["crs_hemisphere_lat"][cells] = hemisphere_lat
    return out


# ---------------------------------------------------------------------------------------------
# The table GX sees


def _contract_meta(suite: gx.ExpectationSuite) -> dict:
    meta = (suite.meta or {}).get(_META_KEY)
    if not meta:
        raise ValueError(f"suite {suite.name!r} was not built by metadata_suite() / stats_suite() "
                         f"(its meta lacks {_META_KEY!r})")
    return meta


def _columns_of(expectation) -> list[str]:
    """Checked columns of an Expectation or an ExpectationConfiguration (what results carry)."""
    kwargs = getattr(expectation, "configuration", expectation).kwargs
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return list(kwargs.get("column_list", []))


def prepare_table(df: pd.DataFrame, suite: gx.ExpectationSuite) -> pd.DataFrame:
    """The table a suite is run on: the columns it checks, derived columns, GX-friendly dtypes.

    Only the checked columns are kept (GX fingerprints the whole batch on every run), the index
    becomes 0..n-1 (GX reports failing rows by index), timestamps become naive datetime64[ns] and
    numbers int64 / float64 (the dtypes GX's "between" handles vectorised), and metadata tables
    get :func:`grid_columns`. Optional columns the table lacks are added as all-null.

    Args:
        df (pd.DataFrame): the table to validate.
        suite (gx.ExpectationSuite): from :func:`metadata_suite` or :func:`stats_suite`.
    Returns:
        pd.DataFrame: a new frame (``df`` is not modified).
    Raises:
        ValueError: naming the columns the suite needs and ``df`` lacks.
    """
    meta = _contract_meta(suite)
    derived = set(DERIVED_COLUMNS) if meta["table"] == "metadata" else set()
    needed = list(dict.fromkeys(c for e in suite.expectations for c in _columns_of(e)))
    inputs = [c for c in needed if c not in derived]
    optional = set(meta.get("optional_columns", []))
    missing = [c for c in inputs if c not in df.columns and c not in optional]
    if meta["table"] == "metadata":
        missing += [c for c in ("grid_cell", "centre_lat", "centre_lon", "crs")
                    if c not in df.columns and c not in missing]
    if missing:
        raise ValueError(f"the table lacks columns {missing} that suite {suite.name!r} checks "
                         f"(it has {list(df.columns)})")
    keep = [c for c in dict.fromkeys(inputs + (["grid_cell"] if "grid_cell" in df.columns else []))
            if c in df.columns]
    table = df[keep].reset_index(drop=True)
    for column in optional - set(df.columns):
        table[column] = np.nan
    for column in table.columns:
        values = table[column]
        if column == "timestamp" or pd.api.types.is_datetime64_any_dtype(values.dtype):
            if not pd.api.types.is_datetime64_any_dtype(values.dtype):  # strings: unparseable -> NaT
                values = pd.to_datetime(values, errors="coerce", utc=True)
            if getattr(values.dt, "tz", None) is not None:
                values = values.dt.tz_convert("UTC").dt.tz_localize(None)
            table[column] = values.astype("datetime64[ns]")
        elif pd.api.types.is_bool_dtype(values.dtype) or values.dtype == object:
            continue
        elif pd.api.types.is_integer_dtype(values.dtype) and not values.hasnans:
            table[column] = values.astype(np.int64)
        elif pd.api.types.is_numeric_dtype(values.dtype):
            table[column] = values.astype(np.float64)
    if derived:
        for name, values in _grid_arrays(table).items():
            table[name] = values
    return table


# ---------------------------------------------------------------------------------------------
# Contexts


_CONTEXTS: dict[str, Any] = {}
_LOCK = threading.Lock()  # GX contexts are not thread-safe; one validation at a time


def get_context(root: str | Path | None = None):
    """A GX data context, made once per process and root.

    Args:
        root (str | Path | None): None (default) for an in-memory (ephemeral) context; a folder
            (e.g. ``data/curated/validation``) for a file context under ``root/gx`` that keeps
            suites, validation results and the Data Docs site.
    Returns:
        The GX context, with progress bars off (they would flood stage logs).
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    key = "" if root is None else str(Path(root).resolve())
    with _LOCK:
        if key not in _CONTEXTS:
            if root is None:
                context = gx.get_context(mode="ephemeral")
            else:
                Path(root).mkdir(parents=True, exist_ok=True)
                context = gx.get_context(mode="file", project_root_dir=str(root))
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            _CONTEXTS[key] = context
        return _CONTEXTS[key]


def _batch_definition(context, asset_name: str):
    """The whole-DataFrame batch definition of `asset_name` (created on first use)."""
    try:
        source = context.data_sources.get(_DATASOURCE)
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas(_DATASOURCE)
    try:
        asset = source.get_asset(asset_name)
    except (KeyError, LookupError):
        asset = source.add_dataframe_asset(asset_name)
    try:
        return asset.get_batch_definition(_BATCH_DEFINITION)
    except (KeyError, LookupError):
        return asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)


def build_data_docs(context_root: str | Path) -> Path:
    """Build the Data Docs site of a file context (suites and every stored validation).

    Args:
        context_root (str | Path): the folder given to :func:`get_context`.
    Returns:
        Path: the site's ``index.html`` (open it in a browser).
    """
    from urllib.parse import unquote, urlparse

    context = get_context(context_root)
    with _LOCK:
        sites = context.build_data_docs()
    if not sites:
        raise RuntimeError(f"the GX context under {context_root} has no Data Docs site configured")
    return Path(unquote(urlparse(next(iter(sites.values()))).path))


# ---------------------------------------------------------------------------------------------
# Results


def _jsonable(value):
    """Plain JSON values (numpy scalars, timestamps, tuples, NaN -> None), recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    return str(value)


@dataclass
class Failure:
    """One failed expectation.

    Attributes:
        expectation (str): the GX expectation type, e.g. ``"expect_column_values_to_be_between"``.
        columns (list[str]): the column(s) it checks (two for column-pair expectations).
        check (str): the contract's name for the rule (e.g. ``"crs_zone"``), for reject reasons.
        unexpected_count (int | None): failing rows (None when the expectation raised).
        element_count (int | None): rows checked.
        kwargs (dict): the expectation's arguments (bounds, regex, value set), JSON values.
        examples (list): a few failing values as GX reports them (pairs for pair expectations).
        example_cells (list[str]): grid_cell of a few failing rows (when the table has one).
        error (str | None): the exception message when the expectation could not run.
    """

    expectation: str
    columns: list[str]
    check: str
    unexpected_count: int | None
    element_count: int | None
    kwargs: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)
    example_cells: list = field(default_factory=list)
    error: str | None = None

    @property
    def column(self) -> str:
        """The column(s), comma-separated."""
        return ", ".join(self.columns)

    def describe(self) -> str:
        """One readable line: expectation, column, rule, how many rows, examples."""
        bounds = ", ".join(f"{k}={v}" for k, v in self.kwargs.items()
                           if k not in ("column", "column_A", "column_B", "batch_id"))
        head = f"{self.expectation} on {self.column} [{self.check}{': ' + bounds if bounds else ''}]"
        if self.error is not None:
            return f"{head}: could not run: {self.error}"
        share = f" of {self.element_count:,}" if self.element_count else ""
        line = f"{head}: {self.unexpected_count:,}{share} rows failed"
        if any(v is not None for v in self.examples):
            line += "; e.g. values " + ", ".join(repr(v) for v in self.examples)
        if self.example_cells:
            line += "; cells " + ", ".join(str(c) for c in self.example_cells)
        return line


@dataclass
class ContractResult:
    """What one suite said about one table.

    Attributes:
        suite (str): the suite's name (e.g. ``"s2l2a_metadata"``).
        success (bool): every expectation passed.
        row_count (int): rows validated.
        expectation_count (int): expectations in the suite.
        failures (list[Failure]): failed expectations, in suite order.
        raw (dict): GX's validation result as plain JSON values (for MLflow / DVC).
    """

    suite: str
    success: bool
    row_count: int
    expectation_count: int
    failures: list[Failure]
    raw: dict

    def summary(self) -> str:
        """A readable multi-line summary: verdict, then one line per failed expectation."""
        verdict = "passed" if self.success else "FAILED"
        lines = [f"contract {self.suite} {verdict} on {self.row_count:,} rows: "
                 f"{len(self.failures)} of {self.expectation_count} expectations failed"]
        lines += [f"  - {failure.describe()}" for failure in self.failures]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"suite": self.suite, "success": self.success, "row_count": self.row_count,
                "expectation_count": self.expectation_count,
                "failures": [asdict(f) for f in self.failures], "gx": self.raw}

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically; :meth:`load_json` reads it back."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load_json(cls, path: str | Path) -> "ContractResult":
        data = json.loads(Path(path).read_text())
        return cls(suite=data["suite"], success=data["success"], row_count=data["row_count"],
                   expectation_count=data["expectation_count"],
                   failures=[Failure(**f) for f in data["failures"]], raw=data["gx"])


def validate_table(df: pd.DataFrame, suite: gx.ExpectationSuite, *, context=None,
                   examples: int = _EXAMPLES) -> ContractResult:
    """Run a contract on a table with GX.

    Args:
        df (pd.DataFrame): the table (a metadata.parquet after the duplicate rule, or the stats).
        suite (gx.ExpectationSuite): from :func:`metadata_suite` or :func:`stats_suite`.
        context: a GX context (default: :func:`get_context`'s ephemeral one). With a file context
            the suite, the validation definition and the result are stored there (Data Docs).
        examples (int): failing values / cells kept per failure (default 5).
    Returns:
        ContractResult: success, failures (expectation, columns, count, examples), raw result.
    Raises:
        ValueError: when ``df`` lacks a column the suite checks.
    """
    table = prepare_table(df, suite)
    context = context if context is not None else get_context()
    with _LOCK:
        stored = context.suites.add_or_update(suite)
        definition = context.validation_definitions.add_or_update(gx.ValidationDefinition(
            name=stored.name, data=_batch_definition(context, stored.name), suite=stored))
        # BASIC: counts and the first failing values. SUMMARY's index lists and value counts
        # filter the whole batch once more per expectation (+50 % time on 2 M rows).
        result = definition.run(batch_parameters={"dataframe": table},
                                result_format={"result_format": "BASIC",
                                               "partial_unexpected_count": max(examples, 1)})
    position = {e.id: i for i, e in enumerate(stored.expectations)}
    failures = []
    for item in sorted(result.results, key=lambda r: position.get(r.expectation_config.id, len(position))):
        if item.success:
            continue
        config = item.expectation_config
        res = item.result or {}
        error = None
        if item.exception_info and item.exception_info.get("raised_exception"):
            error = item.exception_info.get("exception_message")
        failures.append(Failure(
            expectation=config.type,
            columns=_columns_of(config),
            check=(config.meta or {}).get("check", config.type),
            unexpected_count=None if error else _jsonable(res.get("unexpected_count")),
            element_count=_jsonable(res.get("element_count")),
            kwargs=_jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
            examples=_jsonable(list(res.get("partial_unexpected_list") or [])[:examples]),
            example_cells=[] if error else _example_cells(table, config, examples),
            error=error,
        ))
    return ContractResult(suite=stored.name, success=bool(result.success), row_count=len(table),
                          expectation_count=len(stored.expectations), failures=failures,
                          raw=_jsonable(result.to_json_dict()))


def _example_cells(table: pd.DataFrame, config, count: int) -> list:
    """grid_cell of the first `count` failing rows (GX's partial values come in the same order).

    Found with the row predicates of :func:`row_failures` rather than GX's
    ``unexpected_index_column_names``, which costs Python work per failing row.
    """
    if "grid_cell" not in table.columns:
        return []
    bad = _violations(table, config)
    if bad is None:
        return []
    return _jsonable(table["grid_cell"].iloc[np.flatnonzero(bad)[:count]].tolist())


# ---------------------------------------------------------------------------------------------
# Per-row failures (the same rules, vectorised, for reject reasons)


def _ignored(a: pd.Series, b: pd.Series, rule: str) -> np.ndarray:
    if rule == "either_value_is_missing":
        return (a.isna() | b.isna()).to_numpy()
    if rule == "both_values_are_missing":
        return (a.isna() & b.isna()).to_numpy()
    return np.zeros(len(a), dtype=bool)


def _violations(table: pd.DataFrame, expectation) -> np.ndarray | None:
    """Rows (bool mask) that break one row-level expectation, with GX's null semantics."""
    config = getattr(expectation, "configuration", expectation)
    kind, kw = config.type, config.kwargs
    if "column" in kw:
        values = table[kw["column"]]
        present = values.notna().to_numpy()
        if kind == "expect_column_values_to_not_be_null":
            return ~present
        if kind == "expect_column_values_to_be_between":
            low, high = kw.get("min_value"), kw.get("max_value")
            if pd.api.types.is_datetime64_any_dtype(values.dtype):
                low = None if low is None else pd.Timestamp(low)
                high = None if high is None else pd.Timestamp(high)
            ok = np.ones(len(values), dtype=bool)
            if low is not None:
                ok &= (values > low if kw.get("strict_min") else values >= low).to_numpy(dtype=bool, na_value=False)
            if high is not None:
                ok &= (values < high if kw.get("strict_max") else values <= high).to_numpy(dtype=bool, na_value=False)
            return present & ~ok
        if kind == "expect_column_values_to_match_regex":
            ok = values.astype(str).str.contains(kw["regex"]).to_numpy(dtype=bool, na_value=False)
            return present & ~ok
        if kind == "expect_column_values_to_be_in_set":
            return present & ~values.isin(kw["value_set"]).to_numpy()
        if kind == "expect_column_values_to_be_unique":
            return present & values.duplicated(keep=False).to_numpy()
        return None
    if "column_A" in kw:
        a, b = table[kw["column_A"]], table[kw["column_B"]]
        ignored = _ignored(a, b, kw.get("ignore_row_if", "both_values_are_missing"))
        if kind == "expect_column_pair_values_to_be_equal":
            ok = (a == b).to_numpy(dtype=bool, na_value=False)
        elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
            ok = (a >= b if kw.get("or_equal") else a > b).to_numpy(dtype=bool, na_value=False)
        else:
            return None
        return ~ignored & ~ok
    return None


def row_failures(df: pd.DataFrame, suite: gx.ExpectationSuite) -> pd.DataFrame:
    """Which rows break which row-level expectation of a suite (vectorised, without GX).

    Every expectation of these suites is row-level (column and column-pair map expectations),
    evaluated with GX's semantics (nulls pass everything but "not null"; pair expectations skip
    rows per ``ignore_row_if``; uniqueness flags every row of a repeated value), so the counts
    equal GX's ``unexpected_count``.

    Args:
        df (pd.DataFrame): the table.
        suite (gx.ExpectationSuite): from :func:`metadata_suite` or :func:`stats_suite`.
    Returns:
        pd.DataFrame: one row per (row, expectation) failure: ``row`` (df's index label),
        ``grid_cell``, ``expectation`` (GX type), ``column`` (comma-separated), ``check``; in
        table order.
    """
    table = prepare_table(df, suite)
    labels = df.index.to_numpy()
    parts, positions = [], []
    for expectation in suite.expectations:
        bad = _violations(table, expectation)
        if bad is None or not bad.any():
            continue
        rows = np.flatnonzero(bad)
        positions.append(rows)
        cells = table["grid_cell"].iloc[rows].to_numpy() if "grid_cell" in table.columns else None
        parts.append(pd.DataFrame({
            "row": labels[rows], "grid_cell": cells,
            "expectation": expectation.expectation_type,
            "column": ", ".join(_columns_of(expectation)),
            "check": (expectation.meta or {}).get("check", expectation.expectation_type),
        }))
    columns = ["row", "grid_cell", "expectation", "column", "check"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    order = np.argsort(np.concatenate(positions), kind="stable")  # table order, whatever the labels
    return pd.concat(parts, ignore_index=True).iloc[order].reset_index(drop=True)
