"""The engine's numbers on the models where it used to go wrong in silence.

Activity regularisers at feedback points, points on one output of a multi-output model,
softmaxes applied as ops or followed by shape layers, per-output errors with loss
weights, layers called more than once, synthetic gradients at one output. Every number
is checked against Keras's own gradient (``tf.GradientTape`` on the plain model) or a
hand computation in numpy.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.graph import GraphError
from credit.model import record

L = keras.layers
ops = keras.ops
B = 16


def dense(t):
    return np.asarray(tf.convert_to_tensor(t))


def batch(classes=3, features=6, regression=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, features)).astype("float32")
    y = rng.integers(0, classes, B)
    yb = rng.normal(size=(B, regression)).astype("float32")
    return tf.constant(x), tf.constant(y), tf.constant(yb)


def keras_gradients(model, x, y):
    """Keras's own gradient of the compiled loss (regularisation included)."""
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
    return tape.gradient(loss, model.trainable_variables)


def by_path(model, gradients):
    return {v.path: g for v, g in zip(model.trainable_variables, gradients)}


def assert_all_close(got, expected, atol=1e-6):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(dense(a), dense(b), rtol=1e-5, atol=atol)


def onehot(y, classes=3):
    return np.eye(classes)[np.asarray(y)]


# -- 1. activity regularisers at feedback points -----------------------------------------


def regularised_chain(out_units=3, activation="softmax"):
    reg = keras.regularizers.L2(0.1)
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="tanh", activity_regularizer=reg, name="h1")(inputs)
    h = L.Dense(8, activation="tanh", name="h2")(h)
    h = L.Dense(8, activation="tanh", activity_regularizer=reg, name="h3")(h)
    out = L.Dense(out_units, activation=activation, activity_regularizer=reg, name="out")(h)
    return credit.Model(inputs, out)


def test_blockwise_backprop_equals_keras_with_activity_regularisers_at_points():
    x, y, _ = batch()
    model = regularised_chain()
    model.compile(loss="sparse_categorical_crossentropy")
    method = credit.get({"name": "backprop", "blockwise": True})
    got = credit.compute_gradients(model, x, y, method=method).gradients
    assert {"h1", "h3"} <= set(method.points)  # regularised layers carry points
    assert_all_close(got, keras_gradients(model, x, y))


def test_kickbacks_top_block_gets_keras_gradient_with_an_activity_regulariser():
    x, _, yb = batch()
    model = regularised_chain(out_units=1, activation=None)
    model.compile(loss="mse")
    y = yb[:, :1]
    method = credit.get("kickback")
    got = by_path(model, credit.compute_gradients(model, x, y, method=method).gradients)
    expected = by_path(model, keras_gradients(model, x, y))
    assert method.points[-1] == "h3"
    for path in ("h3/kernel", "h3/bias", "out/kernel", "out/bias"):
        np.testing.assert_allclose(dense(got[path]), dense(expected[path]), atol=1e-6)


# -- 2. a point on one output of a two-output model --------------------------------------


def two_outputs(loss_weights=None):
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="tanh", name="h")(inputs)
    oa = L.Dense(3, activation="softmax", name="oa")(h)
    ob = L.Dense(2, name="ob")(h)
    model = credit.Model(inputs, [oa, ob])
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=["sparse_categorical_crossentropy", "mse"], loss_weights=loss_weights)
    return model


def test_a_point_on_one_output_keeps_the_other_outputs_loss():
    x, y, yb = batch()
    model = two_outputs(loss_weights=[0.5, 2.0])
    method = credit.get({"name": "dfa", "at": ["h", "oa"]})
    out = credit.compute_gradients(model, x, (y, yb), method=method)
    got = by_path(model, out.gradients)
    expected = by_path(model, keras_gradients(model, x, (y, yb)))
    for path in ("ob/kernel", "ob/bias"):
        np.testing.assert_allclose(dense(got[path]), dense(expected[path]), atol=1e-6)
    # oa's weights learn from oa's point signal: e B_oa at its output.
    trace = record(model, x, (y, yb), method=method)
    signal = credit.signal.project(trace.flat_output_error(), method.feedback_matrices,
                                   trace)["oa"]
    h = dense(model.get_layer("h")(x))
    p = dense(model(x)[0])
    g = dense(signal) * p - p * np.sum(dense(signal) * p, axis=1, keepdims=True)
    np.testing.assert_allclose(dense(got["oa/kernel"]), h.T @ g, atol=1e-6)
    # The reported loss is the compiled loss, counted once.
    np.testing.assert_allclose(float(out.loss),
                               float(model.compute_loss(x=x, y=(y, yb), y_pred=model(x))),
                               rtol=1e-6)
    table = credit.summary(model, method).set_index("layer")
    assert table.loc["ob", "signal"] == "true gradient from the loss"


