"""The validation pieces of training: caption shuffles and the run fingerprint."""
from __future__ import annotations

import numpy as np

from components.training.loop import run_fingerprint
from components.training.validation import derangements


def test_derangements_move_every_caption_and_are_seeded():
    orders = derangements(7, 3, seed=5)
    assert len(orders) == 3
    for order in orders:
        assert sorted(order) == list(range(7)) and not np.any(np.array(order) == np.arange(7))
    assert orders == derangements(7, 3, seed=5) and orders != derangements(7, 3, seed=6)


def test_fingerprint_ignores_the_schedule_but_not_what_is_learned():
    params = {"model": {"unet": "tiny"}, "train": {"steps": 10, "learning_rate": 1e-3, "log_every": 5},
              "captions": {"augmentation": {"p_uncond": 0.1}}, "shadow": {"enabled": True}}
    stats, vae = {"dem_scale_m": 2000.0}, {"scaling_factor": 0.36, "_diffusers_version": "x"}
    base = run_fingerprint(params, stats, vae)
    longer = {**params, "train": {**params["train"], "steps": 500, "log_every": 50}}
    assert run_fingerprint(longer, stats, vae) == base
    faster = {**params, "train": {**params["train"], "learning_rate": 1e-4}}
    assert run_fingerprint(faster, stats, vae) != base
    assert run_fingerprint({**params, "shadow": {"enabled": False}}, stats, vae) != base
    assert run_fingerprint(params, stats, {**vae, "scaling_factor": 0.5}) != base
    assert run_fingerprint(params, stats, {**vae, "_diffusers_version": "y"}) == base
