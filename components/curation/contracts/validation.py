"""Running the contracts: GX validations with readable results, per-row failures, contexts, Data Docs.

:func:`validate_table` runs one GX validation and returns a :class:`ContractResult` with a readable
:meth:`ContractResult.summary`; :func:`row_failures` says which rows break which row-level
expectation (vectorised, for reject reasons). The GX context is ephemeral by default;
``get_context(root)`` gives a file context under ``root`` (e.g. ``data/curated/validation``)
whose Data Docs :func:`build_data_docs` builds.

GX 1.24 traps this module works around:

- "between" is vectorised only for int64 / float64 and datetime64[ns] columns; pandas 3 reads
  parquet timestamps as datetime64[us], and those, nullable and float32 columns take a
  per-element Python path (~5 s per 2 million rows). ``prepare_table`` casts.
- GX fingerprints (hashes) the whole batch DataFrame on every run (~0.7 s per 2 million strings)
  and filters the whole batch per expectation: only the checked columns are handed over.
- ``unexpected_index_column_names`` builds a Python list over *all* failing rows (30 s for a
  million), and SUMMARY's index lists and value counts cost +50 %: results are BASIC (counts,
  first failing values) and the grid_cell of the first failing rows comes from the row predicates.
- A ValidationDefinition stores itself on its first run; a second one with the same name fails
  unless registered with ``add_or_update``.
- Progress bars are on by default (``ProgressBarsConfig(globally=False)`` turns them off).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd

from components.atomic import write_text_atomic
from components.curation.contracts.derived_columns import DERIVED_COLUMNS, grid_arrays
from components.curation.contracts.suites import columns_of, contract_meta

_DATASOURCE = "mesa_contracts"
_BATCH_DEFINITION = "whole_table"
_EXAMPLES = 5


# ---------------------------------------------------------------------------------------------
# The table GX sees


def prepare_table(df: pd.DataFrame, suite: gx.ExpectationSuite) -> pd.DataFrame:
    """The table a suite is run on: the columns it checks, derived columns, GX-friendly dtypes.

    Only the checked columns are kept (GX fingerprints the whole batch on every run), the index
    becomes 0..n-1 (GX reports failing rows by index), timestamps become naive datetime64[ns] and
    numbers int64 / float64 (the dtypes GX's "between" handles vectorised), and metadata tables
    get the derived grid columns. Optional columns the table lacks are added as all-null.

    Args:
        df (pd.DataFrame): the table to validate.
        suite (gx.ExpectationSuite): from :func:`metadata_suite` or :func:`stats_suite`.
    Returns:
        pd.DataFrame: a new frame (``df`` is not modified).
    Raises:
        ValueError: naming the columns the suite needs and ``df`` lacks.
    """
    meta = contract_meta(suite)
    derived = set(DERIVED_COLUMNS) if meta["table"] == "metadata" else set()
    needed = list(dict.fromkeys(c for e in suite.expectations for c in columns_of(e)))
    inputs = [c for c in needed if c not in derived]
    optional = set(meta.get("optional_columns", []))
    missing = [c for c in inputs if c not in df.columns and c not in optional]
    if meta["table"] == "metadata":
        missing += [c for c in ("grid_cell", "centre_lat", "centre_lon", "crs")
                    if c not in df.columns and c not in missing]
    if missing:
        raise ValueError(f"the table lacks columns {missing} that suite {suite.name!r} checks "
                         f"(it has {list(df.columns)})")
    keep = [c for c in dict.fromkeys(inputs + (["grid_cell"] if "grid_cell" in df.columns else []))
            if c in df.columns]
    table = df[keep].reset_index(drop=True)
    for column in optional - set(df.columns):
        table[column] = np.nan
    for column in table.columns:
        values = table[column]
        if column == "timestamp" or pd.api.types.is_datetime64_any_dtype(values.dtype):
            if not pd.api.types.is_datetime64_any_dtype(values.dtype):  # strings: unparseable -> NaT
                values = pd.to_datetime(values, errors="coerce", utc=True)
            if getattr(values.dt, "tz", None) is not None:
                values = values.dt.tz_convert("UTC").dt.tz_localize(None)
            table[column] = values.astype("datetime64[ns]")
        elif pd.api.types.is_bool_dtype(values.dtype) or values.dtype == object:
            continue
        elif pd.api.types.is_integer_dtype(values.dtype) and not values.hasnans:
            table[column] = values.astype(np.int64)
        elif pd.api.types.is_numeric_dtype(values.dtype):
            table[column] = values.astype(np.float64)
    if derived:
        for name, values in grid_arrays(table).items():
            table[name] = values
    return table


# ---------------------------------------------------------------------------------------------
# Contexts


_CONTEXTS: dict[str, Any] = {}
_LOCK = threading.Lock()  # GX contexts are not thread-safe; one validation at a time


def get_context(root: str | Path | None = None):
    """A GX data context, made once per process and root.

    Args:
        root (str | Path | None): None (default) for an in-memory (ephemeral) context; a folder
            (e.g. ``data/curated/validation``) for a file context under ``root/gx`` that keeps
            suites, validation results and the Data Docs site.
    Returns:
        The GX context, with progress bars off (they would flood stage logs).
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    key = "" if root is None else str(Path(root).resolve())
    with _LOCK:
        if key not in _CONTEXTS:
            if root is None:
                context = gx.get_context(mode="ephemeral")
            else:
                Path(root).mkdir(parents=True, exist_ok=True)
                context = gx.get_context(mode="file", project_root_dir=str(root))
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            _CONTEXTS[key] = context
        return _CONTEXTS[key]


def _batch_definition(context, asset_name: str):
    """The whole-DataFrame batch definition of `asset_name` (created on first use)."""
    try:
        source = context.data_sources.get(_DATASOURCE)
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas(_DATASOURCE)
    try:
        asset = source.get_asset(asset_name)
    except (KeyError, LookupError):
        asset = source.add_dataframe_asset(asset_name)
    try:
        return asset.get_batch_definition(_BATCH_DEFINITION)
    except (KeyError, LookupError):
        return asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)


