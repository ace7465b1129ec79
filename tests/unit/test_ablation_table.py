"""The ablation's pure parts: the matrix, the -S overrides, the rerun decision and the comparison table."""
from __future__ import annotations

import pytest

from components.evaluation.ablation import (
    Variant,
    best_value,
    comparison_rows,
    expected_params,
    experiments_of,
    markdown_table,
    matrix,
    missing_keys,
    override_value,
    real_reference,
    rerun_reason,
    set_param_args,
    shadow_grid_models,
)

PARAMS = {"shadow": {"enabled": True}, "captions": {"augmentation": {"caption_dropout": True, "p_drop": 0.5}},
          "train": {"experiment": "mesa", "mixed_precision": "no", "lr": 1e-4, "seed": 7},
          "synth": {"classes": {1: "a"}}}


def _entry(variant: str, shadow: bool, dropout: bool, metrics: dict, validation_loss=None, run_id="r"):
    return {"variant": variant, "shadow": shadow, "caption_dropout": dropout, "seed": 0, "run_id": run_id,
            "model_uri": f"models:/{variant}", "metrics": metrics, "validation_loss": validation_loss}


def _metric(value, direction, reference=None):
    return {"value": value, "direction": direction, "real_reference": reference}


# ----------------------------------------------------------------------------- the matrix
def test_the_two_by_two_matrix_names_and_sets_each_variant():
    variants = matrix({"shadow": [True, False], "caption_dropout": [True, False], "experiment": "x"})
    assert [v.name for v in variants] == ["shadow-on_dropout-on_seed-0", "shadow-on_dropout-off_seed-0",
                                          "shadow-off_dropout-on_seed-0", "shadow-off_dropout-off_seed-0"]
    assert variants[2].overrides("mesa-ablation") == {"shadow.enabled": False,
                                                      "captions.augmentation.caption_dropout": True,
                                                      "train.seed": 0, "train.experiment": "mesa-ablation"}
    assert variants[1].tags() == {"mesa.variant": "shadow-on_dropout-off_seed-0", "mesa.arm": "shadow-on_dropout-off",
                                  "mesa.seed": "0", "mesa.shadow": "on", "mesa.caption_dropout": "off"}


def test_each_arm_is_replicated_with_every_training_seed():
    variants = matrix({"shadow": [True, False], "caption_dropout": [True], "seeds": [0, 1, 2]})
    assert [(v.arm, v.seed) for v in variants] == [("shadow-on_dropout-on", s) for s in (0, 1, 2)] + [
        ("shadow-off_dropout-on", s) for s in (0, 1, 2)]
    assert variants[4].name == "shadow-off_dropout-on_seed-1" and variants[4].overrides("e")["train.seed"] == 1
    assert variants[4].levels == {"shadow": False, "caption_dropout": True}


def test_a_shortened_factor_runs_fewer_variants_and_repeats_count_once():
    assert matrix({"shadow": [False, False], "caption_dropout": [True]}) == [Variant(False, True, 0)]


@pytest.mark.parametrize("settings", [{}, {"shadow": [], "caption_dropout": [True]},
                                      {"shadow": ["yes"], "caption_dropout": [True]},
                                      {"shadow": True, "caption_dropout": [True]}])
def test_a_malformed_matrix_names_the_key(settings):
    with pytest.raises(ValueError, match=r"ablation\.(shadow|caption_dropout)"):
        matrix(settings)


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], ["1"], [True]])
def test_malformed_seeds_are_refused(seeds):
    with pytest.raises(ValueError, match=r"ablation\.seeds must be a non-empty list of distinct integers"):
        matrix({"shadow": [True], "caption_dropout": [True], "seeds": seeds})


# ----------------------------------------------------------------------------- params as DVC runs them
def test_set_param_args_write_booleans_bare_and_strings_quoted():
    args = set_param_args(Variant(False, True).overrides("mesa-ablation"))
    assert args == ["-S", "shadow.enabled=false", "-S", "captions.augmentation.caption_dropout=true",
                    "-S", "train.seed=0", "-S", "train.experiment='mesa-ablation'"]


@pytest.mark.parametrize("value", [True, False, None, 3, 0.25, "no", "mesa-ablation", "1e-4", "it's", "a\\b",
                                   "end\\", "x\\'y", "a b,c=d"])
