"""The vae component on the micro world's samples: training, determinism, masking, the stage."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ParamsError, VaeConfig
from components.model.factories import build_vae, tiny_vae_config
from components.model.vae import (
    augment_batch,
    evaluate_reconstruction,
    load_vae_arrays,
    lr_factor,
    masked_reconstruction_loss,
    train_vae,
)
from components.model.vae_stage import run_vae_stage, save_vae_atomic
from components.samples.dataset import rgb_to_model
from components.samples.shards import read_sample_shard

# A narrow VAE keeps every test to about a second of training on 32 px micro samples.
WIDTHS = [16, 16, 32, 32]
FAST = {"steps": 6, "batch_size": 8, "learning_rate": 2e-3, "block_out_channels": WIDTHS, "max_dem_error_m": 1e9}


@pytest.fixture(scope="module")
def micro(prepared_project):
    """(shards, stats dict, stats path, train arrays) of the micro world's samples."""
    project, _ = prepared_project
    samples = project / "data" / "samples"
    shards = sorted(samples.glob("*.parquet"))
    stats = json.loads((samples / "stats.json").read_text())
    return shards, stats, samples / "stats.json", load_vae_arrays(shards, stats["dem_scale_m"], "train")


def _fresh_vae(stats, seed=0):
    torch.manual_seed(seed)
    return build_vae(tiny_vae_config(stats["prepare"]["latent_factor"], 4, block_out_channels=WIDTHS))


def test_arrays_are_model_ready_and_use_plain_rgb(micro):
    shards, stats, _, train = micro
    n, px = len(train["sample_id"]), stats["prepare"]["image_px"]
    assert n == stats["splits"]["train"]
    assert train["rgb"].shape == train["dem"].shape == (n, 3, px, px)
    assert train["mask"].shape == (n, 1, px, px)
    assert train["rgb"].abs().max() <= 1 and train["dem"].abs().max() <= 1
    first = next(s for s in read_sample_shard(sorted(map(str, shards))[0]) if s["split"] == "train")
    assert torch.equal(train["rgb"][train["sample_id"].index(first["sample_id"])], rgb_to_model(first["rgb"]))


def test_stage_writes_a_loadable_folder_that_keeps_the_scaling_factor(micro, tmp_path):
    from diffusers import AutoencoderKL

    shards, _, stats_path, _ = micro
    lines: list[str] = []
    out = tmp_path / "models" / "vae"
    report = run_vae_stage(shards, stats_path, FAST, out, progress=lines.append, device="cpu")
    loaded = AutoencoderKL.from_pretrained(out, local_files_only=True)
    assert loaded.config.scaling_factor == pytest.approx(report["scaling_factor"], rel=1e-5)
    assert report["scaling_factor"] > 0 and report["steps"] == FAST["steps"]
    for key in ("rgb_mse", "rgb_psnr_db", "rgb_bilinear_mse", "rgb_bilinear_psnr_db", "rgb_beats_bilinear",
                "dem_mse", "dem_psnr_db", "dem_bilinear_mse", "dem_bilinear_psnr_db", "dem_rmse_m", "dem_mae_m",
                "dem_bilinear_rmse_m", "dem_bilinear_mae_m", "dem_beats_bilinear", "final_loss", "samples",
                "evaluated_on", "latent_factor"):
        assert key in report, key
    assert report["samples"]["train"] > 0
    assert not any("second" in k or k.endswith("_s") for k in report), "reports must not hold run times"
    json.dumps(report)  # what the stage writes to reports/vae.json
    assert any("step 6/6" in line for line in lines)
    # A second save replaces the folder and leaves no temporary behind.
    save_vae_atomic(loaded, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["vae"]


def test_training_is_deterministic_for_a_seed(micro):
    _, stats, _, train = micro
    params = VaeConfig(steps=3, batch_size=8, seed=7)
    weights = []
    for _ in range(2):
        vae = _fresh_vae(stats, seed=7)
        history = train_vae(vae, train["rgb"], train["dem"], train["mask"], params, device="cpu")
        weights.append(vae.state_dict())
    assert len(history) == 3 and {"step", "loss", "rec_loss", "kl"} <= set(history[0])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_learning_rate_warms_up_then_decays_to_its_floor():
    steps, warmup, floor = 100, 10, 0.02
    factors = [lr_factor(s, steps, warmup, floor) for s in range(steps)]
    assert factors[0] == pytest.approx(0.1) and factors[warmup - 1] == pytest.approx(1.0)
    assert max(factors) == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(floor), "the last step runs at the floor"
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:])), "the cosine only decays"
    # A run shorter than the warm-up still decays to its floor; a single step runs at the peak.
    assert lr_factor(5, 6, 50, floor) == pytest.approx(floor)
    assert lr_factor(0, 1, 50, floor) == 1.0


