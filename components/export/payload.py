"""Compact answers for the served model: the RGB as a PNG, the DEM in metres as a float32 ``.npy``.

A 768 px answer as nested JSON lists is about 2.4 M numbers (10 MB of text); as a PNG (lossless
for uint8) and the exact float32 array (``numpy.save`` bytes), both base64, it is a few MB and
decodes to the same values. The served model answers this way for a row with ``"format":
"compact"`` (docs/serving.md); :func:`decode_compact` is what a Python client needs.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ARRAYS", "COMPACT", "FORMATS", "compact_fields", "decode_compact"]

ARRAYS = "arrays"
COMPACT = "compact"
FORMATS = (ARRAYS, COMPACT)


def compact_fields(rgb: np.ndarray, dem_m: np.ndarray) -> dict[str, Any]:
    """``rgb_png`` (base64 PNG of the uint8 (H, W, 3) image), ``dem_npy`` (base64 ``.npy`` of the
    float32 (H, W) DEM in metres), ``height`` and ``width``."""
    from PIL import Image

    rgb, dem_m = np.asarray(rgb), np.asarray(dem_m, dtype=np.float32)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or dem_m.shape != rgb.shape[:2]:
        raise ValueError(f"compact_fields needs uint8 (H, W, 3) RGB and an (H, W) DEM, got {rgb.dtype} "
                         f"{rgb.shape} and {dem_m.shape}")
    png, npy = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    np.save(npy, dem_m, allow_pickle=False)
    return {"rgb_png": base64.b64encode(png.getvalue()).decode("ascii"),
            "dem_npy": base64.b64encode(npy.getvalue()).decode("ascii"),
            "height": int(rgb.shape[0]), "width": int(rgb.shape[1])}


def decode_compact(answer: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), dem_m float32 (H, W)) from a compact answer.

    Raises:
        ValueError: the answer lacks ``rgb_png`` / ``dem_npy`` (ask with ``"format": "compact"``).
    """
    from PIL import Image

    missing = [key for key in ("rgb_png", "dem_npy") if key not in answer]
    if missing:
        raise ValueError(f"not a compact answer: no {', '.join(missing)} (request it with \"format\": \"compact\")")
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["rgb_png"]))).convert("RGB"))
    dem = np.load(io.BytesIO(base64.b64decode(answer["dem_npy"])), allow_pickle=False)
    return rgb, dem
