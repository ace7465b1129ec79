"""Region layers from params: ``open_layer(spec)`` for a ``layers:`` entry of params.yaml."""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from components.captions.layers.base import RegionLayer, check_distance
from components.captions.layers.biomes import BiomeProxyLayer
from components.captions.layers.countries import CountryLayer
from components.captions.layers.vector import VectorLayer

LAYER_KINDS: tuple[str, ...] = ("country", "biome_proxy", "vector")

_SPEC_KEYS: dict[str, frozenset[str]] = {
    "country": frozenset({"kind", "max_distance_m", "expand_names"}),
    "biome_proxy": frozenset({"kind", "max_distance_m"}),
    "vector": frozenset({"kind", "path", "attributes", "layer", "max_distance_m", "name", "is_proxy"}),
}


@lru_cache(maxsize=16)
def _builtin_layer(kind: str, max_distance_m: float, expand_names: bool = True) -> RegionLayer:
    if kind == "country":
        return CountryLayer(max_distance_m, expand_names=expand_names)
    return BiomeProxyLayer(max_distance_m)


def open_layer(spec: Mapping[str, Any]) -> RegionLayer:
    """Build a layer from params, e.g. ``{"kind": "country", "max_distance_m": 5000}``,
    ``{"kind": "biome_proxy"}`` or ``{"kind": "vector", "path": "eco.gpkg", "attributes":
    {"ecoregion": "ECO_NAME"}, "layer": None, "max_distance_m": 0}``.

    Built-in layers are cached per process (same spec -> same object); vector files are
    parsed once per process and file version.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a region layer spec must be a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown region layer kind {kind!r}; valid kinds: {', '.join(LAYER_KINDS)}")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for region layer kind {kind!r}; allowed: {sorted(_SPEC_KEYS[kind])}"
        )
    max_distance_m = check_distance(spec.get("max_distance_m", 0.0) or 0.0)
    if kind == "country":
        return _builtin_layer("country", max_distance_m, bool(spec.get("expand_names", True)))
    if kind == "biome_proxy":
        return _builtin_layer("biome_proxy", max_distance_m)
    if "path" not in spec or "attributes" not in spec:
        raise ValueError("a 'vector' region layer needs 'path' and 'attributes' (output column -> field name)")
    return VectorLayer(
        spec["path"],
        spec["attributes"],
        layer=spec.get("layer"),
        max_distance_m=max_distance_m,
        name=spec.get("name"),
        is_proxy=bool(spec.get("is_proxy", False)),
    )
