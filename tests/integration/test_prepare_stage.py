"""The prepare stage on the curated, captioned micro world: samples, both variants, stats.json."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.majortom.synthetic.render import sun_position
from components.radiometry.hillshade import hillshade
from components.radiometry.normalise import decode_rgb, denormalise_dem
from components.samples.shards import read_sample_shard


@pytest.fixture(scope="module")
def prepared(prepared_project):
    project, world = prepared_project
    report = json.loads((project / "reports/prepare.json").read_text())
    samples = [s for shard in sorted((project / "data/samples").glob("*.parquet")) for s in read_sample_shard(shard)]
    stats = json.loads((project / "data/samples/stats.json").read_text())
    return project, report, samples, stats, world


def test_every_kept_cell_becomes_one_sample_with_both_variants(prepared):
    project, report, samples, stats, _ = prepared
    index = pd.read_parquet(project / "data/curated/index.parquet")
    assert sorted(s["grid_cell"] for s in samples) == sorted(index["grid_cell"])
    assert report["samples"] == stats["samples"] == len(samples)
    px = 32  # the micro profile
    for sample in samples:
        assert sample["rgb"].shape == sample["rgb_shadow"].shape == (px, px, 3)
        assert sample["rgb"].dtype == np.uint16 and sample["dem"].dtype == np.float32
        assert sample["mask"].shape == (px, px) and sample["mask_latent"].shape == (px // 8, px // 8)
        assert sample["split"] in ("train", "test") and sample["country"]
    assert stats["splits"]["train"] + stats["splits"]["test"] == len(samples)


def test_dem_back_to_metres_matches_the_source_tile(prepared):
    project, _, samples, stats, _ = prepared
    index = pd.read_parquet(project / "data/curated/index.parquet").set_index("grid_cell")
    for sample in samples[:5]:
        metres = sample["dem"] + sample["dem_mean_m"]
        valid = sample["mask"] > 0
        # Area means of the footprint stay inside the tile's own range.
        row = index.loc[sample["grid_cell"]]
        assert metres[valid].min() >= row["dem_min_m"] - 1 and metres[valid].max() <= row["dem_max_m"] + 1
        normalised = np.clip(sample["dem"] / stats["dem_scale_m"], -1, 1)
        back = denormalise_dem(normalised, sample["dem_mean_m"], stats["dem_scale_m"])
        unclipped = valid & (np.abs(sample["dem"]) < stats["dem_scale_m"])
        assert np.sqrt(np.mean((back[unclipped] - metres[unclipped]) ** 2)) < 1.0


def test_shadow_corrected_images_keep_the_shading_plain_l2a_flattens(prepared):
    """Data-level: luminance of the corrected image follows the DEM's relief more than plain L2A's."""
    _, _, samples, stats, world = prepared
    mountains = world[world["landform"].isin(["low mountains", "high mountains"])].set_index("grid_cell")
    gains = []
    rule = stats["rgb_rule"]
    for sample in samples:
        if sample["grid_cell"] not in mountains.index or sample["mask"].mean() < 0.5:
            continue
        cell = mountains.loc[sample["grid_cell"]]
        sun = sun_position(cell["centre_lat"], cell["acquired"].month)  # that scene's sun
        shade = hillshade(sample["dem"], 7680.0 / sample["dem"].shape[0], sun)
        valid = sample["mask"] > 0
        plain = decode_rgb(sample["rgb"], rule["gain"], rule["gamma"]).mean(axis=-1)
        corrected = decode_rgb(sample["rgb_shadow"], rule["gain"], rule["gamma"]).mean(axis=-1)
        r_plain = np.corrcoef(plain[valid], shade[valid])[0, 1]
        r_corr = np.corrcoef(corrected[valid], shade[valid])[0, 1]
        gains.append(r_corr - r_plain)
    assert len(gains) >= 3
    assert np.median(gains) > 0.1, gains


def test_stats_json_has_the_rules_generation_needs(prepared):
    _, report, _, stats, _ = prepared
    assert stats["dem_scale_m"] > 0 and 0 <= stats["dem_clipped_share"] < 0.05
    assert "" in stats["base_elevation_m"] and any(k.startswith("landform_local=") for k in stats["base_elevation_m"])
    assert report["rejected"] == 0


def test_a_missing_l1c_falls_back_to_l2a_and_is_recorded(prepared):
    from components.curation.curate import absolute_shard_paths
    from components.params import load_params
    from components.samples.prepare import PrepareParams, build_sample

    project = prepared[0]
    params = load_params(project)
    settings = PrepareParams.from_params(params["prepare"], params["validate"]["cloud_classes"])
    row = absolute_shard_paths(pd.read_parquet(project / "data/curated/index.parquet"), project).iloc[0].copy()
    row["s2l1c_shard"] = None
    sample = build_sample(row, {}, settings, "train")
    assert sample["l1c_missing"] is True and sample["rgb_shadow"] is None
    assert sample["rgb"].shape == (32, 32, 3)


def test_an_all_cloud_footprint_is_rejected_with_a_reason(prepared, tmp_path):
    from components.curation.curate import absolute_shard_paths
    from components.params import load_params
    from components.samples.prepare import PrepareParams, prepare_cells

    project = prepared[0]
    params = load_params(project)
    # Every cloud_mask code counts as cloud: nothing in the footprint is usable.
    settings = PrepareParams.from_params(params["prepare"], [0, 1, 2, 3])
    index = absolute_shard_paths(pd.read_parquet(project / "data/curated/index.parquet"), project).head(2)
    samples, rejected = prepare_cells(index, pd.DataFrame({"grid_cell": []}), {c: "train" for c in index["grid_cell"]},
                                      settings)
    assert samples == [] and [r["reason"] for r in rejected] == ["all_masked", "all_masked"]


@pytest.mark.slow
def test_prepare_on_a_local_dask_cluster_writes_the_same_bytes(prepared_project, tmp_path):
    """prefect-dask on a real LocalCluster of 2 worker processes: byte-identical shards.

    Slow tier: starting the cluster and its two workers, about 1 minute on 2 cores."""
    import shutil

    import yaml

    from flows.stages import run_stage

    project, _ = prepared_project
    clone = tmp_path / "dask-project"
    clone.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(project / name, clone / name)
    (clone / "data").mkdir()
    for name in ("raw", "curated", "captions"):
        (clone / "data" / name).symlink_to((project / "data" / name).resolve(), target_is_directory=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["runner"] = {"kind": "dask", "dask_address": None, "dask_workers": 2}
    (clone / "params.yaml").write_text(yaml.safe_dump(params))

    run_stage("prepare", clone)
    threads = sorted(p.name for p in (project / "data/samples").iterdir())
    assert sorted(p.name for p in (clone / "data/samples").iterdir()) == threads
    for name in threads:
        assert (clone / "data/samples" / name).read_bytes() == (project / "data/samples" / name).read_bytes(), name
