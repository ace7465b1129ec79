"""The held-out split: a pure function of the grid cell, so a cell never changes sides.

Each cell gets a key u in [0, 1) from a keyed hash of its name (blake2b of salt + grid_cell,
the top 53 bits of the digest over 2**53); the cell is "test" when u < test_share. Hence:

* adding or removing cells never moves another cell (no ranking, no counting, no global RNG);
* raising test_share only moves cells from train to test, never back;
* another salt draws an independent split (for a fresh held-out set, not for routine reruns).

Python's ``hash()`` is salted per process and so is not used. About 1 s per million cells.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["DEFAULT_SALT", "TRAIN", "TEST", "split_key", "assign_split"]

DEFAULT_SALT = "mesa-split-v1"
TRAIN = "train"
TEST = "test"
_SEPARATOR = "\x1f"  # cannot occur in a grid cell name, so (salt, cell) pairs never collide


def _cells(grid_cells: Iterable[str]) -> list[str]:
    cells = grid_cells.tolist() if hasattr(grid_cells, "tolist") else list(grid_cells)
    for i, cell in enumerate(cells):
        if not isinstance(cell, str) or not cell:
            raise ValueError(
                f"grid_cells[{i}] is {cell!r}: every sample needs its grid cell name (a non-empty "
                "string such as '123U_456R') to be given a split"
            )
    return cells


def split_key(grid_cells: Iterable[str], salt: str = DEFAULT_SALT) -> np.ndarray:
    """The uniform key in [0, 1) of each grid cell (float64, same order as the input).

    Args:
        grid_cells: grid cell names (list, numpy array or pandas Series of str).
        salt: namespace of the hash (default ``DEFAULT_SALT``); another salt, another split.
    """
    prefix = f"{salt}{_SEPARATOR}".encode()
    blake = hashlib.blake2b
    digests = b"".join(blake(prefix + cell.encode(), digest_size=8).digest() for cell in _cells(grid_cells))
    words = np.frombuffer(digests, dtype=">u8")
    # 53 bits: every value is exact in float64, and the largest is below 1.0
    return (words >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(grid_cells: Iterable[str], test_share: float = 0.1, salt: str = DEFAULT_SALT) -> np.ndarray:
    """"train" or "test" for each grid cell, deterministic by the cell alone.

    Args:
        grid_cells: grid cell names (list, numpy array or pandas Series of str).
        test_share: expected share of test cells, in [0, 1] (default 0.1, the paper's 10 %).
        salt: namespace of the hash (default ``DEFAULT_SALT``).

    Returns:
        A numpy array of str ("train" / "test"), same order and length as ``grid_cells``.
    """
    share = float(test_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"test_share must be within [0, 1], got {test_share!r}")
    return np.where(split_key(grid_cells, salt) < share, TEST, TRAIN)
