"""Local landform of a cell from its DEM: Hammond (1964) as reimplemented for the World
Ecophysiographic Landforms (Karagulle et al. 2017; Sayre et al. 2020), on one ~10 km cell.

Two steps, so the expensive one runs once, where the DEM is decoded (curation), and the cheap
one runs wherever the thresholds are (captions, params):

    inputs = landform_inputs(dem, pixel_m)                  # three numbers per cell
    classes = classify_landform(g, r, u, thresholds)        # vectorised over cells

Hammond's three measures, taken over the whole cell instead of a moving window:

* slope: the share of *gentle* pixels, rise over run below 8 % (``gentle_share``, 0..1);
* local relief: the robust elevation range, 99th minus 1st percentile (``relief_m``);
* profile: where the gentle land lies, as the share of the gentle pixels above the middle
  of that range (``profile_upper_share``, 0..1): mostly up = a tableland, mostly down = plains
  with hills or mountains rising out of them.

Hammond's classes (slope A > 80 %, B 50-80 %, C 20-50 %, D < 20 % gentle; relief breaks
30, 90, 150, 300, 900 m; profile lowland / upland) are grouped into the five landforms the
captions use, in this order (the first rule that holds wins):

================  ==========================================================================
high mountains    relief >= 900 m, whatever the slope (Hammond relief class 6; REFERENCE
                  section 4: "relief > 900 m -> high mountains")
plains            relief < 30 m, whatever the slope (relief class 1: too little relief for a
                  hill), or >= 50 % gentle and relief < 90 m (Hammond's flat, smooth and
                  irregular plains, A1, A2, B1, B2)
tablelands        >= 50 % gentle, relief 90-900 m and more than half of the gentle land in the
                  upper half of the relief (profile c/d: tablelands with moderate,
                  considerable and high relief)
hills             relief 30-300 m and < 50 % gentle (open hills, hills: C/D 2-4), or
                  >= 50 % gentle with the gentle land low and relief 90-300 m ("plains with
                  hills", A/B 3-4 a/b)
low mountains     relief 300-900 m and not a tableland: < 50 % gentle (open low mountains,
                  low mountains, C/D 5) or gentle land low ("plains with mountains", A/B 5 a/b)
================  ==========================================================================

The 20 % and 80 % slope breaks and the 150 m relief break split Hammond subclasses that fold
into the same group, so they are not thresholds here. Every break is a lower bound of the
class above it (relief exactly 90 m is not a plain); the profile test is strict (exactly half
the gentle land up high, e.g. a uniformly tilted plane, is not a tableland).

Pure module: numpy only, no I/O.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "LANDFORM_CLASSES",
    "DEFAULT_LANDFORM_THRESHOLDS",
    "classify_landform",
    "landform_inputs",
    "landform_of_dem",
    "geographic_pixel_m",
    "check_landform_thresholds",
    "PAPER_LANDFORM_WORDS",
    "paper_landform_word",
]

LANDFORM_CLASSES: tuple[str, ...] = ("plains", "tablelands", "hills", "low mountains", "high mountains")

#: Thresholds of the five-class grouping (params.yaml `captions.landform_thresholds`).
#: Each entry: what it separates (Hammond's class boundaries in brackets).
DEFAULT_LANDFORM_THRESHOLDS: dict[str, float] = {
    # rise over run below which a pixel counts as gentle (Hammond: 8 %); used by landform_inputs
    "gentle_slope": 0.08,
    # share of gentle pixels from which a cell is "mostly gentle" (slope classes A/B vs C/D)
    "gentle_share_min": 0.5,
    # relief below which a cell is plains whatever its slope (relief class 1, 0-30 m)
    "flat_relief_m": 30.0,
    # relief below which a mostly gentle cell is plains (relief classes 1-2, 0-90 m)
    "plains_relief_m": 90.0,
    # relief from which a cell that is not a tableland is mountains, not hills (300 m)
    "mountains_relief_m": 300.0,
    # relief from which every cell is high mountains (900 m)
    "high_mountains_relief_m": 900.0,
    # share of the gentle land above mid-relief beyond which a gentle cell is a tableland
    # (profile c/d: more than half of the gentle land in the upper half)
    "upland_share_min": 0.5,
}

#: Class -> the word the paper's prompts use: "mountains" for both mountain classes (Table 2:
#: "dry woodlands steppe and mountains in Tunisia"), the class itself otherwise.
PAPER_LANDFORM_WORDS: dict[str, str] = {
    name: "mountains" if name.endswith("mountains") else name for name in LANDFORM_CLASSES
}


def paper_landform_word(landform: str | None) -> str | None:
    """The paper's word for a landform class ("high mountains" -> "mountains"); other text as it is."""
    if landform is None:
        return None
    return PAPER_LANDFORM_WORDS.get(landform, landform)


