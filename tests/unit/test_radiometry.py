"""Radiometry: baseline offset, masked histogram matching (against scikit-image), the RGB and
DEM normalisation round trips, and a data-level check that shadow correction keeps relief."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.exposure import match_histograms

from components.majortom.synthetic.render import render_cell, sun_position
from components.majortom.synthetic.terrain import synth_dem, upsample_dem
from components.radiometry.hillshade import hillshade
from components.radiometry.normalise import (
    DEFAULT_RGB_RULE,
    choose_dem_scale,
    clipped_share,
    decode_rgb,
    dem_cell_mean,
    denormalise_dem,
    encode_rgb,
    from_model,
    max_deviation_m,
    normalise_dem,
    to_model,
)
from components.radiometry.shadow import (
    AllMaskedError,
    match_histograms_masked,
    processing_baseline,
    remove_baseline_offset,
    shadow_correct,
)

L2A_NEW = "S2A_MSIL2A_20220815T101031_N0400_R022_T32TMT_20220815T130000"
L1C_NEW = "S2A_MSIL1C_20220815T101031_N0500_R022_T32TMT_20220815T130000"
L2A_OLD = "S2B_MSIL2A_20210715T101029_N0214_R022_T32TMT_20210715T130000"
RGB = ("B04", "B03", "B02")


def realistic_pair(rng, shape=(3, 96, 112)):
    """L1C-like and L2A-like uint16 DN: skewed per-band distributions, many tied values."""
    bands, h, w = shape
    src = np.stack([rng.gamma(2.0 + b, 180.0 + 60 * b, (h, w)) + 300 + 150 * b for b in range(bands)])
    ref = np.stack([rng.lognormal(6.3 + 0.2 * b, 0.6, (h, w)) + 40 for b in range(bands)])
    return (np.clip(src, 1, 60000).astype(np.uint16), np.clip(ref, 1, 60000).astype(np.uint16))


def skimage_float(src, ref):
    """scikit-image's per-band result as float64 (its single-channel path does not truncate)."""
    return np.stack([match_histograms(s, r) for s, r in zip(src, ref)])


def rendered_cell(seed, landform="high mountains", lat=46.0, month=8, biome=4, size=178, pixel_m=60.0):
    """A synthetic cell at 1/2 resolution (534 px at 20 m; same 10.68 km footprint), fast."""
    rng = np.random.default_rng(seed)
    dem = upsample_dem(synth_dem(landform, rng, size=size, pixel_m=pixel_m, base_elevation_m=600.0), 3)
    fine_m = pixel_m / 3.0
    cell = render_cell(dem, fine_m, biome, month, lat, rng)
    l1c = np.stack([cell.l1c[b] for b in RGB])
    l2a = np.stack([cell.l2a[b] for b in RGB])
    return dem, fine_m, l1c, l2a


# --------------------------------------------------------------------------------------------
# the +1000 offset of processing baseline 04.00 and later


def test_offset_removed_for_baseline_0400_and_later_only():
    dn = np.array([[0, 1, 999, 1000, 1001, 1500], [4000, 65535, 0, 2000, 1234, 1000]], np.uint16)
    for pid in (L2A_NEW, L1C_NEW):
        out = remove_baseline_offset(dn, pid)
        assert out.dtype == np.uint16 and out.shape == dn.shape
        # valid pixels lose 1000 and clip at 1; no-data stays 0
        expected = np.array([[0, 1, 1, 1, 1, 500], [3000, 64535, 0, 1000, 234, 1]], np.uint16)
        np.testing.assert_array_equal(out, expected)
    old = remove_baseline_offset(dn, L2A_OLD)
    np.testing.assert_array_equal(old, dn)
    assert old is not dn
    assert dn[0, 4] == 1001  # input untouched


def test_baseline_parsing_and_missing_baseline_error():
    assert processing_baseline(L2A_NEW) == 400
    assert processing_baseline(L2A_OLD) == 214
    safe = "S2A_MSIL1C_20230101T000000_N0509_R001_T01ABC_20230101T000000.SAFE"
    assert processing_baseline(safe) == 509
    with pytest.raises(ValueError, match="S2A_MSIL2A_20220815T101031_R022"):
        remove_baseline_offset(np.ones(3, np.uint16), "S2A_MSIL2A_20220815T101031_R022")
    with pytest.raises(TypeError):
        remove_baseline_offset(np.ones(3, np.float32), L2A_NEW)


# --------------------------------------------------------------------------------------------
# masked histogram matching against the oracle


