"""Data contracts (components.curation.contracts): every expectation caught alone, clean tables pass.

Each violation case breaks one rule on a few rows of an otherwise clean, grid-exact table and
checks that the failure names the expectation type, the column(s) and the exact row count, that
the summary says so, and that row_failures flags the same rows.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from components.curation.contracts.derived_columns import DERIVED_COLUMNS, grid_columns
from components.curation.contracts.suites import DEFAULT_CONTRACT_PARAMS, columns_of, metadata_suite, stats_suite
from components.curation.contracts.validation import (
    ContractResult,
    build_data_docs,
    get_context,
    row_failures,
    validate_table,
)
from components.majortom.grid import default_grid

GRID = default_grid()

# Cells across the grid: both hemispheres, the antimeridian, the top row, Norway's and
# Svalbard's exception zones, the equator rows and row 0's first / last columns.
NAMED_CELLS = ["454U_120R", "3D_17L", "0U_0R", "100U_5L", "800U_30R", "12D_400R", "60U_10R",
               "1D_3R", "946U_1L", "673U_30R", "873U_19R", "111U_1972R", "111U_1973L", "520D_700L",
               "0U_2003R", "0U_2004L"]


def cells_table(names, *, epsg=None) -> pd.DataFrame:
    """A clean S2 metadata table (upstream schema) for `names`, centres in each tile's CRS."""
    rows, cols = GRID.parse_cells(np.asarray(names))
    codes = GRID.cell_origin_epsg(rows, cols) if epsg is None else np.asarray(epsg)
    lat, lon = np.empty(len(names)), np.empty(len(names))
    for code in np.unique(codes).tolist():
        sel = codes == code
        lat[sel], lon[sel] = GRID.cell_centre_latlon(rows[sel], cols[sel], epsg=code)
    n = len(names)
    rng = np.random.default_rng(n)
    stamps = pd.Timestamp("2018-01-01") + pd.to_timedelta(rng.integers(0, 5 * 365, n), unit="D")
    return pd.DataFrame({
        "grid_cell": list(names), "grid_row_u": rows, "grid_col_r": cols,
        "product_id": [f"S2A_MSIL2A_{i:04d}" for i in range(n)],
        "timestamp": stamps.astype("datetime64[us]"),
        "cloud_cover": np.round(rng.uniform(0, 100, n), 3), "nodata": np.round(rng.uniform(0, 1, n), 4),
        "centre_lat": lat, "centre_lon": lon, "crs": [f"EPSG:{c}" for c in codes],
        "parquet_url": "images/part_00000.parquet", "parquet_row": np.arange(n),
    })


def random_cells(n: int, seed: int) -> list[str]:
    """`n` distinct cells drawn area-uniformly from the whole grid."""
    rng = np.random.default_rng(seed)
    index = rng.choice(int(GRID.col_counts.sum()), size=n, replace=False)
    ends = np.cumsum(GRID.col_counts)
    ri = np.searchsorted(ends, index, side="right")
    cols = index - (ends[ri] - GRID.col_counts[ri]) + (GRID.right_counts[ri] - GRID.col_counts[ri])
    return GRID.cell_name(GRID.row_numbers[ri], cols).tolist()


def stats_table(n: int = 14) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    low = rng.uniform(-400, 3000, n)
    return pd.DataFrame({
        "grid_cell": NAMED_CELLS[:n], "has_s2l2a": True, "has_s2l1c": True, "has_dem": True,
        "s2l2a_shape": 1068, "s2l1c_shape": [1068.0] * (n - 2) + [np.nan] * 2, "dem_shape": 356,
        "dem_finite_fraction": rng.uniform(0.9, 1, n), "dem_min_m": low, "dem_max_m": low + rng.uniform(0, 2000, n),
        "valid_fraction": rng.uniform(0, 1, n), "date_gap_days": [0.0, 1.5, 3.0] + [np.nan] + [0.2] * (n - 4),
    })


@pytest.fixture(scope="module")
def context():
    return get_context()


@pytest.fixture(scope="module")
def suites():
    return {"s2l2a": metadata_suite("s2l2a"), "dem": metadata_suite("dem"), "stats": stats_suite()}


# ---------------------------------------------------------------------------------------------
# Clean tables pass


