"""Sample shards, the held-out split and TerrainSampleDataset (8 x 8 images, a few shards)."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from components.captions.builder import augment_caption, build_caption
from components.samples.dataset import TerrainSampleDataset, collate
from components.samples.shards import (
    DESCRIPTOR_COLUMNS,
    SampleShardError,
    read_sample_shard,
    shard_info,
    write_sample_shard,
)
from components.samples.split import assign_split, split_key

SIDE, FACTOR = 8, 4
DEM_SCALE_M = 1000.0


def make_record(index: int, split: str = "train", shadow: bool = True, rng: np.random.Generator | None = None) -> dict:
    rng = rng or np.random.default_rng(index)
    cell = f"{index:03d}U_{(7 * index) % 1000:03d}R"
    dem = rng.normal(0.0, 800.0, (SIDE, SIDE)).astype(np.float32)
    dem[0, 0] = 2500.0  # beyond S: must clip to 1
    dem[0, 1] = -2500.0
    mask = (rng.random((SIDE, SIDE)) > 0.2).astype(np.uint8)
    record = {
        "grid_cell": cell,
        "split": split,
        "rgb": rng.integers(0, 65536, (SIDE, SIDE, 3), dtype=np.uint16),
        "rgb_shadow": rng.integers(0, 65536, (SIDE, SIDE, 3), dtype=np.uint16) if shadow else None,
        "dem": dem,
        "mask": mask,
        "mask_latent": mask.reshape(SIDE // FACTOR, FACTOR, SIDE // FACTOR, FACTOR).all(axis=(1, 3)).astype(np.uint8),
        "dem_mean_m": float(rng.uniform(-50, 4000)),
        "l1c_missing": not shadow,
        "country": "Switzerland",
        "country_short": None,
        "biome": "Temperate Broadleaf & Mixed Forests",
        "biome_short": "temperate broadleaf forests",
        "ecoregion": f"Ecoregion {index % 5}" if index % 3 else None,
        "ecoregion_short": None,
        "landform_local": ["hills", "plains", "mountains"][index % 3],
        "landform_local_short": None,
        "landform_regional": "The Alps" if index % 2 else None,
        "landform_regional_short": None,
        "month": ["March", "July"][index % 2],
        "month_short": None,
    }
    return record


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three shards of 30 samples (every 5th a test sample, every 4th without rgb_shadow)."""
    folder = tmp_path_factory.mktemp("samples")
    records = [make_record(i, "test" if i % 5 == 0 else "train", shadow=i % 4 != 0) for i in range(30)]
    paths = [
        write_sample_shard(folder / f"samples-{k:02d}.parquet", records[k::3], row_group_size=4) for k in range(3)
    ]
    return paths, {r["grid_cell"]: r for r in records}


def _ids(split: str, records: dict) -> set[str]:
    return {cell for cell, r in records.items() if r["split"] == split}


def _loader_ids(dataset: TerrainSampleDataset, num_workers: int) -> list[dict]:
    loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, collate_fn=collate)
    return list(loader)


# ---------------------------------------------------------------------------------------------
# shards


def test_shard_round_trip_is_exact_and_rewrite_byte_identical(tmp_path):
    records = [make_record(i, shadow=i % 2 == 0) for i in range(7)]
    first = write_sample_shard(tmp_path / "a.parquet", records, row_group_size=3)
    back = list(read_sample_shard(first))
    assert [r["sample_id"] for r in back] == sorted(r["grid_cell"] for r in records)
    by_cell = {r["grid_cell"]: r for r in records}
    for row in back:
        original = by_cell[row["grid_cell"]]
        for name in ("rgb", "dem", "mask", "mask_latent"):
            assert row[name].dtype == np.asarray(original[name]).dtype
            np.testing.assert_array_equal(row[name], original[name])
        if original["rgb_shadow"] is None:
            assert row["rgb_shadow"] is None
        else:
            np.testing.assert_array_equal(row["rgb_shadow"], original["rgb_shadow"])
        assert row["dem_mean_m"] == original["dem_mean_m"]
        assert row["l1c_missing"] is original["l1c_missing"]
        assert row["split"] == "train"
        for column in DESCRIPTOR_COLUMNS:
            assert row[column] == original[column]

    # the same records, in another order, to another path and over the first: the same bytes
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    second = write_sample_shard(tmp_path / "b.parquet", shuffled, row_group_size=3)
    assert first.read_bytes() == second.read_bytes()
    before = first.read_bytes()
    write_sample_shard(first, records, row_group_size=3)
    assert first.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    info = shard_info(first)
    assert info["rows"] == 7 and info["row_groups"] == 3 and info["row_group_size"] == 3
    assert info["shapes"]["rgb"] == (SIDE, SIDE, 3) and info["shapes"]["mask_latent"] == (2, 2)
    assert info["dtypes"]["dem"] == "<f4" and info["latent_factor"] == FACTOR
    assert info["splits"] == {"train": 7}
    assert info["rgb_shadow_rows"] == 4 and info["l1c_missing_rows"] == 3


