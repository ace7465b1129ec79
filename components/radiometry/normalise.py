"""The documented, invertible rules that turn reflectance and elevation into model inputs.

RGB (per band, reflectance = DN / 10,000, digital numbers without the baseline offset)::

    v      = clip(gain * reflectance, 0, 1) ** (1 / gamma)        # display-like curve, 0..1
    stored = round(65535 * v)                                     # uint16 in the samples
    x      = stored / 65535 * 2 - 1                               # what the VAE sees, [-1, 1]

Defaults ``gain = 2.5, gamma = 2.0`` (``DEFAULT_RGB_RULE``): land surfaces sit between about
0.02 (dense forest in blue, water) and 0.4 (bright soil, sand, dry grass in red), so the gain
puts reflectance 0.4 at full scale, and the square root spends more of the range on the dark
end where vegetation and shaded slopes live (0.02 -> 0.22, 0.1 -> 0.5, 0.4 -> 1.0), much as
Sentinel-2 true-colour previews do. Snow, ice and cloud (0.6-0.9) saturate at 1.0: clouds are
masked anyway, and snow's texture above 0.4 is the price of a well-spread land range.
The inverse is exact up to the uint16 quantisation for unclipped values: one stored step is at
most ``gamma / gain / 65535`` in reflectance (0.12 DN with the defaults), so a round trip is
within 0.07 DN (rounding recovers integer DN exactly). Value 0 (no data) stays 0 both ways.

DEM::

    x = clip((elevation - cell_mean) / S, -1, 1)        # float32, repeated on 3 channels later
    elevation = x * S + cell_mean

``cell_mean`` (metres, the mean over the cell's valid pixels) is stored with each sample; ``S``
is one global scale (metres) in params, chosen by ``choose_dem_scale`` from the training cells
so that clipping is rare. A per-cell min/max would not be invertible at generation time, and a
global [-500, 9000] m mapping would put ~5 km in one unit and flatten plains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RGB_RULE = {"gain": 2.5, "gamma": 2.0}
"""RGB rule defaults: reflectance 0.4 at full scale, square-root curve (see module docstring)."""

REFLECTANCE_SCALE_DN = 10_000.0  # Sentinel-2 DN per unit reflectance (after the offset rule)
STORED_MAX = 65535

_F32 = np.float32


def _check_rgb_rule(gain: float, gamma: float) -> None:
    if not (np.isfinite(gain) and gain > 0 and np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"RGB rule needs gain > 0 and gamma > 0, got gain={gain!r}, gamma={gamma!r}")


# --------------------------------------------------------------------------------------------
# RGB


def encode_rgb(
    reflectance_dn: np.ndarray,
    gain: float = DEFAULT_RGB_RULE["gain"],
    gamma: float = DEFAULT_RGB_RULE["gamma"],
) -> np.ndarray:
    """Reflectance digital numbers (DN = reflectance x 10,000) to the stored uint16 values.

    Args:
        reflectance_dn: any shape, integer or float DN without the baseline offset; 0 = no data.
        gain: reflectance multiplier; reflectance >= 1 / gain is stored as 65535 (default 2.5).
        gamma: the curve's exponent is 1 / gamma (default 2.0, a square root).

    Returns:
        uint16 of the input's shape, round(65535 * clip(gain * DN / 10000, 0, 1) ** (1 / gamma)).
    """
    _check_rgb_rule(gain, gamma)
    v = np.asarray(reflectance_dn, dtype=_F32) * _F32(gain / REFLECTANCE_SCALE_DN)
    np.clip(v, 0.0, 1.0, out=v)
    if gamma == 2.0:
        np.sqrt(v, out=v)  # the default curve, several times cheaper than a general power
    elif gamma != 1.0:
        np.power(v, _F32(1.0 / gamma), out=v)
    v *= _F32(STORED_MAX)
    np.rint(v, out=v)
    return v.astype(np.uint16)


def decode_rgb(
    stored: np.ndarray,
    gain: float = DEFAULT_RGB_RULE["gain"],
    gamma: float = DEFAULT_RGB_RULE["gamma"],
) -> np.ndarray:
    """Stored uint16 values back to reflectance DN (float32): the inverse of ``encode_rgb``.

    Exact up to quantisation (within 0.07 DN with the defaults) where the encoding did not
    clip; clipped values come back as 10,000 / gain (4,000 DN with the defaults).
    """
    _check_rgb_rule(gain, gamma)
    v = np.asarray(stored, dtype=_F32) * _F32(1.0 / STORED_MAX)
    if gamma == 2.0:
        np.square(v, out=v)
    elif gamma != 1.0:
        np.power(v, _F32(gamma), out=v)
    v *= _F32(REFLECTANCE_SCALE_DN / gain)
    return v


def to_model(stored: np.ndarray) -> np.ndarray:
    """Stored unsigned values (uint16; uint8 also accepted) to float32 in [-1, 1]."""
    stored = np.asarray(stored)
    if stored.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"stored RGB must be uint16 (or uint8), got dtype {stored.dtype}")
    top = np.iinfo(stored.dtype).max
    x = stored.astype(_F32)
    x *= _F32(2.0 / top)
    x -= _F32(1.0)
    return x


def from_model(x: np.ndarray, dtype: type = np.uint16) -> np.ndarray:
    """Model-range values (clipped to [-1, 1]) to stored unsigned values, rounded.

    Args:
        x: float array, nominally in [-1, 1]; values outside are clipped, NaN is an error.
        dtype: np.uint16 (default) or np.uint8.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        raise TypeError(f"stored RGB dtype must be uint16 or uint8, got {dtype}")
    v = np.array(x, dtype=_F32)  # a copy: worked on in place below
    if np.isnan(v).any():
        raise ValueError("model output holds NaN; cannot store it as RGB")
    np.clip(v, -1.0, 1.0, out=v)
    v += _F32(1.0)
    v *= _F32(np.iinfo(dtype).max / 2.0)
    np.rint(v, out=v)
    return v.astype(dtype)


