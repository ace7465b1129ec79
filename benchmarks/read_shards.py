"""Reading + decoding RGB + cloud mask + DEM from Major TOM shards, against the limit.

Baseline (the limit): decoding the very same GeoTIFF bytes with no parquet around them (bytes
already in memory, same decoder). Measured: `read_shard` over every shard (open, read only the
needed columns one row group at a time, decode, check dtype/shape/CRS). Prints cells per second
for both and the ratio; target: within 1.3x of the limit.

    python benchmarks/read_shards.py [RAW_DIR]   # default: data/raw, else a fresh 64-cell world
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows.settings import configure_environment  # noqa: E402

configure_environment()

import pyarrow.parquet as pq  # noqa: E402

from components.layout import SYNTH_OUT  # noqa: E402
from components.majortom.geotiff import decode_geotiff  # noqa: E402
from components.majortom.shards import SHARD_DIR, read_shard  # noqa: E402
from components.majortom.summary import READ_COLUMNS  # noqa: E402

SOURCES = ("s2l2a", "dem")


def world_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    if (SYNTH_OUT / "s2l2a").exists():
        return SYNTH_OUT
    from components.majortom.synthetic.world import SynthParams, build_world

    out = Path(tempfile.mkdtemp(prefix="mesa-bench-")) / "raw"
    print(f"building a 64-cell synthetic world in {out} ...")
    build_world(out, SynthParams(cells=64, cells_per_shard=32, broken_rows=False))
    return out


def shards(raw: Path, source: str) -> list[Path]:
    return sorted((raw / source / SHARD_DIR).glob("*.parquet"))


def limit_run(blobs: list[bytes]) -> float:
    started = time.perf_counter()
    for blob in blobs:
        try:
            decode_geotiff(blob)
        except Exception:  # the world's deliberately corrupt cell costs the reader a try too
            pass
    return time.perf_counter() - started


def reader_run(raw: Path) -> tuple[float, int]:
    started, cells = time.perf_counter(), 0
    for source in SOURCES:
        for shard in shards(raw, source):
            for item in read_shard(shard, source, READ_COLUMNS[source], on_error="collect"):
                cells += source == "s2l2a"
    return time.perf_counter() - started, cells


def main() -> None:
    raw = world_dir()
    blobs = []
    for source in SOURCES:
        for shard in shards(raw, source):
            table = pq.read_table(shard, columns=list(READ_COLUMNS[source]))
            blobs += [value for column in table.columns for value in column.to_pylist() if value]
    limit_run(blobs[:8])  # warm GDAL up
    repeats = 3
    limit = min(limit_run(blobs) for _ in range(repeats))
    measured, cells = min((reader_run(raw) for _ in range(repeats)), key=lambda r: r[0])
    print(f"world: {raw} ({cells} cells, {len(blobs)} GeoTIFFs: RGB + cloud mask + DEM)")
    print(f"limit  (decode bytes, no parquet): {cells / limit:8.1f} cells/s")
    print(f"reader (read_shard, checked):      {cells / measured:8.1f} cells/s")
    print(f"ratio reader/limit: {measured / limit:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
