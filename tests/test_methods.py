"""Sign symmetry (uSF), brSF, frSF, Kolen-Pollack and DRTP against hand computations.

Oracles: numpy on a 2-hidden-layer tanh MLP; on a small conv net, the engine's feedback
alignment given the matrix each method's formula prescribes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.graph import GraphError
from credit.methods import _sign

NEW = ["sign_symmetry", "batchwise_random_sign_feedback", "fixed_random_sign_feedback",
       "kolen_pollack", "direct_random_target_projection"]
TRANSPORTS = NEW[:4]


@pytest.fixture(autouse=True)
def _fresh_keras():
    """Overrides the conftest fixture for this module: a fixed seed, without
    keras.backend.clear_session() (~0.4 s a test; nothing here depends on layer names)."""
    keras.utils.set_random_seed(1234)
    yield


def mlp(hidden=(16, 8), outputs=3, out_activation="softmax"):
    layers = [keras.Input((12,))]
    layers += [keras.layers.Dense(u, activation="tanh") for u in hidden]
    layers += [keras.layers.Dense(outputs, activation=out_activation)]
    return credit.Sequential(layers)


def grads_of(model, x, y, method):
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y), method=method)
    return [g.numpy() for g in out.gradients]


def numpy_forward(model, x, y):
    w1, b1, w2, b2, w3, b3 = [w.astype("float64") for w in model.get_weights()]
    x = x.astype("float64")
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    a3 = h2 @ w3 + b3
    p = np.exp(a3 - a3.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    e = (p - np.eye(3)[y]) / len(x)
    return x, h1, h2, e, (w2, w3)


def numpy_update(x, h1, h2, e, g2, delta1):
    g1 = delta1 * (1 - h1**2)
    return [x.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ e, e.sum(0)]


def transport_oracle(model, x, y, B2, B3):
    """Gradients of a step whose backward pass crosses layers 2 and 3 with B2, B3."""
    x64, h1, h2, e, _ = numpy_forward(model, x, y)
    g2 = (e @ B3.T) * (1 - h2**2)
    return numpy_update(x64, h1, h2, e, g2, g2 @ B2.T)


def assert_all_close(got, expected, rtol=1e-4, atol=1e-7):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def conv_net():
    return credit.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(3, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(4, 3, activation="tanh"),
        keras.layers.SeparableConv2D(4, 3, depth_multiplier=2, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])


def residual_cnn():
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    r = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(h)
    h = keras.layers.Add()([h, r])
    h = keras.layers.Conv2D(5, 3, strides=2, activation="tanh")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(6, activation="tanh")(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    return credit.Model(inputs, outputs)


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    return x, rng.integers(0, 3, size=16)


# -- registry, configuration, bad input -------------------------------------------------


@pytest.mark.parametrize("alias,cls", [
    ("usf", credit.methods.SignSymmetry), ("sign-symmetry", credit.methods.SignSymmetry),
    ("brsf", credit.methods.BatchwiseRandomSignFeedback),
    ("frSF", credit.methods.FixedRandomSignFeedback),
    ("kp", credit.methods.KolenPollack), ("Kolen-Pollack", credit.methods.KolenPollack),
    ("drtp", credit.methods.DirectRandomTargetProjection),
])
def test_names_and_aliases(alias, cls):
    assert type(credit.get(alias)) is cls
    assert credit.get(alias).name in NEW


def test_config_round_trip_and_bad_options():
    configs = [
        {"name": "sign_symmetry", "seed": 1, "scale": 0.5, "layers": ["a", "b"]},
        {"name": "batchwise_random_sign_feedback", "seed": 2, "layers": None},
        {"name": "fixed_random_sign_feedback", "seed": 3, "layers": ["a"]},
        {"name": "kolen_pollack", "seed": 4, "scale": 0.1, "layers": None,
         "weight_decay": 0.01, "learning_rate": 0.2},
        {"name": "direct_random_target_projection", "seed": 5, "scale": 0.3, "at": [0, "x"],
         "through_time": "bptt"},
    ]
    for config in configs:
        method = credit.get(config)
        assert method.get_config() == config
        assert credit.get(method.get_config()).get_config() == config
    for name in NEW:
        assert credit.get(credit.get(name).get_config()).get_config() == \
            credit.get(name).get_config()
        with pytest.raises(ValueError, match=f"bad config for method '{name}'.*sacle"):
            credit.get({"name": name, "sacle": 1.0})
    with pytest.raises(ValueError, match="scale must be None .* positive number; got -1"):
        credit.get({"name": "usf", "scale": -1})
    with pytest.raises(ValueError, match="weight_decay must be None .*got -0.1"):
        credit.get({"name": "kp", "weight_decay": -0.1})
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        credit.get({"name": "kp", "learning_rate": 0})
    with pytest.raises(ValueError, match="layers must be None .*got 3"):
        credit.get({"name": "frsf", "layers": 3})


def test_transport_on_a_layer_without_one_and_drtp_on_two_outputs_say_why():
    model = credit.Sequential([keras.Input((5, 4, 1)), keras.layers.ConvLSTM1D(2, 2, name="rnn"),
                               keras.layers.Flatten(), keras.layers.Dense(2)])
    for name in TRANSPORTS:
        with pytest.raises(TypeError, match="layer 'rnn' \\(ConvLSTM1D\\) has no transport"):
            model.compile(loss="mse", method={"name": name, "layers": ["rnn"]})
        with pytest.raises(GraphError, match="'nope', which is not a layer"):
            model.compile(loss="mse", method={"name": name, "layers": ["nope"]})
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, activation="tanh")(inputs)
    two = credit.Model(inputs, [keras.layers.Dense(2)(h), keras.layers.Dense(1)(h)])
    with pytest.raises(GraphError, match="target of one output.*has 2 outputs"):
        two.compile(loss="mse", method="drtp")


# -- fans and scales --------------------------------------------------------------------


def test_torch_fans_of_every_layer_type():
    def built(layer, shape):
        layer.build(shape)
        return layer

    L = keras.layers
    cases = [
        (built(L.Dense(7), (None, 5)), 0, (5, 7)),
        (built(L.Conv2D(6, (3, 2)), (None, 9, 9, 4)), 0, (4 * 6, 6 * 6)),
        (built(L.Conv1D(6, 5), (None, 9, 4)), 0, (20, 30)),
        (built(L.Conv2DTranspose(6, 3), (None, 5, 5, 4)), 0, (6 * 9, 4 * 9)),
        (built(L.DepthwiseConv2D(3, depth_multiplier=2), (None, 9, 9, 4)), 0, (9, 8 * 9)),
        (built(L.SeparableConv2D(5, 3, depth_multiplier=2), (None, 9, 9, 4)), 0, (9, 72)),
        (built(L.SeparableConv2D(5, 3, depth_multiplier=2), (None, 9, 9, 4)), 1, (8, 5)),
        (built(L.EinsumDense("ab,bc->ac", output_shape=7), (None, 5)), 0, (5, 7)),
        (built(L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3)), (None, 4, 5)),
         0, (5, 6)),
    ]
    for layer, j, fans in cases:
        assert _sign.torch_fans(layer, j) == fans, type(layer).__name__
        assert _sign.glorot_std(layer, j) == pytest.approx(np.sqrt(2 / sum(fans)))
        assert _sign.glorot_limit(layer, j) == pytest.approx(np.sqrt(6 / sum(fans)))


# -- sign symmetry ----------------------------------------------------------------------


def test_sign_symmetry_matches_hand_computation(classification_data):
    x, y = classification_data
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy", method="usf")
    _, _, _, _, (w2, w3) = numpy_forward(model, x, y)
    names = [layer.name for layer in model.layers]
    # BioTorch's uSF scale: the Glorot std of the kernel, fans (16, 8) and (8, 3).
    assert model.method.scales == {names[1]: pytest.approx(np.sqrt(2 / 24)),
                                   names[2]: pytest.approx(np.sqrt(2 / 11))}
    expected = transport_oracle(model, x, y, np.sqrt(2 / 24) * np.sign(w2),
                                np.sqrt(2 / 11) * np.sign(w3))
    assert_all_close(grads_of(model, x, y, model.method), expected)
    # A given scale replaces it; the signs are those of the current weights.
    model.layers[1].kernel.assign(-model.layers[1].kernel)
    method = credit.get({"name": "usf", "scale": 0.5})
    expected = transport_oracle(model, x, y, 0.5 * np.sign(-w2), 0.5 * np.sign(w3))
    assert_all_close(grads_of(model, x, y, method), expected)


# -- brSF and frSF ----------------------------------------------------------------------


def test_frsf_matches_hand_computation_and_keeps_its_magnitudes(classification_data):
    x, y = classification_data
    model = mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  method={"name": "frsf", "seed": 4})
    names = [layer.name for layer in model.layers]
    m2, m3 = [model.method.magnitudes[n].numpy().astype("float64") for n in names[1:]]
    assert m2.shape == (16, 8) and m3.shape == (8, 3)
    for m, limit in ((m2, np.sqrt(6 / 24)), (m3, np.sqrt(6 / 11))):
        assert m.min() >= 0 and m.max() <= limit and m.max() > 0.7 * limit
    _, _, _, _, (w2, w3) = numpy_forward(model, x, y)
    expected = transport_oracle(model, x, y, m2 * np.sign(w2), m3 * np.sign(w3))
    assert_all_close(grads_of(model, x, y, model.method), expected)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_array_equal(model.method.magnitudes[names[1]].numpy(), m2)
    again = mlp()
    again.compile(loss="mse", method={"name": "frsf", "seed": 4})
    np.testing.assert_array_equal(again.method.magnitudes[again.layers[1].name], m2)


def test_brsf_matches_hand_computation_and_redraws_every_step(classification_data):
    x, y = classification_data
    model = mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  method={"name": "brsf", "seed": 6})
    method = model.method
    names = [layer.name for layer in model.layers]
    draws = []
    for step in range(3):
        assert int(method.step.numpy()) == step
        (m2,), (m3,) = [[m.numpy().astype("float64") for m in method.draw(n)]
                        for n in names[1:]]
        for m, limit in ((m2, np.sqrt(6 / 24)), (m3, np.sqrt(6 / 11))):
            assert m.min() >= 0 and m.max() <= limit and m.max() > 0.7 * limit
        _, _, _, _, (w2, w3) = numpy_forward(model, x, y)
        expected = transport_oracle(model, x, y, m2 * np.sign(w2), m3 * np.sign(w3))
        out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
        assert_all_close([g.numpy() for g in out.gradients], expected)
        model.optimizer.apply(out.gradients, model.trainable_variables)
        draws.append(m2)
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])
    # The same seed gives the same sequence; another seed another one.
    for seed, same in ((6, True), (7, False)):
        other = mlp()
        other.compile(loss="mse", method={"name": "brsf", "seed": seed})
        for step, m2 in enumerate(draws):
            got = other.method.draw(other.layers[1].name, step=step)[0].numpy()
            assert np.array_equal(got, m2.astype("float32")) == same


def test_brsf_is_the_same_eagerly_and_in_tf_function(classification_data):
    x, y = classification_data
    results = []
    for eager in (False, True):
        keras.utils.set_random_seed(7)
        model = mlp()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                      method={"name": "brsf", "seed": 3}, run_eagerly=eager)
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
        assert int(model.method.step.numpy()) == 4
        results.append(model.get_weights())
    assert_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)


# -- every transport on a conv net: feedback alignment given the method's matrix --------


def _formula_matrices(model, method):
    """The matrices each method's formula gives now, by layer name (tuples)."""
    out = {}
    for name in method.transported:
        kernels = [k.numpy() for k in credit.transports.kernels(model.get_layer(name))]
        if method.name == "sign_symmetry":
            layer = model.get_layer(name)
            mats = [_sign.glorot_std(layer, j) * np.sign(k) for j, k in enumerate(kernels)]
        elif method.name == "batchwise_random_sign_feedback":
            mats = [m.numpy() * np.sign(k) for m, k in zip(method.draw(name), kernels)]
        elif method.name == "fixed_random_sign_feedback":
            ms = method.magnitudes[name]
            ms = ms if isinstance(ms, tuple) else (ms,)
            mats = [m.numpy() * np.sign(k) for m, k in zip(ms, kernels)]
        else:
            bs = method.feedback_matrices[name]
            mats = [b.numpy() for b in (bs if isinstance(bs, tuple) else (bs,))]
        out[name] = tuple(mats)
    return out


