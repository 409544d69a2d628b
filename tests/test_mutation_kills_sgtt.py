"""Tests written to kill mutants of synthetic gradients through time and of the
synthesizers' shared mechanics that the rest of the suite let live (tools/mutation.py).

Each checks numbers against a numpy hand computation (a linear RNN, a linear
synthesizer, one SGD step), an error that names what is wrong, or a state restored.
Every synthesizer size is given explicitly, so the tests do not depend on the defaults.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
import linear_rnn_reference
from credit.methods import _synthesizers as sg
from credit.methods import SyntheticGradientsThroughTime

L = keras.layers
B, T, D, U, O = 3, 2, 2, 2, 1   # rows, window, input features, state units, outputs


@pytest.fixture(autouse=True)
def _fresh_keras():
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    yield


def linear_rnn(batch=B, units=U):
    """h_t = x_t K + h_{t-1} R + b (no activation), y_t = h_t V + c."""
    return credit.Sequential([
        keras.Input(batch_shape=(batch, T, D)),
        L.SimpleRNN(units, stateful=True, return_sequences=True, activation="linear",
                    name="rnn"),
        L.Dense(O, name="out")])


def data(n, seed=3, batch=B):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, batch, T, D))
    y = rng.normal(size=(n, batch, T, O))
    return x, y


class Reference:
    """The linear RNN and a linear synthesizer ``M(s[, y]) = [s, y] A + a`` in numpy."""

    def __init__(self, model, scale, lr):
        self.w = linear_rnn_reference.read_weights(model)
        self.K, self.R, self.b, self.V, self.c = (self.w[k] for k in "KRbVc")
        self.scale, self.lr = scale, lr

    def forward(self, xw, h):
        return linear_rnn_reference.forward(self.w, xw, h)

    def backward(self, xw, yw, h0, hs, injected, at_first_step=0.0):
        """Gradients of the window's MSE plus <h_T, injected>: (dL/dh_0, weight grads)."""
        return linear_rnn_reference.backward(self.w, xw, yw, h0, hs, injected, at_first_step)

    def step(self, A, a, xw, yw, h0, rows, continues, condition=None, next_condition=None,
             sigma=1.0):
        """One training step: (weight grads, sg_loss, new A, new a, target)."""
        batch = len(xw)
        hs = self.forward(xw, h0)
        final = hs[-1] if next_condition is None else np.concatenate(
            [hs[-1], next_condition], -1)
        injected = self.scale * sigma * (final @ A + a) / batch * continues[:, None]
        g0, grads = self.backward(xw, yw, h0, hs, injected)
        target = batch * g0 / sigma
        inputs = h0 if condition is None else np.concatenate([h0, condition], -1)
        prediction = inputs @ A + a
        per_row = ((prediction - target) ** 2).mean(1)
        count = max(rows.sum(), 1.0)
        loss = (rows * per_row).sum() / count
        dp = 2 * rows[:, None] * (prediction - target) / (U * count)
        return grads, loss, A - self.lr * inputs.T @ dp, a - self.lr * dp.sum(0), target


def check_gradients(out, expected):
    for name, gradient in zip("KRbVc", out.gradients, strict=True):
        np.testing.assert_allclose(gradient.numpy(), expected[name], rtol=1e-4, atol=1e-6)


# -- cDNI through time by hand ----------------------------------------------------------


