"""params.yaml ``model`` (the network and its frozen parts) and ``vae`` (the vae stage's training)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from components.config.base import (Count, NonNegativeFloat, NonNegativeInt, ParamsModel, PositiveFloat,
                                    Probability)


class TextConfig(ParamsModel):
    """``model.text``: the tiny text encoder and the tokenizer trained on the captions."""

    vocab_size: Count = 2048
    hidden_size: Count = 32
    layers: Count = 2
    heads: Count = 2


class ModelConfig(ParamsModel):
    """params.yaml ``model``.

    Attributes:
        unet: ``tiny``, ``published_tiny`` or ``paper`` (components/model/factories.py).
        unet_overrides: config keys of the UNet factory, e.g. ``{block_out_channels: [64, 128]}``.
        shared_first_block: one first down block for both modalities (default False).
        pretrained: a local Stable Diffusion 2.1 folder (diffusers layout), or None.
        vae: a pretrained AutoencoderKL folder; None: the vae stage trains one.
        text: ``TextConfig``.
    """

    GROUP = "model"

    unet: Literal["tiny", "published_tiny", "paper"] = "tiny"
    unet_overrides: dict[str, Any] = Field(default_factory=dict)
    shared_first_block: bool = False
    pretrained: Optional[str] = None
    vae: Optional[str] = None
    text: TextConfig = Field(default_factory=TextConfig)


class VaeConfig(ParamsModel):
    """params.yaml ``vae``: how the vae stage trains (or fine-tunes) the AutoencoderKL.

    The defaults are the CPU recipe measured on the demo world (64 px, factor 8, one core):
    MSE (PSNR is MSE-based), batches of 8, a peak learning rate of 2e-3 reached by a linear
    warm-up and decayed by a cosine to 2 % of it at the last step, AdamW betas (0.9, 0.99), random
    flips / quarter turns of every batch, on ``tiny_vae_config``'s narrow [16, 16, 32, 32] VAE.

    Attributes:
        steps: optimiser steps (int >= 0, default 300); 0 skips training (a pretrained VAE as is).
        batch_size: images per step, RGB and DEM images mixed (int >= 1, default 8).
        learning_rate: peak AdamW learning rate (float > 0, default 2e-3).
        kl_weight: weight of the KL term, which is the mean per latent element (float >= 0,
            default 1e-6: it only keeps the latents tame).
        seed: seeds the weights, the batch order and the posterior samples (int, default 0).
        max_dem_error_m: the stage fails when the held-out DEM RMSE in metres is above it
            (float > 0, default 300.0: a loose guard for the tiny CPU VAE; tighten it for real runs).
        latent_channels: channels of the tiny VAE's latents (int >= 1, default 4); a pretrained
            VAE keeps its own.
        finetune: train a pretrained VAE further (bool, default False); without ``pretrained``
            the tiny VAE is always trained.
        loss: reconstruction loss, "l1" or "mse" (default "mse").
        weight_decay: AdamW weight decay (float >= 0, default 0.0).
        max_grad_norm: gradients are clipped to this global norm (float >= 0, default 1.0;
            0 = no clipping).
        block_out_channels: widths of the tiny VAE's blocks, one per block (list of int or None,
            default None: ``tiny_vae_config``'s).
        warmup_steps: linear learning-rate warm-up from ``learning_rate / warmup_steps`` to
            ``learning_rate`` (int >= 0, default 50; 0 = none; capped at a fifth of ``steps``).
        lr_floor: the cosine decay after the warm-up ends at ``lr_floor * learning_rate`` at the
            last step (float in [0, 1], default 0.02; 1 = a constant learning rate).
        adam_beta2: AdamW's second beta (float in [0, 1), default 0.99; the first is 0.9).
        augment: flip and rotate each batch by a random multiple of 90 degrees (bool, default True;
            terrain has no preferred orientation).
        mean_fraction: share of the steps, from the start, that decode the posterior mean rather
            than a posterior sample (float in [0, 1], default 0.0). Faster to fit, but the
            posterior std is then left untrained (about 1), so the diffusion model's sampled
            latents are noisy: keep it 0 unless the VAE is only used through its mean.
    """

    GROUP = "vae"

    steps: NonNegativeInt = 300
    batch_size: Count = 8
    learning_rate: PositiveFloat = 2e-3
    kl_weight: NonNegativeFloat = 1e-6
    seed: int = 0
    max_dem_error_m: PositiveFloat = 300.0
    latent_channels: Count = 4
    finetune: bool = False
    loss: Literal["l1", "mse"] = "mse"
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: NonNegativeFloat = 1.0
    block_out_channels: Optional[list[Count]] = None
    warmup_steps: NonNegativeInt = 50
    lr_floor: Probability = 0.02
    adam_beta2: float = Field(0.99, ge=0.0, lt=1.0)
    augment: bool = True
    mean_fraction: Probability = 0.0
