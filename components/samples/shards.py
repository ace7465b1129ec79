"""Training-sample shards: a few large parquet files, written atomically and byte-identically.

On-disk format (``FORMAT_VERSION`` 1), one row per sample, rows sorted by ``sample_id``:

=================  ============  ==============================================================
column             arrow type    content
=================  ============  ==============================================================
sample_id          string        the sample's stable id (= grid_cell); seeds caption augmentation
grid_cell          string        Major TOM grid cell
split              string        "train" or "test" (see ``components.samples.split``)
dem_mean_m         float64       the cell's mean elevation, metres (``dem`` is relative to it)
l1c_missing        bool          no L1C for the cell: ``rgb_shadow`` could not be made
country ... month  string        the six caption descriptors (country, biome, ecoregion,
                                 landform_local, landform_regional, month) and each one's
                                 ``_short`` form, in that order; null when unknown
rgb                large_binary  uint16 (H, W, 3): the plain L2A image, samples' RGB rule
rgb_shadow         large_binary  uint16 (H, W, 3): the shadow-corrected image; null when not kept
dem                large_binary  float32 (H, W): elevation minus ``dem_mean_m``, metres
mask               large_binary  uint8 (H, W): 1 = valid pixel
mask_latent        large_binary  uint8 (H / f, W / f): 1 = valid latent position
=================  ============  ==============================================================

Each array cell holds the array's raw bytes, C order, little-endian. Dtype and shape are not
repeated per row: every sample of a shard has the same shapes, recorded once in the schema
metadata under ``mesa.samples`` (JSON, sorted keys)::

    {"arrays": {"dem": {"dtype": "<f4", "shape": [64, 64]}, ...}, "format": "mesa-samples",
     "l1c_missing_rows": 0, "latent_factor": 8, "rgb_shadow_rows": 12, "row_group_size": 16,
     "rows": 12, "splits": {"test": 1, "train": 11}, "version": 1}

Decoding is ``np.frombuffer`` on the Arrow buffer of a row group: zero-copy, no per-pixel
Python. Raw bytes rather than Arrow fixed-size lists because they keep the dtype exact
(uint16, float32 bits) and decode without a list-offset pass; the price is that the shapes
live in the metadata, which ``read_sample_shard`` checks every value against.

Row groups hold a fixed number of samples (``row_group_size``, default 16: about 160 MB at
768 px with both RGB variants), the unit a reader loads at once. Dictionary encoding and
statistics are on for the scalar columns only. Nothing in the file depends on the time or the
machine, so the same records (in any order) give the same bytes with the same pyarrow version.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.atomic import atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "DESCRIPTORS",
    "DESCRIPTOR_COLUMNS",
    "ARRAY_COLUMNS",
    "SCALAR_COLUMNS",
    "COLUMNS",
    "SAMPLE_SCHEMA",
    "SampleShardError",
    "SampleShardReader",
    "write_sample_shard",
    "read_sample_shard",
    "shard_info",
]

FORMAT = "mesa-samples"
FORMAT_VERSION = 1
METADATA_KEY = b"mesa.samples"
DEFAULT_ROW_GROUP_SIZE = 16

#: The caption descriptors a sample carries (each also as ``<name>_short``).
DESCRIPTORS: tuple[str, ...] = ("country", "biome", "ecoregion", "landform_local", "landform_regional", "month")
DESCRIPTOR_COLUMNS: tuple[str, ...] = tuple(c for d in DESCRIPTORS for c in (d, f"{d}_short"))
#: Array columns and their stored dtype (little-endian).
ARRAY_DTYPES: dict[str, np.dtype] = {
    "rgb": np.dtype("<u2"),
    "rgb_shadow": np.dtype("<u2"),
    "dem": np.dtype("<f4"),
    "mask": np.dtype("u1"),
    "mask_latent": np.dtype("u1"),
}
ARRAY_COLUMNS: tuple[str, ...] = tuple(ARRAY_DTYPES)
SCALAR_COLUMNS: tuple[str, ...] = ("sample_id", "grid_cell", "split", "dem_mean_m", "l1c_missing", *DESCRIPTOR_COLUMNS)
COLUMNS: tuple[str, ...] = (*SCALAR_COLUMNS, *ARRAY_COLUMNS)
_STRING_COLUMNS = ("sample_id", "grid_cell", "split", *DESCRIPTOR_COLUMNS)
_REQUIRED = ("grid_cell", "split", "dem_mean_m", "rgb", "dem", "mask", "mask_latent")

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("grid_cell", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("dem_mean_m", pa.float64(), nullable=False),
        pa.field("l1c_missing", pa.bool_(), nullable=False),
        *(pa.field(c, pa.string()) for c in DESCRIPTOR_COLUMNS),
        *(pa.field(c, pa.large_binary(), nullable=(c == "rgb_shadow")) for c in ARRAY_COLUMNS),
    ]
)


class SampleShardError(ValueError):
    """A sample shard (or a record for one) that breaks the format: says where and what to do."""


# ---------------------------------------------------------------------------------------------
# Writing


def _where(index: int, record: Mapping[str, Any]) -> str:
    name = record.get("sample_id") or record.get("grid_cell")
    return f"record {index} (sample {name!r})" if name else f"record {index}"


def _descriptor(value: Any, column: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing markers
        return None
    raise SampleShardError(f"{where}: {column} is {value!r}; a descriptor must be a string or None")


def _check_array(name: str, value: Any, where: str) -> np.ndarray:
    """The record's array as the stored dtype (a view when it already is), or a clear error."""
    array = np.asarray(value)
    target = ARRAY_DTYPES[name]
    kind = array.dtype.kind
    if name in ("rgb", "rgb_shadow"):
        if array.dtype != np.uint16:
            raise SampleShardError(
                f"{where}: {name} has dtype {array.dtype}, expected uint16: encode reflectance with "
                "the samples' RGB rule before writing"
            )
    elif name == "dem":
        if kind not in "fiu":
            raise SampleShardError(f"{where}: dem has dtype {array.dtype}, expected float32 metres")
    else:  # masks: bool or 0/1 integers
        if kind not in "biu":
            raise SampleShardError(f"{where}: {name} has dtype {array.dtype}, expected uint8 or bool (1 = valid)")
        if kind != "b" and array.size and (array.min() < 0 or array.max() > 1):
            raise SampleShardError(f"{where}: {name} holds values other than 0 and 1 (1 = valid, 0 = masked)")
    return np.asarray(array, dtype=target)


