"""Major TOM ingest against a loopback HTTP mirror of the micro world (real HTTP, real parquet, no mocks).

The mirror serves the synthetic world in the upstream layout and records every byte range it
sends; faults (404, a connection dropped mid-file, a shard whose row group holds another cell,
an unreachable host) are switched on per test.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pytest
from shapely.geometry import box
from typer.testing import CliRunner

from components.majortom.errors import ShardError
from components.majortom.ingest import IngestConfig, failure_verdict, run_ingest
from components.majortom.ingest_fetch import fetch_columns
from components.majortom.ingest_filters import IngestFilters, Selection, metadata_frame, select_cells
from components.majortom.ingest_manifest import Journal, read_manifest
from components.majortom.schema import SHARD_SCHEMAS
from components.majortom.shards import read_metadata, read_shard
from tests.conftest import PROJECT_ROOT
from testsupport.http_mirror import MirrorServer

SOURCES = ("s2l2a", "s2l1c", "dem")
QUIET = {"progress": False, "log": lambda line: None}


@pytest.fixture(scope="module")
def mirror(micro_world):
    raw, _ = micro_world
    with MirrorServer(raw) as server:
        yield server


@pytest.fixture
def clean_mirror(mirror):
    """The shared mirror with no faults, no latency and fresh counts, restored after the test."""
    mirror.clear_faults()
    mirror.reset_counts()
    yield mirror
    mirror.clear_faults()


def _config(base: str, **overrides) -> IngestConfig:
    settings = dict(metadata={s: f"{base}/{s}/metadata.parquet" for s in SOURCES}, cells_per_shard=2,
                    concurrency=4, retries=1, backoff_s=0.01, timeout_s=30)
    settings.update(overrides)
    return IngestConfig(**settings)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


REFERENCE = dict(sample=6, seed=3)


@pytest.fixture(scope="module")
def reference(mirror, tmp_path_factory):
    """One uninterrupted ingest of 6 sampled cells, and the byte ranges the mirror sent for it."""
    mirror.clear_faults()
    mirror.reset_counts()
    out = tmp_path_factory.mktemp("ingest-reference") / "majortom"
    report = run_ingest(_config(mirror.url, **REFERENCE), out, **QUIET)
    served = {path: list(ranges) for path, ranges in mirror.served.items()}
    return out, report, served


# ---------------------------------------------------------------------------------------------
# Selection


def _expected(frames: dict[str, pd.DataFrame], bbox, dates, cloud_max, nodata_max) -> list[str]:
    """The filters written out again, independently, with plain pandas."""
    keep = []
    for source, frame in frames.items():
        mask = frame["centre_lon"].between(bbox[0], bbox[2]) & frame["centre_lat"].between(bbox[1], bbox[3])
        mask &= frame["nodata"] <= nodata_max
        if source != "dem":
            day = pd.to_datetime(frame["timestamp"]).dt.normalize()
            mask &= (day >= pd.Timestamp(dates[0])) & (day <= pd.Timestamp(dates[1]))
            mask &= frame["cloud_cover"] <= cloud_max
        keep.append(set(frame.loc[mask, "grid_cell"]))
    return sorted(set.intersection(*keep))


def test_filters_select_exactly_the_expected_cells(micro_world, clean_mirror, tmp_path):
    raw, _ = micro_world
    frames = {s: pd.read_parquet(raw / s / "metadata.parquet") for s in SOURCES}
    assert not any(f["grid_cell"].duplicated().any() for f in frames.values())
    lon, lat = frames["s2l2a"]["centre_lon"], frames["s2l2a"]["centre_lat"]
    bbox = (float(lon.quantile(0.1)), float(lat.quantile(0.05)), float(lon.quantile(0.95)), float(lat.max()))
    stamps = pd.to_datetime(frames["s2l2a"]["timestamp"]).sort_values()
    dates = (str(stamps.iloc[2].date()), str(stamps.iloc[-3].date()))
    cloud_max, nodata_max = 20.0, 0.05
    expected = _expected(frames, bbox, dates, cloud_max, nodata_max)
    everything = _expected(frames, (-180, -90, 180, 90), ("1900-01-01", "2100-01-01"), 100.0, 1.0)
    assert 3 <= len(expected) < len(everything)  # the filters bite, and leave something

    # Metadata read over HTTP from the mirror, as from Hugging Face.
    metadata = {s: metadata_frame(f"{clean_mirror.url}/{s}/metadata.parquet", s)[0] for s in SOURCES}
    filters = IngestFilters(bbox=bbox, date_range=dates, cloud_cover=(0, cloud_max), nodata=(0, nodata_max))
    chosen = select_cells(metadata, Selection(filters=filters))
    assert chosen.cells == expected
    assert all(list(chosen.rows[s]["grid_cell"]) == expected for s in SOURCES)

    # The same region as a polygon file, in another CRS (Web Mercator keeps lon/lat edges straight).
    region = tmp_path / "region.gpkg"
    gpd.GeoDataFrame({"name": ["area"]}, geometry=[box(*bbox)], crs="EPSG:4326").to_crs("EPSG:3857") \
        .to_file(region, driver="GPKG")
    by_polygon = select_cells(metadata, Selection(filters=filters.model_copy(update={"bbox": None,
                                                                                     "region_file": str(region)})))
    assert by_polygon.cells == expected

    # Without L1C the intersection is over S2L2A and DEM only; the cap keeps the first cells.
    no_l1c = _expected({s: frames[s] for s in ("s2l2a", "dem")}, (-180, -90, 180, 90), ("1900-01-01", "2100-01-01"),
                       100.0, 1.0)
    capped = select_cells(metadata, Selection(need_l1c=False, max_cells=5))
    assert capped.cells == no_l1c[:5] and set(capped.rows) == {"s2l2a", "dem"}

    # A seeded sample: the same cells every time, a subset of the candidates, then capped.
    first = select_cells(metadata, Selection(sample=7, seed=11, max_cells=5)).cells
    assert first == select_cells(metadata, Selection(sample=7, seed=11, max_cells=5)).cells
    assert len(first) == 5 and set(first) <= set(everything) and first == sorted(first)
    assert first != select_cells(metadata, Selection(sample=7, seed=12, max_cells=5)).cells


def test_metadata_missing_columns_is_a_clear_error(micro_world, tmp_path):
    raw, _ = micro_world
    broken = tmp_path / "dem_metadata.parquet"
    pd.read_parquet(raw / "dem" / "metadata.parquet").drop(columns=["parquet_row", "cloud_cover"]).to_parquet(broken)
    config = IngestConfig(metadata={"s2l2a": str(raw / "s2l2a/metadata.parquet"), "dem": str(broken)},
                          need_l1c=False)
    with pytest.raises(ShardError, match=r"dem_metadata.parquet.*lacks columns \['cloud_cover', 'parquet_row'\]"):
        run_ingest(config, tmp_path / "out", **QUIET)
    with pytest.raises(FileNotFoundError, match="nowhere.parquet.*data.ingest.metadata.dem"):
        run_ingest(config.model_copy(update={"metadata": {**config.metadata, "dem": str(tmp_path / "nowhere.parquet")}}),
                   tmp_path / "out", **QUIET)


# ---------------------------------------------------------------------------------------------
# What is fetched and written


def _chunk_ranges(path: Path) -> list[tuple[int, str, int, int]]:
    """(row group, column, start, end) of every column chunk of a local parquet file."""
    meta = pq.ParquetFile(path).metadata
    out = []
    for group in range(meta.num_row_groups):
        for i in range(meta.num_columns):
            chunk = meta.row_group(group).column(i)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            out.append((group, chunk.path_in_schema, start, start + chunk.total_compressed_size))
    return out


def test_only_the_needed_row_groups_and_columns_are_fetched(micro_world, reference):
    raw, _ = micro_world
    out, report, served = reference
    manifest = read_manifest(out / "manifest.parquet")
    assert report["cells_selected"] == 6 and report["cells_failed"] == 0 and (manifest["status"] == "ok").all()
    wanted_rows = {(s, f"/{s}/" + pq_url, row) for s in SOURCES
                   for pq_url, row in pd.read_parquet(raw / s / "metadata.parquet")
                   .set_index("grid_cell").loc[manifest.loc[manifest["source"] == s, "grid_cell"],
                                               ["parquet_url", "parquet_row"]].itertuples(index=False)}
    shard_bytes = full_bytes = 0
    for path, ranges in served.items():
        if path.endswith("metadata.parquet"):
            continue
        source = path.split("/")[1]
        local = raw / path.lstrip("/")
        full_bytes += local.stat().st_size
        footer_start = local.stat().st_size - 8 - int.from_bytes(local.read_bytes()[-8:-4], "little")
        needed = {(start, end) for group, column, start, end in _chunk_ranges(local)
                  if column in fetch_columns(source) and (source, path, group) in wanted_rows}
        unwanted = [(column, start, end) for group, column, start, end in _chunk_ranges(local)
                    if not (column in fetch_columns(source) and (source, path, group) in wanted_rows)]
        for start, end in ranges:
            hits = [c for c, s, e in unwanted if start < e and s < end]
            assert not hits, f"{path} bytes {start}-{end} overlap unwanted column chunks {hits}"
            assert (start, end) in needed or start >= footer_start, f"{path}: unexpected range {start}-{end}"
        assert needed <= set(ranges), f"{path}: a wanted column chunk was not read"
        shard_bytes += sum(end - start for start, end in ranges)
    # Every S2 band outside RGB is present in the shards the mirror served, never fetched.
    assert {"B08", "B11", "thumbnail"} <= {c for c in SHARD_SCHEMAS["s2l2a"].names} - set(fetch_columns("s2l2a"))
    assert shard_bytes == report["bytes_fetched_this_run"]
    assert shard_bytes < 0.5 * full_bytes


def test_ingested_shards_read_back_in_the_upstream_schema(reference):
    out, report, _ = reference
    for source in SOURCES:
        metadata = read_metadata(out / source / "metadata.parquet")
        assert len(metadata) == 6 and metadata["grid_cell"].is_monotonic_increasing
        shard = out / source / "images" / "part_00000.parquet"
        assert pq.ParquetFile(shard).schema_arrow.remove_metadata().equals(SHARD_SCHEMAS[source])
        assert pq.ParquetFile(shard).metadata.num_row_groups == 2  # one cell per row group, as upstream
        columns = ("B04", "B03", "B02", "cloud_mask") if source != "dem" else ("DEM",)
        cells = []
        for shard_file, rows in metadata.groupby("parquet_url")["parquet_row"]:
            items = list(read_shard(out / source / shard_file, source, columns, rows=list(rows), on_error="collect"))
            cells += [item.grid_cell for item in items]
        assert sorted(cells) == sorted(metadata["grid_cell"])


def test_a_rerun_fetches_nothing_and_changes_no_byte(clean_mirror, reference):
    out, _, _ = reference
    before = _tree(out)
    report = run_ingest(_config(clean_mirror.url, **REFERENCE), out, **QUIET)
    assert report["rows_fetched_this_run"] == 0 and report["bytes_fetched_this_run"] == 0
    assert all(p.endswith("metadata.parquet") for p in clean_mirror.served)  # only the selection's input
    assert _tree(out) == before


def test_a_killed_ingest_restarts_to_the_same_shards_byte_for_byte(clean_mirror, reference, tmp_path):
    out = tmp_path / "majortom"
    config = _config(clean_mirror.url, concurrency=2, **REFERENCE)
    script = ("import json, sys\nfrom components.majortom.ingest import IngestConfig, run_ingest\n"
              "run_ingest(IngestConfig(**json.loads(sys.argv[1])), sys.argv[2], progress=False)\n")
    clean_mirror.latency_s = 0.05  # slow enough to be killed half-way
    process = subprocess.Popen([sys.executable, "-c", script, config.model_dump_json(), str(out)],
                               cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / ".ingest" / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the ingest finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before_kill = len(Journal(journal).latest())
    # Killed before any shard was assembled: nothing half-written is visible as a shard.
    assert not list(out.rglob("part_*.parquet")) and not (out / "manifest.parquet").exists()

    clean_mirror.latency_s = 0.0
    report = run_ingest(config, out, **QUIET)
    assert 0 < report["rows_fetched_this_run"] <= 18 - done_before_kill
    reference_out = reference[0]
    assert _tree(out) == _tree(reference_out)


# ---------------------------------------------------------------------------------------------
# Failures


@pytest.fixture
def faulty(micro_world, clean_mirror, tmp_path):
    """A metadata-only mirror listing 2 cells per synthetic shard, whose parquet_urls point (absolute)
    at the shard mirror, one of them at a host that does not exist."""
    raw, _ = micro_world
    meta_root = tmp_path / "meta"
    frames = {s: pd.read_parquet(raw / s / "metadata.parquet") for s in SOURCES}
    common = set.intersection(*(set(f["grid_cell"]) for f in frames.values()))
    l2a = frames["s2l2a"][frames["s2l2a"]["grid_cell"].isin(common)]
    picked = sorted(c for _, cells in l2a.groupby("parquet_url")["grid_cell"] for c in sorted(cells)[:2])
    for source, frame in frames.items():
        frame = frame[frame["grid_cell"].isin(picked)].copy()
        frame["parquet_url"] = [f"{clean_mirror.url}/{source}/{u}" for u in frame["parquet_url"]]
        (meta_root / source).mkdir(parents=True)
        frame.to_parquet(meta_root / source / "metadata.parquet", index=False)
    with MirrorServer(meta_root) as meta_mirror:
        yield clean_mirror, meta_mirror, meta_root, picked


def _shard_cells(raw: Path, source: str, shard: str) -> list[str]:
    frame = pd.read_parquet(raw / source / "metadata.parquet")
    return sorted(frame.loc[frame["parquet_url"] == shard, "grid_cell"])


def test_every_failure_is_reported_with_its_cause_and_the_rest_goes_on(micro_world, faulty, tmp_path):
    raw, _ = micro_world
    shards, meta_mirror, meta_root, picked = faulty
    dem = pd.read_parquet(meta_root / "dem" / "metadata.parquet")
    unreachable_cell = dem["grid_cell"].iloc[0]
    dem.loc[0, "parquet_url"] = "http://127.0.0.1:9/dem/images/part_00000.parquet"  # discard port: nobody there
    dem.to_parquet(meta_root / "dem" / "metadata.parquet", index=False)
    shards.faults["/s2l1c/images/part_00001.parquet"] = "404"
    shards.faults["/dem/images/part_00002.parquet"] = "drop"        # every attempt cut mid-file
    shards.faults["/s2l2a/images/part_00002.parquet"] = "drop_once"  # the retry recovers
    shards.aliases["/s2l2a/images/part_00003.parquet"] = "/s2l2a/images/part_00000.parquet"  # other cells inside

    out = tmp_path / "majortom"
    config = _config(meta_mirror.url, cells_per_shard=4)
    report = run_ingest(config, out, **QUIET)
    expected = {("s2l1c", c): "not_found" for c in _shard_cells(raw, "s2l1c", "images/part_00001.parquet")
                if c in picked}
    expected.update({("dem", c): "connection" for c in _shard_cells(raw, "dem", "images/part_00002.parquet")
                     if c in picked})
    expected.update({("s2l2a", c): "wrong_cell" for c in _shard_cells(raw, "s2l2a", "images/part_00003.parquet")
                     if c in picked})
    expected[("dem", unreachable_cell)] = "unreachable"
    failures = {(f["source"], f["grid_cell"]): f for f in report["failures"]}
    assert {k: f["reason"] for k, f in failures.items()} == expected
    for (source, cell), failure in failures.items():
        assert failure["url"] in failure["error"] and f"row {failure['row']}" in failure["error"]
        assert cell in failure["error"]
    wrong = next(f for f in failures.values() if f["reason"] == "wrong_cell")
    assert f"row group {wrong['row']} of {wrong['url']} holds cell " in wrong["error"]
    assert f"metadata says {wrong['grid_cell']}" in wrong["error"]
    assert "after 2 attempts" in failures[next(k for k, r in expected.items() if r == "connection")]["error"]
    assert report["failures_per_reason"] == {r: list(expected.values()).count(r) for r in set(expected.values())}

    # The manifest lists them too; the local metadata lists only what is on disk; the rest is complete.
    manifest = read_manifest(out / "manifest.parquet")
    failed = manifest[manifest["status"] == "failed"]
    assert {(r.source, r.grid_cell): r.reason for r in failed.itertuples()} == expected
    assert failed["shard"].isna().all() and manifest.loc[manifest["status"] == "ok", "sha256"].notna().all()
    for source in SOURCES:
        local = set(read_metadata(out / source / "metadata.parquet")["grid_cell"])
        assert local == set(picked) - {c for s, c in expected if s == source}
    assert report["cells_complete"] == len(picked) - len({c for _, c in expected})
    assert "rerun to fetch only the failed cells" in failure_verdict(report, 0.0)
    assert failure_verdict(report, 1.0) is None

    # Faults gone: a rerun fetches exactly the failed rows, and ends complete.
    shards.clear_faults()
    dem.loc[0, "parquet_url"] = f"{shards.url}/dem/images/part_00000.parquet"
    dem.to_parquet(meta_root / "dem" / "metadata.parquet", index=False)
    again = run_ingest(config, out, **QUIET)
    assert again["rows_fetched_this_run"] == len(expected) and again["cells_failed"] == 0


def test_mesa_data_ingest_reports_what_it_wrote_and_where(clean_mirror, tmp_path):
    from flows.cli import app

    out = tmp_path / "cli-ingest"
    args = ["data", "ingest", "--out", str(out), "--no-l1c", "--max-cells", "2", "--no-progress"]
    for source in ("s2l2a", "dem"):
        args += ["--metadata", f"{source}={clean_mirror.url}/{source}/metadata.parquet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 of 2 cells complete" in result.output and str(out) in result.output
    assert (out / "manifest.parquet").exists() and not (out / "s2l1c").exists()
    assert CliRunner().invoke(app, ["data", "ingest", "--help"]).exit_code == 0
    shutil.rmtree(out)
