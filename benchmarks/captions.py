"""Caption descriptors (country + biome + month) for 1.3 million cell centres, against a loop.

Measured: ``describe_cells`` with the offline layers (Natural Earth 1:10m countries with the
10 km nearest fallback, Koppen biome proxy with the same fallback, month from the timestamp,
plus the landform class it always computes) over 1.3 million Major TOM cell centres -- the
paper's dataset size -- built from the real grid: every cell whose centre, or a point 5 km
from it, is land on the Koppen map, outside Antarctica; so coastal cells whose centre is at
sea are in, as in Major TOM, and exercise the fallback.

Baseline (named): a per-point Python loop over the same country polygons (one prepared
shapely geometry per country, ``contains`` tried country after country until one holds),
the same Koppen raster read one pixel at a time, and ``Timestamp.month_name()`` -- what one
writes without vectorising -- in two versions: the same job as describe_cells (a centre in no
polygon takes the nearest country within 10 km, a sea pixel the nearest land pixel within
10 km) and a cheaper point-in-polygon-only loop. Both run on a random sample of the same
centres and are extrapolated to 1.3 million.

Prints cells per second for both, the ratios, total seconds (cold: layers loaded inside the
timing, as a fresh stage process; warm: loaded before, best of 3) and peak memory (ru_maxrss
of the process that describes, which reads the index itself). Targets: >= 50x the loop (warm
against the loop, whose own set-up is outside its timing too), the whole 1.3 million in under
15 s (cold), under 2 GB. describe_cells runs its lookups on 2 threads (params ``workers``).

    python benchmarks/captions.py [--cells 1300000] [--sample 4000]
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


REPEATS = 3  # timings are the best of 3 (vectorised warm runs and loops alike)


def cell_centres(n_cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Centres of n_cells Major TOM cells that are land or coast (grid order)."""
    from components.captions.layers.biomes import _koppen_data
    from components.majortom.grid import default_grid

    grid = default_grid()
    counts = grid.col_counts
    row_idx = np.repeat(np.arange(counts.size), counts)
    first = np.cumsum(counts) - counts
    slot = np.arange(row_idx.size) - first[row_idx]  # 0 .. n-1 from 180 W eastwards
    lat0 = grid.row_lats[row_idx]
    dlat = np.diff(grid.row_lats).mean()
    step = 360.0 / counts[row_idx]
    lat = lat0 + 0.5 * dlat
    lon = -180.0 + (slot + 0.5) * step
    raster, codes, ocean = _koppen_data()
    h, w = raster.shape
    land = np.zeros(lat.size, dtype=bool)
    km5 = 5.0 / 111.2
    for dy, dx in ((0, 0), (km5, 0), (-km5, 0), (0, km5), (0, -km5)):
        la = np.clip(lat + dy, -89.999, 89.999)
        lo = np.mod(lon + dx / np.maximum(np.cos(np.radians(la)), 0.05) + 180.0, 360.0) - 180.0
        iy = np.clip(((90.0 - la) * h / 180.0).astype(np.int64), 0, h - 1)
        ix = ((lo + 180.0) * w / 360.0).astype(np.int64) % w
        land |= raster[iy, ix] != ocean
    keep = np.flatnonzero(land & (lat > -60.0))
    if keep.size < n_cells:
        print(f"note: the grid has {keep.size:,} land/coast cells; using all of them")
        n_cells = keep.size
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(keep, size=n_cells, replace=False))
    return lat[chosen], lon[chosen]


