"""Transports through time: the FA family inside SimpleRNN, GRU and LSTM layers.

References: Keras's own backprop through time (with the feedback set to the kernels,
for every option of the layers) and numpy (with random feedback matrices, for each
cell type).
"""

import os
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit import recurrent_transports, transports
from credit.methods import _sign

sys.path.insert(0, os.path.dirname(__file__))
import model_generator  # noqa: E402

L = keras.layers
T, D, N = 4, 3, 5


def _tuple(v):
    return v if isinstance(v, tuple) else (v,)


def data(seed=0, masked=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, D)).astype("float32")
    if masked:
        x[1, 2:] = 0.0  # the last two steps of example 1 are masked
    y = rng.normal(size=(N, 2)).astype("float32")
    return tf.constant(x), tf.constant(y)


def rnn_model(kind, options=(), wrap=None, stack=False, sequences=False, masking=False,
              state=False):
    """Input -> [Masking] -> Dense (per step) -> recurrent layer(s) -> Dense(2)."""
    options = dict(options)
    inputs = keras.Input((T, D), batch_size=N if options.get("stateful") else None)
    h = L.Masking(0.0)(inputs) if masking else inputs
    h = L.Dense(3, activation="tanh", name="below")(h)
    if kind == "stacked_cells":
        rnn = L.RNN([L.LSTMCell(4), L.GRUCell(3)], return_sequences=sequences, name="rnn",
                    **options)
    else:
        rnn = getattr(L, kind)(4, name="rnn", return_sequences=sequences or stack,
                               return_state=state, **options)
    if wrap:
        rnn = L.Bidirectional(rnn, name="bidi")
    out = rnn(h)
    if state:
        last = L.Flatten()(out[0]) if sequences else out[0]
        out = L.Concatenate()([last, out[1]])
    if stack:
        out = getattr(L, kind)(3, name="rnn2", return_sequences=sequences, **options)(out)
    if sequences:
        out = L.Flatten()(out)
    model = credit.Model(inputs, L.Dense(2, name="out")(out))
    model.compile(loss="mse")
    return model


def keras_gradients(model, x, y, saved):
    model_generator.reset_seeds(saved)
    _reset_states(model)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    return tape.gradient(loss, model.trainable_variables)


def credit_gradients(model, x, y, method, saved=()):
    model_generator.reset_seeds(saved)
    _reset_states(model)
    return credit.compute_gradients(model, x, y, method=method).gradients


def _reset_states(model):
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()


def bound(name, model, x, **config):
    method = credit.get({"name": name, "seed": 0, **config})
    credit.model.bind(method, model, inputs=x)
    return method


def set_feedback(method, model, value):
    """Every feedback matrix of ``method`` set to ``value(kernel)``."""
    for name in method.transported:
        kernels = transports.kernels(model.get_layer(name))
        for b, w in zip(_tuple(method.feedback_matrices[name]), kernels):
            b.assign(value(w))


def assert_all_close(got, expected, atol=1e-6):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=atol)


def max_gap(got, expected):
    return max(float(np.abs(np.asarray(g) - np.asarray(e)).max())
               for g, e in zip(got, expected))


# -- 1. With the feedback set to the kernels, FA is Keras's BPTT, for every option --------

CELL_OPTIONS = [
    ({}, {}),
    ({"use_bias": False}, {}),
    ({"activation": "relu"}, {}),
    ({"dropout": 0.3, "seed": 1}, {}),
    ({"go_backwards": True}, {}),
    ({"unroll": True}, {}),
    ({"stateful": True}, {}),
    ({}, {"masking": True}),
    ({}, {"wrap": "bidirectional"}),
    ({}, {"stack": True, "sequences": True}),
    ({}, {"state": True, "sequences": True}),
]
CASES = [(kind, o, k) for kind in ("SimpleRNN", "GRU", "LSTM") for o, k in CELL_OPTIONS]
CASES += [
    ("SimpleRNN", {"recurrent_dropout": 0.3, "dropout": 0.2, "seed": 2}, {}),
    ("LSTM", {"recurrent_dropout": 0.3, "dropout": 0.2, "seed": 2}, {}),
    ("LSTM", {"recurrent_dropout": 0.3, "use_bias": False, "seed": 2},
     {"wrap": "bidirectional"}),
    ("LSTM", {"recurrent_activation": "tanh", "implementation": 1}, {}),
    ("GRU", {"recurrent_activation": "relu", "use_bias": False}, {}),
    ("stacked_cells", {}, {}),
]


