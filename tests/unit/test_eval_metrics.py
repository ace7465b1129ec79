"""Evaluation metrics on constructed cases: small arrays, 64 x 64 px at 120 m (the demo resolution)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from components.captions.landform import DEFAULT_LANDFORM_THRESHOLDS, LANDFORM_CLASSES
from components.evaluation.metrics import (
    DESCRIPTOR_NAMES,
    BalancedAccuracy,
    biome_adherence,
    classify_dems,
    colour_histogram,
    dem_artefact_share,
    dem_artefact_shares,
    diversity,
    histogram_distance,
    hypsometric_integral,
    landform_balanced_accuracy,
    local_relief_m,
    metric_directions,
    realism_distances,
    rgb_dem_coherence,
    rgb_dem_correlations,
    roughness_m,
    slope_deg,
    terrain_descriptors,
)
from components.radiometry.hillshade import Sun, hillshade

PIXEL_M = 120.0
SIZE = 64


def egg_box(amplitude_m: float, period_px: int = 16) -> np.ndarray:
    """Peaks and pits: relief ~ 1.85 x amplitude, steep everywhere but at the crests."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return 200.0 + amplitude_m * np.sin(2 * np.pi * x / period_px) * np.sin(2 * np.pi * y / period_px)


def random_dem(seed: int, relief_m: float = 2000.0, sigma_px: float = 1.5) -> np.ndarray:
    """Smooth random terrain with about ``relief_m`` of range."""
    z = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(SIZE, SIZE)), sigma_px)
    return relief_m * (z - z.min()) / (z.max() - z.min())


