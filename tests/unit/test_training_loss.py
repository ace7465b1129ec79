"""The masked v-prediction loss and the noising of the two latents (small tensors, no model)."""
from __future__ import annotations

import pytest
import torch

from components.model.factories import training_scheduler
from components.training.loss import (
    VALIDATION_TIMESTEPS,
    apply_noise,
    fixed_validation_noise,
    masked_v_loss,
    noisy_latents,
    v_target,
)

B, C, H, W = 3, 4, 4, 4


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared, busy machine two OpenMP threads spin against each other
    and even small tensor work crawls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scheduler():
    return training_scheduler()


def _batch(seed: int = 0, b: int = B):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, 2 * C, H, W, generator=g)
    target = torch.randn(b, 2 * C, H, W, generator=g)
    mask = (torch.rand(b, 1, H, W, generator=g) > 0.3).float()
    mask[:, :, 0, 0] = 1.0  # every sample keeps at least one valid position
    mask[:, :, 0, 1] = 0.0  # and at least one masked one
    return pred, target, mask


def test_loss_is_the_mean_over_valid_positions_per_modality():
    pred, target, mask = _batch()
    parts = masked_v_loss(pred, target, mask)
    valid = mask.bool().expand(-1, C, -1, -1)
    image = (pred[:, :C] - target[:, :C])[valid].square().mean()
    dem = (pred[:, C:] - target[:, C:])[valid].square().mean()
    assert torch.allclose(parts.image, image, atol=1e-6)
    assert torch.allclose(parts.dem, dem, atol=1e-6)
    assert torch.allclose(parts.total, image + dem, atol=1e-6)
    assert parts.valid_share.item() == pytest.approx(mask.mean().item())
    assert parts.empty_samples == 0


def test_gradient_at_masked_positions_is_exactly_zero():
    pred, target, mask = _batch()
    pred.requires_grad_(True)
    masked_v_loss(pred, target, mask).total.backward()
    hidden = (mask == 0).expand(-1, 2 * C, -1, -1)
    assert torch.count_nonzero(pred.grad[hidden]) == 0
    assert torch.count_nonzero(pred.grad[~hidden]) > 0


def test_values_at_masked_positions_do_not_change_the_loss():
    pred, target, mask = _batch()
    before = masked_v_loss(pred, target, mask)
    hidden = (mask == 0).expand(-1, 2 * C, -1, -1)
    pred2, target2 = pred.clone(), target.clone()
    pred2[hidden] += 1000.0
    target2[hidden] = float("nan")  # no-data in the target must not leak in either
    after = masked_v_loss(pred2, target2, mask)
    assert torch.equal(before.total, after.total)
    assert torch.equal(before.image, after.image) and torch.equal(before.dem, after.dem)


def test_an_all_masked_sample_contributes_nothing():
    pred, target, mask = _batch(b=2)
    alone = masked_v_loss(pred[:1], target[:1], mask[:1])
    mask[1] = 0.0
    pred[1] = 1e6  # whatever it predicts
    both = masked_v_loss(pred, target, mask)
    assert torch.allclose(both.total, alone.total, rtol=1e-6, atol=0)
    assert both.empty_samples == 1


def test_an_all_masked_batch_gives_zero_loss_and_zero_gradients():
    pred, target, _ = _batch()
    pred.requires_grad_(True)
    parts = masked_v_loss(pred, target, torch.zeros(B, 1, H, W))
    parts.total.backward()
    assert parts.total.item() == 0.0 and parts.image.item() == 0.0 and parts.dem.item() == 0.0
    assert torch.isfinite(pred.grad).all() and torch.count_nonzero(pred.grad) == 0
    assert parts.empty_samples == B and parts.valid_share.item() == 0.0


def test_image_and_dem_parts_see_only_their_channels():
    pred, target, mask = _batch()
    target[:, C:] = pred[:, C:]  # a perfect DEM prediction
    parts = masked_v_loss(pred, target, mask)
    assert parts.dem.item() == 0.0 and parts.image.item() > 0
    assert torch.equal(parts.total, parts.image)


