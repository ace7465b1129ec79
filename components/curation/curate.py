"""Curation, step by step: pair the sources, measure the cells, apply contracts and filters, and
split every input cell into the curated index or the rejected table with its reasons.

Nothing is dropped silently: kept + rejected cells equal the input cells, and duplicates that lost
to the duplicate rule are listed with the product they lost to.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.atomic import atomic_write, write_json_atomic
from components.layout import CURATED_INDEX, CURATED_REJECTED
from components.majortom.errors import RejectedRow
from components.majortom.schema import SOURCES
from components.majortom.shards import METADATA_FILE, Pairing, pair_sources, read_metadata

# Reader reasons that mean the tile is not on its grid cell: the paper's "misaligned projections".
READER_REASON_NAMES = {"crs_mismatch": "misaligned_projection"}


@dataclass
class Sources:
    """Each source's metadata as read (before the duplicate rule) and where it was read from."""

    metadata: dict[str, pd.DataFrame]
    paths: dict[str, Path]


def read_sources(raw_dir: str | Path) -> Sources:
    """Read the metadata.parquet of every source present under raw_dir (s2l2a and dem are required)."""
    raw_dir = Path(raw_dir)
    paths = {s: raw_dir / s / METADATA_FILE for s in SOURCES if (raw_dir / s / METADATA_FILE).exists()}
    missing = [s for s in ("s2l2a", "dem") if s not in paths]
    if missing:
        raise FileNotFoundError(f"{raw_dir}: no metadata.parquet for {missing}; expected "
                                f"{raw_dir}/<source>/metadata.parquet for s2l2a, dem (and s2l1c)")
    return Sources({s: read_metadata(p) for s, p in paths.items()}, paths)


def shard_groups(pairing: Pairing) -> list[pd.DataFrame]:
    """Paired cells grouped by their L2A shard: the unit of parallel work."""
    return [group for _, group in pairing.cells.groupby("s2l2a_shard", sort=True)]


def reader_rejects(rows: list[RejectedRow]) -> pd.DataFrame:
    return pd.DataFrame([{"grid_cell": r.grid_cell, "source": r.source,
                          "reason": READER_REASON_NAMES.get(r.reason, r.reason), "detail": r.message}
                         for r in rows], columns=["grid_cell", "source", "reason", "detail"])


