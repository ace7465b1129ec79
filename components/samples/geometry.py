"""Training-sample geometry: one footprint, one pixel grid for the image, the DEM and the masks.

A Major TOM tile is 10,680 m: 1068 px at 10 m (Sentinel-2) and 356 px at 30 m (DEM), both cut
from the same UTM square. The training footprint is its centre (768 px = 7,680 m at paper
scale); the offset, (1068 - 768) / 2 = 150 px = 1,500 m = 50 DEM px, is whole in both grids, so
image and DEM crops cover exactly the same ground. Smaller profiles area-average that footprint
down (768 -> 64 px) rather than cutting a smaller crop, so a caption still describes the picture.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

IMAGE_PIXEL_M = 10.0
DEM_PIXEL_M = 30.0
TILE_M = 10_680.0


def footprint_offsets(footprint_px: int, tile_px: int = 1068) -> tuple[int, int]:
    """(image offset, DEM offset) in pixels of the centred footprint; both must be whole."""
    if footprint_px > tile_px or (tile_px - footprint_px) % 2:
        raise ValueError(f"a {footprint_px} px footprint cannot be centred in a {tile_px} px tile")
    offset_m = (tile_px - footprint_px) / 2 * IMAGE_PIXEL_M
    side_m = footprint_px * IMAGE_PIXEL_M
    if offset_m % DEM_PIXEL_M or side_m % DEM_PIXEL_M:
        raise ValueError(f"a {footprint_px} px footprint does not fall on the 30 m DEM grid "
                         f"(offset {offset_m:g} m, side {side_m:g} m): choose a multiple of 6 px")
    return int((tile_px - footprint_px) // 2), int(offset_m // DEM_PIXEL_M)


def crop_image(band: np.ndarray, footprint_px: int) -> np.ndarray:
    """The centred footprint of a 10 m band (any dtype, 2-D or (H, W, C))."""
    offset, _ = footprint_offsets(footprint_px, band.shape[0])
    return band[offset:offset + footprint_px, offset:offset + footprint_px]


def crop_dem(dem: np.ndarray, footprint_px: int, tile_px: int = 1068) -> np.ndarray:
    """The same footprint on the 30 m DEM grid (footprint_px / 3 pixels)."""
    _, offset = footprint_offsets(footprint_px, tile_px)
    side = footprint_px // 3
    return dem[offset:offset + side, offset:offset + side]


def area_downsample(image: np.ndarray, out_px: int) -> np.ndarray:
    """Mean over whole blocks (float32): (H, W) or (H, W, C), H a multiple of out_px."""
    side = image.shape[0]
    if side % out_px:
        raise ValueError(f"{side} px cannot be area-averaged to {out_px} px: choose a divisor of {side}")
    factor = side // out_px
    shape = (out_px, factor, out_px, factor) + image.shape[2:]
    return image.reshape(shape).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def all_valid_downsample(valid: np.ndarray, out_px: int) -> np.ndarray:
    """A pixel of the coarser grid is valid only if every pixel under it is (min pooling)."""
    side = valid.shape[0]
    if side % out_px:
        raise ValueError(f"{side} px cannot be pooled to {out_px} px: choose a divisor of {side}")
    factor = side // out_px
    return valid.reshape(out_px, factor, out_px, factor).all(axis=(1, 3))


def dem_to_image_grid(dem_crop: np.ndarray, out_px: int) -> np.ndarray:
    """The DEM footprint on the output image grid (metres, float32).

    Bilinear from 30 m with pixel areas aligned (scipy grid_mode), which at paper scale brings
    256 DEM px to 768 image px; when the output is coarser than 30 m, an area mean instead
    (interpolating would alias).
    """
    side = dem_crop.shape[0]
    if out_px <= side and side % out_px == 0:
        return area_downsample(dem_crop.astype(np.float32), out_px)
    zoomed = ndimage.zoom(dem_crop.astype(np.float32), out_px / side, order=1, mode="nearest", grid_mode=True)
    return zoomed[:out_px, :out_px].astype(np.float32)


def dem_valid_on_image_grid(dem_valid: np.ndarray, out_px: int) -> np.ndarray:
    """Where the DEM is usable on the output grid: every 30 m pixel touching an output pixel valid."""
    side = dem_valid.shape[0]
    if out_px <= side and side % out_px == 0:
        return all_valid_downsample(dem_valid, out_px)
    # Finer output: an output pixel reads the DEM pixels around it (bilinear), so erode by one.
    eroded = ndimage.binary_erosion(dem_valid, iterations=1, border_value=1)
    return ndimage.zoom(eroded.astype(np.uint8), out_px / side, order=0, grid_mode=True, mode="nearest")[
        :out_px, :out_px].astype(bool)
