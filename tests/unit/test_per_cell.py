"""Per-generation metrics and cell-resampling intervals (components/evaluation/per_cell.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation import metrics
from components.evaluation.per_cell import (
    MIN_CELLS,
    PER_CELL_METRICS,
    cell_bootstrap,
    denoising_loss,
    denoising_rows,
    metric_statistic,
    paired_bootstrap,
    per_generation_table,
    resampled_values,
    set_metrics,
)

PIXEL_M = 120.0
SIDE = 32


def _dem(relief_m: float, rng: np.random.Generator) -> np.ndarray:
    """A ridge of the given relief plus a little noise: steep when the relief is large."""
    x = np.linspace(0, np.pi, SIDE)
    ridge = np.sin(x)[None, :] * np.sin(x)[:, None]
    return (relief_m * ridge + rng.normal(0, 0.5, (SIDE, SIDE))).astype(np.float32)


def _generations(n_cells: int = 10, seeds=(1, 2)):
    rng = np.random.default_rng(0)
    cells, seed_col, captions, requested, groups, rgb, dems = [], [], [], [], [], [], []
    for c in range(n_cells):
        for s in seeds:
            mountain = c % 2 == 0
            cells.append(f"cell{c}")
            seed_col.append(s)
            captions.append(f"caption {c}")
            requested.append("mountains" if mountain else "plains")
            groups.append("forests|May" if c % 3 else "deserts|May")
            rgb.append(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))
            dems.append(_dem(2000.0 if mountain else 5.0, rng))
    return dict(cells=cells, seeds=seed_col, captions=captions, requested=requested, groups=groups,
                rgb=np.stack(rgb), dems_m=np.stack(dems), pixel_size_m=PIXEL_M)


def test_per_generation_table_holds_every_measure_and_agrees_with_the_set_metrics():
    gen = _generations()
    table = per_generation_table(**gen, reference_rgb=gen["rgb"][:4], reference_groups=gen["groups"][:4])
    assert len(table) == 20 and list(table[["cell", "seed"]].iloc[0]) == ["cell0", 1]
    assert set(table["landform_predicted"][table["landform_requested"] == "plains"]) == {"plains"}
    assert set(table["landform_predicted"][table["landform_requested"] == "mountains"]) == {"high mountains"}
    assert table["landform_correct"].tolist() == [1.0] * 20  # "mountains" is met by high mountains
    descriptors = metrics.terrain_descriptors(gen["dems_m"], PIXEL_M)
    np.testing.assert_allclose(table["slope_deg"], descriptors["slope_deg"])
    np.testing.assert_allclose(table["rgb_dem_correlation"],
                               metrics.rgb_dem_correlations(gen["rgb"], gen["dems_m"], PIXEL_M))
    assert table["biome_js"].notna().all() and (table["biome_js"].between(0, 1)).all()

    numbers = set_metrics(table, reference=table)
    assert numbers["landform_balanced_accuracy"] == 1.0
    assert numbers["rgb_dem_coherence"] == pytest.approx(metrics.rgb_dem_coherence(gen["rgb"], gen["dems_m"], PIXEL_M))
    assert numbers["realism_w1_slope_deg"] == 0.0  # against itself
    # no reference images: biome_js is NaN, not a made-up number
    assert per_generation_table(**gen)["biome_js"].isna().all()


def test_per_generation_table_checks_its_inputs():
    gen = _generations()
    with pytest.raises(ValueError, match="seeds has 19 entries for 20 cells"):
        per_generation_table(**{**gen, "seeds": gen["seeds"][:-1]})
    with pytest.raises(ValueError, match="repeat"):
        per_generation_table(**{**gen, "seeds": [1] * 20})


def _simulated(rng: np.random.Generator, n_cells: int, seeds: int, mean: float, cell_effects: np.ndarray):
    rows = [{"cell": f"c{c}", "seed": s, "x": mean + cell_effects[c] + rng.normal(0, 0.5)}
            for c in range(n_cells) for s in range(seeds)]
    return pd.DataFrame(rows)


def _mean_x(table: pd.DataFrame) -> float:
    return float(table["x"].mean())


def test_intervals_are_refused_with_too_few_cells():
    rng = np.random.default_rng(1)
    table = _simulated(rng, MIN_CELLS - 1, 3, 0.0, rng.normal(0, 1, MIN_CELLS))
    interval = cell_bootstrap(table, _mean_x)
    assert np.isnan(interval.low) and np.isnan(interval.high) and "too few" in interval.note
    assert interval.estimate == pytest.approx(table["x"].mean()) and not interval.excludes(0.0)
    assert interval.to_dict()["low"] is None


def test_paired_bootstrap_needs_the_same_generations():
    rng = np.random.default_rng(2)
    a = _simulated(rng, 10, 2, 0.0, np.zeros(10))
    b = a.assign(cell=a["cell"] + "-other")
    with pytest.raises(ValueError, match="share no"):
        paired_bootstrap(a, b, _mean_x)


def test_paired_intervals_cover_a_known_effect_about_95_percent_of_the_time():
    # Two models on the same 30 cells x 3 seeds; cells differ a lot (shared by both models), the
    # true difference is 0.3. The paired interval must cover it in 90-98 % of repetitions, and
    # exclude zero most of the time (the cell effects cancel in the pairing).
    rng = np.random.default_rng(20261206)
    covered = excluded_zero = 0
    repetitions = 150
    for _ in range(repetitions):
        cell_effects = rng.normal(0, 2.0, 30)
        a = _simulated(rng, 30, 3, 0.3, cell_effects)
        b = _simulated(rng, 30, 3, 0.0, cell_effects)
        interval = paired_bootstrap(a, b, _mean_x, n_boot=300, seed=int(rng.integers(1 << 31)))
        covered += interval.low <= 0.3 <= interval.high
        excluded_zero += interval.excludes(0.0)
    assert 0.90 <= covered / repetitions <= 0.98, covered
    assert excluded_zero / repetitions > 0.9, excluded_zero


def test_unpaired_cell_bootstrap_is_wider_than_the_paired_difference():
    rng = np.random.default_rng(3)
    cell_effects = rng.normal(0, 2.0, 20)
    a = _simulated(rng, 20, 3, 0.3, cell_effects)
    b = _simulated(rng, 20, 3, 0.0, cell_effects)
    single = cell_bootstrap(a, _mean_x, n_boot=400)
    paired = paired_bootstrap(a, b, _mean_x, n_boot=400)
    assert single.low < single.estimate < single.high
    assert (paired.high - paired.low) < 0.5 * (single.high - single.low)
    assert paired.estimate == pytest.approx(a["x"].mean() - b["x"].mean())


def test_set_level_statistics_are_recomputed_per_resample():
    # balanced accuracy is not a mean of rows: each resample recomputes it from its own rows
    gen = _generations(n_cells=12)
    table = per_generation_table(**gen)
    flipped = table.copy()
    wrong = flipped["landform_requested"] == "plains"
    flipped.loc[wrong, "landform_predicted"] = "hills"
    def accuracy(t):
        return set_metrics(t)["landform_balanced_accuracy"]
    assert accuracy(flipped) == pytest.approx(0.5)
    interval = paired_bootstrap(table, flipped, accuracy, n_boot=200)
    assert interval.estimate == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n_boot"):
        cell_bootstrap(table, accuracy, n_boot=10)


def test_metric_statistics_read_an_evaluation_table_with_its_real_rows():
    gen = _generations(n_cells=10)
    generated = per_generation_table(**gen).assign(source="generated")
    first = [i for i, s in enumerate(gen["seeds"]) if s == 1]  # the real pairs: one per cell, seed 0
    real = per_generation_table(**{k: ([v[i] for i in first] if isinstance(v, list) else
                                       v[first] if isinstance(v, np.ndarray) else v) for k, v in gen.items()}
                                | {"seeds": [0] * len(first)}).assign(source="real")
    table = pd.concat([generated, real], ignore_index=True)
    expected = set_metrics(generated, reference=real)
    for name in PER_CELL_METRICS:
        got, want = metric_statistic(name)(table), expected.get(name, np.nan)  # no denoising rows here
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want), name
    with pytest.raises(ValueError, match="no per-cell form"):
        metric_statistic("heldout_denoising_loss_shuffled_captions")
    # a model against itself: zero difference, and real rows pair with real rows
    same = paired_bootstrap(table, table, metric_statistic("realism_w1_slope_deg"), n_boot=100)
    assert same.estimate == 0.0 and same.low == 0.0 and same.high == 0.0


def test_denoising_rows_give_back_the_batch_loss_and_resample_by_cell():
    import torch

    from components.training.loss import masked_v_loss, per_sample_squared_error

    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(12, 8, 4, 4, generator=generator), torch.randn(12, 8, 4, 4, generator=generator)
    mask = (torch.rand(12, 1, 4, 4, generator=generator) > 0.2).float()
    error, weight = per_sample_squared_error(prediction, target, mask)
    assert float(error.sum() / weight.sum()) == pytest.approx(float(masked_v_loss(prediction, target, mask).total),
                                                              rel=1e-6)
    # 4 samples repeated 3 times: the repeat becomes the seed, the sample the cell
    ids = [f"s{i % 4}" for i in range(12)]
    rows = denoising_rows(ids, error.numpy(), (2 * error).numpy(), weight.numpy())
    assert list(rows["seed"]) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2] and set(rows["source"]) == {"denoising"}
    assert denoising_loss(rows) == pytest.approx(float(error.sum() / weight.sum()))
    assert denoising_loss(rows, shuffled=True) == pytest.approx(2 * denoising_loss(rows))
    assert metric_statistic("heldout_denoising_loss")(rows) == denoising_loss(rows)
    assert np.isnan(denoising_loss(rows.iloc[:0])) and np.isnan(denoising_loss(pd.DataFrame({"cell": []})))
    with pytest.raises(ValueError, match="weight has 3 entries for 12"):
        denoising_rows(ids, error.numpy(), error.numpy(), weight.numpy()[:3])


def test_a_model_that_denoises_worse_on_every_cell_has_an_interval_above_zero():
    rng = np.random.default_rng(1)
    ids = [f"cell{c}" for c in range(20)] * 2
    weight = np.full(40, 64.0)
    base = rng.gamma(4.0, 8.0, 40)
    good = denoising_rows(ids, base, base, weight)
    bad = denoising_rows(ids, base * 1.3 + rng.normal(0, 1.0, 40), base, weight)
    interval = paired_bootstrap(bad, good, metric_statistic("heldout_denoising_loss"), n_boot=300)
    assert interval.cells == 20 and interval.low > 0
    assert interval.estimate == pytest.approx(denoising_loss(bad) - denoising_loss(good))


def _evaluation_table(rng: np.random.Generator) -> pd.DataFrame:
    """An evaluate-stage table: generated rows (one with no request, a few NaN measures), real rows
    and denoising rows (one with a NaN error)."""
    gen = _generations(n_cells=10)
    generated = per_generation_table(**gen).assign(source="generated")
    generated.loc[3, "landform_requested"] = None
    generated.loc[3, "landform_correct"] = np.nan
    generated.loc[5, "landform_correct"] = 0.0  # one miss, so the accuracy is not 1 everywhere
    generated.loc[[2, 7], "rgb_dem_correlation"] = np.nan
    generated.loc[1:9, "biome_js"] = rng.uniform(0, 1, 9)
    real = generated.iloc[::2].assign(source="real", seed=0, slope_deg=lambda t: t["slope_deg"] + 1.5)
    error = rng.gamma(4.0, 8.0, 20)
    error[13] = np.nan
    denoising = denoising_rows([f"cell{c % 10}" for c in range(20)], error, error, np.full(20, 64.0))
    return pd.concat([generated, real, denoising], ignore_index=True)


def test_every_metric_on_weighted_rows_equals_the_metric_on_the_repeated_rows():
    # The bootstraps weigh rows instead of building a frame per resample: the same numbers, NaNs included.
    rng = np.random.default_rng(4)
    table = _evaluation_table(rng)
    weights = rng.integers(0, 3, size=(40, len(table))).astype(np.float64)
    weights[0] = 0.0  # a resample that keeps nothing
    weights[1] = np.where(table["source"] == "denoising", 0.0, 1.0)  # no denoising row
    weights[2] = np.where(table["source"] == "real", 1.0, 0.0)  # no generated row
    rows = np.arange(len(table))
    for name in PER_CELL_METRICS:
        statistic = metric_statistic(name)
        fast = resampled_values(statistic, table, weights)
        slow = [statistic(table.iloc[np.repeat(rows, w.astype(int))]) for w in weights]
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.isfinite(fast).sum() >= 10, name  # resamples with a value to compare (not all NaN)
        # a plain function of a frame takes the slow path: the same values again
        np.testing.assert_allclose(resampled_values(lambda t, s=statistic: s(t), table, weights), slow,
                                   rtol=1e-12, atol=1e-12, err_msg=name)
    # without real rows there is no reference: the realism distances are NaN, not 0
    only_generated = table[table["source"] == "generated"].drop(columns="source")
    assert np.isnan(resampled_values(metric_statistic("realism_w1_slope_deg"), only_generated,
                                     np.ones((3, len(only_generated))))).all()
