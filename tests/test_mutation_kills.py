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


@pytest.mark.parametrize("dtypes,expected", [(("float64", "float64"), "float64"),
                                             (("float64", "float32"), "float32")])
def test_flat_output_error_casts_only_mixed_dtypes_to_float32(dtypes, expected):
    """Outputs of one dtype keep it (float64 stays exact); mixed ones meet in float32."""
    inputs = keras.Input((4,))
    h = L.Dense(5, activation="tanh")(inputs)
    outs = [L.Dense(n, name=name, dtype=d)(h) for n, name, d in zip((2, 3), "ab", dtypes)]
    model = credit.Model(inputs, outs)
    model.compile(loss=["mse", "mse"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4)).astype("float32")
    ys = [rng.normal(size=(6, n)) for n in (2, 3)]
    trace = credit.model.record(model, tf.constant(x),
                                tuple(tf.constant(y, d) for y, d in zip(ys, dtypes)),
                                method="bp")
    got = trace.flat_output_error()
    assert got.dtype == expected
    p = [t.numpy().astype("float64") for t in trace.y_pred]
    reference = np.concatenate([2 * (pi - yi) / yi.size for pi, yi in zip(p, ys)], axis=1)
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-5, atol=1e-7)


# -- transports.linear: the layer's own op without the bias ---------------------------------


@pytest.mark.parametrize("make,shape", [
    (lambda: L.Dense(4), (3, 5)),
    (lambda: L.EinsumDense("abc,cd->abd", output_shape=(None, 4), bias_axes="d"), (3, 2, 5)),
    (lambda: L.Conv1D(4, 3, padding="causal", dilation_rate=2), (3, 9, 2)),
])
def test_linear_is_the_layers_call_without_its_bias(make, shape):
    rng = np.random.default_rng(0)
    layer = make()
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    layer.build(x.shape)
    for v in layer.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    bias = layer.bias.numpy()
    got = transports.linear(layer, x, transports.kernels(layer)).numpy()
    np.testing.assert_allclose(got + bias, layer(x).numpy(), rtol=1e-5, atol=1e-5)
    # Crossing with other kernels: linear in them.
    doubled = transports.linear(layer, x, tuple(2 * k for k in transports.kernels(layer)))
    np.testing.assert_allclose(doubled.numpy(), 2 * got, rtol=1e-5, atol=1e-5)


def test_causal_padding_pads_the_time_axis_on_the_left_in_both_data_formats():
    last = L.Conv1D(2, 3, padding="causal", dilation_rate=2)
    first = L.Conv1D(2, 3, padding="causal", dilation_rate=2, data_format="channels_first")
    assert transports._causal_padding(last) == [[0, 0], [4, 0], [0, 0]]
    assert transports._causal_padding(first) == [[0, 0], [0, 0], [4, 0]]


def test_linear_of_a_layer_without_a_transport_is_an_error_naming_it():
    layer = L.LSTM(3, name="lstm")
    with pytest.raises(TypeError, match="'lstm' \\(LSTM\\) has no transport"):
        transports.linear(layer, tf.zeros((1, 2, 3)), ())


# -- the trace's backward products ------------------------------------------------------------


def test_trace_gradient_without_targets_is_zero_and_logits_are_the_softmax_input():
    model = _mlp()
    model.compile(loss="sparse_categorical_crossentropy")
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 4)).astype("float32"))
    method = credit.get("dfa")
    trace = credit.model.record(model, x, tf.constant([0, 1, 2, 0]), method=method)
    [point] = trace.points
    got = trace.gradient({point: None}, [point], objective=False)
    assert list(got) == [point]
    np.testing.assert_array_equal(got[point].numpy(), np.zeros(trace.outputs[point].shape))
    # The logits: the last Dense's pre-activation, before the softmax.
    h = trace.outputs[point].numpy()
    w, b = model.layers[-1].kernel.numpy(), model.layers[-1].bias.numpy()
    np.testing.assert_allclose(trace.logits.numpy(), h @ w + b, rtol=1e-5, atol=1e-6)
    # With the objective: the true dL/dh at the point (backprop's product e W^T).
    e = trace.output_error().numpy()
    np.testing.assert_allclose(trace.gradient({}, [point])[point].numpy(), e @ w.T,
                               rtol=1e-5, atol=1e-7)


