"""The derived columns the metadata suites check: grid consistency and the UTM zone as numbers.

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

The rules behind the bounds: :mod:`components.curation.contracts.suites`.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.majortom.grid import EARTH_RADIUS_KM, default_grid, utm_epsg

DERIVED_COLUMNS = ("name_row_u", "name_col_r", "name_off_grid_steps", "centre_offset_m",
                   "crs_zone_offset", "crs_hemisphere_lat")
_CELL_PARTS = r"^(?P<row>0|[1-9][0-9]*)(?P<ns>[UD])_(?P<col>0|[1-9][0-9]*)(?P<ew>[RL])$"
_CRS_PARTS = re.compile(r"(?:EPSG:)?(32[67])(0[1-9]|[1-5][0-9]|60)")
_MEAN_EARTH_RADIUS_M = 6_371_008.8
# A zone further than this from the grid point is reported by crs_zone_offset; the centre is not
# computed there (a transverse Mercator that far off its meridian is no basis for a distance).
_CENTRE_MAX_ZONES = 3


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
    return pd.DataFrame(grid_arrays(frame), index=frame.index)


def grid_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
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
