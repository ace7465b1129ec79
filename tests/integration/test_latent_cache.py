"""The latent cache: encoding sample shards with a tiny random VAE, the shards, the dataset."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from components.model.factories import build_vae, tiny_vae_config
from components.samples.dataset import TerrainSampleDataset, dem_to_model, rgb_to_model
from components.samples.latents.encode import encode_samples_to_latents, vae_config_hash, write_disabled_manifest
from components.samples.latents.read import (
    LatentSampleDataset,
    LatentShardReader,
    collate_latents,
    latent_shards,
    read_manifest,
    sample_posterior,
)
from components.samples.shards import SampleShardError, read_sample_shard, write_sample_shard

SIDE, FACTOR, DEM_SCALE_M = 32, 8, 1000.0  # the micro profile's sizes: 4 x 4 latents


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared, busy machine two OpenMP threads spin against each other
    and a tiny VAE forward takes ~1 s instead of ~10 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _record(index: int) -> dict:
    """A micro-sized sample: every 5th in the test split, every 3rd without rgb_shadow."""
    rng = np.random.default_rng(index)
    mask = (rng.random((SIDE, SIDE)) > 0.1).astype(np.uint8)
    mask_latent = mask.reshape(SIDE // FACTOR, FACTOR, SIDE // FACTOR, FACTOR).all(axis=(1, 3)).astype(np.uint8)
    if index == 4:
        mask_latent[:] = 0  # a fully masked sample still gets encoded
    dem = rng.normal(0.0, 600.0, (SIDE, SIDE)).astype(np.float32)
    dem[0, 0] = np.nan  # no-data: dem_to_model turns it into 0
    return {
        "grid_cell": f"{index:03d}U_{index * 7:03d}R",
        "split": "test" if index % 5 == 0 else "train",
        "rgb": rng.integers(0, 65536, (SIDE, SIDE, 3), dtype=np.uint16),
        "rgb_shadow": None if index % 3 == 0 else rng.integers(0, 65536, (SIDE, SIDE, 3), dtype=np.uint16),
        "dem": dem,
        "mask": mask,
        "mask_latent": mask_latent,
        "dem_mean_m": float(100 * index),
        "l1c_missing": index % 3 == 0,
        "country": "Switzerland",
        "biome": "Temperate Broadleaf & Mixed Forests",
        "biome_short": "temperate broadleaf forests",
        "landform_local": ["hills", "plains", "mountains"][index % 3],
        "month": ["March", "July"][index % 2],
    }


def _vae():
    torch.manual_seed(0)
    return build_vae(tiny_vae_config(latent_factor=FACTOR)).eval()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Two sample shards of 11 and 10 samples, row groups of 4."""
    folder = tmp_path_factory.mktemp("samples")
    records = [_record(i) for i in range(21)]
    return [write_sample_shard(folder / f"samples-{k:05d}.parquet", records[k::2], row_group_size=4) for k in range(2)]