def test_training_follows_the_schedule_and_augments_consistently(micro):
    _, stats, _, train = micro
    params = VaeConfig(steps=5, batch_size=4, learning_rate=1e-3, warmup_steps=1, lr_floor=0.1,
                       mean_fraction=0.4)
    history = train_vae(_fresh_vae(stats), train["rgb"], train["dem"], train["mask"], params, device="cpu")
    assert [h["lr"] for h in history][0] == pytest.approx(1e-3) and history[-1]["lr"] == pytest.approx(1e-4)
    assert all(np.isfinite(h["loss"]) for h in history)
    # Every element of the dihedral group shows up, and image and mask always move together.
    pattern = torch.arange(16.0).reshape(1, 1, 4, 4)
    generator, seen = torch.Generator().manual_seed(0), set()
    for _ in range(64):
        images, masks = augment_batch(pattern.repeat(2, 3, 1, 1), pattern.repeat(2, 1, 1, 1), generator)
        assert torch.equal(images[:, :1], masks) and torch.equal(images[0], images[1])
        seen.add(tuple(masks[0, 0].flatten().tolist()))
    assert len(seen) == 8
    with pytest.raises(ParamsError, match=r"vae\.lr_floor = 2\.0: must be <= 1"):
        VaeConfig.from_params({"lr_floor": 2.0})


def test_masked_pixels_do_not_touch_the_reconstruction_loss(micro):
    _, _, _, train = micro
    target, mask = train["rgb"][:4].clone(), train["mask"][:4].clone()
    mask[:, :, :8, :] = 0  # some invalid rows whatever the world's own masks hold
    reconstruction = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    invalid = (mask == 0).expand_as(target)
    for kind in ("l1", "mse"):
        before = masked_reconstruction_loss(reconstruction, target, mask, kind)
        noisy_rec, noisy_target = reconstruction.clone(), target.clone()
        noisy_rec[invalid] = 50.0
        noisy_target[invalid] = float("nan")
        assert torch.equal(masked_reconstruction_loss(noisy_rec, noisy_target, mask, kind), before)


def test_dem_error_above_the_bound_fails_with_what_to_change(micro, tmp_path):
    shards, stats, _, _ = micro
    out = tmp_path / "vae"
    with pytest.raises(ValueError, match=r"DEM reconstruction RMSE .* m .*vae\.max_dem_error_m.*vae\.steps"):
        run_vae_stage(shards, stats, {**FAST, "steps": 1, "max_dem_error_m": 1e-6}, out, device="cpu")
    assert not out.exists(), "a failed check must not leave a VAE behind"


def test_unknown_param_key_is_named():
    with pytest.raises(ParamsError, match=r"vae\.stpes = 10: unknown key \(did you mean 'steps'\?\)"):
        VaeConfig.from_params({"stpes": 10})
    with pytest.raises(ParamsError, match=r"vae\.loss = 'huber': must be 'l1' or 'mse'"):
        VaeConfig.from_params({"loss": "huber"})


def test_pretrained_folder_is_taken_as_is(micro, tmp_path):
    shards, stats, _, _ = micro
    vae = _fresh_vae(stats)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "sd" / "vae")  # a pipeline folder holding vae/, like SD 2.1's
    report = run_vae_stage(shards, stats, {"max_dem_error_m": 1e9}, tmp_path / "out", pretrained=tmp_path / "sd",
                           device="cpu")
    assert report["source"] == "pretrained" and report["steps"] == 0 and report["scaling_factor"] == 0.5
    assert (tmp_path / "out" / "config.json").is_file()


def test_evaluation_of_a_perfect_copy_beats_bilinear(micro):
    """The metric plumbing: an identity 'VAE' has zero error and beats the baseline."""
    _, stats, _, train = micro

    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda _self: x})()})()

        def decode(self, z):
            return type("O", (), {"sample": z})()

    r = evaluate_reconstruction(Identity(), train["rgb"], train["dem"], train["mask"], stats["dem_scale_m"],
                                stats["prepare"]["latent_factor"])
    assert r["rgb_mse"] == 0 and r["dem_rmse_m"] == pytest.approx(0, abs=1e-3) and r["rgb_beats_bilinear"] and r["dem_beats_bilinear"]
    assert r["dem_bilinear_rmse_m"] > 0 and np.isfinite(r["dem_bilinear_psnr_db"])


def test_save_vae_atomic_writes_the_same_bytes_readable_by_others_and_keeps_the_old_folder_on_failure(tmp_path):
    import os
    import stat

    torch.manual_seed(0)
    vae = build_vae(tiny_vae_config(8, 4, block_out_channels=WIDTHS))
    vae.save_pretrained(tmp_path / "plain", safe_serialization=True)
    out = tmp_path / "models" / "vae"
    old = os.umask(0o022)
    try:
        save_vae_atomic(vae, out)
        save_vae_atomic(vae, out)  # over the first one
    finally:
        os.umask(old)

    def files(folder):
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}

    saved, plain = files(out), files(tmp_path / "plain")
    assert {k: p.read_bytes() for k, p in saved.items()} == {k: p.read_bytes() for k, p in plain.items()}
    assert {stat.S_IMODE(p.stat().st_mode) for p in saved.values()} == {0o644}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert sorted(p.name for p in out.parent.iterdir()) == ["vae"]

    class Failing:
        def save_pretrained(self, folder, **_):
            (Path(folder) / "config.json").write_text("{half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_vae_atomic(Failing(), out)
    assert {k: p.read_bytes() for k, p in files(out).items()} == {k: p.read_bytes() for k, p in plain.items()}
    assert sorted(p.name for p in out.parent.iterdir()) == ["vae"]
