"""The S2 metadata contract (great-expectations) on a Major TOM Core-S2L2A-sized table, against plain pandas.

Table: 2.2 million distinct cells drawn area-uniformly from the 10 km grid (the size of
Core-S2L2A), with realistic values: the Sentinel-2 tile's UTM zone (a neighbouring zone for
about half of the cells within 0.5 degrees of a zone's eastern edge, as Core does where the
product comes from the next zone), centres computed in that zone, acquisition times 2017-2024,
cloud cover and no-data shares with long tails, product ids, shard urls. A few rows of every kind
break one rule each (about 0.01 %), so both sides report failures.

Measured, in one process:
  (a) ``validate_table(df, metadata_suite("s2l2a"))``: the derived grid columns (name parsing,
      off-grid test, tile centres per EPSG code with pyproj, UTM zone and hemisphere) plus the
      GX run (24 expectations) and the result summary;
  (b) the same checks written directly in pandas / numpy (below), including the same grid
      computation.
Prints rows per second for both and the ratio (target: GX no worse than 3x slower), and checks
that both sides count the same failing rows per rule.

    python benchmarks/validate.py [ROWS]      # default 2,200,000
"""
from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows.settings import configure_environment  # noqa: E402

configure_environment()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from components.curation.contracts.derived_columns import grid_columns  # noqa: E402
from components.curation.contracts.suites import DEFAULT_CONTRACT_PARAMS, metadata_suite  # noqa: E402
from components.curation.contracts.validation import validate_table  # noqa: E402
from components.majortom.grid import EARTH_RADIUS_KM, default_grid, utm_epsg  # noqa: E402

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 2_200_000
TARGET_RATIO = 3.0
REPEATS = 2  # best of, alternating the two sides (a 2-core machine is noisy)


# ---------------------------------------------------------------------------------------------
# 1. A Core-S2L2A-sized metadata table


