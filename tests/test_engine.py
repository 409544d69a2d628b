"""The version-2 engine on the models researchers train: ResNets, recurrent nets, transformers.

Every number is checked against an oracle: TensorFlow's own VJP (the transports), plain
backprop (FA with B = W, blockwise backprop, a synthesizer that returns the true
gradient), or a hand computation in numpy (FA and DFA on a residual MLP).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit import transports
from credit.graph import GraphError
from credit.methods import SyntheticGradients

L = keras.layers


def dense(t):
    return np.asarray(tf.convert_to_tensor(t))


def assert_grads_equal(got, expected, rtol=1e-5, atol=1e-6):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(dense(a), dense(b), rtol=rtol, atol=atol)


def grads(model, x, y, method, **kwargs):
    return credit.compute_gradients(model, tf.constant(x), tf.constant(y), method=method,
                                    **kwargs).gradients


# -- models -----------------------------------------------------------------------------


def resnet(input_shape=(8, 8, 2), classes=3, width=4):
    """A small CIFAR-style residual CNN: stem, two residual blocks (one projected), GAP."""
    inputs = keras.Input(input_shape)
    h = L.Conv2D(width, 3, padding="same", name="stem")(inputs)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.Activation("relu", name="stem_relu")(h)
    for i, (filters, stride) in enumerate([(width, 1), (2 * width, 2)]):
        r = L.Conv2D(filters, 3, strides=stride, padding="same", name=f"res{i}_a")(h)
        r = L.BatchNormalization(name=f"res{i}_bn_a")(r)
        r = L.Activation("relu", name=f"res{i}_relu_a")(r)
        r = L.Conv2D(filters, 3, padding="same", name=f"res{i}_b")(r)
        r = L.BatchNormalization(name=f"res{i}_bn_b")(r)
        skip = h if stride == 1 else L.Conv2D(filters, 1, strides=stride,
                                              name=f"res{i}_proj")(h)
        h = L.Activation("relu", name=f"res{i}_out")(L.Add(name=f"res{i}_add")([skip, r]))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return credit.Model(inputs, L.Dense(classes, activation="softmax", name="head")(h))


def transformer(vocab=20, steps=6, width=8, classes=3):
    """One encoder block: embedding, attention, layer norms, residual adds, feed-forward."""
    inputs = keras.Input((steps,), dtype="int32")
    h = L.Embedding(vocab, width, name="embed")(inputs)
    a = L.MultiHeadAttention(2, 4, name="attention")(h, h)
    h = L.LayerNormalization(name="ln_1")(L.Add(name="add_1")([h, a]))
    f = L.Dense(16, activation="relu", name="ff_1")(h)
    f = L.Dense(width, name="ff_2")(f)
    h = L.LayerNormalization(name="ln_2")(L.Add(name="add_2")([h, f]))
    h = L.GlobalAveragePooling1D(name="pool")(h)
    return credit.Model(inputs, L.Dense(classes, activation="softmax", name="head")(h))


def gru(steps=6, features=4, classes=3):
    inputs = keras.Input((steps, features))
    h = L.GRU(8, name="gru")(inputs)
    h = L.Dense(8, activation="tanh", name="hidden")(h)
    return credit.Model(inputs, L.Dense(classes, activation="softmax", name="head")(h))


def tcn(steps=12, features=3, classes=3):
    """Causal, dilated 1-D convolutions with a residual connection (a small TCN)."""
    inputs = keras.Input((steps, features))
    h = L.Conv1D(6, 3, padding="causal", activation="relu", name="c1")(inputs)
    r = L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu", name="c2")(h)
    h = L.Add(name="add")([h, r])
    h = L.Conv1D(6, 2, padding="causal", dilation_rate=4, activation="relu", name="c3")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return credit.Model(inputs, L.Dense(classes, activation="softmax", name="head")(h))


def data(kind, n=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    if kind == "resnet":
        return rng.normal(size=(n, 8, 8, 2)).astype("float32"), y
    if kind == "transformer":
        return rng.integers(0, 20, size=(n, 6)).astype("int32"), y
    if kind == "gru":
        return rng.normal(size=(n, 6, 4)).astype("float32"), y
    if kind == "tcn":
        return rng.normal(size=(n, 12, 3)).astype("float32"), y
    raise ValueError(kind)


BUILDERS = {"resnet": resnet, "transformer": transformer, "gru": gru, "tcn": tcn}


def compiled(kind, method, optimizer="sgd", seed=0):
    keras.utils.set_random_seed(seed)
    model = BUILDERS[kind]()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", method=method)
    return model


# -- transports: each adjoint with B = W is TensorFlow's own VJP --------------------------

LAYERS = [
    ("dense", lambda: L.Dense(5), (7,)),
    ("dense on sequences", lambda: L.Dense(5), (4, 7)),
    ("einsum dense", lambda: L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3),
                                           bias_axes="de"), (4, 6)),
    ("conv1d valid", lambda: L.Conv1D(4, 3), (9, 2)),
    ("conv1d same strided", lambda: L.Conv1D(4, 3, strides=2, padding="same"), (9, 2)),
    ("conv1d causal dilated", lambda: L.Conv1D(4, 3, padding="causal", dilation_rate=2),
     (9, 2)),
    ("conv1d grouped", lambda: L.Conv1D(4, 3, groups=2, padding="same"), (9, 2)),
    ("conv2d same strided", lambda: L.Conv2D(3, 3, strides=2, padding="same"), (7, 7, 2)),
    ("conv2d dilated", lambda: L.Conv2D(3, 3, dilation_rate=2), (8, 8, 2)),
    ("conv3d", lambda: L.Conv3D(2, 2, padding="same"), (4, 4, 4, 2)),
    ("conv1d transpose", lambda: L.Conv1DTranspose(3, 3, strides=2), (5, 2)),
    ("conv2d transpose", lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same",
                                                   output_padding=1), (4, 4, 2)),
    ("depthwise conv1d", lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (8, 3)),
    ("depthwise conv2d", lambda: L.DepthwiseConv2D(3, padding="same"), (6, 6, 3)),
    ("separable conv1d", lambda: L.SeparableConv1D(4, 3, padding="same"), (8, 3)),
    ("separable conv2d", lambda: L.SeparableConv2D(4, 3, strides=2), (7, 7, 3)),
]


@pytest.mark.parametrize("label, make, shape", LAYERS, ids=[row[0] for row in LAYERS])
def test_adjoint_with_the_layers_own_kernel_is_tensorflows_vjp(label, make, shape):
    rng = np.random.default_rng(0)
    layer = make()
    x = tf.constant(rng.normal(size=(2,) + shape).astype("float32"))
    layer.build(x.shape)
    # Random biases too: the adjoint must not depend on them.
    for v in layer.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
    g = tf.constant(rng.normal(size=out.shape).astype("float32"))
    expected = tape.gradient(out, x, output_gradients=g)
    got = transports.adjoint(layer, g, x, transports.kernels(layer))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The adjoint is linear in each kernel: crossing with 2W doubles it.
    kernels = transports.kernels(layer)
    doubled = transports.adjoint(layer, g, x, (2 * kernels[0],) + tuple(kernels[1:]))
    np.testing.assert_allclose(doubled, 2 * expected, rtol=1e-5, atol=1e-5)


def test_adjoint_of_a_lora_layer_uses_its_effective_kernel():
    rng = np.random.default_rng(1)
    layer = L.Dense(4)
    layer.build((None, 6))
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(rng.normal(size=(2, 4)).astype("float32"))
    x = tf.constant(rng.normal(size=(3, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
    g = tf.ones_like(out)
    np.testing.assert_allclose(transports.adjoint(layer, g, x, transports.kernels(layer)),
                               tape.gradient(out, x, output_gradients=g), rtol=1e-5)


def test_a_layer_type_without_a_transport_is_named():
    with pytest.raises(TypeError, match="'lstm' \\(ConvLSTM1D\\) has no transport.*Dense"):
        transports.kernel_names(L.ConvLSTM1D(3, 2, name="lstm"))


# -- the graph: blocks and points of real architectures -----------------------------------


def test_blocks_of_a_resnet_follow_single_paths_and_stop_at_merges():
    model = resnet()
    # Points on every block (not the default, which is on the residual stream, see
    # test_residual_points.py): the connectivity of points inside residual branches.
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "dfa", "at": "blocks"})
    graph = model.method.graph
    blocks = [[layer.name for layer in b.layers] for b in graph.blocks]
    assert blocks == [
        ["stem", "stem_bn", "stem_relu"],
        ["res0_a", "res0_bn_a", "res0_relu_a"], ["res0_b", "res0_bn_b"],
        ["res1_a", "res1_bn_a", "res1_relu_a"], ["res1_b", "res1_bn_b"], ["res1_proj"],
        ["head"]]
    assert [b.is_output for b in graph.blocks] == [False] * 6 + [True]
    assert graph.logits == ("activation", "head")
    assert not graph.is_chain()
    assert set(model.method.points) == {"stem_relu", "res0_relu_a", "res0_bn_b",
                                        "res1_relu_a", "res1_bn_b", "res1_proj"}
    # Connectivity: the stem's point feeds the first residual block's convolution and
    # its skip (through the addition), and nothing reaches the loss without a point.
    connect = graph.connect(model.method.points)
    assert set(connect["above"]["stem_relu"]) == {"res0_relu_a", "res1_relu_a", "res1_proj"}
    assert set(connect["below"]["res1_proj"]) == {"stem_relu", "res0_bn_b"}
    assert set(connect["to_output"]) == {"res1_bn_b", "res1_proj"}


def test_blocks_of_a_transformer_gru_and_subclassed_model():
    model = transformer()
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    assert [[l.name for l in b.layers] for b in model.method.graph.blocks] == [
        ["embed"], ["attention"], ["ff_1"], ["ff_2"], ["head"]]
    # The default points: after the embedding and where the stream leaves the
    # transformer block (after its second layer normalisation).
    assert list(model.method.points) == ["embed", "ln_2"]
    assert set(model.method.graph.transportable) >= {"ff_1", "ff_2", "head", "query", "key",
                                                     "value", "attention_output"}

    model = gru()
    model.compile(loss="sparse_categorical_crossentropy", method="fa")
    assert [[l.name for l in b.layers] for b in model.method.graph.blocks] == [
        ["gru"], ["hidden"], ["head"]]
    assert model.method.graph.is_chain()
    # The GRU is the first layer, but its recurrent kernel is crossed at every step.
    assert list(model.method.transported) == ["gru", "hidden", "head"]


def test_points_by_name_on_a_residual_block_and_errors_that_name_the_layer():
    model = resnet()
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "dfa", "at": ["res0_out", "res1_out"]})
    assert list(model.method.points) == ["res0_out", "res1_out"]
    assert [tuple(b.shape) for b in model.method.feedback_matrices.values()] == [
        (3, 8 * 8 * 4), (3, 4 * 4 * 8)]
    with pytest.raises(GraphError, match="no layer named 'res9'"):
        resnet().compile(loss="mse", method={"name": "dfa", "at": ["res9"]})
    with pytest.raises(GraphError, match="block 40.*7 blocks"):
        resnet().compile(loss="mse", method={"name": "sg", "at": [40]})


# -- oracles on the models users train -----------------------------------------------------


@pytest.mark.parametrize("kind", ["resnet", "transformer", "gru", "tcn"])
def test_feedback_alignment_with_b_equal_w_is_backprop(kind):
    x, y = data(kind)
    model = compiled(kind, "fa")
    for name, matrix in model.method.feedback_matrices.items():
        layer = model.method.graph.layers[name]
        for b, w in zip(matrix if isinstance(matrix, tuple) else (matrix,),
                        transports.kernels(layer)):
            b.assign(w)
    assert_grads_equal(grads(model, x, y, model.method), grads(model, x, y, "backprop"))


@pytest.mark.parametrize("kind", ["resnet", "transformer", "gru"])
def test_blockwise_backprop_carried_across_every_point_is_backprop(kind):
    x, y = data(kind)
    model = compiled(kind, "backprop")
    blockwise = credit.get({"name": "backprop", "blockwise": True})
    assert_grads_equal(grads(model, x, y, blockwise), grads(model, x, y, "backprop"),
                       atol=1e-6)
    assert len(blockwise.points) >= 2


class OracleSG(SyntheticGradients):
    """A 'synthesizer' that returns the true gradient at its point."""

    def synthetic_signal(self, name, trace):
        return trace.loss_gradients()[name]


def test_synthetic_gradients_with_the_true_gradient_is_backprop_on_a_resnet():
    x, y = data("resnet")
    model = compiled("resnet", "backprop")
    oracle = OracleSG()
    assert_grads_equal(grads(model, x, y, oracle), grads(model, x, y, "backprop"))
    assert list(oracle.points) == ["stem_relu", "res0_out", "res1_out"]
    oracle = OracleSG(at="blocks")  # inside the residual branches too
    assert_grads_equal(grads(model, x, y, oracle), grads(model, x, y, "backprop"))
    assert len(oracle.points) == 6


def residual_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    h1 = L.Dense(6, activation="tanh", name="d1")(inputs)
    h2 = L.Dense(6, activation="tanh", name="d2")(h1)
    out = L.Dense(3, activation="softmax", name="d3")(L.Add(name="add")([h1, h2]))
    model = credit.Model(inputs, out)
    return model


def _residual_forward(model, x, y):
    w1, b1, w2, b2, w3, b3 = [w.astype("float64") for w in model.get_weights()]
    x = x.astype("float64")
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    s = h1 + h2
    a = s @ w3 + b3
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(3)[y]) / len(x)
    return x, h1, h2, s, e, (w1, w2, w3)


def _residual_update(x, h1, s, e, g1, g2):
    return [x.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), s.T @ e, e.sum(0)]


def test_fa_and_dfa_on_a_residual_mlp_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 5)).astype("float32")
    y = rng.integers(0, 3, size=10)

    model = residual_mlp()
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fa", "seed": 2})
    fb = {k: v.numpy().astype("float64") for k, v in model.method.feedback_matrices.items()}
    assert sorted(fb) == ["d2", "d3"]
    x64, h1, h2, s, e, _ = _residual_forward(model, x, y)
    delta_s = e @ fb["d3"].T
    g2 = delta_s * (1 - h2**2)
    delta_h1 = delta_s + g2 @ fb["d2"].T  # the skip path plus d2's transport
    g1 = delta_h1 * (1 - h1**2)
    assert_grads_equal(grads(model, x, y, model.method),
                       _residual_update(x64, h1, s, e, g1, g2), rtol=1e-4, atol=1e-7)

    model = residual_mlp()
    # Points on every block, the residual branch d2 included (the default puts one on
    # the stream, at "add": test_residual_points.py).
    model.compile(loss="sparse_categorical_crossentropy",
                  method={"name": "dfa", "seed": 2, "at": "blocks"})
    fb = {k: v.numpy().astype("float64") for k, v in model.method.feedback_matrices.items()}
    assert sorted(fb) == ["d1", "d2"]
    x64, h1, h2, s, e, _ = _residual_forward(model, x, y)
    g1 = (e @ fb["d1"]) * (1 - h1**2)  # d1's own point: nothing from above crosses it
    g2 = (e @ fb["d2"]) * (1 - h2**2)
    assert_grads_equal(grads(model, x, y, model.method),
                       _residual_update(x64, h1, s, e, g1, g2), rtol=1e-4, atol=1e-7)


# -- every method on every architecture ---------------------------------------------------

METHODS = ["backprop", "feedback_alignment", "direct_feedback_alignment",
           "synthetic_gradients", "cdni"]


@pytest.mark.parametrize("kind", ["resnet", "transformer", "gru"])
def test_every_weight_moves_under_every_method(kind):
    x, y = data(kind, n=8)
    for name in [m for m in credit.available() if m != "kickback"]:
        model = compiled(kind, {"name": name, "seed": 1}, optimizer="adam")
        # Eagerly: the same train_step without tracing a graph per method; the traced
        # step is checked by the other tests.
        model.run_eagerly = True
        before = [v.numpy() for v in model.trainable_variables]
        # One step moves every weight under a method whose signals exist from the
        # start. Synthesizers start at zero and learn top down (a bootstrapped target
        # is the synthetic signal of the boundary above), so the lowest blocks move
        # after one step per boundary: five steps for these models.
        steps = 5 if model.method.name == "synthetic_gradients" else 1
        model.fit(x, y, epochs=steps, batch_size=8, verbose=0)
        stuck = [v.path for v, b in zip(model.trainable_variables, before)
                 if np.array_equal(v.numpy(), b)
                 # The key projection's bias never gets a gradient: softmax over the
                 # keys ignores a constant added to every score.
                 and not v.path.endswith("key/bias")]
        assert not stuck, f"{name} on {kind}: {stuck} did not move"


def test_summary_lists_the_rule_of_every_layer():
    model = resnet()
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    table = credit.summary(model).set_index("layer")
    assert list(table.index)[:3] == ["stem", "stem_bn", "res0_a"]
    assert len(table) == 12  # 6 convolutions, 5 batch norms, the head
    # The default points are on the residual stream: a residual branch learns from the
    # point where the stream leaves its block.
    for name in ("res0_a", "res0_bn_a", "res0_b", "res0_bn_b"):
        assert table.loc[name, "signal"] == "true gradient from point res0_out"
    assert table.loc["res1_proj", "signal"] == "true gradient from point res1_out"
    assert table.loc["head", "signal"] == "true gradient from the loss"
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "dfa", "at": "blocks"})
    table = credit.summary(model).set_index("layer")
    assert table.loc["res0_a", "signal"] == "true gradient from point res0_relu_a"
    assert table.loc["res0_bn_a", "signal"] == "true gradient from point res0_relu_a"
    assert table.loc["res0_b", "signal"] == "true gradient from point res0_bn_b"
    assert table.loc["res0_bn_b", "signal"].startswith("point: e B_p")
    assert table.loc["res0_bn_b", "block"] == 2
    assert table.loc["head", "signal"] == "true gradient from the loss"
    assert table.loc["stem", "transport"] == "none (its input gradient is not used)"
    model.compile(loss="sparse_categorical_crossentropy", method="fa")
    table = credit.summary(model).set_index("layer")
    assert table.loc["res0_a", "transport"].startswith("B (fixed random")
    assert table.loc["res0_bn_a", "transport"] == "true"
    assert (table["signal"] == "true gradient from the loss").all()
    gru_model = gru()
    gru_model.compile(loss="sparse_categorical_crossentropy", method="fa")
    table = credit.summary(gru_model).set_index("layer")
    assert table.loc["gru", "transport"] == ("B (fixed random, shaped like W), at every step "
                                             "through time (input and recurrent kernels)")
    assert str(credit.summary(gru_model)).count("gru") >= 1


# -- edge cases ------------------------------------------------------------------------


def test_dfa_with_a_global_pooling_head_sizes_b_by_the_output_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 4, size=8)
    keras.utils.set_random_seed(0)
    model = credit.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(5, 3, padding="same", activation="relu", name="conv"),
        L.Conv2D(4, 3, padding="same", name="logit_map"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Activation("softmax", name="probs"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method="dfa")
    assert model.method.graph.logits == ("input", "probs")
    assert tuple(model.method.feedback_matrices["conv"].shape) == (4, 6 * 6 * 5)
    trace = credit.model.record(model, tf.constant(x), tf.constant(y))
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(trace.output_error(), (p - np.eye(4)[y]) / len(x), atol=1e-6)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)


@pytest.mark.parametrize("name", ["feedback_alignment", "direct_feedback_alignment",
                                  "synthetic_gradients", "cdni"])
def test_causal_dilated_convolutions_train_under_every_method(name):
    x, y = data("tcn", n=16)
    model = compiled("tcn", {"name": name, "seed": 0}, optimizer="adam")
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(not np.array_equal(v.numpy(), b)
               for v, b in zip(model.trainable_variables, before))


def test_activity_regularizer_enters_the_gradient_and_leaves_no_stale_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.integers(0, 3, size=8)

    def build(reg):
        keras.utils.set_random_seed(0)
        return credit.Sequential([
            keras.Input((5,)),
            L.Dense(6, activation="tanh", name="h",
                    activity_regularizer=keras.regularizers.L2(0.1) if reg else None),
            L.Dense(3, activation="softmax", name="out")])

    with_reg, without = build(True), build(False)
    for m in (with_reg, without):
        m.compile(loss="sparse_categorical_crossentropy", method={"name": "dfa", "seed": 1})
    g_reg = grads(with_reg, x, y, with_reg.method)
    g_plain = grads(without, x, y, without.method)
    # The difference is exactly the penalty's gradient (the penalty sums 0.1 * h^2 and
    # Keras divides activity penalties by the batch size).
    layer = with_reg.get_layer("h")
    with tf.GradientTape() as tape:
        h = layer(tf.constant(x))
        penalty = 0.1 * tf.reduce_sum(tf.square(h)) / len(x)
    expected = tape.gradient(penalty, layer.trainable_variables)
    for got, e, base in zip(g_reg[:2], expected, g_plain[:2]):
        np.testing.assert_allclose(dense(got) - dense(base), e, rtol=1e-4, atol=1e-6)
    # model.losses now holds this batch's penalty, not a stale one.
    other = rng.normal(size=(8, 5)).astype("float32")
    grads(with_reg, other, y, with_reg.method)
    value = float(tf.add_n(with_reg.losses))
    h_other = layer(tf.constant(other)).numpy()
    assert value == pytest.approx(0.1 * (h_other**2).sum() / len(other), rel=1e-4)


def test_sample_weights_reach_a_custom_loss_function():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.integers(0, 3, size=8)
    w = rng.uniform(0, 2, size=8).astype("float32")
    model = residual_mlp()
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "fa", "seed": 0})
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    via_loss_fn = credit.compute_gradients(model, x, y, w, loss_fn=loss_fn).gradients
    compiled_loss = credit.compute_gradients(model, x, y, w).gradients
    unweighted = credit.compute_gradients(model, x, y, loss_fn=loss_fn).gradients
    assert_grads_equal(via_loss_fn, compiled_loss)
    assert not np.allclose(dense(via_loss_fn[0]), dense(unweighted[0]))
    with pytest.raises(TypeError, match="does not take sample weights"):
        credit.compute_gradients(model, x, y, w,
                                 loss_fn=lambda t, p: tf.reduce_mean(tf.square(p)))


def test_a_multi_output_model_trains_with_fa_and_dfa_and_cdni_names_its_outputs():
    """DFA's error of a two-headed model: both heads' errors (the softmax head's at its
    logits), concatenated."""
    inputs = keras.Input((5,))
    h = L.Dense(6, activation="tanh", name="trunk")(inputs)
    a = L.Dense(3, activation="softmax", name="class_head")(h)
    b = L.Dense(1, name="value_head")(h)
    model = credit.Model(inputs, [a, b])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    ys = [rng.integers(0, 3, size=8), rng.normal(size=(8, 1)).astype("float32")]
    losses = ["sparse_categorical_crossentropy", "mse"]
    model.compile(optimizer="sgd", loss=losses, method="fa")
    model.fit(x, ys, epochs=1, verbose=0)

    model.compile(optimizer="sgd", loss=losses, method="dfa")
    feedback = model.method.feedback_matrices["trunk"]
    assert tuple(feedback.shape) == (3 + 1, 6)
    signal = model.method.signals(credit.model.record(model, x, ys))["trunk"]
    head = model.get_layer("class_head")
    with tf.GradientTape() as tape:
        hidden = model.get_layer("trunk")(x)
        logits = tf.matmul(hidden, head.kernel) + head.bias
        value = model.get_layer("value_head")(hidden)
        tape.watch([logits, value])
        loss = (keras.losses.SparseCategoricalCrossentropy()(ys[0], tf.nn.softmax(logits))
                + keras.losses.MeanSquaredError()(ys[1], value))
    e = tf.concat(tape.gradient(loss, [logits, value]), axis=1)
    np.testing.assert_allclose(signal.numpy(), (e @ feedback).numpy(), rtol=1e-5, atol=1e-7)
    before = model.get_layer("trunk").kernel.numpy()
    model.fit(x, ys, epochs=1, verbose=0)
    assert not np.allclose(model.get_layer("trunk").kernel.numpy(), before)

    with pytest.raises(GraphError, match="one output.*has 2"):
        model.compile(optimizer="sgd", loss=losses, method="cdni")


# Unit roundoff of the compute dtype: float16 keeps 11 significant bits, bfloat16 8.
UNIT_ROUNDOFF = {"mixed_float16": 2.0**-11, "mixed_bfloat16": 2.0**-8}
_FLOAT32_GRADIENTS = {}  # the float32 reference, computed once for both policies


def _step_gradients(name, policy):
    """One fit step of the TCN under ``policy``, then the next step's gradients,
    unscaled, flattened. Eager: the same train_step without tracing a graph per method
    and policy (the traced step is checked by the XLA test)."""
    x, y = data("tcn", n=16)
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = tcn()
        optimizer = keras.optimizers.SGD(0.05)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**6)
        model.compile(optimizer, "sparse_categorical_crossentropy",
                      method={"name": name, "seed": 1}, run_eagerly=True)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        out = credit.compute_gradients(model, tf.constant(x), tf.constant(y))
        scale = float(model.optimizer.scale_loss(tf.constant(1.0)))
        flat = np.concatenate([dense(g).ravel() for g in out.gradients]) / scale
        assert np.isfinite(flat).all(), (policy, name)
        if policy != "float32":
            assert model.layers[1].compute_dtype != "float32"
        return flat
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_matches_float32_under_every_method(policy):
    """One fit step, then the next step's gradients, unscaled, against float32's.

    The bound is 64 units of roundoff of the compute dtype (3% for float16, 25% for
    bfloat16). Measured on this ReLU TCN: backprop's own gradients under Keras's mixed
    precision differ from float32's by 0.1% (float16) and 2-3% (bfloat16), the other
    methods by up to 1.9% and 7% (DRTP's batch-summed signals take the largest first
    step). A wrong or missing loss-scale unscaling, or a dropped signal, gives errors
    of 100% and more.
    """
    tolerance = 64 * UNIT_ROUNDOFF[policy]
    for name in [m for m in credit.available() if m != "kickback"]:
        if name not in _FLOAT32_GRADIENTS:
            _FLOAT32_GRADIENTS[name] = _step_gradients(name, "float32")
        a, b = _FLOAT32_GRADIENTS[name], _step_gradients(name, policy)
        error = np.linalg.norm(a - b) / np.linalg.norm(a)
        assert error < tolerance, f"{name} under {policy}: relative error {error:.3g}"


def _fit_weights(build, x, y, loss, method, jit):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile("sgd", loss, method={"name": method, "seed": 1}, jit_compile=jit)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def _scalar_chain():
    return credit.Sequential([keras.Input((12, 3)), L.Conv1D(4, 3, activation="tanh"),
                              L.Flatten(), L.Dense(6, activation="tanh"), L.Dense(1)])


@pytest.mark.parametrize("name", credit.available())
def test_xla_compiled_step_matches_the_plain_one(name):
    """Two steps with jit_compile=True against the plain graph: the causal TCN (the
    scalar-output chain for kickback), and the GRU classifier for synthetic gradients.

    brSF draws its magnitudes with TensorFlow's stateless generator, whose XLA kernel
    gives other numbers than its CPU kernel for the same seed (for every algorithm):
    under XLA brSF trains with other, identically distributed, draws. For it the test
    checks that XLA runs repeat exactly and stay within the spread of the draws.
    """
    x, y = data("tcn", n=8)
    cases = [(tcn, x, y, "sparse_categorical_crossentropy")]
    if name == "kickback":
        cases = [(_scalar_chain, x, y[:, None].astype("float32"), "mse")]
    if name == "synthetic_gradients":
        cases.append((gru, *data("gru", n=8), "sparse_categorical_crossentropy"))
    for build, inputs, targets, loss in cases:
        plain, compiled_ = (_fit_weights(build, inputs, targets, loss, name, jit)
                            for jit in (False, True))
        if name == "batchwise_random_sign_feedback":
            again = _fit_weights(build, inputs, targets, loss, name, True)
            for a, b in zip(compiled_, again):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(plain, compiled_):
                np.testing.assert_allclose(a, b, atol=5e-3)
            continue
        for a, b in zip(plain, compiled_):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------
# Reads before writes


def _ancestors(op):
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


@pytest.mark.parametrize("name", ["sign_symmetry", "kolen_pollack", "synthetic_gradients"])
def test_every_use_of_a_variable_read_runs_before_the_step_writes_it(name):
    """In the traced step, each op that uses a read of a weight or of the method's
    state (Kolen-Pollack's feedback product, synthetic gradients' backward MatMul
    through the weights, a sign method's ``sign(W)``) runs before any write to that
    variable. TensorFlow orders only the read itself: without credit's barrier after
    the backward pass (``credit.backends.tensorflow.after_backward``) this fails for Kolen-Pollack
    and synthetic gradients."""
    keras.utils.set_random_seed(0)
    model = credit.Sequential([keras.Input((6,)), L.Dense(8, activation="tanh"),
                               L.Dense(8, activation="tanh"), L.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", method={"name": name, "seed": 1})
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = np.arange(8) % 3
    model.fit(x, y, epochs=1, verbose=0)  # binds the method, builds the optimizer

    @tf.function
    def step(xb, yb):
        return model.train_step((xb, yb))

    graph = step.get_concrete_function(tf.constant(x), tf.constant(y)).graph
    resource = {id(internal): id(external) for external, internal in graph.captures}
    reads, writes = {}, {}
    for op in graph.get_operations():
        if op.inputs and op.inputs[0].dtype == tf.resource:
            key = resource.get(id(op.inputs[0]), id(op.inputs[0]))
            if op.type == "ReadVariableOp":
                reads.setdefault(key, []).append(op)
            elif op.type.startswith("Assign") and op.type.endswith("VariableOp"):
                writes.setdefault(key, []).append(op)
    # The model's weights and the method's state (Keras's optimizer orders its own).
    state = model.method.state.weights if model.method.state is not None else []
    ours = {id(v.value.handle) for v in list(model.trainable_variables) + list(state)}
    checked = 0
    for key, write_ops in writes.items():
        if key not in ours:
            continue
        for write in write_ops:
            before = _ancestors(write)
            # Reads ordered before this write (the others read what it wrote).
            uses = [c for r in reads.get(key, []) if r in before
                    for out in r.outputs for c in out.consumers()]
            late = [u.name for u in uses if u not in before and u is not write
                    # (an op whose result nothing uses is pruned, never run)
                    and any(o.consumers() for o in u.outputs)]
            assert not late, f"{name}: {late} may run after {write.name}"
            checked += len(uses)
    assert checked > 0
