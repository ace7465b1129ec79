"""The Major TOM grid (ESA Phi-lab), vectorised with numpy.

Pure module: no I/O, no global state beyond small caches (the default grid and
pyproj Transformers per EPSG code).

Grid facts (as the upstream ``Grid`` class builds it, see shared/REFERENCE.md section 2):

- Rows: ``N = ceil(pi * R / dist_km)`` divisions pole to pole (2004 at 10 km). The row
  latitudes are upstream's ``linspace(-90, 90, N + 1)[:-1]`` folded by ``mod(x, 180) - 90``
  and sorted, so 0 degrees is a row; only rows inside [-85, 85] exist.
- Columns: a row at latitude ``phi`` has ``n = ceil(2 * pi * R * cos(phi) / dist_km)`` columns,
  upstream's ``linspace(-180, 180, n + 1)[:-1]`` folded by ``mod(x, 360) - 180`` and sorted,
  so 0 degrees is a column.
- Names: ``{n}U`` / ``{n}D`` rows (there is no ``0D``), ``{n}R`` / ``{n}L`` columns (no ``0L``),
  a cell is ``"{row}_{col}"``, e.g. ``"454U_120R"``. The grid point is the cell's bottom-left.
- Integer form: rows and columns are signed, U / R >= 0 and D / L < 0 (``"3D_7L"`` is (-3, -7)).

Every grid coordinate below is computed with the same floating-point operations as upstream
(one multiply, one add, one ``mod``), so points that lie exactly on a grid line fall on the same
side as upstream; ``tests/unit/test_grid.py`` checks 40 upstream-named points.

Point -> cell rule (upstream's ``searchsorted(..., side='left') - 1``):
the row is the last grid latitude *strictly* below the point and the column the last grid
longitude *strictly* left of it. A point exactly on a grid line therefore belongs to the cell
below / to the left: (0, 0) is ``1D_1L`` upstream, and so here.

Scalars in, scalars out: every vectorised function returns Python scalars (``int``, ``float``,
``str``) when all its inputs are scalars, and numpy arrays of the broadcast input shape
otherwise (``int64`` rows / columns / EPSG codes, ``float64`` coordinates, ``<U`` names).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import Transformer

__all__ = [
    "GRID_DIST_KM",
    "EARTH_RADIUS_KM",
    "LAT_RANGE",
    "CELL_PAD_M",
    "CELL_SIZE_M",
    "TILE_SIZE_M",
    "MajorTomGrid",
    "CellFootprint",
    "utm_epsg",
    "cell_footprint",
    "default_grid",
]

GRID_DIST_KM = 10
EARTH_RADIUS_KM = 6378.137  # equatorial radius upstream uses for the grid
LAT_RANGE = (-85.0, 85.0)  # upstream Grid's default latitude_range
CELL_PAD_M = 340.0  # margin around the 10 km cell in the Core products
CELL_SIZE_M = 10_000.0
TILE_SIZE_M = 10_680.0  # CELL_SIZE_M + 2 * CELL_PAD_M -> 1068 px at 10 m, 356 px at 30 m

# Footprint convention, checked against upstream ESA-PhiLab/Major-TOM:
# - majortom/grid.py: Grid(utm_definition='bottomleft') takes each cell's UTM zone from its
#   bottom-left grid point (a 'center' option exists but is not the default).
# - docs/reports/2026-09-30-refactor-research.md + docs/evidence/analyse.py: the Core-S2 cut
#   (MajorTOM/extras/extract-sample-from-raw-S2.ipynb) projects the bottom-left grid point to
#   UTM, subtracts 340 m from x and y, and reads a 10,680 m window; no snapping to the pixel
#   grid. Stored Core geotransforms equal (x - 340, y - 340 + 10,680) to 1e-9 m in 55/55 checked
#   samples, 1068 x 1068 px at 10 m. Their CRS is the Sentinel-2 *product's* zone, which for a
#   few % of cells differs from the bottom-left point's zone: pass ``epsg=`` (e.g. the
#   metadata's ``crs``) to cut in that zone instead.
# So: bounds = (x - 340, y - 340, x + 10,340, y + 10,340), unsnapped, as the brief states.

_NAME_RE = re.compile(r"(0|[1-9][0-9]*)([UD])_(0|[1-9][0-9]*)([RL])")  # used with fullmatch
_NAME_FORMAT = "'<row><U|D>_<col><R|L>' with unpadded integers, e.g. '454U_120R' or '3D_17L'"


def _scalar_inputs(*arrays) -> bool:
    """True when every argument is a 0-d value (so results go back as Python scalars)."""
    return all(np.ndim(a) == 0 for a in arrays)


def _out(value, scalar: bool):
    """Return ``value`` as a Python scalar when ``scalar`` else as a numpy array."""
    return value.item() if scalar else value


def _first_bad(values: np.ndarray, bad: np.ndarray):
    """The first element of ``values`` where ``bad`` is set, as a Python scalar."""
    return values[bad].flat[0].item()


def _as_int_array(value, what: str) -> np.ndarray:
    """``value`` as an int64 array; integral floats (e.g. from pandas) pass, fractions do not."""
    try:
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64)
        as_float = arr.astype(np.float64)
    except (TypeError, ValueError):
        as_float = None
    if as_float is None or not np.all(np.isfinite(as_float) & (as_float == np.round(as_float))):
        raise ValueError(f"{what} must be integers, got {value!r}")
    return as_float.astype(np.int64)


def _parse_unsigned(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse canonical unsigned integers ("0", "17"; no sign, no leading zero, ASCII only).

    Works on the UTF-32 code points of a ``<U`` array, which is much faster than
    ``astype(int)`` and rejects non-ASCII digits that ``str.isdecimal`` would accept.

    Args:
        text (np.ndarray): a ``<U`` array.
    Returns:
        tuple[np.ndarray, np.ndarray]: (values as int64, ok mask), both of ``text``'s shape;
        values are 0 where ok is False.
    """
    text = np.ascontiguousarray(text)
    length = np.strings.str_len(text).reshape(-1)
    width = text.dtype.itemsize // 4
    if width == 0:  # every string empty
        return np.zeros(text.shape, np.int64), np.zeros(text.shape, bool)
    codes = text.reshape(-1).view(np.uint32).reshape(-1, width).astype(np.int64)
    digits = codes - 48
    used = np.arange(width) < length[:, None]
    ok = (length > 0) & (length <= 9) & np.all(((digits >= 0) & (digits <= 9)) | ~used, axis=1)
    ok &= ~((digits[:, 0] == 0) & (length > 1))
    value = np.zeros(length.shape, dtype=np.int64)
    for j in range(min(width, 9)):
        value = np.where(used[:, j], value * 10 + digits[:, j], value)
    value = np.where(ok, value, 0)
    return value.reshape(text.shape), ok.reshape(text.shape)


