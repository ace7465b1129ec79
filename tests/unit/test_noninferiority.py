"""The noise-aware gate's parts: non-inferiority checks and margins
(components/evaluation/noninferiority.py), the decision with paired checks (registry.decide), and
the lineage a promotion refuses (lineage.reproducibility_problems, git_state, unpushed_outputs on a
real DVC repository)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from components.evaluation.noninferiority import Check, Margin, check, margin_for
from components.evaluation.per_cell import Interval
from components.tracking.lineage import git_state, reproducibility_problems
from components.tracking.registry import PromotionGate, decide

ACC = "landform_balanced_accuracy"
LOSS = "heldout_denoising_loss"


def _interval(estimate, low, high, note=""):
    return Interval(estimate, low, high, 0.95, 24, 1000 if note == "" else 0, note)


def test_a_worse_challenger_fails_with_its_interval_and_margin_in_the_reason():
    found = check(ACC, "higher_is_better", _interval(-0.12, -0.19, -0.05), Margin(0.05, "registry.gate.margins"))
    assert not found.passed
    assert found.worse_by == pytest.approx(0.12) and (found.low, found.high) == pytest.approx((0.05, 0.19))
    assert found.reason() == f"{ACC} worse by 0.12 [0.05, 0.19], margin 0.05 (registry.gate.margins)"


def test_non_inferiority_reads_the_worse_end_of_the_interval_in_the_metrics_direction():
    margin = Margin(0.02, "m")
    # lower is better: challenger - champion = +0.01 [-0.005, 0.015]: worse, but within the margin
    assert check(LOSS, "lower_is_better", _interval(0.01, -0.005, 0.015), margin).passed
    # ... its upper end past the margin: not shown to be non-inferior, though the estimate is small
    assert not check(LOSS, "lower_is_better", _interval(0.01, -0.005, 0.03), margin).passed
    better = check(ACC, "higher_is_better", _interval(0.2, 0.1, 0.3), margin)
    assert better.passed and better.reason().startswith(f"{ACC} better by 0.2 [-0.3, -0.1]")


def test_without_an_interval_the_point_estimate_decides_and_the_reason_says_so():
    few = _interval(-0.01, math.nan, math.nan, note="3 held-out cells: too few for an interval (need 8)")
    found = check(ACC, "higher_is_better", few, Margin(0.05, "m"))
    assert found.passed and "point estimate only" in found.reason() and "3 held-out cells" in found.reason()
    assert not check(ACC, "higher_is_better", _interval(-0.1, math.nan, math.nan, "x"), Margin(0.05, "m")).passed
    assert found.to_dict()["worse_by_low"] is None
    with pytest.raises(ValueError, match="direction"):
        check(ACC, "up", few, Margin(0.05, "m"))
    with pytest.raises(ValueError, match="margin"):
        check(ACC, "higher_is_better", few, Margin(-1.0, "m"))


def test_margins_come_from_params_then_the_measured_seed_spread_then_the_default():
    spread = {"source": "ablation run abc", "metrics": {ACC: {"sd": 0.04, "pair_half_width": 0.05},
                                                        LOSS: {"sd": None}}}
    explicit = margin_for(ACC, {ACC: 0.03}, spread, 2.0, 0.1, 0.5)
    assert explicit == Margin(0.03, "registry.gate.margins")
    measured = margin_for(ACC, {}, spread, 2.0, 0.1, 0.5)
    assert measured.value == pytest.approx(0.13)  # 2 x 0.04 + 0.05
    assert measured.source == "2 x seed-to-seed SD 0.04 + seed-pair half-width 0.05, from ablation run abc"
    assert margin_for(ACC, {}, {"metrics": {ACC: {"sd": 0.04}}}, 2.0, 0.1, 0.5).value == pytest.approx(0.08)
    default = margin_for(LOSS, {}, spread, 2.0, 0.1, 0.5)  # no measured SD for it
    assert default.value == pytest.approx(0.05) and "max_regression 10%" in default.source
    assert margin_for(LOSS, {}, None, 2.0, 0.1, None).value == 0.0


def test_decide_uses_the_paired_check_instead_of_the_relative_one():
    gate = PromotionGate(max_regression=0.0, metrics=(ACC, LOSS))
    challenger = {ACC: {"direction": "higher_is_better", "value": 0.40},
                  LOSS: {"direction": "lower_is_better", "value": 0.52}}
    champion = {ACC: {"direction": "higher_is_better", "value": 0.42},
                LOSS: {"direction": "lower_is_better", "value": 0.50}}
    # max_regression 0: the relative check alone rejects both small worsenings
    assert not decide(gate, challenger, champion).promote
    checks = {ACC: check(ACC, "higher_is_better", _interval(-0.02, -0.06, 0.02), Margin(0.08, "seed spread")),
              LOSS: check(LOSS, "lower_is_better", _interval(0.02, 0.01, 0.03), Margin(0.05, "seed spread"))}
    decision = decide(gate, challenger, champion, checks)
    assert decision.promote and all(r.startswith("passed: ") for r in decision.reasons)
    assert decision.compared[ACC]["worse_by_high"] == pytest.approx(0.06) and decision.compared[ACC]["margin"] == 0.08
    assert decision.compared[ACC]["champion"] == 0.42
    tight = {**checks, LOSS: check(LOSS, "lower_is_better", _interval(0.02, 0.01, 0.03), Margin(0.025, "params"))}
    rejected = decide(gate, challenger, champion, tight)
    assert not rejected.promote
    assert rejected.reasons[0] == f"{LOSS} worse by 0.02 [0.01, 0.03], margin 0.025 (params)"
    # a floor still applies on its own
    floored = PromotionGate(metrics=(ACC,), floors={ACC: 0.5})
    assert not decide(floored, challenger, champion, checks).promote


CLEAN = {"mesa.git_commit": "a" * 40, "mesa.git_dirty": "false", "mesa.dvc.data/samples": "s1",
         "mesa.dvc.models/pipeline": "old"}
WORKSPACE = {"data/samples": "s1", "models/pipeline": "new"}


def test_reproducible_lineage_needs_a_clean_commit_and_pushed_inputs():
    inputs = ["data/samples"]
    assert reproducibility_problems(CLEAN, WORKSPACE, [], inputs) == []  # the model itself may have moved on
    dirty = reproducibility_problems({**CLEAN, "mesa.git_dirty": "true"}, WORKSPACE, [], inputs)
    assert len(dirty) == 1 and "uncommitted changes" in dirty[0] and "commit the change" in dirty[0]
    assert "no git commit" in reproducibility_problems({**CLEAN, "mesa.git_commit": "unknown"}, WORKSPACE, [],
                                                       inputs)[0]
    unpushed = reproducibility_problems(CLEAN, WORKSPACE, ["data/latents", "data/samples"], inputs)
    assert unpushed == ["its data is not on the DVC remote (data/latents, data/samples): run `dvc push`"]
    assert "could not be asked" in reproducibility_problems(CLEAN, WORKSPACE, None, inputs)[0]
    moved = reproducibility_problems(CLEAN, {**WORKSPACE, "data/samples": "s2"}, [], inputs)
    assert "not this workspace's dvc.lock" in moved[0] and "aaaaaaa" in moved[0]
    bare = {"mesa.git_commit": "a" * 40, "mesa.git_dirty": "false"}
    assert "no DVC output hashes" in reproducibility_problems(bare, WORKSPACE, [], inputs)[0]


def _run(root, *command):
    return subprocess.run(list(command), cwd=root, check=True, capture_output=True, text=True)


def _git(root, *args):
    return _run(root, "git", "-c", "user.email=t@t", "-c", "user.name=t", *args)


def test_git_state_ignores_dvc_lock_but_not_code_or_params(tmp_path):
    _git(tmp_path, "init", "-q")
    for name in ("params.yaml", "dvc.lock"):
        (tmp_path / name).write_text("a: 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "start")
    (tmp_path / "dvc.lock").write_text("a: 2\n")  # the pipeline rewrote its record
    assert git_state(tmp_path)[1] == "false"
    (tmp_path / "params.yaml").write_text("a: 3\n")
    assert git_state(tmp_path)[1] == "true"


def test_unpushed_outputs_asks_a_real_dvc_remote(tmp_path):
    from components.versioning.stages import stage_inputs, unpushed_outputs

    _git(tmp_path, "init", "-q")
    dvc = [sys.executable, "-m", "dvc"]
    _run(tmp_path, *dvc, "init", "-q")
    _run(tmp_path, *dvc, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cells.npy").write_bytes(np.arange(10).tobytes())
    _run(tmp_path, *dvc, "add", "-q", "data")
    assert unpushed_outputs(tmp_path) == ["data"]
    _run(tmp_path, *dvc, "push", "-q")
    assert unpushed_outputs(tmp_path) == []
    with pytest.raises(RuntimeError, match="cannot compare"):
        unpushed_outputs(tmp_path, remote="nowhere")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: echo\n    deps: [data/cells.npy, code.py]\n")
    assert stage_inputs(tmp_path, "train", {"data": "x", "models": "y"}) == ["data"]


def test_a_check_round_trips_to_a_json_ready_dict():
    found = Check(ACC, "higher_is_better", 0.1, 0.05, 0.15, 0.95, Margin(0.05, "m"), False)
    assert found.to_dict() == {"direction": "higher_is_better", "worse_by": 0.1, "worse_by_low": 0.05,
                               "worse_by_high": 0.15, "level": 0.95, "margin": 0.05, "margin_source": "m",
                               "passed": False, "note": ""}


def test_gate_params_name_the_key_of_a_bad_margin_or_confidence():
    from components.config import GateConfig
    from components.config.errors import ParamsError

    with pytest.raises(ParamsError, match=r"registry\.gate\.margins.*must be >= 0"):
        PromotionGate.from_params({"margins": {ACC: -0.1}})
    with pytest.raises(ParamsError, match=r"registry\.gate\.confidence"):
        PromotionGate.from_params({"confidence": 1.5})
    gate = PromotionGate.from_config(GateConfig.from_params({"margins": {ACC: 0.05}, "spread_multiple": 3}))
    assert gate.margins == {ACC: 0.05} and gate.spread_multiple == 3.0 and gate.confidence == 0.95
    assert PromotionGate.from_params(None).spread_multiple == 2.5 and not PromotionGate.from_params(None).margins


def test_every_training_segment_of_a_resumed_run_must_be_clean():
    segments = [{"git_commit": "a" * 40, "git_dirty": "false", "steps": 12},
                {"git_commit": "b" * 40, "git_dirty": "true", "steps": 36}]
    problems = reproducibility_problems(CLEAN, WORKSPACE, [], ["data/samples"], segments)
    assert problems == ["it was trained from a tree with uncommitted changes (segment to step 36) (git_dirty=true, "
                        "commit bbbbbbb): commit the change and retrain"]
    assert reproducibility_problems(CLEAN, WORKSPACE, [], ["data/samples"], segments[:1]) == []


def test_a_seed_only_challenger_passes_a_spread_margin_about_95_percent_of_the_time():
    """The margin's recipe (2.5 x seed SD + a seed pair's half-width) simulated: a challenger that
    differs only by its seed is worse by N(0, 2 SD^2), its interval's worse end a half-width higher."""
    rng = np.random.default_rng(5)
    sd, half = 0.01, 0.02
    margin = margin_for(LOSS, {}, {"metrics": {LOSS: {"sd": sd, "pair_half_width": half}}}, 2.5, 0.1, 0.5)
    passed = 0
    for _ in range(2000):
        difference = rng.normal(0, sd * math.sqrt(2))
        passed += check(LOSS, "lower_is_better", _interval(difference, difference - half, difference + half),
                        margin).passed
    assert 0.93 <= passed / 2000 <= 0.995
    # a model worse by 4 seed SDs plus noise is caught most of the time
    worse = sum(check(LOSS, "lower_is_better", _interval(d, d - half, d + half), margin).passed
                for d in rng.normal(4 * sd, sd * math.sqrt(2), 2000))
    assert worse / 2000 < 0.5
