"""Caption descriptors per cell: country, biome, ecoregion, local and regional landform, month.

``describe_cells(index, layers, params)`` takes the curated index (one row per kept cell) and
returns one row per cell, in the same order, with three columns per descriptor:

=======================  ============================================================================
``<d>``                  the full value, e.g. biome "Temperate Broadleaf & Mixed Forests"
``<d>_short``            the form captions use, e.g. "temperate broadleaf forests"
``<d>_source``           the name of the layer that was asked (``"country"``, ``"biome_proxy"``, a
                         vector file's stem, ``"dem_hammond"``, ``"s2l2a_timestamp"``); None when
                         no layer is configured for that descriptor
=======================  ============================================================================

for ``d`` in ``DESCRIPTORS`` = country, biome, ecoregion, landform_local, landform_regional,
month; plus ``grid_cell``, ``centre_lat``, ``centre_lon``, ``country_iso_a3`` and
``biome_num`` (nullable Int64).

Unknown is ``None`` (a null in parquet), never a string such as "unknown": a null cannot be
mistaken for a place name, counts as missing in every pandas / pyarrow / great-expectations
check, and the caption builder leaves the descriptor out. A cell gets a value from the polygon
it falls in or, failing that, from the nearest polygon within ``max_distance_m`` (default
10 km, one cell's width); beyond that it stays None: a wrong country is worse than none.

Which layer answers what (``layers`` keys; each value an ``open_layer`` spec, a built layer,
or None for "not configured"):

* ``country`` (default ``{"kind": "country"}``: Natural Earth 1:10m, offline). A vector layer
  must give a ``country`` column (default attributes ``{"country": "NAME"}``).
* ``biome`` (default ``{"kind": "biome_proxy"}``: Koppen climate -> RESOLVE biome name). A
  RESOLVE-like vector layer gives ``biome_name`` and optionally ``biome_num`` and
  ``ecoregion`` (default attributes: ``BIOME_NAME``, ``BIOME_NUM``, ``ECO_NAME``).
* ``ecoregion`` (optional): a layer with an ``ecoregion`` column (default ``ECO_NAME``), e.g.
  the synthetic world's ``data/raw/layers/ecoregions.gpkg``. Without it the ecoregion comes
  from the biome layer when that has one (RESOLVE), else it is None (the Koppen proxy has no
  ecoregions).
* ``landform_regional`` (optional): named landform regions, column ``landform_regional``
  (default field ``NAME``; Named Landforms of the World or the synthetic world's
  ``landforms.gpkg``). Without it the regional landform is None.

A vector spec may carry ``optional: true``: a missing file then means "not configured" (the
synthetic world's layers exist only when the data are synthetic) instead of an error.
The local landform comes from the index's DEM statistics (``classify_landform``); the month
from ``s2l2a_timestamp`` (UTC; taken in local solar time, see ``_month``).

Pure component: no Prefect, no I/O besides what the layers read once per process.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.captions.landform import DEFAULT_LANDFORM_THRESHOLDS, LANDFORM_CLASSES, classify_landform
from components.captions.layers.base import RegionLayer
from components.captions.layers.biomes import RESOLVE_BIOMES, ROCK_AND_ICE, BiomeProxyLayer
from components.captions.layers.countries import CountryLayer
from components.captions.layers.factory import open_layer

__all__ = [
    "DESCRIPTORS",
    "LAYER_ROLES",
    "INDEX_COLUMNS",
    "MONTHS",
    "DEFAULT_BIOME_SHORT_FORMS",
    "DEFAULT_LANDFORM_SHORT_FORMS",
    "DEFAULT_LAYER_ATTRIBUTES",
    "DEFAULT_DESCRIPTOR_PARAMS",
    "LANDFORM_LOCAL_SOURCE",
    "MONTH_SOURCE",
    "describe_cells",
    "descriptor_columns",
    "descriptor_summary",
    "regional_short_form",
]

DESCRIPTORS: tuple[str, ...] = ("country", "biome", "ecoregion", "landform_local", "landform_regional", "month")
LAYER_ROLES: tuple[str, ...] = ("country", "biome", "ecoregion", "landform_regional")
#: Columns of data/curated/index.parquet that describe_cells reads.
INDEX_COLUMNS: tuple[str, ...] = (
    "grid_cell", "centre_lat", "centre_lon", "s2l2a_timestamp", "gentle_share", "relief_m", "profile_upper_share",
)
MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
LANDFORM_LOCAL_SOURCE = "dem_hammond"  # classify_landform over the curated DEM statistics
MONTH_SOURCE = "s2l2a_timestamp"

#: RESOLVE 2017 biome name -> the short form captions use. The published MESA prompts say
#: "moist forests", "temperate forests", "broadleaf forests", "tundra", "montane rain forests",
#: "dry woodlands steppe"; the rest follow the same pattern: drop "Tropical & Subtropical",
#: keep the first vegetation noun, lower case. "Rock and Ice" is RESOLVE's ice ecoregion
#: (Koppen EF in the proxy), not one of the 14 biomes.
DEFAULT_BIOME_SHORT_FORMS: dict[str, str] = {
    RESOLVE_BIOMES[1]: "moist forests",
    RESOLVE_BIOMES[2]: "dry forests",
    RESOLVE_BIOMES[3]: "tropical coniferous forests",
    RESOLVE_BIOMES[4]: "temperate broadleaf forests",
    RESOLVE_BIOMES[5]: "temperate conifer forests",
    RESOLVE_BIOMES[6]: "boreal forests",
    RESOLVE_BIOMES[7]: "tropical savannas",
    RESOLVE_BIOMES[8]: "temperate grasslands",
    RESOLVE_BIOMES[9]: "flooded grasslands",
    RESOLVE_BIOMES[10]: "montane grasslands",
    RESOLVE_BIOMES[11]: "tundra",
    RESOLVE_BIOMES[12]: "mediterranean woodlands",
    RESOLVE_BIOMES[13]: "deserts",
    RESOLVE_BIOMES[14]: "mangroves",
    ROCK_AND_ICE: "rock and ice",
}

#: Local landform class -> caption word. Identity by default: the five classes are what the
#: DEM can tell apart (and what the synthetic world renders); map "low mountains" and "high
#: mountains" to "mountains" to get the published prompts' four words.
DEFAULT_LANDFORM_SHORT_FORMS: dict[str, str] = {name: name for name in LANDFORM_CLASSES}

#: Output column -> field of a vector file, per layer role, used when a vector spec gives no
#: ``attributes`` (RESOLVE Ecoregions 2017 and Named Landforms of the World field names).
DEFAULT_LAYER_ATTRIBUTES: dict[str, dict[str, str]] = {
    "country": {"country": "NAME"},
    "biome": {"biome_name": "BIOME_NAME", "biome_num": "BIOME_NUM", "ecoregion": "ECO_NAME"},
    "ecoregion": {"ecoregion": "ECO_NAME"},
    "landform_regional": {"landform_regional": "NAME"},
}

#: params.yaml `captions` group, as far as describe_cells reads it.
DEFAULT_DESCRIPTOR_PARAMS: dict[str, Any] = {
    # nearest-polygon fallback for every layer whose spec sets no max_distance_m: one cell's
    # width; further away a descriptor is None
    "max_distance_m": 10_000.0,
    # full RESOLVE biome name -> caption short form (entries here replace the defaults')
    "biome_short_forms": DEFAULT_BIOME_SHORT_FORMS,
    # local landform class -> caption word
    "landform_short_forms": DEFAULT_LANDFORM_SHORT_FORMS,
    # country name -> caption form, e.g. {"United States of America": "the United States"}
    "country_short_forms": {},
    # classify_landform thresholds (overrides of DEFAULT_LANDFORM_THRESHOLDS)
    "landform_thresholds": DEFAULT_LANDFORM_THRESHOLDS,
    # threads for the layer lookups (shapely releases the GIL in its tree queries)
    "workers": 2,
    # cells per lookup chunk: bounds the memory of the point geometries a lookup builds
    "chunk_cells": 65_536,
}

_CLEAN_LAYERS = (CountryLayer, BiomeProxyLayer)  # their values are a clean str or None
_FIXED_SOURCES = frozenset({LANDFORM_LOCAL_SOURCE, MONTH_SOURCE})
_DEFAULT_LAYERS: dict[str, Any] = {"country": {"kind": "country"}, "biome": {"kind": "biome_proxy"}}
_MISSING_NAMES = frozenset({"", "n/a", "na", "none", "null", "nan", "unknown"})
_MONTH_NAMES = np.array([None, *MONTHS], dtype=object)  # index 0 = NaT


def descriptor_columns() -> list[str]:
    """Column names describe_cells returns, in order."""
    cols = ["grid_cell", "centre_lat", "centre_lon"]
    for d in DESCRIPTORS:
        cols += [d, f"{d}_short", f"{d}_source"]
    return cols + ["country_iso_a3", "biome_num"]


def regional_short_form(name: Any) -> Any:
    """A named region as it reads mid-sentence: a leading "The" becomes "the" ("the Alps")."""
    if not isinstance(name, str):
        return name
    return "the " + name[4:] if name.startswith("The ") else name


# --------------------------------------------------------------------------------------------
# parameters and layers


def _merged_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(params or {})
    # describe_cells is handed the whole `captions` group: keys it does not read belong to
    # others (augmentation, output paths) and are ignored, but the tables are checked
    merged = dict(DEFAULT_DESCRIPTOR_PARAMS)
    for key in DEFAULT_DESCRIPTOR_PARAMS:
        if key in params and params[key] is not None:
            merged[key] = params[key]
    for key in ("biome_short_forms", "landform_short_forms", "country_short_forms"):
        table = merged[key]
        if not isinstance(table, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items()
        ):
            raise ValueError(f"captions.{key} must map names to non-empty strings, got {table!r}")
    # a partial table in params adds to / replaces entries of the default one
    merged["biome_short_forms"] = {**DEFAULT_BIOME_SHORT_FORMS, **merged["biome_short_forms"]}
    merged["landform_short_forms"] = {**DEFAULT_LANDFORM_SHORT_FORMS, **merged["landform_short_forms"]}
    try:
        distance = float(merged["max_distance_m"])
    except (TypeError, ValueError):
        raise ValueError(f"captions.max_distance_m must be metres, got {merged['max_distance_m']!r}") from None
    if not math.isfinite(distance) or distance < 0:
        raise ValueError(f"captions.max_distance_m must be finite and >= 0, got {distance!r}")
    merged["max_distance_m"] = distance
    for key in ("workers", "chunk_cells"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"captions.{key} must be a positive integer, got {value!r}")
        merged[key] = int(value)
    return merged


def _open_role(role: str, spec: Any, max_distance_m: float) -> tuple[RegionLayer | None, str | None]:
    """(layer, note): a layer for the role, or None with the reason it is not configured."""
    if spec is None:
        return None, None
    if isinstance(spec, RegionLayer):
        return spec, None
    if not isinstance(spec, Mapping):
        raise ValueError(f"captions layer {role!r}: expected a layer spec mapping or a layer, got {spec!r}")
    spec = dict(spec)
    optional = bool(spec.pop("optional", False))
    if spec.get("kind") == "vector":
        if optional and "path" in spec and not Path(spec["path"]).expanduser().exists():
            return None, f"{role}: optional layer {spec['path']} not found, descriptor left empty"
        spec.setdefault("attributes", DEFAULT_LAYER_ATTRIBUTES[role])
    if "max_distance_m" not in spec or spec["max_distance_m"] is None:
        spec["max_distance_m"] = max_distance_m
    try:
        layer = open_layer(spec)
    except ValueError as exc:
        raise ValueError(f"captions layer {role!r}: {exc}") from exc
    return layer, None


def _required_column(role: str, layer: RegionLayer, column: str) -> None:
    if column not in layer.columns:
        raise ValueError(
            f"captions layer {role!r} ({layer.name}) has no {column!r} column (it has {list(layer.columns)}); "
            f"map a field to it, e.g. attributes: {DEFAULT_LAYER_ATTRIBUTES[role]}"
        )


# --------------------------------------------------------------------------------------------
# value clean-up, on the unique values only (a layer has few distinct names, cells are many)


def _clean_text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return None if text.lower() in _MISSING_NAMES else text


def _derive(values: Any, *derived, clean=_clean_text) -> list[np.ndarray]:
    """[clean full names, fn(full) for fn in derived] as arrays; None for missing values.

    One factorize: ``clean`` and each derived function run once per distinct value (a layer
    has a few hundred names, an index a million cells). A derived item may be a
    ``(function, numpy dtype)`` pair; its missing value is then NaN instead of None.
    """
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    full_u = [clean(v) for v in uniques]
    out = [np.array([*full_u, None], dtype=object)[codes]]  # code -1 (missing) -> None
    for item in derived:
        fn, dtype = item if isinstance(item, tuple) else (item, object)
        missing = None if dtype is object else np.nan
        table = [missing if v is None else fn(v) for v in full_u]
        out.append(np.array([*(missing if t is None else t for t in table), missing], dtype=dtype)[codes])
    return out


def _keep(value: Any) -> Any:
    return value


def _resolve_biome(name: np.ndarray, num: np.ndarray | None, ecoregion: np.ndarray | None) -> np.ndarray:
    """Full biome name: the layer's name, else RESOLVE's name of its BIOME_NUM, else "Rock and
    Ice" for RESOLVE's ice ecoregion (which belongs to no biome), else None."""
    out = name.copy()
    todo = np.flatnonzero(pd.isna(out))
    if todo.size and num is not None:
        nums = pd.to_numeric(pd.Series(num[todo], dtype=object), errors="coerce").to_numpy(dtype=np.float64)
        out[todo] = [RESOLVE_BIOMES.get(int(v)) if np.isfinite(v) and float(v).is_integer() else None for v in nums]
        todo = todo[pd.isna(out[todo])]
    if todo.size and ecoregion is not None:
        ice = todo[ecoregion[todo] == ROCK_AND_ICE]
        out[ice] = ROCK_AND_ICE
    return out


