"""The core: registry, the engine on MLPs, Keras integration, the fixed-feedback methods.

Numbers are checked against oracles: plain Keras, backprop, or a hand computation in
numpy. Contract tests run over every registered method.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.graph import GraphError

SCALAR_ONLY = {"kickback"}


def mlp(inputs=12, hidden=(16, 16), outputs=3, activation="tanh", out_activation="softmax",
        cls=None):
    cls = cls or credit.Sequential
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(u, activation=activation) for u in hidden]
    layers += [keras.layers.Dense(outputs, activation=out_activation)]
    return cls(layers)


def model_for(name):
    """A small model the method applies to, compiled, and its loss."""
    if name in SCALAR_ONLY:
        model = mlp(outputs=1, out_activation=None)
        loss = "mse"
    else:
        model = mlp()
        loss = "sparse_categorical_crossentropy"
    return model, loss


def data_for(name, classification_data, regression_data):
    return regression_data if name in SCALAR_ONLY else classification_data


def grads_of(model, x, y, method):
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y), method=method)
    return [g.numpy() for g in out.gradients]


def copy_weights(src, dst):
    dst.set_weights(src.get_weights())


# -- registry ---------------------------------------------------------------------------


def test_available_lists_canonical_names_sorted():
    names = credit.available()
    assert names == sorted(names)
    for name in ["backprop", "feedback_alignment", "direct_feedback_alignment", "kickback"]:
        assert name in names


@pytest.mark.parametrize("alias,cls", [
    ("bp", credit.methods.Backprop), ("BackProp", credit.methods.Backprop),
    (None, credit.methods.Backprop), ("fa", credit.methods.FeedbackAlignment),
    ("DFA", credit.methods.DirectFeedbackAlignment),
    ("direct-feedback-alignment", credit.methods.DirectFeedbackAlignment),
    ("kickback", credit.methods.Kickback),
])
def test_get_by_name_and_alias(alias, cls):
    assert type(credit.get(alias)) is cls


def test_get_accepts_class_instance_and_config():
    method = credit.methods.FeedbackAlignment(seed=7, scale=0.5)
    assert credit.get(method) is method
    assert type(credit.get(credit.methods.Kickback)) is credit.methods.Kickback
    again = credit.get(method.get_config())
    assert type(again) is credit.methods.FeedbackAlignment
    assert again.get_config() == {"name": "feedback_alignment", "seed": 7, "scale": 0.5,
                                  "layers": None}


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as err:
        credit.get("dfaa")
    message = str(err.value)
    assert "'dfaa'" in message
    assert "Did you mean 'dfa'?" in message
    for name in credit.available():
        assert repr(name) in message


def test_wrong_identifier_type_says_what_was_received():
    with pytest.raises(TypeError, match="got 3.5 of type float"):
        credit.get(3.5)
    with pytest.raises(ValueError, match="needs a 'name' key"):
        credit.get({"seed": 1})
    with pytest.raises(ValueError, match="bad config for method 'feedback_alignment'"):
        credit.get({"name": "fa", "sead": 1})


def test_backend_other_than_tensorflow_is_refused():
    env = dict(os.environ, KERAS_BACKEND="numpy")
    proc = subprocess.run([sys.executable, "-c", "import credit"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "KERAS_BACKEND=tensorflow" in proc.stderr


# -- oracles ----------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_backprop_through_credit_equals_plain_keras(optimizer, classification_data):
    x, y = classification_data
    plain = mlp(cls=keras.Sequential)
    ours = mlp()
    copy_weights(plain, ours)
    for model in (plain, ours):
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), ours.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(plain.get_weights()[0], mlp(cls=keras.Sequential).get_weights()[0])


def test_blockwise_backprop_equals_fast_path(classification_data):
    x, y = classification_data
    model = mlp(hidden=(16, 8, 8))
    model.compile(loss="sparse_categorical_crossentropy")
    fast = grads_of(model, x, y, credit.get("bp"))
    blockwise = grads_of(model, x, y, credit.get({"name": "bp", "blockwise": True}))
    for a, b in zip(fast, blockwise):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_trace_loss_gradient_is_the_true_gradient_at_every_block(classification_data):
    x, y = classification_data
    model = mlp(hidden=(16, 8, 8))
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    xt, yt = tf.constant(x), tf.constant(y)
    trace = credit.model.record(model, xt, yt, method=model.method)
    assert list(trace.points) == [layer.name for layer in model.layers[:3]]
    with tf.GradientTape(persistent=True) as tape:
        hs, h = [], xt
        for layer in model.layers:
            h = layer(h)
            hs.append(h)
        loss = keras.losses.SparseCategoricalCrossentropy()(yt, h)
    got = trace.loss_gradients()
    for k in range(3):
        np.testing.assert_allclose(got[model.layers[k].name], tape.gradient(loss, hs[k]),
                                   rtol=1e-5, atol=1e-8)


def test_feedback_alignment_with_transported_weights_is_backprop(classification_data):
    x, y = classification_data
    model = mlp(hidden=(16, 8, 8))
    model.compile(loss="sparse_categorical_crossentropy", method="fa")
    method = model.method
    assert sorted(method.feedback_matrices) == sorted(l.name for l in model.layers[1:])
    for name, matrix in method.feedback_matrices.items():
        matrix.assign(model.get_layer(name).kernel)
    expected = grads_of(model, x, y, credit.get("bp"))
    for a, b in zip(grads_of(model, x, y, method), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_feedback_alignment_with_transported_weights_is_backprop_on_conv():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 10, 10, 2)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model = credit.Sequential([
        keras.Input((10, 10, 2)),
        keras.layers.Conv2D(4, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(5, 3, strides=2, activation="tanh"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(loss="sparse_categorical_crossentropy", method="fa")
    method = model.method
    for name, matrix in method.feedback_matrices.items():
        matrix.assign(model.get_layer(name).kernel)
    expected = grads_of(model, x, y, credit.get("bp"))
    got = grads_of(model, x, y, method)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dfa_one_hidden_layer_with_output_weights_is_backprop(classification_data):
    x, y = classification_data
    model = mlp(hidden=(16,))
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    out_kernel = model.layers[-1].kernel
    model.method.feedback_matrices[model.layers[0].name].assign(tf.transpose(out_kernel))
    expected = grads_of(model, x, y, credit.get("bp"))
    for a, b in zip(grads_of(model, x, y, model.method), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dfa_with_logits_output_matches_softmax_output(classification_data):
    """e = dL/d(logits) whether the softmax is in the model or in the loss."""
    x, y = classification_data
    probs = mlp()
    logits = mlp(out_activation=None)
    copy_weights(probs, logits)
    probs.compile(loss="sparse_categorical_crossentropy", method={"name": "dfa", "seed": 3})
    logits.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   method={"name": "dfa", "seed": 3})
    for a, b in zip(grads_of(probs, x, y, probs.method), grads_of(logits, x, y, logits.method)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_kickback_one_hidden_layer_is_backprop(regression_data):
    x, y = regression_data
    model = mlp(hidden=(16,), outputs=1, out_activation=None)
    model.compile(loss="mse", method="kickback")
    expected = grads_of(model, x, y, credit.get("bp"))
    for a, b in zip(grads_of(model, x, y, model.method), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _numpy_forward(model, x, y):
    ws = model.get_weights()
    (w1, b1, w2, b2, w3, b3) = [w.astype("float64") for w in ws]
    x = x.astype("float64")
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    a3 = h2 @ w3 + b3
    p = np.exp(a3 - a3.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    e = (p - np.eye(3)[y]) / len(x)
    return x, h1, h2, e, (w1, w2, w3)


def _numpy_update(x, h1, h2, e, g2, delta1):
    g1 = delta1 * (1 - h1**2)
    return [x.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ e, e.sum(0)]


def test_feedback_alignment_matches_hand_computation(classification_data):
    x, y = classification_data
    model = mlp(hidden=(16, 8))
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fa", "seed": 5})
    B2, B3 = [model.method.feedback_matrices[layer.name].numpy().astype("float64")
              for layer in model.layers[1:]]
    x64, h1, h2, e, _ = _numpy_forward(model, x, y)
    delta2 = e @ B3.T
    g2 = delta2 * (1 - h2**2)
    expected = _numpy_update(x64, h1, h2, e, g2, g2 @ B2.T)
    for a, b in zip(grads_of(model, x, y, model.method), expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def _dfa_by_hand(x, y):
    """A tanh MLP 16-8 under DFA (seed 5) and its update computed in numpy.

    Returns the model, the update, the feedback matrices (B1, B2) and the numpy forward
    pass ``(x64, h1, h2, e, kernels)``."""
    model = mlp(hidden=(16, 8))
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "dfa", "seed": 5})
    B1, B2 = [model.method.feedback_matrices[layer.name].numpy().astype("float64")
              for layer in model.layers[:2]]
    forward = _numpy_forward(model, x, y)
    x64, h1, h2, e, _ = forward
    g2 = (e @ B2) * (1 - h2**2)
    return model, _numpy_update(x64, h1, h2, e, g2, e @ B1), (B1, B2), forward


def test_direct_feedback_alignment_matches_hand_computation(classification_data):
    x, y = classification_data
    model, expected, _, _ = _dfa_by_hand(x, y)
    for a, b in zip(grads_of(model, x, y, model.method), expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_kickback_matches_hand_computation(regression_data):
    x, y = regression_data
    model = mlp(hidden=(16, 8), outputs=1, out_activation=None)
    model.compile(loss="mse", method="kickback")
    w1, b1, w2, b2, w3, b3 = [w.astype("float64") for w in model.get_weights()]
    x64 = x.astype("float64")
    h1 = np.tanh(x64 @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    out = h2 @ w3 + b3
    e = 2 * (out - y) / len(x)  # mse: mean over batch and the one output
    g2 = (e @ w3.T) * (1 - h2**2)
    delta1 = e * ((1 - h2**2) @ w2.T)  # e times the all-ones VJP of block 2
    expected = _numpy_update(x64, h1, h2, e, g2, delta1)
    for a, b in zip(grads_of(model, x, y, model.method), expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


# -- feedback matrices ------------------------------------------------------------------


def test_feedback_matrices_exist_after_compile_with_documented_shapes_and_scale():
    model = mlp(inputs=12, hidden=(16, 8), outputs=3)
    model.compile(loss="sparse_categorical_crossentropy", method="fa")
    names = [layer.name for layer in model.layers]
    fa = model.method.feedback_matrices
    # The first layer's input gradient is never used: it gets no matrix.
    assert list(fa) == names[1:] == list(model.method.transported)
    assert [tuple(fa[n].shape) for n in names[1:]] == [(16, 8), (8, 3)]
    assert all(not b.trainable for b in fa.values())
    assert np.abs(fa[names[1]].numpy()).max() <= 1 / np.sqrt(8)
    assert np.abs(fa[names[1]].numpy()).max() > 0.5 / np.sqrt(8)
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    dfa = model.method.feedback_matrices
    assert list(dfa) == names[:2] == list(model.method.points)
    assert [tuple(dfa[n].shape) for n in names[:2]] == [(3, 16), (3, 8)]
    assert np.abs(dfa[names[0]].numpy()).max() <= 1 / np.sqrt(3)
    # The method's variables are not the model's: the model's optimizer never sees them.
    assert len(model.trainable_variables) == 6 and len(model.weights) == 6


def test_feedback_matrices_without_input_shape_appear_at_first_step(classification_data):
    x, y = classification_data
    model = credit.Sequential([keras.layers.Dense(8, activation="tanh"),
                               keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="dfa")
    assert model.method.feedback_matrices == {}  # empty until bound
    model.fit(x, y, epochs=1, verbose=0)
    assert [tuple(b.shape) for b in model.method.feedback_matrices.values()] == [(3, 8)]


# -- every method, one contract ---------------------------------------------------------


@pytest.mark.parametrize("name", credit.available())
def test_every_hidden_block_gets_a_nonzero_update(name, classification_data, regression_data):
    x, y = data_for(name, classification_data, regression_data)
    model, loss = model_for(name)
    model.compile(optimizer="sgd", loss=loss, method=name)
    before = [w.copy() for w in model.get_weights()]
    # Synthetic gradients start from a zero synthesizer: after warm-up they are non-zero.
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    for layer_index, layer in enumerate(model.layers):
        change = np.abs(layer.kernel.numpy() - before[2 * layer_index]).max()
        assert change > 0, f"{name}: layer {layer.name} was not updated"


@pytest.mark.parametrize("name", credit.available())
def test_config_round_trip(name):
    method = credit.get(name)
    config = method.get_config()
    assert config["name"] == method.name
    again = credit.get(config)
    assert type(again) is type(method)
    assert again.get_config() == config


@pytest.mark.parametrize("name", credit.available())
def test_second_step_does_not_retrace(name, classification_data, regression_data, monkeypatch):
    x, y = data_for(name, classification_data, regression_data)
    model, loss = model_for(name)
    model.compile(optimizer="sgd", loss=loss, method=name)
    traces = []
    original = credit.Model.train_step

    def counting(self, data):
        traces.append(1)  # Python runs only while tracing
        return original(self, data)

    monkeypatch.setattr(credit.Model, "train_step", counting)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert len(traces) == 1


@pytest.mark.parametrize("name", credit.available())
def test_run_eagerly_gives_the_same_weights(name, classification_data, regression_data):
    x, y = data_for(name, classification_data, regression_data)
    results = []
    for eager in (False, True):
        keras.utils.set_random_seed(7)
        model, loss = model_for(name)
        model.compile(optimizer="sgd", loss=loss, method={"name": name, "seed": 3},
                      run_eagerly=eager)
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", credit.available())
def test_save_load_and_resume_exactly(name, classification_data, regression_data, tmp_path):
    x, y = data_for(name, classification_data, regression_data)
    model, loss = model_for(name)
    model.compile(optimizer="adam", loss=loss, method={"name": name, "seed": 11})
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.method.get_config() == model.method.get_config()
    if model.method.state is not None:
        saved = model.method.state.get_weights()
        restored = loaded.method.state.get_weights()
        assert len(saved) == len(restored)
        if "feedback_alignment" in name:
            assert len(saved) > 0
        for a, b in zip(saved, restored):
            np.testing.assert_array_equal(a, b)
    for m in (model, loaded):
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        # (atol 1e-5: oneDNN's threaded reductions are not bit-reproducible run to
        # run on this CPU; Forward-Forward's resumed weights differed by 1.8e-6 in 2
        # of 10 runs, on main before and after the JAX work alike.)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", credit.available())
def test_same_seeds_give_identical_weights(name, classification_data, regression_data):
    x, y = data_for(name, classification_data, regression_data)
    results = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        model, loss = model_for(name)
        model.compile(optimizer="adam", loss=loss, method={"name": name, "seed": 9})
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_different_method_seeds_give_different_feedback():
    a, b = mlp(), mlp()
    a.compile(loss="mse", method={"name": "dfa", "seed": 1})
    b.compile(loss="mse", method={"name": "dfa", "seed": 2})
    first_a, first_b = a.layers[0].name, b.layers[0].name
    assert not np.allclose(a.method.feedback_matrices[first_a],
                           b.method.feedback_matrices[first_b])


# -- Keras integration ------------------------------------------------------------------


def test_fit_method_switch_persists_and_changes_the_update(classification_data):
    x, y = classification_data
    model = mlp()
    reference = mlp(cls=keras.Sequential)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="dfa")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert model.method.name == "direct_feedback_alignment"
    copy_weights(model, reference)
    reference.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, method="backprop")
    reference.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert model.method.name == "backprop"
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    model.fit(x, y, epochs=1, verbose=0)
    assert model.method.name == "backprop"


def test_keras_features_keep_working(classification_data):
    x, y = classification_data
    model = mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], method="dfa")
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(logs))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(data, epochs=2, validation_data=(x, y), callbacks=[callback],
                        verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(seen) == 2 and "val_accuracy" in seen[0]
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    assert model.predict(x, verbose=0).shape == (64, 3)


def test_functional_model_and_wrap_share_weights(classification_data):
    x, y = classification_data
    inputs = keras.Input((12,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    plain = keras.Model(inputs, outputs)
    functional = credit.Model(inputs, outputs)
    assert isinstance(functional, credit.Model)
    wrapped = credit.wrap(plain)
    assert isinstance(wrapped, credit.Model)
    wrapped.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="fa")
    wrapped.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(plain.get_weights(), wrapped.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(wrapped.method.graph.blocks) == 2
    assert list(wrapped.method.transported) == [plain.layers[-1].name]
    seq = credit.wrap(mlp(cls=keras.Sequential))
    assert isinstance(seq, credit.Sequential)
    with pytest.raises(TypeError, match="subclass credit.Model"):
        credit.wrap(SubclassedChain())


class SubclassedChain(keras.Model):
    def __init__(self, residual=False):
        super().__init__()
        self.residual = residual
        self.d1 = keras.layers.Dense(8, activation="tanh")
        self.d2 = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        h = self.d1(x)
        h2 = self.d2(h)
        return self.out(h + h2 if self.residual else h2)


class CreditSubclassed(credit.Model, SubclassedChain):
    pass


def test_subclassed_credit_model_chain_and_residual(classification_data):
    x, y = classification_data
    chain = CreditSubclassed()
    chain.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="fa")
    chain.fit(x, y, epochs=1, verbose=0)
    assert [b.layers for b in chain.method.graph.blocks] == [
        (chain.d1,), (chain.d2,), (chain.out,)]
    assert chain.method.graph.is_chain()
    # A residual addition written in Python between the layers is seen too.
    residual = CreditSubclassed(residual=True)
    residual.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="dfa")
    before = residual.get_weights() if residual.built else None
    residual.fit(x, y, epochs=1, verbose=0)
    assert not residual.method.graph.is_chain()
    assert list(residual.method.points) == ["d1", "d2"] or len(residual.method.points) == 2
    if before is not None:
        assert all(not np.array_equal(a, b) for a, b in zip(before, residual.get_weights()))


def test_custom_training_loop_matches_fit(classification_data):
    x, y = classification_data
    fitted = mlp()
    looped = mlp()
    copy_weights(fitted, looped)
    fitted.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                   method={"name": "fa", "seed": 2})
    fitted.fit(x, y, epochs=1, batch_size=64, verbose=0)
    method = credit.get({"name": "fa", "seed": 2})
    optimizer = keras.optimizers.SGD()
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(xb, yb):
        out = credit.compute_gradients(looped, xb, yb, method=method, loss_fn=loss_fn)
        optimizer.apply(out.gradients, looped.trainable_variables)
        return out.loss

    loss = step(tf.constant(x), tf.constant(y))
    assert np.isfinite(loss.numpy())
    for a, b in zip(fitted.get_weights(), looped.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- error paths ------------------------------------------------------------------------


def test_kickback_on_multi_output_model_says_why():
    model = mlp(outputs=3)
    with pytest.raises(ValueError, match="kickback needs a model with one scalar output"):
        model.compile(loss="sparse_categorical_crossentropy", method="kickback")


def residual_model():
    inputs = keras.Input((12,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    h2 = keras.layers.Dense(8, activation="tanh")(h)
    added = keras.layers.Add(name="skip")([h, h2])
    outputs = keras.layers.Dense(3, activation="softmax")(added)
    return credit.Model(inputs, outputs)


def test_bad_point_name_or_kickback_on_a_residual_net_says_why():
    model = residual_model()
    with pytest.raises(GraphError, match="no layer named 'nope'.*Its layers:.*skip"):
        model.compile(loss="sparse_categorical_crossentropy",
                      method={"name": "dfa", "at": ["nope"]})
    scalar = residual_model()
    with pytest.raises(ValueError, match="kickback needs a model with one scalar output"):
        scalar.compile(loss="mse", method="kickback")
    inputs = keras.Input((12,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    h2 = keras.layers.Dense(8, activation="tanh")(h)
    out = keras.layers.Dense(1)(keras.layers.Add(name="skip")([h, h2]))
    with pytest.raises(GraphError, match="kickback is defined for chains of blocks"):
        credit.Model(inputs, out).compile(loss="mse", method="kickback")


def test_backprop_trains_any_model(classification_data):
    x, y = classification_data
    model = residual_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=5, verbose=0).history["loss"]
    assert history[-1] < history[0]


def test_transport_on_a_layer_type_without_one_is_refused():
    model = credit.Sequential([keras.Input((5, 4, 1)), keras.layers.ConvLSTM1D(2, 2, name="rnn"),
                               keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="layer 'rnn' \\(ConvLSTM1D\\) has no transport"):
        model.compile(loss="mse", method={"name": "fa", "layers": ["rnn"]})
    model.compile(loss="mse", method="fa")
    table = credit.summary(model).set_index("layer")
    assert table.loc["rnn", "transport"].startswith("BPTT inside")


def test_method_instance_cannot_serve_two_models():
    method = credit.get("dfa")
    mlp().compile(loss="mse", method=method)
    with pytest.raises(ValueError, match="already"):
        mlp().compile(loss="mse", method=method)


def _cosine(a, b):
    a, b = np.concatenate([np.ravel(t) for t in a]), np.concatenate([np.ravel(t) for t in b])
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def test_alignment_equals_a_hand_computation(classification_data):
    """DFA's cosines and norm ratios, and FA's angles between W and B, from numpy."""
    x, y = classification_data
    model, dfa, (B1, B2), (x64, h1, h2, e, (w1, w2, w3)) = _dfa_by_hand(x, y)
    true_delta2 = e @ w3.T
    true_g2 = true_delta2 * (1 - h2**2)
    true_delta1 = true_g2 @ w2.T
    bp = _numpy_update(x64, h1, h2, e, true_g2, true_delta1)
    table = credit.alignment(model, x, y)
    for k in range(3):
        got, want = dfa[2 * k:2 * k + 2], bp[2 * k:2 * k + 2]
        assert table["update_cosine"][k] == pytest.approx(_cosine(got, want), abs=1e-5)
        ratio = np.linalg.norm(np.concatenate([np.ravel(t) for t in got])) / np.linalg.norm(
            np.concatenate([np.ravel(t) for t in want]))
        assert table["norm_ratio"][k] == pytest.approx(ratio, rel=1e-4)
    assert table["signal_cosine"][0] == pytest.approx(_cosine([e @ B1], [true_delta1]), abs=1e-5)
    assert table["signal_cosine"][1] == pytest.approx(_cosine([e @ B2], [true_delta2]), abs=1e-5)

    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fa", "seed": 5})
    table = credit.alignment(model, x, y)
    for k, layer in enumerate(model.layers):
        if layer.name not in model.method.feedback_matrices:
            assert np.isnan(table["feedback_angle"][k])  # the first layer: not crossed
            continue
        w = layer.kernel.numpy()
        b = model.method.feedback_matrices[layer.name].numpy()
        angle = np.degrees(np.arccos(np.clip(_cosine([w], [b]), -1, 1)))
        assert table["feedback_angle"][k] == pytest.approx(angle, abs=1e-3)


def test_diagnostics_alignment_per_block(classification_data):
    x, y = classification_data
    model = mlp(hidden=(16, 8))
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    table = credit.alignment(model, x, y)
    assert list(table["block"]) == [0, 1, 2]
    assert list(table["layer"]) == [layer.name for layer in model.layers]
    assert table["update_cosine"].iloc[-1] == pytest.approx(1.0)
    assert (table["update_cosine"].abs() <= 1 + 1e-9).all()
    bp = credit.alignment(model, x, y, method="backprop")
    np.testing.assert_allclose(bp["update_cosine"], 1.0, rtol=1e-5)
    assert bp["signal_cosine"].isna().all()  # backprop has no points
    blockwise = credit.alignment(model, x, y, method={"name": "bp", "blockwise": True})
    np.testing.assert_allclose(blockwise["update_cosine"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(blockwise["signal_cosine"][:2], 1.0, rtol=1e-5)
