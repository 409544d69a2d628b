"""Methods without a backward pass: forward gradients and PEPITA, against references.

Forward gradients: the forward-mode directional derivative equals Keras's gradient
dotted with the tangent; the estimate is unbiased and its variance falls as 1/K.
PEPITA: its updates equal the paper's formula computed in numpy; models it cannot
train get an error naming the layer; it meets the core contract on Dense chains.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.graph import GraphError

import test_core as core


def mlp(sizes=(12, 16, 16, 3), activation="tanh"):
    layers = [keras.Input((sizes[0],))]
    layers += [keras.layers.Dense(u, activation=activation) for u in sizes[1:-1]]
    layers += [keras.layers.Dense(sizes[-1], activation="softmax")]
    return credit.Sequential(layers)


def batch(n=8, inputs=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, inputs)).astype("float32"),
            rng.integers(0, classes, size=n))


def true_gradient(model, x, y):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x, training=True))
    return [g.numpy().astype("float64")
            for g in tape.gradient(loss, model.trainable_variables)]


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


# -- forward gradients ---------------------------------------------------------------------


def test_forward_gradient_registered():
    assert "forward_gradient" in credit.available()
    assert type(credit.get("fg")) is credit.methods.ForwardGradient
    with pytest.raises(ValueError, match="tangents must be a positive integer.*got 0"):
        credit.get({"name": "fg", "tangents": 0})


def test_directional_derivative_is_the_gradient_dotted_with_the_tangent():
    x, y = batch()
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fg", "seed": 1})
    method = model.method
    credit.model.bind(method, model, x)
    g = flat(true_gradient(model, x, y))
    for k in range(3):
        v = method.draw_tangents(model.trainable_variables, k)
        jvp, _, _ = method.directional_derivative(model, x, y, None, v)
        np.testing.assert_allclose(float(jvp), g @ flat([t.numpy() for t in v]),
                                   rtol=1e-5, atol=1e-7)


def test_the_step_gradient_is_the_tangent_times_the_directional_derivative():
    x, y = batch()
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "fg", "seed": 1, "tangents": 2})
    method = model.method
    credit.model.bind(method, model, x)
    g = flat(true_gradient(model, x, y))
    v = [flat([t.numpy() for t in method.draw_tangents(model.trainable_variables, k)])
         for k in range(2)]
    expected = sum((g @ vk) * vk for vk in v) / 2
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    np.testing.assert_allclose(flat([t.numpy() for t in out.gradients]), expected,
                               rtol=1e-4, atol=1e-6)
    assert int(method.step.numpy()) == 1
    # The next step draws other tangents.
    again = method.draw_tangents(model.trainable_variables, 0)
    assert not np.allclose(flat([t.numpy() for t in again]), v[0])


def gru_model(unroll):
    return credit.Sequential([keras.Input((4, 3)), keras.layers.GRU(5, unroll=unroll),
                              keras.layers.Dense(3, activation="softmax")])


def test_forward_gradient_refuses_a_rolled_rnn_in_a_traced_step_only():
    """TensorFlow's forward mode cannot follow a variable read in a traced while loop: a
    rolled GRU is refused when the step is traced, naming the layer and the fixes (it
    failed inside the loop with TensorFlow's "variable without handle data" before).
    Eagerly, and unrolled in a traced step, the directional derivative through the GRU
    equals Keras's gradient dotted with the tangent."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4, 3)).astype("float32"), rng.integers(0, 3, size=6)
    model = gru_model(unroll=False)
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fg", "seed": 1})
    with pytest.raises(GraphError, match=r"recurrent layer 'gru.*'.*unroll=True.*run_eagerly"):
        model.fit(x, y, epochs=1, verbose=0)
    for unroll, run in ((False, lambda f, *a: f(*a)), (True, lambda f, *a: tf.function(f)(*a))):
        model = gru_model(unroll=unroll)
        model.compile(loss="sparse_categorical_crossentropy",
                      method={"name": "fg", "seed": 1})
        method = model.method
        credit.model.bind(method, model, x)
        g = flat(true_gradient(model, x, y))
        v = method.draw_tangents(model.trainable_variables, 0)
        jvp = run(lambda: method.directional_derivative(model, x, y, None, v)[0])
        np.testing.assert_allclose(float(jvp), g @ flat([t.numpy() for t in v]),
                                   rtol=1e-4, atol=1e-7)


def test_tangents_are_standard_normal_and_fresh_every_step():
    model = mlp((64, 64, 10))
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fg", "seed": 5})
    method = model.method
    draws = np.stack([flat([t.numpy() for t in method.draw_tangents(
        model.trainable_variables, 0, step=s)]) for s in range(20)])
    assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1) < 0.01
    corr = np.corrcoef(draws[:5])
    assert np.abs(corr - np.eye(5)).max() < 0.06  # 4 sigma for 4810 entries


