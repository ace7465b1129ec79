"""Profiles: every profile sets the same keys, applying one is exact, reversible and keeps comments."""
from __future__ import annotations

import shutil

import pytest

from components.params import apply_profile, available_profiles, check_profiles_agree, load_params, profile_overrides
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def project(tmp_path):
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT_ROOT / "configs", tmp_path / "configs")
    return tmp_path


def test_the_three_profiles_exist_and_agree():
    assert {"demo", "micro", "paper"} <= set(available_profiles(PROJECT_ROOT))
    check_profiles_agree(PROJECT_ROOT)


def test_params_yaml_holds_the_demo_profile():
    params = load_params(PROJECT_ROOT)
    assert params["profile"] == "demo"
    for key, value in profile_overrides("demo", PROJECT_ROOT).items():
        group, leaf = key.split(".")
        assert params[group][leaf] == value, key


def test_apply_micro_then_demo_round_trips_and_keeps_comments(project):
    before = (project / "params.yaml").read_text()
    changed = apply_profile("micro", project)
    assert changed["profile"] == ("demo", "micro")
    assert load_params(project)["synth"]["cells"] == profile_overrides("micro", project)["synth.cells"]
    assert "# The synthetic Major TOM world" in (project / "params.yaml").read_text()
    assert apply_profile("micro", project) == {}  # idempotent
    apply_profile("demo", project)
    assert (project / "params.yaml").read_text() == before


def test_applying_a_profile_keeps_params_yaml_readable_and_its_mode(project):
    """`mesa profile use` rewrites params.yaml: 0644 under umask 022 (DVC, teammates read it); a mode
    the user chose stays."""
    import os
    import stat

    path = project / "params.yaml"
    os.chmod(path, 0o644)
    old = os.umask(0o022)
    try:
        apply_profile("micro", project)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o640)
        os.umask(0o077)
        apply_profile("demo", project)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert sorted(p.name for p in project.iterdir()) == ["configs", "params.yaml"]  # no temporary left


def test_unknown_profile_and_disagreeing_profiles_are_clear_errors(project):
    with pytest.raises(ValueError, match="unknown profile 'huge'.*demo"):
        apply_profile("huge", project)
    (project / "configs" / "profiles" / "odd.yaml").write_text("synth:\n  cells: 3\n")
    with pytest.raises(ValueError, match="profile 'odd' does not set"):
        check_profiles_agree(project)


def test_params_read_as_yaml_1_2_like_dvc(project):
    """`dvc exp run -S train.mixed_precision=no` writes `no` unquoted: it must stay the string."""
    from components.params import load_config

    path = project / "params.yaml"
    path.write_text(path.read_text().replace('mixed_precision: "no"', "mixed_precision: no"))
    assert "mixed_precision: no " in path.read_text()
    assert load_params(project)["train"]["mixed_precision"] == "no"
    assert load_config(project).train.mixed_precision == "no"