def test_matches_skimage_on_realistic_data_all_valid():
    src, ref = realistic_pair(np.random.default_rng(1))
    ones = np.ones(src.shape[1:], bool)
    ours = match_histograms_masked(src, ref, ones, ones)
    assert ours.dtype == np.uint16 and ours.shape == src.shape
    # rounding of the same interpolation: within half a DN of scikit-image's float result
    assert np.abs(ours - skimage_float(src, ref)).max() <= 0.5
    # and within 1 DN of its multichannel output (which truncates into the input dtype)
    oracle = match_histograms(src, ref, channel_axis=0)
    assert np.abs(ours.astype(np.int32) - oracle.astype(np.int32)).max() <= 1


def test_matches_skimage_on_shaded_terrain():
    _, _, l1c, l2a = rendered_cell(3)
    ones = np.ones(l1c.shape[1:], bool)
    ours = match_histograms_masked(l1c, l2a, ones, ones)
    assert np.abs(ours - skimage_float(l1c, l2a)).max() <= 0.5
    # per band the output takes the reference's distribution: quantiles agree within a DN or two
    qs = [0.01, 0.1, 0.5, 0.9, 0.99]
    for b in range(3):
        assert np.abs(np.quantile(ours[b], qs) - np.quantile(l2a[b], qs)).max() <= 2


def test_single_band_2d_and_different_reference_size():
    rng = np.random.default_rng(2)
    src, _ = realistic_pair(rng, (1, 50, 60))
    _, ref = realistic_pair(rng, (1, 70, 40))
    out = match_histograms_masked(src[0], ref[0], np.ones((50, 60), bool), np.ones((70, 40), bool))
    assert out.shape == (50, 60) and out.dtype == np.uint16
    assert np.abs(out - match_histograms(src[0], ref[0])).max() <= 0.5


def test_masked_pixels_change_no_mapping():
    rng = np.random.default_rng(3)
    src, ref = realistic_pair(rng)
    sv = rng.random(src.shape[1:]) > 0.25
    rv = rng.random(ref.shape[1:]) > 0.2
    first = match_histograms_masked(src, ref, sv, rv)

    src2, ref2 = src.copy(), ref.copy()
    src2[:, ~sv] = rng.integers(0, 65536, (3, int((~sv).sum())))
    ref2[:, ~rv] = rng.integers(0, 65536, (3, int((~rv).sum())))
    second = match_histograms_masked(src2, ref2, sv, rv)
    np.testing.assert_array_equal(first[:, sv], second[:, sv])

    # the valid pixels get exactly the mapping of the valid subsets alone (the oracle again)
    for b in range(3):
        alone = match_histograms(src[b][sv], ref[b][rv])
        assert np.abs(first[b][sv] - alone).max() <= 0.5


def test_per_band_masks_and_masked_values_mapped_monotonically():
    rng = np.random.default_rng(4)
    src, ref = realistic_pair(rng)
    sv = rng.random(src.shape) > 0.3  # (bands, H, W)
    rv = np.ones(ref.shape[1:], bool)
    out = match_histograms_masked(src, ref, sv, rv)
    for b in range(3):
        assert np.abs(out[b][sv[b]] - match_histograms(src[b][sv[b]], ref[b].ravel())).max() <= 0.5
        # every pixel (masked too) goes through one monotone table
        order = np.argsort(src[b].ravel(), kind="stable")
        assert np.all(np.diff(out[b].ravel()[order].astype(np.int64)) >= 0)


def test_nodata_zero_stays_zero():
    rng = np.random.default_rng(5)
    src, ref = realistic_pair(rng)
    valid = np.ones(src.shape[1:], bool)
    valid[:, :20] = False
    src[:, :, :20] = 0
    out = match_histograms_masked(src, ref, valid, np.ones(ref.shape[1:], bool))
    assert (out[:, :, :20] == 0).all()
    assert out[:, :, 20:].min() >= ref.min()


def test_constant_bands():
    rng = np.random.default_rng(6)
    src, ref = realistic_pair(rng)
    ones = np.ones(src.shape[1:], bool)
    src[1] = 1234
    out = match_histograms_masked(src, ref, ones, ones)
    # a constant source band maps to the reference median (not the reference maximum)
    assert np.unique(out[1]).tolist() == [int(np.rint(np.interp(0.5, *_ref_cdf(ref[1]))))]
    assert abs(int(out[1, 0, 0]) - np.median(ref[1])) <= 1
    ref[2] = 777
    out = match_histograms_masked(src, ref, ones, ones)
    assert (out[2] == 777).all()


