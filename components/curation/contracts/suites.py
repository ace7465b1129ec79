"""The contracts as GX suites: Major TOM metadata (S2, DEM) and the per-cell statistics.

Three suites, built from one params dict (``DEFAULT_CONTRACT_PARAMS`` documents each key):

- ``metadata_suite("s2l2a" | "s2l1c", params)``: a Major TOM Sentinel-2 metadata.parquet, after
  the duplicate rule (``components.majortom.shards.DUPLICATE_RULE``), so grid_cell is unique.
- ``metadata_suite("dem", params)``: Core-DEM metadata: grid, uniqueness and CRS only (GLO-30 comes
  from 2011-2015 radar acquisitions: no cloud cover, no Sentinel-2 era).
- ``stats_suite(params)``: the per-cell statistics table (``components.curation.measure``).

Grid consistency and the UTM zone are checked on derived columns
(:mod:`components.curation.contracts.derived_columns`, which explains them).

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
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

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
# Where a suite records what it checks (read by the validation module).
META_KEY = "mesa_contract"


# ---------------------------------------------------------------------------------------------
# Params


def contract_params(params: dict | None) -> dict[str, Any]:
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
    p = contract_params(params)
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
    meta = {META_KEY: {"table": "metadata", "source": source, "params": p}}
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
    p = contract_params(params)
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
    meta = {META_KEY: {"table": "stats", "params": p,
                       "optional_columns": ["s2l1c_shape", "date_gap_days"]}}
    return gx.ExpectationSuite(name="cell_stats", expectations=expectations, meta=meta)


# ---------------------------------------------------------------------------------------------
# What a suite checks


def contract_meta(suite: gx.ExpectationSuite) -> dict:
    """What :func:`metadata_suite` / :func:`stats_suite` recorded in a suite: table kind, params, optional columns."""
    meta = (suite.meta or {}).get(META_KEY)
    if not meta:
        raise ValueError(f"suite {suite.name!r} was not built by metadata_suite() / stats_suite() "
                         f"(its meta lacks {META_KEY!r})")
    return meta


def columns_of(expectation) -> list[str]:
    """Checked columns of an Expectation or an ExpectationConfiguration (what results carry)."""
    kwargs = getattr(expectation, "configuration", expectation).kwargs
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return list(kwargs.get("column_list", []))
