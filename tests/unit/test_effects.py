"""Arm means, factor effects and verdicts from replicated runs (components/evaluation/effects.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.evaluation.effects import NO_DIFFERENCE, Arm, arm_summaries, factor_effects, verdict
from components.evaluation.per_cell import Interval

CELLS = 24


def _table(rng, cell_effects, mean, seed_sd=0.1, noise=0.3, sampling_seeds=(42, 50)):
    training_shift = rng.normal(0, seed_sd)  # what one training seed moves the whole model by
    rows = [{"cell": f"c{c}", "seed": s, "x": mean + training_shift + cell_effects[c] + rng.normal(0, noise)}
            for c in range(CELLS) for s in sampling_seeds]
    return pd.DataFrame(rows)


def _design(shadow_gain=0.0, dropout_gain=0.0, seeds=(0, 1, 2), rng_seed=7):
    rng = np.random.default_rng(rng_seed)
    cell_effects = rng.normal(0, 1.0, CELLS)  # the same held-out cells for every arm
    arms = []
    for shadow in (True, False):
        for dropout in (True, False):
            mean = shadow_gain * shadow + dropout_gain * dropout
            arms.append(Arm(f"shadow-{shadow}_dropout-{dropout}", {"shadow": shadow, "caption_dropout": dropout},
                            {s: _table(rng, cell_effects, mean) for s in seeds}))
    return arms


def _mean_x(table):
    return float(table["x"].mean())


def test_arms_that_differ_only_by_training_seed_show_no_detectable_difference():
    effects = factor_effects(_design(), _mean_x, "higher_is_better", n_boot=300)
    assert [e.name for e in effects] == ["caption_dropout on - off", "shadow on - off",
                                         "caption_dropout x shadow interaction"]
    assert [e.verdict for e in effects] == [NO_DIFFERENCE] * 3
    assert all(e.interval.low < 0 < e.interval.high for e in effects)


def test_a_real_effect_is_detected_with_its_direction():
    effects = {e.name: e for e in factor_effects(_design(shadow_gain=0.5), _mean_x, "higher_is_better", n_boot=300)}
    shadow = effects["shadow on - off"]
    assert shadow.verdict == "better" and shadow.interval.low > 0
    assert shadow.interval.low < 0.5 < shadow.interval.high
    assert effects["caption_dropout on - off"].verdict == NO_DIFFERENCE
    # the same numbers for a metric where lower is better read as worse
    lower = factor_effects(_design(shadow_gain=0.5), _mean_x, "lower_is_better", n_boot=300)
    assert {e.name: e.verdict for e in lower}["shadow on - off"] == "worse"


def test_arm_summaries_give_each_arm_its_mean_and_interval():
    arms = _design(shadow_gain=0.5)
    summaries = arm_summaries(arms, _mean_x, n_boot=300)
    for arm in arms:
        interval = summaries[arm.name]
        assert interval.estimate == pytest.approx(np.mean([_mean_x(t) for t in arm.tables.values()]))
        assert interval.low < interval.estimate < interval.high


def test_one_training_seed_gives_no_interval_and_says_why():
    effects = factor_effects(_design(seeds=(0,)), _mean_x, "higher_is_better", n_boot=300)
    assert all(math.isnan(e.interval.low) for e in effects)
    assert all(e.verdict.startswith("no interval: fewer than 2 training seeds") for e in effects)


def test_design_errors_and_verdicts():
    arms = _design()
    with pytest.raises(ValueError, match="same factor levels"):
        factor_effects([arms[0], Arm("copy", arms[0].levels, arms[0].tables)], _mean_x, "higher_is_better")
    with pytest.raises(ValueError, match="same factors"):
        factor_effects([arms[0], Arm("other", {"shadow": True}, arms[1].tables)], _mean_x, "higher_is_better")
    with pytest.raises(ValueError, match="direction"):
        verdict(Interval(0.1, 0.05, 0.2, 0.95, 20, 100), "up")
    # one factor varied: its main effect only, no interaction
    two = [a for a in arms if a.levels["caption_dropout"]]
    assert [e.name for e in factor_effects(two, _mean_x, "higher_is_better", n_boot=200)] == ["shadow on - off"]


def test_effect_intervals_cover_the_true_effect_about_95_percent_of_the_time_with_few_seeds():
    """Two arms x three training seeds, a known effect of 0.3, seed spread 0.2 and cell noise: the
    interval must count the seeds' spread honestly (a bootstrap over three seeds covers far less)."""
    rng = np.random.default_rng(11)
    covered, runs = 0, 120
    for _ in range(runs):
        cell_effects = rng.normal(0, 1.0, CELLS)
        arms = [Arm(name, {"shadow": on}, {s: _table(rng, cell_effects, 0.3 * on, seed_sd=0.2, noise=0.3)
                                            for s in (0, 1, 2)})
                for name, on in (("on", True), ("off", False))]
        [effect] = factor_effects(arms, _mean_x, "higher_is_better", n_boot=100, seed=int(rng.integers(1 << 30)))
        covered += effect.interval.low <= 0.3 <= effect.interval.high
    # Issue 25 asks for 90-98 % (0.958 with this generator seed).
    assert 0.90 <= covered / runs <= 0.98, covered / runs


def test_two_seeds_per_arm_give_wide_intervals_not_false_alarms():
    arms = _design(seeds=(0, 1), rng_seed=3)
    effects = factor_effects(arms, _mean_x, "higher_is_better", n_boot=200)
    assert [e.verdict for e in effects] == [NO_DIFFERENCE] * 3


def test_the_forest_plot_puts_every_metric_on_one_scale_with_better_to_the_right():
    """Differences in seed SDs, signed so that positive is better (a lower-is-better metric is negated);
    a row without an interval is not drawn and says why. The plot itself is an image of those rows."""
    from components.evaluation.replicates import forest_plot, forest_rows

    def effect(estimate, low, high, verdict, note=None):
        return {"name": "shadow on - off", "estimate": estimate, "low": low, "high": high, "verdict": verdict,
                "note": note, "seeds_needed": None}

    analysis = {
        "rgb_dem_coherence": {"direction": "higher_is_better", "seed_sd": 0.02,
                              "effects": [effect(0.1, 0.04, 0.16, "better")]},
        "realism_w1_slope_deg": {"direction": "lower_is_better", "seed_sd": 2.0,
                                 "effects": [effect(3.0, 1.0, 5.0, "worse")]},
        "landform_balanced_accuracy": {"direction": "higher_is_better", "seed_sd": None,
                                       "effects": [effect(0.05, None, None, NO_DIFFERENCE, "fewer than 2 seeds")]},
    }
    coherence, slope, landform = forest_rows(analysis)
    assert (coherence["estimate"], coherence["low"], coherence["high"]) == pytest.approx((5.0, 2.0, 8.0))
    assert (slope["estimate"], slope["low"], slope["high"]) == pytest.approx((-1.5, -2.5, -0.5))  # worse: left
    assert slope["label"] == "realism_w1_slope_deg: shadow on - off" and slope["text"] == "3 [1, 5]"
    assert landform["low"] is None and landform["estimate"] is None and "fewer than 2 seeds" in landform["text"]
    image = forest_plot(analysis)
    assert image.size[0] > 600 and image.size[1] > 150
