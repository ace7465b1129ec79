"""The typed params layer (components/config): the committed params and profiles pass, every group
refuses wrong types, unknown keys and out-of-range values with one message naming the key path, the
file and the profile that set it; the CLI prints that message (exit 2) instead of a traceback."""
from __future__ import annotations

import copy
import pickle
import shutil

import pytest
import yaml
from ruamel.yaml import YAML

from components.config import ParamsError, PipelineConfig
from components.params import apply_profile, available_profiles, load_config, load_params, profile_overrides
from tests.conftest import PROJECT_ROOT

COMMITTED = load_params(PROJECT_ROOT)

# Per group: a key of it, a value of the wrong type, and what the message says is allowed.
WRONG_TYPE = {
    "profile": ("profile", 5, "must be a valid string"),
    "data": ("data.ingest.concurrency", "8", "must be a whole number"),
    "synth": ("synth.cells", 2.5, "must be a whole number"),
    "validate": ("validate.cloud_classes", "1,2,3", "must be a list"),
    "layers": ("layers.country", "natural earth", "must be a mapping"),
    "captions": ("captions.augmentation.caption_dropout", "yes", "must be true or false"),
    "prepare": ("prepare.rgb_rule.gain", "2.5", "must be a number"),
    "shadow": ("shadow.enabled", "false", "must be true or false"),
    "model": ("model.text", [2048, 32], "must be a mapping"),
    "vae": ("vae.augment", 1, "must be true or false"),
    "latents": ("latents.batch_size", 32.0, "must be a whole number"),
    "train": ("train.batch_size", "16", "must be a whole number"),
    "sample": ("sample.guidance", "7", "must be a number"),
    "evaluate": ("evaluate.seeds", 42, "must be a list"),
    "runner": ("runner.dask_workers", True, "must be a whole number"),
    "registry": ("registry.register", "true", "must be true or false"),
    "versioning": ("versioning.push", "no", "must be true or false"),
    "deploy": ("deploy.retrain_cron", 3, "must be a valid string"),
    "ablation": ("ablation.shadow", True, "must be a list"),
}
# Per group: a value outside its range or its choices.
OUT_OF_RANGE = {
    "profile": ("profile", "huge", "not a profile in configs/profiles"),
    "data": ("data.source", "sentinel", "must be 'synth', 'ingest' or 'majortom'"),
    "synth": ("synth.cloudy_share", 1.5, "must be <= 1"),
    "validate": ("validate.filters.too_little_valid_area.min_valid_fraction", -0.1, "must be >= 0"),
    "layers": ("layers.ecoregion.max_distance_m", -5.0, "must be >= 0"),
    "captions": ("captions.augmentation.p_uncond", 2.0, "must be <= 1"),
    "prepare": ("prepare.test_share", 1.2, "must be <= 1"),
    "shadow": None,  # one true/false key: nothing has a range
    "model": ("model.unet", "huge", "must be 'tiny', 'published_tiny' or 'paper'"),
    "vae": ("vae.adam_beta2", 1.0, "must be < 1"),
    "latents": ("latents.batch_size", 0, "must be >= 1"),
    "train": ("train.mixed_precision", "fp8", "must be 'no', 'fp16' or 'bf16'"),
    "sample": ("sample.steps", 0, "must be >= 1"),
    "evaluate": ("evaluate.grid_cells", 0, "must be >= 1"),
    "runner": ("runner.kind", "slurm", "must be 'threads' or 'dask'"),
    "registry": ("registry.gate.max_regression", -0.1, "must be >= 0"),
    "versioning": ("versioning.remote", "  ", "must not be empty"),
    "deploy": ("deploy.retrain_cron", "weekly", "must be a cron expression"),
    "ablation": ("ablation.caption_dropout", [], "must have at least 1 item"),
}
GROUPS = sorted(WRONG_TYPE)


