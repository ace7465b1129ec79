"""The VAE of the terrain pipeline: train (or take) an ``AutoencoderKL`` and check what it loses.

One VAE encodes both modalities, as in MESA: the RGB image (3 channels) and the DEM (one channel
repeated 3 times), both in [-1, 1] by the samples' rules (``rgb_to_model``, ``dem_to_model``).
It is trained on the plain L2A image (column ``rgb``, never ``rgb_shadow``) so that both arms of
the shadow-correction ablation share one VAE.

What the ``vae`` stage does (``run_vae_stage``):

1. Read the samples: train split to train on, test split to evaluate on (train when test is empty).
2. Build the tiny VAE from ``tiny_vae_config`` (or load a pretrained local diffusers folder).
3. Train it (or fine-tune the pretrained one): masked L1 or MSE reconstruction + a small KL term.
4. Measure the latent scaling factor (1 / std of posterior samples over both modalities) and store
   it in the model's config, so ``save_pretrained`` keeps it for the UNet stages.
5. Evaluate on held-out samples against bilinear down- and up-sampling by the latent factor, and
   check the DEM error in metres against ``max_dem_error_m``.
6. Save the folder atomically and return the report (no run times: reports are versioned).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.atomic import atomic_folder
from components.model.factories import build_vae, tiny_vae_config
from components.params import reject_unknown_keys
from components.samples.dataset import dem_to_model, rgb_to_model
from components.samples.shards import read_sample_shard, shard_info

__all__ = [
    "VaeTrainParams",
    "load_vae_arrays",
    "masked_reconstruction_loss",
    "lr_factor",
    "augment_batch",
    "train_vae",
    "measure_scaling_factor",
    "evaluate_reconstruction",
    "resolve_pretrained",
    "save_vae_atomic",
    "run_vae_stage",
]

ProgressFn = Callable[[int, int, float], None]

# PSNR is taken on model units in [-1, 1], so the data range is 2 and the peak power 2 ** 2.
_PEAK_POWER = 4.0


@dataclass
class VaeTrainParams:
    """The ``vae:`` group of params.yaml.

    The defaults are the CPU recipe measured on the demo world (64 px, factor 8, one core):
    MSE (PSNR is MSE-based), batches of 8, a peak learning rate of 2e-3 reached by a linear
    warm-up and decayed by a cosine to 2 % of it at the last step, AdamW betas (0.9, 0.99), random
    flips / quarter turns of every batch, on ``tiny_vae_config``'s narrow [16, 16, 32, 32] VAE.

    Attributes:
        steps: optimiser steps (int, default 300); 0 skips training (a pretrained VAE as is).
        batch_size: images per step, RGB and DEM images mixed (int, default 8).
        learning_rate: peak AdamW learning rate (float, default 2e-3).
        kl_weight: weight of the KL term, which is the mean per latent element (float, default 1e-6:
            it only keeps the latents tame).
        seed: seeds the weights, the batch order and the posterior samples (int, default 0).
        max_dem_error_m: the stage fails when the held-out DEM RMSE in metres is above it
            (float, default 300.0: a loose guard for the tiny CPU VAE; tighten it for real runs).
        latent_channels: channels of the tiny VAE's latents (int, default 4); a pretrained VAE
            keeps its own.
        finetune: train a pretrained VAE further (bool, default False); without ``pretrained``
            the tiny VAE is always trained.
        loss: reconstruction loss, "l1" or "mse" (str, default "mse").
        weight_decay: AdamW weight decay (float, default 0.0).
        max_grad_norm: gradients are clipped to this global norm (float, default 1.0; 0 = no clipping).
        block_out_channels: widths of the tiny VAE's blocks, one per block (list of int or None,
            default None: ``tiny_vae_config``'s).
        warmup_steps: linear learning-rate warm-up from ``learning_rate / warmup_steps`` to
            ``learning_rate`` (int, default 50; 0 = none; capped at a fifth of ``steps``).
        lr_floor: the cosine decay after the warm-up ends at ``lr_floor * learning_rate`` at the
            last step (float in [0, 1], default 0.02; 1 = a constant learning rate).
        adam_beta2: AdamW's second beta (float, default 0.99; the first is 0.9).
        augment: flip and rotate each batch by a random multiple of 90 degrees (bool, default True;
            terrain has no preferred orientation).
        mean_fraction: share of the steps, from the start, that decode the posterior mean rather
            than a posterior sample (float in [0, 1], default 0.0). Faster to fit, but the
            posterior std is then left untrained (about 1), so the diffusion model's sampled
            latents are noisy: keep it 0 unless the VAE is only used through its mean.
    """

    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 2e-3
    kl_weight: float = 1e-6
    seed: int = 0
    max_dem_error_m: float = 300.0
    latent_channels: int = 4
    finetune: bool = False
    loss: str = "mse"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    block_out_channels: list[int] | None = None
    warmup_steps: int = 50
    lr_floor: float = 0.02
    adam_beta2: float = 0.99
    augment: bool = True
    mean_fraction: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if int(self.steps) < 0:
            problems.append(f"steps must be >= 0, got {self.steps!r}")
        if int(self.batch_size) < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not float(self.learning_rate) > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if float(self.kl_weight) < 0:
            problems.append(f"kl_weight must be >= 0, got {self.kl_weight!r}")
        if not float(self.max_dem_error_m) > 0:
            problems.append(f"max_dem_error_m must be a positive number of metres, got {self.max_dem_error_m!r}")
        if int(self.latent_channels) < 1:
            problems.append(f"latent_channels must be >= 1, got {self.latent_channels!r}")
        if float(self.max_grad_norm) < 0:
            problems.append(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm!r}")
        if int(self.warmup_steps) < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        for name in ("lr_floor", "mean_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= float(self.adam_beta2) < 1.0:
            problems.append(f"adam_beta2 must be in [0, 1), got {self.adam_beta2!r}")
        if self.loss not in ("l1", "mse"):
            problems.append(f"loss must be 'l1' or 'mse', got {self.loss!r}")
        if problems:
            raise ValueError("params.yaml vae: " + "; ".join(problems))

    @classmethod
    def from_params(cls, mapping: Mapping[str, Any] | None) -> VaeTrainParams:
        """Params from the ``vae:`` group of params.yaml (a mapping; None gives the defaults).

        Raises:
            ValueError: a key this class does not know (listed with the known ones).
        """
        mapping = dict(mapping or {})
        reject_unknown_keys("vae", mapping, {f.name for f in fields(cls)})
        return cls(**mapping)


# ---------------------------------------------------------------------------------------------
# data


def _shard_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) of a shard's images, from its metadata (for an empty selection)."""
    return tuple(shard_info(path)["shapes"]["dem"])  # type: ignore[return-value]