@pytest.mark.parametrize("name", TRANSPORTS)
def test_transport_on_a_conv_net_is_feedback_alignment_with_the_formula(name, images):
    x, y = images
    model = conv_net()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  method={"name": name, "seed": 2})
    method = model.method
    names = [layer.name for layer in model.layers if layer.weights]
    assert list(method.transported) == names[1:]  # the first conv's input needs nothing
    fa = credit.get("fa")
    credit.model.bind(fa, model)
    for layer_name, mats in _formula_matrices(model, method).items():
        targets = fa.feedback_matrices[layer_name]
        for target, m in zip(targets if isinstance(targets, tuple) else (targets,), mats):
            target.assign(m)
    expected = grads_of(model, x, y, fa)
    got = grads_of(model, x, y, method)
    assert_all_close(got, expected, rtol=1e-4, atol=1e-6)
    backprop = grads_of(model, x, y, credit.get("bp"))
    assert not np.allclose(got[0], backprop[0], rtol=1e-3)


# -- Kolen-Pollack ----------------------------------------------------------------------


def test_kolen_pollack_matches_hand_computation(classification_data):
    x, y = classification_data
    model = mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  method={"name": "kp", "seed": 5})
    names = [layer.name for layer in model.layers]
    B2, B3 = [model.method.feedback_matrices[n].numpy().astype("float64") for n in names[1:]]
    # With the same seed, B starts as feedback alignment's.
    fa = mlp()
    fa.compile(loss="mse", method={"name": "fa", "seed": 5})
    np.testing.assert_array_equal(fa.method.feedback_matrices[fa.layers[1].name], B2)
    expected = transport_oracle(model, x, y, B2, B3)
    assert_all_close(grads_of(model, x, y, model.method), expected)


