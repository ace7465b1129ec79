"""Two-head (image + DEM) conditional UNet composed from diffusers' own blocks.

Layout, with ``N = len(block_out_channels)`` (the parameter names are those of the published
MESA network, so its checkpoints load by name):

===========================  ==============================================================
``conv_in_img/_dem``         per-modality input convolution (``in_channels`` -> C0)
``head_img/_dem``            per-modality copies of Stable Diffusion's first down block
``down_blocks.0..N-2``       Stable Diffusion's down blocks ``1..N-1`` (shared)
``mid_block``                shared
``time_embedding``           shared (``time_proj`` is parameter-free)
``up_blocks.0..N-2``         Stable Diffusion's up blocks ``0..N-2`` (shared)
``head_out_img/_dem``        per-modality copies of Stable Diffusion's last up block
``conv_norm_out_img/_dem``   per-modality output norm; one shared ``conv_act``
``conv_out_img/_dem``        per-modality output convolution (C0 -> ``out_channels``)
===========================  ==============================================================

With ``shared_first_block=True`` the two first down blocks are replaced by one module named
``head`` (its parameters are ``head.*``; every other name is unchanged). It is still applied to
each modality separately, so each modality keeps its own skip tensors.

Skip bookkeeping (what makes it reproduce ``UNet2DConditionModel`` exactly when both halves
hold the same latent and the weights come from an SD UNet): SD's skip stack is
``[conv_in, d0.res_0 .. d0.res_{L-1}, d0.down, d1.res_0, ..., d_{N-1}.res_{L-1}]`` and its last
up block pops exactly the first ``L + 1`` of them (conv_in output and the first down block's
resnet outputs, all at full resolution). Hence:

* per modality ``m``: ``skips_m = (conv_in_m(x_m), head_m.res_0, ..., head_m.res_{L-1})``; they
  feed only ``head_out_m``;
* the head's down-sampled output (its last res sample, which is the same tensor as its hidden
  output) is averaged over the modalities, ``(img + dem) / 2``; it is the shared hidden state
  and the first shared skip;
* shared down blocks append their res samples after it; the shared up blocks pop from the end
  (the last shared up block takes the averaged skip plus the first shared down block's resnet
  outputs); its up-sampling target size is the resolution of the per-modality skips;
* the same up-sampled tensor enters both output heads; the two predictions are concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block, get_up_block
from diffusers.utils import BaseOutput

MODALITIES = ("img", "dem")


@dataclass
class TwoHeadUNetOutput(BaseOutput):
    """``sample``: (B, 2 * out_channels, H, W); image prediction first, DEM second."""

    sample: torch.Tensor


def _per_block(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries, expected {n}")
        return list(value)
    return [value] * n


class TwoHeadUNet(ModelMixin, AttentionMixin, ConfigMixin):
    """MESA-style UNet denoising an image latent and a DEM latent together.

    The arguments follow ``diffusers.UNet2DConditionModel`` (the subset Stable Diffusion 1.x/2.x
    uses); ``in_channels`` / ``out_channels`` are per modality. ``forward`` takes
    ``(B, 2 * in_channels, H, W)`` latents (image channels first) and returns
    ``(B, 2 * out_channels, H, W)``.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    _skip_layerwise_casting_patterns = ["norm"]
    _repeated_blocks = ["BasicTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_dim: int | None = None,
        timestep_post_act: str | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        attention_type: str = "default",
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        shared_first_block: bool = False,
    ):
        super().__init__()
        n = len(block_out_channels)
        if n < 2:
            raise ValueError("the two-head split needs at least 2 blocks (first block = heads)")
        if len(down_block_types) != n or len(up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must match in length")
        if norm_num_groups is None:
            raise ValueError("norm_num_groups is required (the published network has conv_norm_out_*)")
        # As in diffusers: `attention_head_dim` historically means the number of heads.
        num_attention_heads = num_attention_heads or attention_head_dim

        if isinstance(only_cross_attention, bool):
            if mid_block_only_cross_attention is None:
                mid_block_only_cross_attention = only_cross_attention
            only_cross_attention = [only_cross_attention] * n
        if mid_block_only_cross_attention is None:
            mid_block_only_cross_attention = False
        num_attention_heads = _per_block(num_attention_heads, n, "num_attention_heads")
        attention_head_dim = _per_block(attention_head_dim, n, "attention_head_dim")
        cross_attention_dim = _per_block(cross_attention_dim, n, "cross_attention_dim")
        layers_per_block = _per_block(layers_per_block, n, "layers_per_block")
        transformer_layers_per_block = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross_attention = _per_block(only_cross_attention, n, "only_cross_attention")

        c0 = block_out_channels[0]
        pad_in = (conv_in_kernel - 1) // 2
        self.conv_in_img = nn.Conv2d(in_channels, c0, kernel_size=conv_in_kernel, padding=pad_in)
        self.conv_in_dem = nn.Conv2d(in_channels, c0, kernel_size=conv_in_kernel, padding=pad_in)

        time_embed_dim = time_embedding_dim or c0 * 4
        self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act)

        common = dict(
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            dual_cross_attention=dual_cross_attention,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            attention_type=attention_type,
            resnet_skip_time_act=resnet_skip_time_act,
            cross_attention_norm=cross_attention_norm,
            dropout=dropout,
        )

        def down_block(i: int) -> nn.Module:
            return get_down_block(
                down_block_types[i],
                num_layers=layers_per_block[i],
                transformer_layers_per_block=transformer_layers_per_block[i],
                in_channels=block_out_channels[max(i - 1, 0)],
                out_channels=block_out_channels[i],
                add_downsample=i != n - 1,
                cross_attention_dim=cross_attention_dim[i],
                num_attention_heads=num_attention_heads[i],
                downsample_padding=downsample_padding,
                only_cross_attention=only_cross_attention[i],
                resnet_out_scale_factor=resnet_out_scale_factor,
                attention_head_dim=attention_head_dim[i] if attention_head_dim[i] is not None else block_out_channels[i],
                **common,
            )

        if shared_first_block:
            self.head = down_block(0)
        else:
            self.head_img = down_block(0)
            self.head_dem = down_block(0)
        self.down_blocks = nn.ModuleList([down_block(i) for i in range(1, n)])

        self.mid_block = get_mid_block(
            mid_block_type,
            in_channels=block_out_channels[-1],
            output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=transformer_layers_per_block[-1],
            num_attention_heads=num_attention_heads[-1],
            cross_attention_dim=cross_attention_dim[-1],
            mid_block_only_cross_attention=mid_block_only_cross_attention,
            attention_head_dim=attention_head_dim[-1],
            **common,
        )

        rev_channels = list(reversed(block_out_channels))
        rev_heads = list(reversed(num_attention_heads))
        rev_layers = list(reversed(layers_per_block))
        rev_cross = list(reversed(cross_attention_dim))
        rev_tlayers = list(reversed(transformer_layers_per_block))
        rev_only_cross = list(reversed(only_cross_attention))

        def up_block(i: int) -> nn.Module:
            return get_up_block(
                up_block_types[i],
                num_layers=rev_layers[i] + 1,
                transformer_layers_per_block=rev_tlayers[i],
                in_channels=rev_channels[min(i + 1, n - 1)],
                out_channels=rev_channels[i],
                prev_output_channel=rev_channels[max(i - 1, 0)],
                add_upsample=i != n - 1,
                resolution_idx=i,
                cross_attention_dim=rev_cross[i],
                num_attention_heads=rev_heads[i],
                only_cross_attention=rev_only_cross[i],
                resnet_out_scale_factor=resnet_out_scale_factor,
                attention_head_dim=attention_head_dim[i] if attention_head_dim[i] is not None else rev_channels[i],
                **common,
            )

        self.up_blocks = nn.ModuleList([up_block(i) for i in range(n - 1)])
        self.head_out_img = up_block(n - 1)
        self.head_out_dem = up_block(n - 1)
        self.num_upsamplers = n - 1

        self.conv_norm_out_img = nn.GroupNorm(num_channels=c0, num_groups=norm_num_groups, eps=norm_eps)
        self.conv_norm_out_dem = nn.GroupNorm(num_channels=c0, num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        pad_out = (conv_out_kernel - 1) // 2
        self.conv_out_img = nn.Conv2d(c0, out_channels, kernel_size=conv_out_kernel, padding=pad_out)
        self.conv_out_dem = nn.Conv2d(c0, out_channels, kernel_size=conv_out_kernel, padding=pad_out)

    # ------------------------------------------------------------------ helpers
    def first_block(self, modality: str) -> nn.Module:
        """The first down block ("head") used for ``modality`` ('img' or 'dem')."""
        return self.head if self.config.shared_first_block else getattr(self, f"head_{modality}")

    def _time_embedding(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type == "mps" and dtype == torch.float64:
                dtype = torch.float32
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)
        return self.time_embedding(t_emb)

    @staticmethod
    def _run_down(block, hidden, emb, kwargs):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=hidden, temb=emb, **kwargs)
        return block(hidden_states=hidden, temb=emb)

    @staticmethod
    def _run_up(block, hidden, emb, res, upsample_size, kwargs):
        if getattr(block, "has_cross_attention", False):
            return block(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=upsample_size,
                **kwargs,
            )
        return block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> TwoHeadUNetOutput | tuple[torch.Tensor]:
        c_in = self.config.in_channels
        if sample.shape[1] != 2 * c_in:
            raise ValueError(f"expected {2 * c_in} latent channels (image then DEM), got {sample.shape[1]}")

        forward_upsample_size = any(d % (2**self.num_upsamplers) != 0 for d in sample.shape[-2:])

        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        emb = self._time_embedding(sample, timestep)
        attn_kwargs = dict(
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            cross_attention_kwargs=cross_attention_kwargs,
            encoder_attention_mask=encoder_attention_mask,
        )

        # 1. per-modality conv_in + head; full-resolution skips stay with their modality
        x = {"img": sample[:, :c_in], "dem": sample[:, c_in:]}
        own_skips: dict[str, tuple[torch.Tensor, ...]] = {}
        head_out: dict[str, torch.Tensor] = {}
        head_down_skip: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            h0 = getattr(self, f"conv_in_{m}")(x[m])
            h, res = self._run_down(self.first_block(m), h0, emb, attn_kwargs)
            own_skips[m] = (h0,) + tuple(res[:-1])
            head_out[m] = h
            head_down_skip[m] = res[-1]

        # 2. average the heads' outputs and their down-sampled skip (the same tensor in diffusers'
        #    blocks, so a single average serves both)
        hidden = (head_out["img"] + head_out["dem"]) / 2
        if head_down_skip["img"] is head_out["img"] and head_down_skip["dem"] is head_out["dem"]:
            first_shared_skip = hidden
        else:
            first_shared_skip = (head_down_skip["img"] + head_down_skip["dem"]) / 2
        shared_skips: tuple[torch.Tensor, ...] = (first_shared_skip,)

        # 3. shared down blocks, mid block, up blocks
        for block in self.down_blocks:
            hidden, res = self._run_down(block, hidden, emb, attn_kwargs)
            shared_skips += tuple(res)

        if getattr(self.mid_block, "has_cross_attention", False):
            hidden = self.mid_block(hidden, emb, **attn_kwargs)
        else:
            hidden = self.mid_block(hidden, emb)

        for block in self.up_blocks:
            k = len(block.resnets)
            res, shared_skips = shared_skips[-k:], shared_skips[:-k]
            upsample_size = None
            if forward_upsample_size:
                upsample_size = (shared_skips[-1] if shared_skips else own_skips["img"][-1]).shape[2:]
            hidden = self._run_up(block, hidden, emb, res, upsample_size, attn_kwargs)
        if shared_skips:
            raise RuntimeError(f"{len(shared_skips)} shared skip tensors left unused")

        # 4. the same tensor through both output heads, each with its own modality's skips
        outs = []
        for m in MODALITIES:
            block = getattr(self, f"head_out_{m}")
            out = self._run_up(block, hidden, emb, own_skips[m], None, attn_kwargs)
            out = self.conv_act(getattr(self, f"conv_norm_out_{m}")(out))
            outs.append(getattr(self, f"conv_out_{m}")(out))
        out = torch.cat(outs, dim=1)

        if not return_dict:
            return (out,)
        return TwoHeadUNetOutput(sample=out)
