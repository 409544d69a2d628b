"""Local losses: signals, weight gradients and head updates against numpy; similarity
matching against a numerical derivative; the heads on convolutional blocks; digits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.methods.local_losses import _pool_size, similarity_matrix


def mlp(activation="tanh"):
    return credit.Sequential([keras.Input((12,)),
                              keras.layers.Dense(16, activation=activation, name="d1"),
                              keras.layers.Dense(16, activation=activation, name="d2"),
                              keras.layers.Dense(3, activation="softmax", name="out")])


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, rng.integers(0, 3, size=n)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def forward(model, x):
    w = [v.numpy().astype("float64") for v in model.trainable_variables]
    h1 = np.tanh(x @ w[0] + w[1])
    h2 = np.tanh(h1 @ w[2] + w[3])
    return w, h1, h2, softmax(h2 @ w[4] + w[5])


def head_weights(method, point):
    dense = method.heads[point].predictor[-1]
    return dense.kernel.numpy().astype("float64"), dense.bias.numpy().astype("float64")


def numpy_sim_loss(h, onehot):
    def sim(a):
        c = a - a.mean(axis=1, keepdims=True)
        n = c / (1e-8 + np.sqrt((c ** 2).sum(axis=1, keepdims=True)))
        return np.clip(n @ n.T, -1, 1)

    return ((sim(h) - sim(onehot)) ** 2).mean()


def numerical_gradient(f, h, eps=1e-6):
    g = np.zeros_like(h)
    for idx in np.ndindex(*h.shape):
        up, down = h.copy(), h.copy()
        up[idx] += eps
        down[idx] -= eps
        g[idx] = (f(up) - f(down)) / (2 * eps)
    return g


def test_registered_with_aliases():
    assert "local_losses" in credit.available()
    for alias in ("dgl", "local", "local-losses"):
        assert type(credit.get(alias)) is credit.methods.LocalLosses


def test_pred_signals_weight_gradients_and_head_updates_match_numpy():
    x, y = batch()
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local_losses", "seed": 3, "optimizer": "sgd",
                          "learning_rate": 0.1})
    method = model.method
    assert sorted(method.heads) == ["d1", "d2"]
    w, h1, h2, p = forward(model, x)
    onehot = np.eye(3)[y]
    heads = {p_: head_weights(method, p_) for p_ in ("d1", "d2")}

    # The signal: d CE(softmax(h A + c), y) / dh = ((q - onehot) / batch) A^T.
    def local(h, name):
        a, c = heads[name]
        q = softmax(h @ a + c)
        return (q - onehot) / len(x), q

    e1, _ = local(h1, "d1")
    e2, _ = local(h2, "d2")
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=method)
    signals = method.signals(trace)
    np.testing.assert_allclose(signals["d1"], e1 @ heads["d1"][0].T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(signals["d2"], e2 @ heads["d2"][0].T, rtol=1e-5, atol=1e-7)
    method._pending = None

    # The weights: each block from its own local signal only, the output on the loss.
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    g1 = (e1 @ heads["d1"][0].T) * (1 - h1 ** 2)
    g2 = (e2 @ heads["d2"][0].T) * (1 - h2 ** 2)
    e = (p - onehot) / len(x)
    expected = [x.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ e, e.sum(0)]
    for got, want in zip(out.gradients, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)

    # The heads: one SGD step on their own local losses.
    for name, h, err in (("d1", h1, e1), ("d2", h2, e2)):
        a, c = heads[name]
        new_a, new_c = head_weights(method, name)
        np.testing.assert_allclose(new_a, a - 0.1 * h.T @ err, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_c, c - 0.1 * err.sum(0), rtol=1e-5, atol=1e-6)
    assert float(method.state.step.numpy()) == 1


@pytest.mark.parametrize("loss", ["sim", "predsim"])
def test_similarity_signals_match_a_numerical_derivative(loss):
    x, y = batch(n=6)
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local_losses", "seed": 3, "loss": loss})
    method = model.method
    _, h1, h2, _ = forward(model, x)
    onehot = np.eye(3)[y]
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=method)
    signals = method.signals(trace)
    for name, h in (("d1", h1), ("d2", h2)):
        def f(hh, name=name):
            value = method.beta * numpy_sim_loss(hh, onehot) if loss == "predsim" else \
                numpy_sim_loss(hh, onehot)
            if loss == "predsim":
                a, c = head_weights(method, name)
                q = softmax(hh @ a + c)
                value += (1 - method.beta) * -np.log(q[np.arange(len(y)), y]).mean()
            return value

        np.testing.assert_allclose(signals[name], numerical_gradient(f, h),
                                   rtol=1e-4, atol=1e-6)


def test_similarity_matrix_is_the_adjusted_cosine():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 7))
    c = a - a.mean(axis=1, keepdims=True)
    n = c / np.linalg.norm(c, axis=1, keepdims=True)
    np.testing.assert_allclose(similarity_matrix(tf.constant(a, "float32")), n @ n.T,
                               atol=1e-6)


def test_the_output_block_trains_on_the_model_loss_and_nothing_crosses_a_point():
    x, y = batch()
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "local", "seed": 1})
    backprop = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                        method="backprop")
    local = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    for a, b in zip(backprop.gradients[4:], local.gradients[4:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(backprop.gradients[0], local.gradients[0])


def test_pool_size_follows_the_authors_doubling_rule():
    # 32 channels on 16x16: 8192 > 4096 -> pool 2 on the first axis gives 4096.
    assert _pool_size((16, 16, 32), 4096) == (2, 1)
    assert _pool_size((16, 16, 64), 4096) == (2, 2)
    assert _pool_size((4, 4, 8), 4096) == (1, 1)
    assert _pool_size((8, 8, 8), 2) == (8, 8)


@pytest.mark.parametrize("head", ["linear", "mlp", "dgl"])
def test_heads_on_a_convolutional_block(head):
    model = credit.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(3, activation="softmax", name="out")])
    model.compile("adam", "sparse_categorical_crossentropy",
                  method={"name": "local", "head": head, "loss": "predsim",
                          "hidden_units": [8], "max_features": 64, "seed": 0})
    heads = model.method.heads
    assert list(heads) == ["c1", "pool"]
    kinds = [type(l).__name__ for l in heads["c1"].predictor]
    expected = {"linear": ["AveragePooling2D", "Flatten", "Dense"],
                "mlp": ["AveragePooling2D", "Flatten", "Dense", "Dense"],
                "dgl": ["Conv2D", "AveragePooling2D", "Flatten", "Dense"]}[head]
    assert kinds == expected
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 3, size=8)
    trace = credit.model.record(model, tf.constant(x), tf.constant(y), method=model.method)
    signal = model.method.signals(trace)["c1"]
    assert signal.shape == (8, 8, 8, 4) and float(tf.reduce_max(tf.abs(signal))) > 0


def test_bad_arguments_name_the_argument_and_the_value():
    with pytest.raises(ValueError, match="loss must be one of 'pred', 'sim', 'predsim'; "
                                         "got 'xent'"):
        credit.get({"name": "local", "loss": "xent"})
    with pytest.raises(ValueError, match="head must be one of"):
        credit.get({"name": "local", "head": "conv"})
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\].*got 2"):
        credit.get({"name": "local", "beta": 2})
    model = mlp()
    with pytest.raises(ValueError, match="names the model output 'out'"):
        model.compile(loss="mse", method={"name": "local", "at": ["out"]})


def test_reaches_85_percent_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.25,
                                                        random_state=0)
    model = credit.Sequential([keras.Input((64,)),
                               keras.layers.Dense(128, activation="relu"),
                               keras.layers.Dense(128, activation="relu"),
                               keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], method={"name": "local_losses", "seed": 0})
    model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy >= 0.85, accuracy


def test_pred_without_a_compiled_loss_says_how_to_fix_it():
    x, y = batch()
    model = mlp()
    method = credit.get({"name": "local", "seed": 0})
    with pytest.raises(ValueError, match="compiled without one.*loss='sim'"):
        credit.compute_gradients(model, tf.constant(x), tf.constant(y), method=method,
                                 loss_fn=keras.losses.SparseCategoricalCrossentropy())
    sim = credit.get({"name": "local", "loss": "sim", "seed": 0})
    out = credit.compute_gradients(mlp(), tf.constant(x), tf.constant(y), method=sim,
                                   loss_fn=keras.losses.SparseCategoricalCrossentropy())
    assert all(g is not None for g in out.gradients)


@pytest.mark.parametrize("where", ["between_layers", "in_call"])
def test_heads_predict_through_an_ops_softmax_as_through_a_softmax_layer(where):
    """The head's prediction goes through the model's final softmax wherever it sits.
    With ``ops.softmax`` after the last Dense (between layers or at the end of a
    layer's call), the signals equal those of the same model with
    ``Dense(activation="softmax")``; before, the head's "probabilities" were the raw
    decoder output (row sums 0.76 to 3.42)."""

    class SoftmaxDense(keras.layers.Dense):
        def call(self, x):
            return keras.ops.softmax(super().call(x))

    def build(kind):
        keras.utils.set_random_seed(3)
        inp = keras.Input((6,))
        h = keras.layers.Dense(8, activation="tanh", name="hidden")(inp)
        if kind == "layer":
            out = keras.layers.Dense(4, activation="softmax", name="out")(h)
        elif kind == "between_layers":
            out = keras.ops.softmax(keras.layers.Dense(4, name="out")(h))
        else:
            out = SoftmaxDense(4, name="out")(h)
        model = credit.wrap(keras.Model(inp, out))
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 4, 8)
    results = []
    for kind in ("layer", where):
        model = build(kind)
        method = credit.get({"name": "local_losses", "seed": 0})
        results.append(credit.compute_gradients(model, x, y, method=method).gradients)
        probabilities = keras.ops.convert_to_numpy(
            method.prediction(tf.constant(rng.normal(size=(3, 4)).astype("float32"))))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
