"""Tests for survivors of a fresh mutation sample (seed 21, issue 14)."""

import numpy as np

import credit
from credit.methods.forward_gradient import mix


def test_mix_folds_integers_modulo_two_to_the_32_not_less():
    """The seed/step key folds each part modulo 2**32: steps 64 apart (or any distance
    below 2**32) get different keys, so tangents do not repeat."""
    keys = [int(mix(s)) for s in (5, 5 + 64, 5 + 2**16, 5 + 2**32)]
    assert len(set(keys[:3])) == 3
    assert keys[0] == keys[3]


def test_through_time_scale_none_means_its_documented_default():
    """``scale=None`` takes the documented default, 0.1 (the factor on the synthetic
    gradient injected at a window's end)."""
    method = credit.get({"name": "synthetic_gradients_through_time", "scale": None})
    assert method.scale == 0.1
    assert credit.get({"name": "synthetic_gradients_through_time", "scale": 0.3}).scale == 0.3
    np.testing.assert_equal(method.get_config()["scale"], 0.1)
