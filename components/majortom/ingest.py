"""Ingest a subset of real Major TOM (Core-S2L2A / S2L1C / DEM): filtered, resumable, reproducible.

    report = run_ingest(load_config(project).data.ingest, out_dir="data/majortom")  # an IngestConfig

1. Select: read each source's metadata.parquet (path or URL), filter, intersect on grid_cell,
   sample, cap (ingest_filters). The same metadata and params give the same cells anywhere.
2. Plan: the selected cells, sorted, cut into local shards of `cells_per_shard` (part_00000 ...).
   A shard whose cells an earlier run already wrote, intact (sha256 against its manifest), is kept.
3. Fetch: every cell not yet on disk, from its shard URL, only its row group and the columns the
   pipeline reads (ingest_fetch), `concurrency` at a time, with retries. Each fetched cell becomes
   a piece file in OUT/.ingest/ and a journal line as it arrives; a killed run resumes from there.
4. Write: each changed shard from its pieces, atomically, in the upstream schema (one row group per
   cell; columns that were not fetched are null and listed in the footer under mesa:null_columns);
   then each source's metadata.parquet pointing at the local shards, the manifest, and the report.
   Bytes depend only on the cells: not on concurrency, order of arrival or interruptions.

Failures (404, unreachable host, dropped connections after the retries, a row group holding
another cell) never stop the others: they are listed with their cause in the manifest and the
report, and a rerun fetches only them.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import urljoin

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.config import IngestConfig  # params data.ingest, typed
from components.majortom.ingest_fetch import CellFetcher, FetchError, fetch_columns
from components.majortom.ingest_filters import metadata_frame, required_sources, select_cells, shard_layout
from components.majortom.ingest_manifest import (JOURNAL_FILE, MANIFEST_FILE, Journal, content_sha256,
                                                 file_sha256, read_manifest, write_manifest)
from components.majortom.schema import SHARD_SCHEMAS
from components.majortom.shards import METADATA_FILE, SHARD_DIR, write_metadata, write_shard

STAGING_DIR = ".ingest"  # pieces + journal of a run in progress; removed when a run completes
PIECES_DIR = "pieces"


@dataclass
class _Item:
    """One (source, cell) of the plan."""

    source: str
    grid_cell: str
    url: str
    row: int
    shard: str          # relative to the ingest folder, e.g. s2l2a/images/part_00000.parquet
    shard_index: int


def shard_url(metadata_location: str, parquet_url: str) -> str:
    """A metadata row's parquet_url as a location: absolute URLs and paths as they are, relative
    ones against the metadata's own folder (URL-joined for URLs, so http://h/s2l2a/ stays a URL)."""
    if "://" in parquet_url or parquet_url.startswith("/"):
        return parquet_url
    if "://" in metadata_location:
        return urljoin(metadata_location, parquet_url)
    return str(PurePosixPath(metadata_location).parent / parquet_url)


def _local(location: str, base_dir: Path) -> str:
    """Local relative paths are relative to the project; URLs and absolute paths as they are."""
    if "://" in location or Path(location).is_absolute():
        return location
    return str(base_dir / location)


# ---------------------------------------------------------------------------------------------
# Pieces: one fetched cell on disk until its shard is written


def _piece_path(staging: Path, source: str, grid_cell: str) -> Path:
    return staging / PIECES_DIR / source / f"{grid_cell}.parquet"


def _piece_schema(source: str) -> pa.Schema:
    schema = SHARD_SCHEMAS[source]
    return pa.schema([schema.field(name) for name in fetch_columns(source)])


def _write_piece(path: Path, source: str, values: dict) -> None:
    from components.atomic import atomic_write

    table = pa.Table.from_pylist([values], schema=_piece_schema(source))
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="none"))


def _read_piece(path: Path, source: str) -> dict | None:
    try:
        table = pq.read_table(path, columns=list(fetch_columns(source)))
    except (OSError, pa.ArrowInvalid):
        return None
    return {name: table.column(name)[0].as_py() for name in fetch_columns(source)}


def _read_shard_row(path: Path, source: str, shard_row: int) -> dict:
    # Our shards hold one cell per row group, so the row is the row group.
    table = pq.ParquetFile(path).read_row_group(shard_row, columns=list(fetch_columns(source)))
    return {name: table.column(name)[0].as_py() for name in fetch_columns(source)}


# ---------------------------------------------------------------------------------------------
# The run