def load_vae_arrays(shards: Sequence[str | Path], dem_scale_m: float, split: str | None = None) -> dict[str, Any]:
    """The samples the VAE sees, as model-ready tensors.

    Args:
        shards: sample shard paths (data/samples/*.parquet); read in sorted order.
        dem_scale_m: the DEM scale S in metres (stats.json ``dem_scale_m``).
        split: "train", "test", or None for every sample (default None).

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
            dem.append(dem_to_model(sample["dem"], dem_scale_m))
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


def train_vae(vae, rgb: torch.Tensor, dem: torch.Tensor, mask: torch.Tensor, params: VaeTrainParams,
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
                                  weight_decay=float(params.weight_decay))
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
                            latent_factor: int, batch_size: int = 16) -> dict[str, Any]:
    """How much the VAE loses, against bilinear down/up-sampling by the same factor, valid pixels only.

    The VAE reconstruction is posterior mean -> decode, clamped to [-1, 1]. The baseline is
    ``bilinear_baseline`` (antialiased bilinear down by ``latent_factor``, bilinear back up).
    MSE and PSNR are in model units ([-1, 1], PSNR peak-to-peak 2). The DEM in metres is the
    reconstruction's mean over its 3 channels times ``dem_scale_m``, compared with the model
    input, which is clipped at +-S: errors are measured against the *clipped* DEM, so relief
    beyond +-S around the cell mean is not counted (stats.json ``dem_clipped_share`` says how
    much there is).

    Args:
        vae: an ``AutoencoderKL``.
        rgb: float32 (N, 3, H, W) in [-1, 1].
        dem: float32 (N, 3, H, W) in [-1, 1].
        mask: float32 (N, 1, H, W), 1 = valid.
        dem_scale_m: S, metres per model unit (float).
        latent_factor: the VAE's down-sampling factor (int).
        batch_size: images per VAE call (default 16).

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
        truth_m = images[:, :1] * dem_scale_m
        for label, rec in (("", ours), ("bilinear_", base)):
            error_m = rec.mean(dim=1, keepdim=True) * dem_scale_m - truth_m
            report[f"dem_{label}rmse_m"] = math.sqrt(_masked_mean(error_m.square(), mask))
            report[f"dem_{label}mae_m"] = _masked_mean(error_m.abs(), mask)
        report["dem_beats_bilinear"] = bool(report["dem_rmse_m"] < report["dem_bilinear_rmse_m"])
    return report