def test_repr_lists_the_hyperparameters_but_not_the_name():
    assert repr(credit.methods.FeedbackAlignment(seed=3, scale=0.5)) == \
        "FeedbackAlignment(seed=3, scale=0.5, layers=None)"


@pytest.mark.parametrize("equation,output_shape,shape", [
    ("abc,cd->ad", 4, (3, 2, 5)),     # b is summed within x alone: the generic VJP
    ("abc,cd->abd", (2, 4), (3, 2, 5)),  # the transposed einsum
])
def test_einsum_adjoint_is_the_tape_gradient(equation, output_shape, shape):
    rng = np.random.default_rng(1)
    layer = L.EinsumDense(equation, output_shape=output_shape)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
    g = tf.constant(rng.normal(size=out.shape).astype("float32"))
    got = transports.adjoint(layer, g, x, transports.kernels(layer))
    np.testing.assert_allclose(got.numpy(), tape.gradient(out, x, output_gradients=g).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert (transports._einsum_adjoint(equation) is None) == (equation == "abc,cd->ad")


# -- synthetic gradients through time: DNI's auxiliary task ---------------------------------


class _FixedFuture(credit.methods.SyntheticGradientsThroughTime):
    """Injects a fixed gradient G at the window's final state instead of M(s_T)."""

    future = None

    def future_gradient(self, name, trace):
        return [tf.constant(self.future)]


def test_auxiliary_loss_regresses_the_head_onto_the_future_gradient_per_example():
    batch, window, units = 3, 4, 2
    keras.utils.set_random_seed(0)
    model = credit.Sequential([
        keras.Input(batch_shape=(batch, window, 2)),
        L.SimpleRNN(units, stateful=True, return_sequences=True, name="rnn"),
        L.Dense(1, name="out")])
    method = _FixedFuture(aux_weight=0.5, seed=0, optimizer="sgd", learning_rate=0.1)
    method.future = (np.arange(batch * units).reshape(batch, units) / 10).astype("float32")
    model.compile("sgd", "mse", method=method)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, window, 2)).astype("float32")
    y = rng.normal(size=(batch, window, 1)).astype("float32")
    kx, kh, bias = (w.numpy() for w in model.get_layer("rnn").weights)
    first = np.tanh(x[:, 0] @ kx + bias)  # the RNN's first output step (zero state)
    history = model.fit(x, y, batch_size=batch, shuffle=False, verbose=0)
    # The head starts at zero; the target is G in per-example units (times the batch),
    # over sigma = 1 before any target was seen.
    target = batch * method.future
    assert history.history["aux_loss"][0] == pytest.approx(np.mean(target**2), rel=1e-5)
    # One SGD step of the head on aux_weight * mean((first A + c - target)^2) from zero.
    [head] = method.aux_heads.values()
    step = 0.1 * 0.5 * 2 / target.size
    np.testing.assert_allclose(head.kernel.numpy(), step * first.T @ target, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(head.bias.numpy(), step * target.sum(0), rtol=1e-5, atol=1e-7)


def test_vjp_carries_only_the_given_signal_not_the_loss():
    """On a residual model the loss reaches the lower point past the upper one: vjp must
    not add it (kickback's one-block products rely on this)."""
    inputs = keras.Input((4,))
    a = L.Dense(5, activation="tanh", name="a")(inputs)
    b = L.Dense(5, activation="tanh", name="b")(a)
    out = L.Dense(3, name="head")(L.Add()([a, b]))
    model = credit.Model(inputs, out)
    model.compile(loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")
    # Points on every block (the default puts one on the stream, after the Add).
    trace = credit.model.record(model, tf.constant(x), tf.constant(y),
                                method={"name": "dfa", "at": "blocks"})
    assert list(trace.points) == ["a", "b"]
    s = rng.normal(size=(6, 5)).astype("float32")
    got = trace.vjp("b", tf.constant(s))
    hb = trace.outputs["b"].numpy()
    expected = (s * (1 - hb**2)) @ model.get_layer("b").kernel.numpy().T
    np.testing.assert_allclose(got["a"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_synthesizer_initialisation_follows_the_documented_seed_derivation():
    """Reproducibility: synthesizer i's hidden layers are Glorot-uniform, seeded from
    ``seed_for(i, 0x5E)``; the last layer starts at zero."""
    model = _mlp(hidden=6)
    method = credit.methods.SyntheticGradients(synthesizer="mlp", hidden_units=[4], seed=3)
    model.compile(loss="sparse_categorical_crossentropy", method=method)
    [(point, synthesizer)] = method.synthesizers.items()
    rng = np.random.default_rng(int(method.seed_for(0, 0x5E).integers(0, 2**31 - 1)))
    init = keras.initializers.GlorotUniform(seed=int(rng.integers(0, 2**31 - 1)))
    hidden, last = synthesizer.stack
    np.testing.assert_array_equal(hidden.kernel.numpy(), init((6, 4)).numpy())
    assert not last.kernel.numpy().any() and not last.bias.numpy().any()


def test_through_time_optimizer_is_built_at_compile():
    """Built before the first step, so that the train function creates no variables
    (and a model saved before training saves the optimizer's slots)."""
    model = credit.Sequential([
        keras.Input(batch_shape=(3, 4, 2)),
        L.SimpleRNN(2, stateful=True, return_sequences=True, name="rnn"), L.Dense(1)])
    method = credit.methods.SyntheticGradientsThroughTime(seed=0)
    model.compile("sgd", "mse", method=method)
    optimizer = method.optimizer_instance
    assert optimizer.built
    synthesizer_vars = [v for s in method.synthesizers.values() for v in s.trainable_variables]
    # Adam: two slots per synthesizer variable, besides the iteration count.
    slots = [v for v in optimizer.variables if v.shape == synthesizer_vars[0].shape]
    assert len(slots) == 2


def test_documented_defaults():
    config = credit.methods.SyntheticGradients().get_config()
    del config["seed"]
    assert config == {
        "name": "synthetic_gradients", "synthesizer": "linear", "conditioned": False,
        "target": "bootstrap", "at": None, "update_probability": 1.0, "warmup_steps": 0,
        "hidden_units": [1024, 1024], "hidden_filters": [128, 128], "kernel_size": 5,
        "activation": "relu", "optimizer": "adam", "learning_rate": 0.01, "width": 64,
        "max_points": 16, "max_parameters": None, "stage_points": 3}
    config = credit.methods.SyntheticGradientsThroughTime().get_config()
    del config["seed"]
    assert config == {
        "name": "synthetic_gradients_through_time", "synthesizer": "linear",
        "conditioned": False, "at": None, "warmup_steps": 0, "hidden_units": [1024, 1024],
        "activation": "relu", "optimizer": "adam", "learning_rate": 0.01, "scale": 0.1,
        "aux_weight": 0.0, "normalize": True}
    kp = credit.methods.KolenPollack().get_config()
    assert kp["learning_rate"] == 0.01 and kp["weight_decay"] is None
    assert credit.get("cdni").conditioned is True


def test_kickback_on_three_hidden_blocks_matches_numpy():
    """Three points, so the one-block products of two different blocks are needed."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh"),
                               L.Dense(4, activation="tanh"), L.Dense(3, activation="tanh"),
                               L.Dense(1)])
    model.compile(loss="mse")
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 1)).astype("float32")
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y), method="kickback")
    w1, b1, w2, b2, w3, b3, w4, b4 = [w.astype("float64") for w in model.get_weights()]
    x64 = x.astype("float64")
    h1 = np.tanh(x64 @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    h3 = np.tanh(h2 @ w3 + b3)
    e = 2 * (h3 @ w4 + b4 - y) / 6
    d3 = e @ w4.T
    d2 = e * ((1 - h3**2) @ w3.T)
    d1 = e * ((1 - h2**2) @ w2.T)
    g1, g2, g3 = d1 * (1 - h1**2), d2 * (1 - h2**2), d3 * (1 - h3**2)
    expected = [x64.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ g3, g3.sum(0),
                h3.T @ e, e.sum(0)]
    for got, want in zip(out.gradients, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_drtp_takes_one_point_name_as_a_list_of_one():
    def run(at):
        keras.utils.set_random_seed(0)
        model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh", name="first"),
                                   L.Dense(4, activation="tanh", name="second"),
                                   L.Dense(3, activation="softmax")])
        model.compile(loss="sparse_categorical_crossentropy",
                      method=credit.methods.DirectRandomTargetProjection(seed=1, at=at))
        return model.method
    assert list(run("second").points) == ["second"] == list(run(["second"]).points)
    assert run(["first", "second"]).at == ["first", "second"]


def test_synthesizer_of_a_channels_first_map_predicts_its_channels():
    model = _mlp()
    method = credit.methods.SyntheticGradients(seed=0)
    model.compile(loss="sparse_categorical_crossentropy", method=method)
    Synthesizer = type(next(iter(method.synthesizers.values())))  # wherever it lives
    s = Synthesizer((3, 5, 6), data_format="channels_first", condition_units=2,
                    kernel_size=3)
    [conv] = s.stack
    assert conv.filters == 3 and conv.data_format == "channels_first"
    assert tuple(conv.kernel.shape) == (3, 3, 3 + 2, 3)
    assert credit.methods.SyntheticGradients(kernel_size=1).kernel_size == 1


def test_fan_in_defaults_to_the_first_kernel_and_usf_scales_per_kernel():
    separable = built(L.SeparableConv2D(5, 3, depth_multiplier=2), (None, 9, 9, 4))
    assert transports.fan_in(separable) == transports.fan_in(separable, 0) == 18
    model = credit.Sequential([keras.Input((8, 8, 2)), L.Conv2D(4, 3, name="conv"),
                               L.SeparableConv2D(5, 3, name="sep"), L.Flatten(),
                               L.Dense(3, name="out")])
    model.compile(loss="mse", method="usf")
    from credit.methods import _sign

    scales = model.method.scales
    assert scales["out"] == pytest.approx(_sign.glorot_std(model.get_layer("out")))
    sep = model.get_layer("sep")
    assert scales["sep"] == pytest.approx((_sign.glorot_std(sep, 0), _sign.glorot_std(sep, 1)))


# -- fresh sample (seed 2) on current main ----------------------------------------------


def test_drtp_weights_a_batch_of_one_like_the_loss():
    """A sample weight of shape (1,) (a batch of one) is one weight per example, not a
    unit axis to squeeze: the gradients are the unweighted ones times the weight."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh"),
                               L.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "drtp", "seed": 0})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(1, 4)).astype("float32"), np.array([2])
    plain = credit.compute_gradients(model, tf.constant(x), tf.constant(y)).gradients
    weighted = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                        tf.constant([0.25])).gradients
    assert float(tf.norm(plain[0])) > 0
    for g, p in zip(weighted, plain):
        np.testing.assert_allclose(g.numpy(), 0.25 * p.numpy(), rtol=1e-5, atol=1e-7)


