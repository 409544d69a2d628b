"""Tests written to kill mutants that the rest of the suite let live (tools/mutation.py).

Each checks a number against a reference (numpy, a hand computation or Keras's own
gradient), on pieces the method-level tests see only through the method's own random
matrices: feedback scales, seeds, the output-error helpers of the trace.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit import signal, transports

L = keras.layers


@pytest.fixture(autouse=True)
def _fresh_keras():
    """A fixed seed without clear_session (nothing here depends on layer names)."""
    keras.utils.set_random_seed(1234)
    yield


def built(layer, shape):
    layer.build(shape)
    return layer


# -- transports: how many terms one adjoint entry sums over --------------------------------


def test_fan_in_counts_the_terms_of_every_adjoint():
    # Hand counts: Dense sums over its output units; a convolution over taps x filters;
    # a transposed convolution over taps x its filters (the kernel's second-last axis);
    # a depthwise one over taps x multiplier; a pointwise kernel over its filters; an
    # EinsumDense over the kernel axes that index the output but not the input.
    cases = [
        (built(L.Dense(7), (None, 5)), 0, 7),
        (built(L.Conv1D(6, 5), (None, 9, 4)), 0, 5 * 6),
        (built(L.Conv2D(6, (3, 2)), (None, 9, 9, 4)), 0, 3 * 2 * 6),
        (built(L.Conv2DTranspose(6, 3), (None, 5, 5, 4)), 0, 9 * 6),
        (built(L.DepthwiseConv2D(3, depth_multiplier=2), (None, 9, 9, 4)), 0, 9 * 2),
        (built(L.SeparableConv2D(5, 3, depth_multiplier=2), (None, 9, 9, 4)), 0, 9 * 2),
        (built(L.SeparableConv2D(5, 3, depth_multiplier=2), (None, 9, 9, 4)), 1, 5),
        (built(L.EinsumDense("ab,bc->ac", output_shape=7), (None, 5)), 0, 7),
        (built(L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3)), (None, 4, 5)),
         0, 6),
        # A kernel axis shared with the input and the output is not summed over.
        (built(L.EinsumDense("abc,bcd->abd", output_shape=(4, 3)), (None, 4, 5)), 0, 3),
    ]
    for layer, j, expected in cases:
        assert transports.fan_in(layer, j) == expected, (type(layer).__name__, j)


def test_random_kernels_are_uniform_within_one_over_sqrt_fan_in():
    def net():
        return credit.Sequential([
            keras.Input((6, 6, 2)), L.Conv2D(4, 3, name="c1"), L.Conv2D(8, 3, name="c2"),
            L.Flatten(), L.Dense(40, name="d1"), L.Dense(30, name="d2")])

    model = net()
    model.compile(loss="mse", method=credit.methods.FeedbackAlignment(seed=3))
    method = model.method
    assert list(method.transported) == ["c2", "d1", "d2"]
    for name, fan in (("c2", 9 * 8), ("d1", 40), ("d2", 30)):
        b = method.feedback_matrices[name].numpy()
        bound = 1 / np.sqrt(fan)
        assert np.abs(b).max() <= bound
        assert np.abs(b).max() > 0.95 * bound  # thousands of draws reach the bound
        assert abs(b.mean()) < 0.1 * bound
    b = method.feedback_matrices["d1"].numpy()
    # A given scale replaces 1/sqrt(fan_in).
    model2 = net()
    model2.compile(loss="mse", method=credit.methods.FeedbackAlignment(seed=3, scale=0.5))
    b2 = model2.method.feedback_matrices["d1"].numpy()
    np.testing.assert_allclose(b2, b * 0.5 * np.sqrt(40), rtol=1e-5)


def test_uniform_feedback_draws_numpy_uniform_in_plus_minus_scale():
    got = signal.uniform_feedback(np.random.default_rng(7), (3, 4), 16)
    expected = np.random.default_rng(7).uniform(-0.25, 0.25, size=(3, 4)).astype("float32")
    np.testing.assert_array_equal(got, expected)
    got = signal.uniform_feedback(np.random.default_rng(7), (3, 4), 16, scale=2)
    np.testing.assert_array_equal(
        got, np.random.default_rng(7).uniform(-2, 2, size=(3, 4)).astype("float32"))


# -- seeds: the matrices a run draws are reproducible ---------------------------------------


def _reference_key(k):
    if isinstance(k, int) and not isinstance(k, bool):
        return k
    h = 0
    for ch in str(k).encode("utf-8"):
        h = (h * 131 + ch) % (2**31 - 1)
    return h


def test_seed_for_derives_numpy_generators_from_the_seed_and_the_keys():
    method = credit.methods.FeedbackAlignment(seed=11)
    for keys in [(0,), (3, 1), ("dense_1",), ("brsf", 2), (True,)]:
        expected = np.random.default_rng([11] + [_reference_key(k) for k in keys])
        np.testing.assert_array_equal(method.seed_for(*keys).integers(0, 2**31, 5),
                                      expected.integers(0, 2**31, 5))
    # Pinned: the hash of a name must not change between versions (saved runs redraw
    # their matrices from it).
    assert signal._key("dense_1") == 1801591391
    assert signal._key(7) == 7 and signal._key(np.int64(7)) == 7


def test_seed_none_draws_the_base_seed_from_numpys_global_generator():
    np.random.seed(5)
    base = np.random.randint(0, 2**31 - 1)
    np.random.seed(5)
    method = credit.get("fa")
    np.testing.assert_array_equal(method.seed_for(2).integers(0, 2**31, 4),
                                  np.random.default_rng([base, 2]).integers(0, 2**31, 4))


# -- the trace: output errors, output gradients, labels --------------------------------------


def _mlp(outputs=3, activation="softmax", hidden=5):
    return credit.Sequential([keras.Input((4,)), L.Dense(hidden, activation="tanh"),
                              L.Dense(outputs, activation=activation)])


@pytest.mark.parametrize("activation,loss,y", [
    ("softmax", "sparse_categorical_crossentropy", np.array([0, 2, 1, 2, 0, 1])),
    ("sigmoid", "binary_crossentropy",
     np.random.default_rng(4).integers(0, 2, size=(6, 3)).astype("float32")),
])
def test_output_gradient_of_a_probability_output_is_dl_dp(activation, loss, y):
    """Keras computes the loss from the logits, so no gradient reaches p: the trace
    rebuilds dL/dp from e. Reference: the loss written on p itself, differentiated."""
    model = _mlp(activation=activation)
    model.compile(loss=loss)
    x = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method="bp")
    p = tf.Variable(trace.y_pred)
    with tf.GradientTape() as tape:
        if activation == "softmax":
            ref = -tf.reduce_mean(tf.math.log(tf.gather(p, y, axis=1, batch_dims=1)))
        else:
            ref = -tf.reduce_mean(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
    expected = tape.gradient(ref, p).numpy()
    got = trace.output_gradient().numpy()
    if activation == "softmax":
        # dL/dp is defined up to a constant per example (softmax's invariance): compare
        # the projections on the tangent space of the simplex, weighted by p.
        pn = p.numpy()
        got = pn * (got - (pn * got).sum(1, keepdims=True))
        expected = pn * (expected - (pn * expected).sum(1, keepdims=True))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # The output error is e = dL/da at the logits.
    pn = trace.y_pred.numpy()
    e_ref = (pn - np.eye(3)[y]) / 6 if activation == "softmax" else (pn - y) / 18
    np.testing.assert_allclose(trace.output_error().numpy(), e_ref, rtol=1e-4, atol=1e-6)
    # Computed once: a second call returns the same tensor.
    assert trace.output_gradient() is trace.output_gradient()


def test_output_gradient_of_a_linear_output_is_the_tape_gradient():
    model = _mlp(outputs=2, activation=None)
    model.compile(loss="mse")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 4)).astype("float32"), rng.normal(size=(5, 2)).astype("float32")
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method="bp")
    expected = 2 * (trace.y_pred.numpy() - y) / 10
    np.testing.assert_allclose(trace.output_gradient().numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(trace.output_error().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert trace.output_units == 2


def test_labels_one_hot_classes_and_pass_targets_shaped_like_the_output():
    model = _mlp()
    model.compile(loss="sparse_categorical_crossentropy")
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 4)).astype("float32"))
    y = np.array([2, 0, 1, 2])
    for given in (y, y[:, None]):
        trace = credit.model.record(model, x, tf.constant(given), method="bp")
        np.testing.assert_array_equal(trace.labels().numpy(), np.eye(3)[y])
    onehot = np.eye(3, dtype="float32")[y] * 0.5
    trace = credit.model.record(model, x, tf.constant(onehot), method="bp",
                                loss_fn=lambda y, p: tf.reduce_sum(p))
    np.testing.assert_array_equal(trace.labels().numpy(), onehot)
    # Explicit units: the same rule with another size.
    np.testing.assert_array_equal(trace.labels(units=3).numpy(), onehot)
    with pytest.raises(ValueError, match="do not fit a model output of 3 units"):
        credit.model.record(model, x, tf.constant(np.zeros((4, 2), "float32")), method="bp",
                            loss_fn=lambda y, p: tf.reduce_sum(p)).labels()
    with pytest.raises(ValueError, match="one target tensor y"):
        credit.model.record(model, x, None, method="bp",
                            loss_fn=lambda y, p: tf.reduce_sum(p)).labels()


def test_flat_output_error_concatenates_the_outputs_errors():
    inputs = keras.Input((4,))
    h = L.Dense(5, activation="tanh")(inputs)
    out_a = L.Dense(2, name="a")(h)
    out_b = L.Dense(3, name="b")(h)
    model = credit.Model(inputs, [out_a, out_b])
    model.compile(loss=["mse", "mse"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4)).astype("float32")
    ya, yb = rng.normal(size=(6, 2)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")
    trace = credit.model.record(model, tf.constant(x), (tf.constant(ya), tf.constant(yb)),
                                method="bp")
    pa, pb = (t.numpy() for t in trace.y_pred)
    expected = np.concatenate([2 * (pa - ya) / 12, 2 * (pb - yb) / 18], axis=1)
    np.testing.assert_allclose(trace.flat_output_error().numpy(), expected, rtol=1e-5,
                               atol=1e-7)
    assert signal.output_error_units(trace.graph) == 5