def _case_id(case):
    kind, options, structure = case
    parts = [kind] + [f"{k}={v}" for k, v in {**options, **structure}.items() if k != "seed"]
    return "-".join(parts)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fa_with_the_kernels_as_feedback_is_keras_bptt(case):
    kind, options, structure = case
    x, y = data(masked=structure.get("masking", False))
    model = rnn_model(kind, options, **structure)
    saved = model_generator.seed_generators(model)
    method = bound("fa", model, x)
    recurrent = [n for n in method.transported
                 if recurrent_transports.is_recurrent(model.get_layer(n))]
    assert recurrent, method.transported
    expected = keras_gradients(model, x, y, saved)
    set_feedback(method, model, lambda w: w)
    assert_all_close(credit_gradients(model, x, y, method, saved), expected)
    # Random feedback in the recurrent layers alone changes the update: their
    # transports are in the path.
    for name in recurrent:
        for b in method.feedback_matrices[name]:
            b.assign(np.random.default_rng(7).uniform(-0.5, 0.5, size=b.shape))
    assert max_gap(credit_gradients(model, x, y, method, saved), expected) > 1e-3


def test_fa_is_keras_bptt_inside_tf_function_too():
    x, y = data()
    model = rnn_model("LSTM", {"dropout": 0.2, "recurrent_dropout": 0.2, "seed": 3})
    saved = model_generator.seed_generators(model)
    method = bound("fa", model, x)
    set_feedback(method, model, lambda w: w)
    expected = keras_gradients(model, x, y, saved)
    step = tf.function(lambda x, y: credit.compute_gradients(model, x, y,
                                                             method=method).gradients)
    model_generator.reset_seeds(saved)
    assert_all_close(step(x, y), expected)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM"])
def test_fa_is_keras_bptt_through_an_encoder_decoder_state_handoff(kind):
    """The decoder starts from the encoder's states (``initial_state=``): the signal at
    its initial h crosses its first step with its recurrent feedback."""
    rng = np.random.default_rng(0)
    x = [tf.constant(rng.normal(size=(N, T, D)).astype("float32")),
         tf.constant(rng.normal(size=(N, 3, 2)).astype("float32"))]
    y = tf.constant(rng.normal(size=(N, 3, 2)).astype("float32"))
    source, target = keras.Input((T, D)), keras.Input((3, 2))
    layer = getattr(L, kind)
    _, *states = layer(4, return_state=True, name="encoder")(L.Dense(3)(source))
    decoded = layer(4, return_sequences=True, name="decoder")(target, initial_state=states)
    model = credit.Model([source, target], L.Dense(2, name="out")(decoded))
    model.compile(loss="mse")
    method = bound("fa", model, x)
    assert method.transported == ("encoder", "decoder", "out")
    expected = keras_gradients(model, x, y, ())
    set_feedback(method, model, lambda w: w)
    assert_all_close(credit_gradients(model, x, y, method), expected)
    recurrent = method.feedback_matrices["decoder"][1]
    recurrent.assign(tf.zeros(recurrent.shape))
    got = credit_gradients(model, x, y, method)
    encoder = model.get_layer("encoder").cell
    kernels = [i for i, v in enumerate(model.trainable_variables)
               if v is encoder.kernel or v is encoder.recurrent_kernel]
    if kind == "SimpleRNN":
        # Its state enters a step through the recurrent kernel alone: with no recurrent
        # feedback in the decoder, nothing reaches the encoder.
        for i in kernels:
            np.testing.assert_array_equal(got[i], np.zeros(got[i].shape))
    else:
        # An LSTM's carry passes on elementwise (the true derivative), h does not.
        assert all(np.abs(got[i]).max() > 0 for i in kernels)
        assert max_gap([got[i] for i in kernels], [expected[i] for i in kernels]) > 1e-4


