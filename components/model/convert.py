"""Initialise a :class:`TwoHeadUNet` from Stable Diffusion, or load a published MESA checkpoint.

Stable Diffusion -> two-head mapping (``N`` = number of blocks):

* ``conv_in.*``        -> ``conv_in_img.*`` and ``conv_in_dem.*``
* ``down_blocks.0.*``  -> ``head_img.*`` and ``head_dem.*`` (``head.*`` with a shared first block)
* ``down_blocks.k.*``  -> ``down_blocks.{k-1}.*`` for ``k >= 1``
* ``up_blocks.{N-1}.*`` -> ``head_out_img.*`` and ``head_out_dem.*``
* ``conv_norm_out.*`` / ``conv_out.*`` -> the ``_img`` and ``_dem`` copies
* everything else (``time_embedding``, ``mid_block``, ``up_blocks.0..N-2``) unchanged.

Published MESA checkpoints already use this model's parameter names, so they load as they are.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .unet import MODALITIES, TwoHeadUNet

# UNet2DConditionModel options this model does not implement: they must keep these values.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_class_embeds": None,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "time_cond_proj_dim": None,
    "class_embeddings_concat": False,
    "reverse_transformer_layers_per_block": None,
}


def _two_head_arg_names() -> set[str]:
    params = inspect.signature(TwoHeadUNet.__init__).parameters
    return {k for k in params if k != "self"}


def config_from_stable_diffusion(sd_config: Mapping[str, Any], shared_first_block: bool = False) -> dict[str, Any]:
    """TwoHeadUNet arguments from a ``UNet2DConditionModel`` config (per-modality channels)."""
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        if sd_config.get(key, default) != default:
            raise ValueError(f"UNet option {key}={sd_config[key]!r} is not supported by TwoHeadUNet")
    names = _two_head_arg_names()
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sd_config.items() if k in names}
    cfg["shared_first_block"] = shared_first_block
    return cfg


def map_sd_key(key: str, num_blocks: int, shared_first_block: bool = False) -> list[str]:
    """The TwoHeadUNet parameter name(s) that Stable Diffusion's parameter ``key`` initialises."""
    prefix, _, rest = key.partition(".")
    if prefix in ("conv_in", "conv_norm_out", "conv_out"):
        return [f"{prefix}_{m}.{rest}" for m in MODALITIES]
    if prefix == "down_blocks":
        idx, _, tail = rest.partition(".")
        k = int(idx)
        if k == 0:
            return [f"head.{tail}"] if shared_first_block else [f"head_{m}.{tail}" for m in MODALITIES]
        return [f"down_blocks.{k - 1}.{tail}"]
    if prefix == "up_blocks":
        idx, _, tail = rest.partition(".")
        if int(idx) == num_blocks - 1:
            return [f"head_out_{m}.{tail}" for m in MODALITIES]
        return [key]
    return [key]


def convert_sd_state_dict(
    sd_state: Mapping[str, torch.Tensor], num_blocks: int, shared_first_block: bool = False
) -> dict[str, torch.Tensor]:
    """Map a Stable Diffusion UNet state dict to TwoHeadUNet names (duplicated tensors are cloned)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd_state.items():
        targets = map_sd_key(key, num_blocks, shared_first_block)
        for i, target in enumerate(targets):
            out[target] = value if i == 0 else value.clone()
    return out


def unet_from_stable_diffusion(
    sd_unet: Any,
    shared_first_block: bool = False,
    config: Mapping[str, Any] | None = None,
) -> TwoHeadUNet:
    """Build a TwoHeadUNet initialised from a Stable Diffusion UNet.

    ``sd_unet`` is a ``UNet2DConditionModel`` (its config is used) or a state dict, in which case
    ``config`` (the UNet2DConditionModel config) is required.
    """
    if isinstance(sd_unet, torch.nn.Module):
        sd_config = dict(sd_unet.config)
        sd_state = sd_unet.state_dict()
    else:
        if config is None:
            raise ValueError("a state dict needs the UNet2DConditionModel config")
        sd_config, sd_state = dict(config), sd_unet
    cfg = config_from_stable_diffusion(sd_config, shared_first_block)
    model = TwoHeadUNet(**cfg)
    n = len(cfg["block_out_channels"])
    converted = convert_sd_state_dict(sd_state, n, shared_first_block)
    model.load_state_dict(converted, strict=True)
    return model


def from_pretrained_sd(folder: str | os.PathLike, subfolder: str | None = "unet", shared_first_block: bool = False,
                       torch_dtype: torch.dtype | None = None) -> TwoHeadUNet:
    """Read a local diffusers Stable Diffusion folder (``<folder>/unet``) and convert its UNet."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    if subfolder and not (folder / subfolder).is_dir() and (folder / "config.json").is_file():
        subfolder = None  # the folder is the unet folder itself
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    sd_unet = UNet2DConditionModel.from_pretrained(str(folder), **kwargs)
    model = unet_from_stable_diffusion(sd_unet, shared_first_block=shared_first_block)
    return model.to(sd_unet.dtype)


def _strip_prefix(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop a common wrapper prefix ("module.", "unet.", ...) when the names otherwise match."""
    state = dict(state)
    if not state or set(state) & expected:
        return state
    for prefix in ("module.", "unet.", "model.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            return _strip_prefix({k[len(prefix):]: v for k, v in state.items()}, expected)
    return state


def load_published_checkpoint(
    model: TwoHeadUNet,
    state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
    strict: bool = True,
):
    """Load a checkpoint saved by the published MESA code (same parameter names) into ``model``.

    ``state_dict`` is a mapping or a path to a ``.safetensors`` / torch file (or a folder holding
    ``diffusion_pytorch_model.safetensors``). Returns ``load_state_dict``'s result.
    """
    if not isinstance(state_dict, Mapping):
        path = Path(state_dict)
        if path.is_dir():
            candidates = sorted(path.glob("diffusion_pytorch_model*.safetensors")) or sorted(path.glob("*.bin"))
            if len(candidates) != 1:
                raise FileNotFoundError(f"expected one weights file in {path}, found {candidates}")
            path = candidates[0]
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    state = _strip_prefix(state_dict, set(state_dict_names(model)))
    return model.load_state_dict(state, strict=strict)


def state_dict_names(model: torch.nn.Module) -> list[str]:
    """Sorted parameter/buffer names of ``model`` as they appear in its state dict."""
    return sorted(model.state_dict().keys())