def test_cdni_through_time_step_with_one_target_row_equals_numpy():
    """cDNI through time: the synthesizer at the window's end sees the next window's
    targets (from set_lookahead), the one at its start this window's targets; rows with
    ``continues=0`` get nothing injected; rows whose state was reset give no target, so
    with one row left the loss is that row's alone (not halved)."""
    lr, scale = 0.1, 0.5
    model = linear_rnn()
    method = SyntheticGradientsThroughTime(
        seed=0, conditioned=True, scale=scale, optimizer="sgd", learning_rate=lr,
        normalize=False, hidden_units=[3])
    model.compile("sgd", "mse", method=method)
    ref = Reference(model, scale, lr)
    x, y = data(3)

    def step(x, y):
        return credit.compute_gradients(model, x, y)
    flat = y.reshape(3, B, T * O)

    method.set_lookahead(next_targets=y[1].astype("float32"))
    out1 = step(tf.constant(x[0], "float32"), tf.constant(y[0], "float32"))
    assert float(out1.logs["sg_loss"]) == 0.0            # no previous window yet
    h_end = ref.forward(x[0], np.zeros((B, U)))[-1]

    synthesizer = method.synthesizers["rnn"]
    rng = np.random.default_rng(7)
    A, a = rng.normal(size=(U + T * O, U)), rng.normal(size=U)
    synthesizer.set_weights([A.astype("float32"), a.astype("float32")])

    # Rows 0 and 1 begin new sequences: their states are reset, only row 2 is carried.
    layer = model.get_layer("rnn")
    state = layer.states[0].numpy()
    state[:2] = 0
    layer.states[0].assign(state)
    h0 = h_end.copy()
    h0[:2] = 0
    continues = np.array([1.0, 0.0, 1.0])
    method.set_lookahead(continues=continues, next_targets=y[2].astype("float32"))
    grads, loss, A2, a2, _ = ref.step(A, a, x[1], y[1], h0, np.array([0.0, 0.0, 1.0]),
                                      continues, condition=flat[1],
                                      next_condition=flat[2])
    out2 = step(tf.constant(x[1], "float32"), tf.constant(y[1], "float32"))
    np.testing.assert_allclose(float(out2.logs["sg_loss"]), loss, rtol=1e-4)
    check_gradients(out2, grads)
    new_A, new_a = synthesizer.get_weights()
    np.testing.assert_allclose(new_A, A2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_a, a2, rtol=1e-4, atol=1e-6)
    assert int(method.step.numpy()) == 2


# -- the synthesizer layer ----------------------------------------------------------------


def test_synthesizer_computes_in_float32_under_a_mixed_precision_policy():
    """The synthesizer is float32 whatever the global policy: under mixed_float16 its
    output equals numpy's float64 product to float32 precision (in float16 it would be
    off by ~1e-3)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        synthesizer = sg.Synthesizer((3,), kind="linear", condition_units=2, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    A, a = rng.normal(size=(5, 3)), rng.normal(size=3)
    synthesizer.set_weights([A.astype("float32"), a.astype("float32")])
    h, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = synthesizer(tf.constant(h, "float32"), tf.constant(y, "float32"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), np.concatenate([h, y], -1) @ A + a,
                               rtol=1e-5, atol=1e-5)


# -- arguments: bad values get errors naming them, good ones are normalised --------------


@pytest.mark.parametrize("kwargs, words", [
    ({"seed": "7"}, ["seed", "'7'"]),
    ({"seed": 1.5}, ["seed", "1.5"]),
    ({"conditioned": 1}, ["conditioned", "1"]),
    ({"synthesizer": 3}, ["synthesizer", "3"]),
    ({"warmup_steps": -1}, ["warmup_steps", "-1"]),
    ({"warmup_steps": True}, ["warmup_steps", "True"]),
    ({"warmup_steps": 2.0}, ["warmup_steps", "2.0"]),
    ({"hidden_units": []}, ["hidden_units", "[]"]),
    ({"hidden_units": [4, 0]}, ["hidden_units", "[4, 0]"]),
    ({"hidden_units": [True]}, ["hidden_units", "[True]"]),
    ({"hidden_units": "8"}, ["hidden_units", "'8'"]),
    ({"activation": "no_such_activation"}, ["activation", "'no_such_activation'"]),
    ({"optimizer": 3}, ["optimizer", "3", "int"]),
    ({"optimizer": "no_such_optimizer"}, ["optimizer", "'no_such_optimizer'"]),
    ({"learning_rate": -0.1}, ["learning_rate", "-0.1"]),
    ({"learning_rate": "0.1"}, ["learning_rate", "'0.1'"]),
    ({"learning_rate": True}, ["learning_rate", "True"]),
    ({"scale": True}, ["scale", "True"]),
    ({"scale": -0.5}, ["scale", "-0.5"]),
    ({"aux_weight": "1"}, ["aux_weight", "'1'"]),
    ({"aux_weight": -0.5}, ["aux_weight", "-0.5"]),
    ({"at": []}, ["at", "[]"]),
    ({"at": [1.5]}, ["at", "1.5"]),
    ({"at": {"rnn": 1}}, ["at", "{'rnn': 1}"]),
    ({"at": ["rnn", 0]}, ["at=['rnn', 0]", "names"]),
])
def test_bad_through_time_arguments_are_errors_naming_them(kwargs, words):
    """Each bad value is refused when the method is made, not at compile or in a step."""
    with pytest.raises(ValueError) as info:
        SyntheticGradientsThroughTime(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_good_through_time_arguments_are_normalised():
    method = SyntheticGradientsThroughTime(
        seed=np.int64(3), synthesizer=" MLP ", conditioned=np.True_, at="rnn",
        warmup_steps=np.int32(2), hidden_units=8, activation="tanh", optimizer="SGD",
        learning_rate=1, scale=1, aux_weight=0, normalize=np.False_)
    assert method.synthesizer == "mlp" and method.conditioned is True
    assert method.at == ("rnn",) and method.warmup_steps == 2
    assert method.hidden_units == (8,) and method.normalize is False
    assert method.learning_rate == 1.0 and isinstance(method.learning_rate, float)
    assert method.scale == 1.0 and method.aux_weight == 0.0
    assert method.log_names == ("sg_loss",)
    assert SyntheticGradientsThroughTime(aux_weight=0.5).log_names == ("sg_loss", "aux_loss")
    assert SyntheticGradientsThroughTime(at=None).at is None
    assert SyntheticGradientsThroughTime(learning_rate=None).learning_rate is None
    assert SyntheticGradientsThroughTime(hidden_units=(np.int64(4), 5)).hidden_units == (4, 5)
    assert SyntheticGradientsThroughTime(at=("a", "b")).at == ("a", "b")


def test_an_optimizer_instance_or_config_is_stored_as_a_config_with_its_learning_rate():
    """The synthesizers get a fresh optimizer of the given kind; ``learning_rate`` (when
    not None) overrides the one in its config."""
    method = SyntheticGradientsThroughTime(optimizer=keras.optimizers.SGD(learning_rate=0.3),
                                           learning_rate=None)
    assert isinstance(method.optimizer, dict)
    made = sg.make_optimizer(method.optimizer, method.learning_rate)
    assert isinstance(made, keras.optimizers.SGD)
    assert float(made.learning_rate) == pytest.approx(0.3)
    made = sg.make_optimizer(method.optimizer, 0.05)
    assert float(made.learning_rate) == pytest.approx(0.05)
    made = sg.make_optimizer("adam", None)
    assert float(made.learning_rate) == pytest.approx(0.001)   # Adam's own default


def _random_weights(synthesizer, seed=0):
    """Give every layer of the synthesizer random weights; return them (float64)."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=w.shape) / 2 for w in synthesizer.get_weights()]
    synthesizer.set_weights([w.astype("float32") for w in weights])
    return weights