def _array_shapes(first: Mapping[str, np.ndarray], where: str) -> dict[str, tuple[int, ...]]:
    rgb, dem, mask, latent = (first[k].shape for k in ("rgb", "dem", "mask", "mask_latent"))
    if len(rgb) != 3 or rgb[2] != 3:
        raise SampleShardError(f"{where}: rgb has shape {rgb}, expected (H, W, 3)")
    if dem != rgb[:2] or mask != rgb[:2]:
        raise SampleShardError(f"{where}: dem {dem} and mask {mask} must have the image's shape {rgb[:2]}")
    if (
        len(latent) != 2
        or min(latent) < 1
        or rgb[0] % latent[0]
        or rgb[1] % latent[1]
        or rgb[0] // latent[0] != rgb[1] // latent[1]
    ):
        raise SampleShardError(
            f"{where}: mask_latent has shape {latent}, expected (H / f, W / f) for the image's "
            f"{rgb[:2]} and one down-sampling factor f"
        )
    return {"rgb": rgb, "rgb_shadow": rgb, "dem": dem, "mask": mask, "mask_latent": latent}


def _validate(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, tuple[int, ...]]]:
    """Records checked and normalised (arrays in stored dtype), sorted by sample_id; the shapes."""
    if not records:
        raise SampleShardError("no records to write: a sample shard holds at least one sample")
    rows: list[dict[str, Any]] = []
    shapes: dict[str, tuple[int, ...]] | None = None
    for index, record in enumerate(records):
        where = _where(index, record)
        unknown = sorted(set(record) - set(COLUMNS))
        if unknown:
            raise SampleShardError(f"{where}: unknown field(s) {unknown}; a sample record holds {list(COLUMNS)}")
        missing = [k for k in _REQUIRED if record.get(k) is None]
        if missing:
            raise SampleShardError(f"{where}: missing {missing} (required: {list(_REQUIRED)})")
        row: dict[str, Any] = {}
        for key in ("grid_cell", "split"):
            if not isinstance(record[key], str) or not record[key]:
                raise SampleShardError(f"{where}: {key} is {record[key]!r}, expected a non-empty string")
            row[key] = record[key]
        row["sample_id"] = record.get("sample_id") or record["grid_cell"]
        if not isinstance(row["sample_id"], str):
            raise SampleShardError(f"{where}: sample_id is {row['sample_id']!r}, expected a string")
        dem_mean = float(record["dem_mean_m"])
        if not math.isfinite(dem_mean):
            raise SampleShardError(f"{where}: dem_mean_m is {record['dem_mean_m']!r}, expected a finite number")
        row["dem_mean_m"] = dem_mean
        l1c_missing = record.get("l1c_missing", False)
        if not isinstance(l1c_missing, (bool, np.bool_)):
            raise SampleShardError(f"{where}: l1c_missing is {l1c_missing!r}, expected True or False")
        row["l1c_missing"] = bool(l1c_missing)
        for column in DESCRIPTOR_COLUMNS:
            row[column] = _descriptor(record.get(column), column, where)
        for name in ARRAY_COLUMNS:
            value = record.get(name)
            row[name] = None if value is None else _check_array(name, value, where)
        if shapes is None:
            shapes = _array_shapes(row, where)
        for name in ARRAY_COLUMNS:
            if row[name] is not None and row[name].shape != shapes[name]:
                raise SampleShardError(
                    f"{where}: {name} has shape {row[name].shape} but this shard's samples have "
                    f"{shapes[name]}: every sample of a shard must have the same shapes"
                )
        rows.append(row)
    rows.sort(key=lambda r: r["sample_id"])
    for previous, current in zip(rows, rows[1:]):
        if previous["sample_id"] == current["sample_id"]:
            raise SampleShardError(f"sample_id {current['sample_id']!r} appears twice: a shard holds a sample once")
    assert shapes is not None
    return rows, shapes