@pytest.mark.parametrize("optimizer", ["adam", "loss_scaled_sgd"])
def test_kolen_pollack_update_equals_the_weights_update(optimizer, classification_data):
    x, y = classification_data
    model = mlp()
    opt = keras.optimizers.Adam(0.01) if optimizer == "adam" else \
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", method="kp")
    method = model.method
    assert type(method.optimizer_instance) is type(getattr(opt, "inner_optimizer", opt))
    pairs = [(layer.kernel, method.feedback_matrices[layer.name])
             for layer in model.layers[1:]]
    for step in range(3):
        before = [(w.numpy(), b.numpy()) for w, b in pairs]
        out = credit.compute_gradients(model, tf.constant(x[16 * step:16 * step + 16]),
                                       tf.constant(y[16 * step:16 * step + 16]))
        if all(g is None for g in out.gradients):
            pytest.skip("the engine computes the loss scale off the tape (no gradients "
                        "under a LossScaleOptimizer); fixed on main's compute_gradients")
        model.optimizer.apply(out.gradients, model.trainable_variables)
        for (w, b), (w0, b0) in zip(pairs, before):
            dw, db = w.numpy() - w0, b.numpy() - b0
            assert np.abs(dw).max() > 1e-6
            np.testing.assert_allclose(db, dw, rtol=1e-5, atol=1e-7)
    if optimizer == "loss_scaled_sgd":
        assert float(opt.dynamic_scale.numpy()) > 1000  # the gradients were scaled


