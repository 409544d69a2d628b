"""Signals per time step: DFA and DRTP on sequence-to-sequence models ("random e-prop").

References: numpy (DFA and DRTP per step through a SimpleRNN, every weight gradient),
independent TensorFlow computations of e-prop's rule through an LSTM and a GRU (the
cell's step written out, the gradient stopped where e-prop stops it), and of the
whole-sequence variant (``through_time="bptt"``: the whole sequence's error projected
once and Keras's backprop through time).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.graph import GraphError

L = keras.layers
T, D, H, K, N = 4, 3, 5, 3, 6


def data(seed=0, classes=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, D)).astype("float32")
    if classes:
        y = rng.integers(0, K, size=(N, T)).astype("int32")
    else:
        y = rng.normal(size=(N, T, K)).astype("float32")
    return tf.constant(x), tf.constant(y)


def seq2seq(kind="SimpleRNN", below=True, loss="mse", **options):
    """Input -> [Dense(3, tanh) per step] -> recurrent (return_sequences) -> Dense(K)."""
    inputs = keras.Input((T, D))
    h = L.Dense(3, activation="tanh", name="below")(inputs) if below else inputs
    h = getattr(L, kind)(H, return_sequences=True, name="rnn", **options)(h)
    model = credit.Model(inputs, L.Dense(K, name="out")(h))
    model.compile(loss=loss)
    return model


def gradients(model, x, y, sample_weight=None, **config):
    method = credit.get({"name": config.pop("name", "dfa"), "seed": 0, **config})
    result = credit.compute_gradients(model, x, y, sample_weight, method=method)
    return method, [np.asarray(g, "float64") for g in result.gradients]


def assert_close(got, expected, atol=1e-5):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=atol)


def numpy_per_step(weights, feedback, x, y, signal, sample_weight=None):
    """Gradients of the per-step rule through Dense(tanh) -> SimpleRNN -> Dense, numpy.

    ``signal``: "dfa" (``delta_t = e_t B``) or "drtp" (``delta_t = w_t onehot(y_t) B``).
    The loss is the mean squared error (dfa) or the softmax cross-entropy (drtp).
    """
    w1, b1, w, u, b, wo, bo = [np.asarray(v, "float64") for v in weights]
    b_below, b_rnn = [np.asarray(v, "float64") for v in feedback]
    x, y = np.asarray(x, "float64"), np.asarray(y)
    n, steps, _ = x.shape
    a = np.tanh(x @ w1 + b1)                                     # (n, T, 3)
    hs = [np.zeros((n, H))]
    for t in range(steps):
        hs.append(np.tanh(a[:, t] @ w + hs[-1] @ u + b))
    h = np.stack(hs[1:], axis=1)                                 # (n, T, H)
    logits = h @ wo + bo
    if signal == "dfa":
        e = 2.0 * (logits - y) / logits.size
        target = e
    else:
        onehot = np.eye(K)[y]
        weight = np.ones(y.shape) if sample_weight is None else np.asarray(sample_weight)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        e = (p - onehot) * weight[..., None] / y.size
        target = onehot * weight[..., None]
    grads = [None] * 7
    # The point on the recurrent layer: delta_t = v_t B at every step, no BPTT.
    g = (target @ b_rnn) * (1 - h ** 2)
    h_prev = np.stack(hs[:-1], axis=1)
    grads[2] = np.einsum("nti,ntj->ij", a, g)
    grads[3] = np.einsum("nti,ntj->ij", h_prev, g)
    grads[4] = g.sum((0, 1))
    # The point on the Dense block below: the same per step.
    gz = (target @ b_below) * (1 - a ** 2)
    grads[0] = np.einsum("nti,ntj->ij", x, gz)
    grads[1] = gz.sum((0, 1))
    # The output layer: its true gradient.
    grads[5] = np.einsum("nti,ntj->ij", h, e)
    grads[6] = e.sum((0, 1))
    return grads


# -- DFA and DRTP per step against numpy ------------------------------------------------


@pytest.mark.parametrize("through_time", [None, "eprop", "per_step"])
def test_dfa_per_step_equals_numpy(through_time):
    """On a SimpleRNN the three per-step readings coincide: delta_t = e_t B at each
    step's hidden state, and each step's weight gradient is its own input times
    delta_t * tanh'(a_t)."""
    x, y = data(seed=1)
    model = seq2seq()
    method, got = gradients(model, x, y, through_time=through_time)
    assert method.through_time_mode == (through_time or "eprop")
    assert method.points == ("below", "rnn")
    feedback = [method.feedback_matrices[p].numpy() for p in ("below", "rnn")]
    assert feedback[0].shape == (K, 3) and feedback[1].shape == (K, H)  # per step
    expected = numpy_per_step([v.numpy() for v in model.trainable_variables], feedback,
                              x, y, "dfa")
    assert_close(got, expected)


