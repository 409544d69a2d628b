"""Forward-Forward against a numpy reference: the label embedding, the per-layer goodness
losses and weight gradients, the softmax head's gradient, prediction by goodness; no
gradient crosses layers; it learns sklearn digits; it meets the core contract on Dense
chains; bad input gets clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit.graph import GraphError

import test_core as core


def mlp(sizes=(12, 16, 16, 3), activations=("relu", "tanh")):
    layers = [keras.Input((sizes[0],))]
    layers += [keras.layers.Dense(u, activation=a)
               for u, a in zip(sizes[1:-1], activations)]
    layers += [keras.layers.Dense(sizes[-1], activation="softmax")]
    return credit.Sequential(layers)


def batch(n=8, inputs=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, inputs)).astype("float32"),
            rng.integers(0, classes, size=n))


def compiled(config=None, **kwargs):
    model = mlp(**kwargs)
    model.compile("sgd", "sparse_categorical_crossentropy",
                  method={"name": "ff", "seed": 4, **(config or {})})
    return model


# -- numpy reference ---------------------------------------------------------------------

PHI = {"relu": (lambda a: np.maximum(a, 0), lambda a: (a > 0).astype("float64")),
       "tanh": (np.tanh, lambda a: 1 - np.tanh(a) ** 2)}


def softplus(z):
    return np.logaddexp(0, z)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def embed(x, labels, n):
    out = x.astype("float64").copy()
    out[:, :n] = np.eye(n)[labels] if labels.ndim == 1 else labels
    return out


def normalize(h, kind="rms"):
    norm = np.sqrt((h ** 2).sum(axis=1, keepdims=True))
    if kind == "rms":
        norm = norm / np.sqrt(h.shape[1])
    return h / (norm + 1e-8)


def weights(model):
    return [v.numpy().astype("float64") for v in model.trainable_variables]


def ff_pass(w, x, activations, kind="rms"):
    """Inputs u_l, pre-activations a_l and outputs h_l of every hidden layer."""
    us, as_, hs = [], [], []
    h = x
    for l, act in enumerate(activations):
        u = normalize(h, kind)
        a = u @ w[2 * l] + w[2 * l + 1]
        h = PHI[act][0](a)
        us.append(u), as_.append(a), hs.append(h)
    return us, as_, hs


def ff_reference(w, x, y, wrong, activations, theta, n, kind="rms", weight=None):
    """Per-layer losses and the hidden layers' weight gradients, layer by layer."""
    pos = ff_pass(w, embed(x, y, n), activations, kind)
    neg = ff_pass(w, embed(x, wrong, n), activations, kind)
    losses, grads = [], []
    batch_size = len(x)
    weight = np.ones(batch_size) if weight is None else weight
    for l, act in enumerate(activations):
        g_pos = (pos[2][l] ** 2).sum(1)
        g_neg = (neg[2][l] ** 2).sum(1)
        losses.append(np.mean(weight * (softplus(theta[l] - g_pos)
                                        + softplus(g_neg - theta[l]))))
        d_pos = -weight * sigmoid(theta[l] - g_pos) / batch_size  # dL/dg+
        d_neg = weight * sigmoid(g_neg - theta[l]) / batch_size   # dL/dg-
        kernel = bias = 0
        for (us, as_, hs), d in ((pos, d_pos), (neg, d_neg)):
            delta = d[:, None] * 2 * hs[l] * PHI[act][1](as_[l])
            kernel = kernel + us[l].T @ delta
            bias = bias + delta.sum(0)
        grads += [kernel, bias]
    return losses, grads


def plain_last_hidden(w, x, activations):
    h = x.astype("float64")
    for l, act in enumerate(activations):
        h = PHI[act][0](h @ w[2 * l] + w[2 * l + 1])
    return h


def head_reference(w, h, y):
    z = h @ w[-2] + w[-1]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(p.shape[1])[y]) / len(y)
    return [h.T @ e, e.sum(0)]


def step_gradients(model, x, y):
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
    return [g.numpy() for g in out.gradients], out


# -- the rule ----------------------------------------------------------------------------


def test_forward_forward_is_listed_for_dense_chains_only():
    assert "forward_forward" not in credit.available()
    assert "forward_forward" in credit.available(dense_chains=True)
    assert type(credit.get("ff")) is credit.methods.ForwardForward
    assert type(credit.get("Forward-Forward")) is credit.methods.ForwardForward


