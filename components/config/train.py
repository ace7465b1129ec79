"""params.yaml ``train`` (the accelerate loop) and ``sample`` (generation defaults)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from components.config.base import (Count, NonBlank, NonNegativeFloat, NonNegativeInt, ParamsModel, PositiveFloat,
                                    Probability, tuple_of)

MixedPrecision = Literal["no", "fp16", "bf16"]
# Short sampler names (components.model.factories.SAMPLERS); `mesa generate --sampler` also takes
# a diffusers scheduler class name.
Sampler = Literal["ddim", "ddpm", "euler", "dpm++", "pndm"]


class EmaConfig(ParamsModel):
    """``train.ema``: an exponential moving average of the UNet's weights."""

    enabled: bool = False
    decay: Probability = 0.999


class TrainConfig(ParamsModel):
    """params.yaml ``train`` (the README lists what each key does).

    ``steps`` counts optimiser updates; a micro-batch is ``batch_size`` samples per process, and
    an update sees ``batch_size * grad_accumulation * num_processes`` samples. Counts of steps,
    samples and processes are at least 1; ``resume`` is ``latest``, ``none`` or a checkpoint
    folder name (``checkpoint-000400``).
    """

    GROUP = "train"

    seed: int = 0
    steps: Count = 600
    batch_size: Count = 16
    learning_rate: PositiveFloat = 1e-4
    warmup_steps: NonNegativeInt = 0
    grad_clip: PositiveFloat = 1.0
    grad_accumulation: Count = 1
    weight_decay: NonNegativeFloat = 1e-2
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    ema: EmaConfig = Field(default_factory=lambda: EmaConfig(enabled=True))
    train_text_encoder: bool = False
    checkpoint_every: Count = 200
    keep_checkpoints: Count = 2
    resume: str = "latest"
    validate_every: Count = 100
    validation_samples: int = Field(8, ge=2)  # validation compares captions: two samples at least
    grid_every: Count = 300
    grid_captions: tuple_of(NonBlank) = ()
    grid_seeds: tuple_of(int) = (42,)
    grid_steps: Count = 20
    log_every: Count = 10
    experiment: NonBlank = "mesa"
    accelerate_config: NonBlank = "infra/accelerate/cpu.yaml"
    num_processes: Count = 1
    dataloader_workers: NonNegativeInt = 0
    shuffle_buffer: NonNegativeInt = 64
    log_model: bool = True

    @field_validator("grid_captions", "grid_seeds", mode="before")
    @classmethod
    def _null_is_none(cls, value):
        return () if value is None else value

    @field_validator("resume")
    @classmethod
    def _resume_point(cls, value):
        if value not in ("latest", "none") and not value.startswith("checkpoint-"):
            raise ValueError("must be 'latest', 'none' or a checkpoint folder name (checkpoint-000200)")
        return value


class SampleConfig(ParamsModel):
    """params.yaml ``sample``: generation defaults (mesa generate, training grids).

    Attributes:
        sampler: ``ddim``, ``ddpm``, ``euler``, ``dpm++`` or ``pndm`` (default ``ddim``).
        steps: denoising steps (default 50).
        guidance: classifier-free guidance scale (default 7.0).
        eta: DDIM's eta in [0, 1] (default 0.0).
    """

    GROUP = "sample"

    sampler: Sampler = "ddim"
    steps: Count = 50
    guidance: NonNegativeFloat = 7.0
    eta: Probability = 0.0
