"""A tiny ``TerrainPipeline`` with seeded random weights, for tests and benchmarks (no training behind it)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from components.model.factories import build_unet, build_vae, tiny_unet_config, tiny_vae_config
from components.model.pipeline import TerrainPipeline, build_pipeline
from components.model.text import tiny_text_encoder, train_caption_tokenizer

# A stand-in stats.json for random pipelines (no prepare stage behind them).
TINY_STATS: dict[str, Any] = {
    "dem_scale_m": 500.0,
    "rgb_rule": {"gain": 2.5, "gamma": 2.2},
    "base_elevation_m": {"": 300.0},
}


def tiny_random_pipeline(captions: list[str], image_px: int = 32, seed: int = 0,
                         stats: Mapping | None = None) -> TerrainPipeline:
    """A tiny pipeline with seeded random weights (same arguments -> same weights), for tests.

    Args:
        captions (list[str]): the corpus the byte-level tokenizer is trained on (any prompt
            still tokenises).
        image_px (int): default output size (a multiple of 16: VAE factor 8, one UNet
            down-sampling). Default 32.
        seed (int): seeds the text encoder, the UNet and the VAE. Default 0.
        stats (Mapping | None): stats.json-like content; default ``TINY_STATS`` (S = 500 m,
            base 300 m).
    """
    if image_px % 16:
        raise ValueError(f"image_px must be a multiple of 16 (VAE factor 8 x one UNet down-sampling), got {image_px}")
    tokenizer = train_caption_tokenizer(captions, vocab_size=512)
    hidden = 32
    text_encoder = tiny_text_encoder(len(tokenizer), hidden_size=hidden, seed=seed)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's global RNG untouched
        torch.manual_seed(seed + 1)
        unet = build_unet(tiny_unet_config(sample_size=image_px // 8, cross_attention_dim=hidden))
        torch.manual_seed(seed + 2)
        vae = build_vae(tiny_vae_config(latent_factor=8, sample_size=image_px))
    return build_pipeline(unet, vae, text_encoder, tokenizer, stats if stats is not None else TINY_STATS)