# -- 2. Random feedback: numpy references ------------------------------------------------


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_fa(kind, weights, feedback, x, y):
    """FA's gradients of ``rnn_model(kind)`` (defaults) in float64.

    Row vectors: a_t = tanh(x_t W1 + b1) per step; the recurrent layer's last state
    h_T; out = h_T Wo + bo; mse. The backward pass crosses ``out`` with ``Bo``, the
    recurrent layer's input kernel with ``Bx`` and its recurrent kernel with ``Bh`` at
    every step; every other derivative is the true one.
    """
    w1, b1, w, u, b, wo, bo = [np.asarray(v, "float64") for v in weights]
    bx, bh, bout = [np.asarray(v, "float64") for v in feedback]
    x, y = np.asarray(x, "float64"), np.asarray(y, "float64")
    n, steps, _ = x.shape
    units = u.shape[0]
    a = np.tanh(x @ w1 + b1)
    hs, cache = [np.zeros((n, units))], []
    c = np.zeros((n, units))
    for t in range(steps):
        h = hs[-1]
        if kind == "SimpleRNN":
            new = np.tanh(a[:, t] @ w + b + h @ u)
            cache.append(new)
        elif kind == "LSTM":
            z = a[:, t] @ w + h @ u + b
            i, f = sigmoid(z[:, :units]), sigmoid(z[:, units:2 * units])
            g, o = np.tanh(z[:, 2 * units:3 * units]), sigmoid(z[:, 3 * units:])
            c_prev, c = c, f * c + i * g
            new = o * np.tanh(c)
            cache.append((i, f, g, o, c_prev, c))
        else:  # GRU, reset_after=True: bias rows are the input and the recurrent biases
            mx, mi = a[:, t] @ w + b[0], h @ u + b[1]
            zg = sigmoid(mx[:, :units] + mi[:, :units])
            r = sigmoid(mx[:, units:2 * units] + mi[:, units:2 * units])
            hh = np.tanh(mx[:, 2 * units:] + r * mi[:, 2 * units:])
            new = zg * h + (1 - zg) * hh
            cache.append((zg, r, hh, mi))
        hs.append(new)
    out = hs[-1] @ wo + bo
    e = 2.0 * (out - y) / out.size
    grads = {"wo": hs[-1].T @ e, "bo": e.sum(0)}
    dh, dc = e @ bout.T, np.zeros((n, units))
    dw, du, db = np.zeros_like(w), np.zeros_like(u), np.zeros_like(b)
    da = np.zeros_like(a)
    for t in reversed(range(steps)):
        h_prev = hs[t]
        if kind == "SimpleRNN":
            g = dh * (1 - cache[t] ** 2)
            gx = gh = g
            dh_direct = 0.0
        elif kind == "LSTM":
            i, f, gg, o, c_prev, c = cache[t]
            tc = np.tanh(c)
            dct = dc + dh * o * (1 - tc ** 2)
            g = np.concatenate([dct * gg * i * (1 - i), dct * c_prev * f * (1 - f),
                                dct * i * (1 - gg ** 2), dh * tc * o * (1 - o)], axis=1)
            gx = gh = g
            dc = dct * f
            dh_direct = 0.0
        else:
            zg, r, hh, mi = cache[t]
            g_hh = dh * (1 - zg) * (1 - hh ** 2)
            g_z = dh * (h_prev - hh) * zg * (1 - zg)
            g_r = g_hh * mi[:, 2 * units:] * r * (1 - r)
            gx = np.concatenate([g_z, g_r, g_hh], axis=1)
            gh = np.concatenate([g_z, g_r, g_hh * r], axis=1)
            dh_direct = dh * zg
        dw += a[:, t].T @ gx
        du += h_prev.T @ gh
        if kind == "GRU":
            db += np.stack([gx.sum(0), gh.sum(0)])
        else:
            db += gx.sum(0)
        da[:, t] = gx @ bx.T
        dh = dh_direct + gh @ bh.T
    dz1 = da * (1 - a ** 2)
    grads["w1"] = np.einsum("ntd,nte->de", x, dz1)
    grads["b1"] = dz1.sum((0, 1))
    return [grads["w1"], grads["b1"], dw, du, db, grads["wo"], grads["bo"]]


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_fa_with_random_feedback_equals_numpy(kind):
    x, y = data(seed=3)
    model = rnn_model(kind)
    method = bound("fa", model, x)
    assert method.transported == ("rnn", "out")  # "below" reads the input: no transport
    bx, bh = method.feedback_matrices["rnn"]
    bout = method.feedback_matrices["out"]
    # The feedback is random, not the kernels.
    assert not np.allclose(bx.numpy(), model.get_layer("rnn").cell.kernel.numpy())
    got = credit_gradients(model, x, y, method)
    weights = [v.numpy() for v in model.trainable_variables]
    expected = numpy_fa(kind, weights, (bx.numpy(), bh.numpy(), bout.numpy()), x, y)
    assert_all_close(got, expected, atol=1e-6)
    # And it is not backprop's.
    backprop = numpy_fa(kind, weights, (weights[2], weights[3], weights[5]), x, y)
    assert max_gap(got, backprop) > 1e-3


