"""Read a Major TOM folder back and summarise it: cells, shards, bytes, classes, decode speed."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pandas as pd

from components.majortom.errors import RejectedRow
from components.majortom.schema import SOURCES
from components.majortom.shards import METADATA_FILE, SHARD_DIR, read_metadata, read_shard

READ_COLUMNS = {"s2l2a": ("B04", "B03", "B02", "cloud_mask"), "s2l1c": ("B04", "B03", "B02", "cloud_mask"),
                "dem": ("DEM",)}


def summarise_world(raw_dir: str | Path, decode: bool = True) -> dict:
    """Per source: cells in metadata, shards, bytes; with `decode`, every cell's RGB + mask (or DEM)
    is decoded and checked, and bad rows are counted by reason instead of stopping the read."""
    raw_dir = Path(raw_dir)
    summary: dict = {"raw_dir": str(raw_dir), "sources": {}}
    for source in SOURCES:
        meta_path = raw_dir / source / METADATA_FILE
        if not meta_path.exists():
            continue
        metadata = read_metadata(meta_path)
        shards = sorted((raw_dir / source / SHARD_DIR).glob("*.parquet"))
        entry = {"cells": int(len(metadata)), "shards": len(shards),
                 "bytes": int(sum(p.stat().st_size for p in shards)),
                 "duplicate_cells": int(metadata["grid_cell"].duplicated().sum())}
        if decode:
            started, decoded, rejected = time.perf_counter(), 0, Counter()
            for shard in shards:
                for item in read_shard(shard, source, READ_COLUMNS[source], on_error="collect"):
                    if isinstance(item, RejectedRow):
                        rejected[item.reason] += 1
                    else:
                        decoded += 1
            seconds = time.perf_counter() - started
            entry.update(decoded=decoded, rejected=dict(rejected), decode_seconds=round(seconds, 2),
                         cells_per_second=round(decoded / seconds, 1) if seconds else None)
        summary["sources"][source] = entry
    manifest = raw_dir / "world.parquet"
    if manifest.exists():
        world = pd.read_parquet(manifest)
        good = world[world["broken"].isna()]
        summary["synthetic"] = {
            "cells_per_landform": {k: int(v) for k, v in good["landform"].value_counts().sort_index().items()},
            "broken_rows": sorted(world["broken"].dropna().tolist()),
            "countries": int(good["country"].nunique()),
            "biomes": int(good["biome_num"].nunique()),
        }
    return summary


def format_summary(summary: dict) -> str:
    """A short human-readable report of summarise_world's result."""
    lines = [f"Major TOM data in {summary['raw_dir']}:"]
    for source, entry in summary["sources"].items():
        line = (f"  {source:6s} {entry['cells']:5d} cells in {entry['shards']} shards, "
                f"{entry['bytes'] / 1e6:8.1f} MB")
        if "decoded" in entry:
            line += f"; read back {entry['decoded']} cells at {entry['cells_per_second']} cells/s"
            if entry["rejected"]:
                line += f", bad rows: {entry['rejected']}"
        lines.append(line)
    if "synthetic" in summary:
        synth = summary["synthetic"]
        classes = ", ".join(f"{k} {v}" for k, v in synth["cells_per_landform"].items())
        lines.append(f"  synthetic world: {classes}; {synth['countries']} countries, {synth['biomes']} biomes")
        if synth["broken_rows"]:
            lines.append(f"  deliberately broken rows: {', '.join(synth['broken_rows'])}")
    return "\n".join(lines)