def test_clean_s2_table_passes(context, suites):
    result = validate_table(cells_table(NAMED_CELLS), suites["s2l2a"], context=context)
    assert result.success, result.summary()
    assert result.failures == [] and result.row_count == len(NAMED_CELLS)
    assert "passed" in result.summary()
    assert row_failures(cells_table(NAMED_CELLS), suites["s2l2a"]).empty


def test_random_grid_cells_with_grid_centres_pass(context, suites):
    table = cells_table(random_cells(400, seed=3))
    result = validate_table(table, suites["s2l2a"], context=context)
    assert result.success, result.summary()
    assert validate_table(table, suites["dem"], context=context).success


def test_cell_cut_in_a_neighbouring_zone_passes(context, suites):
    names = ["454U_120R", "100U_5L", "12D_400R", "520D_700L", "111U_1972R"]
    rows, cols = GRID.parse_cells(np.asarray(names))
    own = GRID.cell_origin_epsg(rows, cols)
    zone = own % 100
    east = own - zone + np.where(zone == 60, 1, zone + 1)  # 111U_1972R: zone 60 -> zone 1
    west = own - zone + np.where(zone == 1, 60, zone - 1)
    for codes in (east, west):
        result = validate_table(cells_table(names, epsg=codes), suites["s2l2a"], context=context)
        assert result.success, result.summary()


def test_equator_cells_may_use_either_hemisphere_within_the_margin(context, suites):
    names = ["0U_111R", "1D_111R"]
    rows, cols = GRID.parse_cells(np.asarray(names))
    zone = GRID.cell_origin_epsg(rows, cols) % 100
    other = np.where(rows >= 0, 32700, 32600) + zone
    result = validate_table(cells_table(names, epsg=other), suites["s2l2a"], context=context)
    assert result.success, result.summary()
    result = validate_table(cells_table(["3D_111R"], epsg=[32600 + 32]), suites["s2l2a"], context=context)
    assert [f.check for f in result.failures] == ["crs_hemisphere"]


def test_dem_suite_has_no_cloud_or_date_expectations(context, suites):
    table = cells_table(NAMED_CELLS).drop(columns=["cloud_cover", "nodata"])
    table["timestamp"] = pd.Timestamp("2011-01-01")  # GLO-30 radar: before Sentinel-2, fine
    result = validate_table(table, suites["dem"], context=context)
    assert result.success, result.summary()
    types = {(e.expectation_type, columns_of(e)[0]) for e in suites["dem"].expectations}
    assert not {c for _, c in types} & {"cloud_cover", "nodata", "timestamp"}


def test_clean_stats_table_passes_and_l1c_columns_are_optional(context, suites):
    table = stats_table()
    assert validate_table(table, suites["stats"], context=context).success
    without_l1c = table.drop(columns=["s2l1c_shape", "date_gap_days", "has_s2l1c"])
    result = validate_table(without_l1c, suites["stats"], context=context)
    assert result.success, result.summary()


# ---------------------------------------------------------------------------------------------
# Every expectation, violated alone


@dataclass
class Case:
    suite: str
    check: str
    expectation: str
    columns: tuple[str, ...]
    count: int
    breaks: Callable[[pd.DataFrame], None]
    also: frozenset = frozenset()  # other checks that necessarily fail with this one

    def __str__(self):
        return f"{self.suite}-{self.check}-{'+'.join(self.columns)}"


NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
REGEX = "expect_column_values_to_match_regex"
UNIQUE = "expect_column_values_to_be_unique"
PAIR_EQUAL = "expect_column_pair_values_to_be_equal"
IN_SET = "expect_column_values_to_be_in_set"
A_GT_B = "expect_column_pair_values_a_to_be_greater_than_b"


def _put(column, values: dict):
    """Set `column` at the given rows (row -> value)."""
    def apply(t):
        for r, value in values.items():
            t.loc[r, column] = value
    return apply


def _set(column, rows, value):
    return _put(column, dict.fromkeys(rows, value))


def _nulls(column, rows=(2, 5)):
    def apply(t):
        if pd.api.types.is_datetime64_any_dtype(t[column].dtype):
            t.loc[list(rows), column] = pd.NaT
        elif pd.api.types.is_numeric_dtype(t[column].dtype) and not pd.api.types.is_bool_dtype(t[column].dtype):
            t[column] = t[column].astype("float64")
            t.loc[list(rows), column] = np.nan
        else:
            t[column] = t[column].astype(object)
            t.loc[list(rows), column] = None
    return apply


