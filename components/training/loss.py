"""The training objective: masked v-prediction over the image and DEM latents.

MESA denoises two latents at once (image and DEM, 4 channels each, stacked into 8 channels):
each modality gets its own Gaussian noise, both share one timestep per sample, and the network
predicts the velocity ``v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` of each (v-prediction, as
Stable Diffusion 2.1). The squared error is averaged over the valid latent positions only (the
valid-pixel mask brought to latent resolution), so clouds and no-data never teach the model.

Weighting (``masked_v_loss``): each modality's part is the mean squared error over its 4
channels and the batch's valid positions; ``total = image + dem``, the two modalities weighted
equally. A sum rather than a mean over the 8 channels keeps each part on the scale of a
single-latent Stable Diffusion loss, so the learning rates of a one-modality fine-tune carry over.

Positions are pooled over the whole batch before dividing (not averaged per sample), so a
sample counts in proportion to its valid area and a sample with no valid position adds nothing.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "LossParts",
    "NoisyLatents",
    "ValidationNoise",
    "VALIDATION_TIMESTEPS",
    "v_target",
    "masked_v_loss",
    "noisy_latents",
    "apply_noise",
    "fixed_validation_noise",
]

#: Timesteps the validation loss cycles through: spread over the schedule, fixed across runs.
VALIDATION_TIMESTEPS: tuple[int, ...] = (100, 300, 500, 700, 900)


class LossParts(NamedTuple):
    """One batch's loss and what it was made of.

    Attributes:
        total: scalar tensor, ``image + dem`` (what to back-propagate).
        image: scalar tensor, the image latent's masked mean squared error.
        dem: scalar tensor, the DEM latent's masked mean squared error.
        valid_share: float32 scalar tensor, valid positions / all positions of the batch.
        empty_samples: int, samples whose mask has no valid position (they added nothing).
    """

    total: torch.Tensor
    image: torch.Tensor
    dem: torch.Tensor
    valid_share: torch.Tensor
    empty_samples: int


class NoisyLatents(NamedTuple):
    """The network's input and target for one batch.

    Attributes:
        noisy: (B, 2C, h, w) image then DEM latents with noise added at ``timesteps``.
        target: (B, 2C, h, w) their velocities, the v-prediction target.
        timesteps: (B,) int64, one timestep per sample, shared by both modalities.
    """

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor


class ValidationNoise(NamedTuple):
    """Fixed timesteps and noises for the validation loss (see ``fixed_validation_noise``).

    Attributes:
        timesteps: (n,) int64.
        image_noise: (n, *shape) float32.
        dem_noise: (n, *shape) float32.
    """

    timesteps: torch.Tensor
    image_noise: torch.Tensor
    dem_noise: torch.Tensor


def v_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The v-prediction target of ``latents`` noised with ``noise`` at ``timesteps``.

    Args:
        scheduler: a diffusers scheduler with ``get_velocity`` (``training_scheduler()``).
        latents: (B, C, h, w) clean latents x0.
        noise: (B, C, h, w) the Gaussian noise added to them.
        timesteps: (B,) int timesteps.

    Returns:
        (B, C, h, w) ``sqrt(a_t) * noise - sqrt(1 - a_t) * latents``, computed by the scheduler
        itself so that the target matches the schedule the pipeline samples with.
    """
    return scheduler.get_velocity(latents, noise, timesteps)


def _check_loss_inputs(model_pred: torch.Tensor, target: torch.Tensor, mask_latent: torch.Tensor) -> None:
    if model_pred.ndim != 4 or model_pred.shape[1] % 2:
        raise ValueError(
            f"model_pred has shape {tuple(model_pred.shape)}, expected (B, 2C, h, w): the image latent's C "
            "channels then the DEM latent's C channels"
        )
    if target.shape != model_pred.shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)} but model_pred has {tuple(model_pred.shape)}: "
            "both must be (B, 2C, h, w)"
        )
    b, _, h, w = model_pred.shape
    if tuple(mask_latent.shape) != (b, 1, h, w):
        raise ValueError(
            f"mask_latent has shape {tuple(mask_latent.shape)}, expected {(b, 1, h, w)}: one channel at "
            "latent resolution, 1 = valid (the samples' mask_latent)"
        )


