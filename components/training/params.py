"""The train group of params.yaml as a typed object (unknown keys are an error, not a silent no-op)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from components.params import reject_unknown_keys

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainParams:
    """Training settings (params.yaml ``train``); the README lists what each one does.

    steps counts optimiser updates; a micro-batch is ``batch_size`` samples per process, and an
    update sees ``batch_size * grad_accumulation * processes`` samples.
    """

    seed: int = 0
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    weight_decay: float = 1e-2
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema: Mapping[str, Any] = field(default_factory=lambda: {"enabled": True, "decay": 0.999})
    train_text_encoder: bool = False
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    resume: str = "latest"
    validate_every: int = 100
    validation_samples: int = 8
    grid_every: int = 300
    grid_captions: tuple[str, ...] = ()
    grid_seeds: tuple[int, ...] = (42,)
    grid_steps: int = 20
    log_every: int = 10
    experiment: str = "mesa"
    accelerate_config: str = "infra/accelerate/cpu.yaml"
    num_processes: int = 1
    dataloader_workers: int = 0
    shuffle_buffer: int = 64
    log_model: bool = True

    @classmethod
    def from_params(cls, train: Mapping[str, Any]) -> TrainParams:
        reject_unknown_keys("train", dict(train), {f.name for f in fields(cls)})
        values = dict(train)
        for key in ("grid_captions", "grid_seeds"):
            if key in values:
                values[key] = tuple(values[key] or ())
        params = cls(**values)
        params.check()
        return params

    def check(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        for key in ("steps", "batch_size", "grad_accumulation", "checkpoint_every", "keep_checkpoints",
                    "validate_every", "log_every", "num_processes"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.resume not in ("latest", "none") and not str(self.resume).startswith("checkpoint-"):
            raise ValueError(f"train.resume must be 'latest', 'none' or a checkpoint folder name "
                             f"(checkpoint-000200), got {self.resume!r}")

    @property
    def ema_enabled(self) -> bool:
        return bool(self.ema.get("enabled", False))

    @property
    def ema_decay(self) -> float:
        return float(self.ema.get("decay", 0.999))