def _ref_cdf(band):
    counts = np.bincount(band.ravel())
    values = np.flatnonzero(counts)
    return np.cumsum(counts[values]) / band.size, values


def test_all_masked_cell_is_rejected_with_reason():
    src, ref = realistic_pair(np.random.default_rng(7))
    ones = np.ones(src.shape[1:], bool)
    with pytest.raises(AllMaskedError, match="all-masked"):
        match_histograms_masked(src, ref, np.zeros_like(ones), ones)
    with pytest.raises(ValueError, match="reference"):
        match_histograms_masked(src, ref, ones, np.zeros_like(ones))
    per_band = np.ones(src.shape, bool)
    per_band[2] = False
    with pytest.raises(AllMaskedError, match="band 2"):
        match_histograms_masked(src, ref, per_band, ones)


def test_shape_and_dtype_errors():
    src, ref = realistic_pair(np.random.default_rng(8))
    ones = np.ones(src.shape[1:], bool)
    with pytest.raises(ValueError, match="number of bands"):
        match_histograms_masked(src, ref[:2], ones, ones)
    with pytest.raises(ValueError, match="source_valid"):
        match_histograms_masked(src, ref, ones[:-1], ones)
    with pytest.raises(TypeError, match="uint16"):
        match_histograms_masked(src.astype(np.float32), ref, ones, ones)
    with pytest.raises(TypeError, match="bool"):
        match_histograms_masked(src, ref, ones.astype(np.uint8), ones)


def test_shadow_correct_applies_the_offset_rule_before_matching():
    src, ref = realistic_pair(np.random.default_rng(9))
    ones = np.ones(src.shape[1:], bool)
    plain = shadow_correct(src, ref, ones, ones)
    shifted = shadow_correct(src + np.uint16(1000), ref + np.uint16(1000), ones, ones,
                             l1c_product_id=L1C_NEW, l2a_product_id=L2A_NEW)
    np.testing.assert_array_equal(plain, shifted)


# --------------------------------------------------------------------------------------------
# data level: shadow correction keeps the relief shading


def test_shadow_corrected_luminance_follows_the_hillshade():
    """L1C matched to L2A correlates with the DEM hillshade clearly more than plain L2A."""
    def luminance(rgb):
        return 0.2126 * rgb[0].astype(np.float64) + 0.7152 * rgb[1] + 0.0722 * rgb[2]

    cases = [(0, "high mountains", 46.0, 8, 4), (1, "low mountains", 46.0, 1, 4),
             (2, "hills", -38.0, 3, 4)]
    for seed, landform, lat, month, biome in cases:
        dem, pixel_m, l1c, l2a = rendered_cell(seed, landform, lat, month, biome)
        ones = np.ones(dem.shape, bool)
        corrected = shadow_correct(l1c, l2a, ones, ones)
        shade = hillshade(dem, pixel_m, sun_position(lat, month)).ravel()
        r_corrected = np.corrcoef(luminance(corrected).ravel(), shade)[0, 1]
        r_l2a = np.corrcoef(luminance(l2a).ravel(), shade)[0, 1]
        assert r_corrected > 0.3, (landform, r_corrected)
        assert r_corrected > r_l2a + 0.25, (landform, r_corrected, r_l2a)


# --------------------------------------------------------------------------------------------
# RGB rule


def test_rgb_round_trip_within_quantisation():
    dn = np.arange(0, 4001, dtype=np.uint16)  # reflectance 0 .. 0.4: the unclipped range
    stored = encode_rgb(dn, **DEFAULT_RGB_RULE)
    assert stored.dtype == np.uint16
    back = decode_rgb(stored, **DEFAULT_RGB_RULE)
    assert back.dtype == np.float32
    # Tolerance: half a stored step at full scale, gamma / gain / 65535 / 2 in reflectance
    # (0.061 DN with the defaults), plus float32 slack.
    assert np.abs(back - dn).max() <= 0.07
    np.testing.assert_array_equal(np.rint(back).astype(np.uint16), dn)
    # other rules obey the same bound
    for gain, gamma in ((1.0, 2.2), (4.0, 1.0)):
        top = int(10_000 / gain)
        dn = np.arange(0, top + 1, dtype=np.uint16)
        back = decode_rgb(encode_rgb(dn, gain, gamma), gain, gamma)
        bound = 0.5 * max(gamma, 1.0) / gain / 65535 * 10_000 + 1e-3
        assert np.abs(back - dn).max() <= bound


