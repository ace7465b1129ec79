"""The one hillshade: each caller's sun, NaN holes, and the float32 shading the synthetic world relies on."""
from __future__ import annotations

import numpy as np
import pytest

from components.export.terrain import PREVIEW_SUN
from components.majortom.synthetic.world import THUMBNAIL_SUN
from components.radiometry.hillshade import Sun, gradients, hillshade, shade_from_gradients


def _dem(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.cumsum(np.cumsum(rng.normal(size=(size, size)), 0), 1) * 5.0).astype(np.float32)


def test_each_caller_names_its_own_sun():
    assert THUMBNAIL_SUN == Sun(150.0, 40.0) and PREVIEW_SUN == Sun(315.0, 45.0)
    dem = _dem()
    assert not np.array_equal(hillshade(dem, 30.0, THUMBNAIL_SUN), hillshade(dem, 30.0, PREVIEW_SUN))


def test_a_dem_without_holes_is_shaded_from_its_gradients_in_float32():
    dem = _dem(1)
    shade = hillshade(dem, 30.0, THUMBNAIL_SUN)
    assert shade.dtype == np.float32
    assert np.array_equal(shade, shade_from_gradients(*gradients(dem, 30.0), THUMBNAIL_SUN))
    assert np.array_equal(hillshade(dem.astype(np.float64), 30.0, THUMBNAIL_SUN), shade)


def test_holes_stay_nan_and_float32_and_float64_dems_shade_alike():
    dem = _dem(2)
    dem[10:14, 5:30] = np.nan
    shade = hillshade(dem, 10.0, PREVIEW_SUN)
    assert np.isnan(shade[10:14, 5:30]).all() and np.isfinite(np.delete(shade, range(10, 14), axis=0)).all()
    np.testing.assert_array_equal(hillshade(dem.astype(np.float64), 10.0, PREVIEW_SUN), shade)


@pytest.mark.parametrize("shape", [(1, 7), (7, 1)])
def test_a_single_row_or_column_is_lit_as_flat_ground(shape):
    shade = hillshade(np.full(shape, 250.0), 10.0, Sun(200.0, 30.0))
    np.testing.assert_allclose(shade, 0.5, rtol=1e-6)