_LABELS = np.array([*LANDFORM_CLASSES, None], dtype=object)
_RELIEF_ORDER = ("flat_relief_m", "plains_relief_m", "mountains_relief_m", "high_mountains_relief_m")

#: metres per degree of latitude on the mean Earth sphere (IUGG radius 6,371,008.8 m)
_M_PER_DEG = 6_371_008.8 * math.pi / 180.0


def check_landform_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, float]:
    """Defaults overlaid by ``thresholds``; ValueError on unknown keys or inconsistent values."""
    merged = dict(DEFAULT_LANDFORM_THRESHOLDS)
    if thresholds:
        unknown = sorted(set(thresholds) - set(DEFAULT_LANDFORM_THRESHOLDS))
        if unknown:
            raise ValueError(
                f"landform thresholds: unknown key(s) {unknown}; valid keys: {sorted(DEFAULT_LANDFORM_THRESHOLDS)}"
            )
        for key, value in thresholds.items():
            try:
                merged[key] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"landform thresholds: {key} must be a number, got {value!r}") from None
    for key, value in merged.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"landform thresholds: {key} must be finite and >= 0, got {value!r}")
    for key in ("gentle_share_min", "upland_share_min"):
        if merged[key] > 1:
            raise ValueError(f"landform thresholds: {key} is a share (0..1), got {merged[key]!r}")
    reliefs = [merged[k] for k in _RELIEF_ORDER]
    if any(a >= b for a, b in zip(reliefs, reliefs[1:])):
        raise ValueError(
            "landform thresholds: relief breaks must increase "
            + " < ".join(f"{k}={merged[k]:g}" for k in _RELIEF_ORDER)
        )
    return merged


def _as_float_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(value).__name__}") from None
    return arr