def grey_rgb(values_01: np.ndarray) -> np.ndarray:
    grey = np.clip(np.rint(values_01 * 255), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def solid_rgb(colour, n: int = 2, size: int = 8, noise: int = 0, seed: int = 0) -> np.ndarray:
    rgb = np.broadcast_to(np.asarray(colour, dtype=np.int64), (n, size, size, 3)).copy()
    if noise:
        rgb += np.random.default_rng(seed).integers(-noise, noise + 1, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- landform


def test_classify_dems_follows_the_caption_rules():
    t = DEFAULT_LANDFORM_THRESHOLDS
    flat = np.full((SIZE, SIZE), 350.0)
    # amplitudes picked from the thresholds: relief ~1.85 x amplitude, few gentle pixels
    low = egg_box(0.9 * t["mountains_relief_m"])  # ~500 m: between 300 and 900 m
    high = egg_box(0.7 * t["high_mountains_relief_m"])  # ~1,170 m: over 900 m
    assert classify_dems(np.stack([flat, low, high]), PIXEL_M) == ["plains", "low mountains", "high mountains"]
    assert classify_dems(flat, PIXEL_M) == ["plains"]  # one (H, W) DEM is a stack of one
    assert set(classify_dems(np.stack([random_dem(s) for s in range(3)]), PIXEL_M)) <= set(LANDFORM_CLASSES)


def test_classify_dems_uses_given_thresholds_and_flags_missing_dems():
    low = egg_box(250.0)
    assert classify_dems(low, PIXEL_M, {"mountains_relief_m": 600.0}) == ["hills"]
    assert classify_dems(np.full((SIZE, SIZE), np.nan), PIXEL_M) == [None]
    with pytest.raises(ValueError, match="unknown key"):
        classify_dems(low, PIXEL_M, {"nope": 1.0})
    with pytest.raises(ValueError, match="pixel_size_m"):
        classify_dems(low, 0.0)
    with pytest.raises(ValueError, match="shape"):
        classify_dems(np.zeros(5), PIXEL_M)


def test_balanced_accuracy_perfect_and_constant():
    requested = ["plains"] * 6 + ["hills"] * 3 + ["high mountains"]
    perfect = landform_balanced_accuracy(requested, requested)
    assert isinstance(perfect, BalancedAccuracy)
    assert perfect.value == 1.0
    assert perfect.chance == pytest.approx(1 / 3)
    assert perfect.classes == ("high mountains", "hills", "plains")
    assert perfect.support == {"plains": 6, "hills": 3, "high mountains": 1}
    # always the majority class: 60 % plain accuracy, but chance balanced accuracy
    constant = landform_balanced_accuracy(["plains"] * len(requested), requested)
    assert constant.value == pytest.approx(constant.chance)
    assert constant.per_class_recall == {"high mountains": 0.0, "hills": 0.0, "plains": 1.0}


def test_balanced_accuracy_scores_each_request_at_the_level_it_names():
    # "mountains" (the paper's word) is met by either mountain class; a class only by itself
    predicted = ["low mountains", "high mountains", "hills", "low mountains", "high mountains", "plains"]
    requested = ["mountains", "mountains", "mountains", "high mountains", "high mountains", "plains"]
    result = landform_balanced_accuracy(predicted, requested)
    assert result.per_class_recall == {"high mountains": 0.5, "mountains": pytest.approx(2 / 3), "plains": 1.0}
    assert result.chance == pytest.approx(1 / 3)
    assert result.value == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # the paper's four words: chance 1/4, and a model that never tells low from high loses nothing
    words = ["plains", "tablelands", "hills", "mountains"]
    assert landform_balanced_accuracy(["plains", "tablelands", "hills", "low mountains"], words).value == 1.0
    assert landform_balanced_accuracy(["plains", "tablelands", "hills", "hills"], words).chance == 0.25
    assert landform_balanced_accuracy(["low mountains"], ["mountains"]).value == 1.0
    from components.evaluation.metrics import landform_met

    assert landform_met("high mountains", "mountains") and not landform_met("hills", "mountains")
    assert not landform_met(None, "plains") and not landform_met("low mountains", "high mountains")
    assert landform_balanced_accuracy(["low mountains"], ["high mountains"]).value == 0.0


def test_balanced_accuracy_counts_none_as_a_miss_and_checks_inputs():
    result = landform_balanced_accuracy(["hills", None], ["hills", "plains"])
    assert result.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pair up"):
        landform_balanced_accuracy(["hills"], ["hills", "plains"])
    with pytest.raises(ValueError, match="empty"):
        landform_balanced_accuracy([], [])
    with pytest.raises(ValueError, match="None"):
        landform_balanced_accuracy(["hills"], [None])
    with pytest.raises(ValueError, match="one string"):
        landform_balanced_accuracy("hills", "hills")


# ----------------------------------------------------------------------------- colour


def test_colour_histogram_is_joint_and_normalised():
    rgb = solid_rgb((10, 200, 30), n=3)
    hist = colour_histogram(rgb, bins=4)
    assert hist.shape == (64,)
    assert hist.sum() == pytest.approx(1.0)
    assert hist[(0 * 4 + 3) * 4 + 0] == 1.0  # r=10 -> bin 0, g=200 -> bin 3, b=30 -> bin 0
    assert np.array_equal(colour_histogram(rgb[0], bins=4), hist)  # one image = stack of one
    with pytest.raises(ValueError, match="uint8"):
        colour_histogram(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="bins"):
        colour_histogram(rgb, bins=0)


def test_histogram_distance_zero_for_identical_and_grows_with_shift():
    base = solid_rgb((60, 120, 60), noise=20)
    near = solid_rgb((75, 120, 60), noise=20, seed=1)
    far = solid_rgb((200, 160, 100), noise=20, seed=2)
    h = colour_histogram(base)
    assert histogram_distance(h, h) == 0.0
    d_near = histogram_distance(h, colour_histogram(near))
    d_far = histogram_distance(h, colour_histogram(far))
    assert 0.0 < d_near < d_far <= 1.0
    assert d_far == pytest.approx(1.0)  # disjoint colours: the JS distance's maximum
    with pytest.raises(ValueError, match="differ in size"):
        histogram_distance(h, colour_histogram(base, bins=8))
    with pytest.raises(ValueError, match="not all zero"):
        histogram_distance(np.zeros(4), np.ones(4))


def test_biome_adherence_per_group_and_mean():
    forest = solid_rgb((40, 110, 40), noise=10)
    desert = solid_rgb((210, 180, 120), noise=10, seed=3)
    reference = np.concatenate([forest, desert])
    ref_groups = ["forest"] * 2 + ["desert"] * 2
    same = biome_adherence(reference, ref_groups, reference, ref_groups)
    assert same["value"] == 0.0 and same["n_groups"] == 2
    swapped = biome_adherence(np.concatenate([desert, forest]), ref_groups, reference, ref_groups)
    assert swapped["value"] > 0.9
    partial = biome_adherence(forest, ["forest", "tundra"], reference, ref_groups)
    assert set(partial["per_group"]) == {"forest"}
    assert partial["only_generated"] == ["tundra"] and partial["only_reference"] == ["desert"]
    none = biome_adherence(forest, ["tundra"] * 2, reference, ref_groups)
    assert math.isnan(none["value"]) and none["n_groups"] == 0
    with pytest.raises(ValueError, match="one label per image"):
        biome_adherence(forest, ["forest"], reference, ref_groups)


# ----------------------------------------------------------------------------- terrain realism


def test_descriptors_on_known_surfaces():
    flat = np.full((SIZE, SIZE), 100.0)
    assert slope_deg(flat, PIXEL_M) == 0.0
    assert local_relief_m(flat, 9) == 0.0
    assert roughness_m(flat) == pytest.approx(0.0, abs=1e-9)
    assert hypsometric_integral(flat) == 0.5
    # a plane rising 120 m per 120 m pixel: 45 degrees everywhere; relief 8 px x 120 m inside
    ramp = np.tile(np.arange(SIZE, dtype=float) * PIXEL_M, (SIZE, 1))
    assert slope_deg(ramp, PIXEL_M) == pytest.approx(45.0)
    assert local_relief_m(ramp, 9) < 8 * PIXEL_M and local_relief_m(ramp, 9) > 6 * PIXEL_M
    assert hypsometric_integral(ramp) == pytest.approx(0.5)
    spike = flat.copy()
    spike[0, 0] = 1100.0  # one high pixel: almost all land low
    assert hypsometric_integral(spike) < 0.01
    assert roughness_m(egg_box(100.0, period_px=4)) > roughness_m(egg_box(100.0, period_px=32))
    with pytest.raises(ValueError, match="non-finite"):
        slope_deg(np.full((4, 4), np.nan), PIXEL_M)
    with pytest.raises(ValueError, match="window_px"):
        local_relief_m(flat, 1)


def test_terrain_descriptors_one_row_per_dem():
    dems = np.stack([egg_box(100.0), egg_box(400.0), random_dem(0)])
    table = terrain_descriptors(dems, PIXEL_M)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == list(DESCRIPTOR_NAMES)
    assert len(table) == 3
    assert table.loc[1, "slope_deg"] > table.loc[0, "slope_deg"]


def test_realism_distances_zero_for_identical_sets_and_grow_when_scaled():
    dems = np.stack([random_dem(s, relief_m=300.0 + 200.0 * s) for s in range(4)])
    same = realism_distances(dems, dems.copy(), PIXEL_M)
    assert set(same) == {f"realism_w1_{n}" for n in DESCRIPTOR_NAMES}
    assert all(v == 0.0 for v in same.values())
    scaled = realism_distances(2.0 * dems, dems, PIXEL_M)
    for name in ("slope_deg", "local_relief_m", "roughness_m"):
        assert scaled[f"realism_w1_{name}"] > 0.0
    # the hypsometric integral is scale-free: doubling heights leaves it unchanged
    assert scaled["realism_w1_hypsometric_integral"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- coherence


def test_coherence_high_for_an_image_shaded_from_its_own_dem():
    dems = np.stack([random_dem(1), random_dem(2)])
    # the Sentinel-2-like sun (south-east), not one of the azimuths the metric tries
    rgb = np.stack([grey_rgb(hillshade(d, PIXEL_M, Sun(azimuth_deg=150.0, altitude_deg=40.0))) for d in dems])
    assert rgb_dem_coherence(rgb, dems, PIXEL_M) > 0.8


def test_coherence_near_zero_for_an_unrelated_dem():
    rgb = grey_rgb(hillshade(random_dem(1), PIXEL_M, Sun(azimuth_deg=150.0, altitude_deg=45.0)))
    r = rgb_dem_correlations(np.stack([rgb] * 3), np.stack([random_dem(s) for s in (7, 8, 9)]), PIXEL_M)
    assert r.shape == (3,)
    assert np.all(np.abs(r) < 0.2)


def test_coherence_of_constant_inputs_and_mismatched_shapes():
    flat = np.full((SIZE, SIZE), 10.0)
    assert rgb_dem_coherence(grey_rgb(np.full((SIZE, SIZE), 0.5)), flat, PIXEL_M) == 0.0
    with pytest.raises(ValueError, match="must match"):
        rgb_dem_coherence(grey_rgb(np.zeros((8, 8))), flat, PIXEL_M)
    with pytest.raises(ValueError, match="azimuth"):
        rgb_dem_coherence(grey_rgb(np.zeros((SIZE, SIZE))), flat, PIXEL_M, azimuths_deg=())


# ----------------------------------------------------------------------------- diversity


def test_diversity_zero_for_a_collapsed_generator_and_positive_otherwise():
    one = random_dem(3)
    assert diversity({"a": [one] * 4, "b": [one + 5.0] * 3}) == 0.0
    varied = diversity({"a": [random_dem(s) for s in range(4)]})
    assert varied > 0.0
    # L1 in the samples' unit: two constant DEMs 10 m apart differ by 10 m
    assert diversity({"a": [np.zeros((4, 4)), np.full((4, 4), 10.0)], "single": [one]}) == 10.0


def test_diversity_checks_inputs():
    with pytest.raises(ValueError, match="2 or more"):
        diversity({"a": [np.zeros(3)]})
    with pytest.raises(ValueError, match="differ in shape"):
        diversity({"a": [np.zeros(3), np.zeros(4)]})


# ----------------------------------------------------------------------------- directions


def test_metric_directions_cover_every_metric():
    directions = metric_directions()
    assert set(directions.values()) <= {"higher_is_better", "lower_is_better"}
    dems = np.stack([random_dem(0), random_dem(1)])
    for key in realism_distances(dems, dems, PIXEL_M):
        assert directions[key] == "lower_is_better"
    assert directions["landform_balanced_accuracy"] == "higher_is_better"
    assert directions["biome_adherence_js"] == "lower_is_better"
    assert directions["rgb_dem_coherence"] == "higher_is_better"
    assert directions["diversity"] == "higher_is_better"
    assert directions["dem_artefact_share"] == "lower_is_better"


def fractal_dems(count: int, std_m: float, seed: int = 0) -> np.ndarray:
    """Random terrain with a natural, power-law spectrum (power ~ 1 / f^3)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(SIZE)[:, None], np.fft.fftfreq(SIZE)[None, :])
    f[0, 0] = 1.0
    out = []
    for _ in range(count):
        spectrum = (rng.normal(size=(SIZE, SIZE)) + 1j * rng.normal(size=(SIZE, SIZE))) / f ** 1.5
        z = np.real(np.fft.ifft2(spectrum))
        out.append(100.0 + z / z.std() * std_m)
    return np.stack(out)


def test_artefact_share_is_near_zero_on_natural_terrain_and_high_on_striped_plains():
    plains, mountains = fractal_dems(20, 3.0), fractal_dems(20, 300.0, seed=1)
    # stripes every 8 px (the latent spacing of a 64 px tile), 2 m high: what a decoder leaves on plains
    stripes = 2.0 * np.sin(2 * np.pi * np.arange(SIZE) / 8)[:, None] * np.ones((1, SIZE))
    grid = 2.0 * ((np.arange(SIZE) % 8 == 0)[:, None] | (np.arange(SIZE) % 8 == 0)[None, :])
    assert dem_artefact_share(plains) < 0.01 and dem_artefact_share(mountains) < 0.01
    assert dem_artefact_share(plains + stripes) > 0.1
    assert dem_artefact_share(plains + grid) > 0.05
    # the same stripes are a negligible share of a mountain's energy
    assert dem_artefact_share(mountains + stripes) < 0.01
    shares = dem_artefact_shares(np.concatenate([plains[:2], plains[:2] + stripes]))
    assert shares.shape == (4,) and shares[:2].max() < shares[2:].min()


def test_artefact_share_of_flat_and_tilted_dems_is_zero():
    assert dem_artefact_shares(np.full((2, SIZE, SIZE), 350.0)).tolist() == [0.0, 0.0]
    tilted = 10.0 * np.arange(SIZE)[:, None] + 3.0 * np.arange(SIZE)[None, :]
    assert dem_artefact_share(tilted) == pytest.approx(0.0, abs=1e-9)


def test_relief_by_landform_compares_the_median_relief_asked_for_with_the_real_one():
    from components.captions.landform import landform_inputs
    from components.evaluation.evaluate import Pairs, relief_by_landform

    def pairs(dems, landforms):
        n = len(dems)
        return Pairs(np.zeros((n, SIZE, SIZE, 3), np.uint8), np.stack(dems), ["c"] * n, landforms, ["g"] * n)

    real_plain, real_hill = egg_box(10.0), egg_box(100.0)
    real = pairs([real_plain, real_hill], ["plains", "hills"])
    # plains generated at twice their relief; hills asked for but none of them real in a third class
    generated = pairs([egg_box(20.0), egg_box(20.0), egg_box(100.0), egg_box(5.0)],
                      ["plains", "plains", "hills", "tablelands"])
    report = relief_by_landform(generated, real, PIXEL_M)
    plains_real = landform_inputs(real_plain, PIXEL_M)["relief_m"]
    assert report["plains"]["real_median_m"] == pytest.approx(plains_real, rel=1e-6)
    assert report["plains"]["ratio"] == pytest.approx(2.0, rel=1e-3)
    assert report["plains"]["generated"] == 2 and report["plains"]["real"] == 1
    assert report["hills"]["ratio"] == pytest.approx(1.0)
    assert report["tablelands"]["real_median_m"] is None and report["tablelands"]["ratio"] is None
    # in model units too (here a linear rule with S = 100 m): the raw output's range
    units = relief_by_landform(generated, real, PIXEL_M, to_model=lambda d: d / 100.0)
    assert units["plains"]["generated_median_model"] == pytest.approx(units["plains"]["generated_median_m"] / 100)
    assert units["hills"]["real_median_model"] == pytest.approx(units["hills"]["real_median_m"] / 100)
    assert units["tablelands"]["real_median_model"] is None and "generated_median_model" not in report["plains"]
