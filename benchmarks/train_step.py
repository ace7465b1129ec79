"""Training throughput: samples/s of the two-head UNet's training step, against the plain SD UNet.

One training step as the train stage runs it on cached latents: autocast forward (bf16/fp16 with
fp32 master weights, or fp32), the masked v-prediction loss on the 8-channel image + DEM latent,
backward, gradient clipping and an AdamW update. The baseline, in the same run and interleaved,
is a plain ``UNet2DConditionModel`` of the same configuration doing the same step on one
4-channel latent (what fine-tuning Stable Diffusion costs). The text encoder and the VAE are not
in the step (frozen; latents cached), so the conditioning is a fixed random tensor.

On a GPU it also prints the model-FLOPs utilisation (MFU): the FLOPs of one forward+backward
(``torch.utils.flop_counter``; recomputation by gradient checkpointing not counted, as MFU
defines it) per second, over the chip's dense bf16 peak. ``--batch auto`` picks the largest batch
of ``--candidates`` that fits.

    python benchmarks/train_step.py                       # tiny, CPU, demo latents (8 x 8)
    python benchmarks/train_step.py --config paper --device cuda --dtype bfloat16 \\
        --grad-checkpointing --batch auto --size 96
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from components.model.factories import paper_unet_config, sd_config, tiny_unet_config, training_scheduler  # noqa: E402
from components.model.unet import TwoHeadUNet  # noqa: E402
from components.training.loss import masked_v_loss  # noqa: E402

# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), by a substring of the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


class Trainer:
    """One model, its optimiser and a fixed batch: ``step()`` is one full training step."""

    def __init__(self, model, channels: int, batch: int, size: int, tokens: int, cross_dim: int, device, dtype,
                 seed: int = 0):
        self.model, self.device, self.dtype = model, device, dtype
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
        scheduler = training_scheduler()
        g = torch.Generator().manual_seed(seed)
        latents = torch.randn(batch, channels, size, size, generator=g)
        noise = torch.randn(batch, channels, size, size, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        self.noisy = scheduler.add_noise(latents, noise, t).to(device)
        self.target = scheduler.get_velocity(latents, noise, t).to(device)
        self.t = t.to(device)
        self.context = torch.randn(batch, tokens, cross_dim, generator=g).to(device)
        self.mask = (torch.rand(batch, 1, size, size, generator=g) > 0.1).float().to(device)
        self.channels = channels

    def forward_backward(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            prediction = self.model(self.noisy, self.t, self.context).sample
        if self.channels == 8:  # the train stage's loss
            masked_v_loss(prediction.float(), self.target, self.mask).total.backward()
        else:  # the plain UNet: the same masked MSE on its one modality
            error = (prediction.float() - self.target).square() * self.mask
            (error.sum() / (self.mask.sum() * 4)).backward()

    def step(self) -> None:
        self.forward_backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def step_flops(model, channels: int, batch: int, size: int, tokens: int, cross_dim: int, device, dtype) -> int:
    """Model FLOPs of one forward+backward at ``batch``: counted at batch 2 and scaled (the count
    is linear in the batch), with gradient checkpointing off so recomputation is not counted and
    attention through SDPA's math decomposition so it is."""
    checkpointing = getattr(model, "gradient_checkpointing", False) or model.is_gradient_checkpointing
    if checkpointing:
        model.disable_gradient_checkpointing()
    probe = Trainer(model, channels, 2, size, tokens, cross_dim, device, dtype)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        probe.forward_backward()
    model.zero_grad(set_to_none=True)
    if checkpointing:
        model.enable_gradient_checkpointing()
    return counter.get_total_flops() * batch // 2


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(kind: str, cfg: dict, device, checkpointing: bool):
    torch.manual_seed(0)
    model = (TwoHeadUNet(**cfg) if kind == "two" else UNet2DConditionModel(**sd_config(cfg))).to(device).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model


def largest_batch(model, cfg, args, device, dtype, candidates: list[int]) -> int:
    """The largest candidate batch whose two-head training step fits in memory (one model, reused)."""
    best = 0
    for batch in candidates:
        trainer = None
        try:
            trainer = Trainer(model, 8, batch, args.size, args.tokens, cfg["cross_attention_dim"], device, dtype)
            for _ in range(2):
                trainer.step()
            sync(device)
            best = batch
            print(f"  batch {batch}: fits ({torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak)", flush=True)
        except torch.cuda.OutOfMemoryError:
            print(f"  batch {batch}: out of memory", flush=True)
            break
        finally:
            del trainer
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if not best:
        raise SystemExit("not even the smallest candidate batch fits")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--batch", default="16", help="per-step batch, or 'auto' (largest of --candidates that fits)")
    ap.add_argument("--candidates", default="8,16,24,32,48,64")
    ap.add_argument("--size", type=int, default=8, help="latent height = width (demo 8, paper 96)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--channels-last", action="store_true", help="channels_last memory format for both models")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = tiny_unet_config() if args.config == "tiny" else paper_unet_config()
    cfg["sample_size"] = args.size

    models = {kind: build(kind, cfg, device, args.grad_checkpointing) for kind in ("plain", "two")}
    if args.channels_last:
        models = {kind: m.to(memory_format=torch.channels_last) for kind, m in models.items()}
    if args.batch == "auto":
        if device.type != "cuda":
            raise SystemExit("--batch auto needs a GPU")
        batch = largest_batch(models["two"], cfg, args, device, dtype, [int(c) for c in args.candidates.split(",")])
    else:
        batch = int(args.batch)

    channels = {"plain": 4, "two": 8}
    flops = {kind: step_flops(m, channels[kind], batch, args.size, args.tokens, cfg["cross_attention_dim"], device,
                              dtype) for kind, m in models.items()}
    trainers = {kind: Trainer(m, channels[kind], batch, args.size, args.tokens, cfg["cross_attention_dim"], device,
                              dtype) for kind, m in models.items()}
    for _ in range(args.warmup):
        for t in trainers.values():
            t.step()
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(args.repeats):  # interleaved: drift affects both alike
        for kind, t in trainers.items():
            sync(device)
            start = time.perf_counter()
            t.step()
            sync(device)
            times[kind].append(time.perf_counter() - start)
    best = {k: sorted(v)[len(v) // 2] for k, v in times.items()}  # median step

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    print(f"config={args.config} latent={args.size}x{args.size} batch={batch} device={name} dtype={args.dtype} "
          f"grad_checkpointing={args.grad_checkpointing} channels_last={args.channels_last} threads={torch.get_num_threads()} repeats={args.repeats}")
    for kind, label in (("plain", "plain UNet2DConditionModel (baseline)"), ("two", "two-head UNet (image + DEM)")):
        rate = batch / best[kind]
        line = (f"{label:38s}: {best[kind] * 1e3:8.1f} ms/step  {rate:8.2f} samples/s  "
                f"{flops[kind] / 1e12:8.3f} TFLOP/step")
        if peak and dtype != torch.float32:
            line += f"  MFU {flops[kind] / best[kind] / peak:6.1%} of {peak / 1e12:.0f} TFLOP/s"
        print(line)
    print(f"throughput ratio two-head / plain: {best['plain'] / best['two']:.3f} "
          f"(FLOP ratio plain / two-head {flops['plain'] / flops['two']:.3f})")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
