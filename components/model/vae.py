"""The VAE of the terrain pipeline: train an ``AutoencoderKL`` on both modalities and measure what it loses.

One VAE encodes both modalities, as in MESA: the RGB image (3 channels) and the DEM (one channel
repeated 3 times), both in [-1, 1] by the samples' rules (``rgb_to_model``, ``dem_to_model``).
It is trained on the plain L2A image (column ``rgb``, never ``rgb_shadow``) so that both arms of
the shadow-correction ablation share one VAE.

- data: :func:`load_vae_arrays` (the samples of one split, in model units, with their masks);
- training: :func:`train_vae` (masked L1 or MSE reconstruction + a small KL term, augmented);
- measuring: :func:`measure_scaling_factor` (1 / std of posterior samples over both modalities)
  and :func:`evaluate_reconstruction` (against bilinear down- and up-sampling by the latent factor).

The ``vae`` stage that runs them in order and saves the model: :mod:`components.model.vae_stage`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.config import VaeConfig
from components.samples.dataset import dem_to_model, rgb_to_model
from components.samples.dem_encoding import decode_dem
from components.samples.shards import read_sample_shard, shard_info

__all__ = [
    "load_vae_arrays",
    "masked_reconstruction_loss",
    "lr_factor",
    "augment_batch",
    "train_vae",
    "measure_scaling_factor",
    "evaluate_reconstruction",
]

ProgressFn = Callable[[int, int, float], None]

# PSNR is taken on model units in [-1, 1], so the data range is 2 and the peak power 2 ** 2.
_PEAK_POWER = 4.0


# ---------------------------------------------------------------------------------------------
# data


def _shard_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) of a shard's images, from its metadata (for an empty selection)."""
    return tuple(shard_info(path)["shapes"]["dem"])  # type: ignore[return-value]


def load_vae_arrays(shards: Sequence[str | Path], dem_scale_m: float, split: str | None = None,
                    dem_knee_m: float | None = None) -> dict[str, Any]:
    """The samples the VAE sees, as model-ready tensors.

    Args:
        shards: sample shard paths (data/samples/*.parquet); read in sorted order.
        dem_scale_m: the DEM scale S in metres (stats.json ``dem_scale_m``).
        split: "train", "test", or None for every sample (default None).
        dem_knee_m: stats.json ``dem_knee_m`` (default None: the DEM enters linearly).

    Returns:
        dict with ``rgb`` float32 (N, 3, H, W) in [-1, 1] (the plain L2A image, never
        ``rgb_shadow``), ``dem`` float32 (N, 3, H, W) in [-1, 1] (clipped at +-S), ``mask``
        float32 (N, 1, H, W) (1 = valid) and ``sample_id`` (list of str).
    """
    paths = sorted(dict.fromkeys(str(p) for p in shards))
    if not paths:
        raise ValueError("load_vae_arrays needs at least one sample shard (data/samples/*.parquet): run the prepare stage")
    rgb, dem, mask, ids = [], [], [], []
    for path in paths:
        for sample in read_sample_shard(path, columns=["sample_id", "split", "rgb", "dem", "mask"]):
            if split is not None and sample["split"] != split:
                continue
            rgb.append(rgb_to_model(sample["rgb"]))
            dem.append(dem_to_model(sample["dem"], dem_scale_m, dem_knee_m))
            mask.append(torch.from_numpy(sample["mask"].astype(np.float32))[None])
            ids.append(sample["sample_id"])
    if not ids:
        h, w = _shard_shape(paths[0])
        return {"rgb": torch.zeros(0, 3, h, w), "dem": torch.zeros(0, 3, h, w), "mask": torch.zeros(0, 1, h, w),
                "sample_id": []}
    return {"rgb": torch.stack(rgb), "dem": torch.stack(dem), "mask": torch.stack(mask), "sample_id": ids}


# ---------------------------------------------------------------------------------------------
# training


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _vae_device(vae: torch.nn.Module) -> torch.device:
    return next(vae.parameters()).device