def test_loss_refuses_wrong_shapes():
    pred, target, mask = _batch()
    with pytest.raises(ValueError, match="mask_latent has shape"):
        masked_v_loss(pred, target, mask[:, :, :2])
    with pytest.raises(ValueError, match="target has shape"):
        masked_v_loss(pred, target[:, :C], mask)
    with pytest.raises(ValueError, match=r"\(B, 2C, h, w\)"):
        masked_v_loss(pred[:, :7], target[:, :7], mask)


def test_noisy_latents_share_one_timestep_and_use_two_noises(scheduler):
    g = torch.Generator().manual_seed(3)
    image, dem = torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)
    out = noisy_latents(scheduler, image, dem, torch.Generator().manual_seed(7))
    assert out.noisy.shape == out.target.shape == (B, 2 * C, H, W)
    assert out.timesteps.shape == (B,) and out.timesteps.dtype == torch.long
    assert ((0 <= out.timesteps) & (out.timesteps < scheduler.config.num_train_timesteps)).all()

    # replay the draws: timesteps, then image noise, then DEM noise
    replay = torch.Generator().manual_seed(7)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (B,), generator=replay)
    n_image, n_dem = torch.randn(B, C, H, W, generator=replay), torch.randn(B, C, H, W, generator=replay)
    assert torch.equal(t, out.timesteps)
    assert not torch.equal(n_image, n_dem)
    assert torch.allclose(out.noisy[:, :C], scheduler.add_noise(image, n_image, t))
    assert torch.allclose(out.noisy[:, C:], scheduler.add_noise(dem, n_dem, t))
    assert torch.allclose(out.target[:, :C], scheduler.get_velocity(image, n_image, t))
    assert torch.allclose(out.target[:, C:], v_target(scheduler, dem, n_dem, t))

    # the shared timestep: with the same clean latent in both, only the noise tells them apart
    same = noisy_latents(scheduler, image, image.clone(), torch.Generator().manual_seed(7))
    a_t = scheduler.alphas_cumprod[same.timesteps].view(B, 1, 1, 1)
    residual_image = (same.noisy[:, :C] - a_t.sqrt() * image) / (1 - a_t).sqrt()
    residual_dem = (same.noisy[:, C:] - a_t.sqrt() * image) / (1 - a_t).sqrt()
    assert torch.allclose(residual_image, n_image, atol=1e-4)
    assert torch.allclose(residual_dem, n_dem, atol=1e-4)


def test_noisy_latents_are_deterministic_for_a_seeded_generator(scheduler):
    image, dem = torch.randn(B, C, H, W), torch.randn(B, C, H, W)
    first = noisy_latents(scheduler, image, dem, torch.Generator().manual_seed(11))
    second = noisy_latents(scheduler, image, dem, torch.Generator().manual_seed(11))
    other = noisy_latents(scheduler, image, dem, torch.Generator().manual_seed(12))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first.noisy, other.noisy)


def test_apply_noise_refuses_mismatched_modalities(scheduler):
    with pytest.raises(ValueError, match="DEM latents"):
        apply_noise(scheduler, torch.zeros(1, C, H, W), torch.zeros(1, C, 2, 2), torch.zeros(1), torch.zeros(1, C, H, W),
                    torch.zeros(1, C, 2, 2))


def test_fixed_validation_noise_is_fixed_and_cycles_timesteps():
    first = fixed_validation_noise(7, (C, H, W), seed=5)
    again = fixed_validation_noise(7, (C, H, W), seed=5)
    longer = fixed_validation_noise(9, (C, H, W), seed=5)
    other = fixed_validation_noise(7, (C, H, W), seed=6)
    assert first.timesteps.tolist() == [*VALIDATION_TIMESTEPS, *VALIDATION_TIMESTEPS[:2]]
    assert first.image_noise.shape == first.dem_noise.shape == (7, C, H, W)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(longer.image_noise[:7], first.image_noise)  # a bigger set keeps the first noises
    assert not torch.equal(first.image_noise, first.dem_noise)
    assert not torch.equal(first.image_noise, other.image_noise)
    assert fixed_validation_noise(2, (C, H, W), timesteps=[250]).timesteps.tolist() == [250, 250]