def test_fit_logs_each_outputs_loss_once_with_a_point_on_one_output():
    x, y, yb = batch()
    model = two_outputs()
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=["sparse_categorical_crossentropy", "mse"],
                  method={"name": "dfa", "at": ["h", "oa"]})
    history = model.fit(x, (y, yb), batch_size=B, epochs=1, verbose=0, shuffle=False)
    p, b = (dense(t) for t in model(x))
    ce = -np.mean(np.log(p[np.arange(B), dense(y)]))
    mse = np.mean((b - dense(yb)) ** 2)
    np.testing.assert_allclose(history.history["oa_loss"][0], ce, rtol=1e-5)
    np.testing.assert_allclose(history.history["ob_loss"][0], mse, rtol=1e-5)
    np.testing.assert_allclose(history.history["loss"][0], ce + mse, rtol=1e-5)
    trackers = {m.name: m for m in model.metrics[1].metrics} if hasattr(
        model.metrics[1], "metrics") else {}
    for tracker in trackers.values():
        if hasattr(tracker, "count"):
            assert int(tracker.count) == B


# -- per-output errors with loss weights ---------------------------------------------------


def test_output_errors_are_each_outputs_loss_gradient_times_its_weight():
    x, y, yb = batch()
    model = two_outputs(loss_weights=[0.3, 2.0])
    trace = record(model, x, (y, yb), method="dfa")
    e_a, e_b = (dense(e) for e in trace.output_errors())
    p, b = (dense(t) for t in model(x))
    np.testing.assert_allclose(e_a, 0.3 * (p - onehot(y)) / B, atol=1e-7)
    np.testing.assert_allclose(e_b, 2.0 * 2 * (b - dense(yb)) / (B * 2), atol=1e-7)
    np.testing.assert_allclose(dense(trace.flat_output_error()), np.concatenate(
        [e_a, e_b], axis=1), atol=0)


def test_output_errors_with_a_point_on_an_output_are_still_the_loss_gradients():
    x, y, yb = batch()
    model = two_outputs(loss_weights=[0.3, 2.0])
    trace = record(model, x, (y, yb), method={"name": "dfa", "at": ["h", "oa"]})
    e_a, e_b = (dense(e) for e in trace.output_errors())
    p, b = (dense(t) for t in model(x))
    np.testing.assert_allclose(e_a, 0.3 * (p - onehot(y)) / B, atol=1e-7)
    np.testing.assert_allclose(e_b, 2.0 * 2 * (b - dense(yb)) / (B * 2), atol=1e-7)


def test_an_output_without_a_loss_has_a_zero_error():
    x, y, _ = batch()
    model = two_outputs()
    model.compile(loss=["sparse_categorical_crossentropy", None])
    trace = record(model, x, y, method="dfa")
    e_a, e_b = (dense(e) for e in trace.output_errors())
    np.testing.assert_allclose(e_a, (dense(model(x)[0]) - onehot(y)) / B, atol=1e-7)
    assert np.all(e_b == 0)


# -- 3, 4. softmax as an op in a call; shape layers after the softmax ---------------------


class OpSoftmax(credit.Model):
    """Softmax applied with keras.ops in a subclassed call (optionally reshaped after)."""

    def __init__(self, two=True, reshape=False, scale=False, **kwargs):
        super().__init__(**kwargs)
        self.h = L.Dense(8, activation="tanh", name="h")
        self.a = L.Dense(3, name="a")
        self.b = L.Dense(2, name="b")
        self.two, self.reshape, self.scale = two, reshape, scale

    def call(self, x):
        h = self.h(x)
        logits = self.a(h)
        if self.scale:  # logits made by an op, not a layer
            logits = logits * 2.0
        p = ops.softmax(logits)
        if self.reshape:
            p = ops.reshape(p, (-1, 1, 3))
        return [p, self.b(h)] if self.two else p