def _file_metadata(rows: list[dict[str, Any]], shapes: dict[str, tuple[int, ...]], row_group_size: int) -> bytes:
    splits: dict[str, int] = {}
    for row in rows:
        splits[row["split"]] = splits.get(row["split"], 0) + 1
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arrays": {n: {"dtype": ARRAY_DTYPES[n].str, "shape": list(shapes[n])} for n in ARRAY_COLUMNS},
        "latent_factor": shapes["rgb"][0] // shapes["mask_latent"][0],
        "row_group_size": row_group_size,
        "rows": len(rows),
        "splits": splits,
        "rgb_shadow_rows": sum(r["rgb_shadow"] is not None for r in rows),
        "l1c_missing_rows": sum(r["l1c_missing"] for r in rows),
    }
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {c: [r[c] for r in rows] for c in SCALAR_COLUMNS}
    for name in ARRAY_COLUMNS:
        columns[name] = [None if r[name] is None else np.ascontiguousarray(r[name]).tobytes() for r in rows]
    return pa.Table.from_pydict(columns, schema=schema)


def write_sample_shard(
    path: str | Path,
    records: Sequence[Mapping[str, Any]],
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    compression: str = "zstd",
) -> Path:
    """Write training samples as one parquet shard, atomically (see the module docstring).

    Args:
        path: destination ``.parquet`` file (its folder is created).
        records: one dict per sample: ``grid_cell``, ``split``, ``dem_mean_m``, ``rgb``
            (uint16 (H, W, 3)), ``dem`` (float (H, W), metres relative to ``dem_mean_m``; stored
            float32), ``mask`` and ``mask_latent`` (bool or 0/1) are required; ``sample_id``
            (default: the grid cell), ``rgb_shadow`` (default None), ``l1c_missing`` (default
            False) and the descriptors (default None; NaN and pandas NA count as None) are
            optional. Any order: rows are stored sorted by ``sample_id``.
        row_group_size: samples per row group (default 16), the unit readers load at once.
        compression: parquet codec (default "zstd"; "none" trades disk for decode time).

    Returns:
        ``path``. Raises ``SampleShardError`` naming the record when one breaks the format.
    """
    if int(row_group_size) < 1:
        raise ValueError(f"row_group_size must be at least 1, got {row_group_size!r}")
    row_group_size = int(row_group_size)
    rows, shapes = _validate(records)
    schema = SAMPLE_SCHEMA.with_metadata({METADATA_KEY: _file_metadata(rows, shapes, row_group_size)})

    def _write(tmp: Path) -> None:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression=compression,
            use_dictionary=list(_STRING_COLUMNS),
            write_statistics=list(SCALAR_COLUMNS),
        ) as writer:
            # one table per row group: only that group's bytes are encoded at a time
            for start in range(0, len(rows), row_group_size):
                chunk = rows[start:start + row_group_size]
                writer.write_table(_table(chunk, schema), row_group_size=row_group_size)

    return atomic_write(path, _write)


