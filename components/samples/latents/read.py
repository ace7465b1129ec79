"""Reading the latent cache: its manifest, its shards, and the torch Dataset the trainer streams."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.samples.dataset import TerrainSampleDataset, collate_items
from components.samples.latents.schema import (
    LATENT_COLUMNS,
    LATENT_FORMAT,
    LATENT_FORMAT_VERSION,
    LATENT_METADATA_KEY,
    MANIFEST_NAME,
    NULLABLE_ARRAYS,
)
from components.samples.shards import DESCRIPTOR_COLUMNS, SCALAR_COLUMNS, SampleShardError, SampleShardReader

#: What every error about a cache tells the user to do.
_REMEDY = "rerun the latents stage (mesa stage latents)"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The cache folder's manifest.json (enabled or disabled), checked.

    Args:
        directory: the cache folder (``data/latents``).
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no latent-cache manifest; run the latents stage (mesa stage latents), which "
            "writes one whether the cache is enabled or not"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SampleShardError(f"{path}: not valid JSON ({err}); {_REMEDY}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != LATENT_FORMAT or "enabled" not in manifest:
        raise SampleShardError(f"{path}: not a {LATENT_FORMAT} manifest; {_REMEDY}")
    if manifest.get("version") != LATENT_FORMAT_VERSION:
        raise SampleShardError(
            f"{path}: latent cache version {manifest.get('version')!r}, this code reads "
            f"{LATENT_FORMAT_VERSION}; {_REMEDY}"
        )
    return manifest


def latent_shards(directory: str | Path) -> list[Path]:
    """The latent shards an enabled cache's manifest lists (refuses a disabled cache).

    Args:
        directory: the cache folder (``data/latents``).
    """
    manifest = read_manifest(directory)
    if not manifest["enabled"]:
        raise SampleShardError(
            f"{Path(directory) / MANIFEST_NAME}: the latent cache is disabled ({manifest.get('reason')}); "
            "train from the samples, or enable the cache and rerun the latents stage"
        )
    paths = [Path(directory) / s["name"] for s in manifest["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SampleShardError(f"latent shards {missing} are listed in the manifest but missing; {_REMEDY}")
    return paths


class LatentShardReader(SampleShardReader):
    """One open latent shard, read a row group at a time (the sample reader, latent columns)."""

    metadata_key = LATENT_METADATA_KEY
    format_name = LATENT_FORMAT
    format_version = LATENT_FORMAT_VERSION
    columns = LATENT_COLUMNS
    scalar_columns = SCALAR_COLUMNS
    nullable_arrays = NULLABLE_ARRAYS
    remedy = _REMEDY


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw ``mean + std * noise`` of the cached VAE posterior (before the scaling factor).

    Args:
        mean, std: (B, C, h, w) cached posterior mean and standard deviation.
        generator: a ``torch.Generator`` (default None: torch's global one); the noise is drawn
            on the generator's device, then moved to ``mean``'s, so a CPU generator gives the
            same draw on any device.
    """
    if mean.shape != std.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same shape")
    where = generator.device if generator is not None else mean.device
    noise = torch.randn(tuple(mean.shape), generator=generator, device=where, dtype=torch.float32)
    return mean + std * noise.to(device=mean.device, dtype=mean.dtype)


# dem_knee_m is absent (None) from a cache whose DEM entered linearly.
_ENCODING_KEYS = ("dem_scale_m", "dem_knee_m", "scaling_factor", "vae_config_sha256", "vae_weights_blake2b")


def _cache_encoding(shards: Sequence[str]) -> dict[str, Any]:
    """The encoding every shard records; refuses shards made by different VAEs or DEM scales."""
    found: dict[str, Any] | None = None
    for path in shards:
        with LatentShardReader(path) as reader:
            encoding = {k: reader.metadata.get(k) for k in _ENCODING_KEYS}
        if found is None:
            found, first = encoding, path
        elif encoding != found:
            raise SampleShardError(
                f"{path} was encoded with {encoding} but {first} with {found}: the shards of one cache "
                f"come from one latents run; {_REMEDY}"
            )
    assert found is not None
    return found


