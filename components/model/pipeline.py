"""TerrainPipeline: a caption in, a Sentinel-2-like RGB image and a DEM in metres out.

One latent of ``2 * 4`` channels is denoised (image latent in channels 0-3, DEM latent in 4-7)
by the two-head UNet with one shared timestep, then each half is decoded by the same VAE. The
DEM comes out relative to its cell mean in model units; :class:`~components.model.dem_rule.DemRule`
turns it into metres with a base elevation looked up from the prompt.

Public API:

- :class:`TerrainPipeline` (``__call__``, ``save_pretrained``, ``from_pretrained``)
- :class:`TerrainPipelineOutput`
- :func:`build_pipeline` (trained parts + ``stats.json`` -> pipeline)

Saved layout (``save_pretrained``): ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` (the diffusers layout) plus ``dem_rule.json``.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import BaseOutput

from components.atomic import recover_folder
from components.model.dem_rule import DEM_RULE_FILE, DemRule
from components.model.factories import SD21_SCHEDULER, sampling_scheduler, training_scheduler
from components.model.text import tokenize_prompts
from components.model.unet import TwoHeadUNet

# The parts of a saved pipeline: subfolders first, then single files.
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CFG_MODES = ("batched", "two_pass")
OUTPUT_TYPES = ("np", "pt")


@dataclass
class TerrainPipelineOutput(BaseOutput):
    """What :meth:`TerrainPipeline.__call__` returns (one entry per prompt).

    Attributes:
        rgb (np.ndarray | torch.Tensor): uint8 ``(B, H, W, 3)``, the display-encoded image
            (``DemRule.rgb_to_uint8``).
        dem_m (np.ndarray | torch.Tensor): float32 ``(B, H, W)`` elevation in metres.
        dem_relative (np.ndarray | torch.Tensor): float32 ``(B, H, W)``, the DEM in model units
            (relative to the cell mean, clipped to [-1, 1] like the training data).
        prompts (list[str]): the prompts, one per image.
        seeds (list[int | None]): the seed of each image (None where a generator was passed).
        base_elevation_m (list[float]): the base elevation added to each DEM.
        base_elevation_key (list[str]): the ``base_elevation_m`` table key each base came from.
        settings (dict): steps, guidance, eta, scheduler class, height, width, cfg_mode.
    """

    rgb: Any
    dem_m: Any
    dem_relative: Any
    prompts: list[str]
    seeds: list[int | None]
    base_elevation_m: list[float]
    base_elevation_key: list[str]
    settings: dict[str, Any]


def _as_list(value: str | list[str] | None, n: int, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries but there are {n} prompts: give one per prompt or a single string")
    return values


class TerrainPipeline(DiffusionPipeline):
    """Text-to-terrain generation with a two-head UNet (image + DEM latents denoised together).

    Args:
        unet (TwoHeadUNet): predicts v for the 8-channel latent (image 0-3, DEM 4-7).
        vae (AutoencoderKL): shared by both modalities; latents are scaled by
            ``vae.config.scaling_factor``.
        text_encoder (transformers.CLIPTextModel): its ``last_hidden_state`` conditions the UNet.
        tokenizer: a CLIP-like tokenizer (``components.model.text``).
        scheduler: any diffusers scheduler configured for v-prediction (DDIM by default).
        dem_rule (DemRule | None): metres and colours from model units; None means
            ``DemRule(dem_scale_m=1.0)`` (metres = model units, base 0). Default None.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet: TwoHeadUNet, vae: AutoencoderKL, text_encoder, tokenizer, scheduler,
                 dem_rule: DemRule | None = None):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        # Not a diffusers component (a plain frozen dataclass): saved next to model_index.json.
        self.dem_rule = dem_rule if dem_rule is not None else DemRule(dem_scale_m=1.0)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """``(B, 77, hidden)`` text embeddings, in the UNet's dtype, on the pipeline's device."""
        ids = tokenize_prompts(self.tokenizer, prompts).to(self.text_encoder.device)
        hidden = self.text_encoder(input_ids=ids).last_hidden_state
        return hidden.to(device=self._execution_device, dtype=self.unet.dtype)

    @staticmethod
    def resolve_seeds(n: int, seed: int | list[int] | None) -> list[int]:
        """One seed per image: a list is used as is; one seed ``s`` gives ``s, s + 1, ...``;
        None draws a fresh base seed from the OS (recorded in the output, so still reproducible)."""
        if seed is None:
            seed = random.SystemRandom().randrange(2**31 - n)
        if isinstance(seed, (list, tuple)):
            seeds = [int(s) for s in seed]
            if len(seeds) != n:
                raise ValueError(f"seed has {len(seeds)} entries but there are {n} prompts: give one per prompt or a single int")
            return seeds
        return [int(seed) + i for i in range(n)]

    def prepare_noise(self, generators: list[torch.Generator], latent_shape: tuple[int, int, int],
                      device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Initial latents ``(B, 2C, h, w)``: per image, image noise then DEM noise, independent draws.

        Each image draws from its own generator on that generator's device, so an image depends
        only on its own seed (not on the batch it is in), then the noise moves to ``device``.
        """
        halves = []
        for g in generators:
            img = torch.randn(latent_shape, generator=g, device=g.device, dtype=torch.float32)
            dem = torch.randn(latent_shape, generator=g, device=g.device, dtype=torch.float32)
            halves.append(torch.cat([img, dem], dim=0))
        noise = torch.stack(halves).to(device=device, dtype=dtype)
        return noise * self.scheduler.init_noise_sigma

    def _step_kwargs(self, eta: float, generators: list[torch.Generator]) -> dict[str, Any]:
        """Pass ``eta`` / ``generator`` only to schedulers whose ``step`` takes them (DDIM, DDPM, ...)."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        elif eta:
            raise ValueError(f"eta={eta} but {type(self.scheduler).__name__} has no eta: use eta=0 or the DDIM sampler")
        if "generator" in params:
            # a list of per-image generators keeps each image's stochastic steps its own
            kwargs["generator"] = generators if len(generators) > 1 else generators[0]
        return kwargs

    def _predict_v(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                   uncond: torch.Tensor | None, guidance_scale: float, cfg_mode: str) -> torch.Tensor:
        """The (guided) v prediction for one step; ``uncond`` None means no guidance."""
        latent_in = self.scheduler.scale_model_input(latents, t)
        if uncond is None:
            return self.unet(latent_in, t, encoder_hidden_states=cond).sample
        if cfg_mode == "batched":
            out = self.unet(torch.cat([latent_in, latent_in]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            v_uncond, v_cond = out.chunk(2)
        else:
            v_uncond = self.unet(latent_in, t, encoder_hidden_states=uncond).sample
            v_cond = self.unet(latent_in, t, encoder_hidden_states=cond).sample
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode of scaled latents ``(B, 4, h, w)`` -> ``(B, 3, H, W)`` in model units."""
        scaled = latents / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        return self.vae.decode(scaled.to(self.vae.dtype)).sample.float()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | list[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        cfg_mode: str = "batched",
        output_type: str = "np",
        return_dict: bool = True,
    ) -> TerrainPipelineOutput | tuple:
        """Generate one RGB image and one DEM per prompt.

        Args:
            prompt (str | list[str]): caption(s), phrased like the training captions
                ("A Sentinel-2 image of ... in ...").
            negative_prompt (str | list[str] | None): what guidance steers away from; None uses
                the empty caption (what training dropped captions to). Default None.
            num_inference_steps (int): sampler steps. Default 50.
            guidance_scale (float): classifier-free guidance weight; <= 1 runs the conditional
                branch only. Default 7.0.
            eta (float): DDIM noise (0 = deterministic DDIM); rejected when non-zero for a
                scheduler without eta. Default 0.0.
            generator (torch.Generator | list[torch.Generator] | None): wins over ``seed``; one
                generator serves the images in turn, a list gives one per image. Default None.
            seed (int | list[int] | None): a list gives image ``i`` seed ``seed[i]``; one int
                ``s`` gives image ``i`` seed ``s + i``; None draws a random base seed. The seeds
                used are returned. Default None.
            height, width (int | None): output pixels, multiples of the VAE factor (8); default
                ``unet.config.sample_size * vae_scale_factor``.
            cfg_mode (str): "batched" (one UNet forward on the unconditional + conditional
                batch) or "two_pass" (two forwards; same result, kept for the benchmark).
                Default "batched".
            output_type (str): "np" (numpy arrays) or "pt" (CPU torch tensors). Default "np".
            return_dict (bool): False returns ``(rgb, dem_m)``. Default True.

        Returns:
            TerrainPipelineOutput (or ``(rgb, dem_m)``).
        """
        # 0. Check the arguments
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt is empty: give a caption or a list of captions")
        batch = len(prompts)
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode={cfg_mode!r}: use one of {CFG_MODES}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}: use one of {OUTPUT_TYPES}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        default_px = self.unet.config.sample_size * self.vae_scale_factor
        height, width = int(height or default_px), int(width or default_px)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor} (the VAE factor), "
                             f"got {height} x {width}")
        negatives = _as_list(negative_prompt, batch, "negative_prompt")
        do_cfg = guidance_scale > 1.0
        device = self._execution_device

        # 1. Encode the prompt (and the negative or empty prompt for guidance)
        cond = self.encode_prompt(prompts)
        uncond = self.encode_prompt(negatives or [""] * batch) if do_cfg else None

        # 2. Per-image random generators
        if generator is not None:
            generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * batch
            if len(generators) != batch:
                raise ValueError(f"generator has {len(generators)} entries but there are {batch} prompts")
            seeds: list[int | None] = [None] * batch
        else:
            seeds = self.resolve_seeds(batch, seed)
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]

        # 3. Prepare the timesteps (one shared timestep per step for both modalities)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 4. Prepare the two independent initial noises (image latent, DEM latent)
        c = self.unet.config.in_channels
        latents = self.prepare_noise(generators, (c, height // self.vae_scale_factor, width // self.vae_scale_factor),
                                     device, self.unet.dtype)
        step_kwargs = self._step_kwargs(eta, generators)

        # 5. Denoise: v-prediction, classifier-free guidance, scheduler step
        with self.progress_bar(total=len(timesteps)) as progress:
            for t in timesteps:
                v = self._predict_v(latents, t, cond, uncond, guidance_scale, cfg_mode)
                latents = self.scheduler.step(v, t, latents, **step_kwargs).prev_sample.to(self.unet.dtype)
                progress.update()

        # 6. Decode each half with the same VAE; the DEM is the mean of its 3 decoded channels
        rgb_model = self.decode_latents(latents[:, :c])
        dem_relative = self.decode_latents(latents[:, c:]).mean(dim=1).clamp(-1.0, 1.0)
        self.maybe_free_model_hooks()

        # 7. Post-process: 8-bit display RGB, metres from the prompt's base elevation
        bases = [self.dem_rule.base_elevation_for(p) for p in prompts]
        base_m = [b for b, _ in bases]
        rgb = self.dem_rule.rgb_to_uint8(rgb_model.permute(0, 2, 3, 1))
        dem_rel_np = dem_relative.cpu().numpy().astype(np.float32)
        dem_m = self.dem_rule.to_metres(dem_rel_np, base_m)
        if output_type == "pt":
            rgb, dem_m, dem_rel_np = (torch.from_numpy(a) for a in (rgb, dem_m, dem_rel_np))
        if not return_dict:
            return rgb, dem_m
        settings = {"num_inference_steps": int(num_inference_steps), "guidance_scale": float(guidance_scale),
                    "eta": float(eta), "scheduler": type(self.scheduler).__name__, "height": height,
                    "width": width, "cfg_mode": cfg_mode}
        return TerrainPipelineOutput(rgb=rgb, dem_m=dem_m, dem_relative=dem_rel_np, prompts=prompts, seeds=seeds,
                                     base_elevation_m=base_m, base_elevation_key=[k for _, k in bases],
                                     settings=settings)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """The diffusers layout (``model_index.json`` + one subfolder per part) plus ``dem_rule.json``.

        Keyword arguments go to ``DiffusionPipeline.save_pretrained`` (e.g. ``safe_serialization``).
        Parts loaded from a folder remember its absolute path (``_name_or_path``); it is replaced by
        the part's own name, so the same weights give the same bytes wherever the project lives.
        """
        for name in ("unet", "vae", "scheduler"):
            part = getattr(self, name, None)
            if part is not None and hasattr(part, "register_to_config"):
                part.register_to_config(_name_or_path=name)
        super().save_pretrained(str(save_directory), **kwargs)
        self.dem_rule.save(save_directory)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None, **unknown: Any) -> "TerrainPipeline":
        """Load a folder written by :meth:`save_pretrained`, offline (never downloads).

        Every part is loaded explicitly with its own class (the UNet is this project's
        ``TwoHeadUNet``, which diffusers' generic loader would have to import by module path).

        Args:
            folder (str | Path): the saved pipeline folder.
            device (str | torch.device | None): where to put the modules. Default None (CPU).
            torch_dtype (torch.dtype | None): dtype of the UNet, VAE and text encoder. Default
                None (as saved).
            **unknown: refused. ``DiffusionPipeline.from_pretrained`` takes hub and loading options
                (``revision``, ``variant``, ``device_map`` ...) that this loader would not honour;
                diffusers itself passes none when it loads a pipeline as a part of another.

        Raises:
            TypeError: an argument other than the ones above, naming it and what is accepted.
        """
        if unknown:
            raise TypeError(f"TerrainPipeline.from_pretrained got unexpected argument(s) {sorted(unknown)}; it takes "
                            "folder, device and torch_dtype (a local folder, always offline): pass the pipeline "
                            "folder and, if needed, move or cast the pipeline after loading")
        import diffusers
        import transformers
        from transformers import AutoTokenizer

        root = Path(folder)
        recover_folder(root)  # a training run killed mid-swap left the last pipeline as <folder>.old
        if not root.is_dir():
            raise FileNotFoundError(f"pipeline folder {str(root)!r} does not exist")
        missing = [p for p in PARTS if not (root / p).is_dir()]
        missing += [f for f in ("model_index.json", DEM_RULE_FILE) if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"pipeline folder {str(root)!r} lacks part(s) {missing}: it is not a complete "
                                    f"TerrainPipeline.save_pretrained folder (re-save the pipeline or copy the "
                                    f"missing part(s) in)")
        index = json.loads((root / "model_index.json").read_text())

        def class_of(part: str, module, default):
            entry = index.get(part)
            name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
            return getattr(module, name, default) if name else default

        dtype_kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = TwoHeadUNet.from_pretrained(str(root / "unet"), local_files_only=True, **dtype_kw)
        vae = AutoencoderKL.from_pretrained(str(root / "vae"), local_files_only=True, **dtype_kw)
        text_cls = class_of("text_encoder", transformers, transformers.CLIPTextModel)
        text_kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        text_encoder = text_cls.from_pretrained(str(root / "text_encoder"), local_files_only=True, **text_kw)
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
        scheduler_cls = class_of("scheduler", diffusers, diffusers.DDIMScheduler)
        scheduler = scheduler_cls.from_pretrained(str(root / "scheduler"), local_files_only=True)
        text_encoder.eval()
        pipe = cls(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
                   scheduler=scheduler, dem_rule=DemRule.load(root))
        if device is not None:
            pipe.to(device)
        return pipe


# ---------------------------------------------------------------------------------- builders
def _sampling_config() -> dict[str, Any]:
    # The training schedule, plus SD 2.1's final-alpha choice that DDPM's config does not carry.
    return {**dict(training_scheduler().config), "set_alpha_to_one": SD21_SCHEDULER["set_alpha_to_one"]}


def build_pipeline(unet: TwoHeadUNet, vae: AutoencoderKL, text_encoder, tokenizer, stats: Mapping,
                   sampler: str = "ddim") -> TerrainPipeline:
    """A pipeline from trained parts and ``stats.json``'s content.

    Args:
        unet, vae, text_encoder, tokenizer: the parts (put in eval mode here).
        stats (Mapping): ``data/samples/stats.json`` content (see ``DemRule.from_stats``).
        sampler (str): ``factories.SAMPLERS`` short name or diffusers scheduler class name, set
            up on the training schedule (v-prediction, SD 2.1 betas). Default "ddim".
    """
    scheduler = sampling_scheduler(sampler, _sampling_config())
    return TerrainPipeline(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                           tokenizer=tokenizer, scheduler=scheduler, dem_rule=DemRule.from_stats(stats))
