"""Fetching single cells from remote Major TOM shards: one row group, a few columns, HTTP range reads.

An upstream shard holds ~500 cells of 12-13 bands each (about 5 GB); a cell's RGB + cloud mask is
a small part of one row group. So per shard URL we read the parquet footer once (two small
ranges from the end), and per cell only the byte ranges of the wanted column chunks of its row
group (pyarrow with pre_buffer off and fsspec's "none" cache: no read-ahead, no coalescing of
neighbouring chunks, so no byte of an unwanted band crosses the network).

HTTP goes through fsspec's HTTP filesystem (aiohttp underneath, pinned in pyproject): it is the
client the shard readers already use for URLs, so ingest and reading agree on URLs, redirects
(Hugging Face answers with a redirect to its CDN) and range semantics.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

# What the pipeline reads downstream (curation, samples): the rest of a row is never fetched.
ID_COLUMNS = {"s2l2a": ("product_id", "grid_cell", "product_datetime"),
              "s2l1c": ("product_id", "grid_cell", "product_datetime"),
              "dem": ("grid_cell",)}
RASTER_COLUMNS = {"s2l2a": ("B04", "B03", "B02", "cloud_mask"),
                  "s2l1c": ("B04", "B03", "B02", "cloud_mask"),
                  "dem": ("DEM",)}

# Failure reasons (manifest `reason`, counts in reports/ingest.json) and whether a retry can help.
RETRYABLE = {"unreachable": True, "connection": True, "http_error": True, "timeout": True,
             "not_found": False, "wrong_cell": False, "row_out_of_range": False,
             "missing_column": False, "not_parquet": False}


def fetch_columns(source: str) -> tuple[str, ...]:
    return ID_COLUMNS[source] + RASTER_COLUMNS[source]


class FetchError(Exception):
    """A cell that could not be fetched: where (url, row, cell), why (reason code) and what to do."""

    def __init__(self, url: str, row: int, grid_cell: str, reason: str, problem: str, hint: str = ""):
        self.url, self.row, self.grid_cell, self.reason = url, row, grid_cell, reason
        self.retryable = RETRYABLE.get(reason, False)
        self.nbytes = 0  # bytes received for this cell before it failed (all attempts)
        super().__init__(f"{url}, row {row} (grid cell {grid_cell}): {problem}." + (f" {hint}" if hint else ""))


@dataclass
class FetchedRow:
    """The wanted columns of one cell, as Python values, and the bytes received to get them."""

    values: dict[str, object]
    nbytes: int


class _CountingFile:
    """A read-only file proxy that counts the bytes the parquet reader pulls through it."""

    def __init__(self, handle):
        self._handle, self.nbytes = handle, 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.nbytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def close(self) -> None:
        self._handle.close()


@dataclass
class _RemoteShard:
    size: int
    metadata: pq.FileMetaData
    row_starts: list[int]  # first file row of each row group


def _classify(exc: BaseException) -> tuple[str, str]:
    """(reason, problem) for an exception raised while talking to a server."""
    import aiohttp

    cause = exc
    # fsspec turns any failure of its size probe into FileNotFoundError; the cause says what it was.
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientResponseError):
        if cause.status == 404:
            return "not_found", "the server answered 404 Not Found"
        return "http_error", f"the server answered HTTP {cause.status} {cause.message}"
    if isinstance(cause, aiohttp.ClientConnectorError):
        return "unreachable", f"the server cannot be reached ({cause.os_error or cause})"
    if isinstance(cause, (asyncio.TimeoutError, TimeoutError)) or type(cause).__name__ == "FSTimeoutError":
        return "timeout", "the request timed out"
    if isinstance(cause, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                          ConnectionError)):
        return "connection", f"the connection dropped mid-transfer ({type(cause).__name__}: {cause})"
    if isinstance(cause, FileNotFoundError):
        return "not_found", "the server answered 404 Not Found"
    return "connection", f"{type(cause).__name__}: {cause}"


HINTS = {
    "unreachable": "Check the URL and the network (proxy, DNS); the rest of the ingest went on.",
    "connection": "Rerun the ingest: it fetches only what is missing or failed.",
    "timeout": "Raise data.ingest.timeout_s or lower data.ingest.concurrency, then rerun.",
    "http_error": "Rerun later; the rest of the ingest went on.",
    "not_found": "The metadata points at a shard that is not there: check data.ingest.metadata or the mirror.",
    "wrong_cell": "The metadata and the shard disagree; report it upstream or exclude the cell (filters).",
    "row_out_of_range": "The metadata and the shard disagree; exclude the cell or use matching metadata.",
    "missing_column": "Is this a Major TOM shard of that source? Check data.ingest.metadata.",
    "not_parquet": "The URL does not serve a parquet file: check data.ingest.metadata.",
}


class CellFetcher:
    """Fetches cells from shard URLs with retries; thread-safe (share one across a thread pool).

    Args:
        retries: extra attempts after the first for failures a retry can cure (dropped
            connections, timeouts, unreachable hosts, HTTP 5xx); 404s and wrong cells fail at once.
        backoff_s: first wait between attempts; doubles after each (exponential back-off).
        timeout_s: limit per HTTP request.
        on_bytes: called with the byte count of every completed range read (progress bars).
    """

    def __init__(self, retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 120.0,
                 on_bytes: Callable[[int], None] | None = None, base_dir: str | Path = "."):
        import aiohttp
        import fsspec

        self.retries, self.backoff_s = int(retries), float(backoff_s)
        self.on_bytes = on_bytes
        self.base_dir = Path(base_dir)
        # A private instance: fsspec caches filesystems by arguments, and a test's or another
        # ingest's timeouts must not leak into this one.
        self._fs = fsspec.filesystem("http", skip_instance_cache=True,
                                     client_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)})
        self._shards: dict[str, _RemoteShard] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # Footers are read once per URL and shared by its cells: counted here, not per cell, so a
        # cell's byte count does not depend on which thread happened to read the footer.
        self.footer_bytes = 0

    # -- footers ------------------------------------------------------------------------------

    def _shard(self, url: str) -> _RemoteShard:
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:  # one footer read per URL, however many threads want cells of it
            if url not in self._shards:
                counter = [0]
                try:
                    self._shards[url] = self._read_footer(url, counter)
                finally:
                    with self._guard:
                        self.footer_bytes += counter[0]
            return self._shards[url]

    def remote_sizes(self) -> dict[str, int]:
        """Size of every shard file whose footer was read (what whole-file downloads would cost)."""
        with self._guard:
            return {url: shard.size for url, shard in self._shards.items()}

    # Shard locations are http(s) URLs upstream; local paths (a mounted copy) work the same way.
    def _is_remote(self, url: str) -> bool:
        return url.startswith(("http://", "https://"))

    def _path(self, url: str) -> Path:
        path = Path(url.removeprefix("file://"))
        return path if path.is_absolute() else self.base_dir / path

    def _size(self, url: str) -> int:
        return self._fs.info(url)["size"] if self._is_remote(url) else self._path(url).stat().st_size

    def _open(self, url: str, size: int):
        if self._is_remote(url):
            # cache_type "none": each read is exactly one range request (no read-ahead into
            # neighbouring band columns); block_size only needs to be non-zero for a seekable file.
            return self._fs.open(url, "rb", block_size=1 << 20, cache_type="none", size=size)
        return open(self._path(url), "rb")

    def _range(self, url: str, start: int, end: int, counter: list[int]) -> bytes:
        if self._is_remote(url):
            data = self._fs.cat_file(url, start=start, end=end)
        else:
            with open(self._path(url), "rb") as handle:
                handle.seek(start)
                data = handle.read(end - start)
        counter[0] += len(data)
        if self.on_bytes:
            self.on_bytes(len(data))
        return data

    def _read_footer(self, url: str, counter: list[int]) -> _RemoteShard:
        size = self._size(url)
        if not size or size < 12:
            raise ValueError(f"not_parquet: the file is {size} bytes, too small for parquet")
        tail = self._range(url, size - 8, size, counter)
        if tail[4:] != b"PAR1":
            raise ValueError("not_parquet: the file does not end with the parquet magic bytes")
        footer_len = int.from_bytes(tail[:4], "little")
        footer = self._range(url, size - 8 - footer_len, size - 8, counter)
        # The footer alone parses as file metadata; its offsets still point into the remote file.
        metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail))
        starts, total = [], 0
        for group in range(metadata.num_row_groups):
            starts.append(total)
            total += metadata.row_group(group).num_rows
        return _RemoteShard(size, metadata, starts)

    # -- cells --------------------------------------------------------------------------------

    def fetch(self, url: str, row: int, grid_cell: str, source: str) -> FetchedRow:
        """The fetch_columns(source) of file row `row` of `url`, checked to hold `grid_cell`.

        Raises FetchError (after the retries a failure allows) naming url, row and cell.
        """
        attempt, received = 0, 0
        while True:
            counter = [0]
            try:
                fetched = self._fetch_once(url, row, grid_cell, source, counter)
                fetched.nbytes += received
                return fetched
            except FetchError as err:
                received += counter[0]
                if not err.retryable or attempt >= self.retries:
                    err.nbytes = received
                    if attempt:
                        err.args = (f"{err.args[0]} (after {attempt + 1} attempts)",)
                    raise
            time.sleep(self.backoff_s * (2 ** attempt))
            attempt += 1

    def _fetch_once(self, url: str, row: int, grid_cell: str, source: str, counter: list[int]) -> FetchedRow:
        columns = list(fetch_columns(source))
        try:
            shard = self._shard(url)
        except ValueError as exc:
            reason, _, problem = str(exc).partition(": ")
            if reason != "not_parquet":
                raise
            raise FetchError(url, row, grid_cell, reason, problem, HINTS[reason]) from None
        except Exception as exc:  # noqa: BLE001 - every network failure becomes a reason code
            reason, problem = _classify(exc)
            raise FetchError(url, row, grid_cell, reason, problem, HINTS[reason]) from None
        names = shard.metadata.schema.to_arrow_schema().names
        absent = [c for c in columns if c not in names]
        if absent:
            raise FetchError(url, row, grid_cell, "missing_column",
                             f"the shard lacks columns {absent}", HINTS["missing_column"])
        total = shard.row_starts[-1] + shard.metadata.row_group(len(shard.row_starts) - 1).num_rows \
            if shard.row_starts else 0
        if not 0 <= row < total:
            raise FetchError(url, row, grid_cell, "row_out_of_range",
                             f"the shard has {total} rows", HINTS["row_out_of_range"])
        group = max(g for g, start in enumerate(shard.row_starts) if start <= row)
        offset = row - shard.row_starts[group]
        try:
            handle = self._open(url, shard.size)
            counting = _CountingFile(handle)
            try:
                parquet = pq.ParquetFile(counting, metadata=shard.metadata, pre_buffer=False)
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
            finally:
                counter[0] += counting.nbytes
                if self.on_bytes:
                    self.on_bytes(counting.nbytes)
                counting.close()
        except Exception as exc:  # noqa: BLE001
            reason, problem = _classify(exc)
            raise FetchError(url, row, grid_cell, reason, problem, HINTS[reason]) from None
        values = {name: table.column(name)[offset].as_py() for name in columns}
        if values["grid_cell"] != grid_cell:
            raise FetchError(url, row, grid_cell, "wrong_cell",
                             f"row group {group} of {url} holds cell {values['grid_cell']}, "
                             f"metadata says {grid_cell}", HINTS["wrong_cell"])
        return FetchedRow(values, counter[0])
