"""A model's method and its state: switches, recompiles, caches, attributes, summaries.

Each test pins one fault of issue 14 (its number in the test's docstring) against a
reference: numpy, the engine's own step, or the numbers the docstrings promise.
Method changes are transactional: ``compile`` and ``fit(method=)`` either complete or
leave the model as it was; after a failure the model still trains with the old method
and the same feedback matrices (checked against one step computed by hand).
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit import transports


@pytest.fixture(autouse=True)
def _fresh_keras():
    """A fixed seed, without clear_session (nothing here depends on layer names)."""
    keras.utils.set_random_seed(1234)
    yield


def mlp(outputs=3, out_activation="softmax", input_shape=True):
    layers = [keras.Input((12,))] if input_shape else []
    layers += [keras.layers.Dense(16, activation="tanh"),
               keras.layers.Dense(8, activation="tanh"),
               keras.layers.Dense(outputs, activation=out_activation)]
    return credit.Sequential(layers)


def feedback(model):
    return {n: b.numpy().copy() for n, b in model.method.feedback_matrices.items()}


def assert_trains_with(model, method, x, y, lr):
    """One full-batch SGD step of ``fit`` equals ``W - lr * g``, g the engine's gradients
    of ``method`` computed before the step (the reference), and ``method`` is unchanged."""
    before = [w.numpy() for w in model.trainable_variables]
    matrices = {n: b.numpy() for n, b in method.feedback_matrices.items()}
    grads = credit.compute_gradients(model, tf.constant(x), tf.constant(y), method=method)
    expected = [w - lr * g.numpy() for w, g in zip(before, grads.gradients)]
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert model.method is method
    for got, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    for name, value in matrices.items():
        np.testing.assert_array_equal(method.feedback_matrices[name].numpy(), value)


# -- 6: DRTP weights each example's target as the loss weights the example ------------


def numpy_drtp(model, x, y, w, B1, B2):
    w1, b1, w2, b2, w3, b3 = [v.astype("float64") for v in model.get_weights()]
    x = x.astype("float64")
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    a3 = h2 @ w3 + b3
    p = np.exp(a3 - a3.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(3)[y]
    e = w[:, None] * (p - onehot) / len(x)           # sum_over_batch_size
    target = w[:, None] * onehot                      # the weighted target
    g1 = (target @ B1) * (1 - h1**2)
    g2 = (target @ B2) * (1 - h2**2)
    return [x.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ e, e.sum(0)]


def test_drtp_signal_is_weighted_like_the_loss(classification_data):
    """6: sample weights (and so class_weight, Windows masks) weight DRTP's signal."""
    x, y = classification_data
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "drtp", "seed": 3})
    B1, B2 = [b.astype("float64") for b in feedback(model).values()]
    w = np.random.default_rng(0).uniform(0, 2, size=len(x)).astype("float32")
    w[::4] = 0.0
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y), tf.constant(w))
    for got, want in zip(out.gradients, numpy_drtp(model, x, y, w.astype("float64"), B1, B2)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)
    # All-zero weights: no loss, and no signal anywhere (was a hidden gradient of norm 9).
    zero = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                    tf.zeros(len(x)))
    assert float(zero.loss) == 0.0
    assert all(float(tf.norm(g)) == 0.0 for g in zero.gradients)


def test_drtp_follows_a_loss_that_divides_by_the_sum_of_the_weights(classification_data):
    """6: with reduction="mean_with_sample_weight" the weights are normalised by their sum."""
    x, y = classification_data
    model = mlp()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        reduction="mean_with_sample_weight"), method={"name": "drtp", "seed": 3})
    B1, B2 = [b.astype("float64") for b in feedback(model).values()]
    w = np.random.default_rng(1).uniform(0, 2, size=len(x))
    got = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                   tf.constant(w, "float32")).gradients
    # Keras divides by sum(w) instead of the count: the same as weights w * n / sum(w).
    want = numpy_drtp(model, x, y, w * len(x) / w.sum(), B1, B2)
    for g, v in zip(got[:4], want[:4]):
        np.testing.assert_allclose(g.numpy(), v, rtol=1e-4, atol=1e-6)