# ---------------------------------------------------------------------------------------------
# Reading


def _parse_metadata(
    path: str,
    schema: pa.Schema,
    *,
    key: bytes = METADATA_KEY,
    fmt: str = FORMAT,
    version: int = FORMAT_VERSION,
    columns: Sequence[str] = COLUMNS,
    remedy: str = "rerun the prepare stage",
) -> dict[str, Any]:
    """The shard's parsed schema metadata, checked; the keywords let other shard kinds reuse it."""
    raw = (schema.metadata or {}).get(key)
    if raw is None:
        raise SampleShardError(
            f"{path}: no {key.decode()!r} schema metadata: not a {fmt} shard ({remedy} to write it)"
        )
    meta = json.loads(raw)
    if meta.get("format") != fmt or meta.get("version") != version:
        raise SampleShardError(
            f"{path}: shard format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"this code reads {fmt!r} version {version}: {remedy}"
        )
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise SampleShardError(f"{path}: lacks columns {missing}: {remedy}")
    return meta


def _check_columns(columns: Sequence[str] | None, allowed: Sequence[str] = COLUMNS) -> list[str]:
    if columns is None:
        return list(allowed)
    if isinstance(columns, str):
        columns = [columns]
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ValueError(f"unknown sample column(s) {unknown}; choose from {list(allowed)}")
    return list(dict.fromkeys(columns))


