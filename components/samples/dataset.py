"""``TerrainSampleDataset``: the trainer's view of the sample shards.

How an epoch's work is split (every sample of the split exactly once, over all consumers):

1. The index (built once, from the shards' footers and ``split`` columns) lists the split's
   samples as (shard, row group, row). Shard paths are sorted, so the order they are given in
   does not matter.
2. The epoch's global order: the row groups of *all* shards are permuted by a generator seeded
   by (seed, epoch), and the samples inside each row group are permuted too. So consecutive
   samples come from unrelated shards, and each row group is still one contiguous run.
3. Consumers are the (rank, DataLoader worker) pairs, numbered ``rank * num_workers + worker``.
   Consumer c of N takes the c-th of N contiguous, near-equal slices of that order (sizes
   differ by at most one; ``drop_last=True`` makes them equal). A contiguous slice, not every
   N-th sample, so each row group is read by one consumer (two at a slice boundary) rather
   than by all N of them.
4. Each consumer streams its slice one row group at a time through a bounded shuffle buffer
   (``shuffle_buffer`` samples, kept as compact uint16/float32/uint8 copies), seeded by
   (seed, epoch, consumer), which mixes the row groups it reads.

The order depends on (seed, epoch, world_size, num_workers); the caption of a sample depends
only on (seed, epoch, sample_id), so it is the same whatever the number of workers or ranks.

Using it with accelerate: give each process its own DataLoader over this dataset and do *not*
pass that DataLoader through ``accelerator.prepare``: accelerate shards an IterableDataset
itself (``IterableDatasetShard`` or batch dispatch from rank 0), and expects every process to
see the whole stream, so the two shardings together would drop samples. ``rank`` and
``world_size`` default to torch.distributed's when it is initialised (pass
``accelerator.process_index`` / ``accelerator.num_processes`` explicitly when the dataset is
built before the process group exists, or when workers are spawned rather than forked).
Call ``set_epoch(e)`` before each epoch; with ``persistent_workers=True`` the workers keep
the epoch they started with, so leave it False (the default).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from components.captions.builder import augment_caption, build_caption, check_augmentation
from components.samples.dem_encoding import check_dem_encoding, encode_dem
from components.samples.shards import DESCRIPTOR_COLUMNS, SampleShardError, SampleShardReader

__all__ = ["TerrainSampleDataset", "collate", "rgb_to_model", "dem_to_model"]

_SCALARS = ("sample_id", "grid_cell", "dem_mean_m", "l1c_missing", *DESCRIPTOR_COLUMNS)
_MASKS = ("dem", "mask", "mask_latent")


def _rng(seed: int, epoch: int, purpose: str) -> np.random.Generator:
    """A generator that depends only on its arguments, in every process (not on hash())."""
    key = f"{int(seed)}\x1f{int(epoch)}\x1f{purpose}".encode()
    digest = hashlib.blake2b(key, digest_size=16, person=b"mesa-samples").digest()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest, "little"))))


def rgb_to_model(rgb: np.ndarray) -> torch.Tensor:
    """Stored uint16 (H, W, 3) -> float32 (3, H, W) in [-1, 1]: v / 65535 * 2 - 1."""
    x = rgb.transpose(2, 0, 1).astype(np.float32, order="C")
    x /= 65535.0
    x *= 2.0
    x -= 1.0
    return torch.from_numpy(x)


def dem_to_model(dem: np.ndarray, dem_scale_m: float, dem_knee_m: float | None = None) -> torch.Tensor:
    """Stored float32 (H, W) metres relative to the cell mean -> float32 (3, H, W) in [-1, 1].

    clip(encode(dem), -1, 1) repeated on three channels, with the encoding of
    ``components.samples.dem_encoding`` (linear ``dem / S`` unless a knee is given). Non-finite
    values (no-data that the mask already excludes) become 0, so a masked loss never meets a NaN
    (NaN * 0 is NaN).
    """
    x = encode_dem(dem.astype(np.float32), dem_scale_m, dem_knee_m).astype(np.float32, copy=False)
    np.clip(x, -1.0, 1.0, out=x)
    np.nan_to_num(x, copy=False, nan=0.0)
    return torch.from_numpy(np.repeat(x[None], 3, axis=0))


class TerrainSampleDataset(IterableDataset):
    """Training (or test) samples streamed from sample shards, for DataLoader workers and ranks.

    Attributes:
        shards: the shard paths, sorted (list of str).
        split: the split read ("train" or "test").
        seed: the run's seed; with the epoch it seeds the order and the caption augmentation.
        epoch: the current epoch (``set_epoch``).
        shuffle: shuffle across shards every epoch (False: shard, row group, row order).
        shadow: use ``rgb_shadow`` where stored, else ``rgb`` (``shadow_used`` says which).
        dem_scale_m: the global DEM scale S (metres per unit) from stats.json.
        dem_knee_m: stats.json's ``dem_knee_m`` (None: the DEM enters linearly).
        augmentation: caption augmentation params, or None for the full four-slot caption.
        rank, world_size: this process and the number of processes (None: resolved lazily).
        shuffle_buffer: samples held per consumer for shuffling (0 or 1: no buffer).
        drop_last: cut each epoch to a multiple of the number of consumers, so every
            (rank, worker) yields the same number of samples (what DDP needs to stay in step).

    Each item is a dict: ``rgb`` float32 (3, H, W) in [-1, 1]; ``dem`` float32 (3, H, W) in
    [-1, 1]; ``mask`` float32 (1, H, W) and ``mask_latent`` float32 (1, H/f, W/f), 1 = valid;
    ``caption`` str; ``grid_cell`` and ``sample_id`` str; ``dem_mean_m`` float (metres);
    ``shadow_used`` bool; ``l1c_missing`` bool.

    A subclass reading another shard kind of the same layout (``components.samples.latents``)
    sets ``shard_reader`` and overrides ``_read`` (which columns) and ``_item`` (what it yields).
    """

    #: The reader class for one shard (a ``SampleShardReader`` or a subclass of it).
    shard_reader: type[SampleShardReader] = SampleShardReader

    def __init__(
        self,
        shards: Sequence[str | Path],
        split: str = "train",
        *,
        dem_scale_m: float,
        dem_knee_m: float | None = None,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        shadow: bool = False,
        augmentation: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 256,
        drop_last: bool = False,
    ):
        super().__init__()
        if isinstance(shards, (str, Path)):
            shards = [shards]
        self.shards = sorted(dict.fromkeys(str(p) for p in shards))
        if not self.shards:
            raise ValueError("TerrainSampleDataset needs at least one sample shard (data/samples/*.parquet)")
        check_dem_encoding(dem_scale_m, dem_knee_m)
        if int(shuffle_buffer) < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a split name such as 'train' or 'test', got {split!r}")
        self.split = split
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.shuffle = bool(shuffle)
        self.shadow = bool(shadow)
        self.dem_scale_m = float(dem_scale_m)
        self.dem_knee_m = None if dem_knee_m is None else float(dem_knee_m)
        self.augmentation = None if augmentation is None else check_augmentation(augmentation)
        self.shuffle_buffer = int(shuffle_buffer)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = rank, world_size
        if rank is None or world_size is None:
            self.rank, self.world_size = self._resolve_distributed(strict=False)
        self._build_index()

    # ---------------------------------------------------------------------------------------
    # index

    def _build_index(self) -> None:
        """(shard, row group, row) of every sample of the split, as flat numpy arrays."""
        block_shard, block_group, item_block, item_row, ids, id_shards = [], [], [], [], [], []
        self.shapes: dict[str, tuple[int, ...]] | None = None
        n_blocks = 0
        for s, path in enumerate(self.shards):
            with self.shard_reader(path) as reader:
                shapes = {n: tuple(v["shape"]) for n, v in reader.metadata["arrays"].items()}
                if self.shapes is None:
                    self.shapes, first = shapes, path
                elif shapes != self.shapes:
                    raise SampleShardError(
                        f"{path}: array shapes {shapes} differ from {first}'s {self.shapes}: the shards "
                        "of one dataset come from one prepare run (rerun it to rebuild them all)"
                    )
                sizes = np.array([reader.row_group_num_rows(g) for g in range(reader.num_row_groups)], dtype=np.int64)
                starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
                chosen = np.flatnonzero(
                    np.asarray(pc.equal(reader.read_column("split"), self.split).combine_chunks(), dtype=bool)
                )
                groups = np.searchsorted(starts, chosen, side="right") - 1
                block_shard.append(np.full(len(sizes), s, dtype=np.int32))
                block_group.append(np.arange(len(sizes), dtype=np.int32))
                item_block.append(n_blocks + groups)
                item_row.append((chosen - starts[groups]).astype(np.int32))
                n_blocks += len(sizes)
                ids.append(reader.read_column("sample_id").combine_chunks())
                id_shards.append(np.full(reader.num_rows, s, dtype=np.int32))
        self._block_shard = np.concatenate(block_shard)
        self._block_group = np.concatenate(block_group)
        self._item_block = np.concatenate(item_block).astype(np.int64)
        self._item_row = np.concatenate(item_row)
        self._check_unique(pa.chunked_array(ids), np.concatenate(id_shards))

    def _check_unique(self, ids: pa.ChunkedArray, id_shards: np.ndarray) -> None:
        if pc.count_distinct(ids).as_py() == len(ids):
            return
        counts = pc.value_counts(ids)
        duplicated = [item["values"] for item in counts.to_pylist() if item["counts"] > 1]
        name = duplicated[0]
        where = sorted({self.shards[s] for s in id_shards[np.asarray(pc.equal(ids, name), dtype=bool)]})
        raise SampleShardError(
            f"sample_id {name!r} (and {len(duplicated) - 1} more) appears more than once across the "
            f"shards, in {where}: a sample belongs to one shard once; rebuild the shards with the prepare stage"
        )

    # ---------------------------------------------------------------------------------------
    # work split

    def _resolve_distributed(self, strict: bool = True) -> tuple[int | None, int | None]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist_rank, dist_world = None, None
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                dist_rank, dist_world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            elif strict:
                dist_rank, dist_world = 0, 1
            rank = dist_rank if rank is None else rank
            world = dist_world if world is None else world
        if rank is not None and world is not None and not (0 <= int(rank) < int(world)):
            raise ValueError(f"rank {rank} is outside world_size {world}: need 0 <= rank < world_size")
        return rank, world

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (order and caption augmentation)."""
        self.epoch = int(epoch)

    def _used(self, consumers: int) -> int:
        n = len(self._item_block)
        return n - n % consumers if self.drop_last else n

    def _bounds(self, consumer: int, consumers: int) -> tuple[int, int]:
        used = self._used(consumers)
        return consumer * used // consumers, (consumer + 1) * used // consumers

    def num_samples(self, rank: int | None = None, num_workers: int = 1) -> int:
        """Samples of the split per epoch: all ranks together (default), or one rank's share.

        Args:
            rank: a rank to count for (default None: the whole split, every rank).
            num_workers: the DataLoader's num_workers (0 counts as 1); matters for one rank's
                share and with drop_last.
        """
        _, world = self._resolve_distributed()
        workers = max(int(num_workers), 1)
        consumers = world * workers
        if rank is None:
            return self._used(consumers)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world_size {world}")
        lo, _ = self._bounds(rank * workers, consumers)
        _, hi = self._bounds((rank + 1) * workers - 1, consumers)
        return hi - lo

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """Indices into the index (items) in the epoch's global order (see the module docstring)."""
        n = len(self._item_block)
        if not self.shuffle:
            return np.arange(n)
        rng = _rng(self.seed, self.epoch if epoch is None else epoch, "order")
        block_rank = rng.permutation(len(self._block_shard))
        within = rng.random(n)
        return np.lexsort((within, block_rank[self._item_block]))

    # ---------------------------------------------------------------------------------------
    # reading

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self._resolve_distributed()
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        consumer, consumers = rank * workers + worker, world * workers
        epoch = self.epoch
        lo, hi = self._bounds(consumer, consumers)
        mine = self.epoch_order(epoch)[lo:hi]
        return self._stream(mine, epoch, f"buffer/{consumer}/{consumers}")

    def _stream(self, mine: np.ndarray, epoch: int, purpose: str) -> Iterator[dict[str, Any]]:
        buffered = self.shuffle and self.shuffle_buffer > 1
        rng = _rng(self.seed, epoch, purpose)
        buffer: list[dict[str, Any]] = []
        readers: dict[int, SampleShardReader] = {}
        try:
            if len(mine):
                blocks = self._item_block[mine]
                runs = np.split(mine, np.flatnonzero(np.diff(blocks)) + 1)
            else:
                runs = []
            for run in runs:
                block = int(self._item_block[run[0]])
                shard = int(self._block_shard[block])
                if shard not in readers:
                    readers[shard] = self.shard_reader(self.shards[shard])
                for raw in self._read(readers[shard], int(self._block_group[block]), self._item_row[run], buffered):
                    if not buffered:
                        yield self._item(raw, epoch)
                        continue
                    buffer.append(raw)
                    if len(buffer) >= self.shuffle_buffer:
                        pick = int(rng.integers(len(buffer)))
                        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
                        yield self._item(buffer.pop(), epoch)
            for pick in rng.permutation(len(buffer)).tolist():
                yield self._item(buffer[pick], epoch)
        finally:
            for reader in readers.values():
                reader.close()

    def _read(self, reader: SampleShardReader, group: int, rows: np.ndarray, copy: bool) -> list[dict[str, Any]]:
        """The rows' raw samples; with ``copy`` the arrays no longer pin the row group's buffers."""
        image = "rgb_shadow" if self.shadow else "rgb"
        samples = reader.read_row_group(group, [*_SCALARS, *_MASKS, image], rows)
        if self.shadow:
            fallback = [i for i, s in enumerate(samples) if s["rgb_shadow"] is None]
            if fallback:
                plain = reader.read_row_group(group, ["rgb"], rows[fallback])
                for i, p in zip(fallback, plain):
                    samples[i]["rgb"] = p["rgb"]
        for sample in samples:
            sample["shadow_used"] = self.shadow and sample.get("rgb_shadow") is not None
            sample["image"] = sample.pop("rgb_shadow") if sample["shadow_used"] else sample["rgb"]
            sample.pop("rgb", None)
            sample.pop("rgb_shadow", None)
            if copy:
                for name in ("image", *_MASKS):
                    sample[name] = sample[name].copy()
        return samples

    def _caption(self, raw: Mapping[str, Any], epoch: int) -> str:
        """The sample's caption: full, or augmented by (seed, epoch, sample_id)."""
        descriptors = {c: raw[c] for c in DESCRIPTOR_COLUMNS}
        if self.augmentation is None:
            return build_caption(descriptors)
        return augment_caption(descriptors, self.seed, epoch, raw["sample_id"], self.augmentation)

    def _item(self, raw: dict[str, Any], epoch: int) -> dict[str, Any]:
        return {
            "rgb": rgb_to_model(raw["image"]),
            "dem": dem_to_model(raw["dem"], self.dem_scale_m, self.dem_knee_m),
            "mask": torch.from_numpy(raw["mask"].astype(np.float32)[None]),
            **self._common(raw, epoch),
        }

    def _common(self, raw: dict[str, Any], epoch: int) -> dict[str, Any]:
        """What every item holds whatever its arrays: latent mask, caption, ids and flags."""
        return {
            "mask_latent": torch.from_numpy(raw["mask_latent"].astype(np.float32)[None]),
            "caption": self._caption(raw, epoch),
            "grid_cell": raw["grid_cell"],
            "sample_id": raw["sample_id"],
            "dem_mean_m": float(raw["dem_mean_m"]),
            "shadow_used": bool(raw["shadow_used"]),
            "l1c_missing": bool(raw["l1c_missing"]),
        }


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A DataLoader batch: tensors stacked, per-sample flags as tensors, strings as lists.

    ``rgb``, ``dem`` (B, 3, H, W), ``mask`` (B, 1, H, W), ``mask_latent`` (B, 1, h, w) float32;
    ``dem_mean_m`` float32 (B,); ``shadow_used``, ``l1c_missing`` bool (B,); ``caption``,
    ``grid_cell``, ``sample_id`` lists of str.
    """
    return collate_items(batch, ("rgb", "dem", "mask", "mask_latent"))


def collate_items(batch: Sequence[Mapping[str, Any]], tensors: Sequence[str]) -> dict[str, Any]:
    """Stack ``tensors`` (each item's arrays), the per-sample scalars and flags, list the strings."""
    if not batch:
        raise ValueError("collate got an empty batch")
    out: dict[str, Any] = {k: torch.stack([b[k] for b in batch]) for k in tensors}
    out["dem_mean_m"] = torch.tensor([b["dem_mean_m"] for b in batch], dtype=torch.float32)
    for key in ("shadow_used", "l1c_missing"):
        out[key] = torch.tensor([b[key] for b in batch], dtype=torch.bool)
    for key in ("caption", "grid_cell", "sample_id"):
        out[key] = [b[key] for b in batch]
    return out
