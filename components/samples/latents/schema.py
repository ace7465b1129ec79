"""The latent cache's format: its name and version, the latent columns and their arrow schema.

:mod:`components.samples.latents` describes the layout; ``encode`` writes it, ``read`` reads it.
"""
from __future__ import annotations

import pyarrow as pa

from components.samples.shards import SAMPLE_SCHEMA, SCALAR_COLUMNS

LATENT_FORMAT = "mesa-latents"
LATENT_FORMAT_VERSION = 1
LATENT_METADATA_KEY = b"mesa.latents"
MANIFEST_NAME = "manifest.json"
#: The encoded modalities, each the sample column of the same name.
_MODALITIES = ("rgb", "rgb_shadow", "dem")
#: The float32 latent arrays, mean then std per modality.
LATENT_ARRAYS: tuple[str, ...] = tuple(f"{m}_latent_{s}" for m in _MODALITIES for s in ("mean", "std"))
LATENT_COLUMNS: tuple[str, ...] = (*SCALAR_COLUMNS, "mask_latent", *LATENT_ARRAYS)
#: Null where the sample has no ``rgb_shadow``.
NULLABLE_ARRAYS = ("rgb_shadow_latent_mean", "rgb_shadow_latent_std")

LATENT_SCHEMA = pa.schema(
    [
        *(SAMPLE_SCHEMA.field(c) for c in SCALAR_COLUMNS),
        pa.field("mask_latent", pa.large_binary(), nullable=False),
        *(pa.field(c, pa.large_binary(), nullable=c in NULLABLE_ARRAYS) for c in LATENT_ARRAYS),
    ]
)
#: Dictionary-encoded in the parquet files (the scalar string columns).
STRING_COLUMNS = [f.name for f in LATENT_SCHEMA if f.type == pa.string()]
