"""Training-step time from cached VAE latents against encoding the samples on the fly.

Both runs do the same training step with the tiny two-head UNet (``tiny_unet_config``) and
random text conditioning (B, 77, 32): read a batch from the shards (DataLoader, one process),
draw a latent from the VAE posterior, scale it, noise both modalities (``noisy_latents``),
forward + backward of the UNet, masked v-loss. The baseline (on the fly) reads the sample shards
with ``TerrainSampleDataset`` and runs the frozen tiny VAE's encoder (``tiny_vae_config``, no
grad) on the RGB and DEM of the batch; the cached run reads the latent shards that
``encode_samples_to_latents`` wrote with ``LatentSampleDataset``. The VAE forward, plus decoding
full-size images instead of small latents, is the whole difference.

Steps are interleaved (one of each, in turn) after warm-up, so load drifts affect both alike.
Prints ms/step (median and best), the ratio "on-the-fly / cached" (medians), the VAE's share of
an on-the-fly step, and the one-off cost of building the cache per sample.

    python benchmarks/latents.py [--image-px 64] [--batch 16] [--steps 10] [--warmup 2]
                                 [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from components.model.factories import (  # noqa: E402
    build_unet,
    build_vae,
    tiny_unet_config,
    tiny_vae_config,
    training_scheduler,
)
from components.samples.dataset import TerrainSampleDataset, collate  # noqa: E402
from components.samples.latents.encode import encode_samples_to_latents  # noqa: E402
from components.samples.latents.read import (  # noqa: E402
    LatentSampleDataset,
    collate_latents,
    latent_shards,
    sample_posterior,
)
from components.samples.shards import write_sample_shard  # noqa: E402
from components.training.loss import masked_v_loss, noisy_latents  # noqa: E402

DEM_SCALE_M = 1000.0
LATENT_FACTOR = 8


def make_samples(folder: Path, n: int, side: int) -> list[Path]:
    """``n`` random samples of ``side`` px in shards of 64 (row groups of 16, as prepare writes)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        mask = (rng.random((side, side)) > 0.05).astype(np.uint8)
        small = side // LATENT_FACTOR
        records.append({
            "grid_cell": f"{i:04d}U_0R",
            "split": "train",
            "rgb": rng.integers(0, 65536, (side, side, 3), dtype=np.uint16),
            "dem": rng.normal(0.0, 500.0, (side, side)).astype(np.float32),
            "mask": mask,
            "mask_latent": mask.reshape(small, LATENT_FACTOR, small, LATENT_FACTOR).all(axis=(1, 3)).astype(np.uint8),
            "dem_mean_m": 500.0,
            "biome": "Temperate Broadleaf & Mixed Forests",
            "landform_local": "hills",
            "month": "July",
        })
    return [write_sample_shard(folder / f"samples-{k:05d}.parquet", records[k:k + 64]) for k in range(0, n, 64)]


def train_step(unet, scheduler, image, dem, mask, ehs, generator) -> None:
    """Noise, forward, masked v-loss, backward: what both runs share after the latents."""
    noisy, target, timesteps = noisy_latents(scheduler, image, dem, generator)
    prediction = unet(noisy, timesteps, ehs).sample
    masked_v_loss(prediction, target, mask).total.backward()
    unet.zero_grad(set_to_none=True)


def cached_step(batch, unet, scheduler, scale, ehs, generator) -> None:
    image = sample_posterior(batch["rgb_latent_mean"], batch["rgb_latent_std"], generator) * scale
    dem = sample_posterior(batch["dem_latent_mean"], batch["dem_latent_std"], generator) * scale
    train_step(unet, scheduler, image, dem, batch["mask_latent"], ehs, generator)


def encode(vae, batch, generator) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        dist = vae.encode(torch.cat([batch["rgb"], batch["dem"]])).latent_dist
    return sample_posterior(dist.mean, dist.std, generator).chunk(2)


def on_the_fly_step(batch, vae, unet, scheduler, scale, ehs, generator, vae_times: list[float]) -> None:
    t0 = time.perf_counter()
    image, dem = encode(vae, batch, generator)
    vae_times.append(time.perf_counter() - t0)
    train_step(unet, scheduler, image * scale, dem * scale, batch["mask_latent"], ehs, generator)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-px", type=int, default=64, help="image height = width (demo profile: 64)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_px % LATENT_FACTOR:
        ap.error(f"--image-px must be a multiple of the latent factor {LATENT_FACTOR}")

    torch.manual_seed(0)
    vae = build_vae(tiny_vae_config(latent_factor=LATENT_FACTOR)).eval().requires_grad_(False)
    unet = build_unet(tiny_unet_config()).train()
    scheduler = training_scheduler()
    scale = float(vae.config.scaling_factor)
    b, total = args.batch, args.batch * (args.steps + args.warmup)
    ehs = torch.randn(b, 77, tiny_unet_config()["cross_attention_dim"], generator=torch.Generator().manual_seed(1))

    with tempfile.TemporaryDirectory(prefix="mesa-bench-latents-") as tmp:
        shards = make_samples(Path(tmp) / "samples", total, args.image_px)
        t0 = time.perf_counter()
        report = encode_samples_to_latents(shards, vae, Path(tmp) / "latents", dem_scale_m=DEM_SCALE_M,
                                           batch_size=b, device="cpu")
        cache_seconds = time.perf_counter() - t0
        options = {"seed": 0, "shuffle": True, "shuffle_buffer": b, "rank": 0, "world_size": 1}
        plain = DataLoader(TerrainSampleDataset(shards, dem_scale_m=DEM_SCALE_M, **options),
                           batch_size=b, collate_fn=collate)
        cached = DataLoader(LatentSampleDataset(latent_shards(Path(tmp) / "latents"), **options),
                            batch_size=b, collate_fn=collate_latents)
        plain_batches, cached_batches = iter(plain), iter(cached)
        generator = torch.Generator().manual_seed(2)
        vae_times: list[float] = []
        times: dict[str, list[float]] = {"on-the-fly": [], "cached": []}
        for step in range(args.steps + args.warmup):  # interleaved, so drift affects both alike
            fly = timed(lambda: on_the_fly_step(next(plain_batches), vae, unet, scheduler, scale, ehs, generator,
                                                vae_times))
            cache = timed(lambda: cached_step(next(cached_batches), unet, scheduler, scale, ehs, generator))
            if step >= args.warmup:
                times["on-the-fly"].append(fly)
                times["cached"].append(cache)

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    vae_med = statistics.median(vae_times[args.warmup:])
    latent = "x".join(str(s) for s in report["latent_shape"])
    print(f"image={args.image_px}px latent={latent} batch={b} steps={args.steps} device=cpu "
          f"threads={torch.get_num_threads()}")
    for name in ("on-the-fly", "cached"):
        print(f"{name:<11} : {med[name] * 1e3:9.1f} ms/step median  {best[name] * 1e3:9.1f} ms/step best "
              "(read + latents + fwd/bwd)")
    print(f"VAE encode in the on-the-fly step: {vae_med * 1e3:.1f} ms median "
          f"({vae_med / med['on-the-fly']:.0%} of the step)")
    print(f"building the cache: {cache_seconds:.2f} s for {report['samples']} samples "
          f"({cache_seconds / report['samples'] * 1e3:.1f} ms/sample, once per VAE)")
    print(f"on-the-fly / cached: {med['on-the-fly'] / med['cached']:.2f} (median)  "
          f"{best['on-the-fly'] / best['cached']:.2f} (best)")


if __name__ == "__main__":
    main()