def test_label_embedding_replaces_the_first_features():
    x, y = batch()
    method = compiled().method
    np.testing.assert_array_equal(method.embed(x, y).numpy(), embed(x, y, 3))
    neutral = method.neutral(x).numpy()
    np.testing.assert_allclose(neutral[:, :3], 1 / 3)
    np.testing.assert_array_equal(neutral[:, 3:], x[:, 3:])


def test_wrong_labels_are_wrong_uniform_and_fresh_every_step():
    method = compiled().method
    y = np.tile(np.arange(3), 2000)
    first = method.wrong_labels(tf.constant(y), step=0).numpy()
    assert (first != y).all()
    for c in range(3):
        counts = np.bincount(first[y == c], minlength=3)
        assert counts[c] == 0 and abs(counts.max() - counts.sum() / 2) < 80  # ~4 sigma
    again = method.wrong_labels(tf.constant(y), step=0).numpy()
    np.testing.assert_array_equal(first, again)
    assert (method.wrong_labels(tf.constant(y), step=1).numpy() != first).mean() > 0.3


@pytest.mark.parametrize("config", [{}, {"threshold": 3.0, "normalization": "l2"}])
def test_layer_losses_and_weight_gradients_match_numpy(config):
    x, y = batch()
    model = compiled(config)
    method = model.method
    wrong = method.wrong_labels(tf.constant(y), step=0).numpy()
    w = weights(model)
    theta = [config.get("threshold", 8.0)] * 2  # default: half of 16 units
    kind = config.get("normalization", "rms")
    losses, want = ff_reference(w, x, y, wrong, ("relu", "tanh"), theta, 3, kind)
    got, out = step_gradients(model, x, y)
    np.testing.assert_allclose(float(out.logs["ff_loss"]), sum(losses), rtol=1e-5)
    for g, r in zip(got[:4], want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    pos, neg = (method.activities(method.embed(x, labels), training=True)[0]
                for labels in (y, wrong))
    np.testing.assert_allclose([float(v) for v in method.layer_losses(pos, neg)], losses,
                               rtol=1e-5)
    # The output layer: the model's loss on its own pass, at its input.
    head = head_reference(w, plain_last_hidden(w, x, ("relu", "tanh")), y)
    for g, r in zip(got[4:], head):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    assert int(method.step.numpy()) == 1


@pytest.mark.parametrize("shape", [(8,), (8, 1)])
def test_sample_weights_weigh_each_examples_terms(shape):
    x, y = batch()
    weight = np.random.default_rng(3).uniform(0, 2, size=8)
    model = compiled()
    method = model.method
    wrong = method.wrong_labels(tf.constant(y), step=0).numpy()
    losses, want = ff_reference(weights(model), x, y, wrong, ("relu", "tanh"), [8.0, 8.0],
                                3, weight=weight)
    out = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                   tf.constant(weight.reshape(shape), "float32"))
    np.testing.assert_allclose(float(out.logs["ff_loss"]), sum(losses), rtol=1e-5)
    for g, r in zip(out.gradients[:4], want):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-5, atol=1e-6)


def test_update_is_scaled_by_the_loss_scale():
    """Under a LossScaleOptimizer the optimizer divides the gradients by the loss scale,
    so the update that FF forms must carry it."""
    x, y = batch()
    grads = []
    for optimizer in (keras.optimizers.SGD(0.1), keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=8.0)):
        keras.utils.set_random_seed(0)
        model = mlp()
        model.compile(optimizer, "sparse_categorical_crossentropy",
                      method={"name": "ff", "seed": 0})
        grads.append(step_gradients(model, x, y)[0])
    assert all(np.abs(g).max() > 0 for g in grads[0])
    for g, p in zip(grads[1], grads[0]):
        np.testing.assert_allclose(g, 8.0 * p, rtol=1e-5, atol=1e-6)


def test_the_signal_path_is_refused():
    model = compiled()
    with pytest.raises(RuntimeError, match="compute_gradients"):
        model.method.signals(None)