def synthetic_metadata(n: int, seed: int = 0) -> pd.DataFrame:
    grid = default_grid()
    rng = np.random.default_rng(seed)
    # Distinct cells, area-uniform: every cell of the grid is equally likely.
    total = int(grid.col_counts.sum())
    index = np.sort(rng.choice(total, size=n, replace=False))
    ends = np.cumsum(grid.col_counts)
    ri = np.searchsorted(ends, index, side="right")
    rows = grid.row_numbers[ri]
    cols = index - (ends[ri] - grid.col_counts[ri]) + (grid.right_counts[ri] - grid.col_counts[ri])
    names = grid.cell_name(rows, cols)

    # The product's zone: the grid point's, or the next one east near a zone edge.
    lat0, lon0 = grid.cell_origin(rows, cols)
    epsg = utm_epsg(lat0, lon0)
    edge = (np.mod((lon0 + 180.0) / 6.0, 1.0) > 1 - 0.5 / 6) & (rng.random(n) < 0.5) & (np.abs(lat0) < 56)
    zone = epsg % 100
    epsg = np.where(edge, epsg - zone + np.where(zone == 60, 1, zone + 1), epsg)
    centre_lat, centre_lon = np.empty(n), np.empty(n)
    for code in np.unique(epsg).tolist():
        sel = epsg == code
        centre_lat[sel], centre_lon[sel] = grid.cell_centre_latlon(rows[sel], cols[sel], epsg=code)

    start = np.datetime64("2017-03-28T00:00:00", "s")
    seconds = rng.integers(0, 7 * 365 * 86_400, n)
    timestamp = (start + seconds.astype("timedelta64[s]")).astype("datetime64[us]")
    stamp = np.strings.replace(np.strings.replace(np.datetime_as_string(timestamp, unit="s"), "-", ""), ":", "")
    product_id = np.strings.add(np.strings.add("S2B_MSIL2A_", stamp), "_N0509_R022_T32TMT")
    nodata = np.where(rng.random(n) < 0.15, rng.beta(0.6, 4.0, n), 0.0)
    shard_names = np.strings.add("images/part_", np.char.zfill((np.arange(n) // 500).astype(str), 5))
    frame = pd.DataFrame({
        "grid_cell": pd.array(names, dtype="str"),
        "grid_row_u": rows, "grid_col_r": cols,
        "product_id": pd.array(product_id, dtype="str"),
        "timestamp": timestamp,
        "cloud_cover": np.round(100 * rng.beta(0.5, 3.0, n), 4),
        "nodata": np.round(nodata, 6),
        "centre_lat": centre_lat, "centre_lon": centre_lon,
        "crs": pd.array(np.strings.add("EPSG:", epsg.astype(str)), dtype="str"),
        "parquet_url": pd.array(np.strings.add(shard_names, ".parquet"), dtype="str"),
        "parquet_row": np.arange(n) % 500,
    })
    return break_rows(frame, rng)


def break_rows(frame: pd.DataFrame, rng: np.random.Generator, per_kind: int = 25) -> pd.DataFrame:
    """Break `per_kind` distinct rows for each rule (about 0.01 % of 2.2 M)."""
    n = len(frame)
    victims = rng.choice(n, size=10 * per_kind, replace=False).reshape(10, per_kind)
    f = frame
    f.loc[victims[0], "cloud_cover"] = 101.5
    f.loc[victims[1], "nodata"] = 1.5
    f.loc[victims[2], "timestamp"] = pd.Timestamp("2014-05-01")
    crs = f.loc[victims[3], "crs"].str.replace("EPSG:326", "EPSG:3XX", regex=False)
    crs = crs.str.replace("EPSG:327", "EPSG:326", regex=False).str.replace("EPSG:3XX", "EPSG:327", regex=False)
    f.loc[victims[3], "crs"] = crs  # the other hemisphere (cells near the equator may pass)
    f.loc[victims[4], "centre_lat"] = f.loc[victims[4], "centre_lat"] + 0.002  # ~220 m north
    f.loc[victims[5], "grid_row_u"] = f.loc[victims[5], "grid_row_u"] + 1
    f.loc[victims[6], "grid_cell"] = f.loc[victims[6], "grid_cell"].str.lower()
    f.loc[victims[7], "grid_cell"] = f.loc[victims[8], "grid_cell"].to_numpy()  # duplicates
    f.loc[victims[9], "crs"] = "EPSG:4326"
    return f


# ---------------------------------------------------------------------------------------------
# 2. The same checks in plain pandas / numpy


def pandas_checks(df: pd.DataFrame, p: dict) -> dict[str, int]:
    """Failing-row counts per rule; the same rules and null semantics as the GX suite."""
    grid = default_grid()
    counts: dict[str, int] = {}
    for column in ("grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon", "crs",
                   "timestamp", "cloud_cover", "nodata"):
        counts[f"required:{column}"] = int(df[column].isna().sum())

    cell = df["grid_cell"]
    well_formed = cell.str.fullmatch(r"(0U|[1-9][0-9]*[UD])_(0R|[1-9][0-9]*[RL])").fillna(True)
    counts["grid_cell_format"] = int((~well_formed).sum())
    counts["grid_cell_unique"] = int(cell.duplicated(keep=False).sum())

    # Parse the name (pyarrow's regex engine, the one pandas' own str methods use here).
    parts = pc.extract_regex(pa.array(cell), r"^(?P<r>0|[1-9][0-9]*)(?P<ns>[UD])_(?P<c>0|[1-9][0-9]*)(?P<ew>[RL])$")
    r_abs = pc.cast(pc.struct_field(parts, "r"), pa.float64()).to_numpy(zero_copy_only=False)
    c_abs = pc.cast(pc.struct_field(parts, "c"), pa.float64()).to_numpy(zero_copy_only=False)
    south = pc.fill_null(pc.equal(pc.struct_field(parts, "ns"), "D"), False).to_numpy(zero_copy_only=False)
    west = pc.fill_null(pc.equal(pc.struct_field(parts, "ew"), "L"), False).to_numpy(zero_copy_only=False)
    ok_name = np.isfinite(r_abs) & ~(south & (r_abs == 0)) & ~(west & (c_abs == 0))
    row = np.where(south, -r_abs, r_abs)
    col = np.where(west, -c_abs, c_abs)

    # On the grid?
    row0, row1 = int(grid.row_numbers[0]), int(grid.row_numbers[-1])
    on_row = ok_name & (row >= row0) & (row <= row1)
    ri = np.where(on_row, row - row0, 0).astype(np.int64)
    lo, hi = grid.right_counts[ri] - grid.col_counts[ri], grid.right_counts[ri] - 1
    on_grid = on_row & (col >= lo) & (col <= hi)
    counts["grid_cell_on_grid"] = int((ok_name & ~on_grid).sum())
    for column, parsed, check in (("grid_row_u", row, "grid_row_matches_name"),
                                  ("grid_col_r", col, "grid_col_matches_name")):
        given = df[column]
        counts[check] = int((ok_name & given.notna().to_numpy() & (given.to_numpy() != parsed)).sum())

    # CRS.
    crs = df["crs"]
    counts["crs_is_utm"] = int((~crs.str.fullmatch(r"(EPSG:)?32[67](0[1-9]|[1-5][0-9]|60)").fillna(True)).sum())
    codes, uniques = pd.factorize(crs)
    lookup = np.full(len(uniques) + 1, np.nan)
    for i, value in enumerate(uniques):
        m = re.fullmatch(r"(?:EPSG:)?(32[67](?:0[1-9]|[1-5][0-9]|60))", str(value))
        lookup[i] = float(m.group(1)) if m else np.nan
    epsg = lookup[codes]
    idx = np.flatnonzero(on_grid & np.isfinite(epsg))
    rows_i, cols_i, code = row[idx].astype(np.int64), col[idx].astype(np.int64), epsg[idx].astype(np.int64)
    lat0, lon0 = grid.cell_origin(rows_i, cols_i)
    zone = code % 100
    d_regular = np.mod(zone - (np.floor((lon0 + 180) / 6) % 60 + 1) + 30, 60) - 30
    d_special = np.mod(zone - utm_epsg(lat0, lon0) % 100 + 30, 60) - 30
    zone_offset = np.where(np.abs(d_special) < np.abs(d_regular), d_special, d_regular)
    counts["crs_zone"] = int((np.abs(zone_offset) > p["max_zone_offset"]).sum())
    mid_lat = lat0 + 90.0 / math.ceil(math.pi * EARTH_RADIUS_KM / grid.dist_km)
    side = np.where(code // 100 == 326, 1.0, -1.0)
    counts["crs_hemisphere"] = int((mid_lat * side < -p["equator_margin_deg"]).sum())

    # Centre of the tile in its own CRS, one pyproj call per EPSG code.
    near = np.abs(zone_offset) <= 3
    idx, rows_i, cols_i, code = idx[near], rows_i[near], cols_i[near], code[near]
    tile_lat, tile_lon = np.empty(idx.size), np.empty(idx.size)
    for value in np.unique(code).tolist():
        sel = code == value
        tile_lat[sel], tile_lon[sel] = grid.cell_centre_latlon(rows_i[sel], cols_i[sel], epsg=value)
    lat = df["centre_lat"].to_numpy()[idx]
    lon = df["centre_lon"].to_numpy()[idx]
    p1, p2 = np.radians(lat), np.radians(tile_lat)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(tile_lon - lon) / 2) ** 2
    offset = 2 * 6_371_008.8 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    counts["centre_matches_cell"] = int((offset > p["centre_tolerance_m"]).sum())

    # Value ranges (nulls pass).
    counts["centre_lat_range"] = int(((df["centre_lat"] < -90) | (df["centre_lat"] > 90)).sum())
    counts["centre_lon_range"] = int(((df["centre_lon"] < -180) | (df["centre_lon"] > 180)).sum())
    counts["cloud_cover_range"] = int(((df["cloud_cover"] < 0) | (df["cloud_cover"] > 100)).sum())
    counts["nodata_range"] = int(((df["nodata"] < 0) | (df["nodata"] > 1)).sum())
    counts["s2_era"] = int((df["timestamp"] < pd.Timestamp(p["s2_era_start"])).sum())
    return counts


def gx_counts(result) -> dict[str, int]:
    counts = {}
    for failure in result.failures:
        key = f"required:{failure.columns[0]}" if failure.check == "required" else failure.check
        counts[key] = failure.unexpected_count
    return counts


# ---------------------------------------------------------------------------------------------
# 3. Run


def main() -> None:
    print(f"building a synthetic Core-S2L2A metadata table of {ROWS:,} rows ...", flush=True)
    started = time.perf_counter()
    df = synthetic_metadata(ROWS)
    print(f"  built in {time.perf_counter() - started:.1f} s "
          f"({df.memory_usage(deep=True).sum() / 2**20:,.0f} MiB)", flush=True)
    suite = metadata_suite("s2l2a")
    params = dict(DEFAULT_CONTRACT_PARAMS)

    # Warm-up (imports, GX's first-run set-up, pyproj transformers), on a small slice.
    validate_table(df.iloc[:1000], suite)
    pandas_checks(df.iloc[:1000], params)

    gx_s = pandas_s = math.inf
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = validate_table(df, suite)
        gx_s = min(gx_s, time.perf_counter() - started)
        started = time.perf_counter()
        counts = pandas_checks(df, params)
        pandas_s = min(pandas_s, time.perf_counter() - started)
    started = time.perf_counter()
    grid_columns(df)
    derived_s = time.perf_counter() - started

    expected = {k: v for k, v in counts.items() if v}
    got = gx_counts(result)
    if got != expected:
        print("MISMATCH between GX and pandas counts:")
        for key in sorted(set(got) | set(expected)):
            print(f"  {key}: gx {got.get(key, 0)}  pandas {expected.get(key, 0)}")
        raise SystemExit(1)
    print(result.summary())
    print(f"same failing-row counts on both sides for {len(expected)} failing rules")
    ratio = gx_s / pandas_s
    print(f"great-expectations (derived grid columns + GX run): {gx_s:.2f} s, {ROWS / gx_s:,.0f} rows/s "
          f"(of which the derived grid columns alone take ~{derived_s:.2f} s)")
    print(f"plain pandas/numpy (same checks, same grid computation): {pandas_s:.2f} s, "
          f"{ROWS / pandas_s:,.0f} rows/s")
    verdict = "OK" if ratio <= TARGET_RATIO else "OVER"
    print(f"ratio GX / pandas: {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): {verdict}")


if __name__ == "__main__":
    main()
