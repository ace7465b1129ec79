"""Seconds per generation with batched against two-pass classifier-free guidance.

The TerrainPipeline runs the unconditional and conditional branches of classifier-free guidance
either as one UNet forward on the concatenated batch (``cfg_mode="batched"``, the default) or as
two forwards (``"two_pass"``, the baseline). Both give the same sample (tested to 1e-5); this
script measures what batching saves on a full generation (text encoding, ``--steps`` sampler
steps, VAE decoding of both halves).

Configs: ``tiny`` (the test pipeline: tiny UNet, tiny VAE, tiny text encoder; CPU) and ``paper``
(SD 2.1-sized two-head UNet at 768 px with random weights, a tiny VAE and a small text encoder of
SD 2.1's width 1024; meant for a GPU). Warm-up run(s) first, then ``--repeats`` runs per mode,
interleaved so drift in the machine's load affects both alike; the best of each is reported
(least disturbed by other load). Prints the ratio "two_pass / batched" (> 1: batching is faster).

    python benchmarks/sample.py [--config tiny|paper] [--steps 50] [--batch 1] [--repeats 3]
                                [--warmup 1] [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                                [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.model.factories import build_unet, build_vae, paper_unet_config, tiny_vae_config  # noqa: E402
from components.model.pipeline import build_pipeline  # noqa: E402
from components.model.text import tiny_text_encoder, train_caption_tokenizer  # noqa: E402
from testsupport.pipelines import TINY_STATS, tiny_random_pipeline  # noqa: E402

PROMPTS = [
    "A Sentinel-2 image of deserts and plains in Spain in May",
    "A Sentinel-2 image of tundra and mountains in Norway in July",
    "A Sentinel-2 image of temperate forests and hills in France in October",
    "A Sentinel-2 image of tropical forests and plateaus in Brazil in March",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paper_pipeline():
    """SD 2.1-sized UNet (random weights, 96 x 96 latents = 768 px), tiny VAE, 1024-wide text encoder."""
    tokenizer = train_caption_tokenizer(PROMPTS, vocab_size=512)
    text_encoder = tiny_text_encoder(len(tokenizer), hidden_size=1024, layers=2, heads=16, seed=0)
    torch.manual_seed(0)
    unet = build_unet(paper_unet_config())
    vae = build_vae(tiny_vae_config(latent_factor=8, sample_size=768))
    return build_pipeline(unet, vae, text_encoder, tokenizer, TINY_STATS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps per generation")
    ap.add_argument("--batch", type=int, default=1, help="prompts per generation")
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per mode")
    ap.add_argument("--warmup", type=int, default=1, help="untimed generations per mode first")
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.guidance <= 1.0:
        ap.error("--guidance must be > 1: at 1 there is no unconditional branch to batch")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    pipe = tiny_random_pipeline(PROMPTS) if args.config == "tiny" else paper_pipeline()
    pipe.to(device)
    if dtype != torch.float32:  # only cast when asked (diffusers warns on any dtype cast)
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]

    def generate(mode: str, steps: int) -> None:
        pipe(prompts, num_inference_steps=steps, guidance_scale=args.guidance, seed=0, cfg_mode=mode)

    modes = ("batched", "two_pass")
    for _ in range(args.warmup):
        for mode in modes:
            generate(mode, args.steps)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):  # interleaved
        for mode in modes:
            sync(device)
            t0 = time.perf_counter()
            generate(mode, args.steps)
            sync(device)
            times[mode].append(time.perf_counter() - t0)

    best = {m: min(v) for m, v in times.items()}
    px = pipe.unet.config.sample_size * pipe.vae_scale_factor
    print(f"config={args.config} image={px}x{px} batch={args.batch} steps={args.steps} "
          f"guidance={args.guidance} device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} scheduler={type(pipe.scheduler).__name__}")
    for mode in modes:
        runs = " ".join(f"{t:.3f}" for t in times[mode])
        print(f"{mode:<9}: {best[mode]:8.3f} s/generation (best; runs {runs})  "
              f"{best[mode] / args.steps * 1e3:8.1f} ms/step")
    print(f"two_pass / batched = {best['two_pass'] / best['batched']:.3f}")


if __name__ == "__main__":
    main()