@pytest.mark.parametrize("two", [True, False], ids=["two_outputs", "one_output"])
@pytest.mark.parametrize("variant", ["plain", "reshape", "scale"])
def test_the_error_of_an_ops_softmax_output_is_read_at_its_logits(two, variant):
    x, y, yb = batch()
    model = OpSoftmax(two=two, reshape=variant == "reshape", scale=variant == "scale")
    model(x[:2])
    y_a = y[:, None] if variant == "reshape" else y
    if two:
        model.compile(loss=["sparse_categorical_crossentropy", "mse"])
        trace = record(model, x, (y_a, yb), method="dfa")
        e = trace.output_errors()[0]
        p = dense(model(x)[0])
    else:
        model.compile(loss="sparse_categorical_crossentropy")
        trace = record(model, x, y_a, method="dfa")
        e = trace.output_error()
        p = dense(model(x))
    p = p.reshape(B, 3)
    np.testing.assert_allclose(dense(e), (p - onehot(y)) / B, atol=1e-7)


def test_an_ops_softmax_on_op_logits_followed_by_a_reshape_is_refused_by_name():
    x, y, _ = batch()
    model = OpSoftmax(two=False, reshape=True, scale=True)
    model(x[:2])
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(GraphError, match="cannot read the logits of model output"):
        record(model, x, y[:, None], method="dfa").output_error()


@pytest.mark.parametrize("after", ["reshape", "flatten", "permute", "identity"])
def test_the_error_is_read_at_the_logits_behind_shape_layers_after_the_softmax(after):
    x, y, _ = batch()
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="tanh")(inputs)
    p = L.Dense(3, activation="softmax", name="probs")(h)
    if after in ("reshape", "permute"):
        p = L.Reshape((3, 1))(p)
        p = L.Permute((2, 1))(p) if after == "permute" else L.Reshape((1, 3))(p)
    elif after == "flatten":
        p = L.Flatten()(L.Reshape((1, 3))(p))
    else:
        p = L.Identity()(p)
    model = credit.Model(inputs, p)
    model.compile(loss="sparse_categorical_crossentropy")
    y_a = y if after in ("flatten", "identity") else y[:, None]
    trace = record(model, x, y_a, method="dfa")
    probs = dense(model(x)).reshape(B, 3)
    np.testing.assert_allclose(dense(trace.output_error()), (probs - onehot(y)) / B,
                               atol=1e-6)


# -- 15. a synthetic-gradient boundary on one output of a two-output model ----------------


def test_output_gradient_of_each_output_is_its_own_loss_gradient():
    x, y, yb = batch()
    model = two_outputs(loss_weights=[0.3, 2.0])
    method = credit.get({"name": "sg", "at": ["h", "oa", "ob"]})
    trace = record(model, x, (y, yb), method=method)
    p, b = (dense(t) for t in model(x))
    np.testing.assert_allclose(dense(trace.output_gradient("ob")),
                               2.0 * 2 * (b - dense(yb)) / (B * 2), atol=1e-7)
    # Softmax + cross-entropy: dL/dp recovered from e as e / p.
    np.testing.assert_allclose(dense(trace.output_gradient("oa")),
                               0.3 * (p - onehot(y)) / B / p, rtol=1e-4, atol=1e-6)
    with pytest.raises(GraphError, match="one output"):
        trace.output_gradient()


def test_output_gradient_of_an_ops_softmax_output_is_recovered_from_its_error():
    x, y, _ = batch()
    model = OpSoftmax(two=False)
    model(x[:2])
    model.compile(loss="sparse_categorical_crossentropy")
    trace = record(model, x, y, method={"name": "sg", "at": [-1]})
    p = dense(model(x))
    np.testing.assert_allclose(dense(trace.output_gradient()), (p - onehot(y)) / B / p,
                               rtol=1e-4, atol=1e-6)


