"""The ``vae`` stage: the VAE both modalities share, trained (or taken pretrained), checked and saved.

What :func:`run_vae_stage` does:

1. Read the samples: train split to train on, test split to evaluate on (train when test is empty).
2. Build the tiny VAE from ``tiny_vae_config`` (or load a pretrained local diffusers folder).
3. Train it (or fine-tune the pretrained one): masked L1 or MSE reconstruction + a small KL term.
4. Measure the latent scaling factor (1 / std of posterior samples over both modalities) and store
   it in the model's config, so ``save_pretrained`` keeps it for the UNet stages.
5. Evaluate on held-out samples against bilinear down- and up-sampling by the latent factor, and
   check the DEM error in metres against ``max_dem_error_m``.
6. Save the folder atomically and return the report (no run times: reports are versioned).

The training and the measurements themselves: :mod:`components.model.vae`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from components.atomic import atomic_folder
from components.config import VaeConfig
from components.model.factories import build_vae, tiny_vae_config
from components.model.vae import (
    default_device,
    evaluate_reconstruction,
    load_vae_arrays,
    measure_scaling_factor,
    train_vae,
)

__all__ = ["resolve_pretrained", "save_vae_atomic", "run_vae_stage"]


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


def _stage_vae(params: VaeConfig, latent_factor: int, pretrained: str | Path | None):
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
                  params: VaeConfig | Mapping[str, Any], out_dir: str | Path,
                  pretrained: str | Path | None = None, progress: Callable[[str], None] | None = None,
                  device: str | torch.device | None = None) -> dict[str, Any]:
    """The whole ``vae`` stage: train (or load) the VAE, measure, check, save. Returns reports/vae.json.

    Args:
        shards: sample shard paths (data/samples/*.parquet).
        stats: stats.json's content, or its path (needs ``dem_scale_m`` and ``prepare.latent_factor``).
        params: ``VaeConfig`` or the params.yaml ``vae:`` mapping.
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
    params = params if isinstance(params, VaeConfig) else VaeConfig.from_params(params)
    stats = _load_stats(stats)
    say = progress or (lambda line: None)
    device = torch.device(device) if device is not None else default_device()
    dem_scale_m = float(stats["dem_scale_m"])
    dem_knee_m = stats.get("dem_knee_m")
    latent_factor = int(stats["prepare"]["latent_factor"])
    started = time.perf_counter()

    # 1. The samples: train to learn from, test (held out) to evaluate on. Everything is held in
    #    memory (fine at the tiny profiles' 64 px); a pretrained VAE taken as is skips the train split.
    learns = pretrained is None or params.finetune
    test = load_vae_arrays(shards, dem_scale_m, "test", dem_knee_m)
    train = load_vae_arrays(shards, dem_scale_m, "train", dem_knee_m) if learns or not test["sample_id"] else None
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
                                      latent_factor, dem_knee_m=dem_knee_m)
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
        **({} if dem_knee_m is None else {"dem_knee_m": float(dem_knee_m)}),
        "samples": {"train": len(train["sample_id"]), "test": len(test["sample_id"])},
        "evaluated_on": evaluated_on,
        "max_dem_error_m": float(params.max_dem_error_m),
        "params": params.model_dump(),
        **metrics,
    }
    return _round(report)
