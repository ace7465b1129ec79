"""Synthetic Major TOM rasters: landform classes by construction, L2A vs L1C shading, clouds.

Run with -s to see the confusion counts, correlations and timings.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from components.majortom.synthetic import render
from components.majortom.synthetic.render import CLEAR, SHADOW, THICK, THIN, render_cell
from components.majortom.synthetic.terrain import (
    LANDFORM_CLASSES,
    classify_landform,
    landform_stats,
    synth_dem,
    upsample_dem,
)
from components.radiometry.hillshade import Sun, hillshade

SEEDS = range(8)
SMALL = 267  # render tests: an 89 px DEM at 30 m upsampled to 10 m


def _small_dem(landform: str, seed: int, base: float = 200.0) -> np.ndarray:
    return upsample_dem(synth_dem(landform, np.random.default_rng(seed), 89, 30.0, base))


def _refl(dn: np.ndarray) -> np.ndarray:
    return dn.astype(np.float32) / 10_000.0


def _luminance(bands: dict[str, np.ndarray]) -> np.ndarray:
    return 0.2126 * _refl(bands["B04"]) + 0.7152 * _refl(bands["B03"]) + 0.0722 * _refl(bands["B02"])


# --------------------------------------------------------------------------------------------
# terrain


@pytest.mark.parametrize("size, pixel_m", [(356, 30.0), (48, 222.5)])
def test_landform_class_recovered(size, pixel_m):
    confusion = {truth: {} for truth in LANDFORM_CLASSES}
    for truth in LANDFORM_CLASSES:
        for seed in SEEDS:
            dem = synth_dem(truth, np.random.default_rng(seed), size, pixel_m)
            got = classify_landform(landform_stats(dem, pixel_m))
            confusion[truth][got] = confusion[truth].get(got, 0) + 1
    print(f"\nconfusion at {size} px / {pixel_m} m:", confusion)
    for truth, row in confusion.items():
        assert row.get(truth, 0) >= 7, (truth, row)


def test_dem_shape_dtype_base_and_determinism():
    a = synth_dem("hills", np.random.default_rng(3))
    b = synth_dem("hills", np.random.default_rng(3))
    c = synth_dem("hills", np.random.default_rng(4))
    assert a.shape == (356, 356) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all()
    assert abs(np.percentile(a, 1) - 200.0) < 1.0  # base_elevation_m is the low ground
    d = synth_dem("plains", np.random.default_rng(0), 64, 10_680 / 64, base_elevation_m=1500.0)
    assert d.shape == (64, 64) and abs(np.percentile(d, 1) - 1500.0) < 1.0
    with pytest.raises(ValueError):
        synth_dem("volcano", np.random.default_rng(0))


def test_relief_within_class_varies():
    reliefs = [landform_stats(synth_dem("low mountains", np.random.default_rng(s)), 30.0)["relief_m"] for s in SEEDS]
    assert all(300 < r < 900 for r in reliefs)
    assert np.ptp(reliefs) > 100  # tiles differ, not one template


def test_landform_stats_on_known_surfaces():
    flat = np.full((50, 50), 100.0, np.float32)
    s = landform_stats(flat, 30.0)
    assert s["gentle_share"] == 1.0 and s["relief_m"] == 0.0
    # A 20 % ramp: nothing gentle; each column holds 2 % of the pixels, so p1..p99 spans it all.
    ramp = np.tile(np.arange(50, dtype=np.float32) * 6.0, (50, 1))
    s = landform_stats(ramp, 30.0)
    assert s["gentle_share"] == 0.0
    assert s["relief_m"] == pytest.approx(49 * 6.0)


def test_hillshade():
    flat = np.zeros((20, 20), np.float32)
    hs = hillshade(flat, 30.0, Sun(azimuth_deg=150.0, altitude_deg=40.0))
    assert hs.dtype == np.float32
    assert np.allclose(hs, np.sin(np.deg2rad(40.0)), atol=1e-6)
    rows = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 20), np.float32)
    # Elevation rising northwards (row 0 is north) = a south-facing slope: lit by a southern sun.
    south_facing = (19 - rows) * 10.0
    north_facing = rows * 10.0
    lit = hillshade(south_facing, 30.0, Sun(180.0, 40.0))
    dark = hillshade(north_facing, 30.0, Sun(180.0, 40.0))
    assert lit.mean() > hs.mean() > dark.mean()
    steep = hillshade(north_facing * 20.0, 30.0, Sun(180.0, 40.0))
    assert steep.min() >= 0.0 and steep.max() <= 1.0 and steep.min() == 0.0


def test_upsample_dem_alignment():
    dem = synth_dem("hills", np.random.default_rng(0))
    up = upsample_dem(dem)
    assert up.shape == (1068, 1068) and up.dtype == np.float32
    # The centre 10 m pixel of each 3 x 3 block sits on the 30 m pixel centre.
    assert np.allclose(up[1::3, 1::3], dem, atol=1e-3)
    # Bilinear: a plane stays a plane; fine index j sits at coarse coordinate (j - 1) / 3.
    y, x = np.mgrid[0:10, 0:10].astype(np.float32)
    plane = 3.0 * x - 2.0 * y
    fine = upsample_dem(plane)
    jy, jx = np.mgrid[1:29, 1:29].astype(np.float32)
    assert np.allclose(fine[1:29, 1:29], 3.0 * (jx - 1) / 3 - 2.0 * (jy - 1) / 3, atol=1e-4)


# --------------------------------------------------------------------------------------------
# render


def test_render_outputs_dtype_shape_range():
    dem = _small_dem("low mountains", 0)
    cell = render_cell(dem, 10.0, 4, 7, 46.0, np.random.default_rng(0), cloud_cover=0.3, nodata_border=True)
    for product in (cell.l2a, cell.l1c):
        assert set(product) == {"B02", "B03", "B04"}
        for band in product.values():
            assert band.shape == dem.shape and band.dtype == np.uint16
            assert band[~cell.nodata].min() >= 1  # 0 is reserved for no data
            assert band.max() <= 65_535 - 1_000  # the caller adds L2A's +1000 offset
            assert np.all(band[cell.nodata] == 0)
    assert cell.cloud_mask.dtype == np.uint8 and cell.cloud_mask.shape == dem.shape
    assert set(np.unique(cell.cloud_mask)) <= {CLEAR, THICK, THIN, SHADOW}
    assert cell.nodata.dtype == bool
    assert 0.0 <= cell.cloud_cover_pct <= 100.0 and 0.0 <= cell.nodata_fraction <= 1.0
    veg = _refl(cell.l2a["B04"])[(cell.cloud_mask == CLEAR) & ~cell.nodata]
    assert 0.01 < np.median(veg) < 0.15  # summer temperate vegetation in red


def test_render_determinism():
    dem = _small_dem("hills", 1)
    a = render_cell(dem, 10.0, 8, 6, 45.0, np.random.default_rng(5), 0.2, True)
    b = render_cell(dem, 10.0, 8, 6, 45.0, np.random.default_rng(5), 0.2, True)
    c = render_cell(dem, 10.0, 8, 6, 45.0, np.random.default_rng(6), 0.2, True)
    for band in render.BANDS:
        assert np.array_equal(a.l2a[band], b.l2a[band]) and np.array_equal(a.l1c[band], b.l1c[band])
        assert not np.array_equal(a.l2a[band], c.l2a[band])
    assert np.array_equal(a.cloud_mask, b.cloud_mask) and np.array_equal(a.nodata, b.nodata)
    assert a.cloud_cover_pct == b.cloud_cover_pct


def test_l1c_keeps_terrain_shading_l2a_flattens_it():
    """The point of the synthetic world: L1C luminance follows the hillshade, L2A's hardly."""
    cases = [
        ("low mountains", 4, 7, 46.0),  # temperate broadleaf, summer
        ("high mountains", 12, 8, 40.0),  # Mediterranean, dry summer
        ("low mountains", 4, 10, 46.0),  # autumn, lower sun
    ]
    for seed, (landform, biome, month, lat) in enumerate(cases):
        dem = upsample_dem(synth_dem(landform, np.random.default_rng(seed)))
        cell = render_cell(dem, 10.0, biome, month, lat, np.random.default_rng(seed))
        hs = hillshade(dem, 10.0, render.sun_position(lat, month))
        ok = (cell.cloud_mask == CLEAR) & ~cell.nodata
        r_l1c = np.corrcoef(_luminance(cell.l1c)[ok], hs[ok])[0, 1]
        r_l2a = np.corrcoef(_luminance(cell.l2a)[ok], hs[ok])[0, 1]
        print(f"\n{landform}, biome {biome}, month {month}, lat {lat}: r_l1c={r_l1c:.2f} r_l2a={r_l2a:.2f}")
        assert r_l1c > 0.5
        assert r_l1c - r_l2a > 0.3