def test_forward_gradient_is_unbiased():
    """The mean of 4000 estimates (the method's own tangents) lies within 10 degrees of
    the true gradient of a 23-parameter model (expected angle about 4.5 degrees)."""
    x, y = batch(n=16, inputs=4, classes=2)
    model = mlp((4, 3, 2))
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fg", "seed": 2})
    method = model.method
    credit.model.bind(method, model, x)
    g = flat(true_gradient(model, x, y))
    draw = tf.function(lambda k: method.draw_tangents(model.trainable_variables, k, step=0))
    tangents = np.stack([flat([t.numpy() for t in draw(tf.constant(k, "int64"))])
                         for k in range(4000)])
    mean = ((tangents @ g)[:, None] * tangents).mean(axis=0)
    angle = np.degrees(np.arccos(mean @ g / np.linalg.norm(mean) / np.linalg.norm(g)))
    assert angle < 10, angle


def estimates(perturb, k, seed, steps, sizes=(4, 8, 3)):
    """``steps`` estimates of compute_gradients with ``tangents=k`` on a fixed model and
    batch (fresh tangents every step: the step counter advances, the weights do not),
    and Keras's gradient."""
    x, y = batch(n=16, inputs=sizes[0], classes=sizes[-1])
    keras.utils.set_random_seed(0)  # the same weights for every k
    model = mlp(sizes)
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "fg", "seed": seed, "tangents": k, "perturb": perturb})
    g = flat(true_gradient(model, x, y))
    step = tf.function(lambda: credit.compute_gradients(
        model, tf.constant(x), tf.constant(y)).gradients)
    return np.stack([flat([t.numpy() for t in step()]) for _ in range(steps)]), g


@pytest.mark.parametrize("perturb", ["weights", "activities"])
def test_variance_falls_as_one_over_k_and_the_mean_is_the_gradient(perturb):
    """Multi-tangent forward gradients (Flügel et al. 2024): averaging K independent
    estimates divides the mean squared deviation from Keras's gradient by K, for weight
    (Baydin et al.) and activity (Ren et al.) perturbation alike; and the estimates'
    mean is the gradient.

    200 estimates at K = 1 and 200 at K = 8 (other seeds, so the two samples are
    independent), MLP 4-8-3 (67 weights), batch 16. The tolerance comes from the samples:
    the standard error of log(MSE_1 / MSE_8) by the delta method is
    sqrt(cv_1^2 / n + cv_8^2 / n) (cv: coefficient of variation of the squared
    deviations); the ratio must lie within 4 standard errors of 8, and that band must
    exclude 4 and 16 (the ratio of a 1/sqrt(K) or a 1/K^2 law), so the test can fail.
    Weight perturbation also has a closed form, E||(g.v)v - g||^2 = (n + 1)||g||^2 for
    v ~ N(0, I_n), checked within 4 standard errors.
    Unbiasedness: with all 400 estimates (each weighted by 1 / its variance, so the
    K = 8 ones count 8 times), ||mean - g||^2 must stay within 4 times its expected
    value for an unbiased estimator (sum of the estimates' variances x weights^2 /
    (sum of weights)^2); with activity perturbation the angle between the mean and g
    must also stay under 10 degrees (weight perturbation's 67 times ||g||^2 squared
    deviation per tangent leaves its mean about 11 degrees off after 1,800 tangents,
    as the first check expects)."""
    n, big = 200, 8
    draws = {k: estimates(perturb, k, seed, n) for k, seed in ((1, 3), (big, 4))}
    g = draws[1][1]
    np.testing.assert_allclose(draws[big][1], g)  # the same weights
    sq = {k: np.sum((est - g) ** 2, axis=1) for k, (est, _) in draws.items()}
    mse = {k: s.mean() for k, s in sq.items()}
    cv2 = {k: s.var(ddof=1) / s.mean() ** 2 for k, s in sq.items()}
    se = np.sqrt(cv2[1] / n + cv2[big] / n)
    log_ratio = np.log(mse[1] / mse[big])
    message = (f"{perturb}: MSE ratio K=1/K={big} {mse[1] / mse[big]:.2f}, "
               f"band x/÷ {np.exp(4 * se):.2f}")
    assert 4 * se < np.log(2), message  # the band excludes 4 and 16
    assert abs(log_ratio - np.log(big)) < 4 * se, message
    if perturb == "weights":
        dim = g.size
        for k in (1, big):
            expected = (dim + 1) * (g @ g) / k
            assert abs(np.log(mse[k] / expected)) < 4 * np.sqrt(cv2[k] / n), (
                k, mse[k], expected)
    # Unbiasedness: inverse-variance weighted mean of every estimate.
    est = np.concatenate([draws[1][0], draws[big][0]])
    w = np.concatenate([np.full(n, 1 / mse[1]), np.full(n, 1 / mse[big])])
    mean = w @ est / w.sum()
    expected = (n * mse[1] / mse[1] ** 2 + n * mse[big] / mse[big] ** 2) / w.sum() ** 2
    off = np.sum((mean - g) ** 2) / expected
    angle = np.degrees(np.arccos(mean @ g / np.linalg.norm(mean) / np.linalg.norm(g)))
    print(f"{message}; off {off:.2f}, angle {angle:.1f}")
    assert off < 4, (perturb, off, angle)
    if perturb == "activities":
        assert angle < 10, (perturb, off, angle)