def test_kolen_pollack_feedback_converges_to_the_weights(regression_data):
    x, y = regression_data
    model = mlp(hidden=(16, 8), outputs=1, out_activation=None)
    model.compile(optimizer=keras.optimizers.SGD(0.1, weight_decay=0.3), loss="mse",
                  method={"name": "kp", "seed": 1})
    method = model.method
    assert method.optimizer_instance.weight_decay == pytest.approx(0.3)
    ratios = [method.misalignment()]
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: ratios.append(method.misalignment()))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).repeat()
    model.fit(data, epochs=5, steps_per_epoch=30, callbacks=[record], verbose=0)
    for name in [layer.name for layer in model.layers[1:]]:
        series = [r[name] for r in ratios]
        assert all(b < a for a, b in zip(series, series[1:])), series
        # ||B - W|| shrinks by (1 - lr * decay) = 0.97 per step: 0.97**150 ~ 0.01.
        assert series[-1] < 0.05 * series[0], series


def test_kolen_pollack_weight_decay_option(classification_data):
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1, weight_decay=0.2), loss="mse",
                  method="kp")
    assert model.method.optimizer_instance.weight_decay == pytest.approx(0.2)
    with pytest.warns(UserWarning, match="B converges to W only when the two are equal"):
        model.compile(optimizer="sgd", loss="mse", method={"name": "kp", "weight_decay": 0.1})
    assert model.method.optimizer_instance.weight_decay == pytest.approx(0.1)
    # Without a model optimizer (a custom loop): SGD with the method's learning rate.
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(3)])
    method = credit.get({"name": "kp", "learning_rate": 0.5, "weight_decay": 0.1})
    x, y = classification_data
    b = plain.layers[1].name
    before = None
    for _ in range(2):
        if method.feedback_matrices:  # empty until the first step binds it
            before = method.feedback_matrices[b].numpy()
        out = credit.compute_gradients(
            plain, tf.constant(x), tf.constant(y), method=method,
            loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(method.optimizer_instance, keras.optimizers.SGD)
    expected = before * (1 - 0.5 * 0.1) - 0.5 * out.gradients[2].numpy()
    np.testing.assert_allclose(method.feedback_matrices[b].numpy(), expected, rtol=1e-5,
                               atol=1e-7)


# -- DRTP -------------------------------------------------------------------------------


def test_drtp_matches_hand_computation_and_ignores_the_output(classification_data):
    x, y = classification_data
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "drtp", "seed": 5})
    names = [layer.name for layer in model.layers]
    B1, B2 = [model.method.feedback_matrices[n].numpy().astype("float64") for n in names[:2]]
    assert B1.shape == (3, 16) and B2.shape == (3, 8)
    for B, units in ((B1, 16), (B2, 8)):  # kaiming_uniform_: bound sqrt(6 / fan_in)
        assert np.abs(B).max() <= np.sqrt(6 / units)
        assert np.abs(B).max() > 0.7 * np.sqrt(6 / units)
    x64, h1, h2, e, _ = numpy_forward(model, x, y)
    onehot = np.eye(3)[y]
    g2 = (onehot @ B2) * (1 - h2**2)  # y B_p through the block's own tanh, no 1/batch
    expected = numpy_update(x64, h1, h2, e, g2, onehot @ B1)
    got = grads_of(model, x, y, model.method)
    assert_all_close(got, expected)
    # The hidden signals do not depend on the network's output.
    model.layers[-1].kernel.assign(3 * model.layers[-1].kernel + 1)
    changed = grads_of(model, x, y, model.method)
    assert_all_close(changed[:4], got[:4], rtol=1e-6, atol=1e-7)
    assert not np.allclose(changed[4], got[4])


