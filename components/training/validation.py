"""What training measures besides its own loss: a fixed validation loss and a validation grid.

The validation loss uses held-out samples (the test split; the training split when a tiny world
holds none), their full captions, the VAE posterior mean and fixed noises and timesteps, so the
number is comparable across steps and runs. The same loss with the captions shuffled across the
samples tells whether the model uses its conditioning at all.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from components.layout import ProjectLayout

VALIDATION_SEED = 1234
SHUFFLES = 3  # caption shuffles averaged for the conditioning check


@dataclass
class ValidationSet:
    """Fixed held-out latents, captions, noises and timesteps (built once per run)."""

    image: torch.Tensor          # (N, 4, h, w) scaled latents
    dem: torch.Tensor
    mask: torch.Tensor           # (N, 1, h, w)
    captions: list[str]
    noise_image: torch.Tensor
    noise_dem: torch.Tensor
    timesteps: torch.Tensor      # (N,)
    tokenizer: Any
    text_encoder: Any
    split: str                   # how many held-out and training samples it holds
    sample_ids: list[str] = field(default_factory=list)  # per term (a repeated sample repeats its id)

    @classmethod
    def build(cls, layout: ProjectLayout, params: Mapping[str, Any], train_params, vae, tokenizer, text_encoder,
              device) -> ValidationSet:
        """Training's set: held-out samples first, a small world's test split topped up with
        training samples (the first ones in id order), so it is never too small to compare captions on."""
        shards = sorted(str(p) for p in layout.samples.glob("*.parquet"))
        scale, knee = _dem_encoding(layout)
        built = cls.from_shards(shards, scale, bool(params["shadow"]["enabled"]),
                                train_params.validation_samples, ("test", "train"), vae, tokenizer, text_encoder,
                                device, seed=train_params.seed, dem_knee_m=knee)
        if len(built.captions) < 2:
            raise ValueError(f"{layout.samples} holds {len(built.captions)} sample(s): validation needs at least 2")
        return built

    @classmethod
    def from_shards(cls, shards: Sequence[str], dem_scale_m: float, shadow: bool, count: int,
                    splits: Sequence[str], vae, tokenizer, text_encoder, device, seed: int = 0,
                    repeat_to: int = 0, dem_knee_m: float | None = None) -> ValidationSet:
        """Up to ``count`` samples of ``splits`` (in that order, id order within one), encoded once.

        ``repeat_to`` > the sample count repeats the samples (each copy with its own fixed noise and
        timestep) up to at least that many terms: a steadier number from a small held-out set.
        ``dem_scale_m`` and ``dem_knee_m``: the DEM encoding training used (stats.json).

        Raises:
            ValueError: when no sample is found.
        """
        from components.samples.dataset import TerrainSampleDataset, collate
        from components.training.loss import fixed_validation_noise

        items: list[dict] = []
        for split in splits:
            dataset = TerrainSampleDataset(list(shards), split, dem_scale_m=dem_scale_m, dem_knee_m=dem_knee_m,
                                           seed=seed, shuffle=False,
                                           shadow=shadow, augmentation=None, rank=0, world_size=1, shuffle_buffer=0)
            items += [item for _, item in zip(range(count - len(items)), dataset)]
        if not items:
            raise ValueError(f"the {'/'.join(splits)} split(s) of {len(shards)} sample shard(s) hold no sample")
        repeats = max(1, -(-repeat_to // len(items)))  # ceil
        test_ids = _test_ids(shards)
        held_out = sum(1 for item in items if item["sample_id"] in test_ids)
        split = f"{held_out} test + {len(items) - held_out} train" + (f", x{repeats}" if repeats > 1 else "")
        batch = collate(items * repeats)
        scale = float(vae.config.scaling_factor)
        with torch.no_grad():
            both = vae.encode(torch.cat([batch["rgb"], batch["dem"]]).to(device, vae.dtype)).latent_dist.mean
        image, dem = (both.float() * scale).chunk(2)
        noise = fixed_validation_noise(len(image), tuple(image.shape[1:]), VALIDATION_SEED)
        return cls(image=image, dem=dem, mask=batch["mask_latent"].to(device), captions=list(batch["caption"]),
                   noise_image=noise.image_noise.to(device), noise_dem=noise.dem_noise.to(device),
                   timesteps=noise.timesteps.to(device), tokenizer=tokenizer, text_encoder=text_encoder,
                   split=split, sample_ids=list(batch["sample_id"]))

    @torch.no_grad()
    def losses(self, unet, scheduler) -> dict[str, float]:
        """Validation loss with the true captions and with captions shuffled across samples (NaN
        for the shuffled loss when all samples share one caption: there is no other to give them)."""
        terms = self.term_losses(unet, scheduler)
        weight = float(terms["weight"].sum())
        return {"loss": terms["loss"], "loss_image": terms["loss_image"], "loss_dem": terms["loss_dem"],
                "loss_shuffled_captions": float(terms["squared_error_shuffled"].sum()) / weight}

    @torch.no_grad()
    def term_losses(self, unet, scheduler) -> dict[str, Any]:
        """The losses of :meth:`losses` and, per term (sample x repeat), the parts they are made of.

        Returns:
            ``loss``, ``loss_image``, ``loss_dem`` (floats, as training reports them) and per term
            (numpy arrays in ``sample_ids`` order): ``squared_error`` and ``squared_error_shuffled``
            (the masked squared v-error summed over the latent, the shuffled one averaged over the
            caption shuffles; NaN when all captions are the same) and ``weight`` (its normaliser).
            sum(squared_error) / sum(weight) is the loss: what a resample of cells recomputes.
        """
        from components.model.text import tokenize_prompts
        from components.training.loss import apply_noise, masked_v_loss, per_sample_squared_error

        noised = apply_noise(scheduler, self.image, self.dem, self.timesteps, self.noise_image, self.noise_dem)

        def predict(captions: Sequence[str]) -> torch.Tensor:
            ids = tokenize_prompts(self.tokenizer, list(captions)).to(self.image.device)
            context = self.text_encoder(input_ids=ids).last_hidden_state
            return unet(noised.noisy.to(unet.dtype), noised.timesteps, context.to(unet.dtype)).sample.float()

        was_training = unet.training
        unet.eval()
        prediction = predict(self.captions)
        true = masked_v_loss(prediction, noised.target, self.mask)
        error, weight = per_sample_squared_error(prediction, noised.target, self.mask)
        # Every sample gets another's caption, by seeded random derangements: not a roll by one,
        # which pairs neighbouring grid cells whose captions are often the same.
        if len(set(self.captions)) >= 2:
            shuffled = sum(per_sample_squared_error(predict([self.captions[j] for j in order]), noised.target,
                                                    self.mask)[0]
                           for order in derangements(len(self.captions), SHUFFLES, VALIDATION_SEED)) / SHUFFLES
        else:
            shuffled = torch.full_like(error, float("nan"))
        unet.train(was_training)
        return {"loss": float(true.total), "loss_image": float(true.image), "loss_dem": float(true.dem),
                "squared_error": error.cpu().numpy(), "squared_error_shuffled": shuffled.cpu().numpy(),
                "weight": weight.cpu().numpy()}


def derangements(n: int, count: int, seed: int) -> list[list[int]]:
    """``count`` seeded permutations of range(n) that move every index (n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    rng = np.random.default_rng(seed)
    found: list[list[int]] = []
    while len(found) < count:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            found.append(order.tolist())
    return found


def _test_ids(shards: Sequence[str]) -> set[str]:
    from components.samples.shards import read_sample_shard

    return {row["sample_id"] for path in shards for row in read_sample_shard(path, columns=["sample_id", "split"])
            if row["split"] == "test"}


def _dem_encoding(layout: ProjectLayout) -> tuple[float, float | None]:
    """stats.json's DEM scale and knee (None: linear)."""
    import json

    stats = json.loads(layout.sample_stats.read_text())
    return float(stats["dem_scale_m"]), stats.get("dem_knee_m")


def render_grid(rgb: np.ndarray, dem_m: np.ndarray, prompts: Sequence[str], seeds: Sequence[int],
                pixel_size_m: float, panel_px: int = 128) -> Image.Image:
    """One row per generation: the RGB next to the DEM's colour relief, with prompt and seed."""
    from components.export.terrain import colour_relief

    label_h = 28
    width = 2 * panel_px
    canvas = Image.new("RGB", (width, len(prompts) * (panel_px + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (image, dem, prompt, seed) in enumerate(zip(rgb, dem_m, prompts, seeds)):
        top = row * (panel_px + label_h)
        draw.text((2, top + 1), _shorten(prompt, 44), fill="black")
        draw.text((2, top + 14), f"seed {seed}  relief {np.nanmin(dem):.0f}..{np.nanmax(dem):.0f} m", fill="black")
        relief = colour_relief(dem, pixel_size_m)
        for col, panel in enumerate((image, relief)):
            tile = Image.fromarray(np.ascontiguousarray(panel)).resize((panel_px, panel_px), Image.NEAREST)
            canvas.paste(tile, (col * panel_px, top + label_h))
    return canvas


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