def _rename(rows_names: dict[int, str]):
    def apply(t):
        for r, name in rows_names.items():
            t.loc[r, "grid_cell"] = name
    return apply


def _off_grid(t):
    for r, (name, row, col) in {1: ("990U_0R", 990, 0), 4: ("0U_2500R", 0, 2500)}.items():
        t.loc[r, ["grid_cell", "grid_row_u", "grid_col_r"]] = [name, row, col]


def _shift(column, rows, delta):
    def apply(t):
        t.loc[list(rows), column] = t.loc[list(rows), column] + delta
    return apply


def _duplicate(t):
    t.loc[3] = t.loc[0]  # the same cell twice, every value consistent


def _recut(rows, zone_delta=0, flip=False):
    """Give rows another CRS and the centre of their tile in it (so only the CRS rule fails)."""
    def apply(t):
        for r in rows:
            code = int(t.loc[r, "crs"].removeprefix("EPSG:"))
            zone = (code % 100 - 1 + zone_delta) % 60 + 1
            base = (32700 if code // 100 == 326 else 32600) if flip else code // 100 * 100
            lat, lon = GRID.cell_centre_latlon(int(t.loc[r, "grid_row_u"]), int(t.loc[r, "grid_col_r"]),
                                               epsg=base + zone)
            t.loc[r, ["crs", "centre_lat", "centre_lon"]] = [f"EPSG:{base + zone}", lat, lon]
    return apply


S2_REQUIRED = ["grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon", "crs",
               "timestamp", "cloud_cover", "nodata"]
GRID_CASES = [
    ("grid_cell_format", REGEX, ("grid_cell",), 3,
     _rename({1: "454u_120R", 4: "0D_5R", 6: "060U_10R"}), frozenset()),
    ("grid_cell_unique", UNIQUE, ("grid_cell",), 2, _duplicate, frozenset()),
    ("grid_cell_on_grid", BETWEEN, ("name_off_grid_steps",), 2, _off_grid, frozenset()),
    ("grid_row_matches_name", PAIR_EQUAL, ("grid_row_u", "name_row_u"), 3, _shift("grid_row_u", (0, 2, 7), 1),
     frozenset()),
    ("grid_col_matches_name", PAIR_EQUAL, ("grid_col_r", "name_col_r"), 2, _shift("grid_col_r", (3, 9), -1),
     frozenset()),
    ("centre_matches_cell", BETWEEN, ("centre_offset_m",), 2, _shift("centre_lat", (0, 5), 0.001), frozenset()),
    # An impossible latitude / longitude is also not the cell's centre.
    ("centre_lat_range", BETWEEN, ("centre_lat",), 1, _set("centre_lat", [2], 95.0),
     frozenset({"centre_matches_cell"})),
    ("centre_lon_range", BETWEEN, ("centre_lon",), 2, _set("centre_lon", [2, 3], 200.0),
     frozenset({"centre_matches_cell"})),
    ("crs_is_utm", REGEX, ("crs",), 3, _put("crs", {1: "EPSG:4326", 2: "EPSG:32661", 3: "32632N"}),
     frozenset()),
    ("crs_zone", BETWEEN, ("crs_zone_offset",), 2, _recut((0, 5), zone_delta=2), frozenset()),
    ("crs_hemisphere", BETWEEN, ("crs_hemisphere_lat",), 2, _recut((0, 5), flip=True), frozenset()),
]
CASES = (
    [Case("s2l2a", "required", NOT_NULL, (c,), 2, _nulls(c)) for c in S2_REQUIRED]
    + [Case("s2l2a", *args) for args in GRID_CASES]
    + [Case("dem", "required", NOT_NULL, (c,), 2, _nulls(c)) for c in S2_REQUIRED[:6]]
    + [Case("dem", *args) for args in GRID_CASES]
    + [
        Case("s2l2a", "cloud_cover_range", BETWEEN, ("cloud_cover",), 2,
             _put("cloud_cover", {1: 100.5, 8: -1.0})),
        Case("s2l2a", "nodata_range", BETWEEN, ("nodata",), 1, _set("nodata", [4], 1.2)),
        Case("s2l2a", "s2_era", BETWEEN, ("timestamp",), 2,
             _set("timestamp", [0, 9], pd.Timestamp("2015-06-22 23:59:59"))),
    ]
)
STATS_REQUIRED = ["grid_cell", "has_s2l2a", "has_dem", "s2l2a_shape", "dem_shape",
                  "dem_finite_fraction", "valid_fraction"]
STATS_CASES = (
    [Case("stats", "required", NOT_NULL, (c,), 2, _nulls(c)) for c in STATS_REQUIRED]
    + [
        Case("stats", "grid_cell_unique", UNIQUE, ("grid_cell",), 2, _duplicate),
        Case("stats", "has_s2l2a", IN_SET, ("has_s2l2a",), 1, _set("has_s2l2a", [3], False)),
        Case("stats", "has_dem", IN_SET, ("has_dem",), 2, _set("has_dem", [1, 6], False)),
        Case("stats", "image_shape", IN_SET, ("s2l2a_shape",), 1, _set("s2l2a_shape", [2], 1067)),
        Case("stats", "image_shape", IN_SET, ("s2l1c_shape",), 1, _set("s2l1c_shape", [0], 534.0)),
        Case("stats", "dem_shape", IN_SET, ("dem_shape",), 2, _set("dem_shape", [4, 5], 355)),
        Case("stats", "dem_finite_fraction_range", BETWEEN, ("dem_finite_fraction",), 1,
             _set("dem_finite_fraction", [1], 1.1)),
        Case("stats", "dem_range", BETWEEN, ("dem_min_m",), 1, _set("dem_min_m", [2], -600.0)),
        Case("stats", "dem_range", BETWEEN, ("dem_max_m",), 1, _set("dem_max_m", [2], 9500.0)),
        Case("stats", "dem_range", A_GT_B, ("dem_max_m", "dem_min_m"), 1,
             lambda t: (_set("dem_min_m", [7], 100.0)(t), _set("dem_max_m", [7], 50.0)(t))),
        Case("stats", "valid_fraction_range", BETWEEN, ("valid_fraction",), 1, _set("valid_fraction", [0], -0.1)),
        Case("stats", "date_gap", BETWEEN, ("date_gap_days",), 2, _put("date_gap_days", {1: 3.5, 5: 30.0})),
    ]
)


def _table_for(case: Case) -> pd.DataFrame:
    if case.suite == "stats":
        table = stats_table()
    else:
        table = cells_table(NAMED_CELLS)
        if case.suite == "dem":
            table = table.drop(columns=["cloud_cover", "nodata", "timestamp", "product_id"])
    case.breaks(table)
    return table


@pytest.mark.parametrize("case", CASES + STATS_CASES, ids=str)
def test_each_expectation_fails_alone_with_its_count(case, context, suites):
    suite = suites[case.suite]
    table = _table_for(case)
    result = validate_table(table, suite, context=context)
    assert not result.success
    mine = [f for f in result.failures if f.expectation == case.expectation and tuple(f.columns) == case.columns]
    assert len(mine) == 1, result.summary()
    failure = mine[0]
    assert failure.check == case.check
    assert failure.unexpected_count == case.count, result.summary()
    assert {f.check for f in result.failures} - {case.check} == set(case.also), result.summary()
    # Examples: the failing values and the cells they belong to.
    assert 0 < len(failure.examples) <= 5 and len(failure.example_cells) == min(case.count, 5)
    # The summary names the expectation, the column and the count.
    text = result.summary()
    assert case.expectation in text and ", ".join(case.columns) in text and f"{case.count:,} of" in text
    # row_failures flags exactly the rows GX counted, for every failed expectation.
    per_row = row_failures(table, suite)
    counted = per_row.groupby(["expectation", "column"]).size().to_dict()
    assert counted == {(f.expectation, f.column): f.unexpected_count for f in result.failures}
    assert set(per_row["grid_cell"].dropna()) >= set(failure.example_cells) - {None}


def test_every_expectation_of_every_suite_has_a_violation_case(suites):
    covered = {(c.suite, c.expectation, c.columns) for c in CASES + STATS_CASES}
    for name, suite in suites.items():
        for expectation in suite.expectations:
            assert (name, expectation.expectation_type, tuple(columns_of(expectation))) in covered


# ---------------------------------------------------------------------------------------------
# Params, results, files


def test_params_change_the_rules_and_typos_are_refused(context):
    table = cells_table(NAMED_CELLS)
    _shift("centre_lat", (0,), 0.001)(table)  # ~111 m off
    assert not validate_table(table, metadata_suite("s2l2a"), context=context).success
    loose = metadata_suite("s2l2a", {"centre_tolerance_m": 200})
    assert validate_table(table, loose, context=context).success
    ended = metadata_suite("s2l2a", {"s2_era_end": "2019-01-01"})
    late = validate_table(cells_table(NAMED_CELLS), ended, context=context)
    assert {f.check for f in late.failures} == {"s2_era"}
    with pytest.raises(ValueError, match="centre_tolerance"):
        metadata_suite("s2l2a", {"centre_tolerence_m": 10})
    with pytest.raises(ValueError, match="unknown source"):
        metadata_suite("s1grd")
    assert DEFAULT_CONTRACT_PARAMS["image_px"] == 1068 and DEFAULT_CONTRACT_PARAMS["dem_px"] == 356


def test_missing_column_is_named(context, suites):
    with pytest.raises(ValueError, match="cloud_cover"):
        validate_table(cells_table(NAMED_CELLS).drop(columns=["cloud_cover"]), suites["s2l2a"], context=context)


def test_row_failures_keep_the_callers_index(suites):
    table = cells_table(NAMED_CELLS).set_index(pd.Index([f"r{i}" for i in range(len(NAMED_CELLS))]))
    table.loc["r4", "cloud_cover"] = 150.0
    table.loc["r4", "nodata"] = 2.0
    failures = row_failures(table, suites["s2l2a"])
    assert list(failures.columns) == ["row", "grid_cell", "expectation", "column", "check"]
    assert failures["row"].tolist() == ["r4", "r4"]
    assert set(failures["check"]) == {"cloud_cover_range", "nodata_range"}
    assert set(failures["grid_cell"]) == {NAMED_CELLS[4]}


def test_result_json_round_trips(tmp_path, context, suites):
    table = cells_table(NAMED_CELLS)
    _recut((0, 5), flip=True)(table)
    result = validate_table(table, suites["s2l2a"], context=context)
    path = result.save_json(tmp_path / "validation" / "s2l2a.json")
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert strict["gx"] == result.raw and strict["success"] is False
    assert ContractResult.load_json(path) == result
    assert not list(path.parent.glob("*.tmp"))  # atomic: no temporary left behind


def test_file_context_builds_data_docs(tmp_path, suites):
    root = tmp_path / "validation"
    context = get_context(root)
    validate_table(cells_table(NAMED_CELLS), suites["s2l2a"], context=context)
    index = build_data_docs(root)
    assert index.name == "index.html" and index.is_file()
    assert "s2l2a_metadata" in index.read_text()
    assert (root / "gx" / "expectations" / "s2l2a_metadata.json").is_file()


# ---------------------------------------------------------------------------------------------
# The derived numbers


def test_grid_columns_numbers():
    names = ["454U_120R", "990U_0R", "0U_2010R", "bad", "111U_1972R", "100U_5L"]
    table = cells_table(["454U_120R", "454U_120R", "454U_120R", "454U_120R", "111U_1972R", "100U_5L"],
                        epsg=[32632, 32632, 32632, 32632, 32601, 32731])
    table["grid_cell"] = names
    table.loc[0, "centre_lat"] += 0.001  # ~111 m north
    derived = grid_columns(table)
    assert list(derived.columns) == list(DERIVED_COLUMNS)
    assert derived.loc[0, ["name_row_u", "name_col_r", "name_off_grid_steps"]].tolist() == [454, 120, 0]
    assert derived.loc[0, "centre_offset_m"] == pytest.approx(111.2, abs=0.5)
    assert derived.loc[1, "name_off_grid_steps"] == 990 - 946  # rows above the top row
    assert derived.loc[2, "name_off_grid_steps"] == 2010 - 2003  # columns past row 0's last
    assert derived.loc[3].isna().all()  # malformed: the format expectation reports it
    assert derived.loc[4, "crs_zone_offset"] == 1  # zone 60's east neighbour is zone 1
    assert derived.loc[4, "centre_offset_m"] < 0.01
    assert derived.loc[5, "crs_hemisphere_lat"] == pytest.approx(-9.03, abs=0.01)  # 327zz, 9 deg N