def test_forward_gradient_runs_no_backward_pass(monkeypatch):
    x, y = batch()
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy", method="fg")

    original = tf.GradientTape.gradient

    def refuse(self, *args, **kwargs):
        # TensorFlow's eager forward accumulator builds its first JVP functions with a
        # tape of its own (which is why this test passed only after others had run):
        # refuse the backward passes that credit's code asks for.
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "credit" or caller.startswith("credit."):
            raise AssertionError(f"a backward pass was taken in {caller}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tf.GradientTape, "gradient", refuse)
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    assert all(g is not None for g in out.gradients)
    with pytest.raises(RuntimeError, match="has no backward pass"):
        model.method.signals(None)


# -- PEPITA ------------------------------------------------------------------------------


def relu(a):
    return np.maximum(a, 0)


def pepita_reference(model, x, y, F):
    w = [v.numpy().astype("float64") for v in model.trainable_variables]

    def forward(inp):
        h1 = relu(inp @ w[0] + w[1])
        h2 = relu(h1 @ w[2] + w[3])
        z = h2 @ w[4] + w[5]
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return h1, h2, p

    n = len(x)
    h1, h2, p = forward(x.astype("float64"))
    e = p - np.eye(p.shape[1])[y]  # per example
    xm = x + e @ F
    m1, m2, _ = forward(xm)
    return [xm.T @ (h1 - m1) / n, (h1 - m1).mean(0), m1.T @ (h2 - m2) / n,
            (h2 - m2).mean(0), m2.T @ e / n, e.mean(0)]


def pepita_model():
    return mlp(activation="relu")


def test_pepita_is_listed_for_dense_chains_only():
    assert "pepita" not in credit.available()
    assert "pepita" in credit.available(dense_chains=True)
    assert type(credit.get("PEPITA")) is credit.methods.Pepita


def test_pepita_updates_match_the_formula():
    x, y = batch(n=8)
    model = pepita_model()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "pepita", "seed": 4})
    F = model.method.feedback_matrices["input"].numpy().astype("float64")
    assert F.shape == (3, 12)
    bound = 0.05 * np.sqrt(6 / 12)
    assert np.abs(F).max() <= bound and np.abs(F).max() > 0.8 * bound
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    for got, want in zip(out.gradients, pepita_reference(model, x, y, F)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_pepita_learns_a_small_task(classification_data):
    x, y = classification_data
    model = pepita_model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  "sparse_categorical_crossentropy",
                  method={"name": "pepita", "seed": 0})
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0]


@pytest.mark.parametrize("layers,name", [
    ([keras.Input((8, 3)), keras.layers.Conv1D(4, 3, name="conv"), keras.layers.Flatten(),
      keras.layers.Dense(3)], "conv"),
    ([keras.Input((12,)), keras.layers.Dense(8), keras.layers.Dropout(0.5, name="drop"),
      keras.layers.Dense(3)], "drop"),
    ([keras.Input((12,)), keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn"),
      keras.layers.Dense(3)], "bn"),
])
def test_pepita_names_the_first_layer_it_cannot_train(layers, name):
    model = credit.Sequential(layers)
    with pytest.raises(GraphError, match=f"layer '{name}'"):
        model.compile(loss="mse", method="pepita")


def test_pepita_refuses_a_branching_model():
    inputs = keras.Input((12,))
    a = keras.layers.Dense(8, name="a")(inputs)
    b = keras.layers.Dense(8, name="b")(inputs)
    out = keras.layers.Dense(3)(keras.layers.Add()([a, b]))
    model = credit.Model(inputs, out)
    with pytest.raises(GraphError, match="PEPITA"):
        model.compile(loss="mse", method="pepita")


# The core contract (test_core's tests over credit.available()) for PEPITA, which that
# list leaves out because it trains Dense chains only; the core's models are Dense chains.

def test_pepita_every_hidden_block_gets_a_nonzero_update(classification_data,
                                                          regression_data):
    core.test_every_hidden_block_gets_a_nonzero_update("pepita", classification_data,
                                                       regression_data)


def test_pepita_config_round_trip():
    core.test_config_round_trip("pepita")


def test_pepita_second_step_does_not_retrace(classification_data, regression_data,
                                             monkeypatch):
    core.test_second_step_does_not_retrace("pepita", classification_data, regression_data,
                                           monkeypatch)