def _plan(selected, config: IngestConfig, base_dir: Path) -> tuple[list[_Item], dict[str, list[list[str]]]]:
    items, layouts = [], {}
    for source, rows in selected.rows.items():
        layout = shard_layout(rows["grid_cell"], config.cells_per_shard)
        layouts[source] = layout
        where = {cell: k for k, cells in enumerate(layout) for cell in cells}
        location = config.location(source)
        for cell, parquet_url, parquet_row in zip(rows["grid_cell"], rows["parquet_url"], rows["parquet_row"]):
            k = where[cell]
            items.append(_Item(source, cell, shard_url(location, str(parquet_url)), int(parquet_row),
                               f"{source}/{SHARD_DIR}/part_{k:05d}.parquet", k))
    return items, layouts


def _clean_temporaries(out: Path) -> None:
    """Temporary files of an interrupted atomic write: never visible as shards, removed here."""
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def run_ingest(config: IngestConfig, out_dir: str | Path, *, base_dir: str | Path = ".",
               progress: bool = True, log=print) -> dict:
    """Select, fetch and write a Major TOM subset into `out_dir`; return the report (see module doc).

    Args:
        config: the ingest parameters.
        out_dir: the ingest folder (gets {s2l2a,s2l1c,dem}/metadata.parquet + images/, manifest.parquet).
        base_dir: what relative metadata paths are relative to (the project folder).
        progress: show a tqdm bar (cells and bytes) on stderr.
        log: where one-line messages go.
    """
    started = time.perf_counter()
    out, base_dir = Path(out_dir), Path(base_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING_DIR
    _clean_temporaries(out)

    # 1. Select.
    sources = required_sources(config)
    missing = [s for s in sources if not config.metadata.get(s)]
    if missing:
        raise ValueError(f"data.ingest.metadata has no entry for {missing} (need_l1c is {config.need_l1c}); "
                         "give each source's metadata.parquet as a path or URL")
    metadata, metadata_sha = {}, {}
    for source in sources:
        metadata[source], metadata_sha[source] = metadata_frame(_local(config.location(source), base_dir), source)
    selected = select_cells(metadata, config)
    log(f"[ingest] selected {len(selected.cells)} cells ({json.dumps(selected.counts)})")

    # 2. Plan, and what is already on disk.
    items, layouts = _plan(selected, config, base_dir)
    journal = Journal(staging / JOURNAL_FILE)
    journaled = journal.latest()
    old = read_manifest(out / MANIFEST_FILE)
    old_ok = old[old["status"] == "ok"]
    shard_ok: dict[str, bool] = {}
    for shard, expected in old_ok.groupby("shard")["shard_sha256"].first().items():
        path = out / shard
        shard_ok[shard] = path.exists() and file_sha256(path) == expected
    previous = {(r.source, r.grid_cell): r for r in old_ok.itertuples() if shard_ok.get(r.shard)}

    by_shard: dict[tuple[str, int], list[_Item]] = {}
    for item in items:
        by_shard.setdefault((item.source, item.shard_index), []).append(item)
    kept_shards, records = set(), {}
    for (source, k), members in by_shard.items():
        olds = [previous.get((m.source, m.grid_cell)) for m in members]
        if all(o is not None and o.shard == m.shard and o.shard_row == i and o.url == m.url and o.row == m.row
               for i, (m, o) in enumerate(zip(members, olds))) \
                and len(old_ok[old_ok["shard"] == members[0].shard]) == len(members):
            kept_shards.add((source, k))
            for m, o in zip(members, olds):
                record = {c: getattr(o, c) for c in old.columns}
                record.update(row=int(o.row), shard_row=int(o.shard_row), bytes_fetched=int(o.bytes_fetched))
                records[(m.source, m.grid_cell)] = record

    to_fetch, pieces = [], {}
    for item in items:
        key = (item.source, item.grid_cell)
        if (item.source, item.shard_index) in kept_shards:
            continue
        piece = _piece_path(staging, item.source, item.grid_cell)
        entry = journaled.get(key)
        if entry and entry["status"] == "ok" and entry["url"] == item.url and entry["row"] == item.row \
                and piece.exists():
            values = _read_piece(piece, item.source)
            if values is not None and content_sha256(values, fetch_columns(item.source)) == entry["sha256"]:
                pieces[key] = entry
                continue
        o = previous.get(key)
        if o is not None and o.url == item.url and o.row == item.row:
            # On disk in an earlier shard that is about to be rewritten: keep a local copy first.
            values = _read_shard_row(out / o.shard, item.source, int(o.shard_row))
            _write_piece(piece, item.source, values)
            entry = {"source": item.source, "grid_cell": item.grid_cell, "url": item.url, "row": item.row,
                     "status": "ok", "reason": None, "error": None, "bytes_fetched": int(o.bytes_fetched),
                     "sha256": content_sha256(values, fetch_columns(item.source))}
            journal.append(entry)
            pieces[key] = entry
            continue
        to_fetch.append(item)
    reused = len(items) - len(to_fetch)
    log(f"[ingest] {len(items)} cell rows over {len(sources)} sources: {reused} already on disk, "
        f"{len(to_fetch)} to fetch ({config.concurrency} at a time)")

    # 3. Fetch.
    fetched_bytes = _fetch_all(to_fetch, config, staging, journal, pieces, base_dir, progress)
    remote_sizes = fetched_bytes.pop("remote_sizes")

    # 4. Write shards, metadata, manifest.
    written_shards = 0
    for (source, k), members in sorted(by_shard.items()):
        if (source, k) in kept_shards:
            continue
        path = out / members[0].shard
        ok = [m for m in members if pieces.get((m.source, m.grid_cell), {}).get("status") == "ok"]
        for m in members:
            if m not in ok:
                records[(m.source, m.grid_cell)] = {**pieces[(m.source, m.grid_cell)],
                                                    "shard": None, "shard_row": None, "shard_sha256": None}
        if not ok:
            path.unlink(missing_ok=True)
            continue
        rows = []
        for m in ok:
            values = _read_piece(_piece_path(staging, m.source, m.grid_cell), source)
            rows.append({name: values.get(name) for name in SHARD_SCHEMAS[source].names})
        null_columns = [n for n in SHARD_SCHEMAS[source].names if n not in fetch_columns(source)]
        write_shard(path, source, rows, file_metadata={"mesa:ingested": "true",
                                                       "mesa:null_columns": json.dumps(null_columns)})
        written_shards += 1
        digest = file_sha256(path)
        for i, m in enumerate(ok):
            records[(m.source, m.grid_cell)] = {**pieces[(m.source, m.grid_cell)], "shard": m.shard,
                                                "shard_row": i, "shard_sha256": digest}

    live = {m.shard for m in items}
    for source in ("s2l2a", "s2l1c", "dem"):
        images = out / source / SHARD_DIR
        for stale in sorted(images.glob("part_*.parquet")) if images.exists() else []:
            if f"{source}/{SHARD_DIR}/{stale.name}" not in live:
                stale.unlink()
        if source not in sources:
            (out / source / METADATA_FILE).unlink(missing_ok=True)
    for source in sources:
        frame = selected.rows[source]
        local = {cell: rec for (s, cell), rec in records.items() if s == source and rec["status"] == "ok"}
        frame = frame[frame["grid_cell"].isin(local)].copy()
        frame["parquet_url"] = [PurePosixPath(local[c]["shard"]).relative_to(source).as_posix()
                                for c in frame["grid_cell"]]
        frame["parquet_row"] = [int(local[c]["shard_row"]) for c in frame["grid_cell"]]
        write_metadata(out / source / METADATA_FILE, frame.reset_index(drop=True))
    write_manifest(out / MANIFEST_FILE, records.values())
    shutil.rmtree(staging, ignore_errors=True)

    report = _report(config, selected, records, sources, metadata_sha, len(to_fetch), fetched_bytes,
                     remote_sizes, written_shards, len(kept_shards))
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def _fetch_all(to_fetch: list[_Item], config: IngestConfig, staging: Path, journal: Journal,
               pieces: dict, base_dir: Path, progress: bool) -> dict:
    """Fetch `to_fetch` on a bounded thread pool; every result becomes a piece (ok) and a journal line."""
    from tqdm import tqdm

    received = [0]
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            received[0] += n

    fetcher = CellFetcher(retries=config.retries, backoff_s=config.backoff_s, timeout_s=config.timeout_s,
                          on_bytes=count, base_dir=base_dir)

    def one(item: _Item) -> dict:
        record = {"source": item.source, "grid_cell": item.grid_cell, "url": item.url, "row": item.row}
        try:
            fetched = fetcher.fetch(item.url, item.row, item.grid_cell, item.source)
        except FetchError as err:
            record.update(status="failed", reason=err.reason, error=str(err), bytes_fetched=err.nbytes, sha256=None)
        else:
            _write_piece(_piece_path(staging, item.source, item.grid_cell), item.source, fetched.values)
            record.update(status="ok", reason=None, error=None, bytes_fetched=fetched.nbytes,
                          sha256=content_sha256(fetched.values, fetch_columns(item.source)))
        journal.append(record)  # after the piece: a journal line always means the piece is there
        return record

    failed = 0
    bar = tqdm(total=len(to_fetch), unit="cell", desc="[ingest] fetch", disable=not progress or not to_fetch,
               dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="ingest") as pool:
        futures = [pool.submit(one, item) for item in to_fetch]
        for future in as_completed(futures):
            record = future.result()
            pieces[(record["source"], record["grid_cell"])] = record
            failed += record["status"] != "ok"
            bar.update(1)
            bar.set_postfix_str(f"{received[0] / 1e6:.1f} MB, {failed} failed", refresh=False)
    bar.close()
    return {"received": received[0], "footers": fetcher.footer_bytes, "remote_sizes": fetcher.remote_sizes()}


def _report(config, selected, records, sources, metadata_sha, fetched, fetched_bytes, remote_sizes,
            written_shards, kept_shards) -> dict:
    frame = pd.DataFrame(list(records.values()))
    failed = frame[frame["status"] != "ok"]
    failed_cells = sorted(set(failed["grid_cell"]))
    ok = frame[frame["status"] == "ok"]
    return {
        "cells_selected": len(selected.cells),
        "cells_complete": len(selected.cells) - len(failed_cells),
        "cells_failed": len(failed_cells),
        "selection_counts": selected.counts,
        "sources": list(sources),
        "rows_per_source": {s: {"ok": int((ok["source"] == s).sum()), "failed": int((failed["source"] == s).sum())}
                            for s in sources},
        "rows_fetched_this_run": fetched,
        "bytes_fetched_this_run": int(fetched_bytes["received"]),
        "footer_bytes_this_run": int(fetched_bytes["footers"]),
        # What the kept cells cost to fetch (their row groups' wanted columns), against the size of
        # the remote shards they came from (what downloading whole shards would have cost).
        "bytes_of_kept_cells": int(ok["bytes_fetched"].fillna(0).sum()),
        "remote_shard_bytes_this_run": int(sum(remote_sizes.values())),
        "shards_written": written_shards,
        "shards_kept": kept_shards,
        "failures_per_reason": dict(sorted(Counter(failed["reason"]).items())),
        "failures": [{"source": r.source, "grid_cell": r.grid_cell, "url": r.url, "row": int(r.row),
                      "reason": r.reason, "error": r.error}
                     for r in failed.sort_values(["source", "grid_cell"]).itertuples()],
        "metadata_sha256": metadata_sha,
        "params": json.loads(config.model_dump_json()),
    }


def failure_verdict(report: dict, max_failed_share: float) -> Optional[str]:
    """None when the failures are within `max_failed_share` of the selected cells, else a message."""
    selected, failed = report["cells_selected"], report["cells_failed"]
    if not failed or (selected and failed / selected <= max_failed_share):
        return None
    lines = [f"{failed} of {selected} cells failed (allowed share {max_failed_share}); "
             f"per reason: {report['failures_per_reason']}. Everything else is written; rerun to fetch "
             "only the failed cells, or raise data.ingest.max_failed_share to accept them:"]
    lines += [f"  {f['source']} {f['grid_cell']}: {f['error']}" for f in report["failures"][:20]]
    if len(report["failures"]) > 20:
        lines.append(f"  ... and {len(report['failures']) - 20} more (manifest.parquet lists them all)")
    return "\n".join(lines)


def summary_line(report: dict, out_dir: str | Path) -> str:
    return (f"[ingest] {report['cells_complete']} of {report['cells_selected']} cells complete "
            f"({report['cells_failed']} failed: {report['failures_per_reason'] or 'none'}); fetched "
            f"{report['rows_fetched_this_run']} cell rows, {report['bytes_fetched_this_run'] / 1e6:.1f} MB this run; "
            f"{report['shards_written']} shards written, {report['shards_kept']} kept -> {out_dir}/ "
            f"(manifest.parquet, {{{','.join(report['sources'])}}}/metadata.parquet + images/)")
