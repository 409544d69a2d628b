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


def test_output_gradient_stays_finite_where_a_probability_underflows_to_zero():
    """e / p with p floored at the dtype's smallest normal number: a class whose softmax
    probability underflows to exactly 0 gets a finite (huge) dL/dp, not inf or nan."""
    import keras
    import tensorflow as tf

    from credit.model import record

    inp = keras.Input((2,))
    out = keras.layers.Dense(3, activation="softmax", name="out")(
        keras.layers.Dense(4, name="h")(inp))
    model = credit.wrap(keras.Model(inp, out))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.get_layer("out").set_weights([np.array([[0.0, 0.0, 0.0]] * 4, "float32"),
                                        np.array([0.0, 200.0, -200.0], "float32")])
    x = tf.constant(np.ones((2, 2), "float32"))
    y = tf.constant([0, 2])
    p = keras.ops.convert_to_numpy(model(x))
    assert (p[:, 2] == 0).all()  # underflowed
    g = keras.ops.convert_to_numpy(record(model, x, y, method="dfa").output_gradient())
    assert np.isfinite(g).all()


def test_batchwise_sign_feedback_draws_each_kernel_from_its_own_stream():
    """Two transported layers with kernels of one shape get different magnitudes |M_t|
    (each kernel has its own index in the random stream)."""
    import keras

    inp = keras.Input((4,))
    h = keras.layers.Dense(4, activation="tanh", name="a")(inp)
    h = keras.layers.Dense(4, activation="tanh", name="b")(h)
    out = keras.layers.Dense(4, activation="softmax", name="c")(h)
    model = credit.wrap(keras.Model(inp, out))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  method={"name": "batchwise_random_sign_feedback", "seed": 0})
    model.train_on_batch(np.ones((2, 4), "float32"), np.array([0, 1]))
    method = model.method
    draws = [keras.ops.convert_to_numpy(method.draw(n)[0]) for n in ("b", "c")]
    assert draws[0].shape == draws[1].shape
    assert not np.allclose(draws[0], draws[1])