def test_fa_through_a_simple_rnn_over_a_few_steps_by_hand():
    """One unit per layer over three steps, written out: delta_2 = (e Bo) (1 - h_3^2)
    carried back with Bh, each step's input signal through Bx (scalars)."""
    model = credit.Sequential([keras.Input((3, 1)),
                               L.SimpleRNN(1, name="rnn"), L.Dense(1, name="out")])
    model.compile(loss="mse")
    x = tf.constant([[[0.5], [-1.0], [2.0]]])
    y = tf.constant([[0.25]])
    rnn, out = model.get_layer("rnn"), model.get_layer("out")
    rnn.cell.kernel.assign([[0.7]])
    rnn.cell.recurrent_kernel.assign([[-0.4]])
    rnn.cell.bias.assign([0.1])
    out.kernel.assign([[1.5]])
    out.bias.assign([0.0])
    method = credit.get({"name": "fa", "layers": ["rnn", "out"]})
    credit.model.bind(method, model, inputs=x)
    method.feedback_matrices["rnn"][0].assign([[2.0]])
    method.feedback_matrices["rnn"][1].assign([[0.3]])
    method.feedback_matrices["out"].assign([[-1.0]])
    xs, w, u, b, bh, bo = [0.5, -1.0, 2.0], 0.7, -0.4, 0.1, 0.3, -1.0
    hs = [0.0]
    for xt in xs:
        hs.append(np.tanh(xt * w + hs[-1] * u + b))
    e = 2 * (hs[-1] * 1.5 - 0.25)
    dh, dw, du, db = e * bo, 0.0, 0.0, 0.0
    for t in (2, 1, 0):
        g = dh * (1 - hs[t + 1] ** 2)
        dw, du, db = dw + xs[t] * g, du + hs[t] * g, db + g
        dh = g * bh
    got = credit_gradients(model, x, y, method)
    np.testing.assert_allclose([float(np.ravel(v)[0]) for v in got],
                               [dw, du, db, e * hs[-1], e], rtol=1e-5, atol=1e-7)


# -- 3. The FA family: methods, state, saving, summary ------------------------------------

FAMILY = ["feedback_alignment", "kolen_pollack", "sign_symmetry",
          "fixed_random_sign_feedback", "batchwise_random_sign_feedback"]


@pytest.mark.parametrize("name", FAMILY)
def test_every_fa_family_method_crosses_the_recurrent_kernels(name):
    """Each method's recurrent feedback is its formula's: the gradients equal FA's with
    the method's own matrices."""
    x, y = data()
    model = rnn_model("LSTM")
    method = bound(name, model, x)
    assert "rnn" in method.transported
    layer = model.get_layer("rnn")
    kernels = [k.numpy() for k in transports.kernels(layer)]
    if name in ("feedback_alignment", "kolen_pollack"):
        mats = [b.numpy() for b in method.feedback_matrices["rnn"]]
    elif name == "sign_symmetry":
        assert method.scales["rnn"] == (_sign.glorot_std(layer, 0), _sign.glorot_std(layer, 1))
        # PyTorch's fans of an LSTM's weight_ih (4u, in) and weight_hh (4u, u).
        assert method.scales["rnn"][0] == pytest.approx(np.sqrt(2 / (3 + 16)))
        mats = [s * np.sign(k) for s, k in zip(method.scales["rnn"], kernels)]
    elif name == "fixed_random_sign_feedback":
        mats = [m.numpy() * np.sign(k) for m, k in zip(method.magnitudes["rnn"], kernels)]
    else:
        mats = [m.numpy() * np.sign(k) for m, k in zip(method.draw("rnn"), kernels)]
    assert [m.shape for m in mats] == [(3, 16), (4, 16)]
    fa = bound("fa", model, x)
    for target, m in zip(fa.feedback_matrices["rnn"], mats):
        target.assign(m)
    set_feedback_out = {"out": transports_of(method, model, "out")}
    fa.feedback_matrices["out"].assign(set_feedback_out["out"][0])
    expected = credit_gradients(model, x, y, fa)
    got = credit_gradients(model, x, y, method)
    assert_all_close(got, expected, atol=1e-6)
    # The recurrent layer's feedback is in the path: with its kernels in its place
    # (and the same feedback at "out"), the gradients differ.
    for target, w in zip(fa.feedback_matrices["rnn"], kernels):
        target.assign(w)
    assert max_gap(got, credit_gradients(model, x, y, fa)) > 1e-4


