"""Training-sample preparation against decoding alone (the limit), on 2 cores.

Measured: decode -> shadow correction -> crop / resample / normalise -> sample shard, for the
curated cells of a project (run `make demo` first), two worker threads as the stage runs them.
Baseline (the limit): decoding the same rasters (L2A and L1C RGB + cloud mask, DEM) with the same
reader and threads, nothing else. Prints cells per second for both and the ratio (target: within 2x).

    python benchmarks/prepare.py [PROJECT_DIR] [--cells N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows.settings import configure_environment  # noqa: E402

configure_environment()

import pandas as pd  # noqa: E402

from components.curation.curate import absolute_shard_paths  # noqa: E402
from components.layout import CAPTIONS_FILE, CURATED_INDEX  # noqa: E402
from components.params import load_params  # noqa: E402
from components.samples.prepare import S2_COLUMNS, PrepareParams, _one, iter_groups  # noqa: E402
from components.samples.split import assign_split  # noqa: E402
from components.samples.stats import write_prepared_shard  # noqa: E402

WORKERS = 2


def decode_only(cells: pd.DataFrame) -> None:
    for _, row in cells.iterrows():
        _one(row["s2l2a_shard"], "s2l2a", int(row["s2l2a_row"]), S2_COLUMNS)
        if isinstance(row["s2l1c_shard"], str):
            _one(row["s2l1c_shard"], "s2l1c", int(row["s2l1c_row"]), S2_COLUMNS)
        _one(row["dem_shard"], "dem", int(row["dem_row"]), ("DEM",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", default=".")
    parser.add_argument("--cells", type=int, default=96)
    args = parser.parse_args()
    root = Path(args.project)
    index_path = root / CURATED_INDEX
    if not index_path.exists():
        raise SystemExit(f"{index_path} not found: run `make demo` (or the validate and captions stages) first")
    params = load_params(root)
    prepare = PrepareParams.from_params(params["prepare"], params["validate"]["cloud_classes"])
    index = absolute_shard_paths(pd.read_parquet(index_path), root).head(args.cells)
    descriptors = pd.read_parquet(root / CAPTIONS_FILE)
    splits = dict(zip(index["grid_cell"], assign_split(index["grid_cell"])))
    groups = [group for _, group in iter_groups(index)]
    # Two chunks per worker per group so both threads stay busy whatever the shard sizes.
    chunks = [g.iloc[i::WORKERS] for g in groups for i in range(WORKERS)]
    out = Path(tempfile.mkdtemp(prefix="mesa-bench-prepare-"))

    def timed(fn) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(fn, range(len(chunks))))
        return time.perf_counter() - started

    def full(i: int) -> None:
        write_prepared_shard(chunks[i], descriptors, splits, prepare, 1000.0, out / f"part_{i:05d}.parquet")

    decode_only(chunks[0].head(2))  # warm-up
    limit = min(timed(lambda i: decode_only(chunks[i])) for _ in range(2))
    measured = min(timed(full) for _ in range(2))
    n = len(index)
    print(f"project: {root.resolve()} ({n} cells, {prepare.image_px} px samples, both variants: "
          f"{prepare.store_both_variants}, {WORKERS} threads)")
    print(f"limit  (decode L2A + L1C + DEM): {n / limit:7.1f} cells/s")
    print(f"prepare (decode + shadow + resample + normalise + shard): {n / measured:7.1f} cells/s")
    print(f"ratio prepare/limit: {measured / limit:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
