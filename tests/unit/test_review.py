"""What reviewers read (components/tracking/review.py): promotion and retrain outcomes as Markdown."""
from __future__ import annotations

from components.tracking.review import comparison_rows, effects_rows, promotion_markdown, retrain_markdown

PROMOTION = {
    "model": "mesa", "version": 3, "promoted": False, "champion": 2,
    "reasons": ["landform_balanced_accuracy worse by 0.12 [0.05, 0.19], margin 0.05 (registry.gate.margins)"],
    "compared": {
        "landform_balanced_accuracy": {"direction": "higher_is_better", "challenger": 0.3, "champion": 0.42,
                                       "worse_by": 0.12, "worse_by_low": 0.05, "worse_by_high": 0.19,
                                       "margin": 0.05, "margin_source": "registry.gate.margins", "passed": False},
        "realism_w1_slope_deg": {"direction": "lower_is_better", "challenger": 2.0, "champion": 2.1,
                                 "worse_by": -0.0476, "champion_only": True},
    },
}


def test_the_comparison_rows_show_the_interval_margin_and_outcome_per_metric():
    rows = comparison_rows(PROMOTION["compared"])
    assert rows[0] == {"metric": "landform_balanced_accuracy", "direction": "higher_is_better", "challenger": "0.3",
                       "champion": "0.42", "worse_by": "0.12", "interval": "[0.05, 0.19]", "margin": "0.05",
                       "margin_source": "registry.gate.margins", "passed": "no"}
    # the relative check of a metric without a per-cell form: no interval, no margin
    assert rows[1]["interval"] == "" and rows[1]["margin"] == "n/a" and rows[1]["passed"] == ""


def test_the_promotion_markdown_leads_with_the_decision_and_its_reasons():
    text = promotion_markdown(PROMOTION, grids=["reports/eval/seed_variability.png"])
    assert text.startswith("## Promotion: mesa version 3 **not promoted**")
    assert "- landform_balanced_accuracy worse by 0.12 [0.05, 0.19], margin 0.05" in text
    assert "| landform_balanced_accuracy | higher_is_better | 0.3 | 0.42 | 0.12 | [0.05, 0.19] |" in text
    assert "- `reports/eval/seed_variability.png`" in text
    assert "nothing new was registered" in promotion_markdown(None)


def test_the_retrain_markdown_lists_stages_push_registration_and_promotion():
    outcome = {"stages": [{"stage": "train", "outcome": "ran", "seconds": 12.5},
                          {"stage": "synth", "outcome": "skipped", "seconds": 0.4}],
               "pushed": {"pushed": True, "remote": None},
               "registration": {"model": "mesa", "version": 3, "new": True}, "promotion": PROMOTION}
    text = retrain_markdown(outcome)
    assert "| train | ran | 12.5 |" in text and "| synth | up to date, skipped | 0.4 |" in text
    assert "- DVC push: to the default remote" in text
    assert "- Registration: mesa version 3 (new, alias challenger)" in text and "**not promoted**" in text
    bare = retrain_markdown({"stages": [], "pushed": None, "registration": None, "promotion": None})
    assert "- DVC push: not run" in bare and "- Registration: none" in bare


def test_effects_rows_give_one_row_per_metric_and_effect():
    effect = {"name": "shadow on - off", "estimate": 0.02, "low": -0.01, "high": 0.05,
              "verdict": "no detectable difference", "seeds_needed": 9, "extra": "dropped"}
    rows = effects_rows({"rgb_dem_coherence": {"effects": [effect]}, "fid": {"effects": []}})
    assert rows == [{"metric": "rgb_dem_coherence", "effect": "shadow on - off", "estimate": 0.02, "low": -0.01,
                     "high": 0.05, "verdict": "no detectable difference", "seeds_needed": 9}]
