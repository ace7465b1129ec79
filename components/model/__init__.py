"""The MESA-style two-head text-to-terrain UNet (image + DEM latents denoised together).

Modules:

- ``unet``: :class:`TwoHeadUNet`, a diffusers model composed from diffusers' own UNet blocks.
  Per-modality input convolution and first down block ("heads"), a shared middle (down blocks,
  mid block, up blocks, time embedding), per-modality last up block and output convolutions.
  8 latent channels in and out: image 0-3, DEM 4-7.
- ``convert``: initialisation from a Stable Diffusion ``UNet2DConditionModel`` (state dict or
  local diffusers folder) and loading of checkpoints saved by the published MESA code, whose
  parameter names this model uses verbatim.
- ``factories``: the tiny CPU configuration, the published tiny configuration, the paper
  (SD 2.1) configuration and ``build_unet`` (CPU or meta device).
"""
