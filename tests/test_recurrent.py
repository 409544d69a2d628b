"""Tests of synthetic gradients through time (DNI on stateful RNNs), against oracles.

- With the true future gradient at the truncation point (from full BPTT over two
  windows), two truncated steps give full BPTT's gradient over both windows.
- The bootstrap target, the synthesizer's update and the weights' gradients equal a
  numpy hand computation on a tiny linear RNN; a reset row gives no target.
- Save / load between two windows resumes exactly: weights, carried states, method state.
- Bad input (no stateful layer, shuffled windows, wrong batch size, ...) gets errors that
  name the argument, the value and the fix.

(That ``credit.data.tbptt_windows`` continues each row from batch to batch is tested in
tests/test_data.py.)
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import credit  # noqa: E402
import linear_rnn_reference  # noqa: E402
from credit import data, recurrent  # noqa: E402
from credit.methods import SyntheticGradients, SyntheticGradientsThroughTime  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from state_checks import untracked_state  # noqa: E402

B, T, D, U, O = 3, 4, 2, 3, 2   # batch rows, window, input features, units, outputs


def rnn(kind="lstm", stateful=True, units=U, outputs=O, seed=0, activation="tanh",
        return_sequences=True, batch=B, window=T):
    keras.utils.set_random_seed(seed)
    cell = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU,
            "simple": keras.layers.SimpleRNN}[kind]
    extra = {} if kind == "lstm" else {"activation": activation}
    return credit.Sequential([
        keras.Input(batch_shape=(batch, window, D)),
        cell(units, stateful=stateful, return_sequences=return_sequences, name="rnn",
             **extra),
        keras.layers.Dense(outputs, name="out"),
    ])


def windows(n, seed=0, batch=B, window=T, outputs=O):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n * batch, window, D)).astype("float32")
    y = rng.normal(size=(n * batch, window, outputs)).astype("float32")
    return x, y


def through_time(**kwargs):
    return credit.get({"name": "dni_through_time", "seed": 0, **kwargs})


# -- the oracle: the true future gradient makes truncated BPTT exact --------------------


class OracleThroughTime(SyntheticGradientsThroughTime):
    """Injects a given gradient at the window's final state instead of M(s_T)."""

    future = None

    def future_gradient(self, name, trace):
        window = trace.records[name]
        if self.future is None:
            return [tf.zeros_like(s) for s in window.final]
        return [tf.constant(g) for g in self.future]