def test_dgl_head_pools_to_at_most_two_per_spatial_axis():
    from credit.methods.local_losses import LocalHead
    head = LocalHead((5, 7, 3), units=4, kind="dgl", seed=0)
    pool = [layer for layer in head.predictor if layer.name == "aux_pool"][0]
    assert tuple(pool.pool_size) == (3, 4)  # ceil(5 / 2), ceil(7 / 2)
    out = head(tf.ones((2, 5, 7, 3)))[0]
    assert out.shape == (2, 4)
    assert head.predictor[-1].kernel.shape == (2 * 2 * 3, 4)  # a 2x2 map of 3 channels


def test_pool_size_doubles_axis_by_axis_until_max_features_and_terminates():
    import threading

    from credit.methods.local_losses import _pool_size
    cases = [((8, 8, 16), 64, (4, 4)), ((5, 3, 2), 4, (4, 3)), ((6, 6, 1), 100, (1, 1)),
             ((9, 4), 3, (9,))]  # 4 channels: never 3 features; the whole axis
    got = {}

    def run():
        for shape, limit, _ in cases:
            got[shape] = _pool_size(shape, limit)

    # A broken doubling loop never ends: fail in seconds instead of hanging the suite.
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "_pool_size did not return"
    for shape, _, expected in cases:
        assert got[shape] == expected, shape