def masked_v_loss(model_pred: torch.Tensor, target: torch.Tensor, mask_latent: torch.Tensor) -> LossParts:
    """Masked squared error of the v-predictions, per modality and in total.

    Args:
        model_pred: (B, 2C, h, w) the network's output: image channels, then DEM channels
            (C = 4 for a Stable Diffusion VAE). Any float dtype; the loss is computed in float32.
        target: (B, 2C, h, w) the velocities (``noisy_latents(...).target``).
        mask_latent: (B, 1, h, w) float, 1 = valid position, 0 = masked. Values in between
            weight a position; the normaliser is then the sum of the weights.

    Returns:
        ``LossParts``. Masked positions are removed with ``torch.where`` rather than multiplied
        by 0, so a NaN or inf there (no-data) cannot leak in, and the gradient with respect to
        ``model_pred`` at a masked position is exactly zero. With no valid position in the whole
        batch every part is 0 (with zero gradients), not NaN.
    """
    _check_loss_inputs(model_pred, target, mask_latent)
    channels = model_pred.shape[1] // 2
    mask = mask_latent.to(device=model_pred.device, dtype=torch.float32)
    valid = mask > 0
    diff = torch.where(valid, model_pred.float() - target.to(model_pred.device).float(), 0.0)
    weighted = diff.square() * torch.where(valid, mask, 0.0)
    weight = torch.where(valid, mask, 0.0).sum()
    # an all-masked batch divides 0 by 1 instead of 0 by 0 (NaN)
    denominator = torch.where(weight > 0, weight, torch.ones_like(weight)) * channels
    image = weighted[:, :channels].sum() / denominator
    dem = weighted[:, channels:].sum() / denominator
    valid_share = valid.float().mean()
    empty_samples = int((~valid.flatten(1).any(dim=1)).sum().item())
    return LossParts(image + dem, image, dem, valid_share, empty_samples)