def test_true_future_gradient_makes_two_truncated_steps_equal_full_bptt():
    x, y = windows(2)
    (x1, x2), (y1, y2) = (x[:B], x[B:]), (y[:B], y[B:])
    model = rnn()
    model.compile("sgd", "mse", method=OracleThroughTime(scale=1.0))
    # The reference: the same layers unrolled over both windows, no truncation.
    lstm, dense = model.get_layer("rnn"), model.get_layer("out")
    mse = keras.losses.MeanSquaredError()
    variables = model.trainable_variables
    xx, yy = np.concatenate([x1, x2], 1), np.concatenate([y1, y2], 1)
    ref = keras.layers.LSTM(U, return_sequences=True, return_state=True)
    ref.build((B, 2 * T, D))
    ref.set_weights(lstm.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        seq, *_ = ref(xx)
        pred = dense(seq)
        full = mse(yy[:, :T], pred[:, :T]) + mse(yy[:, T:], pred[:, T:])
    full_grads = tape.gradient(full, ref.trainable_variables + dense.trainable_variables)
    # The true future gradient at the first window's final state: dL2 / d(h_T, c_T).
    _, h1, c1 = ref(x1)
    with tf.GradientTape() as tape:
        tape.watch([h1, c1])
        seq2, *_ = ref(x2, initial_state=[h1, c1])
        loss2 = mse(y2, dense(seq2))
    method = model.method
    method.future = [g.numpy() for g in tape.gradient(loss2, [h1, c1])]

    first = credit.compute_gradients(model, x1, y1)
    method.future = None                         # the second window is the last
    second = credit.compute_gradients(model, x2, y2)
    assert [v.name for v in variables] == [v.name for v in lstm.trainable_variables
                                           + dense.trainable_variables]
    for g1, g2, g in zip(first.gradients, second.gradients, full_grads, strict=True):
        np.testing.assert_allclose(g1.numpy() + g2.numpy(), g.numpy(), rtol=1e-5, atol=1e-6)
    # Truncated BPTT alone (nothing injected) misses the second window's loss through
    # the first window: the oracle is what closes the gap.
    lstm.reset_states()
    plain = credit.compute_gradients(model, x1, y1).gradients
    assert not np.allclose(plain[0].numpy() + second.gradients[0].numpy(),
                           full_grads[0].numpy(), atol=1e-4)


# -- the bootstrap target by hand -------------------------------------------------------


@pytest.mark.parametrize("warmup, normalize", [(0, False), (2, False), (0, True)])
def test_bootstrap_target_update_and_gradients_equal_numpy_on_a_linear_rnn(warmup, normalize):
    """SimpleRNN without activation: h_t = x_t K + h_{t-1} R + b, y_t = h_t V + c, MSE.

    Three windows. Step 1 has no previous window (nothing to train). Step 2's target at
    its initial state s_0 = h_T of window 1 is, per example, ``B * dL/ds_0`` with
    ``scale * M(s_T) / B`` added at its end; the linear synthesizer ``M(s) = s A + a``
    regresses onto it by one SGD step. Before step 3 row 0 is reset: only rows 1 and 2
    give a target. During warm-up (steps 1 and 2 with ``warmup_steps=2``) nothing is
    injected into the weights' gradients, but the target is the same. With
    ``normalize``, M predicts the target over sigma, the running RMS of the targets
    (sigma = 0 before the first target: nothing injected), and sigma M is injected.
    """
    lr, scale = 0.1, 0.5
    model = rnn("simple", units=2, outputs=1, activation="linear")
    method = through_time(scale=scale, optimizer="sgd", learning_rate=lr,
                          warmup_steps=warmup, normalize=normalize)
    decay = 0.99
    moments = {"power": 0.0, "updates": 0}

    def sigma():
        if not normalize:
            return 1.0
        if not moments["updates"]:
            return 0.0
        return np.sqrt(moments["power"] / (1 - decay ** moments["updates"]))
    model.compile("sgd", "mse", method=method)
    layer = model.get_layer("rnn")
    K, R, b = (w.astype("float64") for w in layer.get_weights())
    V, c = (w.astype("float64") for w in model.get_layer("out").get_weights())
    x, y = windows(3, seed=3, outputs=1)
    x, y = x.astype("float64"), y.astype("float64")

    w = {"K": K, "R": R, "b": b, "V": V, "c": c}

    def forward(xw, h):
        return linear_rnn_reference.forward(w, xw, h)

    def backward(xw, yw, h0, hs, injected):
        """Gradients of the window's MSE plus <h_T, injected>: (dh_0, weight grads)."""
        return linear_rnn_reference.backward(w, xw, yw, h0, hs, injected)

    out1 = credit.compute_gradients(model, x[:B], y[:B])
    assert float(out1.logs["sg_loss"]) == 0.0          # no previous window yet
    h_end1 = forward(x[:B], np.zeros((B, 2)))[-1]
    np.testing.assert_allclose(layer.states[0].numpy(), h_end1, rtol=1e-5, atol=1e-6)

    synthesizer = method.synthesizers["rnn"]
    rng = np.random.default_rng(7)
    A, a = rng.normal(size=(2, 2)), rng.normal(size=2)
    synthesizer.set_weights([A.astype("float32"), a.astype("float32")])

    def expected_step(xw, yw, h0, rows, warm=False):
        hs = forward(xw, h0)
        injected = scale * sigma() * (hs[-1] @ A + a) / B
        g0, grads = backward(xw, yw, h0, hs, injected)
        if warm:
            grads = backward(xw, yw, h0, hs, 0 * injected)[1]
        target = B * g0
        if normalize:
            square = (rows * (target ** 2).mean(1)).sum() / rows.sum()
            moments["power"] += (1 - decay) * (square - moments["power"])
            moments["updates"] += 1
            target = target / sigma()
        prediction = h0 @ A + a
        per_row = ((prediction - target) ** 2).mean(1)
        loss = (rows * per_row).sum() / max(rows.sum(), 1)
        # d loss / dp for loss = sum_r w_r mean_u (p - t)^2 / sum_r w_r, 2 state units
        dp = 2 * rows[:, None] * (prediction - target) / (2 * max(rows.sum(), 1))
        return hs, grads, loss, A - lr * h0.T @ dp, a - lr * dp.sum(0)

    hs2, grads2, loss2, A2, a2 = expected_step(x[B:2 * B], y[B:2 * B], h_end1, np.ones(B),
                                               warm=warmup >= 2)
    out2 = credit.compute_gradients(model, x[B:2 * B], y[B:2 * B])
    np.testing.assert_allclose(float(out2.logs["sg_loss"]), loss2, rtol=1e-4)
    new_A, new_a = synthesizer.get_weights()
    np.testing.assert_allclose(new_A, A2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_a, a2, rtol=1e-4, atol=1e-6)
    for name, gradient in zip("KRbVc", out2.gradients, strict=True):
        np.testing.assert_allclose(gradient.numpy(), grads2[name], rtol=1e-4, atol=1e-6)

    # Row 0 starts a new sequence: its state is reset, so it gives no target.
    A, a = new_A.astype("float64"), new_a.astype("float64")
    state = layer.states[0].numpy()
    state[0] = 0
    layer.states[0].assign(state)
    _, grads3, loss3, A3, _ = expected_step(x[2 * B:], y[2 * B:], state.astype("float64"),
                                            np.array([0.0, 1.0, 1.0]))
    out3 = credit.compute_gradients(model, x[2 * B:], y[2 * B:])
    np.testing.assert_allclose(float(out3.logs["sg_loss"]), loss3, rtol=1e-4)
    np.testing.assert_allclose(synthesizer.get_weights()[0], A3, rtol=1e-4, atol=1e-6)
    for name, gradient in zip("KRbVc", out3.gradients, strict=True):
        np.testing.assert_allclose(gradient.numpy(), grads3[name], rtol=1e-4, atol=1e-6)


# -- saving and resuming ----------------------------------------------------------------


def test_save_load_between_windows_resumes_exactly(tmp_path):
    x, y = windows(8, seed=1)
    model = rnn("lstm", seed=2)
    model.compile("adam", "mse", method=through_time(
        synthesizer="mlp", hidden_units=[8], aux_weight=0.5, seed=4))

    def fit(model, part):
        rows = slice(part * 4 * B, (part + 1) * 4 * B)
        return model.fit(x[rows], y[rows], batch_size=B, shuffle=False, verbose=0)

    history = fit(model, 0)
    assert set(history.history) == {"loss", "sg_loss", "aux_loss"}
    path = tmp_path / "rnn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    method = loaded.method
    assert method.get_config() == model.method.get_config()
    assert type(method) is SyntheticGradientsThroughTime
    assert int(method.step.numpy()) == 4
    # Everything the method keeps lives on the saved state, restored exactly.
    state = method.state
    assert list(method.synthesizers.values()) == list(state.synthesizer_layers)
    assert list(method.carried.values()) == list(state.carried_states)
    assert list(method.aux_heads.values()) == list(state.aux_heads)
    assert method.optimizer_instance is state.synthesizer_optimizer
    assert method.step is state.step and untracked_state(method) == []
    for a, b in zip(model.method.state.weights, state.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Keras does not save a stateful layer's state; the method restores it.
    for a, b in zip(model.get_layer("rnn").states, loaded.get_layer("rnn").states):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert np.abs(a.numpy()).sum() > 0
    fit(model, 1)                    # uninterrupted
    fit(loaded, 1)                   # resumed
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.get_layer("rnn").states, loaded.get_layer("rnn").states):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    for a, b in zip(model.method.state.weights, method.state.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    old, new = model.method.optimizer_instance, method.optimizer_instance
    for a, b in zip(old.variables, new.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


# -- feeding windows --------------------------------------------------------------------


def copy_windows(window, batch=B, n=2 * B, length=2, seed=0):
    """Copy sequences (5 steps) each padded to a multiple of ``window`` steps."""
    b = data.copy_task(length=length, n=n, bits=D - 1, seed=seed)
    return data.tbptt_sequence_windows(b, window=window, batch_size=batch, align=True)


class StateLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_begin(self, batch, logs=None):
        self.states.append(self.model.get_layer("rnn").states[0].numpy().copy())


def test_fit_on_windows_resets_rows_where_sequences_begin_and_runs_cdni():
    w = copy_windows(window=3)               # 6 steps per sequence: 2 windows each
    assert w.resets.reshape(-1, B).all(axis=1).tolist() == [True, False, True, False]
    model = rnn("gru", outputs=D - 1, window=3)
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True),
                  method={"name": "cdni_through_time", "seed": 0})
    log = StateLog()
    history = model.fit(w, epochs=2, verbose=0, callbacks=[log])
    assert np.isfinite(history.history["sg_loss"]).all() and len(log.states) == 8
    for i, state in enumerate(log.states):
        # windows 0 and 2 of each epoch begin sequences: zero state; 1 and 3 carry one
        assert (np.abs(state).sum() == 0) == (i % 2 == 0), i
    # Without the callback, cDNI has no next-window targets to condition on.
    with pytest.raises(ValueError, match="next window's targets, which were not given"):
        model.fit(w.inputs, w.targets, batch_size=B, shuffle=False, verbose=0)


def test_a_lookahead_holds_for_one_step_only():
    """The last window of a fit on windows sets continues to 0 (its rows end); later
    steps without a lookahead (arrays, a custom loop) inject ``scale * sigma * M(s_T) /
    B`` again, not 0 (before the fix the stale 0s silenced the synthesizer)."""
    w = copy_windows(window=3, seed=3)
    model = rnn("gru", outputs=D - 1, window=3, seed=2)
    model.compile("adam", "mse", method=through_time(scale=0.5))
    model.fit(w, epochs=2, verbose=0)
    method = model.method
    assert method.state.continues.numpy().tolist() == [0.0] * B
    trace = credit.model.record(model, w.inputs[B:2 * B], w.targets[B:2 * B])
    future = method.future_gradient("rnn", trace)
    final = trace.records["rnn"].final[0].numpy()
    sigma = float(method.target_scale("rnn").numpy())
    expected = 0.5 * sigma * method.synthesizers["rnn"](final).numpy() / B
    assert np.abs(expected).min() > 0
    np.testing.assert_allclose(future[0].numpy(), expected, rtol=1e-6, atol=1e-9)


class ResetRows(keras.callbacks.Callback):
    """One's own reset callback: zero the state of the rows where a sequence begins."""

    def __init__(self, windows):
        super().__init__()
        self.windows = windows

    def on_train_batch_begin(self, batch, logs=None):
        keep = ~self.windows.starts[batch * B:(batch + 1) * B, 0]
        for state in self.model.get_layer("rnn").states:
            state.assign(state.numpy() * keep[:, None])


class OwnLookahead(ResetRows):
    """The same, and it gives cDNI the next window's targets (as StatefulWindows does)."""

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        w, rows = self.windows, slice((batch + 1) * B, (batch + 2) * B)
        if batch + 1 < w.n_windows:
            continues, targets = ~w.starts[rows, 0], w.targets[rows]
        else:
            continues, targets = np.zeros(B, bool), np.zeros_like(w.targets[:B])
        self.model.method.set_lookahead(continues=continues, next_targets=targets)


def test_cdni_through_time_on_arrays_with_ones_own_reset_callback_names_what_is_missing():
    w = copy_windows(window=3, seed=2)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)

    def fresh():
        model = rnn("gru", outputs=D - 1, window=3, seed=1)
        model.compile("adam", loss, method={"name": "cdni_through_time", "seed": 0})
        return model

    model = fresh()
    before = model.get_weights()
    arrays = dict(x=w.inputs, y=w.targets, sample_weight=w.mask, batch_size=B,
                  shuffle=False, verbose=0)
    # Before the fix: a raw InvalidArgumentError from inside the traced train step.
    with pytest.raises(ValueError, match=r"next window's targets, which were not given for "
                                         r"training step 0\. Fit on a credit\.data\.Windows "
                                         r".*StatefulWindows.*set_lookahead"):
        model.fit(**arrays, callbacks=[ResetRows(w)])
    assert int(model.method.step.numpy()) == 0           # the check ran before the step
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same outside fit (a custom loop, eager): the error names the missing piece.
    with pytest.raises(ValueError, match=r"set_lookahead\(continues=\.\.\., next_targets"):
        credit.compute_gradients(model, w.inputs[:B], w.targets[:B])
    # One's own callback that gives the lookahead trains as fit(windows) does.
    own = fresh()
    own.fit(**arrays, callbacks=[OwnLookahead(w)])
    reference = fresh()
    reference.fit(w, verbose=0)
    for a, b in zip(own.get_weights() + own.method.state.get_weights(),
                    reference.get_weights() + reference.method.state.get_weights(),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_on_windows_equals_fit_on_arrays_with_the_callback():
    w = copy_windows(window=3, seed=1)
    runs = []
    for use_windows in (True, False):
        model = rnn("simple", outputs=D - 1, window=3, seed=5)
        model.compile("sgd", "mse", method=through_time())
        if use_windows:
            model.fit(w, verbose=0)
        else:
            model.fit(w.inputs, w.targets, sample_weight=w.mask, batch_size=B,
                      shuffle=False, verbose=0, callbacks=[recurrent.StatefulWindows(w)])
        runs.append(model.get_weights() + model.method.synthesizers["rnn"].get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


# -- configuration and bad input --------------------------------------------------------


def test_get_config_round_trips_the_through_time_hyperparameters():
    method = SyntheticGradientsThroughTime(seed=3, synthesizer="mlp", conditioned=True,
                                           at=["lstm"], warmup_steps=5, hidden_units=[16],
                                           scale=0.25, aux_weight=0.1, normalize=False)
    config = method.get_config()
    assert config["name"] == "synthetic_gradients_through_time"
    assert config["scale"] == 0.25 and config["normalize"] is False
    assert config["aux_weight"] == 0.1 and config["at"] == ["lstm"]
    assert not {"through_time", "target", "update_probability", "kernel_size"} & set(config)
    again = credit.get(config)
    assert type(again) is SyntheticGradientsThroughTime and again.get_config() == config
    for name in ("sg_through_time", "DNI_through_time", "synthetic_gradients_through_time"):
        assert type(credit.get(name)) is SyntheticGradientsThroughTime
        assert not credit.get(name).conditioned
    cdni = credit.get("cdni_through_time")
    assert cdni.conditioned and cdni.scale == 0.1
    # Listed apart: a sweep over credit.available() gets methods for any model.
    names = {"synthetic_gradients_through_time", "cdni_through_time"}
    assert not names & set(credit.available())
    assert names <= set(credit.available(stateful=True))
    assert set(credit.available(stateful=True)) - set(credit.available()) == names
    assert credit.get(cdni.get_config()).get_config() == cdni.get_config()


def test_through_time_shorthand_and_configs_of_older_versions_resolve():
    """``{"name": "cdni", "through_time": True}`` (documented before the split) and the
    configs older versions saved (one class with a through_time flag) still resolve."""
    cdni = credit.get({"name": "cdni", "through_time": True, "scale": 0.5})
    assert type(cdni) is SyntheticGradientsThroughTime and cdni.conditioned
    assert cdni.get_config() == credit.get({"name": "cdni_through_time",
                                            "scale": 0.5}).get_config()
    old = {"name": "synthetic_gradients", "seed": 4, "synthesizer": "mlp",
           "conditioned": False, "target": "bootstrap", "at": None,
           "update_probability": 1.0, "warmup_steps": 2, "hidden_units": [8],
           "hidden_filters": [128, 128], "kernel_size": 5, "activation": "relu",
           "optimizer": "adam", "learning_rate": 0.01}
    through_time = credit.get({**old, "through_time": True, "scale": None,
                               "aux_weight": 0.5, "normalize": True})
    assert through_time.get_config() == {
        "name": "synthetic_gradients_through_time", "seed": 4, "synthesizer": "mlp",
        "conditioned": False, "at": None, "warmup_steps": 2, "hidden_units": [8],
        "activation": "relu", "optimizer": "adam", "learning_rate": 0.01, "scale": 0.1,
        "aux_weight": 0.5, "normalize": True}
    between = credit.get({**old, "through_time": False, "scale": None, "aux_weight": 0.0,
                          "normalize": True})
    assert type(between) is SyntheticGradients
    # A complete config saved before the sizing options: the sizes it was saved with.
    assert between.get_config() == {**old, "at": None, "width": None, "max_points": None,
                                    "max_parameters": 2**63 - 1, "stage_points": None}


@pytest.mark.parametrize("kwargs, words", [
    ({"scale": 0}, ["scale", "0", "positive"]),
    ({"normalize": 1}, ["normalize", "1"]),
    ({"aux_weight": -1}, ["aux_weight", "-1", ">= 0"]),
    ({"at": [0]}, ["at=[0]", "names", "at=['lstm']"]),
    ({"synthesizer": "conv"}, ["synthesizer", "'conv'", "'linear'", "'mlp'"]),
    ({"learning_rate": 0}, ["learning_rate", "0"]),
])
def test_bad_through_time_hyperparameters_are_named(kwargs, words):
    with pytest.raises(ValueError) as info:
        SyntheticGradientsThroughTime(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("config, words", [
    ({"name": "sg", "through_time": "yes"}, ["through_time", "'yes'"]),
    ({"name": "sg", "scale": 0.5}, ["scale=0.5", "synthetic_gradients_through_time"]),
    ({"name": "sg", "aux_weight": 0.1}, ["aux_weight=0.1", "through_time"]),
    ({"name": "sg", "normalize": False}, ["normalize=False", "through_time"]),
    ({"name": "sg", "through_time": True, "target": "true"}, ["target='true'", "bootstrap"]),
    ({"name": "sg", "through_time": True, "update_probability": 0.5},
     ["update_probability=0.5"]),
    ({"name": "dni_through_time", "through_time": False},
     ["through_time=False", "'synthetic_gradients'"]),
])
def test_bad_shorthand_configs_are_named(config, words):
    with pytest.raises(ValueError) as info:
        credit.get(config)
    for word in words:
        assert word in str(info.value)


def test_the_between_layers_class_refuses_through_time_and_points_to_its_sibling():
    with pytest.raises(TypeError, match=r"through_time=True.*SyntheticGradientsThroughTime"):
        SyntheticGradients(through_time=True)
    # Each takes only the arguments that apply to it.
    with pytest.raises(TypeError, match="scale"):
        SyntheticGradients(scale=0.5)
    with pytest.raises(TypeError, match="update_probability"):
        SyntheticGradientsThroughTime(update_probability=0.5)
    assert not issubclass(SyntheticGradientsThroughTime, SyntheticGradients)
    assert not issubclass(SyntheticGradients, SyntheticGradientsThroughTime)


def test_bad_models_and_data_get_errors_that_say_what_to_change():
    def compile_(model, **kwargs):
        model.compile("sgd", "mse", method=through_time(**kwargs))

    with pytest.raises(ValueError, match=r"stateful=False.*stateful=True.*shuffle=False"):
        compile_(rnn(stateful=False))
    dense = credit.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no recurrent layer.*'synthetic_gradients'"):
        compile_(dense)
    with pytest.raises(ValueError, match=r"at=\['out'\] names 'out', which is not a "
                                         r"recurrent layer.*\['rnn'\]"):
        compile_(rnn(), at=["out"])
    with pytest.raises(ValueError, match="aux_weight=0.5.*return_sequences=False"):
        compile_(rnn(return_sequences=False), aux_weight=0.5)

    model = rnn()
    compile_(model)
    x, y = windows(4)
    with pytest.raises(ValueError, match=r"shuffle=True.*Pass shuffle=False"):
        model.fit(x, y, batch_size=B, verbose=0)
    with pytest.raises(ValueError, match=r"batch_size=6: the stateful layer 'rnn' was built "
                                         r"for batches of 3 rows\. Pass batch_size=3"):
        model.fit(x, y, batch_size=6, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=r"batch_size=32 \(Keras default\)"):
        model.fit(x, y, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=r"x: got 11 examples, not a multiple of the batch "
                                         r"size 3"):
        model.fit(x[:11], y[:11], batch_size=B, shuffle=False, verbose=0)

    # Windows whose order markers show they were shuffled after being laid out.
    w = data.tbptt_windows(np.zeros((60, D), "float32"), window=T, batch_size=B,
                           targets=np.zeros((60, O), "float32"))
    order = np.random.default_rng(0).permutation(len(w.row))
    shuffled = dataclasses.replace(
        w, inputs=w.inputs[order], targets=w.targets[order], mask=w.mask[order],
        starts=w.starts[order], window_index=w.window_index[order], row=w.row[order])
    with pytest.raises(ValueError, match=r"windows are out of order.*shuffle=False"):
        model.fit(shuffled, verbose=0)
    with pytest.raises(ValueError, match=r"shuffle=True: windows must reach"):
        model.fit(w, shuffle=True, verbose=0)
    wide = data.tbptt_windows(np.zeros((120, D), "float32"), window=T, batch_size=6,
                              targets=np.zeros((120, O), "float32"))
    with pytest.raises(ValueError, match=r"batch_size=6: the stateful layer 'rnn' was "
                                         r"built for batches of 3 rows"):
        model.fit(wide, verbose=0)
    backprop = rnn()
    backprop.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"batch_size: the windows were laid out for "
                                         r"batch_size=6 rows, but the stateful layer 'rnn' "
                                         r"was built for 3"):
        backprop.fit(wide, verbose=0)
    with pytest.raises(ValueError, match="a sequence begins inside a window"):
        recurrent.StatefulWindows(data.tbptt_sequence_windows(
            data.copy_task(length=2, n=2 * B, bits=D - 1), window=2, batch_size=B))


def test_stacked_stateful_layers_each_get_a_synthesizer_and_summary_says_so():
    keras.utils.set_random_seed(0)
    model = credit.Sequential([
        keras.Input(batch_shape=(B, T, D)),
        keras.layers.GRU(U, stateful=True, return_sequences=True, name="low"),
        keras.layers.LSTM(U, stateful=True, return_sequences=True, name="high"),
        keras.layers.Dense(O, name="out"),
    ])
    model.compile("sgd", "mse", method=through_time(warmup_steps=1))
    method = model.method
    assert list(method.synthesizers) == ["low", "high"] and method.points == ()
    assert method.synthesizers["high"].shape == (2 * U,)      # h and c
    x, y = windows(3)
    history = model.fit(x, y, batch_size=B, shuffle=False, verbose=0)
    assert np.isfinite(history.history["sg_loss"]).all()
    rules = credit.summary(model).set_index("layer")["signal"]
    assert "M(s_T) at each window's final state" in rules["low"]
    assert "M(s_T)" not in rules["out"]