def _month(timestamps: Any, lon: np.ndarray) -> np.ndarray:
    """Month name of each acquisition in local mean solar time (UTC + lon / 15 h).

    Sentinel-2 passes at ~10:30 local solar time, i.e. ~23:10 UTC of the *previous* day at
    170 E: a UTC month would put a cell's 1 March image in February.
    """
    ts = pd.to_datetime(pd.Series(timestamps), errors="coerce", utc=True)
    offset_s = np.where(np.isfinite(lon), np.round(lon * 240.0), 0.0)  # 4 minutes per degree
    local = ts + pd.to_timedelta(offset_s, unit="s")
    month = local.dt.month.to_numpy(dtype=np.float64, na_value=np.nan)
    idx = np.where(np.isfinite(month), month, 0).astype(np.int64)
    return _MONTH_NAMES[idx]


def _lookup_all(
    jobs: Mapping[str, tuple[RegionLayer, tuple[str, ...]]],
    lat: np.ndarray,
    lon: np.ndarray,
    workers: int,
    chunk_cells: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Every layer's columns at every point, in chunks on a thread pool.

    Chunks bound the memory of the point geometries and candidate pairs a polygon lookup
    builds; threads overlap the parts of shapely that release the GIL (the STRtree queries
    and predicates), about 1.6x on 2 cores.
    """
    n = lat.size
    bounds = [(i, min(i + chunk_cells, n)) for i in range(0, n, chunk_cells)] or [(0, 0)]
    tasks = [(role, a, b) for a, b in bounds for role in jobs]

    def run(task: tuple[str, int, int]) -> dict[str, np.ndarray]:
        role, a, b = task
        layer, columns = jobs[role]
        found = layer.lookup(lat[a:b], lon[a:b])
        return {col: found[col].to_numpy(dtype=object) for col in columns}

    if workers > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="captions-lookup") as pool:
            parts = list(pool.map(run, tasks))
    else:
        parts = [run(t) for t in tasks]
    out: dict[str, dict[str, np.ndarray]] = {}
    for role, (_, columns) in jobs.items():
        mine = [part for (r, _, _), part in zip(tasks, parts) if r == role]
        out[role] = {col: np.concatenate([m[col] for m in mine]) for col in columns}
    return out


# --------------------------------------------------------------------------------------------
# the stage's core


def describe_cells(
    index: pd.DataFrame,
    layers: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Every caption descriptor for every cell of the curated index.

    Args:
        index: the curated index; reads ``INDEX_COLUMNS`` (grid_cell, centre_lat, centre_lon,
            s2l2a_timestamp, gentle_share, relief_m, profile_upper_share).
        layers: role -> ``open_layer`` spec (a mapping, may add ``optional: true``), a built
            ``RegionLayer``, or None (not configured). Roles: ``LAYER_ROLES``. Missing
            ``country`` / ``biome`` keys take the offline defaults (Natural Earth, Koppen
            proxy); ``ecoregion`` and ``landform_regional`` default to not configured. The
            stage passes params.yaml's ``layers`` group.
        params: the ``captions`` params group (see ``DEFAULT_DESCRIPTOR_PARAMS``; other keys are
            ignored). Default: all defaults.

    Returns:
        DataFrame with ``descriptor_columns()``, one row per index row, same order,
        ``RangeIndex``. Descriptor columns are object dtype with None for unknown;
        ``biome_num`` is nullable Int64. ``attrs["layers"]`` maps each source name to its
        provenance text and ``attrs["notes"]`` lists optional layers that were absent.

    Raises:
        ValueError: a missing index column, an unknown layer role, a layer without the column
            its role needs, or bad params (each message names what and where).
    """
    # 1. Check the inputs and open the layers
    p = _merged_params(params)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(
            f"curated index lacks column(s) {missing} (it has {list(index.columns)}); the validate stage "
            "writes them (data/curated/index.parquet): rerun it"
        )
    layer_specs = dict(_DEFAULT_LAYERS)
    if layers is not None:
        unknown = sorted(set(layers) - set(LAYER_ROLES))
        if unknown:
            raise ValueError(f"captions layers: unknown role(s) {unknown}; valid roles: {list(LAYER_ROLES)}")
        layer_specs.update(layers)
    opened: dict[str, RegionLayer] = {}
    notes: list[str] = []
    gentle = float((p["landform_thresholds"] or {}).get("gentle_slope", DEFAULT_LANDFORM_THRESHOLDS["gentle_slope"]))
    if gentle != DEFAULT_LANDFORM_THRESHOLDS["gentle_slope"]:
        notes.append(
            f"landform_thresholds.gentle_slope={gentle:g} has no effect here: gentle_share was measured when the "
            "DEM was decoded (validate stage, landform_inputs); change it there"
        )
    for role in LAYER_ROLES:
        layer, note = _open_role(role, layer_specs.get(role), p["max_distance_m"])
        if note:
            notes.append(note)
        if layer is not None:
            opened[role] = layer
    wanted = {
        "country": ("country", ("iso_a3",)),
        "biome": ("biome_name", ("biome_num", "ecoregion")),
        "ecoregion": ("ecoregion", ()),
        "landform_regional": ("landform_regional", ()),
    }
    jobs: dict[str, tuple[RegionLayer, tuple[str, ...]]] = {}
    for role, layer in opened.items():
        required, extra = wanted[role]
        _required_column(role, layer, required)
        jobs[role] = (layer, (required, *(c for c in extra if c in layer.columns)))

    # 2. Look every layer up at the cell centres
    n = len(index)
    lat = index["centre_lat"].to_numpy(dtype=np.float64, na_value=np.nan)
    lon = index["centre_lon"].to_numpy(dtype=np.float64, na_value=np.nan)
    found = _lookup_all(jobs, lat, lon, p["workers"], p["chunk_cells"])

    none = np.full(n, None, dtype=object)
    out: dict[str, Any] = {"grid_cell": index["grid_cell"].reset_index(drop=True), "centre_lat": lat, "centre_lon": lon}

    def put(name: str, full: np.ndarray, short: np.ndarray, role: str | None) -> None:
        out[name], out[f"{name}_short"] = full, short
        source = opened[role].name if role in opened else (role if role in _FIXED_SOURCES else None)
        out[f"{name}_source"] = _constant(n, source) if source else none

    # Values from the built-in layers are clean already (a str or None): skip the clean-up pass
    # there, and skip a short-form pass where the table maps every value to itself.
    def clean(role: str, values: np.ndarray) -> np.ndarray:
        return values if isinstance(opened[role], _CLEAN_LAYERS) else _derive(values)[0]

    def with_short(full: np.ndarray, table: Mapping[str, str], default=None) -> np.ndarray:
        if default is None and all(k == v for k, v in table.items()):
            return full
        return _derive(full, lambda v: table.get(v, default(v) if default else v), clean=_keep)[1]

    # 3. Country
    if "country" in found:
        full = clean("country", found["country"]["country"])
        put("country", full, with_short(full, p["country_short_forms"]), "country")
        iso = found["country"].get("iso_a3")
        out["country_iso_a3"] = clean("country", iso) if iso is not None else none
    else:
        put("country", none, none, None)
        out["country_iso_a3"] = none

    # 4. Biome (and the ecoregion when the biome layer is RESOLVE-like)
    eco_from_biome = None
    biome_num = np.full(n, np.nan)
    if "biome" in found:
        got = found["biome"]
        if "ecoregion" in got:
            eco_from_biome = clean("biome", got["ecoregion"])
        name = _resolve_biome(clean("biome", got["biome_name"]), got.get("biome_num"), eco_from_biome)
        table = p["biome_short_forms"]
        by_name = {v: float(k) for k, v in RESOLVE_BIOMES.items()}
        # a name outside the table (a custom layer's own biome) is used as it is, in lower case
        _, short, biome_num = _derive(name, lambda v: table.get(v, v.lower()), (by_name.get, np.float64), clean=_keep)
        put("biome", name, short, "biome")
    else:
        put("biome", none, none, None)
    out["biome_num"] = pd.array(biome_num, dtype="Int64")  # NaN -> <NA>; None for Rock and Ice

    # 5. Ecoregion: its own layer first, else the biome layer's, else none
    if "ecoregion" in found:
        full = clean("ecoregion", found["ecoregion"]["ecoregion"])
        put("ecoregion", full, full, "ecoregion")
    elif eco_from_biome is not None:
        put("ecoregion", eco_from_biome, eco_from_biome, "biome")
    else:
        put("ecoregion", none, none, None)

    # 6. Local landform from the curated DEM statistics (no second decode)
    local = classify_landform(
        index["gentle_share"].to_numpy(dtype=np.float64, na_value=np.nan),
        index["relief_m"].to_numpy(dtype=np.float64, na_value=np.nan),
        index["profile_upper_share"].to_numpy(dtype=np.float64, na_value=np.nan),
        p["landform_thresholds"],
    )
    put("landform_local", local, with_short(local, p["landform_short_forms"]), LANDFORM_LOCAL_SOURCE)

    # 7. Regional landform: named regions when a layer is configured
    if "landform_regional" in found:
        region = clean("landform_regional", found["landform_regional"]["landform_regional"])
        put("landform_regional", region, with_short(region, {}, regional_short_form), "landform_regional")
    else:
        put("landform_regional", none, none, None)

    # 8. Month of the L2A acquisition
    month = _month(index["s2l2a_timestamp"], lon)
    put("month", month, month, MONTH_SOURCE)

    # copy=False: no second copy into one 2-D block; but an array used by two columns (a short
    # form equal to the full one, the all-None column) is copied, so that writing into one
    # column never changes another
    columns, used = {}, set()
    for col in descriptor_columns():
        values = out[col]
        if isinstance(values, np.ndarray):
            values = values.copy() if id(values) in used else values
            used.add(id(values))
        columns[col] = _column(values)
    frame = pd.DataFrame(columns, copy=False)
    frame.attrs["layers"] = {layer.name: layer.source for layer in opened.values()}
    frame.attrs["notes"] = notes
    return frame


def _constant(n: int, value: Any) -> np.ndarray:
    # ndarray.fill shares one object; np.full(n, "text", dtype=object) makes n copies of a str
    arr = np.empty(n, dtype=object)
    arr.fill(value)
    return arr


def _column(values: Any) -> Any:
    # object arrays stay object (keeps None; pandas 3 would infer its str dtype with NaN)
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pd.Series(values, dtype=object, copy=False)
    return values


def descriptor_summary(frame: pd.DataFrame, top: int = 25) -> dict[str, Any]:
    """Counts for a metrics file: per descriptor, the share unknown, the number of distinct
    values, the ``top`` most frequent full values and the sources used.

    Args:
        frame: the output of ``describe_cells``.
        top: how many values to list per descriptor (default 25).
    """
    n = len(frame)
    report: dict[str, Any] = {"cells": n}
    for d in DESCRIPTORS:
        values = frame[d]
        counts = values.value_counts(dropna=True)
        report[d] = {
            "unknown_share": round(float(values.isna().mean()), 6) if n else 0.0,
            "distinct": int(counts.size),
            "top": {str(k): int(v) for k, v in counts.head(top).items()},
            "sources": sorted({str(s) for s in frame[f"{d}_source"].dropna().unique()}),
        }
    return report