@pytest.fixture
def project(tmp_path):
    """A folder with the committed params.yaml, dvc.yaml and profiles (no data)."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(PROJECT_ROOT / "configs", tmp_path / "configs")
    return tmp_path


def _write(project, **changes) -> None:
    """params.yaml with dotted keys (written ``a__b``) set to values, a key set to ... removed."""
    params = copy.deepcopy(COMMITTED)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = params
        for part in parents:
            node = node[part]
        node.pop(leaf) if value is ... else node.__setitem__(leaf, value)
    with open(project / "params.yaml", "w") as handle:
        YAML(typ="safe", pure=True).dump(params, handle)


def _only_problem(project, dotted: str) -> ParamsError:
    with pytest.raises(ParamsError) as caught:
        load_config(project)
    error = caught.value
    assert [p.path for p in error.problems] == [dotted], str(error)
    assert str(project / "params.yaml") in str(error) and dotted in str(error)
    return error


def test_the_committed_params_and_every_profile_validate(project):
    config = load_config(PROJECT_ROOT)
    assert isinstance(config, PipelineConfig) and config.profile == COMMITTED["profile"]
    assert set(COMMITTED) == set(PipelineConfig.model_fields), "a group without a model, or a model without a group"
    assert set(available_profiles(project)) >= {"demo", "micro", "paper"}
    for name in available_profiles(project):
        apply_profile(name, project)
        config = load_config(project)
        for dotted, value in profile_overrides(name, project).items():
            group, *rest = dotted.split(".")
            node = getattr(config, group)
            for key in rest:
                node = getattr(node, key)
            assert node == value, dotted


def test_load_params_keeps_the_plain_values_dvc_reads():
    assert COMMITTED == YAML(typ="safe", pure=True).load((PROJECT_ROOT / "params.yaml").read_text())
    assert COMMITTED["train"]["mixed_precision"] == "no" and COMMITTED["evaluate"]["grid_captions"] == []


@pytest.mark.parametrize("group", GROUPS)
def test_a_wrong_type_is_named_by_its_key_path(project, group):
    dotted, value, allowed = WRONG_TYPE[group]
    _write(project, **{dotted.replace(".", "__"): value})
    error = _only_problem(project, dotted)
    assert f"{dotted} = {value!r}: {allowed}" in str(error)


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "profile"])
def test_an_unknown_key_is_named_with_what_the_group_takes(project, group):
    dotted = f"{group}.stpes"
    _write(project, **{dotted.replace(".", "__"): 10})
    error = _only_problem(project, dotted)
    assert f"{dotted} = 10: unknown key" in str(error)
    assert f"{group} takes {next(iter(COMMITTED[group]))}" in str(error)


@pytest.mark.parametrize("group", [g for g in GROUPS if OUT_OF_RANGE[g]])
def test_an_out_of_range_value_is_named_with_its_range(project, group):
    dotted, value, allowed = OUT_OF_RANGE[group]
    _write(project, **{dotted.replace(".", "__"): value})
    error = _only_problem(project, dotted)
    assert f"{dotted} = {value!r}: {allowed}" in str(error)


def test_a_typo_gets_a_suggestion_and_an_unknown_group_is_named(project):
    _write(project, train__mixd_precision="no", foo=1)
    with pytest.raises(ParamsError) as caught:
        load_config(project)
    text = str(caught.value)
    assert "train.mixd_precision = 'no': unknown key (did you mean 'mixed_precision'?)" in text
    assert "foo = 1: unknown key; params.yaml takes profile, data, synth" in text


def test_every_problem_is_listed_in_one_message(project):
    _write(project, train__batch_size=0, train__steps=..., shadow__enabled=..., vae__loss="huber")
    with pytest.raises(ParamsError) as caught:
        load_params(project)
    error = caught.value
    assert {p.path for p in error.problems} == {"train.batch_size", "shadow.enabled", "vae.loss"}
    assert str(error).splitlines()[0] == f"{project / 'params.yaml'}: 3 invalid params"
    assert "shadow.enabled: missing (required)" in str(error)  # train.steps has a default


def test_checks_across_keys_name_the_key_to_change(project):
    _write(project, data__raw_dir="data/majortom")
    assert "must be data/raw with data.source synth" in str(_only_problem(project, "data.raw_dir"))
    _write(project, data__source="ingest", data__raw_dir="data/elsewhere")
    assert "must equal data.ingest.out_dir (data/majortom)" in str(_only_problem(project, "data.raw_dir"))
    _write(project, data__ingest__out_dir="data/raw/real")
    assert "inside data/raw" in str(_only_problem(project, "data.ingest.out_dir"))
    _write(project, prepare__image_px=12)
    assert "must be a multiple of latent_factor (8)" in str(_only_problem(project, "prepare.image_px"))
    _write(project, captions__landform_thresholds={"plains_relief_m": 20.0})
    assert "must be above flat_relief_m (30)" in str(_only_problem(project, "captions.landform_thresholds."
                                                                             "plains_relief_m"))
    _write(project, layers__country={"kind": "country", "path": "x.gpkg"})
    assert "not a key of a country layer" in str(_only_problem(project, "layers.country.path"))


def test_the_profile_that_sets_a_bad_key_is_named(project):
    profile = project / "configs/profiles/demo.yaml"
    assert "train.batch_size" in profile_overrides(COMMITTED["profile"], project)
    # The bad value comes from the profile: fix it there, then apply the profile again.
    profile.write_text(profile.read_text().replace("batch_size: 16", "batch_size: 0"))
    _write(project, train__batch_size=0, train__seed="0")
    text = str(pytest.raises(ParamsError, load_config, project).value)
    assert "train.batch_size = 0: must be >= 1 (set by profile configs/profiles/demo.yaml)" in text
    assert "train.seed = '0': must be a whole number\n" in text  # no profile sets train.seed
    assert text.endswith("fix it in configs/profiles/demo.yaml, then run `mesa profile use demo`.")
    # params.yaml changed after the profile was applied: the line says what the profile sets.
    profile.write_text(profile.read_text().replace("batch_size: 0", "batch_size: 16"))
    text = str(pytest.raises(ParamsError, load_config, project).value)
    assert "train.batch_size = 0: must be >= 1 (profile configs/profiles/demo.yaml sets 16)" in text
    assert "mesa profile use" not in text


def test_a_profile_that_would_make_params_invalid_is_refused(project):
    before = (project / "params.yaml").read_text()
    micro = yaml.safe_load((project / "configs/profiles/micro.yaml").read_text())
    micro["train"]["batch_size"] = 0
    (project / "configs/profiles/tiny.yaml").write_text(yaml.safe_dump(micro))
    with pytest.raises(ParamsError, match=r"profile 'tiny' would make .*params\.yaml invalid(.|\n)*"
                                          r"train\.batch_size = 0: must be >= 1 \(set by profile "
                                          r"configs/profiles/tiny\.yaml\)"):
        apply_profile("tiny", project)
    assert (project / "params.yaml").read_text() == before


@pytest.mark.parametrize("command, expected", [
    (["profile", "use", "tiny"], "train.batch_size = 0: must be >= 1 (set by profile configs/profiles/tiny.yaml)"),
    (["stage", "synth"], "train.batch_size = 0: must be >= 1"),
    (["stage", "train"], "train.accelerate_config = 'infra/accelerate/gone.yaml': names "),
])
def test_the_cli_prints_a_params_error_as_one_message_with_exit_code_2(project, monkeypatch, capsys, command,
                                                                        expected):
    from flows.cli import app

    micro = yaml.safe_load((project / "configs/profiles/micro.yaml").read_text())
    micro["train"]["batch_size"] = 0
    (project / "configs/profiles/tiny.yaml").write_text(yaml.safe_dump(micro))
    if command[1] == "synth":
        _write(project, train__batch_size=0)
    if command[1] == "train":  # checked before the stage's flow (and a Prefect server) starts
        _write(project, train__accelerate_config="infra/accelerate/gone.yaml")
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exited:
        app(command, prog_name="mesa")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mesa: ") and str(project / "params.yaml") in err.splitlines()[0] and expected in err
    assert "Traceback" not in err


def test_loaded_once_per_content_and_handed_out_safely(project):
    first = load_config(project)
    assert load_config(project) is first  # parsed and checked once
    params = load_params(project)
    params["train"]["steps"] = -1  # a caller's change stays its own
    assert load_params(project)["train"]["steps"] == COMMITTED["train"]["steps"]
    _write(project, train__steps=7)
    assert load_config(project).train.steps == 7  # same mtime tick or not: the content decides
    with pytest.raises(Exception):
        first.train.steps = 1  # read-only: one object is shared by every reader
    assert load_params(project, validate=False)["train"]["steps"] == 7


def test_a_group_alone_names_its_keys_and_the_error_survives_pickling():
    from components.config import ShadowConfig, TrainConfig

    with pytest.raises(ParamsError) as caught:
        TrainConfig.from_params({"steps": 0, "resume": "yesterday"})
    assert [p.path for p in caught.value.problems] == ["train.steps", "train.resume"]
    assert "train.resume = 'yesterday': must be 'latest', 'none' or a checkpoint folder name" in str(caught.value)
    with pytest.raises(ParamsError) as caught:
        ShadowConfig.from_params({})
    error = caught.value
    assert str(error) == "params: 1 invalid param\n  shadow.enabled: missing (required)"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # Prefect pickles a failed flow's error
    assert isinstance(error, ValueError)


def test_the_schema_keeps_the_components_defaults():
    """The config package imports only pydantic, so it mirrors these tables: they must stay equal."""
    from components.captions.builder import DEFAULT_AUGMENTATION
    from components.captions.descriptors import DEFAULT_DESCRIPTOR_PARAMS
    from components.captions.landform import DEFAULT_LANDFORM_THRESHOLDS, LANDFORM_CLASSES
    from components.captions.layers.factory import _SPEC_KEYS
    from components.config import AugmentationConfig, CaptionsConfig, LandformThresholds, SynthConfig, ValidateConfig
    from components.config.captions import LAYER_KEYS
    from components.config.train import Sampler
    from components.config.validate import ContractSettings, FilterRules
    from components.curation.contracts.suites import DEFAULT_CONTRACT_PARAMS
    from components.curation.filters import DEFAULT_FILTERS
    from components.model.factories import SAMPLERS
    from typing import get_args

    assert AugmentationConfig().model_dump() == DEFAULT_AUGMENTATION
    assert LandformThresholds().model_dump() == DEFAULT_LANDFORM_THRESHOLDS
    captions = CaptionsConfig.model_fields
    for key in ("max_distance_m", "workers", "chunk_cells"):
        assert captions[key].default == DEFAULT_DESCRIPTOR_PARAMS[key], key
    assert tuple(SynthConfig().landforms) == LANDFORM_CLASSES
    assert {kind: keys - {"optional"} for kind, keys in LAYER_KEYS.items()} == _SPEC_KEYS
    assert set(get_args(Sampler)) == set(SAMPLERS)
    rules = FilterRules.model_fields
    assert {name: rules[name].annotation.__args__[0]().model_dump() for name in rules} == DEFAULT_FILTERS
    contract = ContractSettings().model_dump()
    assert {**contract, "dem_range_m": list(contract["dem_range_m"])} == DEFAULT_CONTRACT_PARAMS
    assert ValidateConfig.model_fields["workers"].default == 1
