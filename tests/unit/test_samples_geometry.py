"""Sample geometry: image and DEM crops cover the same ground; a DEM feature lands where it is."""
from __future__ import annotations

import numpy as np
import pytest

from components.samples.geometry import (all_valid_downsample, area_downsample, crop_dem, crop_image,
                                         dem_to_image_grid, dem_valid_on_image_grid, footprint_offsets)


def test_the_footprint_is_whole_on_both_grids():
    assert footprint_offsets(768) == (150, 50)  # 1,500 m from the tile's edge on both grids
    with pytest.raises(ValueError, match="does not fall on the 30 m DEM grid"):
        footprint_offsets(764)


@pytest.mark.parametrize("out_px", [768, 64, 32])
def test_a_dem_feature_lands_at_the_same_ground_position_in_the_image_grid(out_px):
    # A spike on DEM pixel (120, 200) of the tile, and a bright 30 m square at the same ground
    # position in the 10 m image (rows 360..362, cols 600..602).
    dem = np.zeros((356, 356), np.float32)
    dem[120, 200] = 900.0
    image = np.zeros((1068, 1068), np.float32)
    image[360:363, 600:603] = 1.0
    image[361, 601] = 2.0  # the 30 m pixel's centre
    dem_grid = dem_to_image_grid(crop_dem(dem, 768), out_px)
    image_grid = area_downsample(crop_image(image, 768), out_px)
    assert dem_grid.shape == image_grid.shape == (out_px, out_px)
    assert np.unravel_index(dem_grid.argmax(), dem_grid.shape) == np.unravel_index(image_grid.argmax(), image_grid.shape)
    # The feature's centre of mass agrees to within a tenth of an output pixel.
    rows, cols = np.mgrid[0:out_px, 0:out_px]
    centre = lambda a: (float((rows * a).sum() / a.sum()), float((cols * a).sum() / a.sum()))  # noqa: E731
    assert np.allclose(centre(dem_grid), centre(image_grid), atol=0.1 * max(1, out_px / 256))


def test_area_downsample_preserves_the_mean_and_pooling_is_strict():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (768, 768, 3)).astype(np.float32)
    assert area_downsample(image, 64).mean() == pytest.approx(image.mean(), rel=1e-5)
    valid = np.ones((768, 768), bool)
    valid[5, 5] = False
    pooled = all_valid_downsample(valid, 64)
    assert not pooled[0, 0] and pooled.sum() == 64 * 64 - 1
    with pytest.raises(ValueError, match="cannot be area-averaged"):
        area_downsample(image, 100)


def test_dem_holes_invalidate_the_image_pixels_they_touch():
    valid = np.ones((256, 256), bool)
    valid[10, 10] = False
    coarse = dem_valid_on_image_grid(valid, 64)   # 4 DEM px per output px
    assert not coarse[2, 2] and coarse.sum() == 64 * 64 - 1
    fine = dem_valid_on_image_grid(valid, 768)    # bilinear reads the neighbours too
    assert not fine[30:33, 30:33].any()
    assert fine[:, 100:].all()