def _mlp_numpy(x, weights):
    """Dense layers (or position-wise convolutions) on the last axis: ReLU hidden, linear
    last."""
    pairs = list(zip(weights[::2], weights[1::2]))
    for i, (kernel, bias) in enumerate(pairs):
        x = x @ kernel.reshape(-1, kernel.shape[-1]) + bias
        if i < len(pairs) - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("kind, hidden", [("linear", (4,)), ("mlp", (4,)), ("mlp", (4, 3))])
def test_dense_synthesizer_equals_numpy_on_h_and_the_condition(kind, hidden):
    """On a dense boundary M(h, y) = MLP(concat(h, y)) with ReLU hidden layers, shaped
    like h; "linear" is one layer whatever hidden_units says."""
    synthesizer = sg.Synthesizer((5,), kind=kind, condition_units=2, hidden_units=hidden,
                                 seed=0)
    assert synthesizer.built
    weights = _random_weights(synthesizer)
    assert len(weights) == (2 if kind == "linear" else 2 * (len(hidden) + 1))
    rng = np.random.default_rng(1)
    h, y = rng.normal(size=(4, 5)), rng.normal(size=(4, 2))
    out = synthesizer(tf.constant(h, "float32"), tf.constant(y, "float32"))
    expected = _mlp_numpy(np.concatenate([h, y], -1), weights)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    # Without a condition (condition_units=0, the default): M(h) alone.
    plain = sg.Synthesizer((5,), kind=kind, hidden_units=hidden, seed=0)
    weights = _random_weights(plain, seed=2)
    out = plain(tf.constant(h, "float32"))
    np.testing.assert_allclose(out.numpy(), _mlp_numpy(h, weights), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, data_format", [
    ((5, 3), "channels_last"),            # a sequence: Conv1D
    ((4, 5, 3), "channels_last"),         # an image: Conv2D
    ((2, 3, 2, 3), "channels_last"),      # a volume: Conv3D
    ((3, 2, 3, 2), "channels_first"),     # (TF runs only Conv3D channels-first on a CPU)
])
def test_convolutional_synthesizer_equals_numpy_position_by_position(shape, data_format):
    """With kernel_size=1 the convolutions act on each position alone: an MLP on the
    channels of h with y broadcast over the positions, in either data format."""
    synthesizer = sg.Synthesizer(shape, kind="mlp", condition_units=2, hidden_filters=(4,),
                                 kernel_size=1, data_format=data_format, seed=0)
    weights = _random_weights(synthesizer)
    rng = np.random.default_rng(1)
    h, y = rng.normal(size=(2,) + shape), rng.normal(size=(2, 2))
    out = synthesizer(tf.constant(h, "float32"), tf.constant(y, "float32")).numpy()
    last = h if data_format == "channels_last" else np.moveaxis(h, 1, -1)
    cond = np.broadcast_to(y.reshape((2,) + (1,) * (len(shape) - 1) + (2,)),
                           last.shape[:-1] + (2,))
    expected = _mlp_numpy(np.concatenate([last, cond], -1), weights)
    if data_format == "channels_first":
        expected = np.moveaxis(expected, -1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_a_boundary_of_rank_five_gets_a_dense_synthesizer():
    """Convolutions cover one to three spatial axes; a point of any other rank is
    flattened and goes through Dense layers."""
    synthesizer = sg.Synthesizer((1, 2, 1, 1, 2), condition_units=1, seed=0)
    weights = _random_weights(synthesizer)
    rng = np.random.default_rng(1)
    h, y = rng.normal(size=(3, 1, 2, 1, 1, 2)), rng.normal(size=(3, 1))
    out = synthesizer(tf.constant(h, "float32"), tf.constant(y, "float32")).numpy()
    expected = np.concatenate([h.reshape(3, 4), y], -1) @ weights[0] + weights[1]
    np.testing.assert_allclose(out, expected.reshape(h.shape), rtol=1e-5, atol=1e-5)


# -- an LSTM's two-part state, against Keras's own gradient --------------------------------


def test_lstm_state_h_and_c_get_their_parts_of_the_synthetic_gradient_like_keras():
    """The synthesizer sees s = [h, c] (batch 3, units 2, so no axis is mistaken for
    another); the injected gradient's first half goes to h_T, the second to c_T. The
    weights' gradients equal Keras's gradient of the loss plus <s_T, scale M(s_T) / B>,
    and the target at s_0 is B times Keras's gradient there."""
    lr, scale, batch, units = 0.1, 0.5, 3, 2
    keras.utils.set_random_seed(0)
    model = credit.Sequential([
        keras.Input(batch_shape=(batch, T, D)),
        L.LSTM(units, stateful=True, return_sequences=True, name="rnn"),
        L.Dense(O, name="out")])
    method = SyntheticGradientsThroughTime(seed=0, scale=scale, optimizer="sgd",
                                           learning_rate=lr, normalize=False,
                                           hidden_units=[3])
    model.compile("sgd", "mse", method=method)
    x, y = (v.astype("float32") for v in data(2, batch=batch))
    credit.compute_gradients(model, x[0], y[0])
    lstm, dense = model.get_layer("rnn"), model.get_layer("out")
    h0, c0 = (tf.constant(s.numpy()) for s in lstm.states)
    rng = np.random.default_rng(5)
    A, a = rng.normal(size=(2 * units, 2 * units)), rng.normal(size=2 * units)
    method.synthesizers["rnn"].set_weights([A.astype("float32"), a.astype("float32")])

    ref = L.LSTM(units, return_sequences=True, return_state=True)
    ref.build((batch, T, D))
    ref.set_weights(lstm.get_weights())
    mse = keras.losses.MeanSquaredError()
    with tf.GradientTape() as tape:
        tape.watch([h0, c0])
        seq, h_T, c_T = ref(x[1], initial_state=[h0, c0])
        s_T = tf.concat([h_T, c_T], -1)
        g = tf.stop_gradient(scale * (s_T @ A.astype("float32") + a) / batch)
        total = mse(y[1], dense(seq)) + tf.reduce_sum(s_T * g)
    grads = tape.gradient(total, [h0, c0] + ref.trainable_variables
                          + dense.trainable_variables)
    out = credit.compute_gradients(model, x[1], y[1])
    for got, expected in zip(out.gradients, grads[2:], strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    s0 = np.concatenate([h0.numpy(), c0.numpy()], -1).astype("float64")
    target = batch * np.concatenate([grads[0].numpy(), grads[1].numpy()], -1)
    prediction = s0 @ A + a
    np.testing.assert_allclose(float(out.logs["sg_loss"]),
                               ((prediction - target) ** 2).mean(), rtol=1e-4)
    dp = 2 * (prediction - target) / prediction.size
    new_A, new_a = method.synthesizers["rnn"].get_weights()
    np.testing.assert_allclose(new_A, A - lr * s0.T @ dp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_a, a - lr * dp.sum(0), rtol=1e-4, atol=1e-5)


# -- DNI's auxiliary task with a trained head and normalised targets ----------------------


def _set_sigma(method, index, sigma):
    """Put layer ``index``'s running mean square where sigma is ``sigma`` after one
    update (power / (1 - 0.99) = sigma^2)."""
    method.state.target_power[index].assign(0.01 * sigma**2)
    method.state.target_updates[index].assign(1.0)


def test_auxiliary_task_with_a_nonzero_head_and_sigma_below_one_equals_numpy():
    """The head on the first output step regresses onto the injected synthetic gradient
    in per-example units over sigma (here 0.5: so sigma, not 1, divides), and its
    gradient, times aux_weight, is injected at the first step: the weights' gradients,
    the logged aux_loss and the head's SGD step equal numpy."""
    lr, scale, w, sigma = 0.1, 0.5, 0.7, 0.5
    model = linear_rnn()
    method = SyntheticGradientsThroughTime(seed=0, scale=scale, optimizer="sgd",
                                           learning_rate=lr, aux_weight=w, hidden_units=[3])
    model.compile("sgd", "mse", method=method)
    assert float(method.target_scale("rnn")) == 0.0
    _set_sigma(method, 0, sigma)
    assert float(method.target_scale("rnn")) == pytest.approx(sigma, rel=1e-5)
    ref = Reference(model, scale, lr)
    rng = np.random.default_rng(5)
    A, a = rng.normal(size=(U, U)), rng.normal(size=U)
    Wh, bh = rng.normal(size=(U, U)), rng.normal(size=U)
    method.synthesizers["rnn"].set_weights([A.astype("float32"), a.astype("float32")])
    [head] = method.aux_heads.values()
    head.set_weights([Wh.astype("float32"), bh.astype("float32")])
    x, y = data(1)
    xw, yw, h0 = x[0], y[0], np.zeros((B, U))

    hs = ref.forward(xw, h0)
    future = scale * sigma * (hs[-1] @ A + a) / B
    target = future * B / sigma
    error = hs[0] @ Wh + bh - target
    aux_loss = (error**2).mean()
    d_head = w * 2 * error / error.size
    _, grads = ref.backward(xw, yw, h0, hs, future, at_first_step=d_head @ Wh.T)

    out = credit.compute_gradients(model, xw.astype("float32"), yw.astype("float32"))
    np.testing.assert_allclose(float(out.logs["aux_loss"]), aux_loss, rtol=1e-5)
    check_gradients(out, grads)
    new_Wh, new_bh = head.get_weights()
    np.testing.assert_allclose(new_Wh, Wh - lr * hs[0].T @ d_head, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_bh, bh - lr * d_head.sum(0), rtol=1e-4, atol=1e-6)


def test_aux_loss_of_two_layers_is_the_mean_of_their_losses():
    def aux_loss(at):
        keras.utils.set_random_seed(0)
        model = credit.Sequential([
            keras.Input(batch_shape=(B, T, D)),
            L.SimpleRNN(3, stateful=True, return_sequences=True, name="r1"),
            L.SimpleRNN(2, stateful=True, return_sequences=True, name="r2"), L.Dense(O)])
        method = SyntheticGradientsThroughTime(seed=0, at=at, aux_weight=0.5,
                                               hidden_units=[3])
        model.compile("sgd", "mse", method=method)
        for name, head in method.aux_heads.items():
            rng = np.random.default_rng(len(name) + int(name[-1]))
            head.set_weights([rng.normal(size=w.shape).astype("float32")
                              for w in head.get_weights()])
        x, y = (v[0].astype("float32") for v in data(1))
        return float(credit.compute_gradients(model, x, y).logs["aux_loss"])

    one, two = aux_loss(["r1"]), aux_loss(["r2"])
    assert one > 0 and two > 0 and one != pytest.approx(two)
    assert aux_loss(None) == pytest.approx((one + two) / 2, rel=1e-5)


# -- the step's parts called on their own -------------------------------------------------


def test_through_time_update_without_its_signals_is_an_error_naming_what_to_call():
    """``update`` trains on what ``signals`` left for the same trace; alone, or after
    the signals of another trace, it refuses (an update on stale targets is wrong)."""
    model = linear_rnn()
    method = SyntheticGradientsThroughTime(seed=0, hidden_units=[3])
    model.compile("sgd", "mse", method=method)
    x, y = (v[0].astype("float32") for v in data(1))
    trace = credit.model.record(model, x, y)
    with pytest.raises(RuntimeError, match="compute_gradients, not update alone"):
        method.update(trace, {})
    method.signals(credit.model.record(model, x, y))
    with pytest.raises(RuntimeError, match="compute_gradients, not update alone"):
        method.update(trace, {})
    assert int(method.step.numpy()) == 0


def _dense_model():
    keras.utils.set_random_seed(0)
    return credit.Sequential([keras.Input((3,)), L.Dense(4, activation="tanh", name="h"),
                              L.Dense(2, name="out")])


def test_between_layers_update_alone_runs_its_signals_first_and_takes_them_once():
    """``SyntheticGradients.update`` on a trace whose signals were not run (or were run
    on another trace) runs them, so the synthesizer takes the same SGD step as after
    ``signals`` on that trace; what ``signals`` left is taken once."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(5, 2)).astype(
        "float32")
    x2 = rng.normal(size=(5, 3)).astype("float32")

    def weights_after(how):
        model = _dense_model()
        method = credit.methods.SyntheticGradients(seed=0, optimizer="sgd",
                                                   learning_rate=0.5)
        model.compile("sgd", "mse", method=method)
        synthesizer = method.synthesizers["h"]
        synthesizer.set_weights([np.full(w.shape, 0.1, "float32")
                                 for w in synthesizer.get_weights()])
        trace = credit.model.record(model, x, y)
        if how == "signals":
            method.signals(trace)
        elif how == "other":
            method.signals(credit.model.record(model, x2, y))
        logs = method.update(trace, {})
        assert method._pending is None
        return synthesizer.get_weights(), float(logs["sg_loss"])

    (kernel, bias), loss = weights_after("signals")
    assert loss > 0 and abs(kernel - 0.1).max() > 1e-4
    for how in ("alone", "other"):
        (k, b), l = weights_after(how)
        np.testing.assert_allclose(k, kernel, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b, bias, rtol=1e-6, atol=1e-7)
        assert l == pytest.approx(loss, rel=1e-6)


def test_synthesizers_sum_over_replicas_to_the_gradient_of_the_global_mean(monkeypatch):
    """Under a strategy of n replicas the synthesizers' loss and the extra (head)
    gradients are divided by n before the optimizer sums the replicas: one replica's
    SGD step is 1/n of a single device's. (Two replicas stood in by ``replicas()``.)"""
    def step(n):
        keras.backend.clear_session(free_memory=False)
        model = _dense_model()
        method = credit.methods.SyntheticGradients(seed=0, optimizer="sgd",
                                                   learning_rate=1.0)
        model.compile("sgd", "mse", method=method)
        synthesizer = method.synthesizers["h"]
        kernel = tf.Variable(np.zeros((2, 2), "float32"))
        method.state.synthesizer_optimizer = keras.optimizers.SGD(learning_rate=1.0)
        method.state.synthesizer_optimizer.build(synthesizer.trainable_variables + [kernel])
        monkeypatch.setattr(sg, "replicas", lambda: n)
        tape = tf.GradientTape()
        with tape:
            loss = tf.reduce_sum(synthesizer.trainable_variables[1] - 1.0) * 3.0
        sg.train_synthesizers(method, tape, loss, [(tf.ones((2, 2)), kernel)])
        monkeypatch.setattr(sg, "replicas", lambda: 1)
        return synthesizer.trainable_variables[1].numpy(), kernel.numpy()

    bias, kernel = step(1)
    np.testing.assert_allclose(bias, -3.0 * np.ones(4))
    np.testing.assert_allclose(kernel, -np.ones((2, 2)))
    bias, kernel = step(2)
    np.testing.assert_allclose(bias, -1.5 * np.ones(4))
    np.testing.assert_allclose(kernel, -0.5 * np.ones((2, 2)))


def test_global_batch_counts_every_replica(monkeypatch):
    h = tf.zeros((5, 3), "float64")
    assert sg.global_batch(h).dtype == tf.float64 and float(sg.global_batch(h)) == 5.0
    monkeypatch.setattr(sg, "replicas", lambda: 4)
    assert float(sg.global_batch(h)) == 20.0


# -- what the method says about itself ----------------------------------------------------


def test_summary_rule_names_the_scale_and_the_condition():
    assert SyntheticGradientsThroughTime(scale=0.5).intercept_rule == (
        "plus scale * M(s_T) at each window's final state (synthetic gradient through time)")
    assert SyntheticGradientsThroughTime(scale=1, conditioned=True).intercept_rule == (
        "plus M(s_T, y_next) at each window's final state (synthetic gradient through "
        "time)")
    assert SyntheticGradientsThroughTime(scale=2.0).intercept_rule.startswith(
        "plus scale * M(s_T) at")


def test_missing_next_targets_name_the_training_step():
    """fit's check before each batch names the step; inside a traced step the check can
    only say "this training step"."""
    model = linear_rnn()
    method = SyntheticGradientsThroughTime(seed=0, conditioned=True, hidden_units=[3])
    model.compile("sgd", "mse", method=method)
    with pytest.raises(ValueError, match="were not given for training step 0\\. Fit on"):
        method.check_lookahead()
    SyntheticGradientsThroughTime(seed=0).check_lookahead()      # unbound: nothing to check
    x, y = (v[0].astype("float32") for v in data(1))
    with pytest.raises(ValueError, match="were not given for training step 0\\. Fit on"):
        credit.compute_gradients(model, x, y)
    method.set_lookahead(next_targets=y)
    method.check_lookahead()
    credit.compute_gradients(model, x, y)
    with pytest.raises(ValueError, match="training step 1"):
        method.check_lookahead()
    # Unconditioned: nothing is needed, so nothing is checked.
    plain = SyntheticGradientsThroughTime(seed=0, hidden_units=[3])
    linear_rnn().compile("sgd", "mse", method=plain)
    plain.check_lookahead()


def test_one_warmup_step_injects_nothing_then_the_synthetic_gradient():
    """warmup_steps=1: step 0 is plain truncated BPTT even with a non-zero synthesizer;
    from step 1 on ``scale * M(s_T) / B`` is injected."""
    lr, scale = 0.1, 0.5
    model = linear_rnn()
    method = SyntheticGradientsThroughTime(seed=0, scale=scale, optimizer="sgd",
                                           learning_rate=lr, normalize=False,
                                           warmup_steps=1, hidden_units=[3])
    model.compile("sgd", "mse", method=method)
    ref = Reference(model, scale, lr)
    rng = np.random.default_rng(7)
    A, a = rng.normal(size=(U, U)), rng.normal(size=U)
    method.synthesizers["rnn"].set_weights([A.astype("float32"), a.astype("float32")])
    x, y = data(2)
    h0 = np.zeros((B, U))
    hs = ref.forward(x[0], h0)
    _, plain = ref.backward(x[0], y[0], h0, hs, 0.0)
    check_gradients(credit.compute_gradients(model, x[0].astype("float32"),
                                             y[0].astype("float32")), plain)
    # No row had a previous window: the synthesizer did not move.
    np.testing.assert_array_equal(method.synthesizers["rnn"].get_weights()[0],
                                  A.astype("float32"))
    grads, *_ = ref.step(A, a, x[1], y[1], hs[-1], np.ones(B), np.ones(B))
    check_gradients(credit.compute_gradients(model, x[1].astype("float32"),
                                             y[1].astype("float32")), grads)


# -- synthetic gradients between layers: their own arguments --------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"update_probability": -0.1}, ["update_probability", "-0.1"]),
    ({"update_probability": True}, ["update_probability", "True"]),
    ({"update_probability": "0.5"}, ["update_probability", "'0.5'"]),
    ({"kernel_size": -3}, ["kernel_size", "-3"]),
    ({"kernel_size": True}, ["kernel_size", "True"]),
    ({"kernel_size": 2.0}, ["kernel_size", "2.0"]),
    ({"kernel_size": []}, ["kernel_size", "[]"]),
    ({"kernel_size": (3, 0)}, ["kernel_size", "(3, 0)"]),
    ({"kernel_size": (3, True)}, ["kernel_size", "(3, True)"]),
    ({"kernel_size": "3"}, ["kernel_size", "'3'"]),
    ({"hidden_filters": [8, -1]}, ["hidden_filters", "[8, -1]"]),
])
def test_bad_between_layers_arguments_are_errors_naming_them(kwargs, words):
    with pytest.raises(ValueError) as info:
        credit.methods.SyntheticGradients(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_good_between_layers_arguments_are_normalised():
    method = credit.methods.SyntheticGradients(
        kernel_size=[3, np.int64(1)], hidden_filters=4, update_probability=0,
        target=" TRUE ", at=[np.int64(0), "h"])
    assert method.kernel_size == (3, 1) and method.hidden_filters == (4,)
    assert method.update_probability == 0.0 and method.target == "true"
    assert method.at == (0, "h")
    assert credit.methods.SyntheticGradients(kernel_size=np.int32(3)).kernel_size == 3
    assert credit.methods.SyntheticGradients(update_probability=1).update_probability == 1.0


def test_between_layers_on_a_model_without_a_hidden_block_says_to_pass_at_minus_one():
    model = credit.Sequential([keras.Input((3,)), L.Dense(2, name="out")])
    with pytest.raises(ValueError, match=r"no hidden block.*at=\[-1\]"):
        model.compile("sgd", "mse", method=credit.methods.SyntheticGradients(seed=0))
    model = credit.Sequential([keras.Input((3,)), L.Dense(2, name="out")])
    method = credit.methods.SyntheticGradients(seed=0, at=[-1])
    model.compile("sgd", "mse", method=method)
    assert list(method.synthesizers) == ["out"]


def test_between_layers_summary_rule_says_whether_the_synthesizer_sees_the_label():
    assert credit.methods.SyntheticGradients().point_rule == "M_p(h_p) (learned synthesizer)"
    assert credit.methods.SyntheticGradients(conditioned=True).point_rule == (
        "M_p(h_p, y) (learned synthesizer, cDNI)")


def test_between_layers_synthesizer_on_a_sequence_of_dense_outputs_is_position_wise():
    """A Dense layer on a sequence gives a (time, units) point: its synthesizer is made of
    kernel-1 convolutions (``kernel_size`` is for the outputs of convolutions), so the
    signal at each step is an MLP of that step's h and the label alone."""
    model = credit.Sequential([keras.Input((4, 3)), L.Dense(5, name="h"),
                               L.Dense(2, name="out")])
    method = credit.methods.SyntheticGradients(seed=0, synthesizer="mlp", conditioned=True,
                                               hidden_filters=[3], kernel_size=3)
    model.compile("sgd", "mse", method=method)
    synthesizer = method.synthesizers["h"]
    weights = _random_weights(synthesizer)
    rng = np.random.default_rng(1)
    h, y = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 8))
    out = synthesizer(tf.constant(h, "float32"), tf.constant(y, "float32")).numpy()
    cond = np.broadcast_to(y[:, None, :], (2, 4, 8))
    expected = _mlp_numpy(np.concatenate([h, cond], -1), weights)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_between_layers_kernel_size_applies_to_a_point_after_a_convolutions_activation():
    """A block whose point is a layer after its convolution (here an Activation) is
    still a convolution's map: its synthesizer convolves with ``kernel_size``."""
    model = credit.Sequential([
        keras.Input((6, 6, 2)), L.Conv2D(3, 3, padding="same", name="conv"),
        L.Activation("relu", name="act"), L.Conv2D(2, 1, name="conv2"), L.Flatten(),
        L.Dense(2, name="out")])
    method = credit.methods.SyntheticGradients(seed=0, kernel_size=3)
    model.compile("sgd", "mse", method=method)
    [conv] = method.synthesizers["act"].stack
    assert tuple(conv.kernel.shape) == (3, 3, 3, 3)