def test_read_selected_columns(tmp_path):
    path = write_sample_shard(tmp_path / "s.parquet", [make_record(i) for i in range(5)], row_group_size=2)
    rows = list(read_sample_shard(path, columns=["grid_cell", "dem"]))
    assert len(rows) == 5 and all(set(r) == {"grid_cell", "dem"} for r in rows)
    with pytest.raises(ValueError, match="unknown sample column"):
        list(read_sample_shard(path, columns=["elevation"]))


def test_write_refuses_bad_records(tmp_path):
    good = [make_record(i) for i in range(3)]
    wrong_shape = [*good, {**make_record(9), "dem": np.zeros((4, 4), np.float32)}]
    with pytest.raises(SampleShardError, match="dem"):
        write_sample_shard(tmp_path / "x.parquet", wrong_shape)
    float_rgb = [{**make_record(1), "rgb": np.zeros((SIDE, SIDE, 3), np.float32)}]
    with pytest.raises(SampleShardError, match="uint16"):
        write_sample_shard(tmp_path / "x.parquet", float_rgb)
    with pytest.raises(SampleShardError, match="twice"):
        write_sample_shard(tmp_path / "x.parquet", [good[0], dict(good[0])])
    with pytest.raises(SampleShardError, match="unknown field"):
        write_sample_shard(tmp_path / "x.parquet", [{**good[0], "elevation": 1}])
    assert not (tmp_path / "x.parquet").exists()


# ---------------------------------------------------------------------------------------------
# split


def test_split_is_stable_when_cells_are_added_and_near_ten_percent():
    cells = [f"{r}U_{c}R" for r in range(100) for c in range(100)]
    split = assign_split(cells)
    assert set(np.unique(split)) == {"train", "test"}
    assert abs(np.mean(split == "test") - 0.1) < 0.015

    more = [f"{r}D_{c}L" for r in range(50) for c in range(50)]
    mixed = more[:1000] + cells[::-1] + more[1000:]
    again = dict(zip(mixed, assign_split(mixed)))
    assert all(again[c] == s for c, s in zip(cells, split))
    assert np.array_equal(assign_split(np.array(cells)), split)

    # a larger share only moves cells from train to test
    wider = assign_split(cells, test_share=0.2)
    assert np.all(wider[split == "test"] == "test")
    assert assign_split(cells, salt="other").tolist() != split.tolist()
    keys = split_key(cells)
    assert keys.min() >= 0.0 and keys.max() < 1.0
    with pytest.raises(ValueError, match="grid_cells"):
        assign_split(["1U_1R", None])


# ---------------------------------------------------------------------------------------------
# dataset


def test_two_ranks_two_workers_cover_every_sample_once_per_epoch(world):
    paths, records = world
    train = _ids("train", records)
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            dataset = TerrainSampleDataset(
                paths, "train", dem_scale_m=DEM_SCALE_M, seed=7, rank=rank, world_size=2, shuffle_buffer=4
            )
            dataset.set_epoch(epoch)
            batches = _loader_ids(dataset, num_workers=2)
            ids = [i for b in batches for i in b["sample_id"]]
            assert len(ids) == dataset.num_samples(rank=rank, num_workers=2)
            seen.append(ids)
        everything = seen[0] + seen[1]
        assert Counter(everything) == Counter(train)  # each training sample exactly once
        assert not set(seen[0]) & set(seen[1])
        orders.append(everything)
    assert orders[0] != orders[1]
    assert set(orders[0]) == set(orders[1])


def test_shuffle_crosses_shards_and_no_shuffle_is_stored_order(world):
    paths, records = world
    dataset = TerrainSampleDataset(paths, "train", dem_scale_m=DEM_SCALE_M, seed=1, shuffle_buffer=0)
    shard_of = {}
    for k, path in enumerate(paths):
        shard_of.update({r["sample_id"]: k for r in read_sample_shard(path, ["sample_id"])})
    ids = [item["sample_id"] for item in dataset]
    switches = sum(shard_of[a] != shard_of[b] for a, b in zip(ids, ids[1:]))
    assert switches >= 3  # row groups of different shards interleave
    plain = TerrainSampleDataset(paths, "train", dem_scale_m=DEM_SCALE_M, shuffle=False)
    stored = [r["sample_id"] for p in sorted(map(str, paths)) for r in read_sample_shard(p, ["sample_id", "split"])
              if r["split"] == "train"]
    assert [item["sample_id"] for item in plain] == stored


def test_drop_last_gives_every_consumer_the_same_count(world):
    paths, records = world
    counts = []
    for rank in (0, 1):
        dataset = TerrainSampleDataset(paths, dem_scale_m=DEM_SCALE_M, rank=rank, world_size=2, drop_last=True)
        counts.append(sum(1 for _ in dataset))
    n_train = len(_ids("train", records))
    assert counts[0] == counts[1] == n_train // 2