class LatentSampleDataset(TerrainSampleDataset):
    """Cached latents streamed like ``TerrainSampleDataset`` streams samples.

    The same split, rank / world_size / worker division, epoch order, caption augmentation and
    shadow choice as ``TerrainSampleDataset`` (whose attributes it has); in addition:

    Attributes:
        scaling_factor: the VAE's scaling factor recorded in the cache (multiply draws by it).
        vae_config_sha256, vae_weights_blake2b: the VAE the cache was made with.

    Each item is a dict: ``rgb_latent_mean``, ``rgb_latent_std`` float32 (C, h, w) (the
    shadow-corrected image's with ``shadow=True`` where the sample has one, else the plain
    image's); ``dem_latent_mean``, ``dem_latent_std`` float32 (C, h, w); ``mask_latent``
    float32 (1, h, w), 1 = valid; ``caption``, ``grid_cell``, ``sample_id`` str;
    ``dem_mean_m`` float; ``shadow_used``, ``l1c_missing`` bool. Latents are unscaled.
    """

    shard_reader = LatentShardReader

    def __init__(
        self,
        shards: Sequence[str | Path],
        split: str = "train",
        *,
        dem_scale_m: float | None = None,
        dem_knee_m: float | None = None,
        **options: Any,
    ):
        """Args:
            shards: latent shards (``latent_shards("data/latents")``), any order.
            split: the split read (default "train").
            dem_scale_m: the DEM scale training expects (default None: the cache's encoding,
                scale and knee). When given, it and ``dem_knee_m`` (None: linear) must equal the
                encoding the cache was made with.
            dem_knee_m: the DEM knee training expects (read only with ``dem_scale_m``).
            **options: ``TerrainSampleDataset``'s keywords (seed, epoch, shuffle, shadow,
                augmentation, rank, world_size, shuffle_buffer, drop_last), same defaults.
        """
        paths = [shards] if isinstance(shards, (str, Path)) else list(shards)
        if not paths:
            raise ValueError("LatentSampleDataset needs at least one latent shard (data/latents/*.parquet)")
        encoding = _cache_encoding(sorted(dict.fromkeys(str(p) for p in paths)))
        knee = encoding["dem_knee_m"]
        if dem_scale_m is not None and float(dem_scale_m) != encoding["dem_scale_m"]:
            raise SampleShardError(
                f"the latent cache was encoded with dem_scale_m {encoding['dem_scale_m']} but training uses "
                f"{float(dem_scale_m)} (stats.json): {_REMEDY}"
            )
        if dem_scale_m is not None and (None if dem_knee_m is None else float(dem_knee_m)) != knee:
            raise SampleShardError(
                f"the latent cache was encoded with dem_knee_m {knee} but training uses {dem_knee_m} "
                f"(stats.json; None = linear): {_REMEDY}"
            )
        self.scaling_factor = float(encoding["scaling_factor"])
        self.vae_config_sha256 = encoding["vae_config_sha256"]
        self.vae_weights_blake2b = encoding["vae_weights_blake2b"]
        super().__init__(paths, split, dem_scale_m=encoding["dem_scale_m"], dem_knee_m=knee, **options)

    def _read(self, reader: SampleShardReader, group: int, rows: np.ndarray, copy: bool) -> list[dict[str, Any]]:
        """The rows' latents (the chosen image variant as ``image_mean`` / ``image_std``)."""
        image = "rgb_shadow" if self.shadow else "rgb"
        wanted = [image + "_latent_mean", image + "_latent_std"]
        scalars = ["sample_id", "grid_cell", "dem_mean_m", "l1c_missing", *DESCRIPTOR_COLUMNS]
        columns = [*scalars, "mask_latent", "dem_latent_mean", "dem_latent_std", *wanted]
        samples = reader.read_row_group(group, columns, rows)
        fallback = [i for i, s in enumerate(samples) if s[wanted[0]] is None]
        if fallback:
            plain = reader.read_row_group(group, ["rgb_latent_mean", "rgb_latent_std"], rows[fallback])
            for i, p in zip(fallback, plain):
                samples[i] |= p
        for sample in samples:
            sample["shadow_used"] = self.shadow and sample.get("rgb_shadow_latent_mean") is not None
            prefix = "rgb_shadow" if sample["shadow_used"] else "rgb"
            sample["image_mean"] = sample[prefix + "_latent_mean"]
            sample["image_std"] = sample[prefix + "_latent_std"]
            for name in ("rgb", "rgb_shadow"):
                sample.pop(name + "_latent_mean", None)
                sample.pop(name + "_latent_std", None)
            if copy:
                # copies do not pin the whole row group's buffers while they wait in the shuffle buffer
                for name in ("image_mean", "image_std", "dem_latent_mean", "dem_latent_std", "mask_latent"):
                    sample[name] = sample[name].copy()
        return samples

    def _item(self, raw: dict[str, Any], epoch: int) -> dict[str, Any]:
        def tensor(array: np.ndarray) -> torch.Tensor:
            # read-only views of Arrow buffers are copied; shuffle-buffer copies are used as they are
            return torch.from_numpy(np.require(array, requirements="W"))

        return {
            "rgb_latent_mean": tensor(raw["image_mean"]),
            "rgb_latent_std": tensor(raw["image_std"]),
            "dem_latent_mean": tensor(raw["dem_latent_mean"]),
            "dem_latent_std": tensor(raw["dem_latent_std"]),
            **self._common(raw, epoch),
        }


_LATENT_TENSORS = ("rgb_latent_mean", "rgb_latent_std", "dem_latent_mean", "dem_latent_std", "mask_latent")


def collate_latents(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A DataLoader batch of ``LatentSampleDataset`` items.

    Args:
        batch: the items (a non-empty sequence of dicts).

    Returns:
        ``rgb_latent_mean``, ``rgb_latent_std``, ``dem_latent_mean``, ``dem_latent_std``
        float32 (B, C, h, w); ``mask_latent`` float32 (B, 1, h, w); ``dem_mean_m`` float32 (B,);
        ``shadow_used``, ``l1c_missing`` bool (B,); ``caption``, ``grid_cell``, ``sample_id``
        lists of str.
    """
    return collate_items(batch, _LATENT_TENSORS)
