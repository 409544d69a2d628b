"""Tests written to kill mutants of local losses, PEPITA, DRTP and Kolen-Pollack that the
rest of the suite let live (tools/mutation.py, issue 14).

Each checks a number against a reference (numpy or a hand computation), an error raised
for bad input, or a documented behaviour (seeds, defaults, the scaling under
``tf.distribute``). Hyperparameters that other work may retune (head sizes) are passed
explicitly.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.methods import _synthesizers as sg
from credit.methods.local_losses import (LocalHead, _pool_size, _similarity_features,
                                         similarity_matrix)

L = keras.layers


@pytest.fixture(autouse=True)
def _fresh_keras():
    """A fixed seed without clear_session (nothing here depends on layer names)."""
    keras.utils.set_random_seed(1234)
    yield


def dense_chain(sizes=(6, 5, 4, 3), activation="tanh", output="softmax"):
    layers = [keras.Input((sizes[0],))]
    layers += [L.Dense(u, activation=activation, name=f"d{i}")
               for i, u in enumerate(sizes[1:-1], 1)]
    layers += [L.Dense(sizes[-1], activation=output, name="out")]
    return credit.Sequential(layers)


def data(n=8, inputs=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, inputs)).astype("float32"),
            rng.integers(0, classes, size=n))


# -- PEPITA ------------------------------------------------------------------------------


def test_pepita_scale_sets_the_feedback_bound_and_a_non_positive_one_is_refused():
    model = dense_chain()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "pepita", "seed": 2, "scale": 0.3})
    f = model.method.feedback_matrices["input"].numpy()
    assert f.shape == (3, 6)
    assert np.abs(f).max() <= 0.3 and np.abs(f).max() > 0.2
    want = model.method.seed_for(0).uniform(-0.3, 0.3, size=(3, 6)).astype("float32")
    np.testing.assert_array_equal(f, want)
    for bad in (0, -0.1, "big"):
        with pytest.raises(ValueError, match="scale must be None .* or a positive number"):
            credit.methods.Pepita(scale=bad)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def pepita_numpy(model, x, y, f, loss_weight=1.0, replicas=1):
    """PEPITA's update of one replica holding ``x``, as the docstring writes it, for a
    tanh chain with a softmax output; the compiled loss is ``loss_weight`` times the
    batch-mean cross-entropy (under ``tf.distribute`` Keras divides it by the replicas)."""
    w = [v.numpy().astype("float64") for v in model.trainable_variables]

    def forward(inp):
        h1 = np.tanh(inp @ w[0] + w[1])
        h2 = np.tanh(h1 @ w[2] + w[3])
        return h1, h2, softmax(h2 @ w[4] + w[5])

    n = len(x) * replicas  # the global batch
    h1, h2, p = forward(x.astype("float64"))
    e = loss_weight * (p - np.eye(p.shape[1])[y]) / len(x)  # dL/dlogits
    xm = x + (e * n) @ f  # the per-example error modulates the input
    m1, m2, _ = forward(xm)
    return [xm.T @ (h1 - m1) / n, (h1 - m1).sum(0) / n, m1.T @ (h2 - m2) / n,
            (h2 - m2).sum(0) / n, m2.T @ e, e.sum(0)]


def test_pepita_replica_scaling_uses_the_global_batch(monkeypatch):
    """Under ``tf.distribute`` with two replicas, Keras halves each replica's loss and
    PEPITA divides by the global batch (twice the replica's): the replica's update is
    then half of one device's on the same examples, and the modulated input the same
    (the error per example). Simulated in one process: ``replicas()`` says 2 and the
    compiled loss is halved as Keras halves it."""
    x, y = data()
    model = dense_chain()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "pepita", "seed": 4, "scale": 0.5})
    f = model.method.feedback_matrices["input"].numpy().astype("float64")
    one = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    for got, want in zip(one.gradients, pepita_numpy(model, x, y, f)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)

    monkeypatch.setattr(sg, "replicas", lambda: 2)
    model.compile(loss=lambda t, p: 0.5 * keras.losses.sparse_categorical_crossentropy(t, p),
                  method=model.method)
    two = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    want = pepita_numpy(model, x, y, f, loss_weight=0.5, replicas=2)
    for got, half, w in zip(two.gradients, one.gradients, want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.numpy(), half.numpy() / 2, rtol=1e-4, atol=1e-6)


# -- local losses: the heads -------------------------------------------------------------


def test_local_head_defaults_to_a_seeded_linear_prediction():
    """``LocalHead(shape, units)`` predicts (``predict=True``) with one Dense layer whose
    Glorot weights are seeded from ``default_rng(seed)``'s first draw in [0, 2**31 - 1)."""
    head = LocalHead((5,), 3, seed=7)
    rng = np.random.default_rng(7)
    init = keras.initializers.GlorotUniform(seed=int(rng.integers(0, 2**31 - 1)))
    [flatten, decoder] = head.predictor
    np.testing.assert_array_equal(decoder.kernel.numpy(), init((5, 3)).numpy())
    h = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    prediction, features = head(tf.constant(h))
    assert features is None
    np.testing.assert_allclose(prediction.numpy(),
                               h @ decoder.kernel.numpy() + decoder.bias.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_similarity_features_of_a_map_with_four_channels_are_spatial_stds():
    """More than 3 channels and more than one position: the standard deviation over the
    positions per channel; 3 channels: the flattened map."""
    h = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
    got = _similarity_features(tf.constant(h)).numpy()
    np.testing.assert_allclose(got, h.reshape(2, 9, 4).std(axis=1), rtol=1e-5, atol=1e-6)
    three = _similarity_features(tf.constant(h[..., :3])).numpy()
    np.testing.assert_array_equal(three, h[..., :3].reshape(2, -1))
    # A 1D map (batch, steps, channels) too.
    line = h.reshape(2, 9, 4)
    np.testing.assert_allclose(_similarity_features(tf.constant(line)).numpy(),
                               line.std(axis=1), rtol=1e-5, atol=1e-6)


def test_similarity_matrix_adds_1e_8_to_the_norm():
    """As documented, ``1e-8`` is added to each centred row's norm: a row of norm
    ``1e-8`` is scaled to norm 1/2 (self-similarity 1/4), a row of norm 1 keeps 1."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 5))
    rows -= rows.mean(axis=1, keepdims=True)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows[1] *= 1e-8
    got = similarity_matrix(tf.constant(rows, "float32")).numpy()
    scale = np.array([1 / (1 + 1e-8), 0.5, 1 / (1 + 1e-8)])
    want = (rows / np.linalg.norm(rows, axis=1, keepdims=True) * scale[:, None])
    np.testing.assert_allclose(got, want @ want.T, rtol=1e-4, atol=1e-6)
    assert got[1, 1] == pytest.approx(0.25, rel=1e-4)


@pytest.mark.parametrize("shape", [(6, 2), (4, 4, 2), (4, 4, 4, 2)])
def test_dgl_and_similarity_heads_use_the_convolution_and_pool_of_the_maps_rank(shape):
    """1D, 2D and 3D maps get Conv1D/2D/3D (3 wide on every axis, ``h``'s channels in
    and out) and AveragePooling1D/2D/3D layers."""
    rank = len(shape) - 1
    head = LocalHead(shape, 3, kind="dgl", similarity=True, seed=0)
    kinds = [type(layer).__name__ for layer in head.predictor + head.similar]
    assert kinds == [f"Conv{rank}D", f"AveragePooling{rank}D", "Flatten", "Dense",
                     f"Conv{rank}D"]
    for conv in (head.predictor[0], head.similar[0]):
        assert tuple(conv.kernel.shape) == (3,) * rank + (2, 2)
    assert head.similar[0].weights == [head.similar[0].kernel]  # no bias, as documented
    h = np.random.default_rng(0).normal(size=(2,) + shape).astype("float32")
    prediction, features = head(tf.constant(h))
    assert prediction.shape == (2, 3)
    assert features.shape == (2, int(np.prod(shape)))  # 2 channels: the flattened map


def test_pool_size_doubles_the_axes_in_order():
    """Axis 0, then 1, then 2: a 4x4x4 map brought to 16 values pools (2, 2, 1)."""
    assert _pool_size((4, 4, 4, 1), 16) == (2, 2, 1)
    assert _pool_size((4, 4, 4, 1), 8) == (2, 2, 2)


def test_local_head_computes_in_float32_under_mixed_precision():
    """A head built under a mixed global policy computes in float32, as synthesizers do
    (its sublayers too): its prediction matches numpy to float32 precision, where
    float16 would be off by about 1e-3."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = LocalHead((4, 4, 8), 3, kind="mlp", hidden_units=(16,), max_features=32,
                         similarity=True, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert [layer.compute_dtype for layer in head.predictor + head.similar] == \
        ["float32"] * 5
    h = np.random.default_rng(0).normal(size=(2, 4, 4, 8))
    prediction, features = head(tf.constant(h, "float32"))
    assert prediction.dtype == tf.float32 and features.dtype == tf.float32
    _, _, hidden, decoder = head.predictor  # pool (2, 2), flatten, two Dense
    pooled = h.reshape(2, 2, 2, 2, 2, 8).mean(axis=(2, 4)).reshape(2, -1)
    w1, b1, w2, b2 = (v.numpy().astype("float64") for v in hidden.weights + decoder.weights)
    want = np.maximum(pooled @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(prediction.numpy(), want, rtol=1e-5, atol=1e-5)


def test_max_features_below_one_is_refused():
    for bad in (0, -4, 2.5):
        with pytest.raises(ValueError, match=f"max_features must be a positive integer; "
                                             f"got {bad!r}"):
            credit.get({"name": "local_losses", "max_features": bad})
    assert credit.get({"name": "local_losses", "max_features": 1}).max_features == 1


def test_local_loss_log_leaves_out_the_models_regularisation():
    """The compiled loss adds the model's regularisation terms; the heads' local loss
    (and its log) is the cross-entropy of their predictions only."""
    model = credit.Sequential([
        keras.Input((6,)),
        L.Dense(5, activation="tanh", name="d1", kernel_regularizer=keras.regularizers.L2(0.5)),
        L.Dense(3, activation="softmax", name="out")])
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local_losses", "seed": 3, "head": "linear"})
    x, y = data()
    w, c = (v.astype("float64") for v in model.get_weights()[:2])
    h = np.tanh(x @ w + c)
    a, b = (v.numpy().astype("float64") for v in model.method.heads["d1"].predictor[-1].weights)
    q = softmax(h @ a + b)
    expected = -np.log(q[np.arange(len(y)), y]).mean()
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    assert float(out.logs["local_loss"]) == pytest.approx(expected, rel=1e-5)


def test_local_losses_optimizer_instance_is_the_heads_optimizer():
    """``optimizer_instance`` is the Keras optimizer of the given class and learning rate
    that steps the heads (None before binding)."""
    method = credit.get({"name": "local_losses", "seed": 0, "head": "linear",
                         "optimizer": "sgd", "learning_rate": 0.25})
    assert method.optimizer_instance is None
    model = dense_chain()
    model.compile(loss="sparse_categorical_crossentropy", method=method)
    optimizer = method.optimizer_instance
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert float(optimizer.learning_rate) == pytest.approx(0.25)
    x, y = data()
    credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    assert int(optimizer.iterations) == 1


def test_local_pred_loss_through_a_softmax_layer_matches_numpy():
    """A model that ends in a separate Softmax layer: the head's prediction goes
    through that softmax (on its axis) before the cross-entropy, so the signal is
    ``((q - onehot) / batch) A^T``."""
    model = credit.Sequential([keras.Input((6,)), L.Dense(5, activation="tanh", name="d1"),
                               L.Dense(3, name="logits"), L.Softmax(name="p")])
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local_losses", "seed": 1, "head": "linear"})
    x, y = data()
    w, c = (v.astype("float64") for v in model.get_weights()[:2])
    h = np.tanh(x @ w + c)
    a, b = (v.numpy().astype("float64") for v in model.method.heads["d1"].predictor[-1].weights)
    q = softmax(h @ a + b)
    want = ((q - np.eye(3)[y]) / len(x)) @ a.T
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=model.method)
    got = model.method.signals(trace)["d1"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_local_pred_loss_on_a_sequence_output_reshapes_the_prediction():
    """An output of shape (T, units): the head predicts T * units values, reshaped to
    the output's shape before the model's loss (here the mean squared error)."""
    model = credit.Sequential([keras.Input((2, 4)), L.Dense(5, activation="tanh", name="d1"),
                               L.Dense(3, name="out")])
    model.compile(loss="mse", method={"name": "local_losses", "seed": 1, "head": "linear"})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 4)).astype("float32")
    y = rng.normal(size=(4, 2, 3)).astype("float32")
    w, c = (v.astype("float64") for v in model.get_weights()[:2])
    h = np.tanh(x @ w + c).reshape(4, 10)
    a, b = (v.numpy().astype("float64") for v in model.method.heads["d1"].predictor[-1].weights)
    assert a.shape == (10, 6)
    err = 2 * (h @ a + b - y.reshape(4, 6)) / y.size
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=model.method)
    got = model.method.signals(trace)["d1"].numpy()
    np.testing.assert_allclose(got, (err @ a.T).reshape(4, 2, 5), rtol=1e-5, atol=1e-7)