def test_l1c_is_hazier_and_bluer():
    dem = _small_dem("plains", 2)
    cell = render_cell(dem, 10.0, 4, 7, 46.0, np.random.default_rng(2))
    l1c_ratio = _refl(cell.l1c["B02"]).mean() / _refl(cell.l1c["B04"]).mean()
    l2a_ratio = _refl(cell.l2a["B02"]).mean() / _refl(cell.l2a["B04"]).mean()
    assert l1c_ratio > 1.3 * l2a_ratio
    # Path radiance lifts the dark end: lower contrast at the top of the atmosphere.
    l1c, l2a = _luminance(cell.l1c), _luminance(cell.l2a)
    assert l1c.std() / l1c.mean() < l2a.std() / l2a.mean()


@pytest.mark.parametrize("target", [0.05, 0.3, 0.7])
@pytest.mark.parametrize("nodata_border", [False, True])
def test_cloud_cover_hits_target(target, nodata_border):
    dem = _small_dem("hills", 3)
    cell = render_cell(dem, 10.0, 1, 3, 5.0, np.random.default_rng(7), target, nodata_border)
    valid = ~cell.nodata
    cloudy = np.isin(cell.cloud_mask, (THICK, THIN)) & valid
    measured = 100.0 * cloudy.sum() / valid.sum()
    assert cell.cloud_cover_pct == pytest.approx(measured)
    assert abs(measured - 100.0 * target) < 3.0
    assert (cell.cloud_mask == THICK).any() and (cell.cloud_mask == THIN).any()
    assert np.all(cell.cloud_mask[cell.nodata] == CLEAR)


