"""Per-cell statistics: landform inputs recovered on DEMs of known slope and relief, masks honoured."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.curation.filters import DEFAULT_FILTERS, apply_filters
from components.captions.landform import landform_inputs
from components.curation.stats import dem_statistics, image_statistics, valid_fraction

PIXEL_M = 30.0
N = 356


def _plane(gradient: float) -> np.ndarray:
    x = np.arange(N) * PIXEL_M
    return np.tile(x * gradient, (N, 1)).astype(np.float32)


def _cone(height_m: float, radius_m: float) -> np.ndarray:
    y, x = (np.mgrid[0:N, 0:N] - (N - 1) / 2) * PIXEL_M
    return np.clip(height_m * (1 - np.hypot(x, y) / radius_m), 0, None).astype(np.float32)


@pytest.mark.parametrize("gradient", [0.02, 0.05, 0.12, 0.3])
def test_a_plane_of_known_gradient(gradient):
    stats = landform_inputs(_plane(gradient), PIXEL_M)
    assert stats["gentle_share"] == (1.0 if gradient < 0.08 else 0.0)
    expected_relief = 0.98 * (N - 1) * PIXEL_M * gradient  # p99 - p1 of a uniform ramp
    assert stats["relief_m"] == pytest.approx(expected_relief, rel=0.02)


def test_a_cone_of_known_height():
    height, radius = 800.0, 4000.0
    dem = _cone(height, radius)
    stats = landform_inputs(dem, PIXEL_M)
    # Flat plain around the cone: p1 = 0; p99 is the height at the radius enclosing the top 1 % of
    # the tile's area: r99 = sqrt(0.01 * A / pi), h = height * (1 - r99 / radius).
    area = (N * PIXEL_M) ** 2
    expected = height * (1 - np.sqrt(0.01 * area / np.pi) / radius)
    assert stats["relief_m"] == pytest.approx(expected, rel=0.02)
    # Slope of the flank is 0.2 (> 8 %): gentle land is the plain outside the cone, all in the lower half.
    plain_share = 1 - np.pi * radius**2 / (N * PIXEL_M) ** 2
    assert stats["gentle_share"] == pytest.approx(plain_share, rel=0.02)
    assert stats["profile_upper_share"] == 0.0


def test_a_plateau_puts_gentle_land_in_the_upper_half():
    dem = _cone(800.0, 8000.0)
    dem = np.minimum(dem, 600.0)  # a flat top over a steep-ish flank: tableland-like
    dem[dem < 1] = 0
    stats = landform_inputs(dem, PIXEL_M)
    assert stats["profile_upper_share"] > 0.3


def test_masked_pixels_change_nothing():
    dem = _plane(0.05)
    valid = np.ones_like(dem, dtype=bool)
    valid[:, :50] = False
    spoiled = dem.copy()
    spoiled[:, :50] = 9000.0  # garbage under the mask
    assert landform_inputs(spoiled, PIXEL_M, valid) == landform_inputs(dem, PIXEL_M, valid)
    stats = dem_statistics(np.where(valid, dem, -32768.0).astype(np.float32), -32768.0)
    assert stats["finite_fraction"] == pytest.approx(valid.mean())
    assert stats["min_m"] >= 0


def test_image_and_valid_fractions():
    rgb = [np.full((6, 6), 500, np.uint16) for _ in range(3)]
    for band in rgb:
        band[:, :2] = 0  # a third of the tile without data
    mask = np.zeros((6, 6), np.uint8)
    mask[0, 2:] = 1  # four cloudy data pixels (of 24)
    mask[:, 0] = 1   # cloud flags over no-data do not count
    image = image_statistics(rgb, mask, cloud_classes=[1, 2, 3])
    assert image["nodata_fraction"] == pytest.approx(1 / 3)
    assert image["cloud_fraction"] == pytest.approx(4 / 24)
    dem_valid = np.ones((2, 2), bool)
    dem_valid[1, 1] = False  # a 30 m DEM hole covers a 3 x 3 image block
    assert valid_fraction(image["invalid"], None) == pytest.approx(20 / 36)
    assert valid_fraction(image["invalid"], dem_valid) == pytest.approx((20 - 9) / 36)


def test_filters_name_their_rule_and_unknown_rules_are_refused():
    cells = pd.DataFrame({"grid_cell": ["a", "b", "c", "d"], "centre_lat": [10.0, -70.0, 5.0, 5.0],
                          "relief_m": [300.0, 50.0, 0.5, 40.0], "s2l2a_nodata_fraction": [0.0, 0.0, 0.0, 0.7],
                          "dem_finite_fraction": [1.0, 1.0, 1.0, 1.0], "valid_fraction": [0.9, 0.9, 0.9, 0.2],
                          "date_gap_days": [0.0, 0.0, 0.0, np.nan]})
    hits = apply_filters(cells, DEFAULT_FILTERS)
    assert sorted(map(tuple, hits.values)) == [("b", "antarctica"), ("c", "ocean_or_flat_water"),
                                               ("d", "too_little_valid_area"), ("d", "too_much_nodata")]
    assert apply_filters(cells, {"antarctica": None}).empty
    with pytest.raises(ValueError, match="unknown rules \\['glaciers'\\]"):
        apply_filters(cells, {"glaciers": {}})
