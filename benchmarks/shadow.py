"""Masked histogram matching (shadow correction) of one full cell, against scikit-image and the floor.

Data: a 1068 x 1068 px synthetic high-mountain cell rendered as L1C and L2A B04/B03/B02 (uint16,
reflectance x 10,000), or ``--data random`` for skewed random digital numbers, with a random
valid mask leaving about 20 % of the pixels masked (the same mask for source and reference).

Timed in the same run, interleaved, best of ``--repeats``:
  (a) ours: ``match_histograms_masked`` with the masks, writing uint16 ``(3, H, W)``;
  (b) baseline (named): ``skimage.exposure.match_histograms`` unmasked on the same values, in
      both layouts it accepts (``(H, W, 3)`` channel-last, its usual one, and ``(3, H, W)`` with
      ``channel_axis=0``); the faster of the two is the baseline;
  (c) floor: per band, the two histograms (``np.bincount`` of source and reference, no mask)
      and one look-up-table pass (``np.take`` of a precomputed uint16 table) -- what any exact
      CDF matching of integers has to do.
Prints ms for each and the ratios ours/skimage (target <= 1.0) and ours/floor.

    python benchmarks/shadow.py [--data cell|random] [--repeats 15] [--masked 0.2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from skimage.exposure import match_histograms  # noqa: E402

from components.majortom.synthetic.render import render_cell  # noqa: E402
from components.majortom.synthetic.terrain import synth_dem, upsample_dem  # noqa: E402
from components.radiometry.shadow import match_histograms_masked  # noqa: E402

SIZE = 1068
RGB = ("B04", "B03", "B02")


def cell_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dem = upsample_dem(synth_dem("high mountains", rng, size=SIZE // 3, pixel_m=30.0,
                                 base_elevation_m=900.0), 3)
    cell = render_cell(dem, 10.0, 4, 8, 46.0, rng)
    return np.stack([cell.l1c[b] for b in RGB]), np.stack([cell.l2a[b] for b in RGB])


def random_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE)
    src = np.stack([rng.gamma(2.0 + b, 250.0, shape) + 400 for b in range(3)])
    ref = np.stack([rng.lognormal(6.4 + 0.2 * b, 0.6, shape) + 50 for b in range(3)])
    return (np.clip(src, 1, 60000).astype(np.uint16), np.clip(ref, 1, 60000).astype(np.uint16))


def floor_pass(src: np.ndarray, ref: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:
    for b in range(src.shape[0]):
        s = src[b].reshape(-1)
        np.bincount(s)
        np.bincount(ref[b].reshape(-1))
        np.take(lut, s, out=out[b].reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("cell", "random"), default="cell")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--masked", type=float, default=0.2, help="share of masked pixels (default 0.2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src, ref = (cell_arrays if args.data == "cell" else random_arrays)(args.seed)
    valid = np.random.default_rng(args.seed + 1).random((SIZE, SIZE)) >= args.masked
    src_hwc = np.ascontiguousarray(src.transpose(1, 2, 0))
    ref_hwc = np.ascontiguousarray(ref.transpose(1, 2, 0))
    lut = np.random.default_rng(2).integers(0, 65536, 65536).astype(np.uint16)
    out = np.empty_like(src)

    # Sanity: with all-valid masks ours equals scikit-image's within 1 DN.
    ones = np.ones((SIZE, SIZE), bool)
    check = match_histograms_masked(src, ref, ones, ones)
    oracle = match_histograms(src_hwc, ref_hwc, channel_axis=-1).transpose(2, 0, 1)
    max_diff = int(np.abs(check.astype(np.int32) - oracle.astype(np.int32)).max())

    runs = {
        "ours (masked, uint16)": lambda: match_histograms_masked(src, ref, valid, valid),
        "skimage (H, W, 3)": lambda: match_histograms(src_hwc, ref_hwc, channel_axis=-1),
        "skimage (3, H, W)": lambda: match_histograms(src, ref, channel_axis=0),
        "floor (2 bincount + 1 LUT)": lambda: floor_pass(src, ref, lut, out),
    }
    best = dict.fromkeys(runs, np.inf)
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)

    print(f"data: {args.data}, 3 x {SIZE} x {SIZE} uint16, {100 * (1 - valid.mean()):.1f} % masked, "
          f"best of {args.repeats}; ours vs skimage (all valid): max |diff| = {max_diff} DN")
    for name, t in best.items():
        print(f"  {name:28s} {1e3 * t:7.2f} ms")
    ours = best["ours (masked, uint16)"]
    skimage = min(best["skimage (H, W, 3)"], best["skimage (3, H, W)"])
    floor = best["floor (2 bincount + 1 LUT)"]
    print(f"ratio ours/skimage: {ours / skimage:.2f}x (target <= 1.0x; skimage runs unmasked)")
    print(f"ratio ours/floor:   {ours / floor:.2f}x")


if __name__ == "__main__":
    main()
