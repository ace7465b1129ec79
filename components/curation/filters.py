"""The paper's filters as named, parameterised rules over the per-cell statistics.

MESA trains on cells left after removing oceans and large flat water bodies, Antarctica,
misaligned projections and missing data. Each rule here has a name (the reason recorded in
rejected.parquet) and its thresholds in params.yaml (`validate.filters`). Rules are vectorised:
they take the table of measured cells and return a boolean Series (True = reject).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

DEFAULT_FILTERS: dict[str, dict] = {
    # Copernicus DEM is edited flat over water: a tile with almost no relief is sea or a large lake.
    "ocean_or_flat_water": {"max_relief_m": 2.0},
    "antarctica": {"max_lat": -60.0},
    "too_much_nodata": {"max_nodata_fraction": 0.5, "min_dem_finite_fraction": 0.95},
    "too_little_valid_area": {"min_valid_fraction": 0.3},
    "date_gap": {"max_days": 3.0},
}


def _ocean_or_flat_water(cells: pd.DataFrame, p: Mapping) -> pd.Series:
    return cells["relief_m"].le(p["max_relief_m"]).fillna(False)


def _antarctica(cells: pd.DataFrame, p: Mapping) -> pd.Series:
    return cells["centre_lat"].lt(p["max_lat"])


def _too_much_nodata(cells: pd.DataFrame, p: Mapping) -> pd.Series:
    nodata = cells["s2l2a_nodata_fraction"].gt(p["max_nodata_fraction"]).fillna(False)
    dem = cells["dem_finite_fraction"].lt(p["min_dem_finite_fraction"]).fillna(False)
    return nodata | dem


def _too_little_valid_area(cells: pd.DataFrame, p: Mapping) -> pd.Series:
    # NaN (the image could not be read) is left to the reader's own reject reason.
    return cells["valid_fraction"].lt(p["min_valid_fraction"]).fillna(False)


def _date_gap(cells: pd.DataFrame, p: Mapping) -> pd.Series:
    if "date_gap_days" not in cells:
        return pd.Series(False, index=cells.index)
    return cells["date_gap_days"].gt(p["max_days"]).fillna(False)


RULES: dict[str, Callable[[pd.DataFrame, Mapping], pd.Series]] = {
    "ocean_or_flat_water": _ocean_or_flat_water,
    "antarctica": _antarctica,
    "too_much_nodata": _too_much_nodata,
    "too_little_valid_area": _too_little_valid_area,
    "date_gap": _date_gap,
}


def apply_filters(cells: pd.DataFrame, params: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    """Evaluate every enabled rule; return (grid_cell, reason) for each cell a rule rejects.

    Args:
        cells: measured cells (centre_lat plus the columns of curation.measure.measure_cells).
        params: rule name -> thresholds (default DEFAULT_FILTERS); a rule set to null is disabled.
    """
    params = DEFAULT_FILTERS if params is None else params
    unknown = sorted(set(params) - set(RULES))
    if unknown:
        raise ValueError(f"validate.filters names unknown rules {unknown}; known rules: {sorted(RULES)}")
    hits = []
    for name, thresholds in params.items():
        if thresholds is None:
            continue
        flagged = RULES[name](cells, {**DEFAULT_FILTERS[name], **thresholds})
        hits.append(pd.DataFrame({"grid_cell": cells.loc[flagged, "grid_cell"].to_numpy(), "reason": name}))
    return pd.concat(hits, ignore_index=True) if hits else pd.DataFrame(columns=["grid_cell", "reason"])
