"""The two-head (image + DEM) UNet: SD equivalence, skip bookkeeping, published names, paper size."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from components.model.convert import (
    load_published_checkpoint,
    map_sd_key,
    state_dict_names,
    unet_from_stable_diffusion,
)
from components.model.factories import (
    build_unet,
    PUBLISHED_KEYS_FILE,
    paper_unet_config,
    published_tiny_config,
    read_keys_file,
    sd_config,
    tiny_unet_config,
)
from components.model.unet import TwoHeadUNet

KEYS_FILE = PUBLISHED_KEYS_FILE  # kept with the code: the test runs in any checkout


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sd_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sd_config(config)).eval()
    # Random (not default) norm affine parameters, so a mixed-up norm copy would show.
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return unet


def _inputs(batch: int, size: int, cross_dim: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x_img = torch.randn(batch, 4, size, size, generator=g)
    x_dem = torch.randn(batch, 4, size, size, generator=g)
    ehs = torch.randn(batch, 7, cross_dim, generator=g)
    t = torch.tensor([3, 700][:batch] + [10] * max(0, batch - 2))
    return x_img, x_dem, t, ehs


@pytest.mark.parametrize("config_fn", [tiny_unet_config, published_tiny_config], ids=["tiny", "published_tiny"])
@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared_head"])
@pytest.mark.parametrize("size", [16, 18], ids=["even", "odd_upsample"])
def test_same_latent_reproduces_stable_diffusion(config_fn, shared, size):
    cfg = config_fn()
    sd = _sd_unet(cfg)
    model = unet_from_stable_diffusion(sd, shared_first_block=shared).eval()
    x, _, t, ehs = _inputs(2, size, cfg["cross_attention_dim"])
    with torch.no_grad():
        ref = sd(x, t, ehs).sample
        out = model(torch.cat([x, x], dim=1), t, ehs).sample
    assert out.shape == (2, 8, size, size)
    torch.testing.assert_close(out[:, :4], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 4:], ref, atol=1e-5, rtol=0)


def _hand_reference(sd: UNet2DConditionModel, x_img, x_dem, t, ehs) -> torch.Tensor:
    """The published forward, written directly on the ORIGINAL SD UNet's modules.

    Independent of TwoHeadUNet: builds SD's full skip stack per modality and merges it by index:
    positions 0..L (conv_in, first-block resnets) per modality, position L+1 (first block's
    down-sampled output) averaged, the rest shared.
    """
    emb = sd.time_embedding(sd.time_proj(t).to(x_img.dtype))

    def xattn(block) -> bool:
        return getattr(block, "has_cross_attention", False)

    kw = dict(encoder_hidden_states=ehs)
    first = sd.down_blocks[0]
    n_own = 1 + len(first.resnets)  # conv_in + first block's resnet outputs

    stacks, heads = [], []
    for x in (x_img, x_dem):
        h0 = sd.conv_in(x)
        h, res = first(h0, emb, **kw) if xattn(first) else first(h0, emb)
        stacks.append([h0, *res])
        heads.append(h)
    h = (heads[0] + heads[1]) / 2
    shared = [(stacks[0][n_own] + stacks[1][n_own]) / 2]
    for block in sd.down_blocks[1:]:
        h, res = block(h, emb, **kw) if xattn(block) else block(h, emb)
        shared += list(res)
    h = sd.mid_block(h, emb, **kw)
    for block in sd.up_blocks[:-1]:
        k = len(block.resnets)
        res, shared = tuple(shared[-k:]), shared[:-k]
        if xattn(block):
            h = block(h, res, emb, **kw)
        else:
            h = block(h, res, emb)
    assert not shared
    last = sd.up_blocks[-1]
    outs = []
    for stack in stacks:
        own = tuple(stack[:n_own])
        o = last(h, own, emb, **kw) if xattn(last) else last(h, own, emb)
        outs.append(sd.conv_out(sd.conv_act(sd.conv_norm_out(o))))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("config_fn", [tiny_unet_config, published_tiny_config], ids=["tiny", "published_tiny"])
def test_different_latents_match_hand_assembled_reference(config_fn):
    cfg = config_fn()
    sd = _sd_unet(cfg, seed=3)
    model = unet_from_stable_diffusion(sd).eval()
    x_img, x_dem, t, ehs = _inputs(2, 16, cfg["cross_attention_dim"], seed=5)
    with torch.no_grad():
        ref = _hand_reference(sd, x_img, x_dem, t, ehs)
        out = model(torch.cat([x_img, x_dem], dim=1), t, ehs).sample
        # The halves genuinely differ, and each depends on the other modality (shared middle).
        assert (out[:, :4] - out[:, 4:]).abs().max() > 1e-3
        out_swapped_dem = model(torch.cat([x_img, x_dem.flip(-1)], dim=1), t, ehs).sample
        assert (out_swapped_dem[:, :4] - out[:, :4]).abs().max() > 1e-4
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_published_names_and_shapes_load_strict():
    header, shapes = read_keys_file(KEYS_FILE)
    assert header == sd_config(published_tiny_config())
    model = TwoHeadUNet(**header)
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    result = load_published_checkpoint(model, state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    saved = model.state_dict()
    assert state_dict_names(model) == sorted(shapes)
    assert {k: tuple(v.shape) for k, v in saved.items()} == shapes
    assert all(torch.equal(saved[k], state[k]) for k in shapes)
    assert sum(p.numel() for p in model.parameters()) == 2_722_280
    # A wrapper prefix (e.g. from an accelerate-wrapped save) is stripped.
    other = TwoHeadUNet(**header)
    load_published_checkpoint(other, {f"module.{k}": v for k, v in state.items()}, strict=True)
    assert torch.equal(other.conv_in_dem.weight, state["conv_in_dem.weight"])
    # A misnamed key fails under strict loading.
    bad = dict(state)
    bad["conv_in_rgb.weight"] = bad.pop("conv_in_img.weight")
    with pytest.raises(RuntimeError):
        load_published_checkpoint(TwoHeadUNet(**header), bad, strict=True)


def test_save_pretrained_round_trip(tmp_path):
    model = build_unet(tiny_unet_config())
    model.save_pretrained(tmp_path / "unet")
    again = TwoHeadUNet.from_pretrained(tmp_path / "unet", local_files_only=True)
    assert state_dict_names(again) == state_dict_names(model)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    fresh = build_unet(tiny_unet_config())
    load_published_checkpoint(fresh, tmp_path / "unet", strict=True)
    assert torch.equal(fresh.head_out_dem.resnets[0].conv1.weight, model.head_out_dem.resnets[0].conv1.weight)


def test_paper_config_on_meta_device():
    from accelerate import init_empty_weights

    cfg = paper_unet_config()
    model = build_unet(cfg, device="meta")
    assert model.conv_in_img.weight.device.type == "meta"
    with init_empty_weights():
        sd = UNet2DConditionModel(**sd_config(cfg))
    assert _n_params(sd) == 865_910_724
    extra = sum(_n_params(m) for m in (sd.conv_in, sd.down_blocks[0], sd.up_blocks[-1], sd.conv_norm_out, sd.conv_out))
    assert _n_params(model) == 865_910_724 + extra
    # Shapes: every two-head parameter has the shape of the SD parameter it comes from.
    sd_shapes = {k: v.shape for k, v in sd.state_dict().items()}
    two_shapes = {k: v.shape for k, v in model.state_dict().items()}
    mapped = {t: sd_shapes[k] for k in sd_shapes for t in map_sd_key(k, 4)}
    assert mapped == two_shapes
    assert model.conv_in_img.weight.shape == (320, 4, 3, 3)
    assert model.conv_out_dem.weight.shape == (4, 320, 3, 3)
    assert model.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.shape == (640, 1024)
    assert model.head_img.attentions[0].transformer_blocks[0].attn1.upcast_attention
    shared = build_unet(paper_unet_config(shared_first_block=True), device="meta")
    assert _n_params(shared) == _n_params(model) - _n_params(sd.down_blocks[0])


def _loss_and_grads(model, x, t, ehs):
    model.zero_grad(set_to_none=True)
    out = model(x, t, ehs).sample
    loss = (out**2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_same_gradients():
    cfg = tiny_unet_config()
    torch.manual_seed(0)
    model = build_unet(cfg).train()
    x_img, x_dem, t, ehs = _inputs(2, 16, cfg["cross_attention_dim"])
    x = torch.cat([x_img, x_dem], dim=1)
    loss0, grads0 = _loss_and_grads(model, x, t, ehs)
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    assert model.head_img.gradient_checkpointing and model.head_out_dem.gradient_checkpointing
    loss1, grads1 = _loss_and_grads(model, x, t, ehs)
    torch.testing.assert_close(loss1, loss0)
    assert grads0.keys() == grads1.keys()
    assert len(grads0) == len(list(model.parameters()))  # every parameter gets a gradient
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5, msg=name)


def test_sdpa_channels_last_and_compile():
    from diffusers.models.attention_processor import AttnProcessor2_0

    cfg = tiny_unet_config()
    torch.manual_seed(0)
    model = build_unet(cfg).eval()
    assert model.attn_processors and all(isinstance(p, AttnProcessor2_0) for p in model.attn_processors.values())
    x_img, x_dem, t, ehs = _inputs(2, 16, cfg["cross_attention_dim"])
    x = torch.cat([x_img, x_dem], dim=1)
    with torch.no_grad():
        ref = model(x, t, ehs).sample
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out_cl = cl(x.to(memory_format=torch.channels_last), t, ehs).sample
        torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, t, ehs).sample, ref, atol=1e-5, rtol=1e-5)


def test_shared_first_block_variant():
    cfg = tiny_unet_config()
    separate = build_unet(cfg)
    shared = build_unet(tiny_unet_config(shared_first_block=True))
    names = state_dict_names(shared)
    assert any(n.startswith("head.") for n in names)
    assert not any(n.startswith(("head_img.", "head_dem.")) for n in names)
    assert _n_params(shared) == _n_params(separate) - _n_params(separate.head_img)
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        out = shared(x, 5, torch.randn(1, 3, cfg["cross_attention_dim"])).sample
    assert out.shape == (1, 8, 16, 16)


def test_rejects_single_block_and_wrong_channels():
    with pytest.raises(ValueError):
        TwoHeadUNet(**tiny_unet_config(block_out_channels=[32], down_block_types=["DownBlock2D"],
                                       up_block_types=["UpBlock2D"]))
    model = build_unet(tiny_unet_config())
    with pytest.raises(ValueError):
        model(torch.randn(1, 4, 16, 16), 1, torch.randn(1, 3, 32))


def test_from_local_stable_diffusion_folder(tmp_path):
    from components.model.convert import from_pretrained_sd

    cfg = tiny_unet_config()
    sd = _sd_unet(cfg, seed=7)
    sd.save_pretrained(tmp_path / "sd" / "unet")
    model = from_pretrained_sd(tmp_path / "sd").eval()
    assert torch.equal(model.head_dem.resnets[0].conv1.weight, sd.down_blocks[0].resnets[0].conv1.weight)
    assert torch.equal(model.down_blocks[0].resnets[0].conv1.weight, sd.down_blocks[1].resnets[0].conv1.weight)
    assert torch.equal(model.head_out_img.resnets[1].conv2.weight, sd.up_blocks[-1].resnets[1].conv2.weight)
    assert torch.equal(model.conv_out_dem.weight, sd.conv_out.weight)
    shared = from_pretrained_sd(tmp_path / "sd" / "unet", shared_first_block=True)  # the unet folder itself
    assert torch.equal(shared.head.attentions[0].proj_in.weight, sd.down_blocks[0].attentions[0].proj_in.weight)


def test_compile_aot_eager_forward_backward():
    cfg = tiny_unet_config()
    torch.manual_seed(0)
    model = build_unet(cfg).train()
    x = torch.randn(2, 8, 16, 16)
    ehs = torch.randn(2, 5, cfg["cross_attention_dim"])
    ref = model(x, 3, ehs).sample
    ref.square().mean().backward()
    ref_grad = model.conv_in_dem.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    out = torch.compile(model, backend="aot_eager", fullgraph=True)(x, 3, ehs).sample
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.conv_in_dem.weight.grad, ref_grad, atol=1e-6, rtol=1e-5)
