"""`mesa data ingest` options laid over params.yaml ``data.ingest`` (for one run; params stay as they are)."""
from __future__ import annotations

import copy
from typing import Any


def ingest_settings(settings: dict[str, Any], *, metadata: list[str] | None = None, base_url: str | None = None,
                    bbox: str | None = None, region_file: str | None = None, date_from: str | None = None,
                    date_to: str | None = None, cloud_min: float | None = None, cloud_max: float | None = None,
                    nodata_max: float | None = None, need_l1c: bool | None = None, sample: int | None = None,
                    seed: int | None = None, max_cells: int | None = None, concurrency: int | None = None,
                    retries: int | None = None) -> dict[str, Any]:
    """params ``data.ingest`` with the options that were given (None: keep the params' value).

    Args:
        settings (dict): params.yaml ``data.ingest`` (not changed).
        metadata (list[str] | None, default None): ``SOURCE=PATH_OR_URL`` entries, each replacing
            that source's metadata.parquet.
        base_url (str | None, default None): relative metadata entries are URLs under it.
        bbox (str | None, default None): ``min_lon,min_lat,max_lon,max_lat`` in degrees.
        region_file (str | None, default None): an OGR polygon file.
        date_from, date_to (str | None, default None): ISO dates, inclusive.
        cloud_min, cloud_max (float | None, default None): cloud cover bounds, percent.
        nodata_max (float | None, default None): the largest no-data fraction (0-1).
        need_l1c (bool | None, default None): also fetch S2L1C and keep only cells that have it.
        sample, seed, max_cells, concurrency, retries (int | None, default None): the fields of
            the same names.

    Returns:
        dict: keyword arguments for ``IngestConfig``.

    Raises:
        ValueError: a metadata entry without ``=``, or a bbox that is not four numbers (the
            message names the option and shows the expected form).
    """
    settings = copy.deepcopy(dict(settings or {}))
    filters = dict(settings.get("filters") or {})
    for entry in metadata or []:
        source, sep, location = entry.partition("=")
        if not sep:
            raise ValueError(f"--metadata {entry!r}: write SOURCE=PATH_OR_URL, e.g. dem=data/dem/metadata.parquet")
        settings["metadata"] = {**(settings.get("metadata") or {}), source: location}
    if base_url is not None:
        settings["base_url"] = base_url
    if bbox is not None:
        try:
            filters["bbox"] = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise ValueError(f"--bbox {bbox!r}: write min_lon,min_lat,max_lon,max_lat") from None
    if region_file is not None:
        filters["region_file"] = str(region_file)
    dates = list(filters.get("date_range") or [None, None])
    clouds = list(filters.get("cloud_cover") or [0.0, 100.0])
    nodata = list(filters.get("nodata") or [0.0, 1.0])
    for values, index, value in ((dates, 0, date_from), (dates, 1, date_to), (clouds, 0, cloud_min),
                                 (clouds, 1, cloud_max), (nodata, 1, nodata_max)):
        if value is not None:
            values[index] = value
    filters.update(date_range=dates, cloud_cover=clouds, nodata=nodata)
    settings["filters"] = filters
    for key, value in dict(need_l1c=need_l1c, sample=sample, seed=seed, max_cells=max_cells,
                           concurrency=concurrency, retries=retries).items():
        if value is not None:
            settings[key] = value
    return settings