def test_through_time_running_rms_of_the_targets_matches_numpy():
    """sigma = sqrt(power / (1 - 0.99^n)), power the running mean square over the rows
    that gave a target (an update with no row changes nothing); below 1 it is used as is."""
    model = credit.Sequential([
        keras.Input(batch_shape=(3, 4, 2)),
        L.SimpleRNN(2, stateful=True, return_sequences=True, name="rnn"), L.Dense(1)])
    method = credit.methods.SyntheticGradientsThroughTime(seed=0)
    model.compile("sgd", "mse", method=method)
    assert float(method.target_scale("rnn")) == 0.0  # no target yet
    rng = np.random.default_rng(0)
    power, n = 0.0, 0
    for rows in ([1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]):
        target = (0.2 * rng.normal(size=(3, 2))).astype("float32")
        rows = np.array(rows, "float32")
        got = float(method._update_moments("rnn", tf.constant(target), tf.constant(rows)))
        if rows.sum():
            square = (rows * (target.astype("float64") ** 2).mean(1)).sum() / rows.sum()
            power += 0.01 * (square - power)
            n += 1
        sigma = np.sqrt(power / (1 - 0.99**n))
        assert 0 < sigma < 1
        assert got == pytest.approx(sigma, rel=1e-5)
        assert float(method.target_scale("rnn")) == pytest.approx(sigma, rel=1e-5)