@pytest.fixture(scope="module")
def cache(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    seen = []
    # batch_size 1: each sample goes through the VAE alone, as the direct encode in the test does
    report = encode_samples_to_latents(
        samples, _vae(), out, dem_scale_m=DEM_SCALE_M, batch_size=1, device="cpu",
        progress=lambda done, total, what: seen.append((done, total, what)),
    )
    return out, report, seen


def test_report_and_manifest(cache, samples):
    out, report, seen = cache
    vae = _vae()
    assert report["samples"] == 21 and report["shards"] == 2
    assert report["splits"] == {"test": 5, "train": 16}
    assert report["latent_shape"] == [4, SIDE // FACTOR, SIDE // FACTOR]
    assert report["scaling_factor"] == vae.config.scaling_factor
    assert report["vae_config_sha256"] == vae_config_hash(vae.config)
    assert seen[-1] == (21, 21, "samples")
    manifest = read_manifest(out)
    assert manifest["enabled"] is True and manifest["scaled"] is False
    assert [s["name"] for s in manifest["shards"]] == [p.name for p in samples]
    assert manifest["samples"] == 21 and manifest["rgb_shadow_samples"] == 14
    assert manifest["latent_shape"] == report["latent_shape"]
    assert manifest["vae_config_sha256"] == report["vae_config_sha256"]
    assert latent_shards(out) == [out / p.name for p in samples]


def test_cached_posterior_equals_a_direct_encode(cache, samples):
    out, _, _ = cache
    vae = _vae()
    stored = {s["sample_id"]: s for s in read_sample_shard(samples[1])}
    with LatentShardReader(out / samples[1].name) as reader:
        assert reader.metadata["row_group_size"] == 4 and reader.num_row_groups == 3
        cached = [row for g in range(reader.num_row_groups) for row in reader.read_row_group(g)]
    assert [c["sample_id"] for c in cached] == sorted(stored)
    with torch.no_grad():
        for row in cached:
            sample = stored[row["sample_id"]]
            assert {k: row[k] for k in ("grid_cell", "split", "dem_mean_m", "l1c_missing", "month")} == {
                k: sample[k] for k in ("grid_cell", "split", "dem_mean_m", "l1c_missing", "month")
            }
            assert np.array_equal(row["mask_latent"], sample["mask_latent"])
            for name, image in (("rgb", rgb_to_model(sample["rgb"])), ("dem", dem_to_model(sample["dem"], DEM_SCALE_M))):
                dist = vae.encode(image[None]).latent_dist
                np.testing.assert_allclose(row[f"{name}_latent_mean"], dist.mean[0].numpy(), rtol=0, atol=1e-6)
                np.testing.assert_allclose(row[f"{name}_latent_std"], dist.std[0].numpy(), rtol=0, atol=1e-6)
            if sample["rgb_shadow"] is None:
                assert row["rgb_shadow_latent_mean"] is None and row["rgb_shadow_latent_std"] is None
            else:
                dist = vae.encode(rgb_to_model(sample["rgb_shadow"])[None]).latent_dist
                np.testing.assert_allclose(row["rgb_shadow_latent_mean"], dist.mean[0].numpy(), rtol=0, atol=1e-6)


def test_two_runs_give_byte_identical_shards(cache, samples, tmp_path):
    out, _, _ = cache
    first, second = tmp_path / "first", tmp_path / "second"
    second.mkdir()
    (second / "stale.parquet").write_bytes(b"from an earlier run")
    for folder in (first, second):
        report = encode_samples_to_latents(samples, _vae(), folder, dem_scale_m=DEM_SCALE_M, batch_size=3, device="cpu")
    assert report["removed"] == ["stale.parquet"]
    for path in samples:
        assert (first / path.name).read_bytes() == (second / path.name).read_bytes()
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert (first / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert sorted(p.name for p in second.iterdir()) == sorted(p.name for p in out.iterdir())
    # batches of 3 hold the same latents as batches of 1, up to float rounding
    with LatentShardReader(first / samples[0].name) as batched, LatentShardReader(out / samples[0].name) as single:
        for group in range(single.num_row_groups):
            for a, b in zip(batched.read_row_group(group), single.read_row_group(group)):
                assert a["sample_id"] == b["sample_id"]
                np.testing.assert_allclose(a["dem_latent_mean"], b["dem_latent_mean"], rtol=0, atol=1e-5)


def test_dataset_covers_every_train_sample_once_and_ranks_split_it(cache):
    out, _, _ = cache
    shards = latent_shards(out)
    halves = []
    for rank in range(2):
        dataset = LatentSampleDataset(shards, "train", seed=3, rank=rank, world_size=2, shuffle_buffer=4)
        loader = DataLoader(dataset, batch_size=3, collate_fn=collate_latents)
        halves.append([sid for batch in loader for sid in batch["sample_id"]])
    assert not set(halves[0]) & set(halves[1])
    counts = Counter(halves[0] + halves[1])
    assert set(counts.values()) == {1} and len(counts) == 16
    assert abs(len(halves[0]) - len(halves[1])) <= 1


def test_dataset_items_follow_the_sample_dataset(cache, samples):
    out, _, _ = cache
    augmentation = {"caption_dropout": True, "p_drop": {0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1}, "p_uncond": 0.1}
    options = {"seed": 9, "shuffle": True, "shadow": True, "augmentation": augmentation, "shuffle_buffer": 5}
    latent = LatentSampleDataset(latent_shards(out), "train", dem_scale_m=DEM_SCALE_M, **options)
    plain = TerrainSampleDataset(samples, "train", dem_scale_m=DEM_SCALE_M, **options)
    items, reference = list(latent), list(plain)
    assert [i["sample_id"] for i in items] == [r["sample_id"] for r in reference]  # same order
    assert [i["caption"] for i in items] == [r["caption"] for r in reference]  # same augmentation
    assert [i["shadow_used"] for i in items] == [r["shadow_used"] for r in reference]
    assert any(i["shadow_used"] for i in items) and not all(i["shadow_used"] for i in items)
    with LatentShardReader(out / samples[0].name) as reader:
        rows = {r["sample_id"]: r for g in range(reader.num_row_groups) for r in reader.read_row_group(g)}
    for item in items:
        assert item["rgb_latent_mean"].shape == (4, 4, 4) and item["rgb_latent_mean"].dtype == torch.float32
        assert item["mask_latent"].shape == (1, 4, 4)
        row = rows.get(item["sample_id"])
        if row is not None:
            chosen = "rgb_shadow" if item["shadow_used"] else "rgb"
            assert np.array_equal(item["rgb_latent_mean"].numpy(), row[f"{chosen}_latent_mean"])
            assert np.array_equal(item["dem_latent_std"].numpy(), row["dem_latent_std"])
    batch = collate_latents(items[:5])
    assert batch["rgb_latent_mean"].shape == (5, 4, 4, 4) and batch["mask_latent"].shape == (5, 1, 4, 4)
    assert batch["shadow_used"].dtype == torch.bool and len(batch["caption"]) == 5
    assert latent.scaling_factor == 1.0


def test_dataset_refuses_a_cache_made_with_another_dem_scale(cache):
    out, _, _ = cache
    with pytest.raises(SampleShardError, match="dem_scale_m"):
        LatentSampleDataset(latent_shards(out), "train", dem_scale_m=2 * DEM_SCALE_M)


def test_a_companded_cache_records_its_knee_and_is_refused_by_a_linear_training(samples, tmp_path):
    """The knee changes what the DEM latents mean: a cache made with one must not train a model without it."""
    report = encode_samples_to_latents(samples[:1], _vae(), tmp_path, dem_scale_m=DEM_SCALE_M, dem_knee_m=25.0,
                                       batch_size=4, device="cpu")
    assert report["samples"] > 0
    shards = latent_shards(tmp_path)
    companded = LatentSampleDataset(shards, "train", dem_scale_m=DEM_SCALE_M, dem_knee_m=25.0)
    assert companded.dem_knee_m == 25.0 and LatentSampleDataset(shards, "train").dem_knee_m == 25.0
    with pytest.raises(SampleShardError, match="dem_knee_m 25.0 but training uses None"):
        LatentSampleDataset(shards, "train", dem_scale_m=DEM_SCALE_M)


def test_sample_posterior_is_mean_plus_std_times_noise():
    mean, std = torch.full((2, 4, 3, 3), 2.0), torch.full((2, 4, 3, 3), 0.5)
    draw = sample_posterior(mean, std, torch.Generator().manual_seed(1))
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(draw, mean + std * noise)
    assert torch.equal(sample_posterior(mean, torch.zeros_like(std), torch.Generator()), mean)


def test_config_hash_is_the_same_for_a_saved_and_reloaded_vae(tmp_path):
    from diffusers import AutoencoderKL

    vae = _vae()
    vae.save_pretrained(tmp_path / "vae")
    again = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae_config_hash(again.config) == vae_config_hash(vae.config)
    assert vae_config_hash(build_vae(tiny_vae_config(latent_channels=8)).config) != vae_config_hash(vae.config)


def test_disabled_manifest_round_trips(tmp_path):
    (tmp_path / "old.parquet").write_bytes(b"x")
    path = write_disabled_manifest(tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest["enabled"] is False and json.loads(path.read_text()) == manifest
    assert not (tmp_path / "old.parquet").exists()
    with pytest.raises(SampleShardError, match="disabled"):
        latent_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match="latents stage"):
        read_manifest(tmp_path / "missing")


def test_micro_samples_of_the_prepare_stage(prepared_project, tmp_path):
    """The real prepare stage's micro shards: every sample cached, means equal a direct encode."""
    project, _ = prepared_project
    shards = sorted((project / "data" / "samples").glob("*.parquet"))
    dem_scale_m = json.loads((project / "data" / "samples" / "stats.json").read_text())["dem_scale_m"]
    vae = _vae()
    report = encode_samples_to_latents(shards, vae, tmp_path, dem_scale_m=dem_scale_m, batch_size=1, device="cpu")
    stored = [s for path in shards for s in read_sample_shard(path)]
    assert report["samples"] == len(stored) > 0
    sample = stored[0]
    with LatentShardReader(tmp_path / shards[0].name) as reader:
        row = reader.read_row_group(0, ["sample_id", "dem_latent_mean", "rgb_latent_mean"], [0])[0]
    assert row["sample_id"] == sample["sample_id"]
    with torch.no_grad():
        rgb = vae.encode(rgb_to_model(sample["rgb"])[None]).latent_dist.mean[0].numpy()
        dem = vae.encode(dem_to_model(sample["dem"], dem_scale_m)[None]).latent_dist.mean[0].numpy()
    np.testing.assert_allclose(row["rgb_latent_mean"], rgb, rtol=0, atol=1e-6)
    np.testing.assert_allclose(row["dem_latent_mean"], dem, rtol=0, atol=1e-6)