def test_drtp_weights_each_time_step_like_the_loss():
    """6: a weight per example and time step (the masks of credit.data.Windows)."""
    rng = np.random.default_rng(2)
    b, t, f, h, c = 4, 3, 5, 6, 2
    x = rng.normal(size=(b, t, f)).astype("float32")
    y = np.eye(c)[rng.integers(0, c, size=(b, t))].astype("float32")
    w = (rng.uniform(size=(b, t)) > 0.4).astype("float32")
    model = credit.Sequential([keras.Input((t, f)), keras.layers.Dense(h, activation="tanh"),
                               keras.layers.Dense(c, activation="softmax")])
    model.compile(loss="categorical_crossentropy", method={"name": "drtp", "seed": 0})
    (B,) = [v.astype("float64") for v in feedback(model).values()]
    assert B.shape == (t * c, t * h)
    w1, b1, w2, b2 = [v.astype("float64") for v in model.get_weights()]
    x64, y64, w64 = x.astype("float64"), y.astype("float64"), w.astype("float64")
    h1 = np.tanh(x64 @ w1 + b1)
    a2 = h1 @ w2 + b2
    p = np.exp(a2 - a2.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    e = w64[..., None] * (p - y64) / (b * t)
    target = (w64[..., None] * y64).reshape(b, t * c)
    g1 = (target @ B).reshape(b, t, h) * (1 - h1**2)
    want = [np.einsum("btf,bth->fh", x64, g1), g1.sum((0, 1)),
            np.einsum("bth,btc->hc", h1, e), e.sum((0, 1))]
    got = credit.compute_gradients(model, x, y, w).gradients
    for g, v in zip(got, want):
        np.testing.assert_allclose(g.numpy(), v, rtol=1e-4, atol=1e-6)


# -- 7, 8: summary --------------------------------------------------------------------


def test_summary_refuses_a_method_bound_to_another_model():
    """7: the other model's table was returned."""
    a, b = mlp(), mlp()
    a.compile(loss="mse", method="dfa")
    with pytest.raises(ValueError, match=r"bound to model '.*', not to model '.*'.*"
                                         r"method=method.get_config\(\)"):
        credit.summary(b, a.method)
    table = credit.summary(b, a.method.get_config())
    assert list(table["layer"]) == [layer.name for layer in b.layers]


class Box(keras.layers.Layer):
    """A layer that owns a weight and also has a sublayer its own op feeds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(4, activation="tanh")

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], shape[-1]), name="w")
        self.inner.build(shape)

    def call(self, x):
        return self.inner(keras.ops.matmul(x, self.w))


def test_summary_row_of_a_container_with_its_own_weights():
    """8: the container's own weights were said to pass nothing down."""
    model = credit.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="low"),
                               Box(name="box"), keras.layers.Dense(2, name="top")])
    model.compile(loss="mse", method="fa")
    row = credit.summary(model).set_index("layer").loc["box"]
    assert row["transport"] == "true (its own op)"
    assert row["signal"] == "true gradient from the loss, through its sublayers"
    # And it does pass the signal down: the layer below gets a gradient through box.w.
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    out = credit.compute_gradients(model, x, np.ones((5, 2), "float32"))
    assert float(tf.norm(out.gradients[0])) > 0
    model.compile(loss="mse", method="dfa")
    row = credit.summary(model).set_index("layer").loc["box"]
    inner = model.get_layer("box").inner.name
    assert row["signal"] == f"true gradient from point {inner}, through its sublayers"


# -- 9: feedback scale of grouped convolutions ----------------------------------------


