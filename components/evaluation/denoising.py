"""Held-out denoising loss: the training objective on samples the model never saw.

Fixed noises and timesteps (the rule of the training validation set, on the test split only), the
VAE posterior mean and the cells' full captions: two models evaluated on the same samples get
directly comparable numbers, with no sampling noise. It is the steadiest signal the promotion gate
has; the generation metrics say what it cannot (does the terrain look right).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from components.evaluation import per_cell

NAME = "heldout_denoising_loss"
MIN_TERMS = 32  # a small held-out set is repeated (new noise, new timestep) up to this many terms
DIRECTION = "lower_is_better"


def heldout_denoising_loss(pipeline, shards: Sequence[str], dem_scale_m: float, shadow: bool,
                           max_samples: int, dem_knee_m: float | None = None) -> dict[str, float]:
    """The masked v-prediction loss of ``pipeline`` on up to ``max_samples`` held-out samples.

    Args:
        pipeline: a TerrainPipeline (its UNet, VAE, tokenizer and text encoder are used).
        shards: data/samples/*.parquet.
        dem_scale_m: stats.json's DEM scale (the DEM normalisation training used).
        shadow: the image variant the model was trained on (params shadow.enabled).
        max_samples: cap on the held-out samples (all are encoded in one batch).
        dem_knee_m: stats.json's DEM knee (None: the DEM entered linearly).

    Returns:
        ``{"heldout_denoising_loss": ..., "heldout_denoising_loss_shuffled_captions": ..., "terms":
        per_cell.denoising_rows(...)}`` (one row per sample x repeat, for paired comparisons); NaN
        for both numbers and no rows when the test split is empty, NaN for the shuffled one when
        all its captions are the same.
    """
    from components.model.factories import training_scheduler
    from components.training.validation import ValidationSet

    try:
        held_out = ValidationSet.from_shards(shards, dem_scale_m, shadow, max_samples, ("test",), pipeline.vae,
                                             pipeline.tokenizer, pipeline.text_encoder, pipeline.device,
                                             repeat_to=MIN_TERMS, dem_knee_m=dem_knee_m)
    except ValueError:
        return {NAME: math.nan, f"{NAME}_shuffled_captions": math.nan, "terms": per_cell.denoising_rows([], [], [], [])}
    terms = held_out.term_losses(pipeline.unet, training_scheduler())
    rows = per_cell.denoising_rows(held_out.sample_ids, terms["squared_error"], terms["squared_error_shuffled"],
                                   terms["weight"])
    return {NAME: terms["loss"], f"{NAME}_shuffled_captions": per_cell.denoising_loss(rows, shuffled=True),
            "terms": rows}