class SampleShardReader:
    """One open sample shard, read a row group (or part of one) at a time.

    Attributes:
        path: the shard's path (str).
        metadata: the parsed ``mesa.samples`` schema metadata (dict).
        num_rows: samples in the shard.
        num_row_groups: row groups in the shard.

    A shard kind with the same layout (raw-bytes arrays, shapes in the schema metadata) reuses
    this reader by overriding the class attributes below (see ``components.samples.latents``).
    """

    metadata_key: bytes = METADATA_KEY
    format_name: str = FORMAT
    format_version: int = FORMAT_VERSION
    columns: tuple[str, ...] = COLUMNS
    scalar_columns: tuple[str, ...] = SCALAR_COLUMNS
    nullable_arrays: tuple[str, ...] = ("rgb_shadow",)
    remedy: str = "rerun the prepare stage"

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowInvalid) as err:
            raise SampleShardError(f"{self.path}: cannot open as parquet ({err}): {self.remedy}") from err
        self.metadata = _parse_metadata(
            self.path,
            self._file.schema_arrow,
            key=self.metadata_key,
            fmt=self.format_name,
            version=self.format_version,
            columns=self.columns,
            remedy=self.remedy,
        )
        self.num_rows = self._file.metadata.num_rows
        self.num_row_groups = self._file.num_row_groups
        self._specs = {
            name: (np.dtype(spec["dtype"]), tuple(spec["shape"])) for name, spec in self.metadata["arrays"].items()
        }

    def __enter__(self) -> SampleShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def row_group_num_rows(self, group: int) -> int:
        return self._file.metadata.row_group(group).num_rows

    def read_column(self, column: str) -> pa.ChunkedArray:
        """One scalar column of the whole shard (e.g. ``split``), as Arrow."""
        if column not in self.scalar_columns:
            raise ValueError(f"read_column reads scalar columns {list(self.scalar_columns)}, not {column!r}")
        return self._file.read(columns=[column], use_threads=False).column(0)

    def read_row_group(
        self, group: int, columns: Sequence[str] | None = None, rows: Sequence[int] | np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """Samples of one row group as dicts.

        Args:
            group: row group index.
            columns: columns to read (default all, see ``COLUMNS``).
            rows: row indices within the group (default all), in the order wanted.

        Returns:
            One dict per row: scalars as Python values, arrays as read-only numpy views into
            the group's Arrow buffers (``.copy()`` one to keep or modify it without holding the
            whole group), ``rgb_shadow`` None when not stored.
        """
        names = _check_columns(columns, self.columns)
        table = self._file.read_row_group(group, columns=names, use_threads=False)
        n = table.num_rows
        picked = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if picked.size and (picked.min() < 0 or picked.max() >= n):
            raise IndexError(f"{self.path}: row group {group} has {n} rows, asked for rows {picked.tolist()}")
        out: list[dict[str, Any]] = [{} for _ in range(len(picked))]
        for name in names:
            column = table.column(name)
            if name in self._specs:
                dtype, shape = self._specs[name]
                values = self._arrays(column, picked, dtype, shape, name, group)
            else:
                everything = column.to_pylist()
                values = [everything[i] for i in picked]
            for record, value in zip(out, values):
                record[name] = value
        return out

    def _arrays(
        self, column: pa.ChunkedArray, picked: np.ndarray, dtype: np.dtype, shape: tuple[int, ...], name: str, group: int
    ) -> list[np.ndarray | None]:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if array.type != pa.large_binary():
            array = array.cast(pa.large_binary())
        _, offsets_buffer, data = array.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=len(array) + 1, offset=array.offset * 8)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        valid = None if array.null_count == 0 else np.asarray(array.is_valid())
        values: list[np.ndarray | None] = []
        for row in picked.tolist():
            if valid is not None and not valid[row]:
                if name not in self.nullable_arrays:
                    raise SampleShardError(f"{self.path}, row group {group}, row {row}, column {name!r}: null value")
                values.append(None)
                continue
            start, stop = int(offsets[row]), int(offsets[row + 1])
            if stop - start != nbytes:
                raise SampleShardError(
                    f"{self.path}, row group {group}, row {row}, column {name!r}: {stop - start} bytes, "
                    f"expected {nbytes} for {dtype.str} {shape}: the shard is corrupt, {self.remedy}"
                )
            values.append(np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape))
        return values


def read_sample_shard(path: str | Path, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of a shard, in stored order (sorted by sample_id), one row group at a time.

    Args:
        path: a shard written by ``write_sample_shard``.
        columns: columns to read (default all, see ``COLUMNS``).

    Yields:
        One dict per sample (see ``SampleShardReader.read_row_group``: arrays are read-only
        numpy views).
    """
    names = _check_columns(columns)
    with SampleShardReader(path) as reader:
        for group in range(reader.num_row_groups):
            yield from reader.read_row_group(group, names)


def shard_info(path: str | Path) -> dict[str, Any]:
    """What a shard holds, without decoding any array.

    Returns:
        dict with ``path``, ``rows``, ``row_groups``, ``row_group_size``, ``shapes`` and
        ``dtypes`` (per array column), ``latent_factor``, ``splits`` (split -> count, counted
        from the ``split`` column), ``rgb_shadow_rows``, ``l1c_missing_rows`` and ``bytes``.
    """
    with SampleShardReader(path) as reader:
        splits = reader.read_column("split").value_counts().to_pylist()
        meta = reader.metadata
        return {
            "path": reader.path,
            "rows": reader.num_rows,
            "row_groups": reader.num_row_groups,
            "row_group_size": meta["row_group_size"],
            "shapes": {n: tuple(s["shape"]) for n, s in meta["arrays"].items()},
            "dtypes": {n: s["dtype"] for n, s in meta["arrays"].items()},
            "latent_factor": meta["latent_factor"],
            "splits": {item["values"]: item["counts"] for item in sorted(splits, key=lambda i: i["values"])},
            "rgb_shadow_rows": meta["rgb_shadow_rows"],
            "l1c_missing_rows": meta["l1c_missing_rows"],
            "bytes": Path(reader.path).stat().st_size,
        }
