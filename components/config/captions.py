"""params.yaml ``layers`` (the region layers captions are built from) and ``captions``.

The captions stage hands both groups to components.captions as written; these models check them
when params.yaml is read. Their defaults are the components' own (DEFAULT_DESCRIPTOR_PARAMS,
DEFAULT_LANDFORM_THRESHOLDS, DEFAULT_AUGMENTATION; tests/unit/test_params_schema.py keeps them equal).
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from components.config.base import Count, FieldProblem, NonBlank, NonNegativeFloat, ParamsModel, Probability

LayerKind = Literal["country", "biome_proxy", "vector"]
# Keys each kind of layer takes (components.captions.layers.factory._SPEC_KEYS, plus `optional`).
LAYER_KEYS: dict[str, frozenset[str]] = {
    "country": frozenset({"kind", "max_distance_m", "expand_names", "optional"}),
    "biome_proxy": frozenset({"kind", "max_distance_m", "optional"}),
    "vector": frozenset({"kind", "path", "attributes", "layer", "max_distance_m", "name", "is_proxy", "optional"}),
}


class LayerSpec(ParamsModel):
    """One region layer: a built-in one by kind, or any OGR-readable file (kind ``vector``).

    Attributes:
        kind: ``country`` (Natural Earth), ``biome_proxy`` (Koppen proxy) or ``vector``.
        max_distance_m: nearest-polygon fallback in metres (None: captions.max_distance_m).
        expand_names: country only: full country names (default True).
        path, attributes, layer, name, is_proxy: vector only: the file, output column -> field
            name (default: the role's own), the layer in a multi-layer file, a display name,
            whether the layer stands in for a real one.
        optional: a vector file that is absent leaves the descriptor empty instead of failing.
    """

    kind: LayerKind
    max_distance_m: Optional[NonNegativeFloat] = None
    expand_names: bool = True
    path: Optional[NonBlank] = None
    attributes: Optional[dict[str, NonBlank]] = None
    layer: Optional[Union[str, int]] = None
    name: Optional[str] = None
    is_proxy: bool = False
    optional: bool = False

    @model_validator(mode="after")
    def _keys_of_its_kind(self):
        allowed = LAYER_KEYS[self.kind]
        foreign = sorted(self.model_fields_set - allowed)
        if foreign:
            raise FieldProblem(foreign[0], getattr(self, foreign[0]), f"not a key of a {self.kind} layer; it takes "
                                                                      f"{', '.join(sorted(allowed))}")
        if self.kind == "vector" and self.path is None:
            raise FieldProblem("path", None, "missing: a vector layer needs the path of an OGR-readable file")
        return self


class LayersConfig(ParamsModel):
    """params.yaml ``layers``: a layer per caption role (null: the role is not configured)."""

    GROUP = "layers"

    country: Optional[LayerSpec] = Field(default_factory=lambda: LayerSpec(kind="country"))
    biome: Optional[LayerSpec] = Field(default_factory=lambda: LayerSpec(kind="biome_proxy"))
    ecoregion: Optional[LayerSpec] = None
    landform_regional: Optional[LayerSpec] = None


class LandformThresholds(ParamsModel):
    """``captions.landform_thresholds``: Hammond's thresholds (components/captions/landform.py)."""

    gentle_slope: NonNegativeFloat = 0.08
    gentle_share_min: Probability = 0.5
    flat_relief_m: NonNegativeFloat = 30.0
    plains_relief_m: NonNegativeFloat = 90.0
    mountains_relief_m: NonNegativeFloat = 300.0
    high_mountains_relief_m: NonNegativeFloat = 900.0
    upland_share_min: Probability = 0.5

    @model_validator(mode="after")
    def _reliefs_increase(self):
        order = ("flat_relief_m", "plains_relief_m", "mountains_relief_m", "high_mountains_relief_m")
        for lower, upper in zip(order, order[1:]):
            if getattr(self, lower) >= getattr(self, upper):
                raise FieldProblem(upper, getattr(self, upper), f"must be above {lower} ({getattr(self, lower):g}): "
                                   f"the relief breaks increase, {' < '.join(order)}")
        return self


class AugmentationConfig(ParamsModel):
    """``captions.augmentation``: caption augmentation at training time (components.captions.builder).

    Attributes:
        caption_dropout: drop descriptors ("caption dropout" in the ablation; default True).
        p_drop: probability of dropping exactly k of the four slots, k = 0..3 (sums to 1).
        p_anonymise_ecoregion, p_regional, p_uncond, p_paper_landform: probabilities in [0, 1].
    """

    caption_dropout: bool = True
    p_drop: dict[int, Probability] = Field(default_factory=lambda: {0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1})
    p_anonymise_ecoregion: Probability = 0.5
    p_regional: Probability = 0.5
    p_uncond: Probability = 0.1
    p_paper_landform: Probability = 0.5

    @field_validator("p_drop", mode="before")
    @classmethod
    def _slot_counts(cls, value):
        # check_augmentation also takes "0".."3" (a JSON round trip makes keys strings)
        if isinstance(value, dict):
            keys = {key: int(key) if isinstance(key, str) and key.strip().isdigit() else key for key in value}
            bad = [key for key, k in keys.items() if isinstance(k, bool) or k not in range(4)]
            if bad:
                raise ValueError(f"keys {bad} are not numbers of slots 0..3")
            return {keys[key]: v for key, v in value.items()}
        return value

    @field_validator("p_drop")
    @classmethod
    def _sums_to_one(cls, value):
        if abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"must sum to 1 (got {sum(value.values()):.6g})")
        return value


class CaptionsConfig(ParamsModel):
    """params.yaml ``captions``: descriptors per kept cell, and the augmentation the trainer applies.

    Attributes:
        max_distance_m: nearest polygon only within this many metres (default 10000).
        biome_short_forms, landform_short_forms, country_short_forms: name -> caption form
            (entries add to / replace the built-in tables).
        landform_thresholds: ``LandformThresholds``.
        workers: threads for the layer lookups (default 2).
        chunk_cells: cells per lookup chunk (default 65536).
        augmentation: ``AugmentationConfig``.
    """

    GROUP = "captions"

    max_distance_m: NonNegativeFloat = 10_000.0
    biome_short_forms: dict[str, NonBlank] = Field(default_factory=dict)
    landform_short_forms: dict[str, NonBlank] = Field(default_factory=dict)
    country_short_forms: dict[str, NonBlank] = Field(default_factory=dict)
    landform_thresholds: LandformThresholds = Field(default_factory=LandformThresholds)
    workers: Count = 2
    chunk_cells: Count = 65_536
    augmentation: AugmentationConfig