def test_drtp_per_step_equals_numpy_with_weights_per_step():
    x, y = data(seed=2, classes=True)
    model = seq2seq(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    weight = np.random.default_rng(5).uniform(0, 2, size=(N, T)).astype("float32")
    weight[0, 1] = 0.0  # a step that sends no signal
    method, got = gradients(model, x, y, weight, name="drtp")
    assert method.through_time_mode == "eprop"
    feedback = [method.feedback_matrices[p].numpy() for p in ("below", "rnn")]
    assert feedback[1].shape == (K, H)
    # The authors' initialisation, per step: uniform in +-sqrt(6 / units per step).
    assert np.abs(feedback[1]).max() <= np.sqrt(6 / H)
    expected = numpy_per_step([v.numpy() for v in model.trainable_variables], feedback,
                              x, y, "drtp", weight)
    assert_close(got, expected)


def test_per_step_is_not_backprop_through_time():
    """The recurrent kernel's gradient under e-prop differs from the same signals
    carried back through time (the whole-sequence rule with a block-diagonal B)."""
    x, y = data(seed=1)
    model = seq2seq(below=False)
    method, got = gradients(model, x, y)
    b = method.feedback_matrices["rnn"].numpy()
    rnn = model.get_layer("rnn")
    e = _output_error(model, x, y)
    delta = tf.einsum("ntk,kh->nth", e, b)
    with tf.GradientTape() as tape:
        h = rnn(x)
        surrogate = tf.reduce_sum(delta * h)
    bptt = tape.gradient(surrogate, rnn.trainable_variables)
    assert np.abs(got[1] - bptt[1].numpy()).max() > 1e-4


def _output_error(model, x, y):
    with tf.GradientTape() as tape:
        h = model.get_layer("rnn")(x if "below" not in [l.name for l in model.layers]
                                   else model.get_layer("below")(x))
        logits = model.get_layer("out")(h)
        tape.watch(logits)
        loss = model.compute_loss(x=x, y=y, y_pred=logits)
    return tf.stop_gradient(tape.gradient(loss, logits))


# -- LSTM and GRU against independent TensorFlow computations ---------------------------


def manual_lstm(cell, x, cut_carry):
    """Keras's LSTM step written out (gates i, f, c, o), ``h_{t-1}`` behind a
    stop-gradient (e-prop: the authors' LSTM stops it); ``c_{t-1}`` too if
    ``cut_carry``."""
    w, u, b = cell.kernel, cell.recurrent_kernel, cell.bias
    n = x.shape[0]
    h, c = tf.zeros((n, H)), tf.zeros((n, H))
    out = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w + tf.stop_gradient(h) @ u + b
        i, f, g, o = tf.split(z, 4, axis=1)
        c_prev = tf.stop_gradient(c) if cut_carry else c
        c = tf.sigmoid(f) * c_prev + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        out.append(h)
    return tf.stack(out, axis=1)


def manual_gru(cell, x, keep_leak):
    """Keras's GRU step (reset_after=True) written out, ``h_{t-1}`` behind a
    stop-gradient where the recurrent kernel reads it; in ``z * h_{t-1}`` too unless
    ``keep_leak``."""
    w, u, b = cell.kernel, cell.recurrent_kernel, cell.bias
    n = x.shape[0]
    h = tf.zeros((n, H))
    out = []
    for t in range(x.shape[1]):
        mx = x[:, t] @ w + b[0]
        mi = tf.stop_gradient(h) @ u + b[1]
        xz, xr, xh = tf.split(mx, 3, axis=1)
        iz, ir, ih = tf.split(mi, 3, axis=1)
        z, r = tf.sigmoid(xz + iz), tf.sigmoid(xr + ir)
        hh = tf.tanh(xh + r * ih)
        leak = h if keep_leak else tf.stop_gradient(h)
        h = z * leak + (1 - z) * hh
        out.append(h)
    return tf.stack(out, axis=1)


@pytest.mark.parametrize("kind,through_time", [("LSTM", "eprop"), ("LSTM", "per_step"),
                                               ("GRU", "eprop"), ("GRU", "per_step")])
def test_lstm_and_gru_per_step_equal_the_cell_written_out(kind, through_time):
    """e-prop through an LSTM keeps the carry c_{t-1} -> c_t (the eligibility trace of
    its gates) and drops h_{t-1}; through a GRU it keeps z_t * h_{t-1}; "per_step"
    drops those too. Checked against the step written out in TensorFlow, the gradient
    stopped where the rule stops it."""
    x, y = data(seed=4)
    model = seq2seq(kind, below=False)
    method, got = gradients(model, x, y, through_time=through_time)
    assert method.intercepted == ("rnn",)
    b = method.feedback_matrices["rnn"]
    cell = model.get_layer("rnn").cell
    # The manual step reproduces Keras's forward pass.
    manual = manual_lstm if kind == "LSTM" else manual_gru
    flag = (through_time == "per_step") if kind == "LSTM" else (through_time == "eprop")
    np.testing.assert_allclose(manual(cell, x, flag).numpy(),
                               model.get_layer("rnn")(x).numpy(), rtol=1e-5, atol=1e-6)
    e = _output_error(model, x, y)
    delta = tf.einsum("ntk,kh->nth", e, b)
    with tf.GradientTape() as tape:
        surrogate = tf.reduce_sum(delta * manual(cell, x, flag))
    expected = tape.gradient(surrogate, [cell.kernel, cell.recurrent_kernel, cell.bias])
    assert_close(got[:3], [g.numpy() for g in expected])
    # The kept path matters: with it cut too, the gradient differs.
    with tf.GradientTape() as tape:
        surrogate = tf.reduce_sum(delta * manual(cell, x, not flag))
    other = tape.gradient(surrogate, [cell.kernel, cell.recurrent_kernel, cell.bias])
    assert np.abs(got[0] - other[0].numpy()).max() > 1e-5


def test_bidirectional_lstm_per_step_equals_both_directions_written_out():
    x, y = data(seed=6)
    inputs = keras.Input((T, D))
    h = L.Bidirectional(L.LSTM(H, return_sequences=True), name="rnn")(inputs)
    model = credit.Model(inputs, L.Dense(K, name="out")(h))
    model.compile(loss="mse")
    method, got = gradients(model, x, y)
    assert method.through_time_mode == "eprop"
    b = method.feedback_matrices["rnn"]
    assert tuple(b.shape) == (K, 2 * H)
    layer = model.get_layer("rnn")
    e = _output_error(model, x, y)
    delta = tf.einsum("ntk,kh->nth", e, b)
    fwd, bwd = layer.forward_layer.cell, layer.backward_layer.cell
    with tf.GradientTape() as tape:
        hf = manual_lstm(fwd, x, False)
        hb = tf.reverse(manual_lstm(bwd, tf.reverse(x, [1]), False), [1])
        surrogate = tf.reduce_sum(delta * tf.concat([hf, hb], axis=-1))
    variables = [fwd.kernel, fwd.recurrent_kernel, fwd.bias,
                 bwd.kernel, bwd.recurrent_kernel, bwd.bias]
    expected = tape.gradient(surrogate, variables)
    assert_close(got[:6], [g.numpy() for g in expected])
    table = credit.summary(model, method=method).set_index("layer")
    for inner in (layer.forward_layer.name, layer.backward_layer.name):
        assert "e-prop" in table.loc[inner, "transport"]
        assert "within 'rnn'" in table.loc[inner, "transport"]


def test_dfa_per_step_with_two_outputs_concatenates_their_errors_per_step():
    """Two per-step outputs: e_t is [e^a_t, e^b_t], one B of shape (2 + 3, H)."""
    x, _ = data(seed=10)
    rng = np.random.default_rng(11)
    ya = rng.normal(size=(N, T, 2)).astype("float32")
    yb = rng.normal(size=(N, T, 3)).astype("float32")
    inputs = keras.Input((T, D))
    h = L.SimpleRNN(H, return_sequences=True, name="rnn")(inputs)
    model = credit.Model(inputs, [L.Dense(2, name="a")(h), L.Dense(3, name="b")(h)])
    model.compile(loss=["mse", "mse"], loss_weights=[1.0, 0.5])
    method, got = gradients(model, x, (ya, yb))
    assert method.through_time_mode == "eprop"
    b = method.feedback_matrices["rnn"]
    assert tuple(b.shape) == (5, H)
    cell = model.get_layer("rnn").cell
    ea = 2.0 * (model.get_layer("a")(model.get_layer("rnn")(x)) - ya) / ya.size
    eb = 0.5 * 2.0 * (model.get_layer("b")(model.get_layer("rnn")(x)) - yb) / yb.size
    delta = tf.einsum("ntk,kh->nth", tf.concat([ea, eb], axis=-1), b)
    with tf.GradientTape() as tape:
        hs, out = tf.zeros((N, H)), []
        for t in range(T):
            hs = tf.tanh(x[:, t] @ cell.kernel + tf.stop_gradient(hs) @ cell.recurrent_kernel
                         + cell.bias)
            out.append(hs)
        surrogate = tf.reduce_sum(delta * tf.stack(out, axis=1))
    expected = tape.gradient(surrogate, [cell.kernel, cell.recurrent_kernel, cell.bias])
    assert_close(got[:3], [g.numpy() for g in expected])


# -- The whole-sequence variant ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM"])
def test_whole_sequence_variant_is_the_old_rule(kind):
    """through_time="bptt": e over the whole sequence, flattened, times one B of shape
    (T x K, T x H), injected at the layer's output, Keras's BPTT inside."""
    x, y = data(seed=7)
    model = seq2seq(kind, below=False)
    method, got = gradients(model, x, y, through_time="bptt")
    assert method.through_time_mode == "bptt" and method.intercepted == ()
    b = method.feedback_matrices["rnn"]
    assert tuple(b.shape) == (T * K, T * H)
    # The old draw: the same seed stream, scale 1/sqrt(units of e).
    rng = method.seed_for(0)
    expected_b = rng.uniform(-1 / np.sqrt(T * K), 1 / np.sqrt(T * K), size=(T * K, T * H))
    np.testing.assert_allclose(b.numpy(), expected_b.astype("float32"))
    e = _output_error(model, x, y)
    delta = tf.reshape(tf.reshape(e, (N, T * K)) @ b, (N, T, H))
    rnn = model.get_layer("rnn")
    with tf.GradientTape() as tape:
        surrogate = tf.reduce_sum(delta * rnn(x, training=True))
    expected = tape.gradient(surrogate, rnn.trainable_variables)
    assert_close(got[:3], [g.numpy() for g in expected])
    summary = credit.summary(model, method=method).set_index("layer")
    assert summary.loc["rnn", "transport"].startswith("BPTT inside")


def test_a_model_without_per_step_output_keeps_the_whole_sequence():
    """return_sequences=False (one output per sequence): None resolves to "bptt", and
    the explicit per-step modes are refused with the reason."""
    def classifier():
        inputs = keras.Input((T, D))
        h = L.LSTM(H, name="rnn")(inputs)
        h = L.Dense(4, activation="tanh", name="hidden")(h)
        model = credit.Model(inputs, L.Dense(2, name="out")(h))
        model.compile(loss="mse")
        return model

    x = tf.zeros((N, T, D))
    method = credit.get("dfa")
    credit.model.bind(method, classifier(), inputs=x)
    assert method.through_time_mode == "bptt"
    for through_time in ("eprop", "per_step"):
        other = classifier()
        with pytest.raises(GraphError, match=r"through_time='(eprop|per_step)' does not "
                           r"apply.*output has shape \(2,\).*through_time='bptt'"):
            credit.model.bind(credit.get({"name": "dfa", "through_time": through_time}),
                              other, inputs=x)


def test_return_sequences_false_under_a_per_step_point_is_refused():
    inputs = keras.Input((T, D))
    h = L.SimpleRNN(H, name="encoder")(inputs)
    h = L.RepeatVector(T, name="repeat")(h)
    h = L.SimpleRNN(H, return_sequences=True, name="decoder")(h)
    model = credit.Model(inputs, L.Dense(K, name="out")(h))
    model.compile(loss="mse")
    method = credit.get({"name": "dfa", "through_time": "eprop"})
    with pytest.raises(GraphError, match="'encoder' has return_sequences=False"):
        credit.model.bind(method, model, inputs=tf.zeros((N, T, D)))


def test_gru_reset_after_false_is_refused_for_eprop_and_covered_per_step():
    model = seq2seq("GRU", below=False, reset_after=False)
    x, y = data(seed=8)
    with pytest.raises(GraphError, match="reset_after=False.*through_time='per_step'"):
        credit.model.bind(credit.get({"name": "dfa", "through_time": "eprop"}), model,
                          inputs=x)
    with pytest.warns(UserWarning, match="reset_after=False"):
        method = credit.get("dfa")
        credit.model.bind(method, model, inputs=x)
    assert method.through_time_mode == "bptt"
    other = seq2seq("GRU", below=False, reset_after=False)
    method, got = gradients(other, x, y, through_time="per_step")
    assert method.through_time_mode == "per_step"
    assert all(np.isfinite(g).all() for g in got)


class MinimalCell(L.Layer):
    """A cell that the cut does not know (Keras's guide's minimal RNN cell)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units))

    def call(self, inputs, states):
        h = inputs @ self.kernel + states[0] @ self.recurrent_kernel
        return h, [h]


def test_a_cell_the_cut_does_not_cover_is_refused_and_warned_about():
    def model():
        inputs = keras.Input((T, D))
        h = L.RNN(MinimalCell(H), return_sequences=True, name="rnn")(inputs)
        built = credit.Model(inputs, L.Dense(K, name="out")(h))
        built.compile(loss="mse")
        return built

    x = tf.zeros((N, T, D))
    for through_time in ("eprop", "per_step"):
        method = credit.get({"name": "dfa", "through_time": through_time})
        assert method.through_time_mode is None  # not bound yet
        with pytest.raises(GraphError, match="'rnn' cannot be cut.*MinimalCell"):
            credit.model.bind(method, model(), inputs=x)
    method = credit.get("dfa")
    with pytest.warns(UserWarning, match="signals per step.*do not apply.*MinimalCell"):
        credit.model.bind(method, model(), inputs=x)
    assert method.through_time_mode == "bptt"


@pytest.mark.parametrize("value", ["through", "BPTT", 1, True])
def test_bad_through_time_is_refused(value):
    with pytest.raises(ValueError, match=r"through_time must be None.*'eprop', "
                       r"'per_step' or 'bptt'; got"):
        credit.get({"name": "dfa", "through_time": value})
    with pytest.raises(ValueError, match="through_time must be None"):
        credit.get({"name": "drtp", "through_time": value})


# -- Configuration and summary -----------------------------------------------------------


@pytest.mark.parametrize("name", ["dfa", "drtp"])
def test_through_time_round_trips_and_shows_in_summary(name):
    model = seq2seq("LSTM")
    method = credit.get({"name": name, "seed": 3, "through_time": "per_step"})
    config = method.get_config()
    assert config["through_time"] == "per_step"
    assert credit.get(config).get_config() == config
    table = credit.summary(model, method=method).set_index("layer")
    assert method.through_time_mode == "per_step"
    assert "every state cut" in table.loc["rnn", "transport"]
    assert "at every step t" in table.loc["rnn", "signal"]
    assert "per_step" in table.loc["below", "signal"]
    default = credit.summary(seq2seq("LSTM"), method=name).set_index("layer")
    assert "e-prop" in default.loc["rnn", "transport"]
    assert "eprop" in default.loc["rnn", "signal"]


@pytest.mark.slow
def test_through_time_is_saved_with_the_model(tmp_path):
    model = seq2seq("GRU")
    model.compile(loss="mse", method={"name": "dfa", "seed": 3, "through_time": "per_step"})
    x, y = data(seed=9)
    model.train_on_batch(x, y)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.method.get_config() == model.method.get_config()
    assert loaded.method.get_config()["through_time"] == "per_step"
    assert loaded.method.through_time_mode == "per_step"
    np.testing.assert_allclose(loaded.method.feedback_matrices["rnn"].numpy(),
                               model.method.feedback_matrices["rnn"].numpy())


# -- Training ----------------------------------------------------------------------------


def test_per_step_dfa_trains_a_sequence_task_above_chance():
    """Each step's class is the sign pattern of the step's input and the one before
    (four classes, chance 0.25): e-prop's DFA through a SimpleRNN learns it."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    steps, n = 8, 256
    x = rng.normal(size=(n, steps, 2)).astype("float32")
    previous = np.concatenate([np.zeros((n, 1)), x[:, :-1, 0]], axis=1)
    y = ((x[:, :, 0] > 0).astype("int32") * 2 + (previous > 0)).astype("int32")
    model = credit.Sequential([keras.Input((steps, 2)),
                               L.SimpleRNN(32, return_sequences=True),
                               L.Dense(4)])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], method={"name": "dfa", "seed": 0})
    assert model.method.through_time_mode == "eprop"
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    accuracy = history.history["accuracy"][-1]
    assert accuracy > 0.6, accuracy


def test_the_experiments_task_is_the_class_of_two_signs():
    from experiments import per_step

    x, y = per_step.task(lag=3, n=5, steps=6, seed=0)
    assert x.shape == (5, 6, 2) and y.shape == (5, 6)
    for i in range(5):
        for t in range(6):
            back = x[i, t - 3, 0] > 0 if t >= 3 else False
            assert y[i, t] == 2 * int(x[i, t, 0] > 0) + int(back)
    _, text = per_step.table([(1, 0, "a", 0.5), (1, 1, "a", 0.7)])
    assert "| 1 | a | 0.600 | 0.500, 0.700 |" in text
