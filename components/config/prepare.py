"""params.yaml ``prepare`` (training samples), ``shadow`` (which image variant trains) and ``latents``."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from components.config.base import Count, FieldProblem, NonBlank, ParamsModel, PositiveFloat, Probability

TILE_PX = 1068  # a Major TOM Core tile at 10 m; the footprint is its centre


class RgbRule(ParamsModel):
    """``prepare.rgb_rule``: stored v = clip(gain * reflectance, 0, 1) ** (1 / gamma)."""

    gain: PositiveFloat = 2.5
    gamma: PositiveFloat = 2.0


class PrepareConfig(ParamsModel):
    """params.yaml ``prepare``.

    Attributes:
        footprint_px: centre crop of the 1068 px tile at 10 m; a multiple of 6 px so that it falls
            on the 30 m DEM grid (components.samples.geometry.footprint_offsets).
        image_px: training resolution; divides footprint_px (area-averaging) or is a multiple of
            the DEM footprint (footprint_px / 3), and a multiple of latent_factor.
        latent_factor: the VAE's down-sampling factor.
        store_both_variants: store the plain L2A and the shadow-corrected image (default True).
        rgb_rule: ``RgbRule``.
        dem_scale_m: S in (elevation - cell mean) / S, metres > 0, or ``auto``.
        dem_knee_m: None (default): the DEM enters the model linearly, ``d / S``; metres > 0: it
            is companded, ``asinh(d / k) / asinh(S / k)`` (components.samples.dem_encoding), so
            flat ground keeps more of the model's range.
        test_share: share of cells held out, by grid cell, in [0, 1].
        split_salt: namespace of the split's hash (changing it reshuffles the split).
        workers: shards prepared at the same time (default 1).
    """

    GROUP = "prepare"

    footprint_px: int = Field(ge=6, le=TILE_PX, multiple_of=6)
    image_px: Count
    latent_factor: Count
    store_both_variants: bool = True
    rgb_rule: RgbRule = Field(default_factory=RgbRule)
    dem_scale_m: Union[Literal["auto"], PositiveFloat]
    dem_knee_m: Optional[PositiveFloat] = None
    test_share: Probability
    split_salt: NonBlank
    workers: Count = 1

    @model_validator(mode="after")
    def _resolutions_fit(self):
        dem_footprint = self.footprint_px // 3
        if self.footprint_px % self.image_px and self.image_px % dem_footprint:
            raise FieldProblem("image_px", self.image_px, f"must divide footprint_px ({self.footprint_px}, "
                               f"area-downsampling) or be a multiple of the DEM footprint ({dem_footprint} px)")
        if self.image_px % self.latent_factor:
            raise FieldProblem("image_px", self.image_px,
                               f"must be a multiple of latent_factor ({self.latent_factor})")
        return self


class ShadowConfig(ParamsModel):
    """params.yaml ``shadow``: ``enabled`` trains on the shadow-corrected image (false: plain L2A)."""

    GROUP = "shadow"

    enabled: bool


class LatentsConfig(ParamsModel):
    """params.yaml ``latents``: encode every sample once with the frozen VAE (off: the trainer encodes)."""

    GROUP = "latents"

    enabled: bool
    batch_size: Count
