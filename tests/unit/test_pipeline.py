"""TerrainPipeline and DemRule: reproducibility, guidance, save/load, metres, exports (tiny, CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from components.model.dem_rule import DEM_RULE_FILE, DESCRIPTOR_ORDER, DemRule
from components.model.pipeline import PARTS, TerrainPipeline, build_pipeline
from testsupport.pipelines import TINY_STATS, tiny_random_pipeline

CAPTIONS = [
    "A Sentinel-2 image of deserts and plains in Spain in May",
    "A Sentinel-2 image of tundra and high mountains in Norway in July",
    "A Sentinel-2 image of temperate forests and hills in France in October",
]
STEPS = 3

TABLE = {
    "": 250.0,
    "biome=deserts": 600.0,
    "landform_local=plains": 150.0,
    "landform_local=mountains": 1500.0,
    "landform_local=high mountains": 2500.0,
    "country=Spain": 660.0,
    "biome=deserts|landform_local=plains": 420.0,
    "biome=deserts|country=Spain": 700.0,
    "biome=deserts|landform_local=plains|country=Spain": 510.0,
}
STATS = {"dem_scale_m": 800.0, "rgb_rule": {"gain": 2.5, "gamma": 2.2}, "base_elevation_m": TABLE}


@pytest.fixture(scope="module")
def pipe():
    p = tiny_random_pipeline(CAPTIONS, image_px=32, seed=0, stats=STATS)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def first(pipe):
    return pipe(CAPTIONS[:2], num_inference_steps=STEPS, seed=7)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "pipe"
    pipe.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ outputs and reproducibility
def test_output_shapes_and_dtypes(first):
    assert first.rgb.shape == (2, 32, 32, 3) and first.rgb.dtype == np.uint8
    assert first.dem_m.shape == (2, 32, 32) and first.dem_m.dtype == np.float32
    assert first.dem_relative.shape == (2, 32, 32) and first.dem_relative.dtype == np.float32
    assert np.isfinite(first.dem_m).all() and np.abs(first.dem_relative).max() <= 1.0
    assert first.prompts == CAPTIONS[:2] and first.seeds == [7, 8]
    assert first.settings == {"num_inference_steps": STEPS, "guidance_scale": 7.0, "eta": 0.0,
                              "scheduler": "DDIMScheduler", "height": 32, "width": 32, "cfg_mode": "batched"}
    # metres = relative * S + the prompt's base elevation
    for i, base in enumerate(first.base_elevation_m):
        np.testing.assert_allclose(first.dem_m[i], first.dem_relative[i] * 800.0 + base, rtol=0, atol=1e-3)
    assert first.base_elevation_key == ["biome=deserts|landform_local=plains|country=Spain", "landform_local=high mountains"]


def test_same_seed_same_sample_and_seed_list_matches(pipe, first):
    again = pipe(CAPTIONS[:2], num_inference_steps=STEPS, seed=[7, 8])
    assert np.array_equal(first.rgb, again.rgb) and np.array_equal(first.dem_m, again.dem_m)
    # an image depends on its own seed only, not on the batch it was generated in
    alone = pipe(CAPTIONS[1], num_inference_steps=STEPS, seed=8)
    np.testing.assert_allclose(alone.dem_relative[0], first.dem_relative[1], atol=1e-5)


def test_different_seeds_differ(pipe, first):
    other = pipe(CAPTIONS[:2], num_inference_steps=STEPS, seed=[100, 101])
    assert not np.array_equal(first.dem_relative, other.dem_relative)
    assert not np.array_equal(first.rgb, other.rgb)


def test_generator_wins_over_seed(pipe, first):
    gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    out = pipe(CAPTIONS[:2], num_inference_steps=STEPS, seed=12345, generator=gens)
    assert out.seeds == [None, None]
    assert np.array_equal(out.dem_m, first.dem_m)


def test_batched_cfg_equals_two_pass(pipe):
    batched = pipe(CAPTIONS[:2], num_inference_steps=STEPS, seed=3, negative_prompt="clouds",
                   output_type="pt", cfg_mode="batched")
    two_pass = pipe(CAPTIONS[:2], num_inference_steps=STEPS, seed=3, negative_prompt="clouds",
                    output_type="pt", cfg_mode="two_pass")
    torch.testing.assert_close(batched.dem_relative, two_pass.dem_relative, atol=1e-5, rtol=0)
    assert (batched.rgb.int() - two_pass.rgb.int()).abs().max() <= 1  # uint8 rounding at most


def test_guidance_one_skips_unconditional_branch(pipe):
    batches: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        pipe(CAPTIONS[:2], num_inference_steps=STEPS, guidance_scale=1.0, seed=1)
        assert batches == [2] * STEPS
        batches.clear()
        pipe(CAPTIONS[:2], num_inference_steps=STEPS, guidance_scale=7.0, seed=1)
        assert batches == [4] * STEPS  # one forward on uncond + cond
        batches.clear()
        pipe(CAPTIONS[:2], num_inference_steps=STEPS, guidance_scale=7.0, seed=1, cfg_mode="two_pass")
        assert batches == [2] * (2 * STEPS)
    finally:
        hook.remove()


@pytest.mark.parametrize("sampler", ["euler", "dpm++"])
def test_other_sampler_by_name(pipe, sampler):
    other = build_pipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, STATS, sampler=sampler)
    other.set_progress_bar_config(disable=True)
    out = other(CAPTIONS[0], num_inference_steps=2, seed=0)
    assert out.settings["scheduler"] == type(other.scheduler).__name__ != "DDIMScheduler"
    assert other.scheduler.config.prediction_type == "v_prediction"
    assert np.isfinite(out.dem_m).all() and out.rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="eta"):
        other(CAPTIONS[0], num_inference_steps=2, seed=0, eta=0.5)


def test_bad_arguments_say_what_to_do(pipe):
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe(CAPTIONS[0], num_inference_steps=1, height=30)
    with pytest.raises(ValueError, match="one per prompt"):
        pipe(CAPTIONS[:2], num_inference_steps=1, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="cfg_mode"):
        pipe(CAPTIONS[0], num_inference_steps=1, cfg_mode="fast")


# ------------------------------------------------------------------ save / load
def test_saved_folder_holds_every_part(saved):
    for part in PARTS:
        assert (saved / part).is_dir(), part
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "TerrainPipeline"
    assert index["unet"] == ["components.model.unet", "TwoHeadUNet"]
    assert (saved / "unet" / "config.json").is_file() and (saved / "vae" / "config.json").is_file()
    rule = json.loads((saved / DEM_RULE_FILE).read_text())
    assert rule["dem_scale_m"] == 800.0 and rule["base_elevation_m"] == TABLE
    assert rule["rgb_gain"] == 2.5 and rule["rgb_gamma"] == 2.2


def test_round_trip_gives_the_same_sample(saved, first, pipe):
    loaded = TerrainPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.dem_rule == pipe.dem_rule
    assert type(loaded.scheduler) is type(pipe.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert loaded.tokenizer(CAPTIONS[2])["input_ids"] == pipe.tokenizer(CAPTIONS[2])["input_ids"]
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    out = loaded(CAPTIONS[:2], num_inference_steps=STEPS, seed=7)
    assert np.array_equal(out.rgb, first.rgb) and np.array_equal(out.dem_m, first.dem_m)


@pytest.mark.parametrize("part", ["vae", "unet", DEM_RULE_FILE])
def test_missing_part_names_part_and_folder(saved, tmp_path, part):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    target = broken / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError) as err:
        TerrainPipeline.from_pretrained(broken)
    assert part in str(err.value) and str(broken) in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TerrainPipeline.from_pretrained(tmp_path / "nowhere")


def test_unknown_loading_arguments_are_refused(saved):
    # A hub option (revision) would otherwise be dropped without a word.
    with pytest.raises(TypeError, match=r"\['revision', 'variant'\].*folder, device and torch_dtype"):
        TerrainPipeline.from_pretrained(saved, revision="main", variant="fp16")


# ------------------------------------------------------------------ DemRule
def test_known_relative_dem_maps_to_metres():
    rule = DemRule.from_stats(STATS)
    elevation = np.array([[120.0, 900.0], [1300.0, 480.0]], dtype=np.float32)
    base = 510.0
    relative = np.clip((elevation - base) / 800.0, -1, 1)  # the prepare stage's rule
    np.testing.assert_allclose(rule.to_metres(relative, base), elevation, atol=1e-3)
    np.testing.assert_allclose(rule.to_metres(torch.from_numpy(relative), base), elevation, atol=1e-3)
    batch = np.stack([relative, relative])
    metres = rule.to_metres(batch, [base, 0.0])
    assert metres.dtype == np.float32
    np.testing.assert_allclose(metres[1], elevation - base, atol=1e-3)
    np.testing.assert_allclose(rule.to_relative(elevation, base), relative, atol=1e-6)
    with pytest.raises(ValueError, match="one base per image"):
        rule.to_metres(batch, [1.0, 2.0, 3.0])


def test_rgb_to_uint8_and_reflectance():
    x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], dtype=np.float32)
    assert DemRule.rgb_to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    rule = DemRule(dem_scale_m=1.0, rgb_gain=2.0, rgb_gamma=2.0)
    refl = 0.2
    stored = np.clip(2.0 * refl, 0, 1) ** (1 / 2.0)
    np.testing.assert_allclose(rule.rgb_to_reflectance(np.float32(stored * 2 - 1)), refl, rtol=1e-5)


@pytest.mark.parametrize(("prompt", "key", "value"), [
    ("A Sentinel-2 image of deserts and plains in Spain in May", "biome=deserts|landform_local=plains|country=Spain", 510.0),
    ("a sentinel-2 image of DESERTS in spain", "biome=deserts|country=Spain", 700.0),
    ("A Sentinel-2 image of deserts and plains in Chile", "biome=deserts|landform_local=plains", 420.0),
    # two single-descriptor keys match: biome comes first in the fixed order
    ("A Sentinel-2 image of deserts and mountains in Chile", "biome=deserts", 600.0),
    # longest match first: "high mountains" is not also read as "mountains"
    ("A Sentinel-2 image of high mountains in Norway", "landform_local=high mountains", 2500.0),
    # whole words only: "Spainish" is not Spain, "plainsong" is not plains
    ("Spainish plainsong", "", 250.0),
    ("", "", 250.0),
])
def test_base_elevation_picks_most_specific_key(prompt, key, value):
    assert DemRule.from_stats(STATS).base_elevation_for(prompt) == (value, key)


def test_base_elevation_without_table():
    assert DemRule(dem_scale_m=100.0).base_elevation_for("deserts in Spain") == (0.0, "none")
    no_global = DemRule(dem_scale_m=100.0, base_elevation_m={"country=Spain": 660.0})
    assert no_global.base_elevation_for("deserts in Chile") == (0.0, "none")


def test_dem_rule_save_load_and_errors(tmp_path):
    rule = DemRule.from_stats(STATS)
    rule.save(tmp_path)
    assert DemRule.load(tmp_path) == rule
    with pytest.raises(FileNotFoundError, match=DEM_RULE_FILE):
        DemRule.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="dem_scale_m"):
        DemRule(dem_scale_m=0.0)
    with pytest.raises(KeyError, match="dem_scale_m"):
        DemRule.from_stats({})
    with pytest.raises(ValueError, match="descriptor=value"):
        DemRule(dem_scale_m=1.0, base_elevation_m={"deserts": 1.0})


def test_descriptor_order_matches_stats():
    from components.samples.stats import BASE_ELEVATION_KEYS

    assert DESCRIPTOR_ORDER == BASE_ELEVATION_KEYS


def test_tiny_random_pipeline_is_seeded(pipe):
    again = tiny_random_pipeline(CAPTIONS, image_px=32, seed=0)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert again.dem_rule == DemRule.from_stats(TINY_STATS)


# ------------------------------------------------------------------ exports of a generated sample
def test_export_of_generated_sample(first, tmp_path):
    import rasterio

    from components.export.terrain import export_all, load_heightmap

    paths = export_all(first.rgb[0], first.dem_m[0], tmp_path, name="gen", extent_m=320.0,
                       prompt=first.prompts[0], seed=first.seeds[0])
    with rasterio.open(paths["rgb_tif"]) as src:
        assert src.count == 3 and src.dtypes == ("uint8",) * 3
        assert src.crs.to_epsg() // 100 in (326, 327)  # a UTM zone
        assert np.array_equal(src.read().transpose(1, 2, 0), first.rgb[0])
        assert src.tags()["seed"] == "7"
    with rasterio.open(paths["dem_tif"]) as src:
        assert src.count == 1 and src.dtypes == ("float32",)
        assert src.crs.to_epsg() // 100 in (326, 327)
        assert np.array_equal(src.read(1), first.dem_m[0])
    sidecar = json.loads(paths["heightmap_json"].read_text())
    back = load_heightmap(paths["heightmap_json"])
    assert np.abs(back - first.dem_m[0]).max() <= sidecar["scale_m_per_unit"] / 2 + 1e-3