def build_data_docs(context_root: str | Path) -> Path:
    """Build the Data Docs site of a file context (suites and every stored validation).

    Args:
        context_root (str | Path): the folder given to :func:`get_context`.
    Returns:
        Path: the site's ``index.html`` (open it in a browser).
    """
    from urllib.parse import unquote, urlparse

    context = get_context(context_root)
    with _LOCK:
        sites = context.build_data_docs()
    if not sites:
        raise RuntimeError(f"the GX context under {context_root} has no Data Docs site configured")
    return Path(unquote(urlparse(next(iter(sites.values()))).path))


# ---------------------------------------------------------------------------------------------
# Results


def _jsonable(value):
    """Plain JSON values (numpy scalars, timestamps, tuples, NaN -> None), recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    return str(value)


@dataclass
class Failure:
    """One failed expectation.

    Attributes:
        expectation (str): the GX expectation type, e.g. ``"expect_column_values_to_be_between"``.
        columns (list[str]): the column(s) it checks (two for column-pair expectations).
        check (str): the contract's name for the rule (e.g. ``"crs_zone"``), for reject reasons.
        unexpected_count (int | None): failing rows (None when the expectation raised).
        element_count (int | None): rows checked.
        kwargs (dict): the expectation's arguments (bounds, regex, value set), JSON values.
        examples (list): a few failing values as GX reports them (pairs for pair expectations).
        example_cells (list[str]): grid_cell of a few failing rows (when the table has one).
        error (str | None): the exception message when the expectation could not run.
    """

    expectation: str
    columns: list[str]
    check: str
    unexpected_count: int | None
    element_count: int | None
    kwargs: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)
    example_cells: list = field(default_factory=list)
    error: str | None = None

    @property
    def column(self) -> str:
        """The column(s), comma-separated."""
        return ", ".join(self.columns)

    def describe(self) -> str:
        """One readable line: expectation, column, rule, how many rows, examples."""
        bounds = ", ".join(f"{k}={v}" for k, v in self.kwargs.items()
                           if k not in ("column", "column_A", "column_B", "batch_id"))
        head = f"{self.expectation} on {self.column} [{self.check}{': ' + bounds if bounds else ''}]"
        if self.error is not None:
            return f"{head}: could not run: {self.error}"
        share = f" of {self.element_count:,}" if self.element_count else ""
        line = f"{head}: {self.unexpected_count:,}{share} rows failed"
        if any(v is not None for v in self.examples):
            line += "; e.g. values " + ", ".join(repr(v) for v in self.examples)
        if self.example_cells:
            line += "; cells " + ", ".join(str(c) for c in self.example_cells)
        return line


@dataclass
class ContractResult:
    """What one suite said about one table.

    Attributes:
        suite (str): the suite's name (e.g. ``"s2l2a_metadata"``).
        success (bool): every expectation passed.
        row_count (int): rows validated.
        expectation_count (int): expectations in the suite.
        failures (list[Failure]): failed expectations, in suite order.
        raw (dict): GX's validation result as plain JSON values (for MLflow / DVC).
    """

    suite: str
    success: bool
    row_count: int
    expectation_count: int
    failures: list[Failure]
    raw: dict

    def summary(self) -> str:
        """A readable multi-line summary: verdict, then one line per failed expectation."""
        verdict = "passed" if self.success else "FAILED"
        lines = [f"contract {self.suite} {verdict} on {self.row_count:,} rows: "
                 f"{len(self.failures)} of {self.expectation_count} expectations failed"]
        lines += [f"  - {failure.describe()}" for failure in self.failures]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"suite": self.suite, "success": self.success, "row_count": self.row_count,
                "expectation_count": self.expectation_count,
                "failures": [asdict(f) for f in self.failures], "gx": self.raw}

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically; :meth:`load_json` reads it back."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load_json(cls, path: str | Path) -> "ContractResult":
        data = json.loads(Path(path).read_text())
        return cls(suite=data["suite"], success=data["success"], row_count=data["row_count"],
                   expectation_count=data["expectation_count"],
                   failures=[Failure(**f) for f in data["failures"]], raw=data["gx"])


def validate_table(df: pd.DataFrame, suite: gx.ExpectationSuite, *, context=None,
                   examples: int = _EXAMPLES) -> ContractResult:
    """Run a contract on a table with GX.

    Args:
        df (pd.DataFrame): the table (a metadata.parquet after the duplicate rule, or the stats).
        suite (gx.ExpectationSuite): from :func:`metadata_suite` or :func:`stats_suite`.
        context: a GX context (default: :func:`get_context`'s ephemeral one). With a file context
            the suite, the validation definition and the result are stored there (Data Docs).
        examples (int): failing values / cells kept per failure (default 5).
    Returns:
        ContractResult: success, failures (expectation, columns, count, examples), raw result.
    Raises:
        ValueError: when ``df`` lacks a column the suite checks.
    """
    table = prepare_table(df, suite)
    context = context if context is not None else get_context()
    with _LOCK:
        stored = context.suites.add_or_update(suite)
        definition = context.validation_definitions.add_or_update(gx.ValidationDefinition(
            name=stored.name, data=_batch_definition(context, stored.name), suite=stored))
        # BASIC: counts and the first failing values. SUMMARY's index lists and value counts
        # filter the whole batch once more per expectation (+50 % time on 2 M rows).
        result = definition.run(batch_parameters={"dataframe": table},
                                result_format={"result_format": "BASIC",
                                               "partial_unexpected_count": max(examples, 1)})
    position = {e.id: i for i, e in enumerate(stored.expectations)}
    failures = []
    for item in sorted(result.results, key=lambda r: position.get(r.expectation_config.id, len(position))):
        if item.success:
            continue
        config = item.expectation_config
        res = item.result or {}
        error = None
        if item.exception_info and item.exception_info.get("raised_exception"):
            error = item.exception_info.get("exception_message")
        failures.append(Failure(
            expectation=config.type,
            columns=columns_of(config),
            check=(config.meta or {}).get("check", config.type),
            unexpected_count=None if error else _jsonable(res.get("unexpected_count")),
            element_count=_jsonable(res.get("element_count")),
            kwargs=_jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
            examples=_jsonable(list(res.get("partial_unexpected_list") or [])[:examples]),
            example_cells=[] if error else _example_cells(table, config, examples),
            error=error,
        ))
    return ContractResult(suite=stored.name, success=bool(result.success), row_count=len(table),
                          expectation_count=len(stored.expectations), failures=failures,
                          raw=_jsonable(result.to_json_dict()))


def _example_cells(table: pd.DataFrame, config, count: int) -> list:
    """grid_cell of the first `count` failing rows (GX's partial values come in the same order).

    Found with the row predicates of :func:`row_failures` rather than GX's
    ``unexpected_index_column_names``, which costs Python work per failing row.
    """
    if "grid_cell" not in table.columns:
        return []
    bad = _violations(table, config)
    if bad is None:
        return []
    return _jsonable(table["grid_cell"].iloc[np.flatnonzero(bad)[:count]].tolist())


# ---------------------------------------------------------------------------------------------
# Per-row failures (the same rules, vectorised, for reject reasons)


def _ignored(a: pd.Series, b: pd.Series, rule: str) -> np.ndarray:
    if rule == "either_value_is_missing":
        return (a.isna() | b.isna()).to_numpy()
    if rule == "both_values_are_missing":
        return (a.isna() & b.isna()).to_numpy()
    return np.zeros(len(a), dtype=bool)


def _violations(table: pd.DataFrame, expectation) -> np.ndarray | None:
    """Rows (bool mask) that break one row-level expectation, with GX's null semantics."""
    config = getattr(expectation, "configuration", expectation)
    kind, kw = config.type, config.kwargs
    if "column" in kw:
        values = table[kw["column"]]
        present = values.notna().to_numpy()
        if kind == "expect_column_values_to_not_be_null":
            return ~present
        if kind == "expect_column_values_to_be_between":
            low, high = kw.get("min_value"), kw.get("max_value")
            if pd.api.types.is_datetime64_any_dtype(values.dtype):
                low = None if low is None else pd.Timestamp(low)
                high = None if high is None else pd.Timestamp(high)
            ok = np.ones(len(values), dtype=bool)
            if low is not None:
                ok &= (values > low if kw.get("strict_min") else values >= low).to_numpy(dtype=bool, na_value=False)
            if high is not None:
                ok &= (values < high if kw.get("strict_max") else values <= high).to_numpy(dtype=bool, na_value=False)
            return present & ~ok
        if kind == "expect_column_values_to_match_regex":
            ok = values.astype(str).str.contains(kw["regex"]).to_numpy(dtype=bool, na_value=False)
            return present & ~ok
        if kind == "expect_column_values_to_be_in_set":
            return present & ~values.isin(kw["value_set"]).to_numpy()
        if kind == "expect_column_values_to_be_unique":
            return present & values.duplicated(keep=False).to_numpy()
        return None
    if "column_A" in kw:
        a, b = table[kw["column_A"]], table[kw["column_B"]]
        ignored = _ignored(a, b, kw.get("ignore_row_if", "both_values_are_missing"))
        if kind == "expect_column_pair_values_to_be_equal":
            ok = (a == b).to_numpy(dtype=bool, na_value=False)
        elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
            ok = (a >= b if kw.get("or_equal") else a > b).to_numpy(dtype=bool, na_value=False)
        else:
            return None
        return ~ignored & ~ok
    return None


def row_failures(df: pd.DataFrame, suite: gx.ExpectationSuite) -> pd.DataFrame:
    """Which rows break which row-level expectation of a suite (vectorised, without GX).

    Every expectation of these suites is row-level (column and column-pair map expectations),
    evaluated with GX's semantics (nulls pass everything but "not null"; pair expectations skip
    rows per ``ignore_row_if``; uniqueness flags every row of a repeated value), so the counts
    equal GX's ``unexpected_count``.

    Args:
        df (pd.DataFrame): the table.
        suite (gx.ExpectationSuite): from :func:`metadata_suite` or :func:`stats_suite`.
    Returns:
        pd.DataFrame: one row per (row, expectation) failure: ``row`` (df's index label),
        ``grid_cell``, ``expectation`` (GX type), ``column`` (comma-separated), ``check``; in
        table order.
    """
    table = prepare_table(df, suite)
    labels = df.index.to_numpy()
    parts, positions = [], []
    for expectation in suite.expectations:
        bad = _violations(table, expectation)
        if bad is None or not bad.any():
            continue
        rows = np.flatnonzero(bad)
        positions.append(rows)
        cells = table["grid_cell"].iloc[rows].to_numpy() if "grid_cell" in table.columns else None
        parts.append(pd.DataFrame({
            "row": labels[rows], "grid_cell": cells,
            "expectation": expectation.expectation_type,
            "column": ", ".join(columns_of(expectation)),
            "check": (expectation.meta or {}).get("check", expectation.expectation_type),
        }))
    columns = ["row", "grid_cell", "expectation", "column", "check"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    order = np.argsort(np.concatenate(positions), kind="stable")  # table order, whatever the labels
    return pd.concat(parts, ignore_index=True).iloc[order].reset_index(drop=True)