def test_clouds_brighten_shadows_darken_both_products():
    dem = _small_dem("hills", 4)
    cell = render_cell(dem, 10.0, 1, 3, 5.0, np.random.default_rng(1), 0.3)
    assert (cell.cloud_mask == SHADOW).any()
    for product in (cell.l2a, cell.l1c):
        lum = _luminance(product)
        clear = lum[cell.cloud_mask == CLEAR].mean()
        assert lum[cell.cloud_mask == THICK].mean() > 0.4 > clear
        assert clear < lum[cell.cloud_mask == THIN].mean() < lum[cell.cloud_mask == THICK].mean()
        assert lum[cell.cloud_mask == SHADOW].mean() < clear
    none = render_cell(dem, 10.0, 1, 3, 5.0, np.random.default_rng(1), 0.0)
    assert cell.cloud_cover_pct > 0 and none.cloud_cover_pct == 0.0 and not none.cloud_mask.any()


def test_nodata_border():
    dem = _small_dem("plains", 5)
    fractions = []
    for seed in range(10):
        cell = render_cell(dem, 10.0, 8, 5, 45.0, np.random.default_rng(seed), nodata_border=True)
        fractions.append(cell.nodata_fraction)
        assert cell.nodata_fraction == pytest.approx(cell.nodata.mean())
        for product in (cell.l2a, cell.l1c):
            for band in product.values():
                assert np.all(band[cell.nodata] == 0) and np.all(band[~cell.nodata] > 0)
        # One edge: the no-data region touches the tile border.
        border = np.concatenate([cell.nodata[0], cell.nodata[-1], cell.nodata[:, 0], cell.nodata[:, -1]])
        assert border.any()
    assert all(0.08 <= f <= 0.42 for f in fractions), fractions
    clean = render_cell(dem, 10.0, 8, 5, 45.0, np.random.default_rng(0))
    assert clean.nodata_fraction == 0.0 and not clean.nodata.any()


