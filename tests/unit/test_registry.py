"""components.tracking.registry against a real MLflow store (SQLite in a temporary folder).

Three pipeline models are logged once for the module (about 3 s each); every test registers them
under its own registered-model name, so tests do not see each other's versions and aliases.
"""
from __future__ import annotations

import threading

import pytest

from components.config import ParamsError
from components.tracking import registry
from components.tracking.registry import (
    HIGHER,
    LOWER,
    Decision,
    PromotionGate,
    decide,
    get_alias_version,
    promote,
    register_pipeline,
    rollback,
    set_alias,
)

ACC = "landform_balanced_accuracy"  # higher is better
JS = "biome_adherence_js"  # lower is better
GATE = PromotionGate(max_regression=0.05, floors={ACC: 0.2}, ceilings={JS: 0.5})


def report(acc: float | None, js: float | None) -> dict:
    """An evaluate-style metrics report with the two metrics the tests gate on."""
    return {"metrics": {ACC: {"direction": HIGHER, "value": acc, "real_reference": 0.9},
                        JS: {"direction": LOWER, "value": js, "real_reference": 0.01}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(client, uri, [(run_id, model_uri)] * 3) with three logged tiny pipelines."""
    from mlflow import MlflowClient

    from components.tracking.pyfunc import log_pipeline_model
    from components.tracking.store import ensure_experiment
    from testsupport.pipelines import tiny_random_pipeline

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "registry-tests", root)  # artifacts under root/mlartifacts
    folder = root / "pipeline"
    tiny_random_pipeline(["A Sentinel-2 image of hills"], image_px=32).save_pretrained(folder)
    models = []
    for _ in range(3):
        run_id = client.create_run(experiment_id).info.run_id
        models.append((run_id, log_pipeline_model(run_id, folder, uri=uri)))
    return client, uri, models


def register_all(store, name: str, reports: list[dict]) -> list[int]:
    """Register the first len(reports) logged models under `name`; their version numbers."""
    client, _, models = store
    return [register_pipeline(client, name, run_id, model_uri, rep).version
            for (run_id, model_uri), rep in zip(models, reports)]


# ----------------------------------------------------------------------------- registering
def test_registering_the_same_run_twice_gives_one_version(store):
    client, _, models = store
    run_id, model_uri = models[0]
    first = register_pipeline(client, "twice", run_id, model_uri, report(0.5, 0.1))
    again = register_pipeline(client, "twice", run_id, model_uri, report(0.9, 0.0))
    assert again.version == first.version
    assert len(registry.all_versions(client, "twice")) == 1
    tags = client.get_model_version("twice", first.version).tags
    assert tags["mesa.run_id"] == run_id
    assert float(tags[f"metric.{ACC}"]) == 0.5  # the second call wrote nothing
    assert tags[f"metric.{JS}.direction"] == LOWER


def test_a_resumed_run_that_logs_a_new_model_gets_a_new_version(store, tmp_path):
    from components.tracking.pyfunc import log_pipeline_model
    from testsupport.pipelines import tiny_random_pipeline

    client, uri, models = store
    run_id, model_uri = models[1]
    first = register_pipeline(client, "resumed", run_id, model_uri, report(0.5, 0.1))
    # The same run, trained further (resumed from a checkpoint), logs another model.
    tiny_random_pipeline(["A Sentinel-2 image of hills"], image_px=32).save_pretrained(tmp_path / "further")
    further = log_pipeline_model(run_id, tmp_path / "further", uri=uri)
    second = register_pipeline(client, "resumed", run_id, further, report(0.6, 0.1))
    assert int(second.version) == int(first.version) + 1
    assert register_pipeline(client, "resumed", run_id, further, report(0.6, 0.1)).version == second.version


def test_none_metric_values_get_a_direction_but_no_value_tag(store):
    client, _, models = store
    version = register_pipeline(client, "nones", *models[0], report(None, 0.1))
    tags = client.get_model_version("nones", version.version).tags
    assert f"metric.{ACC}" not in tags and tags[f"metric.{ACC}.direction"] == HIGHER
    assert registry.metrics_from_tags(tags)[ACC] == {"direction": HIGHER, "value": None}


# ----------------------------------------------------------------------------- promotion
def test_first_model_becomes_champion_only_if_it_passes_the_floors(store):
    client, _, _ = store
    low, good = register_all(store, "first", [report(0.1, 0.1), report(0.4, 0.1)])
    rejected = promote(client, "first", GATE, low)
    assert not rejected.promote
    assert any(ACC in r and "0.1" in r and "0.2" in r for r in rejected.reasons)
    assert get_alias_version(client, "first", "champion") is None

    accepted = promote(client, "first", GATE, good)
    assert accepted.promote
    assert get_alias_version(client, "first", "champion").version == good
    tags = client.get_model_version("first", good).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.compared_with"] == "none"
    assert "previous_champion" not in tags


def test_better_challenger_promoted_worse_rejected_and_rollback(store):
    client, _, _ = store
    v1, v2, v3 = register_all(store, "ladder", [report(0.4, 0.2), report(0.5, 0.15), report(0.45, 0.2)])
    assert promote(client, "ladder", GATE, v1).promote

    set_alias(client, "ladder", "challenger", v2)
    better = promote(client, "ladder", GATE)  # reads the challenger alias
    assert better.promote and better.compared[ACC]["champion"] == 0.4
    assert get_alias_version(client, "ladder", "champion").version == v2
    tags2 = client.get_model_version("ladder", v2).tags
    assert tags2["previous_champion"] == str(v1) and tags2["promotion.compared_with"] == str(v1)

    # v3: accuracy 10 % below v2's 0.5 and JS 33 % above v2's 0.15, beyond the 5 % allowed.
    worse = promote(client, "ladder", GATE, v3)
    assert not worse.promote
    assert any(ACC in r and "0.45" in r and "0.5" in r for r in worse.reasons)
    assert any(JS in r and "0.2" in r and "0.15" in r for r in worse.reasons)
    tags3 = client.get_model_version("ladder", v3).tags
    assert tags3["promotion.decision"] == "rejected" and ACC in tags3["promotion.reasons"]
    assert tags3["promotion.compared_with"] == str(v2) and tags3["promotion.at"]
    assert get_alias_version(client, "ladder", "champion").version == v2

    again = promote(client, "ladder", GATE, v2)
    assert again.promote and "already" in again.reasons[0]

    assert rollback(client, "ladder") == int(v1)
    assert get_alias_version(client, "ladder", "champion").version == v1
    with pytest.raises(LookupError, match="previous_champion"):
        rollback(client, "ladder")  # v1 was the first champion


def test_promote_without_challenger_and_rollback_without_champion_say_what_to_do(store):
    client, _, _ = store
    register_all(store, "empty", [report(0.4, 0.1)])
    with pytest.raises(LookupError, match="challenger"):
        promote(client, "empty", GATE)
    with pytest.raises(LookupError, match="no 'champion' alias"):
        rollback(client, "empty")


def test_concurrent_promotions_with_the_lock_leave_one_champion(store, tmp_path):
    client, _, _ = store
    v1, v2, v3 = register_all(store, "race", [report(0.4, 0.2), report(0.5, 0.15), report(0.6, 0.1)])
    lock = tmp_path / ".mesa-registry.lock"
    assert promote(client, "race", GATE, v1, lock_path=lock).promote
    start, results, errors = threading.Barrier(2), {}, []

    def contender(version):
        start.wait()
        try:
            results[version] = promote(client, "race", GATE, version, lock_path=lock)
        except Exception as err:  # reported below, not swallowed
            errors.append(err)

    threads = [threading.Thread(target=contender, args=(v,)) for v in (v2, v3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and set(results) == {v2, v3}
    # search_model_versions leaves aliases out: read each version.
    aliased = [v for v in (v1, v2, v3) if "champion" in client.get_model_version("race", v).aliases]
    assert len(aliased) == 1
    champion = get_alias_version(client, "race", "champion").version
    # Whatever order they ran in, v3 (best on both metrics) ends as champion, and both decisions are recorded.
    assert champion == v3
    for version in (v2, v3):
        assert client.get_model_version("race", version).tags["promotion.decision"] in {"promoted", "rejected"}


def test_champion_alias_loads_as_pyfunc(store):
    import mlflow.pyfunc

    from components.tracking.pyfunc import using_tracking_uri

    client, uri, _ = store
    (version,) = register_all(store, "served", [report(0.4, 0.1)])
    promote(client, "served", GATE, version)
    with using_tracking_uri(uri):
        loaded = mlflow.pyfunc.load_model("models:/served@champion")
    assert loaded.unwrap_python_model().pipeline is not None


# ----------------------------------------------------------------------------- decide (pure)
def metrics(acc, js):
    return report(acc, js)["metrics"]


def test_decide_first_model_uses_floors_and_ceilings_only():
    assert decide(GATE, metrics(0.3, 0.4), None).promote
    failed = decide(GATE, metrics(0.3, 0.6), None)
    assert not failed.promote and failed.reasons == [f"{JS} = 0.6 is above the ceiling 0.5"]


@pytest.mark.parametrize(("challenger", "ok"), [
    ((0.48, 0.10), True),   # accuracy 4 % worse: within 5 %
    ((0.47, 0.10), False),  # accuracy 6 % worse
    ((0.60, 0.104), True),  # JS 4 % worse
    ((0.60, 0.106), False),  # JS 6 % worse
])
def test_decide_relative_regression_in_both_directions(challenger, ok):
    decision = decide(GATE, metrics(*challenger), metrics(0.5, 0.1))
    assert decision.promote is ok
    if not ok:
        assert len(decision.reasons) == 1 and "worse than the champion's" in decision.reasons[0]


def test_decide_skips_none_values_with_a_note():
    decision = decide(GATE, metrics(None, 0.1), metrics(0.5, None))
    assert decision.promote
    assert any(r.startswith(f"skipped {ACC}") for r in decision.reasons)
    assert any(r.startswith(f"skipped {JS} against the champion") for r in decision.reasons)
    assert decision.compared[JS]["champion"] is None


def test_decide_against_a_zero_champion_value():
    zero = {JS: {"direction": LOWER, "value": 0.0}}
    assert decide(PromotionGate(max_regression=0.5), {JS: {"direction": LOWER, "value": 0.01}}, zero).promote is False
    assert decide(PromotionGate(), zero, zero).promote is True


def test_gate_from_params_rejects_unknown_keys_and_misplaced_limits():
    gate = PromotionGate.from_params({"max_regression": 0.1, "floors": {ACC: 0.2}})
    assert gate.max_regression == 0.1 and gate.floors == {ACC: 0.2} and gate.ceilings == {}
    with pytest.raises(ParamsError, match=r"registry\.gate\.max_regresion = 0\.1: unknown key \(did you mean "
                                          r"'max_regression'\?\)"):
        PromotionGate.from_params({"max_regresion": 0.1})
    with pytest.raises(ParamsError, match=r"registry\.gate\.max_regression = -1: must be >= 0"):
        PromotionGate.from_params({"max_regression": -1})
    with pytest.raises(ValueError, match="give it a ceiling"):
        decide(PromotionGate(floors={JS: 0.1}), metrics(0.5, 0.1), None)
    assert isinstance(decide(PromotionGate(), {}, None), Decision)


def test_the_gate_compares_only_the_metrics_it_names_but_applies_every_floor():
    from components.tracking.registry import PromotionGate, decide

    challenger = {"loss": {"direction": "lower_is_better", "value": 1.0},
                  "noisy": {"direction": "higher_is_better", "value": 0.1},
                  "accuracy": {"direction": "higher_is_better", "value": 0.5}}
    champion = {"loss": {"direction": "lower_is_better", "value": 1.2},
                "noisy": {"direction": "higher_is_better", "value": 0.9},
                "accuracy": {"direction": "higher_is_better", "value": 0.5}}
    gate = PromotionGate.from_params({"max_regression": 0.1, "metrics": ["loss", "accuracy"],
                                      "floors": {"noisy": 0.05}})
    assert decide(gate, challenger, champion).promote  # "noisy" regressed, but it is not gated
    assert not decide(PromotionGate(max_regression=0.1), challenger, champion).promote
    assert not decide(PromotionGate.from_params({"metrics": ["loss"], "floors": {"noisy": 0.2}}),
                      challenger, champion).promote  # the floor still applies
    worse = {**challenger, "loss": {"direction": "lower_is_better", "value": 1.5}}
    decision = decide(gate, worse, champion)
    assert not decision.promote and "loss" in decision.reasons[0]


def test_metric_tags_carry_the_evaluation_fingerprint_and_retagging_replaces_them(store):
    from components.tracking.registry import EVALUATION_TAG, metric_tags, retag_evaluation

    first = {"metrics": {"loss": {"direction": "lower_is_better", "value": 0.5},
                         "old": {"direction": "higher_is_better", "value": 0.1}}, "evaluation_fingerprint": "abc",
             "caption_grammar": 1, "dem_rule": 1}
    tags = metric_tags(first)
    assert tags[EVALUATION_TAG] == "abc" and tags["metric.loss"] == "0.5"
    # the caption grammar and DEM rule the numbers were made under travel with them
    assert tags["mesa.caption_grammar"] == "1" and tags["mesa.dem_rule"] == "1"
    client, _, models = store
    run_id, model_uri = models[2]
    version = register_pipeline(client, "retag", run_id, model_uri, first).version
    retag_evaluation(client, "retag", version, {"metrics": {"loss": {"direction": "lower_is_better", "value": 0.4}},
                                                "evaluation_fingerprint": "def", "caption_grammar": 2})
    tags = client.get_model_version("retag", version).tags
    assert tags[EVALUATION_TAG] == "def" and tags["metric.loss"] == "0.4"
    assert tags["mesa.caption_grammar"] == "2" and "mesa.dem_rule" not in tags  # re-evaluated: the new ones
    assert "metric.old" not in tags and "metric.old.direction" not in tags and tags["mesa.run_id"] == run_id