def test_through_time_loss_of_two_layers_is_the_mean_of_their_losses():
    """At the first step every synthesizer is zero, so each layer's target is its own:
    the logged loss of two layers is the mean of those of each alone."""
    def loss(at):
        keras.utils.set_random_seed(0)
        model = credit.Sequential([
            keras.Input(batch_shape=(3, 4, 2)),
            L.SimpleRNN(3, stateful=True, return_sequences=True, name="r1"),
            L.SimpleRNN(2, stateful=True, return_sequences=True, name="r2"), L.Dense(1)])
        model.compile("sgd", "mse", method=credit.methods.SyntheticGradientsThroughTime(
            seed=0, at=at, normalize=False))
        rng = np.random.default_rng(1)
        x = rng.normal(size=(3, 4, 2)).astype("float32")
        y = rng.normal(size=(3, 4, 1)).astype("float32")
        out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
        out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
        return float(out.logs["sg_loss"])

    one, two = loss(["r1"]), loss(["r2"])
    assert one > 0 and two > 0
    assert loss(None) == pytest.approx((one + two) / 2, rel=1e-5)


def test_kolen_pollack_skips_the_feedback_update_of_a_non_finite_loss_scaled_step():
    """Under a LossScaleOptimizer a step with non-finite gradients updates neither the
    weights nor B (as the optimizer skips it)."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh"),
                               L.Dense(3)])
    model.compile(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1, weight_decay=1e-2)), "mse",
                  method={"name": "kp", "seed": 0})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 4)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")
    matrices = model.method.feedback_matrices
    before = {k: v.numpy() for k, v in matrices.items()}
    x[0, 0] = np.inf
    credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    for k, v in matrices.items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    # A finite step does move B (the check above is not vacuous).
    credit.compute_gradients(model, tf.constant(np.nan_to_num(x, posinf=1.0)), tf.constant(y))
    assert any(np.abs(v.numpy() - before[k]).max() > 1e-7 for k, v in matrices.items())


def test_local_loss_log_is_the_mean_of_the_heads_losses():
    """Two heads: the logged local loss is the mean of their cross-entropies."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh", name="d1"),
                               L.Dense(6, activation="tanh", name="d2"),
                               L.Dense(3, activation="softmax", name="out")])
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local_losses", "seed": 3})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.integers(0, 3, size=8)
    w1, b1, w2, b2 = (v.astype("float64") for v in model.get_weights()[:4])
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    heads = model.method.heads
    assert sorted(heads) == ["d1", "d2"]

    def cross_entropy(h, name):
        a, c = (v.numpy().astype("float64") for v in heads[name].predictor[-1].weights)
        logits = h @ a + c
        logits = logits - logits.max(1, keepdims=True)
        log_q = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -log_q[np.arange(len(y)), y].mean()

    expected = (cross_entropy(h1, "d1") + cross_entropy(h2, "d2")) / 2
    out = credit.compute_gradients(model, tf.constant(x, "float32"), tf.constant(y))
    assert float(out.logs["local_loss"]) == pytest.approx(expected, rel=1e-5)


