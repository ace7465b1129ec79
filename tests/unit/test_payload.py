"""Compact served answers (components/export/payload.py): PNG and .npy, base64, decode to the same arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.export.payload import compact_fields, decode_compact


def test_a_compact_answer_decodes_to_the_exact_arrays_and_is_smaller_than_json_lists():
    rng = np.random.default_rng(0)
    side = 128
    # a smooth terrain-like field and an image with texture, as a generation gives
    ramp = np.add.outer(np.linspace(0, 1, side), np.linspace(0, 1, side))
    rgb = np.clip(ramp[..., None] * 120 + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
    dem = (ramp * 850.0 + rng.normal(0, 3, (side, side)) - 40.0).astype(np.float32)
    fields = compact_fields(rgb, dem)
    assert (fields["height"], fields["width"]) == (side, side)
    back_rgb, back_dem = decode_compact(json.loads(json.dumps(fields)))  # through JSON, as served
    assert back_rgb.dtype == np.uint8 and back_dem.dtype == np.float32
    np.testing.assert_array_equal(back_rgb, rgb)
    np.testing.assert_array_equal(back_dem, dem)
    as_lists = json.dumps({"rgb": rgb.tolist(), "dem_m": dem.astype(float).tolist()})
    assert len(json.dumps(fields)) < 0.6 * len(as_lists)


def test_compact_fields_and_decoding_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) RGB and an \(H, W\) DEM"):
        compact_fields(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) RGB and an \(H, W\) DEM"):
        compact_fields(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="no rgb_png, dem_npy .*\"format\": \"compact\""):
        decode_compact({"rgb": [[[0, 0, 0]]], "dem_m": [[0.0]]})