def test_override_values_read_back_unchanged_by_hydra(value):
    """DVC parses -S values with Hydra's override grammar: each must come back as the same value and type."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # DVC's own dependency

    parser = OverridesParser.create()
    parsed = parser.parse_override(f"key={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("value", [float("nan"), [1, 2], {"a": 1}])
def test_values_hydra_cannot_carry_are_refused(value):
    with pytest.raises(TypeError, match="dvc exp run -S"):
        override_value(value)


def test_missing_keys_lists_what_params_yaml_lacks():
    overrides = Variant(True, True).overrides("e")
    assert missing_keys(PARAMS, overrides) == []
    assert missing_keys({"shadow": {"enabled": True}, "train": {}}, overrides) == [
        "captions.augmentation.caption_dropout", "train.seed", "train.experiment"]


def test_expected_params_are_the_workspace_params_with_the_overrides_in_json_form():
    wanted = expected_params(PARAMS, Variant(False, False).overrides("mesa-ablation"))
    assert wanted["shadow"]["enabled"] is False
    assert wanted["captions"]["augmentation"] == {"caption_dropout": False, "p_drop": 0.5}
    assert wanted["train"] == {"experiment": "mesa-ablation", "mixed_precision": "no", "lr": 1e-4, "seed": 0}
    assert wanted["synth"] == {"classes": {"1": "a"}}  # as `dvc exp show --json` gives int keys
    assert PARAMS["shadow"]["enabled"] is True  # the workspace's params are left alone


def _shown(baseline: str, name: str, params: dict, **extra) -> list[dict]:
    experiment = {"name": name, "revs": [{"rev": "e" * 40, "name": name,
                                          "data": {"params": {"params.yaml": {"data": params}}}, **extra}]}
    return [{"rev": "workspace"}, {"rev": baseline, "experiments": [experiment]}]


def test_experiments_of_reads_the_baselines_finished_experiments():
    wanted = expected_params(PARAMS, Variant(True, True).overrides("a"))
    shown = _shown("c" * 40, "shadow-on_dropout-on", wanted)
    assert experiments_of(shown, "c" * 40) == {"shadow-on_dropout-on": {"rev": "e" * 40, "params": wanted}}
    assert experiments_of(shown, "d" * 40) == {}
    assert experiments_of(_shown("c" * 40, "x", wanted, error={"msg": "failed"}), "c" * 40) == {}


def test_rerun_reason_skips_only_a_clean_matching_evaluated_variant():
    wanted = expected_params(PARAMS, Variant(True, True).overrides("a"))
    known = {"rev": "e", "params": wanted}
    assert rerun_reason(known, wanted, "false", evaluated=True) is None
    assert rerun_reason(None, wanted, "false", evaluated=False) == "DVC has no experiment of it"
    assert rerun_reason(known, wanted, "true", evaluated=True) == "uncommitted changes"
    other = expected_params(PARAMS, Variant(True, False).overrides("a"))
    assert rerun_reason(known, other, "false", evaluated=True) == "its params differ"
    assert rerun_reason(known, wanted, "false", evaluated=False) == "MLflow has no evaluated run of it"


# ----------------------------------------------------------------------------- the table
ENTRIES = [
    _entry("shadow-on_dropout-on", True, True, {"accuracy": _metric(0.5, "higher_is_better", 0.9),
                                                "distance": _metric(0.2, "lower_is_better", 0.05)}, 1.5, "run-a"),
    _entry("shadow-off_dropout-on", False, True, {"accuracy": _metric(0.7, "higher_is_better", 0.9),
                                                  "distance": _metric(None, "lower_is_better", 0.05)}, 1.25, "run-b"),
    _entry("shadow-off_dropout-off", False, False, {"accuracy": _metric(0.6, "higher_is_better", 0.9),
                                                    "distance": _metric(0.3, "lower_is_better", 0.05)}, None, None),
]


def test_comparison_rows_hold_every_metric_and_the_validation_loss():
    rows, directions = comparison_rows(ENTRIES)
    assert directions == {"accuracy": "higher_is_better", "distance": "lower_is_better",
                          "validation_loss": "lower_is_better"}
    assert rows[1] == {"variant": "shadow-off_dropout-on", "shadow_correction": "off", "caption_dropout": "on",
                       "seed": 0, "accuracy": 0.7, "distance": None, "validation_loss": 1.25, "run_id": "run-b"}
    assert [row["validation_loss"] for row in rows] == [1.5, 1.25, None]


def test_a_variant_without_an_evaluated_run_gets_an_empty_row():
    rows, directions = comparison_rows([ENTRIES[0], _entry("shadow-off_dropout-off", False, False, {}, run_id=None)])
    assert set(directions) == {"accuracy", "distance", "validation_loss"}
    assert rows[1]["accuracy"] is None and rows[1]["validation_loss"] is None and rows[1]["run_id"] is None


def test_the_best_value_follows_each_columns_direction():
    rows, _ = comparison_rows(ENTRIES)
    assert best_value(rows, "accuracy", "higher_is_better") == 0.7
    assert best_value(rows, "distance", "lower_is_better") == 0.2
    assert best_value(rows, "validation_loss", "lower_is_better") == 1.25
    assert best_value(rows, "accuracy", "") is None  # no direction: nothing is best
    assert best_value(rows[:1], "accuracy", "higher_is_better") is None  # one value
    same = [{"m": 1.0}, {"m": 1.0}]
    assert best_value(same, "m", "lower_is_better") is None  # all equal


def test_the_real_reference_is_each_metrics_first_reported_value():
    assert real_reference(ENTRIES) == {"accuracy": 0.9, "distance": 0.05}
    assert real_reference([_entry("v", True, True, {"m": _metric(1.0, "higher_is_better")})]) == {}


def _table_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| variant"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_the_markdown_table_bolds_the_best_and_shows_missing_values_as_na():
    rows, directions = comparison_rows(ENTRIES)
    table = markdown_table(rows, directions, real_reference(ENTRIES), {"parent run": "`p`"},
                           "ablation/shadow_correction.png")
    assert "- parent run: `p`" in table
    assert ("| variant | shadow correction | caption dropout | seed | accuracy (higher is better) | "
            "distance (lower is better) | validation_loss (lower is better) | MLflow run |") in table
    cells = _table_rows(table)
    assert cells["shadow-on_dropout-on"] == ["shadow-on_dropout-on", "on", "on", "0", "0.5", "**0.2**", "1.5",
                                             "`run-a`"]
    assert cells["shadow-off_dropout-on"] == ["shadow-off_dropout-on", "off", "on", "0", "**0.7**", "n/a", "**1.25**",
                                              "`run-b`"]
    assert cells["shadow-off_dropout-off"] == ["shadow-off_dropout-off", "off", "off", "0", "0.6", "0.3", "n/a",
                                               "n/a"]
    # The real reference is the last row: its values, never bold, n/a where it has none.
    assert list(cells)[-1] == "*real reference*"
    assert cells["*real reference*"] == ["*real reference*", "", "", "", "0.9", "0.05", "n/a", ""]
    assert "![shadow correction grid](ablation/shadow_correction.png)" in table


def test_the_markdown_table_without_reference_or_grid():
    rows, directions = comparison_rows(ENTRIES[:1])
    table = markdown_table(rows, directions, {}, {}, None)
    assert "real reference" not in table and "shadow correction grid" not in table
    assert "**" not in table  # one variant: nothing to choose between
    assert len(_table_rows(table)) == 1


def test_the_shadow_grid_pairs_shadow_on_and_off_with_caption_dropout_on():
    assert shadow_grid_models(ENTRIES) == {"shadow-on_dropout-on": "models:/shadow-on_dropout-on",
                                           "shadow-off_dropout-on": "models:/shadow-off_dropout-on"}
    without_dropout = [_entry("shadow-on_dropout-off", True, False, {}),
                       _entry("shadow-off_dropout-off", False, False, {})]
    assert set(shadow_grid_models(without_dropout)) == {"shadow-on_dropout-off", "shadow-off_dropout-off"}
    unevaluated = [dict(ENTRIES[0]), dict(ENTRIES[1], model_uri=None)]
    assert shadow_grid_models(unevaluated) is None