def test_snow_in_winter_at_altitude_not_in_summer():
    """Temperate mountain cell (1200-2000 m, 46 N): snow-covered in January, not in July."""
    dem = _small_dem("low mountains", 6, base=1200.0)
    high = dem > np.percentile(dem, 90)
    winter = render_cell(dem, 10.0, 4, 1, 46.0, np.random.default_rng(0))
    summer = render_cell(dem, 10.0, 4, 7, 46.0, np.random.default_rng(0))
    assert _refl(winter.l2a["B03"])[high].mean() > 0.5
    assert _refl(summer.l2a["B03"])[high].mean() < 0.15
    # Southern hemisphere: the seasons flip.
    austral = render_cell(dem, 10.0, 4, 7, -46.0, np.random.default_rng(0))
    assert _refl(austral.l2a["B03"])[high].mean() > 0.5
    # Lower ground (500-1150 m) in January: the ~800 m snowline leaves the valleys green.
    low_dem = _small_dem("low mountains", 6, base=500.0)
    cell = render_cell(low_dem, 10.0, 4, 1, 46.0, np.random.default_rng(0))
    b03 = _refl(cell.l2a["B03"])
    assert b03[low_dem > np.percentile(low_dem, 95)].mean() > b03[low_dem < np.percentile(low_dem, 20)].mean() + 0.1


def test_desert_brighter_than_moist_forest():
    dem = _small_dem("plains", 7)
    desert = render_cell(dem, 10.0, 13, 6, 20.0, np.random.default_rng(0))
    forest = render_cell(dem, 10.0, 1, 6, 20.0, np.random.default_rng(0))
    assert _luminance(desert.l2a).mean() > 3.0 * _luminance(forest.l2a).mean()
    assert _refl(desert.l2a["B04"]).mean() > _refl(desert.l2a["B02"]).mean()  # sandy, not grey
    assert _refl(forest.l2a["B03"]).mean() > _refl(forest.l2a["B04"]).mean()  # green


def test_every_biome_renders():
    dem = _small_dem("hills", 8)
    means = {}
    for biome in list(range(1, 15)) + [None]:
        cell = render_cell(dem, 10.0, biome, 4, 30.0, np.random.default_rng(0))
        means[biome] = _luminance(cell.l2a).mean()
        assert 0.01 < means[biome] < 0.95
    assert means[None] > means[1]  # rock and ice brighter than rain forest
    with pytest.raises(ValueError):
        render_cell(dem, 10.0, 15, 4, 30.0, np.random.default_rng(0))


def test_season_flips_with_hemisphere():
    pal = render.PALETTES[4]
    assert render.greenness(pal, 7, 45.0) == pytest.approx(render.greenness(pal, 1, -45.0))
    assert render.greenness(pal, 7, 45.0) > render.greenness(pal, 1, 45.0)
    assert render.greenness(render.PALETTES[13], 7, 30.0) < 0.1  # deserts stay dry
    assert render.snowline_m(46.0, 1) < render.snowline_m(46.0, 7)
    assert render.snowline_m(0.0, 7) > render.snowline_m(60.0, 7)


def test_full_size_cell_timing():
    dem30 = synth_dem("high mountains", np.random.default_rng(0))
    t0 = time.perf_counter()
    synth_dem("high mountains", np.random.default_rng(1))
    t_dem = time.perf_counter() - t0
    dem = upsample_dem(dem30)
    render_cell(dem, 10.0, 5, 7, 46.0, np.random.default_rng(0), 0.2, True)  # warm caches
    t0 = time.perf_counter()
    cell = render_cell(dem, 10.0, 5, 7, 46.0, np.random.default_rng(1), 0.2, True)
    t_render = time.perf_counter() - t0
    print(f"\nDEM 356 px: {t_dem * 1000:.0f} ms; render 1068 px (clouds + no-data): {t_render * 1000:.0f} ms")
    assert cell.l2a["B04"].shape == (1068, 1068)
    assert t_render < 1.5  # budget ~0.15 s; generous for shared CI machines
