"""`mesa generate`: a saved pipeline -> GeoTIFFs, heightmaps, previews and generation.json per seed."""
from __future__ import annotations

import json

import numpy as np
import rasterio
from typer.testing import CliRunner

from flows.cli import app


def test_generate_writes_every_export_per_seed_and_is_reproducible(tmp_path, monkeypatch):
    from testsupport.pipelines import tiny_random_pipeline

    captions = ["A Sentinel-2 image of deserts and hills in Chile in March",
                "A Sentinel-2 image of temperate forests and plains in France in June"]
    stats = {"dem_scale_m": 500.0, "rgb_rule": {"gain": 2.5, "gamma": 2.0},
             "base_elevation_m": {"": 300.0, "landform_local=hills": 800.0}}
    tiny_random_pipeline(captions, image_px=32, seed=0, stats=stats).save_pretrained(tmp_path / "pipe")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["generate", captions[0], "--model", str(tmp_path / "pipe"), "--seed", "42", "--seed", "50",
            "--steps", "2", "--guidance", "3"]
    first = runner.invoke(app, [*args, "--out", "a"])
    assert first.exit_code == 0, first.output
    assert "seed 42" in first.output and "landform_local=hills" in first.output
    manifest = json.loads((tmp_path / "a/generation.json").read_text())
    assert [g["seed"] for g in manifest["generations"]] == [42, 50]
    assert manifest["settings"]["guidance_scale"] == 3 and manifest["settings"]["num_inference_steps"] == 2
    for generation in manifest["generations"]:
        for name in generation["files"]:
            assert (tmp_path / "a" / name).exists(), name
    with rasterio.open(tmp_path / "a/seed_42_dem.tif") as dem, rasterio.open(tmp_path / "a/seed_42_rgb.tif") as rgb:
        assert dem.crs.is_projected and dem.dtypes == ("float32",) and rgb.dtypes == ("uint8",) * 3
        heights = dem.read(1)
    # The base elevation of the prompt's landform: relative heights lie within +-S around it.
    assert np.all(np.abs(heights - 800.0) <= 500.0 + 1e-3)

    second = runner.invoke(app, [*args, "--out", "b"])
    assert second.exit_code == 0, second.output
    with rasterio.open(tmp_path / "b/seed_42_dem.tif") as again:
        assert np.array_equal(again.read(1), heights)  # same seed, same terrain


def test_generate_names_a_missing_model():
    result = CliRunner().invoke(app, ["generate", "hills", "--model", "no/such/folder"])
    assert result.exit_code != 0
    assert "no/such/folder" in str(result.exception) or "no/such/folder" in result.output
