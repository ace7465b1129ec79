"""How a DEM enters the model and comes back: metres relative to the cell mean <-> model units.

- linear (``knee_m`` None): ``x = d / S``;
- companded (``knee_m`` k): ``x = asinh(d / k) / asinh(S / k)``.

``d`` is the elevation minus the cell mean, ``S`` the global scale (``dem_scale_m``). Both rules
are odd and monotone and reach +-1 at ``d = +-S`` (callers clip beyond). The companded rule is
linear for ``|d|`` well below ``k`` and logarithmic above it, so flat ground keeps more of the
model's range: near zero its slope is ``S / (k asinh(S / k))`` times the linear one (about 9x for
S = 2000 m, k = 50 m), where a 30 m plain would otherwise be a few hundredths of the range, below
what the VAE resolves. Pure functions on numpy arrays or torch tensors (same type out); torch is
not imported here, so the prepare stage stays free of it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["check_dem_encoding", "encode_dem", "decode_dem", "describe_dem_encoding"]

Array = Any  # a numpy array or a torch tensor


def _asinh(x: Array) -> Array:
    return x.asinh() if hasattr(x, "asinh") else np.arcsinh(x)  # torch tensors have the method


def _sinh(x: Array) -> Array:
    return x.sinh() if hasattr(x, "sinh") else np.sinh(x)


def check_dem_encoding(dem_scale_m: float, dem_knee_m: float | None) -> None:
    """ValueError unless S is a positive number of metres and the knee is None or positive."""
    if not (math.isfinite(float(dem_scale_m)) and float(dem_scale_m) > 0):
        raise ValueError(f"dem_scale_m must be a positive number of metres (stats.json), got {dem_scale_m!r}")
    if dem_knee_m is not None and not (math.isfinite(float(dem_knee_m)) and float(dem_knee_m) > 0):
        raise ValueError(f"dem_knee_m must be a positive number of metres or null (linear), got {dem_knee_m!r}")


def encode_dem(metres: Array, dem_scale_m: float, dem_knee_m: float | None = None) -> Array:
    """Model units from metres relative to the cell mean (not clipped)."""
    check_dem_encoding(dem_scale_m, dem_knee_m)
    if dem_knee_m is None:
        return metres / dem_scale_m
    return _asinh(metres / dem_knee_m) / math.asinh(dem_scale_m / dem_knee_m)


def decode_dem(model: Array, dem_scale_m: float, dem_knee_m: float | None = None) -> Array:
    """Metres relative to the cell mean from model units: the inverse of :func:`encode_dem`."""
    check_dem_encoding(dem_scale_m, dem_knee_m)
    if dem_knee_m is None:
        return model * dem_scale_m
    return dem_knee_m * _sinh(model * math.asinh(dem_scale_m / dem_knee_m))


def describe_dem_encoding(dem_knee_m: float | None) -> str:
    """The rule in words, for stats.json."""
    if dem_knee_m is None:
        return "model input = clip((elevation - cell mean) / dem_scale_m, -1, 1), on 3 channels"
    return ("model input = clip(asinh((elevation - cell mean) / dem_knee_m) / asinh(dem_scale_m / dem_knee_m), "
            "-1, 1), on 3 channels")
