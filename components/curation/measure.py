"""One decode pass over a group of paired cells: per-cell statistics, and rejects for rows that
cannot be read. DEM tiles are measured first (small), so each Sentinel-2 tile is measured as it
streams by and never held: memory stays flat even for upstream's 500-cell shards."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from components.curation.stats import dem_statistics, image_statistics, valid_fraction
from components.majortom.errors import RejectedRow
from components.majortom.shards import read_shard

RGB = ("B04", "B03", "B02")


def _rows_by_shard(cells: pd.DataFrame, source: str) -> dict[str, list[int]]:
    present = cells[cells[f"{source}_shard"].notna()]
    groups: dict[str, list[int]] = {}
    for shard, row in zip(present[f"{source}_shard"], present[f"{source}_row"]):
        groups.setdefault(str(shard), []).append(int(row))
    return groups


def _stream(cells: pd.DataFrame, source: str, columns: Sequence[str]):
    """Decoded cells (or RejectedRows) of one source for the cells' rows, shard by shard."""
    wanted = set(cells["grid_cell"])
    for shard, rows in _rows_by_shard(cells, source).items():
        for item in read_shard(shard, source, columns, rows=sorted(rows), on_error="collect"):
            if item.grid_cell in wanted:
                yield item


def measure_cells(cells: pd.DataFrame, cloud_classes: Sequence[int]) -> tuple[pd.DataFrame, list[RejectedRow]]:
    """Statistics for paired cells (rows of shards.Pairing.cells) and the rows that could not be read.

    Returns one row per measured cell: grid_cell, has_s2l2a / has_s2l1c / has_dem, per source
    `{source}_shape`, `{source}_nodata_fraction`, `{source}_cloud_fraction` (S2), the DEM's
    finite fraction, elevation statistics and landform inputs (gentle_share, relief_m,
    profile_upper_share), valid_fraction and date_gap_days (L1C vs L2A).
    """
    stats: dict[str, dict] = {c: {"grid_cell": c, "has_s2l2a": False, "has_s2l1c": False, "has_dem": False}
                              for c in cells["grid_cell"]}
    rejected: list[RejectedRow] = []
    dem_valid: dict[str, np.ndarray] = {}

    # 1. DEM first: its valid mask decides which image pixels are usable.
    for item in _stream(cells, "dem", ("DEM",)):
        if isinstance(item, RejectedRow):
            rejected.append(item)
            continue
        raster = item.rasters["DEM"]
        dem = dem_statistics(raster.array, raster.nodata)
        dem_valid[item.grid_cell] = dem.pop("valid")
        stats[item.grid_cell].update({"has_dem": True, **{f"dem_{k}": v for k, v in dem.items()
                                                            if k not in ("gentle_share", "relief_m",
                                                                         "profile_upper_share")}},
                                     gentle_share=dem["gentle_share"], relief_m=dem["relief_m"],
                                     profile_upper_share=dem["profile_upper_share"])

    # 2. Sentinel-2, one tile at a time.
    for source in ("s2l2a", "s2l1c"):
        if f"{source}_shard" not in cells:
            continue
        for item in _stream(cells, source, RGB + ("cloud_mask",)):
            if isinstance(item, RejectedRow):
                rejected.append(item)
                continue
            image = image_statistics([item.rasters[b].array for b in RGB], item.rasters["cloud_mask"].array,
                                     cloud_classes)
            row = stats[item.grid_cell]
            row.update({f"has_{source}": True, f"{source}_shape": image["shape"],
                        f"{source}_nodata_fraction": image["nodata_fraction"],
                        f"{source}_cloud_fraction": image["cloud_fraction"]})
            if source == "s2l2a":
                row["valid_fraction"] = valid_fraction(image["invalid"], dem_valid.get(item.grid_cell))

    frame = pd.DataFrame(list(stats.values()))
    if "s2l1c_timestamp" in cells:
        gap = (cells.set_index("grid_cell")["s2l1c_timestamp"] - cells.set_index("grid_cell")["s2l2a_timestamp"])
        frame["date_gap_days"] = frame["grid_cell"].map(gap.abs().dt.total_seconds() / 86_400.0)
    return frame, rejected