def test_captions_depend_on_seed_epoch_sample_not_on_workers(world):
    paths, records = world
    augmentation = {"p_uncond": 0.0}

    def captions(world_size: int, num_workers: int, epoch: int) -> dict[str, str]:
        out = {}
        for rank in range(world_size):
            dataset = TerrainSampleDataset(
                paths, dem_scale_m=DEM_SCALE_M, seed=11, augmentation=augmentation, rank=rank, world_size=world_size
            )
            dataset.set_epoch(epoch)
            for batch in _loader_ids(dataset, num_workers):
                out.update(zip(batch["sample_id"], batch["caption"]))
        return out

    single = captions(1, 0, epoch=3)
    assert captions(2, 2, epoch=3) == single
    for sample_id, caption in single.items():
        assert caption == augment_caption(records[sample_id], 11, 3, sample_id, augmentation)
    assert captions(1, 0, epoch=4) != single  # another epoch draws again


def test_without_augmentation_the_caption_is_the_full_one(world):
    paths, records = world
    dataset = TerrainSampleDataset(paths, "test", dem_scale_m=DEM_SCALE_M, augmentation=None)
    for item in dataset:
        assert item["caption"] == build_caption(records[item["sample_id"]])
        assert " and " in item["caption"] and " in Switzerland in " in item["caption"]


def test_values_and_shapes(world):
    paths, records = world
    dataset = TerrainSampleDataset(paths, dem_scale_m=DEM_SCALE_M, shuffle=False)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate)))
    assert batch["rgb"].shape == (4, 3, SIDE, SIDE) and batch["rgb"].dtype == torch.float32
    assert batch["dem"].shape == (4, 3, SIDE, SIDE) and batch["dem"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, SIDE, SIDE) and batch["mask_latent"].shape == (4, 1, 2, 2)
    assert batch["dem_mean_m"].shape == (4,) and len(batch["caption"]) == 4
    assert batch["rgb"].min() >= -1 and batch["rgb"].max() <= 1
    assert batch["dem"].min() == -1 and batch["dem"].max() == 1  # the +-2500 m pixels clip
    assert torch.equal(batch["dem"][:, 0], batch["dem"][:, 2])
    for i, sample_id in enumerate(batch["sample_id"]):
        record = records[sample_id]
        expected_rgb = torch.from_numpy(record["rgb"].astype(np.float32) / 65535 * 2 - 1).permute(2, 0, 1)
        torch.testing.assert_close(batch["rgb"][i], expected_rgb, rtol=0, atol=1e-6)
        expected_dem = np.clip(record["dem"] / DEM_SCALE_M, -1, 1)
        torch.testing.assert_close(batch["dem"][i, 1], torch.from_numpy(expected_dem), rtol=0, atol=1e-6)
        assert torch.equal(batch["mask"][i, 0], torch.from_numpy(record["mask"].astype(np.float32)))
        assert batch["dem_mean_m"][i].item() == pytest.approx(record["dem_mean_m"], rel=1e-6)
        assert batch["grid_cell"][i] == sample_id
    assert not batch["shadow_used"].any()


def test_shadow_uses_rgb_shadow_and_falls_back_to_rgb(world):
    paths, records = world
    dataset = TerrainSampleDataset(paths, dem_scale_m=DEM_SCALE_M, shadow=True, shuffle_buffer=5)
    items = list(dataset)
    assert {i["shadow_used"] for i in items} == {True, False}
    for item in items:
        record = records[item["sample_id"]]
        assert item["shadow_used"] == (record["rgb_shadow"] is not None)
        assert item["l1c_missing"] == (record["rgb_shadow"] is None)
        source = record["rgb_shadow"] if item["shadow_used"] else record["rgb"]
        expected = torch.from_numpy(source.astype(np.float32) / 65535 * 2 - 1).permute(2, 0, 1)
        torch.testing.assert_close(item["rgb"], expected, rtol=0, atol=1e-6)


def test_test_split_yields_only_test_samples(world):
    paths, records = world
    dataset = TerrainSampleDataset(paths, "test", dem_scale_m=DEM_SCALE_M, seed=2)
    ids = [item["sample_id"] for item in dataset]
    assert sorted(ids) == sorted(_ids("test", records))
    assert dataset.num_samples() == len(_ids("test", records))


def test_dataset_refuses_a_sample_in_two_shards(world, tmp_path):
    paths, records = world
    duplicate = write_sample_shard(tmp_path / "dup.parquet", [next(iter(records.values()))])
    with pytest.raises(SampleShardError, match="more than once"):
        TerrainSampleDataset([*paths, duplicate], dem_scale_m=DEM_SCALE_M)
