"""The ingest's record of work: a journal written as cells arrive, and the manifest it ends with.

journal (OUT/.ingest/journal.jsonl): one JSON line per finished cell fetch (ok or failed),
    appended and fsync'ed as work goes, so a killed run loses at most the cells in flight. A torn
    last line (killed mid-write) is ignored on reading.
manifest (OUT/manifest.parquet): one row per selected (source, cell) at the end of a run: where
    it came from (url, row), its status and failure cause, the bytes fetched for it, the sha256 of
    what was written (the cell's values) and where it lives locally (shard, shard_row, and the
    shard file's own sha256). Sorted, so the same ingest gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.atomic import atomic_write

MANIFEST_FILE = "manifest.parquet"
JOURNAL_FILE = "journal.jsonl"

MANIFEST_SCHEMA = pa.schema([
    pa.field("source", pa.string()),
    pa.field("grid_cell", pa.string()),
    pa.field("url", pa.string()),
    pa.field("row", pa.int64()),
    pa.field("status", pa.string()),          # ok | failed
    pa.field("reason", pa.string()),          # failure code (ingest_fetch.RETRYABLE keys), null when ok
    pa.field("error", pa.string()),           # the full message: url, row, cell, cause, what to do
    pa.field("bytes_fetched", pa.int64()),    # bytes received for this cell's row group (all attempts)
    pa.field("sha256", pa.string()),          # content_sha256 of the values written
    pa.field("shard", pa.string()),           # local shard, relative to the ingest folder
    pa.field("shard_row", pa.int64()),
    pa.field("shard_sha256", pa.string()),    # sha256 of the local shard file's bytes
])


def content_sha256(values: dict[str, object], columns: Sequence[str]) -> str:
    """sha256 over a cell's values in column order (name, length, bytes; null marked), so a cell's
    checksum does not depend on the parquet container it sits in."""
    digest = hashlib.sha256()
    for name in columns:
        value = values.get(name)
        digest.update(name.encode() + b"\0")
        if value is None:
            digest.update(b"N")
            continue
        data = value if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()
        digest.update(b"V" + len(data).to_bytes(8, "little") + bytes(data))
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Journal:
    """Append-only JSON lines, safe to share across threads; each line is on disk before append returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            with open(self.path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())

    def read(self) -> list[dict]:
        """Every complete record, oldest first (a torn last line from a killed run is skipped)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def latest(self) -> dict[tuple[str, str], dict]:
        """The last record per (source, grid_cell)."""
        return {(r["source"], r["grid_cell"]): r for r in self.read()}


def _plain(value):
    """None for pandas' missing markers, Python ints for numpy ints: the manifest's bytes must not
    depend on whether a record came from this run or from the previous manifest."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def write_manifest(path: str | Path, records: Iterable[dict]) -> Path:
    """Write the manifest (sorted by source, grid_cell) atomically with fixed writer options."""
    rows = sorted(({name: _plain(r.get(name)) for name in MANIFEST_SCHEMA.names} for r in records),
                  key=lambda r: (r["source"], r["grid_cell"]))
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest of an earlier run, or an empty frame of the manifest's columns."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=MANIFEST_SCHEMA.names)
    return pq.read_table(path).to_pandas()