# --------------------------------------------------------------------------------------------
# DEM


def _check_scale(scale_m: float) -> None:
    if not (np.isfinite(scale_m) and scale_m > 0):
        raise ValueError(f"DEM scale S must be a positive number of metres, got {scale_m!r}")


def dem_cell_mean(dem_m: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean elevation (metres) over a cell's valid, finite pixels: the ``cell_mean_m`` to store.

    Raises:
        ValueError: no valid finite pixel.
    """
    dem = np.asarray(dem_m, dtype=np.float64)
    keep = np.isfinite(dem)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    if not keep.any():
        raise ValueError("DEM has no valid finite pixel; cannot take the cell mean (reject the cell)")
    return float(dem[keep].mean())


def normalise_dem(dem_m: np.ndarray, cell_mean_m: float, scale_m: float) -> np.ndarray:
    """Elevations (metres) to the VAE's range: clip((dem - cell_mean) / S, -1, 1), float32.

    No-data must be masked by the caller (a -32768 fill would simply clip to -1); NaN stays NaN.
    """
    _check_scale(scale_m)
    x = (np.asarray(dem_m, dtype=np.float64) - float(cell_mean_m)) / float(scale_m)
    return np.clip(x, -1.0, 1.0).astype(_F32)


def denormalise_dem(x: np.ndarray, cell_mean_m: float, scale_m: float) -> np.ndarray:
    """The inverse of ``normalise_dem``: x * S + cell_mean, metres, float32 (x clipped first)."""
    _check_scale(scale_m)
    v = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return (v * float(scale_m) + float(cell_mean_m)).astype(_F32)


def clipped_share(
    dem_m: np.ndarray, cell_mean_m: float, scale_m: float, valid: np.ndarray | None = None
) -> float:
    """Share (0..1) of the (valid) pixels that ``normalise_dem`` clips: |dem - mean| > S."""
    _check_scale(scale_m)
    dev = np.abs(np.asarray(dem_m, dtype=np.float64) - float(cell_mean_m))
    if valid is not None:
        dev = dev[np.asarray(valid, dtype=bool)]
    if dev.size == 0:
        return 0.0
    return float(np.count_nonzero(dev > float(scale_m)) / dev.size)


def max_deviation_m(dem_m: np.ndarray, cell_mean_m: float, valid: np.ndarray | None = None) -> float:
    """Largest |elevation - cell mean| over a cell's valid, finite pixels, metres.

    The per-cell statistic for ``choose_dem_scale``: a cell with max_deviation <= S is never
    clipped. It lies between half the cell's relief (max - min) / 2 and the full relief.
    """
    dev = np.abs(np.asarray(dem_m, dtype=np.float64) - float(cell_mean_m))
    keep = np.isfinite(dev)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    return float(dev[keep].max()) if keep.any() else 0.0


def choose_dem_scale(
    deviations_m: np.ndarray | Sequence[np.ndarray],
    quantile: float = 0.99,
    round_to: float = 100.0,
) -> float:
    """One global DEM scale S (metres): a high quantile of deviations, rounded up.

    Rule: S = ceil(quantile(|deviations|, q) / round_to) * round_to (at least round_to).
    What q bounds depends on what is passed:
        - per-cell statistics, one value per training cell (``max_deviation_m``, or the
          cheaper half-relief (max - min) / 2): at most a share 1 - q of the cells clip at all
          (exactly so for max_deviation_m; half-relief underestimates it, so a little more);
        - pooled per-pixel samples |dem - cell mean| (e.g. a strided subsample of every
          cell): at most a share 1 - q of all pixels clip.
    On real Copernicus DEM cells the 0.99 quantile of half-reliefs lands at about 1-2 km
    (high mountains reach 1-2.5 km within 10 km); rounding up keeps the bound and a
    readable number in params. Report ``clipped_share`` over the data with the chosen S.

    Args:
        deviations_m: array of any shape, or a sequence of arrays (ragged per-cell samples);
            the sign is ignored, non-finite values are skipped.
        quantile: q in (0, 1] (default 0.99).
        round_to: rounding step in metres, > 0 (default 100).

    Raises:
        ValueError: no finite value, or q / round_to out of range.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    if not (np.isfinite(round_to) and round_to > 0):
        raise ValueError(f"round_to must be a positive number of metres, got {round_to!r}")
    if isinstance(deviations_m, np.ndarray):
        values = np.abs(deviations_m.astype(np.float64, copy=False).ravel())
    else:
        parts = [np.abs(np.asarray(p, dtype=np.float64).ravel()) for p in deviations_m]
        values = np.concatenate(parts) if parts else np.empty(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("choose_dem_scale got no finite deviation; pass per-cell or per-pixel "
                         "deviations from the cell mean of the training cells")
    q = float(np.quantile(values, quantile))
    # The tiny slack keeps an exact multiple (1200.0000000001 from float noise) at 1200.
    return float(max(np.ceil(q / round_to - 1e-9), 1.0) * round_to)