def test_synthetic_gradients_at_one_output_of_two_train_the_other_on_its_loss():
    x, y, yb = batch()
    model = two_outputs()
    method = credit.get({"name": "sg", "at": ["h", "oa"], "target": "true"})
    out = credit.compute_gradients(model, x, (y, yb), method=method)
    got = by_path(model, out.gradients)
    expected = by_path(model, keras_gradients(model, x, (y, yb)))
    for path in ("ob/kernel", "ob/bias"):
        np.testing.assert_allclose(dense(got[path]), dense(expected[path]), atol=1e-6)
    assert np.isfinite(float(out.logs["sg_loss"]))


# -- 5. layers called more than once: a point per call -----------------------------------


def siamese():
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    enc = L.Dense(8, activation="tanh", name="enc")
    h = L.Concatenate(name="cat")([enc(a), enc(b)])
    h = L.Dense(8, activation="tanh", name="mix")(h)
    return credit.Model([a, b], L.Dense(3, activation="softmax", name="out")(h))


def time_distributed(steps=4):
    inputs = keras.Input((steps, 5))
    h = L.TimeDistributed(L.Dense(6, activation="tanh", name="step"), name="td")(inputs)
    h = L.Flatten(name="flat")(h)
    return credit.Model(inputs, L.Dense(3, activation="softmax", name="out")(h))


def sequences():
    return tf.constant(np.random.default_rng(4).normal(size=(B, 4, 5)).astype("float32"))


def two_inputs():
    rng = np.random.default_rng(3)
    return [tf.constant(rng.normal(size=(B, 6)).astype("float32")) for _ in range(2)]


@pytest.mark.parametrize("kind", ["siamese", "time_distributed"])
def test_blockwise_backprop_with_a_point_per_call_equals_keras(kind):
    x, y, _ = batch()
    if kind == "siamese":
        model, x = siamese(), two_inputs()
    else:
        model = time_distributed()
        x = sequences()
    model.compile(loss="sparse_categorical_crossentropy")
    method = credit.get({"name": "backprop", "blockwise": True})
    got = credit.compute_gradients(model, x, y, method=method).gradients
    expected = (["enc:0", "enc:1", "mix"] if kind == "siamese"
                else ["step:0", "step:1", "step:2", "step:3"])
    assert list(method.points) == expected
    assert_all_close(got, keras_gradients(model, x, y))


def test_dfa_on_a_shared_encoder_has_a_matrix_per_call_and_sums_their_updates():
    _, y, _ = batch()
    xa, xb = two_inputs()
    model = siamese()
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    method = model.method
    assert list(method.points) == ["enc:0", "enc:1", "mix"]
    matrices = {p: dense(m) for p, m in method.feedback_matrices.items()}
    assert matrices["enc:0"].shape == (3, 8) and not np.allclose(matrices["enc:0"],
                                                                  matrices["enc:1"])
    got = by_path(model, credit.compute_gradients(model, [xa, xb], y).gradients)
    e = (dense(model([xa, xb])) - onehot(y)) / B
    w, bias = (dense(v) for v in model.get_layer("enc").weights)
    kernel = np.zeros_like(w)
    for x_k, p in ((dense(xa), "enc:0"), (dense(xb), "enc:1")):
        h = np.tanh(x_k @ w + bias)
        kernel += x_k.T @ ((e @ matrices[p]) * (1 - h ** 2))
    np.testing.assert_allclose(dense(got["enc/kernel"]), kernel, atol=1e-6)
    table = credit.summary(model).set_index("layer")
    assert table.loc["enc", "signal"].startswith("a point per call (enc:0, enc:1)")


def test_drtp_and_sg_put_a_point_on_every_step_of_a_time_distributed_layer():
    x, y, _ = batch()
    x = sequences()
    for name in ("drtp", "sg"):
        model = time_distributed()
        model.compile(loss="sparse_categorical_crossentropy", method=name)
        assert list(model.method.points) == ["step:0", "step:1", "step:2", "step:3"]
        out = credit.compute_gradients(model, x, y)
        step = next(g for path, g in by_path(model, out.gradients).items()
                    if path.endswith("step/kernel"))
        if name == "drtp":
            assert np.abs(dense(step)).max() > 0
            assert len(model.method.feedback_matrices) == 4
        table = credit.summary(model).set_index("layer")
        assert table.loc["step", "signal"].startswith("a point per call (step:0, ")


