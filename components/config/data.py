"""params.yaml ``data``: where the raw Major TOM shards come from, and ``data.ingest`` (which cells to fetch)."""
from __future__ import annotations

from datetime import date
from pathlib import Path, PurePosixPath
from typing import Literal, Optional, Union
from urllib.parse import urljoin

from pydantic import Field, field_validator, model_validator

from components import layout
from components.config.base import (Count, FieldProblem, NonNegativeFloat, NonNegativeInt, ParamsModel,
                                    PositiveFloat, Probability, fixed_tuple)

SYNTH_OUT = layout.SYNTH_OUT.as_posix()  # as params write it: real shards never go there
DataSource = Literal["synth", "ingest", "majortom"]
MajorTomSource = Literal["s2l2a", "s2l1c", "dem"]
# YAML reads an unquoted 2020-01-01 as a date: both spellings are accepted.
DateBound = Optional[Union[date, str]]


def _inside(path: str, folder: str) -> bool:
    path, folder = PurePosixPath(Path(path).as_posix()), PurePosixPath(folder)
    return path == folder or folder in path.parents


class IngestFilters(ParamsModel):
    """Filters as upstream Major TOM offers them (params.yaml ``data.ingest.filters``).

    Attributes:
        bbox: [min_lon, min_lat, max_lon, max_lat] in degrees (WGS84), or None for the globe.
        region_file: any OGR-readable polygon file (GeoPackage, Shapefile, GeoJSON); a cell is
            kept when its centre lies in the union of the polygons. Combined with bbox by AND.
        date_range: [first, last] acquisition dates (inclusive, ISO dates; None = open end).
            Sentinel-2 sources only: Core-DEM has one fixed timestamp.
        cloud_cover: [min, max] percent, inclusive. Sentinel-2 sources only.
        nodata: [min, max] fraction, inclusive. Every source.
    """

    GROUP = "data.ingest.filters"

    bbox: Optional[fixed_tuple(float, float, float, float)] = None
    region_file: Optional[str] = None
    date_range: fixed_tuple(DateBound, DateBound) = (None, None)
    cloud_cover: fixed_tuple(float, float) = (0.0, 100.0)
    nodata: fixed_tuple(float, float) = (0.0, 1.0)

    @field_validator("bbox")
    @classmethod
    def _bbox_ordered(cls, value):
        if value is not None and (value[0] > value[2] or value[1] > value[3]):
            raise ValueError(f"bbox {list(value)} must be [min_lon, min_lat, max_lon, max_lat]")
        return value

    @field_validator("date_range")
    @classmethod
    def _iso_dates(cls, value):
        for bound in value:
            if isinstance(bound, str):
                try:
                    date.fromisoformat(bound)
                except ValueError:
                    raise ValueError(f"{bound!r} is not an ISO date (YYYY-MM-DD); null leaves that end open") from None
        return value


class Selection(ParamsModel):
    """How many cells an ingest wants and how to draw them (params ``data.ingest``)."""

    GROUP = "data.ingest"

    filters: IngestFilters = Field(default_factory=IngestFilters)
    need_l1c: bool = True
    sample: Optional[Count] = Field(None, description="cells drawn at random after filtering")
    seed: int = 0
    max_cells: Optional[Count] = None


class IngestConfig(Selection):
    """params.yaml ``data.ingest`` (the filters and sampling fields come from Selection).

    Attributes:
        metadata: per source, its metadata.parquet as a local path (relative to the project) or URL.
        base_url: when set, relative ``metadata`` entries are URLs under it (keeps params lines short).
        out_dir: where the local shards, metadata and manifest go (a DVC out; never inside data/raw).
        cells_per_shard: cells per local shard (few large files: DVC is slow with many small ones).
        concurrency: cells fetched at the same time (threads).
        retries, backoff_s: extra attempts for curable failures, first wait (doubles each time).
        timeout_s: limit per HTTP request.
        max_failed_share: share of selected cells allowed to fail before the stage exits non-zero
            (after writing everything that did arrive, so a rerun fetches only the rest).
    """

    metadata: dict[MajorTomSource, str] = Field(default_factory=dict)
    base_url: Optional[str] = None
    out_dir: str = "data/majortom"
    cells_per_shard: Count = 64
    concurrency: Count = 8
    retries: NonNegativeInt = 3
    backoff_s: NonNegativeFloat = 1.0
    timeout_s: PositiveFloat = 120.0
    max_failed_share: Probability = 0.0

    @field_validator("out_dir")
    @classmethod
    def _not_in_synth_out(cls, value):
        if _inside(value, SYNTH_OUT):
            raise ValueError(f"{value} is inside {SYNTH_OUT} (the synth stage's output, which DVC clears before "
                             "each run): choose another folder, e.g. data/majortom")
        return value

    def location(self, source: str) -> str:
        """Where `source`'s metadata.parquet is: a URL, or a path relative to the project."""
        entry = self.metadata[source]
        if self.base_url and "://" not in entry and not entry.startswith("/"):
            return urljoin(self.base_url.rstrip("/") + "/", entry)
        return entry


class DataConfig(ParamsModel):
    """params.yaml ``data``: which head stage makes the raw data, and where later stages read it.

    Attributes:
        source: ``synth`` (the synth stage writes a world into data/raw), ``ingest`` (the ingest
            stage fetches real Major TOM into ``ingest.out_dir``) or ``majortom`` (real shards you
            placed in ``raw_dir``).
        raw_dir: the folder later stages read (``data/raw`` with synth, ``ingest.out_dir`` with
            ingest, any other folder with majortom).
        ingest: ``IngestConfig``.
    """

    GROUP = "data"

    source: DataSource
    raw_dir: str
    ingest: IngestConfig = Field(default_factory=IngestConfig)

    @model_validator(mode="after")
    def _raw_dir_matches_source(self):
        raw_dir = Path(self.raw_dir).as_posix()
        if self.source == "synth" and raw_dir != SYNTH_OUT:
            raise FieldProblem("raw_dir", self.raw_dir, f"must be {SYNTH_OUT} with data.source synth (the synth "
                               "stage's output); for shards elsewhere set data.source to ingest or majortom")
        if self.source != "synth" and raw_dir == SYNTH_OUT:
            raise FieldProblem("raw_dir", self.raw_dir, f"is {SYNTH_OUT}, the synth stage's own output (DVC clears it "
                               f"before each run), but data.source is {self.source}: put real shards in another "
                               "folder, e.g. data/majortom, and set data.raw_dir to it")
        if self.source == "ingest" and raw_dir != Path(self.ingest.out_dir).as_posix():
            raise FieldProblem("raw_dir", self.raw_dir, f"must equal data.ingest.out_dir ({self.ingest.out_dir}) "
                               "with data.source ingest, so later stages read what the ingest stage writes")
        return self