def test_local_similarity_loss_is_divided_by_the_replicas(monkeypatch):
    """Under ``tf.distribute`` the similarity loss is divided by the number of replicas
    (as Keras divides the compiled loss): simulated with ``replicas()`` saying 2, the
    signal is half of one device's."""
    model = dense_chain()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local_losses", "seed": 1, "loss": "sim"})
    x, y = data()
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=model.method)
    one = model.method.signals(trace)
    monkeypatch.setattr(sg, "replicas", lambda: 2)
    two = model.method.signals(trace)
    for point in ("d1", "d2"):
        assert np.abs(one[point].numpy()).max() > 1e-4
        np.testing.assert_allclose(two[point].numpy(), one[point].numpy() / 2,
                                   rtol=1e-5, atol=1e-8)


# -- Kolen-Pollack -----------------------------------------------------------------------


def test_kolen_pollack_under_a_loss_scale_in_a_compiled_step_gets_the_weights_update():
    """A compiled step (graph mode) under a LossScaleOptimizer: B receives W's update,
    unscaled by the loss scale, and its own decay: ``B' - B = W' - W - lr wd (B - W)``."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh", name="d1"),
                               L.Dense(3, name="out")])
    lr, wd = 0.1, 1e-2
    model.compile(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(lr, weight_decay=wd)), "mse",
        method={"name": "kp", "seed": 0})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    b = model.method.feedback_matrices["out"]
    w = model.get_layer("out").kernel
    b0, w0 = b.numpy().astype("float64"), w.numpy().astype("float64")
    model.train_on_batch(x, y)
    dw = w.numpy() - w0
    assert np.abs(dw).max() > 1e-3  # the step did move W
    np.testing.assert_allclose(b.numpy() - b0, dw - lr * wd * (b0 - w0), atol=1e-6)


def test_kolen_pollack_follows_the_model_optimizers_learning_rate_and_recompilation():
    """B takes W's gradient step, with its decay, at the model optimizer's current
    learning rate (changed after compile here, as a callback would); compiling again
    with another optimizer gives B a copy of that one."""
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh", name="d1"),
                               L.Dense(3, name="out")])
    method = credit.get({"name": "kp", "seed": 0})
    model.compile(keras.optimizers.SGD(0.1, weight_decay=1e-2), "mse", method=method)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    b = method.feedback_matrices["out"]
    index = [id(v) for v in model.trainable_variables].index(id(model.get_layer("out").kernel))
    for lr in (0.1, 0.02):
        model.optimizer.learning_rate = lr
        b0 = b.numpy().astype("float64")
        out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
        g = out.gradients[index].numpy()
        np.testing.assert_allclose(b.numpy(), b0 - lr * g - lr * 1e-2 * b0, atol=1e-6)
    model.compile(keras.optimizers.Adam(0.01, weight_decay=1e-2), "mse", method=method)
    credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    assert isinstance(method.optimizer_instance, keras.optimizers.Adam)
    assert int(method.optimizer_instance.iterations) == 1


def test_kolen_pollack_misalignment_is_the_relative_frobenius_distance():
    """``||B - W|| / ||W||`` per transported kernel; a pair for a separable convolution."""
    model = credit.Sequential([keras.Input((6, 2)), L.Conv1D(3, 3, name="c"),
                               L.SeparableConv1D(4, 2, depth_multiplier=2, name="s"),
                               L.Flatten(), L.Dense(3, name="out")])
    model.compile(keras.optimizers.SGD(0.1, weight_decay=1e-2), "mse",
                  method={"name": "kp", "seed": 0})
    method = model.method
    got = method.misalignment()
    assert sorted(got) == ["out", "s"]

    def ratio(b, w):
        b, w = b.numpy().astype("float64"), w.numpy().astype("float64")
        return np.linalg.norm(b - w) / np.linalg.norm(w)

    sep = model.get_layer("s")
    assert isinstance(got["s"], tuple) and len(got["s"]) == 2
    np.testing.assert_allclose(got["s"], [
        ratio(method.feedback_matrices["s"][0], sep.depthwise_kernel),
        ratio(method.feedback_matrices["s"][1], sep.pointwise_kernel)], rtol=1e-6)
    assert got["out"] == pytest.approx(
        ratio(method.feedback_matrices["out"], model.get_layer("out").kernel), rel=1e-6)


# -- DRTP --------------------------------------------------------------------------------


def test_drtp_squeezes_a_trailing_unit_axis_of_per_step_weights_like_keras():
    """A sequence output (T, units): DRTP reads weights per example and step of shape
    (batch, T, 1, 1) as those of shape (batch, T), squeezing the trailing unit axes as
    Keras's losses do, and they do weigh the signal. Only the hidden layer's gradients
    are compared: Keras 3.15's mean squared error squeezes one axis only and broadcasts
    the rest, a different loss for the output layer."""
    model = credit.Sequential([keras.Input((4, 2)), L.Dense(5, activation="tanh", name="d1"),
                               L.Dense(3, name="out")])
    model.compile(loss="mse", method={"name": "drtp", "seed": 1})
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(6, 4, 2)), "float32")
    y = tf.constant(rng.normal(size=(6, 4, 3)), "float32")
    w = rng.uniform(0.5, 2.0, size=(6, 4)).astype("float32")
    flat = credit.compute_gradients(model, x, y, sample_weight=tf.constant(w))
    deep = credit.compute_gradients(model, x, y, sample_weight=tf.constant(w[..., None, None]))
    plain = credit.compute_gradients(model, x, y)
    for a, b in zip(flat.gradients[:2], deep.gradients[:2]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(flat.gradients[0].numpy() - plain.gradients[0].numpy()).max() > 1e-4