def test_rgb_spread_and_clipping():
    stored = encode_rgb(np.array([0, 200, 1000, 4000, 4001, 9000, 20000]))
    assert stored[0] == 0 and stored[3] == 65535
    assert (stored[4:] == 65535).all()  # reflectance >= 1 / gain saturates
    assert 0.2 * 65535 < stored[1] < 0.25 * 65535  # 0.02 reflectance still ~22 % up the range
    np.testing.assert_allclose(decode_rgb(stored[4:]), 4000.0)
    assert encode_rgb(np.array([-50.0]))[0] == 0


def test_model_range_round_trip():
    stored = np.arange(65536, dtype=np.uint16)
    x = to_model(stored)
    assert x.dtype == np.float32 and x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(from_model(x), stored)
    np.testing.assert_array_equal(from_model(np.array([-3.0, 0.0, 7.0])), [0, 32768, 65535])
    small = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(from_model(to_model(small), np.uint8), small)
    with pytest.raises(ValueError, match="NaN"):
        from_model(np.array([np.nan]))
    with pytest.raises(TypeError):
        to_model(np.zeros(3, np.int32))


# --------------------------------------------------------------------------------------------
# DEM rule


def test_dem_round_trip_under_one_metre():
    dem = synth_dem("high mountains", np.random.default_rng(10), size=178, pixel_m=60.0,
                    base_elevation_m=1500.0)
    mean = dem_cell_mean(dem)
    scale = choose_dem_scale([max_deviation_m(dem, mean)], quantile=1.0)
    assert clipped_share(dem, mean, scale) == 0.0
    x = normalise_dem(dem, mean, scale)
    assert x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    back = denormalise_dem(x, mean, scale)
    rmse = float(np.sqrt(np.mean((back.astype(np.float64) - dem) ** 2)))
    assert rmse < 1.0
    assert np.abs(back - dem).max() < 0.05  # float32 leaves centimetres at most


def test_dem_clipping():
    dem = np.array([[0.0, 500.0, 1000.0, 2500.0], [-1200.0, 100.0, 900.0, 1000.0]])
    x = normalise_dem(dem, 500.0, 1000.0)
    np.testing.assert_allclose(x, [[-0.5, 0.0, 0.5, 1.0], [-1.0, -0.4, 0.4, 0.5]])
    np.testing.assert_allclose(denormalise_dem(x, 500.0, 1000.0)[0, 3], 1500.0)  # clipped
    assert clipped_share(dem, 500.0, 1000.0) == pytest.approx(2 / 8)
    valid = np.ones_like(dem, bool)
    valid[0, 3] = False
    assert clipped_share(dem, 500.0, 1000.0, valid) == pytest.approx(1 / 7)
    with pytest.raises(ValueError):
        normalise_dem(dem, 0.0, 0.0)


def test_cell_mean_ignores_invalid_pixels():
    dem = np.array([[100.0, 200.0], [-32768.0, np.nan]])
    valid = np.array([[True, True], [False, True]])
    assert dem_cell_mean(dem, valid) == pytest.approx(150.0)
    with pytest.raises(ValueError):
        dem_cell_mean(dem, np.zeros_like(valid))


def test_choose_dem_scale_rule():
    rng = np.random.default_rng(11)
    half_reliefs = rng.uniform(0.0, 1000.0, 100_000)
    s = choose_dem_scale(half_reliefs)  # the 0.99 quantile ~ 990 m, rounded up
    assert s == 1000.0
    assert np.mean(half_reliefs > s) <= 0.01
    assert choose_dem_scale(np.array([1200.0])) == 1200.0  # exact multiple stays
    assert choose_dem_scale(np.array([1201.0]), round_to=50) == 1250.0
    assert choose_dem_scale([np.array([3.0]), np.array([-5.0, np.nan])], quantile=1.0) == 100.0
    # pooled pixel deviations: clipped pixel share bounded by 1 - q
    landforms = ("hills", "low mountains", "high mountains")
    dems = [synth_dem(lf, rng, size=89, pixel_m=120.0) for lf in landforms]
    samples = [np.abs(d - d.mean()) for d in dems]
    s = choose_dem_scale(samples, quantile=0.98)
    total = sum(clipped_share(d, d.mean(), s) * d.size for d in dems) / sum(d.size for d in dems)
    assert total <= 0.02
    with pytest.raises(ValueError):
        choose_dem_scale(np.array([np.nan]))
    with pytest.raises(ValueError):
        choose_dem_scale(np.ones(3), quantile=0.0)
