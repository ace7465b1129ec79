"""The DEM encoding: linear or companded, exact inverse, and every reader of it agrees."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.model.dem_rule import DemRule
from components.samples.dataset import dem_to_model
from components.samples.dem_encoding import decode_dem, describe_dem_encoding, encode_dem

S, KNEE = 2000.0, 50.0


def test_the_companded_rule_is_odd_monotone_reaches_one_at_the_scale_and_inverts():
    d = np.linspace(-S, S, 4001)
    x = encode_dem(d, S, KNEE)
    assert x[0] == pytest.approx(-1.0) and x[-1] == pytest.approx(1.0) and x[2000] == 0.0
    assert np.all(np.diff(x) > 0)
    assert np.allclose(encode_dem(-d, S, KNEE), -x)
    assert np.allclose(decode_dem(x, S, KNEE), d, atol=1e-6)
    # near zero it spreads flat ground over S / (k asinh(S / k)) times the linear range (about 9x here)
    gain = encode_dem(np.array([1.0]), S, KNEE)[0] / encode_dem(np.array([1.0]), S)[0]
    assert gain == pytest.approx(S / (KNEE * math.asinh(S / KNEE)), rel=1e-4) and gain > 8


def test_linear_is_d_over_s_and_torch_tensors_give_the_same_numbers_as_numpy():
    d = np.array([-300.0, -30.0, 0.0, 30.0, 900.0], dtype=np.float32)
    assert np.array_equal(encode_dem(d, S), d / S)
    for knee in (None, KNEE):
        through_torch = encode_dem(torch.from_numpy(d), S, knee)
        assert isinstance(through_torch, torch.Tensor)
        assert np.allclose(through_torch.numpy(), encode_dem(d, S, knee), atol=1e-6)
        assert np.allclose(decode_dem(through_torch, S, knee).numpy(), d, atol=1e-3)


def test_bad_settings_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="dem_scale_m must be a positive"):
        encode_dem(np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="dem_knee_m must be a positive number of metres or null"):
        decode_dem(np.zeros(2), S, -5.0)
    assert "asinh" in describe_dem_encoding(KNEE) and "asinh" not in describe_dem_encoding(None)


def test_model_input_is_clipped_and_the_dem_rule_gives_the_metres_back(tmp_path):
    dem = np.array([[-3000.0, -25.0], [0.0, np.nan]], dtype=np.float32)
    x = dem_to_model(dem, S, KNEE)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    assert x[0, 0, 0] == -1.0 and x[0, 1, 1] == 0.0  # clipped beyond -S; no-data becomes 0
    assert float(x[0, 0, 1]) == pytest.approx(math.asinh(-0.5) / math.asinh(S / KNEE), rel=1e-6)

    rule = DemRule.from_stats({"dem_scale_m": S, "dem_knee_m": KNEE})
    assert rule.to_metres(x[0].numpy(), base_m=100.0)[0, 1] == pytest.approx(75.0, abs=1e-3)
    assert np.allclose(rule.to_relative(rule.to_metres(x[0].numpy())), x[0].numpy(), atol=1e-6)
    rule.save(tmp_path)
    assert DemRule.load(tmp_path) == rule
    # a linear rule's file is what it was before the knee existed
    linear = DemRule(dem_scale_m=S)
    assert "dem_knee_m" not in linear.to_dict() and DemRule.from_stats({"dem_scale_m": S}) == linear
    assert linear.to_metres(np.array([0.5]))[0] == pytest.approx(1000.0)