def _fold_longitude(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Longitude of column slot ``k`` of a row with ``n`` columns, bit-for-bit as upstream.

    Upstream builds ``linspace(-180, 180, n + 1)[:-1]`` (numpy computes each value as
    ``k * (360 / n) + (-180)``) and folds it with ``mod(x, 360) - 180``. Slot 0 folds to 0.

    Args:
        k (np.ndarray): slot indices in [0, n), any integer or float dtype.
        n (np.ndarray): column counts of the rows, broadcastable to ``k``.
    Returns:
        np.ndarray: float64 longitudes in [-180, 180].
    """
    step = 360.0 / np.asarray(n, dtype=np.float64)
    x = np.asarray(k, dtype=np.float64) * step + (-180.0)
    return np.mod(x, 360.0) - 180.0


class MajorTomGrid:
    """The Major TOM grid at ``dist_km`` spacing (10 km for Major TOM Core).

    Attributes (read-only numpy arrays, one entry per row, south to north):
        dist_km (float): grid spacing in km.
        row_lats (np.ndarray[float64]): latitude of each row.
        row_numbers (np.ndarray[int64]): signed row number (U >= 0, D < 0) of each row.
        col_counts (np.ndarray[int64]): number of columns in each row.
        right_counts (np.ndarray[int64]): number of R columns (0R included) in each row; the
            row's columns run from ``right_counts - col_counts`` (west) to ``right_counts - 1``.
    """

    def __init__(self, dist_km: float = GRID_DIST_KM):
        """Precompute row latitudes and per-row column counts.

        Args:
            dist_km (float): grid spacing in km, > 0.
        """
        if not (math.isfinite(dist_km) and dist_km > 0):
            raise ValueError(f"dist_km must be a positive finite number, got {dist_km!r}")
        self.dist_km = float(dist_km)

        # Rows, the way upstream folds and sorts them (0 degrees lands exactly on a row).
        n_div = math.ceil(math.pi * EARTH_RADIUS_KM / dist_km)
        lats = np.sort(np.mod(np.linspace(-90, 90, n_div + 1)[:-1], 180) - 90)
        zeroth = int(np.searchsorted(lats, 0))
        numbers = np.arange(lats.size, dtype=np.int64) - zeroth
        keep = (lats >= LAT_RANGE[0]) & (lats <= LAT_RANGE[1])
        self.row_lats = lats[keep]
        self.row_numbers = numbers[keep]
        self._row0 = int(self.row_numbers[0])  # signed number of the southernmost row

        # Columns per row with math.cos, as upstream does, so ceil() never flips on a last ulp.
        counts = [
            math.ceil(2 * math.pi * (EARTH_RADIUS_KM * math.cos(lat * math.pi / 180)) / dist_km)
            for lat in self.row_lats.tolist()
        ]
        self.col_counts = np.asarray(counts, dtype=np.int64)
        # Slots whose unfolded value k*step - 180 is negative become R columns (0R at slot 0);
        # the others become L columns. Only slots near n/2 are in doubt, so test just those.
        right = np.empty_like(self.col_counts)
        for i, n in enumerate(counts):
            ks = np.arange(max(n // 2 - 2, 0), min(n // 2 + 3, n), dtype=np.float64)
            unfolded = ks * (360.0 / n) + (-180.0)
            right[i] = int(ks[0]) + int(np.count_nonzero(unfolded < 0))
        self.right_counts = right

        # Name pieces: "<row>_" per row and "<col>" per signed column, for fast string building.
        self._row_labels = np.array(
            [f"{abs(r)}{'U' if r >= 0 else 'D'}_" for r in self.row_numbers.tolist()]
        )
        self._col_min = int((self.right_counts - self.col_counts).min())
        col_max = int(self.right_counts.max()) - 1
        self._col_labels = np.array(
            [f"{abs(c)}{'R' if c >= 0 else 'L'}" for c in range(self._col_min, col_max + 1)]
        )
        # Read-only: default_grid() shares one instance across callers.
        for arr in (self.row_lats, self.row_numbers, self.col_counts, self.right_counts,
                    self._row_labels, self._col_labels):
            arr.setflags(write=False)

    def __repr__(self) -> str:
        return f"MajorTomGrid(dist_km={self.dist_km:g}, rows={self.row_count})"

    # ----------------------------------------------------------------------------- rows

    @property
    def row_count(self) -> int:
        """Number of rows in the grid (1893 at 10 km)."""
        return int(self.row_lats.size)

    def _row_index(self, row: np.ndarray) -> np.ndarray:
        """Signed row numbers -> positions in the row arrays; ValueError if off the grid."""
        idx = row - self._row0
        bad = (idx < 0) | (idx >= self.row_count)
        if bad.any():
            raise ValueError(
                f"row {_first_bad(row, bad)} is not on the grid: rows run from "
                f"{self._row0} ({abs(self._row0)}D) to {int(self.row_numbers[-1])}U"
            )
        return idx

    def columns_in_row(self, row):
        """Number of columns in a row.

        Args:
            row (int | array-like of int): signed row number(s) (U >= 0, D < 0).
        Returns:
            int | np.ndarray[int64]: column count(s).
        """
        scalar = _scalar_inputs(row)
        idx = self._row_index(np.asarray(row, dtype=np.int64))
        return _out(self.col_counts[idx], scalar)

    def column_range(self, row):
        """Westernmost and easternmost signed column of a row (both inclusive).

        Args:
            row (int | array-like of int): signed row number(s).
        Returns:
            tuple: (min_col, max_col), ints or int64 arrays.
        """
        scalar = _scalar_inputs(row)
        idx = self._row_index(np.asarray(row, dtype=np.int64))
        hi = self.right_counts[idx] - 1
        lo = self.right_counts[idx] - self.col_counts[idx]
        return _out(lo, scalar), _out(hi, scalar)

    def _check_rowcol(self, row, col) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate signed (row, col); return (row index, col, broadcast row) as int64 arrays."""
        row_a, col_a = _as_int_array(row, "row"), _as_int_array(col, "col")
        row_a, col_a = np.broadcast_arrays(row_a, col_a)
        idx = self._row_index(row_a)
        lo = self.right_counts[idx] - self.col_counts[idx]
        hi = self.right_counts[idx] - 1
        bad = (col_a < lo) | (col_a > hi)
        if bad.any():
            i = np.flatnonzero(bad.ravel())[0]
            r, c = int(row_a.ravel()[i]), int(col_a.ravel()[i])
            raise ValueError(
                f"column {c} is not on row {r}: that row has columns "
                f"{int(lo.ravel()[i])}..{int(hi.ravel()[i])}"
            )
        return idx, col_a, row_a

    # ----------------------------------------------------------------------------- lookups

    def _locate(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """(row index, signed column) of points; see the module docstring for the rule."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        lat, lon = np.broadcast_arrays(lat, lon)
        shape = lat.shape
        lat, lon = lat.ravel(), lon.ravel()  # work on 1-d arrays; 0-d input comes back 0-d
        bad = ~np.isfinite(lat)
        if bad.any():
            raise ValueError(f"latitude {_first_bad(lat, bad)!r} is not a finite number")
        bad = (lat < LAT_RANGE[0]) | (lat > LAT_RANGE[1])
        if bad.any():
            raise ValueError(
                f"latitude {_first_bad(lat, bad)!r} is outside the grid's range "
                f"[{LAT_RANGE[0]:g}, {LAT_RANGE[1]:g}]"
            )
        bad = ~np.isfinite(lon)
        if bad.any():
            raise ValueError(f"longitude {_first_bad(lon, bad)!r} is not a finite number")
        # Only fold values outside [-180, 180): folding in-range values could move them by an ulp
        # and change which side of a grid line they fall on. 180 folds to -180 (same cell anyway).
        out = (lon < -180.0) | (lon >= 180.0)
        if out.any():
            lon = np.where(out, np.mod(lon + 180.0, 360.0) - 180.0, lon)

        # Last row latitude strictly below the point. Points between -85 and the lowest row
        # (-84.97 at 10 km) have none; they go to the lowest row rather than upstream's index -1,
        # which silently wraps to the top row.
        ri = np.searchsorted(self.row_lats, lat, side="left") - 1
        np.maximum(ri, 0, out=ri)

        n = self.col_counts[ri]
        k0 = self.right_counts[ri]
        lo, hi = k0 - n, k0 - 1
        # Estimate from the nominal spacing, then fix the +-1 slips of rounding by comparing with
        # the exact upstream grid longitudes.
        col = np.floor(lon * (n / 360.0)).astype(np.int64)
        np.clip(col, lo - 1, hi, out=col)
        for _ in range(2):
            nxt = np.minimum(col + 1, hi)
            step_up = (col < hi) & (self._col_lon(nxt, n) < lon)
            col += step_up
        for _ in range(3):
            cur = np.maximum(col, lo)
            step_down = (col >= lo) & (self._col_lon(cur, n) >= lon)
            col -= step_down
        # Nothing strictly left of the point in this row: upstream's index -1 takes the last
        # (easternmost) column, whose cell wraps across the antimeridian to the point.
        col = np.where(col < lo, hi, col)
        return ri.reshape(shape), col.reshape(shape)

    @staticmethod
    def _col_lon(col: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Exact upstream longitude of signed column ``col`` in rows of ``n`` columns."""
        slot = np.where(col >= 0, col, col + n)
        return _fold_longitude(slot, n)

    def latlon_to_rowcol(self, lat, lon):
        """Signed (row, col) of the cells holding the points.

        Rule (upstream's): row = last grid latitude strictly below the point; column = last grid
        longitude strictly left of the point within that row. A point on a grid line belongs to
        the cell below / to the left. Longitudes are folded into [-180, 180); a point west of the
        row's first grid longitude (e.g. exactly -180) belongs to the row's easternmost cell,
        which spans the antimeridian. Latitudes in [-85, lowest row] go to the lowest row.

        Args:
            lat (float | array-like): latitude(s) in degrees, finite, within [-85, 85].
            lon (float | array-like): longitude(s) in degrees, finite; broadcast against lat.
        Returns:
            tuple: (row, col) as ints, or int64 arrays of the broadcast shape.
        Raises:
            ValueError: naming the first non-finite or out-of-range value.
        """
        scalar = _scalar_inputs(lat, lon)
        ri, col = self._locate(lat, lon)
        return _out(ri + self._row0, scalar), _out(col, scalar)

    def latlon_to_cell(self, lat, lon):
        """Names of the cells holding the points, e.g. ``"454U_120R"``.

        Args:
            lat (float | array-like): latitude(s) in degrees (see :meth:`latlon_to_rowcol`).
            lon (float | array-like): longitude(s) in degrees.
        Returns:
            str | np.ndarray[str]: cell name(s), a ``<U`` array for array input.
        """
        scalar = _scalar_inputs(lat, lon)
        ri, col = self._locate(lat, lon)
        return _out(self._names(ri, col), scalar)

    def _names(self, ri: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Build names from row indices and signed columns (already validated)."""
        return np.strings.add(self._row_labels[ri], self._col_labels[col - self._col_min])

    def cell_name(self, row, col):
        """Name of the cell at signed (row, col), e.g. ``cell_name(454, 120) == "454U_120R"``.

        Args:
            row (int | array-like of int): signed row(s), U >= 0, D < 0.
            col (int | array-like of int): signed column(s), R >= 0, L < 0.
        Returns:
            str | np.ndarray[str]: name(s).
        Raises:
            ValueError: if a (row, col) is not on the grid.
        """
        scalar = _scalar_inputs(row, col)
        ri, col_a, _ = self._check_rowcol(row, col)
        return _out(self._names(ri, col_a), scalar)

    def parse_cell(self, name: str) -> tuple[int, int]:
        """Signed (row, col) of one cell name, checked against the grid.

        Args:
            name (str): a name like ``"454U_120R"``.
        Returns:
            tuple[int, int]: (row, col).
        Raises:
            ValueError: if the name is malformed (the message gives the expected format) or the
                cell is not on the grid.
        """
        if not isinstance(name, str):
            raise ValueError(f"cell name must be a str, got {type(name).__name__}: {name!r}")
        m = _NAME_RE.fullmatch(name)
        if m is None or m.group(1, 2) == ("0", "D") or m.group(3, 4) == ("0", "L"):
            raise ValueError(f"malformed Major TOM cell name {name!r}: expected {_NAME_FORMAT}")
        row = int(m.group(1)) * (1 if m.group(2) == "U" else -1)
        col = int(m.group(3)) * (1 if m.group(4) == "R" else -1)
        try:
            self._check_rowcol(row, col)
        except ValueError as exc:
            raise ValueError(f"cell {name!r} is not on the grid: {exc}") from None
        return row, col

    def parse_cells(self, names) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`parse_cell`.

        Args:
            names (array-like of str): cell names (any shape; a single str gives 0-d arrays).
        Returns:
            tuple[np.ndarray, np.ndarray]: (rows, cols) as int64 arrays of the input's shape.
        Raises:
            ValueError: naming the first malformed or off-grid name.
        """
        arr = np.asarray(names)
        if arr.dtype.kind == "T" and arr.size:  # numpy StringDType: cast to a fixed width
            width = int(np.strings.str_len(arr).max())
            arr = arr.astype(f"U{max(width, 1)}")
        elif arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.flat):
            arr = arr.astype(str)
        if arr.size == 0:  # np.asarray([]) is float64; an empty input is fine whatever its dtype
            empty = np.zeros(arr.shape, dtype=np.int64)
            return empty, empty.copy()
        if arr.dtype.kind != "U":
            raise ValueError(f"names must be strings, got an array of dtype {arr.dtype}")
        head, sep, tail = np.strings.partition(arr, "_")
        row_abs, ok = _parse_unsigned(np.strings.slice(head, 0, -1))
        col_abs, col_ok = _parse_unsigned(np.strings.slice(tail, 0, -1))
        row_mark = np.strings.slice(head, -1, None)
        col_mark = np.strings.slice(tail, -1, None)
        ok &= col_ok & (sep == "_")
        ok &= ((row_mark == "U") | ((row_mark == "D") & (row_abs != 0)))
        ok &= ((col_mark == "R") | ((col_mark == "L") & (col_abs != 0)))
        if not ok.all():
            bad = _first_bad(arr, ~ok)
            raise ValueError(f"malformed Major TOM cell name {bad!r}: expected {_NAME_FORMAT}")
        rows = np.where(row_mark == "U", row_abs, -row_abs)
        cols = np.where(col_mark == "R", col_abs, -col_abs)
        self._check_rowcol(rows, cols)
        return rows, cols

    # ----------------------------------------------------------------------------- geometry

    def cell_origin(self, row, col):
        """Bottom-left grid point of cells (exactly upstream's grid coordinates).

        Args:
            row (int | array-like of int): signed row(s).
            col (int | array-like of int): signed column(s).
        Returns:
            tuple: (lat, lon) in degrees, floats or float64 arrays.
        """
        scalar = _scalar_inputs(row, col)
        ri, col_a, _ = self._check_rowcol(row, col)
        lat = self.row_lats[ri]
        lon = self._col_lon(col_a, self.col_counts[ri])
        return _out(lat, scalar), _out(lon, scalar)

    def cell_origin_epsg(self, row, col):
        """UTM EPSG code of cells, taken at their bottom-left grid point (upstream's default).

        Args:
            row (int | array-like of int): signed row(s).
            col (int | array-like of int): signed column(s).
        Returns:
            int | np.ndarray[int64]: EPSG code(s).
        """
        lat, lon = self.cell_origin(row, col)
        return utm_epsg(lat, lon)

    def cell_footprint(self, cell, col=None, *, epsg: int | None = None) -> "CellFootprint":
        """UTM footprint of one cell as the Core products cut it.

        The bottom-left grid point is projected to UTM (x, y) and the footprint is the
        ``TILE_SIZE_M`` square ``(x - 340, y - 340, x + 10,340, y + 10,340)``, unsnapped.

        Args:
            cell (str | tuple[int, int] | int): a name, a (row, col) pair, or a row with ``col``.
            col (int | None): the column when ``cell`` is a row number.
            epsg (int | None): cut in this CRS instead of the bottom-left point's UTM zone
                (Core products use their Sentinel-2 tile's zone, the metadata's ``crs``).
        Returns:
            CellFootprint: name, EPSG code and bounds in metres.
        """
        row, col = self._as_rowcol(cell, col)
        lat, lon = self.cell_origin(row, col)
        code = utm_epsg(lat, lon) if epsg is None else _check_epsg(epsg)
        x, y = _transformers(code)[0].transform(lon, lat)
        pad = CELL_PAD_M
        side = self.dist_km * 1000.0 + 2 * pad
        bounds = (float(x - pad), float(y - pad), float(x - pad + side), float(y - pad + side))
        return CellFootprint(grid_cell=self.cell_name(row, col), epsg=code, bounds=bounds)

    def cell_centre_latlon(self, row, col, *, epsg: int | None = None):
        """Lat/lon of the centre of the cells' UTM footprints (see :meth:`cell_footprint`).

        The centre is the bottom-left point's UTM position plus half the cell size on each axis
        (the 340 m margins cancel), projected back to lat/lon. Vectorised, grouped per EPSG.

        Args:
            row (int | array-like of int): signed row(s).
            col (int | array-like of int): signed column(s).
            epsg (int | None): CRS override, as in :meth:`cell_footprint`.
        Returns:
            tuple: (lat, lon) in degrees, floats or float64 arrays.
        """
        scalar = _scalar_inputs(row, col)
        ri, col_a, _ = self._check_rowcol(row, col)
        lat = self.row_lats[ri]
        lon = self._col_lon(col_a, self.col_counts[ri])
        codes = utm_epsg(lat, lon) if epsg is None else np.full(lat.shape, _check_epsg(epsg))
        out_lat = np.empty(lat.shape, dtype=np.float64)
        out_lon = np.empty(lat.shape, dtype=np.float64)
        half = self.dist_km * 1000.0 / 2
        for code in np.unique(codes).tolist():
            sel = codes == code
            fwd, inv = _transformers(int(code))
            x, y = fwd.transform(lon[sel], lat[sel])
            out_lon[sel], out_lat[sel] = inv.transform(np.asarray(x) + half, np.asarray(y) + half)
        return _out(out_lat, scalar), _out(out_lon, scalar)

    def _as_rowcol(self, cell, col) -> tuple[int, int]:
        """Normalise the footprint argument forms to a validated (row, col)."""
        if col is not None:
            row = cell
        elif isinstance(cell, str):
            return self.parse_cell(cell)
        else:
            try:
                row, col = cell
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"expected a cell name or a (row, col) pair, got {cell!r}"
                ) from exc
        self._check_rowcol(row, col)
        return int(row), int(col)


# --------------------------------------------------------------------------------- UTM


def utm_epsg(lat, lon):
    """UTM EPSG code (326zz north, 327zz south) of points, upstream's rule.

    Zone ``floor((lon + 180) / 6) % 60 + 1`` with the Norway exception (56 <= lat < 64 and
    3 <= lon < 12 -> 32) and the Svalbard exceptions (72 <= lat < 84: 0-9 -> 31, 9-21 -> 33,
    21-33 -> 35, 33-42 -> 37). South is ``lat < 0``, so the equator is north.

    Args:
        lat (float | array-like): latitude(s) in degrees, finite.
        lon (float | array-like): longitude(s) in degrees, finite; broadcast against lat.
    Returns:
        int | np.ndarray[int64]: EPSG code(s).
    """
    scalar = _scalar_inputs(lat, lon)
    lat_a, lon_a = np.broadcast_arrays(
        np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    )
    bad = ~(np.isfinite(lat_a) & np.isfinite(lon_a))
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise ValueError(
            f"non-finite coordinate (lat={lat_a.ravel()[i]!r}, lon={lon_a.ravel()[i]!r})"
        )
    zone = np.floor((lon_a + 180.0) / 6.0).astype(np.int64) % 60 + 1
    norway = (lat_a >= 56.0) & (lat_a < 64.0) & (lon_a >= 3.0) & (lon_a < 12.0)
    zone = np.where(norway, 32, zone)
    svalbard = (lat_a >= 72.0) & (lat_a < 84.0)
    for west, east, z in ((0.0, 9.0, 31), (9.0, 21.0, 33), (21.0, 33.0, 35), (33.0, 42.0, 37)):
        zone = np.where(svalbard & (lon_a >= west) & (lon_a < east), z, zone)
    code = np.where(lat_a < 0, 32700, 32600) + zone
    return _out(code.astype(np.int64), scalar)


def _check_epsg(epsg) -> int:
    """Accept 32632, "32632" or "EPSG:32632"; return the int code."""
    text = str(epsg).upper().removeprefix("EPSG:")
    if not text.isdigit():
        raise ValueError(f"EPSG code must look like 32632 or 'EPSG:32632', got {epsg!r}")
    return int(text)


@lru_cache(maxsize=256)
def _transformers(epsg: int) -> tuple[Transformer, Transformer]:
    """(lon/lat -> UTM, UTM -> lon/lat) Transformers for one EPSG code, built once."""
    fwd = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    inv = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    return fwd, inv


# --------------------------------------------------------------------------------- footprints


@dataclass(frozen=True)
class CellFootprint:
    """A cell's square footprint in its UTM CRS.

    Attributes:
        grid_cell (str): the cell name, e.g. ``"454U_120R"``.
        epsg (int): EPSG code of the CRS the bounds are in.
        bounds (tuple[float, float, float, float]): (left, bottom, right, top) in metres.
    """

    grid_cell: str
    epsg: int
    bounds: tuple[float, float, float, float]

    @property
    def crs(self) -> str:
        """The CRS as an ``"EPSG:xxxxx"`` string (what rasterio and pyproj accept)."""
        return f"EPSG:{self.epsg}"

    @property
    def centre(self) -> tuple[float, float]:
        """Centre (x, y) of the bounds, in metres."""
        left, bottom, right, top = self.bounds
        return (left + right) / 2, (bottom + top) / 2

    def shape(self, pixel_m: float = 10.0) -> tuple[int, int]:
        """(rows, cols) of a grid of ``pixel_m`` pixels over the bounds (1068 at 10 m).

        Args:
            pixel_m (float): pixel size in metres; must divide the footprint side.
        Returns:
            tuple[int, int]: (rows, cols).
        Raises:
            ValueError: if the side is not a whole number of pixels.
        """
        left, bottom, right, top = self.bounds
        if not pixel_m > 0:
            raise ValueError(f"pixel_m must be positive, got {pixel_m!r}")
        sizes = []
        for extent in (top - bottom, right - left):
            n = extent / pixel_m
            if abs(n - round(n)) > 1e-6:
                raise ValueError(
                    f"footprint side {extent:g} m is not a whole number of {pixel_m:g} m pixels"
                )
            sizes.append(int(round(n)))
        return sizes[0], sizes[1]

    def transform(self, pixel_m: float = 10.0) -> Affine:
        """North-up affine transform of a ``pixel_m`` grid over the bounds (origin top-left).

        Args:
            pixel_m (float): pixel size in metres.
        Returns:
            affine.Affine: ``(pixel_m, 0, left, 0, -pixel_m, top)``.
        """
        self.shape(pixel_m)  # same validation: the grid must tile the bounds exactly
        left, _, _, top = self.bounds
        return Affine(pixel_m, 0.0, left, 0.0, -pixel_m, top)


@lru_cache(maxsize=8)
def default_grid(dist_km: float = GRID_DIST_KM) -> MajorTomGrid:
    """A shared :class:`MajorTomGrid` (built once per spacing; about 10 ms)."""
    return MajorTomGrid(dist_km)


def cell_footprint(name_or_row_col, *, epsg: int | None = None) -> CellFootprint:
    """Footprint of a 10 km cell on the default grid; see :meth:`MajorTomGrid.cell_footprint`.

    Args:
        name_or_row_col (str | tuple[int, int]): ``"454U_120R"`` or ``(454, 120)``.
        epsg (int | None): CRS override (default: UTM zone of the bottom-left grid point).
    Returns:
        CellFootprint: the footprint.
    """
    return default_grid().cell_footprint(name_or_row_col, epsg=epsg)