def per_sample_squared_error(model_pred: torch.Tensor, target: torch.Tensor,
                             mask_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the masked squared v-error summed over channels and positions, and its normaliser.

    Summed over a batch, error / normaliser is ``masked_v_loss(...).total`` (float64 sums, so a
    resample of samples recomputes the batch's loss exactly): the form a per-cell table keeps.

    Args:
        model_pred, target, mask_latent: as for :func:`masked_v_loss`.

    Returns:
        (error, normaliser): two float64 tensors of shape (B,); the normaliser is the sample's
        summed mask weight times the channels per modality.
    """
    _check_loss_inputs(model_pred, target, mask_latent)
    channels = model_pred.shape[1] // 2
    mask = mask_latent.to(device=model_pred.device, dtype=torch.float32)
    valid = mask > 0
    diff = torch.where(valid, model_pred.float() - target.to(model_pred.device).float(), 0.0)
    weights = torch.where(valid, mask, 0.0)
    error = (diff.square() * weights).double().flatten(1).sum(dim=1)
    return error, weights.double().flatten(1).sum(dim=1) * channels


def apply_noise(
    scheduler,
    image_latents: torch.Tensor,
    dem_latents: torch.Tensor,
    timesteps: torch.Tensor,
    image_noise: torch.Tensor,
    dem_noise: torch.Tensor,
) -> NoisyLatents:
    """Noise both latents at the given timesteps with the given noises; stack them with targets.

    Args:
        scheduler: a diffusers noise scheduler (``training_scheduler()``).
        image_latents, dem_latents: (B, C, h, w) clean latents, already multiplied by the VAE's
            scaling factor.
        timesteps: (B,) int timesteps, one per sample (used for both modalities).
        image_noise, dem_noise: (B, C, h, w) the noise of each modality.

    Returns:
        ``NoisyLatents`` with everything on the latents' device and dtype.
    """
    if image_latents.shape != dem_latents.shape:
        raise ValueError(
            f"image latents {tuple(image_latents.shape)} and DEM latents {tuple(dem_latents.shape)} differ: "
            "both modalities are encoded by the same VAE at the same size"
        )
    device, dtype = image_latents.device, image_latents.dtype
    timesteps = timesteps.to(device=device, dtype=torch.long)
    image_noise = image_noise.to(device=device, dtype=dtype)
    dem_noise = dem_noise.to(device=device, dtype=dtype)
    dem_latents = dem_latents.to(device=device, dtype=dtype)
    noisy = torch.cat(
        [
            scheduler.add_noise(image_latents, image_noise, timesteps),
            scheduler.add_noise(dem_latents, dem_noise, timesteps),
        ],
        dim=1,
    )
    target = torch.cat(
        [
            v_target(scheduler, image_latents, image_noise, timesteps),
            v_target(scheduler, dem_latents, dem_noise, timesteps),
        ],
        dim=1,
    )
    return NoisyLatents(noisy, target, timesteps)


def noisy_latents(
    scheduler, image_latents: torch.Tensor, dem_latents: torch.Tensor, generator: torch.Generator | None = None
) -> NoisyLatents:
    """A training batch's noisy input and v-target: independent noises, one shared timestep.

    Args:
        scheduler: a diffusers noise scheduler (``training_scheduler()``).
        image_latents, dem_latents: (B, C, h, w) clean latents (scaled by the VAE's factor).
        generator: a CPU ``torch.Generator`` (default None: torch's global one). Draws, in this
            order: the B timesteps (uniform in [0, num_train_timesteps)), the image noise, the
            DEM noise; all on the CPU, then moved to the latents' device, so a seed gives the
            same batch on any device.

    Returns:
        ``NoisyLatents``.
    """
    b = image_latents.shape[0]
    steps = int(scheduler.config.num_train_timesteps)
    timesteps = torch.randint(0, steps, (b,), generator=generator, dtype=torch.long)
    image_noise = torch.randn(tuple(image_latents.shape), generator=generator, dtype=torch.float32)
    dem_noise = torch.randn(tuple(dem_latents.shape), generator=generator, dtype=torch.float32)
    return apply_noise(scheduler, image_latents, dem_latents, timesteps, image_noise, dem_noise)


def _index_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for validation sample ``index``: its noise does not depend on n."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{int(index)}".encode(), digest_size=8, person=b"mesa-val").digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def fixed_validation_noise(
    n: int, shape: Sequence[int], seed: int = 0, timesteps: Sequence[int] = VALIDATION_TIMESTEPS
) -> ValidationNoise:
    """Timesteps and noises for a validation loss that is comparable across steps and runs.

    Args:
        n: number of validation samples.
        shape: one modality's latent shape (C, h, w).
        seed: the validation seed (default 0).
        timesteps: the timesteps to cycle through (default ``VALIDATION_TIMESTEPS``:
            100, 300, 500, 700, 900), sample i gets ``timesteps[i % len(timesteps)]``.

    Returns:
        ``ValidationNoise`` on the CPU. Sample i's noises come from a generator seeded by
        (seed, i) alone, so a larger validation set keeps the first samples' noises.
    """
    if int(n) < 0:
        raise ValueError(f"n must be a number of validation samples (>= 0), got {n!r}")
    if not timesteps:
        raise ValueError("timesteps must hold at least one timestep to cycle through")
    shape = tuple(int(s) for s in shape)
    cycle = torch.tensor([int(t) for t in timesteps], dtype=torch.long)
    steps = cycle[torch.arange(int(n)) % len(cycle)]
    image, dem = torch.empty((int(n), *shape)), torch.empty((int(n), *shape))
    for i in range(int(n)):
        generator = _index_generator(seed, i)
        image[i] = torch.randn(shape, generator=generator)
        dem[i] = torch.randn(shape, generator=generator)
    return ValidationNoise(steps, image, dem)