def test_drtp_on_a_regression_target_uses_the_target(regression_data):
    x, y = regression_data
    y2 = np.concatenate([y, -2 * y], axis=1)
    model = mlp(outputs=2, out_activation=None)
    model.compile(loss="mse", method={"name": "drtp", "seed": 1, "scale": 0.2})
    names = [layer.name for layer in model.layers]
    B1, B2 = [model.method.feedback_matrices[n].numpy().astype("float64") for n in names[:2]]
    assert B1.shape == (2, 16) and np.abs(B1).max() <= 0.2
    w1, b1, w2, b2, w3, b3 = [w.astype("float64") for w in model.get_weights()]
    x64 = x.astype("float64")
    h1 = np.tanh(x64 @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    e = 2 * (h2 @ w3 + b3 - y2) / y2.size
    g2 = (y2 @ B2) * (1 - h2**2)
    expected = numpy_update(x64, h1, h2, e, g2, y2 @ B1)
    assert_all_close(grads_of(model, x, y2, model.method), expected)


# -- every new method on a residual CNN: it trains, and resumes exactly after loading ---


@pytest.mark.parametrize("name", NEW)
def test_residual_cnn_trains_every_kernel_and_resumes_exactly(name, images, tmp_path):
    x, y = images
    model = residual_cnn()
    model.compile(optimizer=keras.optimizers.Adam(0.01, weight_decay=0.01),
                  loss="sparse_categorical_crossentropy", method={"name": name, "seed": 8},
                  run_eagerly=True)  # tracing costs more than these few steps
    kernels = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]
    before = [layer.kernel.numpy() for layer in kernels]
    model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    for layer, k0 in zip(kernels, before):
        assert np.abs(layer.kernel.numpy() - k0).max() > 0, f"{layer.name} did not move"
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.method.get_config() == model.method.get_config()
    for a, b in zip(model.method.state.get_weights(), loaded.method.state.get_weights()):
        np.testing.assert_array_equal(a, b)
    if name == "kolen_pollack":
        for a, b in zip(model.method.optimizer_instance.variables,
                        loaded.method.optimizer_instance.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    loaded.run_eagerly = True
    for m in (model, loaded):
        m.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    assert_all_close(loaded.get_weights(), model.get_weights(), rtol=1e-5, atol=1e-6)