# ---------------------------------------------------------------------------------------------
# the stage


def resolve_pretrained(folder: str | Path) -> tuple[Path, str | None]:
    """(folder, subfolder) of a local diffusers AutoencoderKL: the folder itself or its ``vae/``.

    Args:
        folder: a VAE folder (config.json + weights) or a pipeline folder holding ``vae/``.
    """
    root = Path(folder)
    if (root / "config.json").is_file():
        return root, None
    if (root / "vae" / "config.json").is_file():
        return root, "vae"
    raise FileNotFoundError(
        f"{root}: no AutoencoderKL here (neither {root / 'config.json'} nor {root / 'vae' / 'config.json'}); "
        "point vae pretrained at a diffusers VAE folder or a pipeline folder with vae/ (e.g. SD 2.1's)"
    )


def latent_factor_of(vae) -> int:
    """The down-sampling factor of an ``AutoencoderKL``: 2 ** (blocks - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def save_vae_atomic(vae, out_dir: str | Path) -> Path:
    """``vae.save_pretrained`` into a staging folder beside ``out_dir``, then swapped in.

    The old ``out_dir`` stays complete until the new one is in place (see
    :func:`components.atomic.atomic_folder`), so a run killed half-way leaves one of the two.

    Args:
        vae: the model to save.
        out_dir: the folder to (re)place, e.g. models/vae.
    """
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as staging:
        vae.save_pretrained(staging, safe_serialization=True)
    return out_dir


def _load_stats(stats: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(stats, (str, Path)):
        return json.loads(Path(stats).read_text())
    return stats


def _stage_vae(params: VaeTrainParams, latent_factor: int, pretrained: str | Path | None):
    """The VAE to start from: the pretrained one, or a fresh tiny one seeded by ``params.seed``."""
    if pretrained is not None:
        from diffusers import AutoencoderKL

        folder, subfolder = resolve_pretrained(pretrained)
        vae = AutoencoderKL.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
        if latent_factor_of(vae) != latent_factor:
            raise ValueError(
                f"{pretrained}: the pretrained VAE down-samples by {latent_factor_of(vae)}, but the samples were "
                f"prepared for latent_factor {latent_factor}: set prepare.latent_factor to {latent_factor_of(vae)} "
                "and rerun prepare"
            )
        return vae
    overrides = {} if params.block_out_channels is None else {"block_out_channels": list(params.block_out_channels)}
    config = tiny_vae_config(latent_factor=latent_factor, latent_channels=params.latent_channels, **overrides)
    # Seed the initial weights here so that a run depends on params.seed alone.
    torch.manual_seed(int(params.seed))
    return build_vae(config)


def _round(report: Mapping[str, Any]) -> dict[str, Any]:
    """Floats to 6 significant digits: stable bytes for a versioned metrics file."""
    return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in report.items()}


def run_vae_stage(shards: Sequence[str | Path], stats: Mapping[str, Any] | str | Path,
                  params: VaeTrainParams | Mapping[str, Any], out_dir: str | Path,
                  pretrained: str | Path | None = None, progress: Callable[[str], None] | None = None,
                  device: str | torch.device | None = None) -> dict[str, Any]:
    """The whole ``vae`` stage: train (or load) the VAE, measure, check, save. Returns reports/vae.json.

    Args:
        shards: sample shard paths (data/samples/*.parquet).
        stats: stats.json's content, or its path (needs ``dem_scale_m`` and ``prepare.latent_factor``).
        params: ``VaeTrainParams`` or the params.yaml ``vae:`` mapping.
        out_dir: the diffusers folder to write (models/vae); replaced atomically.
        pretrained: a local diffusers AutoencoderKL folder, or a pipeline folder with ``vae/``
            (default None: train the tiny VAE). It keeps its own scaling factor and is trained
            further only with ``params.finetune``.
        progress: called with one line of text at each phase and about every 10 % of training,
            run times included (default None: silent).
        device: where to train and evaluate (default None: CUDA when available, else CPU).

    Raises:
        ValueError: the held-out DEM RMSE in metres is above ``params.max_dem_error_m`` (nothing
            is saved), or the inputs are inconsistent.
    """
    params = params if isinstance(params, VaeTrainParams) else VaeTrainParams.from_params(params)
    stats = _load_stats(stats)
    say = progress or (lambda line: None)
    device = torch.device(device) if device is not None else default_device()
    dem_scale_m = float(stats["dem_scale_m"])
    latent_factor = int(stats["prepare"]["latent_factor"])
    started = time.perf_counter()

    # 1. The samples: train to learn from, test (held out) to evaluate on. Everything is held in
    #    memory (fine at the tiny profiles' 64 px); a pretrained VAE taken as is skips the train split.
    learns = pretrained is None or params.finetune
    test = load_vae_arrays(shards, dem_scale_m, "test")
    train = load_vae_arrays(shards, dem_scale_m, "train") if learns or not test["sample_id"] else None
    if train is None:
        train = {"rgb": test["rgb"][:0], "dem": test["dem"][:0], "mask": test["mask"][:0], "sample_id": []}
    evaluated_on = "test" if test["sample_id"] else "train"
    held_out = test if test["sample_id"] else train
    say(f"vae: {len(train['sample_id'])} train (read) / {len(test['sample_id'])} test samples, "
        f"{tuple(train['rgb'].shape[-2:])} px, evaluating on {evaluated_on}")

    # 2. The model to start from.
    vae = _stage_vae(params, latent_factor, pretrained).to(device)

    # 3. Train (the tiny VAE always; a pretrained one only when fine-tuning).
    history: list[dict[str, float]] = []
    if learns:
        def on_step(step: int, total: int, loss: float) -> None:
            say(f"vae: step {step}/{total} loss {loss:.4f} ({time.perf_counter() - started:.0f} s)")

        history = train_vae(vae, train["rgb"], train["dem"], train["mask"], params, on_step, device)
    vae.eval()

    # 4. The scaling factor (a pretrained VAE keeps the one it was published with).
    if pretrained is None:
        scaling = measure_scaling_factor(vae, torch.cat([train["rgb"], train["dem"]]), seed=params.seed)
        vae.register_to_config(scaling_factor=scaling)
    scaling = float(vae.config.scaling_factor)

    # 5. Evaluate on held-out samples and check the DEM bound.
    metrics = evaluate_reconstruction(vae, held_out["rgb"], held_out["dem"], held_out["mask"], dem_scale_m,
                                      latent_factor)
    say(f"vae: {evaluated_on} RGB PSNR {metrics['rgb_psnr_db']:.2f} dB (bilinear {metrics['rgb_bilinear_psnr_db']:.2f}), "
        f"DEM RMSE {metrics['dem_rmse_m']:.2f} m (bilinear {metrics['dem_bilinear_rmse_m']:.2f} m)")
    if not metrics["dem_rmse_m"] <= params.max_dem_error_m:
        raise ValueError(
            f"vae: DEM reconstruction RMSE {metrics['dem_rmse_m']:.3f} m on the {evaluated_on} split is above "
            f"vae.max_dem_error_m = {params.max_dem_error_m} m (bilinear at the same factor: "
            f"{metrics['dem_bilinear_rmse_m']:.3f} m): train longer (raise vae.steps, now {params.steps}) "
            "or raise vae.max_dem_error_m in params.yaml"
        )

    # 6. Save and report (no run times: the report is versioned).
    save_vae_atomic(vae, out_dir)
    say(f"vae: saved {out_dir} (scaling_factor {scaling:.4f}) in {time.perf_counter() - started:.0f} s")
    report = {
        "source": "pretrained" if pretrained is not None else "trained",
        "pretrained": None if pretrained is None else str(pretrained),
        "finetuned": bool(pretrained is not None and params.finetune),
        "steps": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "final_rec_loss": history[-1]["rec_loss"] if history else None,
        "final_kl": history[-1]["kl"] if history else None,
        "scaling_factor": scaling,
        "latent_factor": latent_factor,
        "latent_channels": int(vae.config.latent_channels),
        "dem_scale_m": dem_scale_m,
        "samples": {"train": len(train["sample_id"]), "test": len(test["sample_id"])},
        "evaluated_on": evaluated_on,
        "max_dem_error_m": float(params.max_dem_error_m),
        "params": asdict(params),
        **metrics,
    }
    return _round(report)
