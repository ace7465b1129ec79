"""Forward+backward time of the two-head UNet against a plain UNet2DConditionModel.

Both models have the same configuration (tiny by default; ``--config paper`` for SD 2.1 sizes,
meant for a GPU). The plain UNet denoises one 4-channel latent; the two-head UNet denoises the
8-channel image + DEM latent, with the first down block, conv_in, the last up block and the
output convolutions doubled, all at the highest resolution, so it inherently does more
arithmetic. FLOPs of one forward+backward are counted with ``torch.utils.flop_counter``
(attention included: see ``count_flops``).

Timed in the same run, interleaved, best of ``--repeats`` steps after warm-up: (a) the
two-head step, (b) the plain step (baseline), (c) the plain UNet's own copies of the duplicated
modules alone (conv_in, first down block, last up block, output norm/conv) on the inputs they see
in (b). Prints the time ratio (a)/(b) next to the FLOP ratio (target: time ratio <= 1.1 x FLOP
ratio), and (a) / ((b) + (c)), the overhead against a zero-overhead two-head step.

    python benchmarks/unet.py [--config tiny|paper] [--batch 4] [--size 32] [--repeats 20]
                              [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]
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

from components.model.factories import paper_unet_config, sd_config, tiny_unet_config  # noqa: E402
from components.model.unet import TwoHeadUNet  # noqa: E402


def step(model, x, t, ehs) -> None:
    out = model(x, t, ehs).sample
    out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def count_flops(model, x, t, ehs) -> int:
    """FLOPs of one forward+backward.

    Counted with SDPA forced to its math decomposition: FlopCounterMode has no formula for the
    CPU flash-attention kernels (``_scaled_dot_product_flash_attention_for_cpu``), which would
    leave attention -- about half the tiny model's time, most of it at the highest resolution --
    out of the count. The decomposed attention does the same matrix products, so it is counted.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step(model, x, t, ehs)
    return counter.get_total_flops()


def duplicated_part(plain, x, t, ehs):
    """A step running only what the two-head model adds to ``plain``: its conv_in, first down
    block, last up block, conv_norm_out/conv_act/conv_out, once more, on the inputs they see in
    ``plain``'s own forward (captured with hooks; hidden states and skips require grad, as they
    do inside the network). ``plain step + this step`` is the two-head step with zero overhead.
    """
    seen = {}

    def grab(name):
        def hook(module, args, kwargs):
            seen[name] = (args, kwargs)
        return hook

    handles = [plain.down_blocks[0].register_forward_pre_hook(grab("down"), with_kwargs=True),
               plain.up_blocks[-1].register_forward_pre_hook(grab("up"), with_kwargs=True)]
    with torch.no_grad():
        plain(x, t, ehs)
    for h in handles:
        h.remove()

    def leaf(v):
        if torch.is_tensor(v) and v.is_floating_point():
            return v.detach().requires_grad_(True)
        if isinstance(v, tuple):
            return tuple(leaf(u) for u in v)
        return v

    down_kw = {k: leaf(v) for k, v in seen["down"][1].items()}
    up_kw = {k: leaf(v) for k, v in seen["up"][1].items()}
    for k in ("temb", "encoder_hidden_states"):  # not differentiated in the extra part
        for kw in (down_kw, up_kw):
            if torch.is_tensor(kw.get(k)):
                kw[k] = kw[k].detach()
    down_kw.pop("hidden_states", None)

    def run() -> None:
        h0 = plain.conv_in(x)
        h, res = plain.down_blocks[0](hidden_states=h0, **down_kw)
        out = plain.up_blocks[-1](**up_kw)
        out = plain.conv_out(plain.conv_act(plain.conv_norm_out(out)))
        (out.float().square().mean() + h.float().mean() + sum(r.float().mean() for r in res)).backward()
        plain.zero_grad(set_to_none=True)

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=32, help="latent height = width")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--tokens", type=int, default=77)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    cfg = tiny_unet_config() if args.config == "tiny" else paper_unet_config()
    torch.manual_seed(0)
    plain = UNet2DConditionModel(**sd_config(cfg)).to(device).train()
    two = TwoHeadUNet(**cfg).to(device).train()
    if dtype != torch.float32:
        plain, two = plain.to(dtype), two.to(dtype)

    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    x4 = torch.randn(b, 4, s, s, generator=g).to(device, dtype)
    x8 = torch.randn(b, 8, s, s, generator=g).to(device, dtype)
    ehs = torch.randn(b, args.tokens, cfg["cross_attention_dim"], generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)

    # Counted on a batch of at most 2 and scaled (FLOPs are linear in the batch): the math
    # attention the counter needs holds the full attention matrix, which at 96 x 96 latents and
    # batch 8 does not fit even in an H200's memory.
    n = min(b, 2)
    flops_plain = count_flops(plain, x4[:n], t[:n], ehs[:n]) * b // n
    flops_two = count_flops(two, x8[:n], t[:n], ehs[:n]) * b // n

    for _ in range(args.warmup):
        step(plain, x4, t, ehs)
        step(two, x8, t, ehs)
    extra = duplicated_part(plain, x4, t, ehs)
    for _ in range(args.warmup):
        extra()
    runs = {
        "plain": lambda: step(plain, x4, t, ehs),
        "two": lambda: step(two, x8, t, ehs),
        "extra": extra,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved, so drift affects all alike
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)

    med = {k: min(v) for k, v in times.items()}  # best of: least disturbed by other load
    n_plain = sum(p.numel() for p in plain.parameters())
    n_two = sum(p.numel() for p in two.parameters())
    time_ratio = med["two"] / med["plain"]
    flop_ratio = flops_two / flops_plain
    print(f"config={args.config} batch={b} latent={s}x{s} device={device} dtype={args.dtype} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"plain UNet2DConditionModel : {n_plain:>12,} params  {flops_plain / 1e9:9.2f} GFLOP  "
          f"{med['plain'] * 1e3:9.1f} ms/step (fwd+bwd, best)")
    print(f"two-head UNet (img + dem)  : {n_two:>12,} params  {flops_two / 1e9:9.2f} GFLOP  "
          f"{med['two'] * 1e3:9.1f} ms/step (fwd+bwd, best)")
    floor = med["plain"] + med["extra"]
    print(f"duplicated modules alone   : {'':>12}         {'':>9}        {med['extra'] * 1e3:9.1f} ms/step "
          f"-> zero-overhead two-head step {floor * 1e3:.1f} ms")
    verdict = "OK" if time_ratio <= 1.1 * flop_ratio else "ABOVE TARGET"
    print(f"time ratio {time_ratio:.3f}  FLOP ratio {flop_ratio:.3f}  "
          f"time/FLOP ratio {time_ratio / flop_ratio:.3f} (target <= 1.10): {verdict}")
    print(f"two-head / zero-overhead floor {med['two'] / floor:.3f}  "
          f"(time ratio expected from the duplicated modules alone: {floor / med['plain']:.3f})")


if __name__ == "__main__":
    main()