def assemble(pairing: Pairing, stats: pd.DataFrame, rejects: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the paired cells into the index and the rejected table.

    Args:
        pairing: the sources joined on grid_cell (with its duplicates and unpaired cells).
        stats: measured statistics, one row per paired cell that was decoded.
        rejects: (grid_cell, source, reason, detail) from every check (reader, contracts, filters).
    Returns:
        (index, rejected): index = pairing columns + statistics for cells with no reason;
        rejected = one row per rejected cell (grid_cell, sources, reasons, details) plus one
        row per duplicate product (reasons = ["duplicate"]).
    """
    unpaired = pd.DataFrame({"grid_cell": pairing.unpaired["grid_cell"],
                             "source": pairing.unpaired["present"],
                             "reason": "missing_" + pairing.unpaired["missing"].str.replace(",", "+"),
                             "detail": "no " + pairing.unpaired["missing"] + " for this cell"})
    everything = pd.concat([rejects, unpaired], ignore_index=True)
    grouped = everything.groupby("grid_cell", sort=True).agg(
        sources=("source", lambda s: sorted({x for v in s.dropna() for x in str(v).split(",") if x})),
        reasons=("reason", lambda s: sorted(set(s))),
        details=("detail", lambda s: [d for d in s if isinstance(d, str)]),
    ).reset_index()
    grouped["product_id"] = None

    duplicates = pd.DataFrame({
        "grid_cell": pairing.duplicates["grid_cell"],
        "sources": [[s] for s in pairing.duplicates["source"]],
        "reasons": [["duplicate"]] * len(pairing.duplicates),
        "details": [[f"lost to {k} by the duplicate rule"] for k in pairing.duplicates["kept_product_id"]],
        "product_id": pairing.duplicates["product_id"],
    })
    rejected = pd.concat([grouped, duplicates], ignore_index=True) if len(duplicates) else grouped

    kept_cells = ~pairing.cells["grid_cell"].isin(set(grouped["grid_cell"]))
    index = pairing.cells[kept_cells].merge(stats, on="grid_cell", how="left")
    return index.reset_index(drop=True), rejected


def curation_report(sources: Sources, index: pd.DataFrame, rejected: pd.DataFrame) -> dict:
    """Counts a team compares between data versions (reports/curation.json, DVC metrics)."""
    cells_in = set().union(*(set(m["grid_cell"]) for m in sources.metadata.values()))
    cell_rejects = rejected[rejected["reasons"].map(lambda r: r != ["duplicate"])]
    per_reason = Counter(reason for reasons in cell_rejects["reasons"] for reason in reasons)
    return {
        "input_cells": len(cells_in),
        "kept_cells": int(len(index)),
        "rejected_cells": int(len(cell_rejects)),
        "duplicate_products": int(len(rejected) - len(cell_rejects)),
        "rejected_per_reason": dict(sorted(per_reason.items())),
        "kept_share": round(len(index) / len(cells_in), 4) if cells_in else 0.0,
    }


def write_outputs(curated_dir: str | Path, index: pd.DataFrame, rejected: pd.DataFrame,
                  report: dict, report_path: str | Path) -> None:
    """index.parquet, rejected.parquet and the metrics file, each written atomically."""
    curated_dir = Path(curated_dir)
    atomic_write(curated_dir / CURATED_INDEX.name, lambda tmp: index.to_parquet(tmp, index=False))
    atomic_write(curated_dir / CURATED_REJECTED.name, lambda tmp: rejected.to_parquet(tmp, index=False))
    write_json_atomic(report_path, report)


def relative_shard_paths(index: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Shard paths inside the project written relative to its root (readers resolve them there)."""
    root = Path(root).resolve()
    out = index.copy()
    for column in [c for c in out.columns if c.endswith("_shard")]:
        out[column] = [_relative(p, root) for p in out[column]]
    return out


def absolute_shard_paths(index: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """The index's relative shard paths resolved against the project root (URLs untouched)."""
    out = index.copy()
    for column in [c for c in out.columns if c.endswith("_shard")]:
        out[column] = [str(Path(root) / p) if isinstance(p, str) and "://" not in p and not Path(p).is_absolute()
                       else p for p in out[column]]
    return out


def _relative(path, root: Path):
    if not isinstance(path, str) or "://" in path:
        return path
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else path


def pair(sources: Sources) -> Pairing:
    return pair_sources(sources.metadata, sources.paths)


def contract_rejects(table: pd.DataFrame, failures: pd.DataFrame, result, source: str) -> pd.DataFrame:
    """Per-cell contract failures as rejects; a failure no row explains stops the stage.

    Args:
        table: the validated table; failures: (grid_cell, expectation, column, check) from row_failures;
        result: the ContractResult; source: where the table came from (for the rejected table).
    """
    if not result.success and failures.empty:
        raise SystemExit(f"the {source} data contract failed for the table as a whole:\n{result.summary()}")
    reason = failures["check"].map(lambda c: CONTRACT_REASON_NAMES.get(c, f"contract_{c}"))
    return pd.DataFrame({"grid_cell": failures["grid_cell"], "source": source, "reason": reason,
                         "detail": failures["expectation"] + " on " + failures["column"]})


# A contract row failure on these columns is the same finding as a named filter: one reason name.
# Contract rules (an expectation's meta "check") that are the same finding as a named filter get
# its reason name; a tile whose centre or CRS does not fit its cell is a "misaligned projection".
CONTRACT_REASON_NAMES = {"date_gap": "date_gap", "centre_matches_cell": "misaligned_projection",
                         "crs_zone": "misaligned_projection", "crs_hemisphere": "misaligned_projection",
                         "crs_is_utm": "misaligned_projection"}
