"""Which cells an ingest asks for: Major TOM's metadata filters, the S2/DEM intersection, a sample, a cap.

Pure functions on metadata frames (one per source, upstream schema). The order of the steps is
fixed so that the same metadata and the same parameters give the same cells on any machine:

    1. per source: region (bbox or an OGR polygon file, tested on centre_lat / centre_lon),
       date range and cloud cover (Sentinel-2 sources), no-data fraction (every source)
    2. per source: duplicated grid cells resolved by shards.DUPLICATE_RULE
    3. intersect the required sources on grid_cell (s2l2a, dem, and s2l1c when asked)
    4. sort by grid_cell, then an optional random sample (seeded), then the cap on cells
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import IngestFilters, Selection  # params data.ingest(.filters), typed
from components.majortom.errors import ShardError
from components.majortom.schema import METADATA_SCHEMA

S2_SOURCES = ("s2l2a", "s2l1c")


@dataclass
class SelectedCells:
    """The outcome of select_cells.

    Attributes:
        cells: the chosen grid cells, sorted.
        rows: per source, the metadata rows of the chosen cells (sorted by grid_cell, one row each).
        counts: cells left after each step (for reports), e.g. {"s2l2a_filtered": 120, "paired": 90}.
    """

    cells: list[str]
    rows: dict[str, pd.DataFrame]
    counts: dict[str, int] = field(default_factory=dict)


def metadata_frame(path_or_url: str, source: str) -> tuple[pd.DataFrame, str]:
    """Read one source's metadata.parquet (local path or URL), check it has every upstream column,
    and return it with the sha256 of its bytes (reports say which metadata a selection came from)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fsspec.open(str(path_or_url), "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, OSError) as err:
        raise FileNotFoundError(f"{path_or_url}: the {source} metadata cannot be read ({err.__cause__ or err}). "
                                f"Check params data.ingest.metadata.{source} (a local path or an http(s) URL)."
                                ) from None
    try:
        frame = pq.read_table(pa.BufferReader(data)).to_pandas()
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path_or_url}: the {source} metadata is not a parquet file ({err}). "
                         f"Check params data.ingest.metadata.{source}.") from None
    missing = [c for c in METADATA_SCHEMA.names if c not in frame.columns]
    if missing:
        raise ShardError(str(path_or_url), None, None, ", ".join(missing), "missing_column",
                         f"the {source} metadata lacks columns {missing} (it has {list(frame.columns)})",
                         "Point data.ingest.metadata at a Major TOM metadata.parquet (upstream schema, "
                         "REFERENCE.md section 2).")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame, hashlib.sha256(data).hexdigest()


def _region_mask(frame: pd.DataFrame, filters: IngestFilters) -> np.ndarray:
    lon, lat = frame["centre_lon"].to_numpy(float), frame["centre_lat"].to_numpy(float)
    keep = np.ones(len(frame), dtype=bool)
    if filters.bbox is not None:
        min_lon, min_lat, max_lon, max_lat = filters.bbox
        keep &= (lon >= min_lon) & (lon <= max_lon) & (lat >= min_lat) & (lat <= max_lat)
    if filters.region_file:
        keep &= _inside_polygons(lon, lat, filters.region_file)
    return keep


def _inside_polygons(lon: np.ndarray, lat: np.ndarray, region_file: str) -> np.ndarray:
    import geopandas as gpd
    import shapely

    if not Path(region_file).exists() and "://" not in region_file:
        raise FileNotFoundError(f"data.ingest.filters.region_file {region_file!r} does not exist: give any "
                                "OGR-readable polygon file (GeoPackage, Shapefile, GeoJSON)")
    shapes = gpd.read_file(region_file)
    if shapes.crs is not None:
        shapes = shapes.to_crs("EPSG:4326")
    polygons = shapes.geometry[shapes.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polygons.empty:
        raise ValueError(f"{region_file}: no polygons in the file (geometry types "
                         f"{sorted(set(shapes.geometry.geom_type))}); a region must be polygons")
    region = shapely.union_all(polygons.to_numpy())
    # Cells on the boundary count as inside, like a bbox's inclusive edges.
    return shapely.intersects_xy(region, lon, lat)


def _range_mask(values: pd.Series, low, high) -> np.ndarray:
    keep = np.ones(len(values), dtype=bool)
    if low is not None:
        keep &= (values >= low).to_numpy()
    if high is not None:
        keep &= (values <= high).to_numpy()
    return keep


def filter_source(frame: pd.DataFrame, source: str, filters: IngestFilters) -> pd.DataFrame:
    """One source's metadata rows that pass the filters (step 1)."""
    keep = _region_mask(frame, filters)
    keep &= _range_mask(frame["nodata"], *filters.nodata)
    if source in S2_SOURCES:
        first, last = filters.date_range
        day = frame["timestamp"].dt.normalize()
        keep &= _range_mask(day, pd.Timestamp(first) if first else None, pd.Timestamp(last) if last else None)
        keep &= _range_mask(frame["cloud_cover"], *filters.cloud_cover)
    return frame[keep]


def required_sources(selection: Selection) -> tuple[str, ...]:
    return ("s2l2a", "s2l1c", "dem") if selection.need_l1c else ("s2l2a", "dem")


def select_cells(metadata: dict[str, pd.DataFrame], selection: Selection) -> SelectedCells:
    """Steps 1-4 on the sources' metadata frames; see the module docstring."""
    from components.majortom.shards import drop_duplicate_cells

    sources = required_sources(selection)
    missing = [s for s in sources if s not in metadata]
    if missing:
        raise ValueError(f"no metadata for {missing}: set data.ingest.metadata.{missing[0]} "
                         f"(need_l1c is {selection.need_l1c})")
    counts: dict[str, int] = {}
    per_source: dict[str, pd.DataFrame] = {}
    for source in sources:
        kept = filter_source(metadata[source], source, selection.filters)
        counts[f"{source}_filtered"] = int(len(kept))
        unique, _ = drop_duplicate_cells(kept, source)
        per_source[source] = unique
    common = sorted(set.intersection(*(set(per_source[s]["grid_cell"]) for s in sources)))
    counts["paired"] = len(common)
    if selection.sample is not None and selection.sample < len(common):
        # Draw positions in the sorted list: the same candidates and seed give the same cells.
        picked = np.random.default_rng(selection.seed).choice(len(common), size=selection.sample, replace=False)
        common = [common[i] for i in sorted(picked)]
    counts["sampled"] = len(common)
    if selection.max_cells is not None:
        common = common[: selection.max_cells]
    counts["selected"] = len(common)
    wanted = set(common)
    rows = {}
    for source in sources:
        part = per_source[source]
        rows[source] = part[part["grid_cell"].isin(wanted)].sort_values("grid_cell", kind="mergesort") \
            .reset_index(drop=True)
    return SelectedCells(common, rows, counts)


def shard_layout(cells: Sequence[str], cells_per_shard: int) -> list[list[str]]:
    """Sorted cells cut into local shards of `cells_per_shard`: shard k always holds the same cells."""
    ordered = sorted(cells)
    return [ordered[i: i + cells_per_shard] for i in range(0, len(ordered), cells_per_shard)]