def make_index(lat: np.ndarray, lon: np.ndarray, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = lat.size
    start = np.datetime64("2017-03-01T00:00:00", "s").astype(np.int64)
    span = 7 * 365 * 86_400
    ts = (start + rng.integers(0, span, n)).astype("datetime64[s]")
    return pd.DataFrame({
        "grid_cell": pd.Series([f"c{i}" for i in range(n)], dtype=object),
        "centre_lat": lat,
        "centre_lon": lon,
        "s2l2a_timestamp": ts,
        "gentle_share": rng.uniform(0, 1, n),
        "relief_m": rng.uniform(0, 2000, n),
        "profile_upper_share": rng.uniform(0, 1, n),
        "dem_mean_m": rng.uniform(0, 3000, n),
    })


def _loop_data():
    """The country polygons one per country (as Natural Earth has them) and the Koppen raster."""
    import shapely

    from components.captions.layers.base import package_dir
    from components.captions.layers.biomes import _koppen_data
    from components.captions.layers.countries import NE_NAME_EXPANSIONS, _geo_intel_feature, _read_gz_json

    data = package_dir("geo_intel_offline") / "data"
    features = _read_gz_json(data / "polygons.json.gz")
    meta = _read_gz_json(data / "metadata.json.gz")
    countries = []
    for key in sorted(features, key=int):
        geom = _geo_intel_feature(features[key])
        shapely.prepare(geom)  # the loop's best case: prepared point-in-polygon
        countries.append((geom, geom.bounds, NE_NAME_EXPANSIONS.get(meta[key]["name"], meta[key]["name"])))
    return countries, _koppen_data()


def baseline_loop(lat: np.ndarray, lon: np.ndarray, ts: np.ndarray, fallback_m: float) -> tuple[float, list]:
    """The per-point loop over a sample; returns (seconds, results).

    fallback_m = 0: point-in-polygon and raster pixel only (less work than describe_cells).
    fallback_m > 0: the same job as describe_cells: a centre in no country takes the nearest
    country within fallback_m (candidates by bounding box, distance in a local equirectangular
    plane as the layer measures it), a sea pixel the nearest land pixel within fallback_m.
    """
    import math

    import shapely

    from components.captions.layers.base import EARTH_RADIUS_M
    from components.captions.layers.biomes import KOPPEN_TO_BIOME_NUM, RESOLVE_BIOMES, ROCK_AND_ICE

    countries, (raster, codes, ocean) = _loop_data()
    h, w = raster.shape
    m_per_deg = EARTH_RADIUS_M * math.pi / 180.0
    origin = shapely.Point(0.0, 0.0)
    stamps = pd.to_datetime(ts)
    out = []
    started = time.perf_counter()
    for la, lo, stamp in zip(lat.tolist(), lon.tolist(), stamps):
        point = shapely.Point(lo, la)
        country = None
        for geom, _, name in countries:
            if geom.contains(point):
                country = name
                break
        if country is None and fallback_m > 0:
            kx = m_per_deg * math.cos(math.radians(la))
            dlat, dlon = fallback_m / m_per_deg, fallback_m / max(kx, 1e-9)
            best = fallback_m
            for geom, (x0, y0, x1, y1), name in countries:
                if x0 - dlon <= lo <= x1 + dlon and y0 - dlat <= la <= y1 + dlat:
                    local = shapely.transform(geom, lambda c: (c - (lo, la)) * (kx, m_per_deg))
                    d = local.distance(origin)
                    if d <= best:
                        country, best = name, d
        iy = min(int((90.0 - la) * h / 180.0), h - 1)
        ix = int((lo + 180.0) * w / 360.0) % w
        zone = int(raster[iy, ix])
        if zone == ocean and fallback_m > 0:
            ny = int(math.ceil(fallback_m / (m_per_deg * 180.0 / h)))
            nx = int(math.ceil(fallback_m / (max(m_per_deg * math.cos(math.radians(la)), 1.0) * 360.0 / w)))
            best = fallback_m
            for yy in range(max(iy - ny, 0), min(iy + ny, h - 1) + 1):
                for xx in range(ix - nx, ix + nx + 1):
                    z = int(raster[yy, xx % w])
                    if z == ocean:
                        continue
                    plat = 90.0 - (yy + 0.5) * 180.0 / h
                    plon = (xx + 0.5) * 360.0 / w - 180.0
                    d = math.hypot((plat - la) * m_per_deg, (plon - lo) * m_per_deg * math.cos(math.radians(la)))
                    if d <= best:
                        zone, best = z, d
        code = codes[zone]
        biome = None
        if code is not None:
            num = KOPPEN_TO_BIOME_NUM[code]
            biome = RESOLVE_BIOMES[num] if num is not None else ROCK_AND_ICE
        # month in local solar time, as describe_cells takes it
        out.append((country, biome, (stamp + pd.Timedelta(seconds=round(lo * 240.0))).month_name()))
    return time.perf_counter() - started, out


def measure(path: str) -> None:
    """Child process: the stage's view (read the index, describe it); prints JSON."""
    import json

    index = pd.read_parquet(path)
    from components.captions.descriptors import describe_cells

    layers = {"country": {"kind": "country"}, "biome": {"kind": "biome_proxy"}}
    params = {"max_distance_m": 10_000.0, "workers": 2}
    started = time.perf_counter()
    frame = describe_cells(index, layers, params)  # cold: loads the layers (polygons, PNG)
    cold = time.perf_counter() - started
    unknown = {c: float(frame[c].isna().mean()) for c in ("country", "biome", "month")}
    frame[["country", "biome", "month"]].to_pickle(path + ".result.pkl")
    del frame
    warm = math.inf
    for _ in range(REPEATS):  # warm: layers loaded; best of REPEATS (the machine is shared)
        started = time.perf_counter()
        describe_cells(index, layers, params)
        warm = min(warm, time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"cold": cold, "warm": warm, "peak_bytes": peak, "unknown": unknown}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=1_300_000)
    parser.add_argument("--sample", type=int, default=4_000, help="points the baseline loops run on")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return

    import json
    import subprocess
    import tempfile

    print(f"cores visible: {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})")
    t0 = time.perf_counter()
    lat, lon = cell_centres(args.cells)
    index = make_index(lat, lon)
    n = len(index)
    tmp = Path(tempfile.mkdtemp(prefix="mesa-bench-captions-"))
    index.to_parquet(tmp / "index.parquet")
    print(f"{n:,} Major TOM cell centres (land or coast, outside Antarctica) in {time.perf_counter() - t0:.1f} s")

    # The measured run in a fresh process: its peak memory is the stage's, not this set-up's.
    child = subprocess.run([sys.executable, __file__, "--measure", str(tmp / "index.parquet")],
                           check=True, capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    frame = pd.read_pickle(tmp / "index.parquet.result.pkl")

    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    ts = index["s2l2a_timestamp"].to_numpy()[pick]
    pip_s = min(baseline_loop(lat[pick], lon[pick], ts, 0.0)[0] for _ in range(REPEATS))
    same_s, same_out = baseline_loop(lat[pick], lon[pick], ts, 10_000.0)
    same_s = min([same_s] + [baseline_loop(lat[pick], lon[pick], ts, 10_000.0)[0] for _ in range(REPEATS - 1)])

    sub = frame.iloc[pick]
    got_country, got_biome = sub["country"].to_numpy(), sub["biome"].to_numpy()
    same_country = np.array([c for c, _, _ in same_out], dtype=object)
    same_biome = np.array([b for _, b, _ in same_out], dtype=object)
    agree_country = np.mean([a == b for a, b in zip(got_country, same_country)])
    agree_biome = np.mean([a == b for a, b in zip(got_biome, same_biome)])
    agree_month = np.mean(sub["month"].to_numpy() == np.array([m for _, _, m in same_out], dtype=object))

    cold, warm = result["cold"], result["warm"]
    rate_cold, rate_warm = n / cold, n / warm
    rate_pip, rate_same = len(pick) / pip_s, len(pick) / same_s
    peak_gb = result["peak_bytes"] / 1024**3
    print()
    print(f"describe_cells, cold (layers loaded inside): {cold:7.2f} s {rate_cold:12,.0f} cells/s")
    print(f"describe_cells, warm (layers loaded before): {warm:7.2f} s {rate_warm:12,.0f} cells/s")
    print(f"loop, same job (PIP + 10 km fallbacks), {len(pick):,} sampled: {rate_same:10,.0f} cells/s"
          f" -> {n / rate_same:7,.0f} s for {n:,} (extrapolated)")
    print(f"loop, point-in-polygon + pixel only,    {len(pick):,} sampled: {rate_pip:10,.0f} cells/s"
          f" -> {n / rate_pip:7,.0f} s for {n:,} (extrapolated)")
    print(f"ratio vs the same-job loop: {rate_cold / rate_same:,.0f}x cold, {rate_warm / rate_same:,.0f}x warm")
    print(f"ratio vs the PIP-only loop: {rate_cold / rate_pip:,.0f}x cold, {rate_warm / rate_pip:,.0f}x warm")
    print(f"agreement with the same-job loop on the sample: country {agree_country:.4f}, biome "
          f"{agree_biome:.4f}, month {agree_month:.4f}")
    print("share unknown: " + ", ".join(f"{k} {v:.4f}" for k, v in result["unknown"].items()))
    print(f"peak memory of the describing process (ru_maxrss, index included): {peak_gb:.2f} GB")
    # like for like: the loops' set-up (reading and preparing the polygons) is outside their timing,
    # so the ratio target is on the warm run; the 15 s target is on the cold one
    checks = {"ratio >= 50x (warm vs same-job loop)": rate_warm / rate_same >= 50,
              "1.3 M in < 15 s (cold)": cold < 15, "peak < 2 GB": peak_gb < 2}
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))


if __name__ == "__main__":
    main()