@pytest.mark.parametrize("make,shape", [
    (lambda: keras.layers.Conv2D(8, 3, groups=4, padding="same"), (1, 5, 5, 8)),
    (lambda: keras.layers.Conv1D(6, 3, groups=2, padding="same"), (1, 7, 4)),
    (lambda: keras.layers.Conv2D(4, 3, padding="same"), (1, 5, 5, 2)),
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
     (1, 5, 5, 3)),
    (lambda: keras.layers.Dense(5), (1, 4)),
])
def test_fan_in_is_the_number_of_terms_the_adjoint_sums(make, shape):
    """9: a grouped convolution's fan-in counted every filter (B 2x too small)."""
    layer = make()
    layer.build(shape)
    ones = tuple(tf.ones_like(k) for k in transports.kernels(layer))
    x = tf.zeros(shape)
    g = tf.ones(layer.compute_output_shape(shape))
    adj = transports.adjoint(layer, g, x, ones).numpy()
    # With all-ones kernel and signal, an interior input entry is its number of terms.
    centre = adj[(0,) + tuple(s // 2 for s in shape[1:-1]) + (0,)]
    assert transports.fan_in(layer) == int(round(float(centre)))


def test_fa_and_kp_scale_of_a_grouped_convolution(images_8ch=None):
    """9: B of Conv2D(8, 3, groups=4) is uniform in 1/sqrt(3 * 3 * 8 / 4)."""
    model = credit.Sequential([keras.Input((6, 6, 8)),
                               keras.layers.Conv2D(8, 3, activation="relu", name="low"),
                               keras.layers.Conv2D(8, 3, groups=4, name="grouped"),
                               keras.layers.Flatten(), keras.layers.Dense(2)])
    bound = 1 / np.sqrt(18)
    for name in ("fa", "kp"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kp without weight decay
            model.compile(optimizer="sgd", loss="mse", method={"name": name, "seed": 0})
        B = model.method.feedback_matrices["grouped"].numpy()
        assert B.shape == (3, 3, 2, 8)
        assert np.abs(B).max() <= bound and np.abs(B).max() > 0.95 * bound


# -- 10: Kolen-Pollack without weight decay --------------------------------------------


def test_kolen_pollack_without_weight_decay_says_so():
    """10: with Adam's default (no decay) B never converges to W, and nothing said so."""
    model = mlp()
    with pytest.warns(UserWarning, match=r"optimizer Adam has no weight decay.*"
                                         r"keras.optimizers.AdamW\("):
        model.compile(optimizer="adam", loss="mse", method="kp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01), loss="mse",
                      method={"name": "kp", "seed": 1})
    assert model.method.optimizer_instance.weight_decay == pytest.approx(0.01)


def test_experiment_runs_of_kolen_pollack_use_weight_decay():
    """10: the runner's KP runs decay W (and so B); the others are unchanged."""
    from experiments.runner import configs
    kp = configs.complete({"method": "kp", "dataset": "digits", "seed": 0, "epochs": 1})
    decay = kp["optimizer_options"]["weight_decay"]
    assert decay == configs.KOLEN_POLLACK_WEIGHT_DECAY > 0
    assert configs.optimizer(kp).weight_decay == pytest.approx(decay)
    own = configs.complete({"method": "kp", "dataset": "digits", "seed": 0, "epochs": 1,
                            "optimizer_options": {"weight_decay": 0.5}})
    assert own["optimizer_options"] == {"weight_decay": 0.5}
    fa = configs.complete({"method": "fa", "dataset": "digits", "seed": 0, "epochs": 1})
    assert fa["optimizer_options"] == {}
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.compile(optimizer=configs.optimizer(kp), loss="mse", method="kp")


# -- 11, 12: failed switches leave the model as it was ---------------------------------


def test_failed_switch_in_fit_keeps_the_old_method_and_its_state(classification_data):
    """11: fit(method="kickback") on a 3-class model left an unbound Kickback behind."""
    x, y = classification_data
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  method={"name": "dfa", "seed": 2})
    dfa, B = model.method, feedback(model)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    train_function = model.train_function
    with pytest.raises(ValueError, match="kickback needs a model with one scalar output"):
        model.fit(x, y, epochs=1, verbose=0, method="kickback")
    assert model.method is dfa and model.train_function is train_function
    for name, value in B.items():
        np.testing.assert_array_equal(dfa.feedback_matrices[name].numpy(), value)
    assert_trains_with(model, dfa, x, y, lr=0.1)


def test_failed_switch_at_the_first_step_keeps_the_old_method(classification_data):
    """11: the same when the input shape is unknown and the method binds at the first step."""
    x, y = classification_data
    model = mlp(input_shape=False)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  method={"name": "fa", "seed": 2})
    fa = model.method
    with pytest.raises(ValueError, match="kickback needs a model with one scalar output"):
        model.fit(x, y, epochs=1, verbose=0, method="kickback")
    assert model.method is fa
    model.fit(x[:8], y[:8], epochs=1, verbose=0)  # binds fa
    assert_trains_with(model, fa, x, y, lr=0.1)


def test_rejected_compile_leaves_the_model_as_it_was(classification_data):
    """12: compile with another model's method left the model compiled with backprop."""
    x, y = classification_data
    other = mlp()
    other.compile(loss="mse", method="fa")
    model = mlp()
    optimizer = keras.optimizers.SGD(0.1)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  method={"name": "dfa", "seed": 2})
    dfa, B = model.method, feedback(model)
    with pytest.raises(ValueError, match="already bound to model"):
        model.compile(optimizer="adam", loss="mse", method=other.method)
    assert model.method is dfa and model.optimizer is optimizer
    assert model.loss == "sparse_categorical_crossentropy"
    for name, value in B.items():
        np.testing.assert_array_equal(dfa.feedback_matrices[name].numpy(), value)
    assert_trains_with(model, dfa, x, y, lr=0.1)
    # A model never compiled stays uncompiled.
    fresh = mlp()
    with pytest.raises(ValueError, match="already bound to model"):
        fresh.compile(optimizer="adam", loss="mse", method=other.method)
    assert not fresh.compiled and "_credit_method" not in fresh.__dict__


def test_rejected_compile_on_a_method_that_does_not_fit(classification_data):
    """12: a method that fails to bind (kickback on 3 classes) is rejected the same way."""
    x, y = classification_data
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  method={"name": "fa", "seed": 2})
    fa = model.method
    with pytest.raises(ValueError, match="kickback needs a model with one scalar output"):
        model.compile(optimizer="adam", loss="mse", method="kickback")
    assert model.method is fa and model.loss == "sparse_categorical_crossentropy"
    assert_trains_with(model, fa, x, y, lr=0.1)