def test_pepita_run_eagerly_gives_the_same_weights(classification_data, regression_data):
    core.test_run_eagerly_gives_the_same_weights("pepita", classification_data,
                                                 regression_data)


def test_pepita_save_load_and_resume_exactly(classification_data, regression_data,
                                             tmp_path):
    core.test_save_load_and_resume_exactly("pepita", classification_data, regression_data,
                                           tmp_path)


def test_pepita_same_seeds_give_identical_weights(classification_data, regression_data):
    core.test_same_seeds_give_identical_weights("pepita", classification_data,
                                                regression_data)


def test_pepita_xla_step_matches_the_plain_one(classification_data):
    x, y = classification_data
    weights = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = pepita_model()
        model.compile("sgd", "sparse_categorical_crossentropy",
                      method={"name": "pepita", "seed": 1}, jit_compile=jit)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_layer_rules_name_the_forward_rules():
    model = pepita_model()
    model.compile(loss="sparse_categorical_crossentropy", method="pepita")
    names = [l.name for l in model.layers]
    assert "h_l - h'_l" in model.method.layer_rule(names[0])
    assert "h'_{L-1}^T e" in model.method.layer_rule(names[-1])
    assert "directional derivative" in credit.get("fg").layer_rule(names[0])


@pytest.mark.parametrize("name,hidden,last", [
    ("forward_gradient", "forward-mode directional derivative",
     "forward-mode directional derivative"),
    ("pepita", r"h'_{l-1}^T (h_l - h'_l)", r"h'_{L-1}^T e"),
])
def test_summary_names_the_forward_rule_of_every_layer(name, hidden, last):
    """The summary said "true gradient from the loss" for these layers: nothing
    reaches them backwards under a forward-only rule."""
    model = credit.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                               keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", method=name)
    table = credit.summary(model)
    assert hidden in table["signal"][0] and last in table["signal"][1]
    assert (table["transport"] == "none (no backward pass)").all()
    assert not table["signal"].str.contains("true gradient").any()


@pytest.mark.parametrize("name", ["forward_gradient", "pepita"])
def test_alignment_measures_a_forward_rule_without_changing_its_state(name):
    """The comparison's alignment callback asked these methods for signals they do not
    have: every forward-gradient run of experiments.compare failed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=32)
    model = credit.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                               keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", method=name)
    before = [v.numpy() for v in model.method.state.weights]
    table = credit.alignment(model, x, y)
    again = credit.alignment(model, x, y)
    assert len(table) == 2 and np.isfinite(table["update_cosine"]).all()
    np.testing.assert_array_equal(table["update_cosine"], again["update_cosine"])
    for v, value in zip(model.method.state.weights, before):
        np.testing.assert_array_equal(v.numpy(), value)
    by_block = credit.alignment(model, x, y, by="block")
    assert np.isfinite(by_block["update_cosine"]).all()


def test_backends_jvp_and_value_and_gradients_with_aux_equal_numpy():
    """credit.backends.jvp (the forward mode the methods use on both backends) along a
    variable's and an input's tangent, and value_and_gradients with an aux output, for
    f = sum(tanh(x W)): numpy's chain rule by hand."""
    rng = np.random.default_rng(3)
    x, w0 = rng.normal(size=(5, 4)), rng.normal(size=(4, 3))
    v, t = rng.normal(size=(4, 3)), rng.normal(size=(5, 4))
    w = keras.Variable(w0.astype("float32"))
    slope = 1 - np.tanh(x @ w0) ** 2

    def f(inp):
        h = keras.ops.tanh(keras.ops.matmul(inp, w))
        return keras.ops.sum(h), h

    xs = tf.constant(x, "float32")
    value, dvalue, h = credit.backends.jvp(f, [w], [tf.constant(v, "float32")], [xs],
                                           [tf.zeros_like(xs)], has_aux=True)
    np.testing.assert_allclose(float(value), np.tanh(x @ w0).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(dvalue), (slope * (x @ v)).sum(), rtol=1e-4)
    np.testing.assert_allclose(h.numpy(), np.tanh(x @ w0), atol=1e-6)
    _, dinput = credit.backends.jvp(lambda inp: f(inp)[0], [], [], [xs],
                                    [tf.constant(t, "float32")])
    np.testing.assert_allclose(float(dinput), (slope * (t @ w0)).sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="one tangent per variable"):
        credit.backends.jvp(lambda: f(xs)[0], [w], [])
    value, (g_w,), (g_x,), aux = credit.backends.value_and_gradients(
        f, [w], [xs], has_aux=True)
    np.testing.assert_allclose(g_w.numpy(), x.T @ slope, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_x.numpy(), slope @ w0.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux.numpy(), np.tanh(x @ w0), atol=1e-6)
