"""From a curated cell to a training sample: decode once, correct shadows, crop, resample, normalise.

Both image variants the shadow-correction ablation compares come from one decode: `rgb` is the
plain L2A image, `rgb_shadow` the L1C image with L2A's colours (histogram matching). Both arms
share one mask (no data in any source, cloud or shadow in either image, DEM holes), so the two
models learn from exactly the same pixels and differ only in the shading.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import PrepareConfig
from components.majortom.errors import RejectedRow, ShardError
from components.majortom.shards import read_shard
from components.radiometry.normalise import encode_rgb
from components.radiometry.shadow import AllMaskedError, match_histograms_masked, remove_baseline_offset
from components.samples import geometry

RGB = ("B04", "B03", "B02")
S2_COLUMNS = RGB + ("cloud_mask",)
DESCRIPTORS = ("country", "biome", "ecoregion", "landform_local", "landform_regional", "month")


@dataclass(frozen=True)
class PrepareParams:
    """What building a sample needs: params ``prepare`` (checked by ``PrepareConfig``) and ``validate.cloud_classes``.

    A dataclass of its own because stats.json records it (``asdict``) in the samples' data version.
    """

    footprint_px: int = 768
    image_px: int = 64
    latent_factor: int = 8
    store_both_variants: bool = True
    rgb_gain: float = 2.5
    rgb_gamma: float = 2.0
    cloud_classes: tuple[int, ...] = (1, 2, 3)

    @classmethod
    def from_config(cls, prepare: PrepareConfig, cloud_classes: Sequence[int]) -> PrepareParams:
        return cls(footprint_px=prepare.footprint_px, image_px=prepare.image_px, latent_factor=prepare.latent_factor,
                   store_both_variants=prepare.store_both_variants, rgb_gain=prepare.rgb_rule.gain,
                   rgb_gamma=prepare.rgb_rule.gamma, cloud_classes=tuple(int(c) for c in cloud_classes))

    @classmethod
    def from_params(cls, prepare: Mapping, cloud_classes: Sequence[int]) -> PrepareParams:
        """From the plain ``prepare`` mapping (ParamsError when it is invalid)."""
        return cls.from_config(PrepareConfig.from_params(prepare), cloud_classes)


class SampleRejected(Exception):
    """A cell that cannot become a sample; `reason` goes to the samples' rejected list."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _one(shard: str, source: str, row: int, columns) -> object:
    items = list(read_shard(shard, source, columns, rows=[row], on_error="collect"))
    if not items:
        raise SampleRejected("row_not_found", f"{shard} has no row {row} for {source}")
    if isinstance(items[0], RejectedRow):
        raise SampleRejected(items[0].reason, items[0].message)
    return items[0]


def _image(cell, product_id: str, cloud_classes, footprint_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The footprint's band-first (3, H, W) reflectance DN without the baseline offset, and where it
    has data and no cloud. Cropped first: everything after decoding touches only the footprint."""
    bands = [remove_baseline_offset(geometry.crop_image(cell.rasters[b].array, footprint_px), product_id)
             for b in RGB]
    data = (bands[0] != 0) | (bands[1] != 0) | (bands[2] != 0)  # band-wise: ~7x faster than any(axis=-1)
    cloud = geometry.crop_image(cell.rasters["cloud_mask"].array, footprint_px)
    clear = ~np.isin(cloud, np.asarray(cloud_classes, np.uint8))
    return np.stack(bands), data & clear


def build_sample(index_row: pd.Series, descriptors: Mapping, params: PrepareParams, split: str) -> dict:
    """One training sample (a dict for components.samples.shards) from a curated cell."""
    fp = params.footprint_px
    # 1. Decode each source once and crop every grid to the footprint.
    l2a = _one(index_row["s2l2a_shard"], "s2l2a", int(index_row["s2l2a_row"]), S2_COLUMNS)
    l2a_rgb, valid = _image(l2a, index_row["s2l2a_product_id"], params.cloud_classes, fp)
    l1c_missing = not isinstance(index_row.get("s2l1c_shard"), str)
    l1c_rgb = None
    if not l1c_missing and params.store_both_variants:
        l1c = _one(index_row["s2l1c_shard"], "s2l1c", int(index_row["s2l1c_row"]), S2_COLUMNS)
        l1c_rgb, l1c_ok = _image(l1c, index_row["s2l1c_product_id"], params.cloud_classes, fp)
        valid = valid & l1c_ok
    raster = _one(index_row["dem_shard"], "dem", int(index_row["dem_row"]), ("DEM",)).rasters["DEM"]
    dem = geometry.crop_dem(raster.array.astype(np.float32), fp)
    dem_ok = np.isfinite(dem) & ((dem != raster.nodata) if raster.nodata is not None else True)
    if not valid.any() or not dem_ok.any():
        raise SampleRejected("all_masked", "no pixel of the footprint is valid (clouds, no data or DEM holes)")

    # 2. Shadow correction: L1C takes L2A's colour distribution, histograms over valid pixels only.
    shadow_rgb = None
    if l1c_rgb is not None:
        try:
            shadow_rgb = match_histograms_masked(l1c_rgb, l2a_rgb, valid, valid)
        except AllMaskedError as err:
            raise SampleRejected("all_masked", str(err)) from None

    # 3. Resample to the training grid and normalise.
    out, factor = params.image_px, params.latent_factor
    mask = geometry.all_valid_downsample(valid, out) & geometry.dem_valid_on_image_grid(dem_ok, out)
    dem_mean = float(dem[dem_ok].mean())
    dem_rel = geometry.dem_to_image_grid(np.where(dem_ok, dem - dem_mean, 0.0), out)

    def encode(rgb: np.ndarray) -> np.ndarray:  # band-first footprint -> (out, out, 3) stored values
        small = np.stack([geometry.area_downsample(band, out) for band in rgb], axis=-1)
        return encode_rgb(small, params.rgb_gain, params.rgb_gamma)

    record = {
        "grid_cell": index_row["grid_cell"], "sample_id": index_row["grid_cell"], "split": split,
        "rgb": encode(l2a_rgb),
        "rgb_shadow": encode(shadow_rgb) if shadow_rgb is not None else None,
        "dem": np.where(mask, dem_rel, 0.0).astype(np.float32),
        "mask": mask.astype(np.uint8),
        "mask_latent": geometry.all_valid_downsample(mask, out // factor).astype(np.uint8),
        "dem_mean_m": dem_mean,
        "l1c_missing": bool(l1c_missing),
    }
    for name in DESCRIPTORS:
        record[name] = descriptors.get(name)
        record[f"{name}_short"] = descriptors.get(f"{name}_short")
    return record


def prepare_cells(cells: pd.DataFrame, descriptors: pd.DataFrame, splits: Mapping[str, str],
                  params: PrepareParams) -> tuple[list[dict], list[dict]]:
    """Samples for a group of curated cells, and (grid_cell, reason, detail) for the ones that cannot be."""
    by_cell = descriptors.set_index("grid_cell").to_dict("index")
    samples, rejected = [], []
    for _, row in cells.iterrows():
        try:
            samples.append(build_sample(row, by_cell.get(row["grid_cell"], {}), params, splits[row["grid_cell"]]))
        except (SampleRejected, ShardError) as err:
            rejected.append({"grid_cell": row["grid_cell"], "reason": getattr(err, "reason", "unreadable"),
                             "detail": str(err)})
    return samples, rejected


def iter_groups(index: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Curated cells grouped by their L2A shard (the unit of parallel work), in shard order."""
    yield from index.groupby("s2l2a_shard", sort=True)