def test_a_point_inside_a_loop_is_refused_at_compile_naming_the_layer():
    inputs = keras.Input((None, 5))
    h = L.TimeDistributed(L.Dense(6, activation="tanh", name="step"), name="td")(inputs)
    h = L.GlobalAveragePooling1D()(h)
    model = credit.Model(inputs, L.Dense(3, activation="softmax", name="out")(h))
    with pytest.raises(GraphError, match="'step' runs inside a loop"):
        model.compile(loss="sparse_categorical_crossentropy", method="dfa")


def test_a_point_on_one_call_of_a_shared_layer_by_name():
    _, y, _ = batch()
    model = siamese()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "dfa", "at": ["enc:1"]})
    assert list(model.method.points) == ["enc:1"]
    table = credit.summary(model).set_index("layer")
    assert table.loc["enc", "signal"].startswith("point at enc:1")
    assert "at its other calls: true gradient from the loss" in table.loc["enc", "signal"]
    with pytest.raises(GraphError, match="'enc:0' ... 'enc:1'"):
        model.method.graph.node("enc")


# -- layers that share a name (inside custom layers, MultiHeadAttention) ------------------


class _Wrapped(L.Layer):
    """A custom layer holding a Dense named "inner": every instance repeats the name."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Dense(units, activation="tanh", name="inner")

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, x):
        return self.inner(x)


def _two_wrapped(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = L.Dense(5, activation="tanh", name="first")(inp)
    h = _Wrapped(4, name="block_a")(h)
    h = _Wrapped(4, name="block_b")(h)
    out = L.Dense(3, activation="softmax", name="out")(h)
    model = credit.wrap(keras.Model(inp, out))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def test_layers_sharing_a_name_each_get_their_own_feedback():
    """Two custom blocks each hold a Dense named "inner". FA with every B = c W scales the
    signal by c at each transported layer it crosses, so on this chain each layer's
    weight gradient is Keras's times c to the number of transports above it. Before the
    names were made unique, the second "inner" was crossed with its true W (one factor
    c missing below it), silently."""
    model = _two_wrapped()
    x, y, _ = batch()
    method = credit.get("fa")
    credit.compute_gradients(model, x, y, method=method)
    assert sorted(method.feedback_matrices) == ["block_a/inner", "block_b/inner", "out"]
    c = 0.5
    for name, b in method.feedback_matrices.items():
        b.assign(c * method.graph.layers[name].kernel)
    got = by_path(model, credit.compute_gradients(model, x, y, method=method).gradients)
    want = by_path(model, keras_gradients(model, x, y))
    above = {"out": 0, "block_b": 1, "block_a": 2, "first": 3}
    for path, g in want.items():
        k = above[path.split("/")[0]]
        np.testing.assert_allclose(dense(got[path]), c ** k * dense(g), rtol=1e-5, atol=1e-7,
                                   err_msg=path)


def test_points_on_layers_sharing_a_name_are_qualified_and_reached():
    model = _two_wrapped()
    x, y, _ = batch()
    method = credit.get({"name": "backprop", "blockwise": True})
    got = credit.compute_gradients(model, x, y, method=method).gradients
    assert "block_b/inner" in method.points and "block_a/inner" in method.points
    assert_all_close(got, keras_gradients(model, x, y))
    with pytest.raises(GraphError, match=r"2 layers named 'inner'.*block_a/inner, "
                                         r"block_b/inner"):
        credit.compute_gradients(model, x, y, method=credit.get({"name": "dfa",
                                                                "at": ["inner"]}))


def test_two_attention_layers_each_get_feedback_for_their_projections():
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 6))
    h = inp
    for _ in range(2):
        h = L.LayerNormalization()(h + L.MultiHeadAttention(2, 3)(h, h))
    out = L.Dense(3, activation="softmax")(L.Flatten()(h))
    model = credit.wrap(keras.Model(inp, out))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 4, 6)).astype("float32"))
    y = tf.constant([0, 1, 2, 0, 1])
    method = credit.get("fa")
    credit.compute_gradients(model, x, y, method=method)
    second = [n for n in method.feedback_matrices if n.startswith("multi_head_attention_1/")]
    assert sorted(n.split("/")[1] for n in second) == ["attention_output", "key", "query",
                                                       "value"]
    rules = credit.summary(model, method).set_index("layer")["rule"]
    assert all("B (fixed random" in rules[n] for n in second)