def masked_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               kind: str = "l1") -> torch.Tensor:
    """Mean L1 or squared error over the valid pixels of a batch (masked pixels count for nothing).

    Args:
        reconstruction: (B, C, H, W) tensor.
        target: (B, C, H, W) tensor.
        mask: (B, 1, H, W), 1 = valid, 0 = no-data or cloud.
        kind: "l1" or "mse" (default "l1").
    """
    error = reconstruction - target
    error = error.abs() if kind == "l1" else error.square()
    # where() rather than a product, so a non-finite masked pixel cannot leak in as NaN * 0.
    error = torch.where(mask.expand_as(error) > 0, error, torch.zeros_like(error))
    valid = mask.expand_as(error).sum().clamp_min(1.0)
    return error.sum() / valid


def lr_factor(step: int, steps: int, warmup_steps: int, floor: float) -> float:
    """The learning-rate multiplier at 0-based ``step`` of ``steps``: linear warm-up, then cosine.

    Warm-up: (step + 1) / warmup over the first ``warmup_steps`` steps (capped at a fifth of
    ``steps``, so a short run still decays); then a half cosine from 1 down to ``floor``,
    reached exactly at the last step (steps - 1).
    """
    warmup = min(int(warmup_steps), int(steps) // 5)
    if step < warmup:
        return (step + 1) / warmup
    span = int(steps) - 1 - warmup
    if span <= 0:
        return 1.0
    t = min(max((step - warmup) / span, 0.0), 1.0)
    return float(floor) + (1.0 - float(floor)) * 0.5 * (1.0 + math.cos(math.pi * t))


def augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random element of the dihedral group (quarter turns, then maybe a mirror) for a whole batch.

    Images and masks get the same transform; ``generator`` (a CPU generator) draws it.
    """
    quarter = int(torch.randint(4, (1,), generator=generator))
    mirror = bool(torch.randint(2, (1,), generator=generator))
    images, masks = torch.rot90(images, quarter, (2, 3)), torch.rot90(masks, quarter, (2, 3))
    if mirror:
        images, masks = images.flip(3), masks.flip(3)
    return images, masks


def _mixed_images(rgb: torch.Tensor, dem: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pool of 2N images (RGB then DEM) and their masks, so each batch mixes the modalities."""
    if rgb.shape != dem.shape or rgb.shape[0] != mask.shape[0]:
        raise ValueError(f"rgb {tuple(rgb.shape)}, dem {tuple(dem.shape)} and mask {tuple(mask.shape)} must "
                         "describe the same samples (N, 3, H, W) / (N, 1, H, W): use load_vae_arrays")
    return torch.cat([rgb, dem]), torch.cat([mask, mask])


def _batch_order(pool: int, steps: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches for every step: shuffled epochs over the pool, one after the other."""
    batch_size = min(batch_size, pool)
    order = torch.cat([torch.randperm(pool, generator=generator)
                       for _ in range(math.ceil(steps * batch_size / pool) + 1)])
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def train_vae(vae, rgb: torch.Tensor, dem: torch.Tensor, mask: torch.Tensor, params: VaeConfig,
              progress: ProgressFn | None = None, device: str | torch.device | None = None) -> list[dict[str, float]]:
    """Train ``vae`` in place on RGB and DEM images together; deterministic for ``params.seed`` on CPU.

    loss = masked reconstruction (``params.loss``, valid pixels only) + ``params.kl_weight`` * KL,
    with KL the mean per latent element of KL(posterior || N(0, 1)); the decoder sees a posterior
    sample (the posterior mean over the first ``params.mean_fraction`` of the steps). The learning
    rate follows ``lr_factor`` (warm-up, cosine to ``params.lr_floor``); each batch is flipped /
    rotated when ``params.augment``. One CPU generator seeded by ``params.seed`` draws the batch
    order (and the augmentation), another the posterior noise, so a run does not depend on the global RNG (the initial weights are the
    caller's: ``run_vae_stage`` seeds them with ``params.seed``). The encoder sees masked pixels
    as they are (clouds, filled no-data); only the loss ignores them.

    Args:
        vae: a diffusers ``AutoencoderKL`` (its weights are updated; it is left on ``device`` in eval mode).
        rgb: float32 (N, 3, H, W) in [-1, 1].
        dem: float32 (N, 3, H, W) in [-1, 1].
        mask: float32 (N, 1, H, W), 1 = valid.
        params: the stage's params (steps, batch_size, learning_rate, kl_weight, seed, loss,
            weight_decay, max_grad_norm, warmup_steps, lr_floor, adam_beta2, augment, mean_fraction).
        progress: called as ``progress(step, total, loss)`` about every 10 % and at the last step
            (default None).
        device: where to train (default None: CUDA when available, else CPU).

    Returns:
        History, one dict per step: ``step`` (1-based), ``loss``, ``rec_loss``, ``kl``, ``lr``.
    """
    device = torch.device(device) if device is not None else default_device()
    images, masks = _mixed_images(rgb, dem, mask)
    if len(images) == 0:
        raise ValueError("train_vae got no samples: the train split is empty (check prepare's test_share)")
    steps = int(params.steps)
    shuffle = torch.Generator().manual_seed(int(params.seed))
    order = _batch_order(len(images), steps, int(params.batch_size), shuffle)
    noise = torch.Generator().manual_seed(int(params.seed) + 1)
    vae.to(device).train()
    peak = float(params.learning_rate)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=peak, betas=(0.9, float(params.adam_beta2)),
                                  weight_decay=float(params.weight_decay), fused=True)
    mean_steps = int(round(float(params.mean_fraction) * steps))
    every = max(1, steps // 10)
    history: list[dict[str, float]] = []
    for step, index in enumerate(order, start=1):
        x, m = images[index], masks[index]
        if params.augment:
            x, m = augment_batch(x, m, shuffle)
        x, m = x.to(device), m.to(device)
        lr = peak * lr_factor(step - 1, steps, int(params.warmup_steps), float(params.lr_floor))
        for group in optimiser.param_groups:
            group["lr"] = lr
        posterior = vae.encode(x).latent_dist
        # A CPU generator keeps the noise identical on every device (diffusers moves it over).
        z = posterior.mean if step <= mean_steps else posterior.sample(generator=noise)
        reconstruction = vae.decode(z).sample
        rec = masked_reconstruction_loss(reconstruction, x, m, params.loss)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + float(params.kl_weight) * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if params.max_grad_norm > 0:
            # The odd batch of steep DEM or bright cloud otherwise throws a small VAE off course.
            torch.nn.utils.clip_grad_norm_(vae.parameters(), float(params.max_grad_norm))
        optimiser.step()
        history.append({"step": step, "loss": float(loss.detach()), "rec_loss": float(rec.detach()), "kl": float(kl.detach()),
                        "lr": lr})
        if progress is not None and (step % every == 0 or step == steps):
            progress(step, steps, history[-1]["loss"])
    vae.eval()
    return history


# ---------------------------------------------------------------------------------------------
# scaling factor and evaluation


@torch.no_grad()
def measure_scaling_factor(vae, images: torch.Tensor, batch_size: int = 32, seed: int = 0) -> float:
    """1 / std of posterior samples over ``images``: SD's way of making the latents unit-variance.

    Sampled latents (mean + std * noise), not the posterior mean, because the diffusion model is
    trained on sampled latents; one global std over every element (all channels, both
    modalities), as SD's 0.18215 was measured.

    Args:
        vae: an ``AutoencoderKL``.
        images: float32 (N, 3, H, W) in [-1, 1]; pass RGB and DEM together (``torch.cat``).
        batch_size: images per encode call (default 32).
        seed: seeds the posterior noise (default 0).
    """
    if len(images) == 0:
        raise ValueError("measure_scaling_factor got no images")
    device = _vae_device(vae)
    generator = torch.Generator().manual_seed(int(seed))
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(images), batch_size):
        z = vae.encode(images[start:start + batch_size].to(device)).latent_dist.sample(generator=generator)
        z = z.double()
        total += float(z.sum())
        total_sq += float(z.square().sum())
        count += z.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    if not std > 0:
        raise ValueError("the VAE's latents have zero spread: the scaling factor is undefined (train the VAE longer)")
    return 1.0 / std


def bilinear_baseline(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Down-sample by ``factor`` (bilinear, antialiased) and up-sample back (bilinear): what a
    latent grid of the same size holds with no learning at all.

    Args:
        images: (B, C, H, W) float tensor.
        factor: the latent factor (int), e.g. 8.
    """
    h, w = images.shape[-2:]
    small = F.interpolate(images, size=(max(h // factor, 1), max(w // factor, 1)), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Posterior mean -> decode, clamped to [-1, 1] (the inputs' range), on the CPU.

    Args:
        vae: an ``AutoencoderKL``.
        images: float32 (N, 3, H, W) in [-1, 1].
        batch_size: images per call (default 16).
    """
    device = _vae_device(vae)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1.0, 1.0).float().cpu())
    return torch.cat(out)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of (N, C, H, W) ``values`` over the valid pixels of ``mask`` (N, 1, H, W)."""
    keep = mask.expand_as(values) > 0
    return float(values[keep].double().mean()) if keep.any() else float("nan")


def _psnr(mse: float) -> float:
    """PSNR in dB for model units in [-1, 1] (peak-to-peak 2)."""
    return float("inf") if mse == 0 else 10.0 * math.log10(_PEAK_POWER / mse)


def evaluate_reconstruction(vae, rgb: torch.Tensor, dem: torch.Tensor, mask: torch.Tensor, dem_scale_m: float,
                            latent_factor: int, batch_size: int = 16,
                            dem_knee_m: float | None = None) -> dict[str, Any]:
    """How much the VAE loses, against bilinear down/up-sampling by the same factor, valid pixels only.

    The VAE reconstruction is posterior mean -> decode, clamped to [-1, 1]. The baseline is
    ``bilinear_baseline`` (antialiased bilinear down by ``latent_factor``, bilinear back up).
    MSE and PSNR are in model units ([-1, 1], PSNR peak-to-peak 2). The DEM in metres is the
    reconstruction's mean over its 3 channels decoded by the DEM encoding (times ``dem_scale_m``
    when linear), compared with the model input decoded the same way, which is clipped at +-S:
    errors are measured against the *clipped* DEM, so relief beyond +-S around the cell mean is
    not counted (stats.json ``dem_clipped_share`` says how much there is).

    Args:
        vae: an ``AutoencoderKL``.
        rgb: float32 (N, 3, H, W) in [-1, 1].
        dem: float32 (N, 3, H, W) in [-1, 1].
        mask: float32 (N, 1, H, W), 1 = valid.
        dem_scale_m: S, metres per model unit (float).
        latent_factor: the VAE's down-sampling factor (int).
        batch_size: images per VAE call (default 16).
        dem_knee_m: the DEM encoding's knee (default None: linear).

    Returns:
        Flat dict (ready for MLflow): ``rgb_mse``, ``rgb_psnr_db``, ``rgb_bilinear_mse``,
        ``rgb_bilinear_psnr_db``, ``rgb_beats_bilinear`` (lower MSE); ``dem_mse``, ``dem_psnr_db``,
        ``dem_bilinear_mse``, ``dem_bilinear_psnr_db``, ``dem_rmse_m``, ``dem_mae_m``,
        ``dem_bilinear_rmse_m``, ``dem_bilinear_mae_m``, ``dem_beats_bilinear`` (lower RMSE in
        metres); ``eval_samples`` and ``eval_valid_pixels`` (what the numbers were taken over).
    """
    if len(rgb) == 0:
        raise ValueError("evaluate_reconstruction got no samples")
    report: dict[str, Any] = {"eval_samples": int(len(rgb)), "eval_valid_pixels": int(mask.sum())}
    for name, images in (("rgb", rgb), ("dem", dem)):
        ours = reconstruct(vae, images, batch_size)
        base = bilinear_baseline(images, latent_factor)
        mse = _masked_mean((ours - images).square(), mask)
        base_mse = _masked_mean((base - images).square(), mask)
        report.update({f"{name}_mse": mse, f"{name}_psnr_db": _psnr(mse),
                       f"{name}_bilinear_mse": base_mse, f"{name}_bilinear_psnr_db": _psnr(base_mse)})
        if name == "rgb":
            report["rgb_beats_bilinear"] = bool(mse < base_mse)
            continue
        truth_m = decode_dem(images[:, :1], dem_scale_m, dem_knee_m)
        for label, rec in (("", ours), ("bilinear_", base)):
            error_m = decode_dem(rec.mean(dim=1, keepdim=True), dem_scale_m, dem_knee_m) - truth_m
            report[f"dem_{label}rmse_m"] = math.sqrt(_masked_mean(error_m.square(), mask))
            report[f"dem_{label}mae_m"] = _masked_mean(error_m.abs(), mask)
        report["dem_beats_bilinear"] = bool(report["dem_rmse_m"] < report["dem_bilinear_rmse_m"])
    return report
