"""Reading and writing Major TOM parquet shards (Core-S2L2A, Core-S2L1C, Core-DEM) and metadata.parquet.

Reading decodes only the columns asked for, one row group at a time (upstream shards hold ~500
cells of 12 bands each: a whole shard never fits the budget), and checks every decoded raster
against the schema (dtype, shape) and the cell's UTM zone. Paths may be local or fsspec URLs.

Writing is atomic (temporary file, then rename), one row group per cell as upstream does.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.atomic import atomic_write
from components.majortom.errors import RejectedRow, ShardError
from components.majortom.geotiff import Raster, decode_geotiff
from components.majortom.grid import cell_footprint, default_grid
from components.majortom.schema import METADATA_SCHEMA, SHARD_SCHEMAS, TILE_SIDE_M, raster_spec

SHARD_DIR = "images"  # upstream layout: <source>/images/part_00000.parquet + <source>/metadata.parquet
METADATA_FILE = "metadata.parquet"


@dataclass
class CellData:
    """One decoded row of a shard: where it came from and the rasters asked for, by column name."""

    source: str
    shard: str
    row: int
    grid_cell: str
    product_id: str | None
    product_datetime: str | None
    rasters: dict[str, Raster] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Writing


def write_shard(path: str | Path, source: str, rows: Sequence[dict],
                file_metadata: dict[str, str] | None = None) -> Path:
    """Write cells as a Major TOM shard of `source`, one row group per cell, atomically.

    Args:
        path: destination .parquet file.
        source: "s2l2a", "s2l1c" or "dem" (picks the schema).
        rows: one dict per cell with every column of the schema.
        file_metadata: extra key/value pairs stored in the parquet footer (e.g. which bands
            of a synthetic world are constant placeholders), not as columns, so the column
            schema stays exactly upstream's.
    """
    schema = SHARD_SCHEMAS[source]
    if file_metadata:
        schema = schema.with_metadata({**(schema.metadata or {}), **file_metadata})

    def _write(tmp: Path) -> None:
        # GeoTIFF bytes are already compressed; parquet compression would only cost time.
        with pq.ParquetWriter(tmp, schema, compression="none") as writer:
            for row in rows:
                missing = [name for name in schema.names if name not in row]
                if missing:
                    raise ValueError(f"cell {row.get('grid_cell')!r} lacks columns {missing} for a {source} shard")
                writer.write_table(pa.Table.from_pylist([row], schema=schema))

    return atomic_write(path, _write)


def write_metadata(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a metadata.parquet in the upstream schema (columns cast, extra columns refused)."""
    extra = [c for c in frame.columns if c not in METADATA_SCHEMA.names]
    if extra:
        raise ValueError(f"{path}: columns {extra} are not in the Major TOM metadata schema")
    table = pa.Table.from_pandas(frame[METADATA_SCHEMA.names], schema=METADATA_SCHEMA, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_url(metadata_path: str | Path, parquet_url: str) -> str:
    """A metadata row's parquet_url as a readable path: URLs and absolute paths as they are,
    relative paths (what we write, so a data folder can move) against the metadata's folder."""
    if "://" in parquet_url or os.path.isabs(parquet_url):
        return parquet_url
    return str(Path(metadata_path).parent / parquet_url)


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read a metadata.parquet (local or URL); `timestamp` becomes datetime whatever it was stored as."""
    with fsspec.open(str(path), "rb") as handle:
        frame = pq.read_table(handle).to_pandas()
    missing = [c for c in METADATA_SCHEMA.names if c not in frame.columns]
    if missing:
        raise ShardError(str(path), None, None, ", ".join(missing), "missing_column",
                         f"metadata lacks columns {missing}",
                         "Use a Major TOM metadata.parquet (upstream schema, see REFERENCE.md section 2).")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame


def shard_file_metadata(path: str | Path) -> dict[str, str]:
    """Key/value pairs stored in a shard's parquet footer (decoded to str)."""
    with fsspec.open(str(path), "rb") as handle:
        raw = pq.ParquetFile(handle).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW")}


def _check_columns(shard: str, source: str, schema: pa.Schema, columns: Sequence[str]) -> None:
    expected = SHARD_SCHEMAS[source]
    for name in columns:
        if name not in schema.names:
            raise ShardError(shard, None, None, name, "missing_column",
                             f"the column is missing (the file has {schema.names})",
                             f"Is this a {source} shard? Point params at Major TOM {source} shards.")
        want, got = expected.field(name).type, schema.field(name).type
        if not got.equals(want) and not (pa.types.is_binary(want) and pa.types.is_large_binary(got)) \
                and not (pa.types.is_string(want) and pa.types.is_large_string(got)):
            raise ShardError(shard, None, None, name, "wrong_column_type",
                             f"the column has type {got}, expected {want}",
                             "Rewrite the shard in the upstream schema.")


ALIGNMENT_TOLERANCE_M = 1.0


class _FootprintCache:
    """Footprints of one cell per CRS. A Core tile is cut in its Sentinel-2 product's UTM zone,
    which is not always the zone of the cell's own grid point, so the CRS comes from the tile."""

    def __init__(self, shard: str, row: int, grid_cell: str):
        self.shard, self.row, self.grid_cell = shard, row, grid_cell
        self._by_crs: dict[str, object] = {}
        try:
            default_grid().parse_cell(grid_cell)
        except (ValueError, TypeError) as exc:
            raise ShardError(shard, row, grid_cell, "grid_cell", "bad_grid_cell", str(exc),
                             "Grid cells are named like '454U_120R' (Major TOM 10 km grid).") from None

    def get(self, column: str, crs: str):
        if crs not in self._by_crs:
            code = crs.upper().removeprefix("EPSG:")
            utm = code.isdigit() and int(code) // 100 in (326, 327) and 1 <= int(code) % 100 <= 60
            if not utm:
                raise ShardError(self.shard, self.row, self.grid_cell, column, "crs_mismatch",
                                 f"CRS is {crs or 'missing'}, not a UTM zone",
                                 "Major TOM tiles are cut in UTM; exclude this tile.")
            self._by_crs[crs] = cell_footprint(self.grid_cell, epsg=int(code))
        return self._by_crs[crs]


def decode_cell_raster(shard: str, row: int, grid_cell: str, source: str, column: str,
                       data: bytes | memoryview | None, footprints: _FootprintCache | None) -> Raster:
    """Decode one GeoTIFF cell value and check dtype, shape and (with `footprints`) that the tile
    sits on the cell: a UTM CRS, the band's pixel size, and its origin at the cell's bottom-left grid
    point minus the 340 m margin in that CRS. A ShardError names where it failed."""
    if data is None:
        raise ShardError(shard, row, grid_cell, column, "missing_value", "the value is null",
                         "Drop the cell or re-download it.")
    try:
        raster = decode_geotiff(data)
    except Exception as exc:  # rasterio raises several types for corrupt bytes
        raise ShardError(shard, row, grid_cell, column, "corrupt_geotiff",
                         f"the GeoTIFF bytes cannot be decoded ({type(exc).__name__}: {exc})",
                         "Re-download the cell; the rest of the shard is still usable.") from None
    spec = raster_spec(source, column)
    if raster.array.dtype != spec.dtype:
        raise ShardError(shard, row, grid_cell, column, "wrong_dtype",
                         f"dtype is {raster.array.dtype}, expected {spec.dtype}",
                         "Major TOM stores S2 bands as uint16, cloud_mask as uint8 and DEM as float32.")
    if raster.array.shape != (spec.side_px, spec.side_px):
        raise ShardError(shard, row, grid_cell, column, "wrong_shape",
                         f"shape is {raster.array.shape}, expected ({spec.side_px}, {spec.side_px})",
                         "Each Major TOM tile covers 10,680 m at the band's native resolution.")
    if footprints is not None:
        footprint = footprints.get(column, raster.crs)
        left, _, _, top = footprint.bounds
        pixel_m = TILE_SIDE_M / spec.side_px
        off = max(abs(raster.transform.c - left), abs(raster.transform.f - top))
        if off > ALIGNMENT_TOLERANCE_M or abs(raster.transform.a - pixel_m) > 1e-6 \
                or abs(raster.transform.e + pixel_m) > 1e-6:
            raise ShardError(shard, row, grid_cell, column, "crs_mismatch",
                             f"the tile is misaligned with its grid cell: origin ({raster.transform.c:.1f}, "
                             f"{raster.transform.f:.1f}) and pixel {raster.transform.a:g} m in {raster.crs}, "
                             f"expected ({left:.1f}, {top:.1f}) and {pixel_m:g} m (off by {off:.0f} m)",
                             "Exclude the tile, or re-cut it on the Major TOM grid.")
    return raster


def read_shard(
    path: str | Path,
    source: str,
    columns: Sequence[str],
    *,
    rows: Iterable[int] | None = None,
    on_error: str = "raise",
    check_crs: bool = True,
) -> Iterator[CellData | RejectedRow]:
    """Yield the cells of one shard with only `columns` decoded.

    Args:
        path: a shard (local path or fsspec URL).
        source: "s2l2a", "s2l1c" or "dem".
        columns: raster columns to decode (e.g. ("B04", "B03", "B02", "cloud_mask") or ("DEM",));
            other columns are never read from disk, let alone decoded.
        rows: row indices to read (as in metadata's parquet_row); default all.
        on_error: "raise" stops at the first bad row with a ShardError; "collect" yields a
            RejectedRow for it (and for every row of a shard whose schema is wrong) and goes on.
        check_crs: check that every raster sits on its grid cell (UTM CRS, pixel size, origin).
    """
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', not {on_error!r}")
    shard = str(path)
    meta_columns = ["grid_cell"] + (["product_id", "product_datetime"] if source != "dem" else [])
    with _open_parquet(shard) as parquet:
        try:
            _check_columns(shard, source, parquet.schema_arrow, list(meta_columns) + list(columns))
        except ShardError as err:
            if on_error == "raise":
                raise
            yield from _reject_whole_shard(parquet, source, err)
            return
        wanted = None if rows is None else set(rows)
        row_index = 0
        for group in range(parquet.num_row_groups):
            n_rows = parquet.metadata.row_group(group).num_rows
            group_rows = range(row_index, row_index + n_rows)
            row_index += n_rows
            if wanted is not None and not wanted.intersection(group_rows):
                continue
            # One cell per row group upstream: a thread pool per tiny read costs more than it saves.
            table = parquet.read_row_group(group, columns=meta_columns + list(columns), use_threads=False)
            values = {name: table.column(name).to_pylist() for name in meta_columns}
            # GeoTIFF bytes are handed to the decoder as views on Arrow's buffers: no copy.
            blobs = {name: table.column(name).combine_chunks() for name in columns}
            for offset, row in enumerate(group_rows):
                if wanted is not None and row not in wanted:
                    continue
                grid_cell = values["grid_cell"][offset]
                cell = CellData(source, shard, row, grid_cell,
                                values.get("product_id", [None] * n_rows)[offset],
                                values.get("product_datetime", [None] * n_rows)[offset])
                try:
                    footprints = _FootprintCache(shard, row, grid_cell) if check_crs else None
                    for column in columns:
                        cell.rasters[column] = decode_cell_raster(
                            shard, row, grid_cell, source, column, _view(blobs[column][offset]), footprints)
                except ShardError as err:
                    if on_error == "raise":
                        raise
                    yield RejectedRow.from_error(source, err)
                    continue
                yield cell


def _view(value: pa.Scalar) -> memoryview | None:
    return memoryview(value.as_buffer()) if value.is_valid else None


@contextlib.contextmanager
def _open_parquet(shard: str) -> Iterator[pq.ParquetFile]:
    """Local files are memory-mapped (no copy through a Python file object); URLs go through fsspec."""
    if "://" not in shard or shard.startswith("file://"):
        parquet = pq.ParquetFile(shard.removeprefix("file://"), memory_map=True)
        try:
            yield parquet
        finally:
            parquet.close()
        return
    with fsspec.open(shard, "rb") as handle:
        yield pq.ParquetFile(handle)


def _reject_whole_shard(parquet: pq.ParquetFile, source: str, err: ShardError) -> Iterator[RejectedRow]:
    names = parquet.schema_arrow.names
    cells = parquet.read(columns=["grid_cell"]).column(0).to_pylist() if "grid_cell" in names \
        else [None] * parquet.metadata.num_rows
    for row, grid_cell in enumerate(cells):
        yield RejectedRow(source, err.shard, row, grid_cell, err.column, err.reason, str(err))


# ---------------------------------------------------------------------------------------------
# Pairing sources by grid cell


DUPLICATE_RULE = (
    "When a grid cell appears more than once in a source's metadata (upstream has ~728 such rows), "
    "keep the row with the lowest cloud_cover, then the lowest nodata, then the latest timestamp, "
    "then the smallest product_id; the others are reported as duplicates."
)


@dataclass
class Pairing:
    """Sources joined on grid_cell.

    Attributes:
        cells: one row per grid cell present in every required source; per source the columns
            `{source}_product_id`, `{source}_timestamp`, `{source}_cloud_cover`, `{source}_nodata`,
            `{source}_crs`, `{source}_shard` (resolved path), `{source}_row`; optional sources
            are NaN where missing. Plus grid_cell, grid_row_u, grid_col_r, centre_lat, centre_lon.
        duplicates: rows dropped by DUPLICATE_RULE (source, grid_cell, product_id, kept_product_id).
        unpaired: cells missing a required source (grid_cell, present, missing).
    """

    cells: pd.DataFrame
    duplicates: pd.DataFrame
    unpaired: pd.DataFrame


def drop_duplicate_cells(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply DUPLICATE_RULE to one source's metadata; return (unique rows, report of dropped rows)."""
    ordered = frame.sort_values(["grid_cell", "cloud_cover", "nodata", "timestamp", "product_id"],
                                ascending=[True, True, True, False, True], kind="mergesort")
    keep = ~ordered.duplicated("grid_cell", keep="first")
    kept, dropped = ordered[keep], ordered[~keep]
    kept_product = kept.set_index("grid_cell")["product_id"]
    report = pd.DataFrame({
        "source": source,
        "grid_cell": dropped["grid_cell"].to_numpy(),
        "product_id": dropped["product_id"].to_numpy(),
        "kept_product_id": kept_product.reindex(dropped["grid_cell"]).to_numpy(),
    })
    return kept.sort_index(), report


def pair_sources(metadata: dict[str, pd.DataFrame], metadata_paths: dict[str, str | Path],
                 required: Sequence[str] = ("s2l2a", "dem"), optional: Sequence[str] = ("s2l1c",)) -> Pairing:
    """Join the sources' metadata on grid_cell after resolving duplicates (see Pairing)."""
    per_source, reports = {}, []
    for source, frame in metadata.items():
        unique, report = drop_duplicate_cells(frame, source)
        reports.append(report)
        unique = unique.assign(
            shard=[resolve_url(metadata_paths[source], u) for u in unique["parquet_url"]],
            row=unique["parquet_row"].astype("int64"),
        )
        keep = ["grid_cell", "product_id", "timestamp", "cloud_cover", "nodata", "crs", "shard", "row"]
        per_source[source] = unique[keep + ["grid_row_u", "grid_col_r", "centre_lat", "centre_lon"]]

    first = required[0]
    location = per_source[first][["grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon"]]
    cells = None
    for source in list(required) + [s for s in optional if s in per_source]:
        part = per_source[source].drop(columns=["grid_row_u", "grid_col_r", "centre_lat", "centre_lon"])
        part = part.rename(columns={c: f"{source}_{c}" for c in part.columns if c != "grid_cell"})
        how = "inner" if source in required else "left"
        cells = part if cells is None else cells.merge(part, on="grid_cell", how=how)
    cells = location.merge(cells, on="grid_cell", how="inner").sort_values("grid_cell").reset_index(drop=True)

    present = {s: set(per_source[s]["grid_cell"]) for s in required}
    everywhere = set.union(*present.values())
    unpaired_rows = []
    for cell in sorted(everywhere):
        missing = [s for s in required if cell not in present[s]]
        if missing:
            unpaired_rows.append({"grid_cell": cell,
                                  "present": ",".join(s for s in required if s not in missing),
                                  "missing": ",".join(missing)})
    duplicates = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame()
    return Pairing(cells, duplicates, pd.DataFrame(unpaired_rows, columns=["grid_cell", "present", "missing"]))