def classify_landform(
    gentle_share: Any,
    relief_m: Any,
    profile_upper_share: Any,
    thresholds: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Hammond landform group per cell, vectorised.

    Args:
        gentle_share: share (0..1) of DEM pixels with slope below ``gentle_slope``; scalar or
            array-like.
        relief_m: 99th - 1st percentile of elevation, metres (>= 0); same shape.
        profile_upper_share: share (0..1) of the gentle pixels above mid-relief; same shape.
            Only read for mostly gentle cells with 90-900 m relief (the tableland test).
        thresholds: overrides of ``DEFAULT_LANDFORM_THRESHOLDS`` (default: none).

    Returns:
        ``np.ndarray`` of dtype object and the broadcast input shape, holding one of
        ``LANDFORM_CLASSES`` per cell, or ``None`` where an input the rules need is NaN
        (a cell without DEM statistics has no landform, rather than a guess).

    Raises:
        ValueError: shares outside [0, 1], negative relief (naming the first bad cell), or
        bad thresholds.
    """
    t = check_landform_thresholds(thresholds)
    g = _as_float_array("gentle_share", gentle_share)
    r = _as_float_array("relief_m", relief_m)
    u = _as_float_array("profile_upper_share", profile_upper_share)
    try:
        g, r, u = np.broadcast_arrays(g, r, u)
    except ValueError:
        raise ValueError(
            f"gentle_share, relief_m and profile_upper_share must have the same shape, got "
            f"{np.shape(g)}, {np.shape(r)} and {np.shape(u)}"
        ) from None
    for name, arr, hi in (("gentle_share", g, 1.0), ("profile_upper_share", u, 1.0), ("relief_m", r, np.inf)):
        bad = (arr < 0) | (arr > hi)  # NaN compares False: missing is not an error
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f" at index {idx[0] if len(idx) == 1 else idx}" if idx else ""
            rng = "[0, 1]" if hi == 1.0 else ">= 0"
            raise ValueError(f"{name} must be {rng}, got {arr[bad].ravel()[0]!r}{where}")

    gentle = g >= t["gentle_share_min"]
    upland = u > t["upland_share_min"]
    high = r >= t["high_mountains_relief_m"]
    mountains = r >= t["mountains_relief_m"]
    plains = (r < t["flat_relief_m"]) | (gentle & (r < t["plains_relief_m"]))
    # np.select keeps the first condition that holds: the rule order of the module docstring;
    # codes index _LABELS, whose last entry (None) is "no landform"
    code = np.select(
        [high, plains, gentle & upland, ~mountains, mountains], [4, 0, 1, 2, 3], default=len(LANDFORM_CLASSES)
    )
    flat = r < t["flat_relief_m"]
    needs_gentle = ~(high | flat)
    needs_profile = needs_gentle & gentle & (r >= t["plains_relief_m"])
    known = np.isfinite(r) & (~needs_gentle | np.isfinite(g)) & (~needs_profile | np.isfinite(u))
    code = np.where(known, code, len(LANDFORM_CLASSES))
    return np.asarray(_LABELS[code], dtype=object)  # 0-d for scalar inputs, like numpy ufuncs


def _spacing(pixel_m: Any) -> tuple[float, float]:
    """(row spacing, column spacing) in metres from a number or a (dy, dx) pair."""
    values = np.atleast_1d(np.asarray(pixel_m, dtype=np.float64)).ravel()
    if values.size == 1:
        dy = dx = float(values[0])
    elif values.size == 2:
        dy, dx = (float(v) for v in values)
    else:
        raise ValueError(f"pixel_m must be one spacing or a (dy, dx) pair in metres, got {pixel_m!r}")
    if not (math.isfinite(dy) and math.isfinite(dx) and dy > 0 and dx > 0):
        raise ValueError(f"pixel_m must be positive metres, got {pixel_m!r}")
    return abs(dy), abs(dx)


def landform_inputs(
    dem: Any,
    pixel_m: float | tuple[float, float],
    valid: np.ndarray | None = None,
    *,
    gentle_slope: float = DEFAULT_LANDFORM_THRESHOLDS["gentle_slope"],
) -> dict[str, float]:
    """Hammond's three inputs over one DEM tile.

    Args:
        dem: 2-D elevations in metres (any real dtype; NaN = no data).
        pixel_m: pixel spacing in metres: one number, or (dy, dx) for rows and columns when
            they differ (geographic grids; see ``geographic_pixel_m``).
        valid: optional boolean mask of usable pixels (default: the finite ones). Slopes are
            central differences (``np.gradient``); a slope is only counted where the pixel
            and the neighbours it reads are valid.
        gentle_slope: rise over run below which a pixel is gentle (default 0.08).

    Returns:
        ``{"gentle_share", "relief_m", "profile_upper_share"}`` as floats:
        gentle_share = gentle pixels / pixels with a trusted slope; relief_m = 99th - 1st
        percentile of the valid elevations; profile_upper_share = share of the gentle pixels
        strictly above mid-relief ((p1 + p99) / 2), 0.0 when no pixel is gentle. All NaN when
        no pixel is valid.
    """
    z = np.asarray(dem, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 2:
        raise ValueError(f"dem must be a 2-D array of at least 2 x 2 pixels, got shape {z.shape}")
    dy, dx = _spacing(pixel_m)
    ok = np.isfinite(z)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != z.shape:
            raise ValueError(f"valid mask shape {valid.shape} differs from the DEM's {z.shape}")
        ok &= valid
    nan = float("nan")
    if not ok.any():
        return {"gentle_share": nan, "relief_m": nan, "profile_upper_share": nan}
    filled = np.where(ok, z, 0.0)  # values under invalid pixels never reach a trusted slope
    d_row, d_col = np.gradient(filled, dy, dx)
    trusted = ok.copy()
    trusted[1:, :] &= ok[:-1, :]
    trusted[:-1, :] &= ok[1:, :]
    trusted[:, 1:] &= ok[:, :-1]
    trusted[:, :-1] &= ok[:, 1:]
    if not trusted.any():  # only isolated valid pixels: no slope can be trusted
        return {"gentle_share": nan, "relief_m": nan, "profile_upper_share": nan}
    gentle = (np.hypot(d_row, d_col) < gentle_slope) & trusted
    p1, p99 = np.percentile(z[ok], [1.0, 99.0])
    n_gentle = int(gentle.sum())
    upper = float(np.count_nonzero(z[gentle] > 0.5 * (p1 + p99)) / n_gentle) if n_gentle else 0.0
    return {
        "gentle_share": float(n_gentle / np.count_nonzero(trusted)),
        "relief_m": float(p99 - p1),
        "profile_upper_share": upper,
    }


def landform_of_dem(
    dem: Any, pixel_m: float | tuple[float, float], thresholds: Mapping[str, Any] | None = None
) -> str | None:
    """Convenience: ``classify_landform`` of ``landform_inputs`` for one tile."""
    t = check_landform_thresholds(thresholds)
    inputs = landform_inputs(dem, pixel_m, gentle_slope=t["gentle_slope"])
    return classify_landform(inputs["gentle_share"], inputs["relief_m"], inputs["profile_upper_share"], t).item()


def geographic_pixel_m(dlat_deg: float, dlon_deg: float, lat_deg: float) -> tuple[float, float]:
    """(dy, dx) in metres of a latitude/longitude grid at ``lat_deg`` (sphere, mean radius).

    E.g. 3 arc-seconds at 36.6 N: (92.7, 74.4) m. Good to ~0.5 % against the ellipsoid, far
    below what moves a slope across 8 %.
    """
    return abs(dlat_deg) * _M_PER_DEG, abs(dlon_deg) * _M_PER_DEG * math.cos(math.radians(lat_deg))
