"""Training: the masked v-prediction loss (``loss``); the loop, checkpoints and EMA live beside it."""
from components.training.loss import (
    VALIDATION_TIMESTEPS,
    LossParts,
    NoisyLatents,
    ValidationNoise,
    apply_noise,
    fixed_validation_noise,
    masked_v_loss,
    noisy_latents,
    v_target,
)

__all__ = [
    "VALIDATION_TIMESTEPS",
    "LossParts",
    "NoisyLatents",
    "ValidationNoise",
    "apply_noise",
    "fixed_validation_noise",
    "masked_v_loss",
    "noisy_latents",
    "v_target",
]