def transports_of(method, model, name):
    return tuple(np.asarray(k) for k in method.transport(
        model.get_layer(name), transports.kernels(model.get_layer(name))))


def test_kolen_pollack_trains_an_lstm_and_its_b_gets_the_weights_update():
    x, y = data()
    model = rnn_model("LSTM")
    model.compile(optimizer=keras.optimizers.SGD(0.1, weight_decay=0.01), loss="mse",
                  method={"name": "kp", "seed": 0})
    method = model.method
    layer = model.get_layer("rnn")
    bx, bh = method.feedback_matrices["rnn"]
    assert (tuple(bx.shape), tuple(bh.shape)) == ((3, 16), (4, 16))
    assert bx.trainable and bh.trainable
    pairs = [(layer.cell.kernel, bx), (layer.cell.recurrent_kernel, bh)]
    before = [(w.numpy(), b.numpy()) for w, b in pairs]
    gap_before = method.misalignment()["rnn"]
    history = model.fit(x, y, batch_size=N, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    for (w, b), (w0, b0) in zip(pairs, before):
        # The same SGD step (gradient and weight decay) on both: B - W shrinks by the
        # decay factor, (1 - 0.1 * 0.01) per step.
        np.testing.assert_allclose(b.numpy() - w.numpy(), (b0 - w0) * 0.999 ** 3,
                                   rtol=1e-4, atol=1e-6)
    assert len(method.misalignment()["rnn"]) == len(gap_before) == 2  # one per kernel


def test_feedback_matrices_are_saved_with_the_model(tmp_path):
    x, y = data()
    model = rnn_model("GRU", wrap="bidirectional")
    model.compile(optimizer="sgd", loss="mse", method={"name": "fa", "seed": 4})
    model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    method = model.method
    matrices = method.feedback_matrices["bidi"]
    assert [tuple(b.shape) for b in matrices] == [(3, 12), (4, 12), (3, 12), (4, 12)]
    assert transports.kernel_names(model.get_layer("bidi")) == (
        "forward_rnn/kernel", "forward_rnn/recurrent_kernel",
        "backward_rnn/kernel", "backward_rnn/recurrent_kernel")
    # Change them, so that what is loaded is what was saved, not a fresh draw.
    for b in matrices:
        b.assign(b.numpy() * -2.0)
    grads = credit_gradients(model, x, y, method)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for got, want in zip(loaded.method.feedback_matrices["bidi"], matrices):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert_all_close(credit_gradients(loaded, x, y, loaded.method), grads)


def test_summary_shows_the_recurrent_layer_as_transported_through_time():
    x, _ = data()
    model = credit.Sequential([keras.Input((T, D)), L.LSTM(4, name="first"),
                               L.Dense(2, name="out")])
    model.compile(loss="mse", method="fa")
    # The first layer too: its recurrent kernel is crossed at every step.
    assert model.method.transported == ("first", "out")
    table = credit.summary(model).set_index("layer")
    assert table.loc["first", "transport"] == (
        "B (fixed random, shaped like W), at every step through time (input and "
        "recurrent kernels)")
    model.compile(loss="mse", method="bp")
    assert credit.summary(model).set_index("layer").loc["first", "transport"].startswith(
        "BPTT inside")
    bidirectional = rnn_model("GRU", wrap="bidirectional")
    bidirectional.compile(loss="mse", method="usf")
    table = credit.summary(bidirectional).set_index("layer")
    rule = "s sign(W) (signs of the current W, Glorot-std scale), at every step through time"
    assert table.loc["bidi", "transport"].startswith(rule)
    # Its two inner layers are listed too, crossed with it.
    assert table.loc["forward_rnn", "transport"].startswith(rule)
    assert table.loc["backward_rnn", "transport"].endswith(", within 'bidi'")


# -- 4. What is not covered is refused, by name -------------------------------------------


def test_uncovered_options_are_refused_when_named_and_left_to_bptt_with_a_warning():
    x, y = data()
    model = rnn_model("GRU", {"reset_after": False})
    with pytest.raises(ValueError, match=r"layer 'rnn' \(GRU\) has no transport through "
                       r"time: its GRU cell has reset_after=False.*Use reset_after=True"):
        model.compile(loss="mse", method={"name": "fa", "layers": ["rnn"]})
    with pytest.warns(UserWarning, match=r"layer 'rnn' \(GRU\) is crossed with its true "
                      r"kernels .*reset_after=False"):
        model.compile(loss="mse", method="fa")
    assert model.method.transported == ("out",)
    table = credit.summary(model).set_index("layer")
    assert table.loc["rnn", "transport"] == "BPTT inside; true"

    dropout = rnn_model("GRU", {"recurrent_dropout": 0.2})
    with pytest.raises(ValueError, match=r"recurrent_dropout=0\.2 .*implementation 1"):
        dropout.compile(loss="mse", method={"name": "kp", "layers": ["rnn"]})
    with pytest.raises(ValueError, match=r"has no transport through time: its GRU cell has "
                       r"recurrent_dropout=0\.2"):
        with recurrent_transports.through_time(dropout.get_layer("rnn"), ()):
            pass


def test_a_recurrent_layer_of_another_cell_type_has_no_transport():
    inputs = keras.Input((T, D, 2))
    conv = L.ConvLSTM1D(2, 2, name="convlstm")
    model = credit.Model(inputs, L.Dense(1)(L.Flatten()(conv(inputs))))
    with pytest.raises(TypeError, match=r"layer 'convlstm' \(ConvLSTM1D\) has no transport: "
                       r"credit has adjoints for .*and crosses the kernels of SimpleRNN, "
                       r"GRU and LSTM layers"):
        model.compile(loss="mse", method={"name": "fa", "layers": ["convlstm"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: it is another type, not an option
        model.compile(loss="mse", method="fa")
    assert "convlstm" not in model.method.transported


def test_through_time_checks_its_feedback_and_recurrent_layers_have_no_single_op():
    layer = L.LSTM(3, name="lstm")
    layer.build((None, T, D))
    with pytest.raises(ValueError, match=r"layer 'lstm' needs 2 feedback kernels \(input "
                       r"and recurrent, per cell\); got 1"):
        with recurrent_transports.through_time(layer, (layer.cell.kernel,)):
            pass
    with pytest.raises(TypeError, match=r"'lstm' \(LSTM\) has no transport as one linear "
                       r"op: its kernels are crossed at every step through time"):
        transports.adjoint(layer, tf.zeros((1, 3)), tf.zeros((1, T, D)),
                           transports.kernels(layer))
    assert transports.fan_in(layer, 0) == transports.fan_in(layer, 1) == 12
    # During the call the cell's step is wrapped and cuDNN (which fuses the steps, so
    # that no cell runs) is off; nothing stays installed afterwards.
    with recurrent_transports.through_time(layer, transports.kernels(layer)):
        assert layer.use_cudnn is False and "call" in layer.cell.__dict__
        with recurrent_transports.through_time(layer, transports.kernels(layer)):
            pass  # nested (as replicas of a strategy may): the outer one stays in place
        assert layer.use_cudnn is False and "call" in layer.cell.__dict__
    assert "call" not in layer.cell.__dict__ and layer.use_cudnn == "auto"


def test_the_cell_is_restored_after_a_step():
    x, y = data()
    model = rnn_model("LSTM", {"use_bias": False})
    method = bound("fa", model, x)
    credit_gradients(model, x, y, method)
    cell = model.get_layer("rnn").cell
    assert "call" not in cell.__dict__
    assert cell.bias is None and cell.use_bias is False
    assert model.get_layer("rnn").use_cudnn == "auto"
    # Outside a step the layer is Keras's own: its output does not change.
    np.testing.assert_allclose(model(x), model(x))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_mixed_precision_layers_are_crossed_in_their_compute_dtype(kind):
    """A float16 recurrent layer under float32 feedback: the step casts, and with the
    feedback set to the kernels the update is backprop's to float16 precision."""
    x, y = data()
    model = credit.Sequential([keras.Input((T, D)), L.Dense(3, activation="tanh"),
                               getattr(L, kind)(4, name="rnn", dtype="mixed_float16"),
                               L.Dense(2, name="out")])
    model.compile(loss="mse")
    method = bound("fa", model, x)
    set_feedback(method, model, lambda w: w)
    got = credit_gradients(model, x, y, method)
    expected = credit_gradients(model, x, y, credit.get("bp"))
    scale = max(float(np.abs(np.asarray(e, "float32")).max()) for e in expected)
    assert max_gap([np.asarray(g, "float32") for g in got],
                   [np.asarray(e, "float32") for e in expected]) < 2e-3 * scale
