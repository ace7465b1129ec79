"""UNet configurations and construction (CPU or meta device)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .unet import TwoHeadUNet

# Names and shapes of the published network at a tiny config (a list of facts, kept with the code).
PUBLISHED_KEYS_FILE = Path(__file__).resolve().parent / "reference" / "mesa_unet_keys_tiny.txt"


def tiny_unet_config(**overrides: Any) -> dict[str, Any]:
    """A two-block configuration for CPU training and tests (a fraction of a second per step).

    Two blocks is the minimum: block 0 becomes the per-modality heads, block 1 the shared part.
    """
    cfg: dict[str, Any] = {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
        "use_linear_projection": True,
        "shared_first_block": False,
    }
    cfg.update(overrides)
    return cfg


# The header of shared/reference/mesa_unet_keys_tiny.txt (the published network at a tiny,
# SD-2.1-shaped configuration), kept here so the factory does not depend on that file.
_PUBLISHED_TINY = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": [2, 2, 4, 4],
    "norm_num_groups": 8,
    "use_linear_projection": True,
}


def published_tiny_config(**overrides: Any) -> dict[str, Any]:
    """The configuration of ``mesa_unet_keys_tiny.txt`` (its header), separate first blocks."""
    cfg = json.loads(json.dumps(_PUBLISHED_TINY))
    cfg["shared_first_block"] = False
    cfg.update(overrides)
    return cfg


def read_keys_file(path: str | Path = PUBLISHED_KEYS_FILE) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Parse a keys file: (config from its JSON header line, {name: shape})."""
    config: dict[str, Any] | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            body = line.lstrip("#").strip()
            if body.startswith("{"):
                config = json.loads(body)
            continue
        if not line.strip():
            continue
        name, shape = line.split("\t")
        shapes[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    if config is None:
        raise ValueError(f"{path}: no JSON config header")
    return config, shapes


def paper_unet_config(**overrides: Any) -> dict[str, Any]:
    """Stable Diffusion 2.1 (768 px, v-prediction) sizes, per modality: the paper's network."""
    cfg: dict[str, Any] = {
        "sample_size": 96,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "norm_num_groups": 32,
        "use_linear_projection": True,
        "upcast_attention": True,
        "shared_first_block": False,
    }
    cfg.update(overrides)
    return cfg


def unet_preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The config of params ``model.unet`` preset ``name`` (tiny, published_tiny, paper) with ``overrides``."""
    presets = {"tiny": tiny_unet_config, "published_tiny": published_tiny_config, "paper": paper_unet_config}
    if name not in presets:
        raise ValueError(f"unknown UNet preset {name!r}; presets: {sorted(presets)}")
    return presets[name](**overrides)


def sd_config(config: dict[str, Any]) -> dict[str, Any]:
    """The matching plain ``UNet2DConditionModel`` arguments (drops ``shared_first_block``)."""
    return {k: v for k, v in config.items() if k != "shared_first_block"}


def build_unet(config: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> TwoHeadUNet:
    """Build a TwoHeadUNet; ``device="meta"`` builds it without allocating weights."""
    if str(device) == "meta":
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = TwoHeadUNet(**config)
    else:
        model = TwoHeadUNet(**config).to(device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model


def tiny_vae_config(latent_factor: int = 8, latent_channels: int = 4, **overrides: Any) -> dict[str, Any]:
    """A small ``AutoencoderKL`` for the tiny and micro profiles (trained by the ``vae`` stage).

    One down-sampling per block after the first, so ``latent_factor`` = 2 ** (blocks - 1): 8 gives
    SD's factor with four blocks. Three channels in and out: RGB, and the DEM repeated 3 times.
    """
    blocks = int(latent_factor).bit_length() - 1
    if latent_factor < 1 or 2**blocks != latent_factor:
        raise ValueError(f"latent_factor must be a power of two, got {latent_factor}")
    # Narrow and without mid-block attention: the vae stage's CPU recipe fits about 1,100 steps
    # of 8 images at 64 px in 150 s on one core, which a wider VAE trades for far fewer steps.
    widths = [16, 16, 32, 32, 32, 32][: blocks + 1]
    cfg: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": int(latent_channels),
        "block_out_channels": widths,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "mid_block_add_attention": False,
        "sample_size": 64,
        "scaling_factor": 1.0,  # the vae stage measures the real one from the latents' spread
    }
    cfg.update(overrides)
    return cfg


def build_vae(config: dict[str, Any]):
    """An ``AutoencoderKL`` from a config (``tiny_vae_config`` or a pretrained folder's)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


# Stable Diffusion 2.1's noise schedule: what the paper fine-tunes from, so the tiny model uses it too.
SD21_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def training_scheduler(**overrides: Any):
    """The DDPM noise scheduler training adds noise with (v-prediction, SD 2.1's betas)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
            "clip_sample", "steps_offset", "timestep_spacing")
    return DDPMScheduler(**{**{k: SD21_SCHEDULER[k] for k in keys}, **overrides})


SAMPLERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
            "dpm++": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler"}


def sampling_scheduler(name: str = "ddim", config: dict[str, Any] | None = None):
    """An inference scheduler by short name (SAMPLERS) or diffusers class name, on the training schedule."""
    import diffusers

    class_name = SAMPLERS.get(name, name)
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None or not hasattr(scheduler_class, "from_config"):
        raise ValueError(f"unknown sampler {name!r}: use one of {sorted(SAMPLERS)} or a diffusers scheduler class name")
    return scheduler_class.from_config(config or SD21_SCHEDULER)