def test_drtp_squeezes_trailing_unit_axes_of_the_sample_weight_like_keras():
    """Weights of shape (batch, 1, 1) on a (batch, 3) output: DRTP's weighted target
    squeezes the trailing unit axes (the hidden layers' gradients are those of weights of
    shape (batch,)). The output layer is left out: Keras 3.15's sparse cross-entropy
    squeezes only one axis and broadcasts (batch, 1) against (batch,), a different loss."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh"),
                               L.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "drtp", "seed": 0})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)).astype("float32"), rng.integers(0, 3, size=6)
    w = rng.uniform(0, 2, size=6).astype("float32")
    flat_w = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                      tf.constant(w)).gradients
    deep_w = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                      tf.constant(w[:, None, None])).gradients
    for g, want in zip(deep_w[:2], flat_w[:2]):
        np.testing.assert_allclose(g.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["pepita", "forward_gradient"])
def test_methods_without_a_backward_pass_scale_their_update_by_the_loss_scale(name):
    """Under a LossScaleOptimizer the optimizer divides the gradients by the loss scale,
    so a method that forms the whole update must multiply it by that scale."""
    def gradients(optimizer):
        keras.utils.set_random_seed(0)
        model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="relu"),
                                   L.Dense(3, activation="softmax")])
        model.compile(optimizer, "sparse_categorical_crossentropy",
                      method={"name": name, "seed": 0})
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(6, 4)).astype("float32"), rng.integers(0, 3, size=6)
        return credit.compute_gradients(model, tf.constant(x), tf.constant(y)).gradients

    plain = gradients(keras.optimizers.SGD(0.1))
    scaled = gradients(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1),
                                                           initial_scale=8.0))
    assert float(tf.norm(plain[0])) > 0
    for g, p in zip(scaled, plain):
        np.testing.assert_allclose(g.numpy(), 8.0 * p.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pepita", "forward_gradient"])
def test_methods_without_a_backward_pass_refuse_the_signal_path(name):
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="relu"),
                               L.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", method={"name": name, "seed": 0})
    x, y = np.ones((2, 4), "float32"), np.array([0, 1])
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=model.method)
    with pytest.raises(RuntimeError, match="compute_gradients"):
        model.method.signals(trace)


def test_an_unknown_hyperparameter_in_a_config_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="sacle=2.*Did you mean 'scale'"):
        credit.get({"name": "feedback_alignment", "sacle": 2})


def test_similarity_features_of_a_single_position_map_are_its_channels():
    """A map with one spatial position (1x1) is flattened (a spread over one position
    would be 0); a map with several positions gives each channel's spread."""
    from credit.methods.local_losses import _similarity_features
    h = np.random.default_rng(0).normal(size=(2, 1, 1, 5)).astype("float32")
    np.testing.assert_array_equal(_similarity_features(tf.constant(h)).numpy(),
                                  h.reshape(2, 5))
    h = np.random.default_rng(1).normal(size=(2, 3, 2, 5)).astype("float32")
    np.testing.assert_allclose(_similarity_features(tf.constant(h)).numpy(),
                               h.reshape(2, 6, 5).std(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,word", [({"scale": "big"}, "scale"),
                                        ({"learning_rate": "0.1"}, "learning_rate"),
                                        ({"scale": None, "aux_weight": [1]}, "aux_weight")])
def test_a_real_hyperparameter_given_a_non_number_is_a_value_error_naming_it(kwargs, word):
    with pytest.raises(ValueError, match=word):
        credit.methods.SyntheticGradientsThroughTime(**kwargs)


def test_synthesizers_base_seed_follows_the_documented_derivation():
    """The step's stochastic draws start from seed_for(n_synthesizers, 0xD41)."""
    model = _mlp(hidden=6)
    method = credit.methods.SyntheticGradients(seed=3)
    model.compile(loss="sparse_categorical_crossentropy", method=method)
    expected = int(method.seed_for(len(method.synthesizers), 0xD41).integers(0, 2**31 - 1))
    assert int(method.state.seed_variable.numpy()) == expected