# -- 13, 14: the same method, spelled differently or compiled again --------------------


def test_one_method_however_it_is_spelled(classification_data):
    """13: "dfa" and "DFA" gave two DFA instances with different B on one model."""
    x, y = classification_data
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Dense(6, activation="tanh"),
                              keras.layers.Dense(3)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    spellings = ["dfa", "DFA", " Direct-Feedback-Alignment ", {"name": "dfa"},
                 {"name": "DFA", "scale": None, "at": None, "seed": None}]
    outs = [credit.compute_gradients(plain, x, y, method=s, loss_fn=loss) for s in spellings]
    methods = plain.__dict__["_credit_loop_methods"]
    assert len(methods) == 1
    for out in outs[1:]:
        for a, b in zip(out.gradients, outs[0].gradients):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Another config is another method.
    credit.compute_gradients(plain, x, y, method={"name": "dfa", "seed": 1}, loss_fn=loss)
    assert len(methods) == 2
    # A credit model's own method, however it is spelled.
    model = mlp()
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    own = credit.compute_gradients(model, x, y).gradients
    for spelling in spellings:
        again = credit.compute_gradients(model, x, y, method=spelling).gradients
        for a, b in zip(again, own):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_recompiling_keeps_the_method_and_its_state(classification_data):
    """14: recompiling with the same method redrew B; without method= it became backprop."""
    x, y = classification_data
    model = mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="dfa")
    dfa, B = model.method, feedback(model)
    for method in (None, "dfa", "DFA", {"name": "direct_feedback_alignment"}):
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss="sparse_categorical_crossentropy", method=method)
        assert model.method is dfa
        for name, value in B.items():
            np.testing.assert_array_equal(dfa.feedback_matrices[name].numpy(), value)
    assert_trains_with(model, dfa, x, y, lr=0.5)  # the new learning rate
    model.compile(optimizer="sgd", loss="mse", method="fa")
    assert model.method.name == "feedback_alignment"
    model.compile(optimizer="sgd", loss="mse", method="backprop")
    assert model.method.name == "backprop"
    fresh = mlp()
    fresh.compile(optimizer="sgd", loss="mse")
    assert fresh.method.name == "backprop"


# -- 17: the attributes every method has -----------------------------------------------


@pytest.mark.parametrize("name", credit.available(stateful=True))
def test_every_method_has_the_promised_attributes_before_binding(name):
    """17: sign symmetry had no feedback_matrices at all; synthetic gradients' were None
    (and a property without a setter) until bound."""
    method = credit.get(name)
    for attr in ("feedback_matrices", "synthesizers"):
        assert getattr(method, attr) == {}, attr


@pytest.mark.parametrize("name", credit.available())
def test_every_method_has_the_promised_attributes(name):
    """17: sign symmetry had no feedback_matrices at all."""
    model = mlp(outputs=1, out_activation=None)
    method = credit.get(name)
    sg = isinstance(method, credit.methods.SyntheticGradients)
    assert tuple(method.points) == () and tuple(method.transported) == ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kp without weight decay
        model.compile(optimizer="sgd", loss="mse", method=method)
    for attr in ("feedback_matrices", "synthesizers"):
        assert isinstance(getattr(method, attr), dict), attr
    assert isinstance(method.points, tuple) and isinstance(method.transported, tuple)
    uses = {"feedback_alignment": "feedback_matrices", "kolen_pollack": "feedback_matrices",
            "direct_feedback_alignment": "feedback_matrices",
            "direct_random_target_projection": "feedback_matrices"}
    used = "synthesizers" if sg else uses.get(method.name)
    for attr in ("feedback_matrices", "synthesizers"):
        assert bool(getattr(method, attr)) == (used == attr), attr


def test_alignment_describes_this_models_method(classification_data):
    """7: alignment bound a fresh copy of another model's method (another B, seed=None);
    by name it now uses the model's own method, as compute_gradients does."""
    x, y = classification_data
    a, b = mlp(), mlp()
    a.compile(loss="sparse_categorical_crossentropy", method="dfa")
    b.compile(loss="sparse_categorical_crossentropy", method="dfa")
    with pytest.raises(ValueError, match=r"bound to model '.*', not to model '.*': its "
                                         r"numbers would describe the other model"):
        credit.alignment(b, x, y, method=a.method)
    own = credit.alignment(b, x, y)
    for spelling in ("dfa", "DFA", {"name": "dfa"}):
        again = credit.alignment(b, x, y, method=spelling)
        np.testing.assert_array_equal(again["update_cosine"].to_numpy(),
                                      own["update_cosine"].to_numpy())
