"""Errors that say where bad Major TOM input is (shard, row, grid cell, column) and what to do."""
from __future__ import annotations

from dataclasses import dataclass


class ShardError(ValueError):
    """A problem with one cell (or a whole shard) of a Major TOM parquet file.

    Attributes: shard (path or URL), row (row index in the file, None for the whole shard),
    grid_cell (None when unknown), column, reason (a short machine-readable code such as
    "corrupt_geotiff"), problem (what was wrong), hint (what to do).
    """

    def __init__(self, shard: str, row: int | None, grid_cell: str | None, column: str | None,
                 reason: str, problem: str, hint: str = ""):
        self.shard, self.row, self.grid_cell, self.column = shard, row, grid_cell, column
        self.reason, self.problem, self.hint = reason, problem, hint
        where = f"{shard}"
        if row is not None:
            where += f", row {row}"
        if grid_cell:
            where += f" (grid cell {grid_cell})"
        if column:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}." + (f" {hint}" if hint else ""))


@dataclass(frozen=True)
class RejectedRow:
    """A row a stage set aside instead of stopping: where it is and why (the ShardError's fields)."""

    source: str
    shard: str
    row: int | None
    grid_cell: str | None
    column: str | None
    reason: str
    message: str

    @classmethod
    def from_error(cls, source: str, err: ShardError) -> "RejectedRow":
        return cls(source, err.shard, err.row, err.grid_cell, err.column, err.reason, str(err))