def test_neutral_head_reads_the_normalised_neutral_pass():
    x, y = batch()
    model = compiled({"head": "neutral"})
    w = weights(model)
    neutral = embed(x, np.full((len(x), 3), 1 / 3), 3)
    h = normalize(ff_pass(w, neutral, ("relu", "tanh"))[2][-1])
    got, out = step_gradients(model, x, y)
    for g, r in zip(got[4:], head_reference(w, h, y)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    z = h @ w[-2] + w[-1]
    np.testing.assert_array_equal(model.method.predict(x, by="softmax"), z.argmax(1))


def test_no_gradient_crosses_layers():
    """Layer 1's update does not change when layer 2's weights do (nor layer 2's when the
    output layer's do): each layer gets its own loss's gradient and nothing else."""
    x, y = batch()
    model = compiled()
    before, _ = step_gradients(model, x, y)
    model.method.step.assign(0)  # the same wrong labels
    for v in model.trainable_variables[2:]:
        v.assign(v * 3.0 + 0.5)
    after, _ = step_gradients(model, x, y)
    for g, h in zip(before[:2], after[:2]):
        np.testing.assert_array_equal(g, h)
    assert not np.allclose(before[2], after[2])


def test_hardest_negatives_are_the_wrong_label_of_highest_goodness():
    x, y = batch(n=16, seed=1)
    model = compiled({"negatives": "hardest"})
    w = weights(model)
    scores = goodness_reference(w, x, ("relu", "tanh"), 3)
    scores[np.arange(len(y)), y] = -np.inf
    hardest = scores.argmax(1)
    _, want = ff_reference(w, x, y, hardest, ("relu", "tanh"), [8.0, 8.0], 3)
    got, _ = step_gradients(model, x, y)
    for g, r in zip(got[:4], want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def goodness_reference(w, x, activations, n):
    scores = []
    for c in range(n):
        hs = ff_pass(w, embed(x, np.full(len(x), c), n), activations)[2]
        used = hs[1:] if len(hs) > 1 else hs
        scores.append(sum((h ** 2).sum(1) for h in used))
    return np.stack(scores, axis=1)


@pytest.mark.parametrize("sizes,activations", [((12, 16, 16, 3), ("relu", "tanh")),
                                               ((12, 16, 3), ("relu",))])
def test_prediction_by_goodness_matches_numpy(sizes, activations):
    x, _ = batch(n=20)
    model = compiled(sizes=sizes, activations=activations)
    w = weights(model)
    want = goodness_reference(w, x, activations, 3)
    np.testing.assert_allclose(model.method.goodness_by_label(x).numpy(), want,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.method.predict(x, batch_size=7), want.argmax(1))


def test_one_hot_targets_give_the_same_update():
    x, y = batch()
    a, b = compiled(), compiled()
    b.set_weights(a.get_weights())
    b.compile("sgd", "categorical_crossentropy", method={"name": "ff", "seed": 4})
    got_a, _ = step_gradients(a, x, y)
    got_b, _ = step_gradients(b, x, np.eye(3, dtype="float32")[y])
    for g, h in zip(got_a, got_b):
        np.testing.assert_allclose(g, h, rtol=1e-6, atol=1e-7)


def test_learns_digits_well_above_chance():
    """sklearn digits, 64-64-64-10 ReLU, 6 epochs of Adam (about 4 s): chance is 0.1."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16).astype("float32")
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = mlp((64, 64, 64, 10), ("relu", "relu"))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], method={"name": "ff", "seed": 0})
    model.fit(x[:1400], y[:1400], epochs=6, batch_size=32, verbose=0)
    by_goodness = (model.method.predict(x[1400:]) == y[1400:]).mean()
    _, head = model.evaluate(x[1400:], y[1400:], verbose=0)
    assert by_goodness > 0.8 and head > 0.7, (by_goodness, head)


@pytest.mark.parametrize("head", ["model", "neutral"])
def test_the_step_reports_the_head_on_the_pass_it_trains_on(head):
    """fit's loss and metrics read the step's y_pred: with head="model" the model's own
    pass (what model.evaluate runs), with head="neutral" the neutral-label pass."""
    x, y = batch()
    model = compiled({"head": head})
    _, out = step_gradients(model, x, y)
    want = model(x) if head == "model" else model.method.head_output(x)
    np.testing.assert_allclose(out.y_pred.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    loss = keras.losses.SparseCategoricalCrossentropy()(y, want)
    np.testing.assert_allclose(float(out.loss), float(loss), rtol=1e-6)


# About 15 s each: the random draws (the same hash as forward_gradient's tangents) run
# in the slow set.
@pytest.mark.parametrize("negatives", [pytest.param("random", marks=pytest.mark.slow),
                                       "hardest"])
def test_xla_step_matches_the_plain_one(classification_data, negatives):
    x, y = classification_data
    weights_ = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = mlp()
        model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=jit,
                      method={"name": "ff", "seed": 1, "negatives": negatives})
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights_.append(model.get_weights())
    for a, b in zip(*weights_):
        # XLA's fused kernels round differently: 3.6e-6 apart on weights near 0.005
        # in 1 of 10 runs (before and after the JAX work alike).
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_alignment_measures_it_without_changing_its_state():
    """credit.alignment (the comparison's callback) calls compute_gradients, which
    advances the step that draws the wrong labels: it must be put back."""
    x, y = batch(n=32)
    model = compiled()
    first = credit.alignment(model, x, y)
    assert int(model.method.step.numpy()) == 0
    again = credit.alignment(model, x, y)
    assert len(first) == 3 and np.isfinite(first["update_cosine"]).all()
    np.testing.assert_array_equal(first["update_cosine"], again["update_cosine"])
    # The output layer's update is its true gradient (the model's loss at its input).
    assert first["update_cosine"].iloc[-1] == pytest.approx(1.0, abs=1e-6)


def test_summary_names_each_layers_rule():
    model = compiled()
    table = credit.summary(model)
    assert list(table["signal"].str.contains("goodness")) == [True, True, False]
    assert "softmax head" in table["signal"][2]
    assert (table["transport"] == "none (no backward pass)").all()


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("config,match", [
    ({"threshold": "2"}, r"threshold must be None .* or a finite number.*got '2' of type "
                         r"str"),
    ({"threshold": float("nan")}, "threshold must be"),
    ({"threshold": True}, "threshold must be"),
    ({"negatives": "worst"}, r"negatives must be one of 'random', 'hardest'; got 'worst'"),
    ({"normalization": "layer"}, "normalization must be one of"),
    ({"head": "mlp"}, "head must be one of"),
    ({"seed": 1.5}, "seed must be"),
    ({"treshold": 2.0}, "Did you mean 'threshold'"),
])
def test_bad_hyperparameters_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        credit.get({"name": "ff", **config})


@pytest.mark.parametrize("layers,match", [
    ([keras.Input((8, 3)), keras.layers.Conv1D(4, 3, name="conv"), keras.layers.Flatten(),
      keras.layers.Dense(3)], "layer 'conv'"),
    ([keras.Input((12,)), keras.layers.Dense(8), keras.layers.Dropout(0.5, name="drop"),
      keras.layers.Dense(3)], "layer 'drop'"),
    ([keras.Input((12,)), keras.layers.Dense(3, name="only")], "no hidden Dense layer"),
    ([keras.Input((12,)), keras.layers.Dense(8), keras.layers.Dense(1, name="scalar")],
     "at least 2 units.*'scalar' has 1"),
    ([keras.Input((2,)), keras.layers.Dense(8, name="first"), keras.layers.Dense(3)],
     "first 3 input features, but layer 'first' reads only 2"),
])
def test_models_it_cannot_train_are_refused_by_name(layers, match):
    model = credit.Sequential(layers)
    with pytest.raises(GraphError, match=match):
        model.compile(loss="mse", method="ff")


def test_predict_before_binding_and_softmax_without_its_head_are_refused():
    with pytest.raises(ValueError, match="not bound"):
        credit.get("ff").predict(np.zeros((2, 12)))
    model = compiled()
    with pytest.raises(ValueError, match="by='softmax'.*head='model'"):
        model.method.predict(np.zeros((2, 12), "float32"), by="softmax")
    with pytest.raises(ValueError, match="by must be"):
        model.method.predict(np.zeros((2, 12), "float32"), by="max")
    with pytest.raises(ValueError, match="needs the class labels y"):
        credit.compute_gradients(model, tf.zeros((2, 12)))


# -- the core contract (test_core's tests over credit.available() leave it out) ----------


def test_every_hidden_block_gets_a_nonzero_update(classification_data, regression_data):
    core.test_every_hidden_block_gets_a_nonzero_update("forward_forward",
                                                       classification_data, regression_data)


def test_config_round_trip():
    core.test_config_round_trip("forward_forward")
    method = credit.get({"name": "ff", "threshold": 2, "negatives": "hardest"})
    assert credit.get(method.get_config()).get_config() == method.get_config()


def test_second_step_does_not_retrace(classification_data, regression_data, monkeypatch):
    core.test_second_step_does_not_retrace("forward_forward", classification_data,
                                           regression_data, monkeypatch)


def test_run_eagerly_gives_the_same_weights(classification_data, regression_data):
    core.test_run_eagerly_gives_the_same_weights("forward_forward", classification_data,
                                                 regression_data)


def test_save_load_and_resume_exactly(classification_data, regression_data, tmp_path):
    core.test_save_load_and_resume_exactly("forward_forward", classification_data,
                                           regression_data, tmp_path)


def test_same_seeds_give_identical_weights(classification_data, regression_data):
    core.test_same_seeds_give_identical_weights("forward_forward", classification_data,
                                                regression_data)
