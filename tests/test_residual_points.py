"""Default feedback points on the residual stream (issue 15, item 3).

Point methods put one point where the stream leaves each residual block (after its
merge and the normalisation or activation that follows it; a transformer block's
attention and feed-forward sublayers count as one block), none on the blocks of the
residual branches, and one per block elsewhere. ``at="residuals"`` puts one after every
merge; ``at="blocks"`` is the earlier placement, every hidden block's output.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
from credit import graph as graph_lib

L = keras.layers


def assert_grads_equal(got, want, atol=1e-5, rtol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, dtype="float64"), w, atol=atol, rtol=rtol)


def resnet():
    """Stem, an identity residual block, a projected one (stride 2), pooling, head."""
    inputs = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.Activation("relu", name="stem_relu")(h)
    for i, (filters, stride) in enumerate([(4, 1), (8, 2)]):
        r = L.Conv2D(filters, 3, strides=stride, padding="same", name=f"res{i}_a")(h)
        r = L.BatchNormalization(name=f"res{i}_bn_a")(r)
        r = L.Activation("relu", name=f"res{i}_relu_a")(r)
        r = L.Conv2D(filters, 3, padding="same", name=f"res{i}_b")(r)
        r = L.BatchNormalization(name=f"res{i}_bn_b")(r)
        skip = h if stride == 1 else L.BatchNormalization(name=f"res{i}_proj_bn")(
            L.Conv2D(filters, 1, strides=stride, name=f"res{i}_proj")(h))
        h = L.Activation("relu", name=f"res{i}_out")(L.Add(name=f"res{i}_add")([r, skip]))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(h))


def preactivation_resnet():
    """keras.applications' ResNetV2 pattern: BN-ReLU before each convolution, the sum
    itself is the stream, a final BN-ReLU after the last block."""
    inputs = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    for i in range(2):
        r = L.Activation("relu", name=f"b{i}_preact_relu")(
            L.BatchNormalization(name=f"b{i}_preact_bn")(x))
        r = L.Conv2D(4, 3, padding="same", name=f"b{i}_conv")(r)
        x = L.Add(name=f"b{i}_out")([x, r])
    x = L.Activation("relu", name="post_relu")(L.BatchNormalization(name="post_bn")(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(x))


def encoder(blocks=1, prenorm=False, add_layers=True, steps=4, features=3, width=8):
    """Transformer encoder blocks over ``steps`` tokens; post-norm (Vaswani et al.) or
    pre-norm, the residual sums as Add layers or as ``+`` between layers."""
    inputs = keras.Input((steps, features))
    x = L.Dense(width, name="embed")(inputs)

    def add(i, j, a, b):
        return L.Add(name=f"add{j}_{i}")([a, b]) if add_layers else a + b

    for i in range(blocks):
        h = L.LayerNormalization(name=f"ln1_{i}")(x) if prenorm else x
        h = L.MultiHeadAttention(2, 4, name=f"mha_{i}")(h, h)
        x = add(i, 1, x, h)
        if not prenorm:
            x = L.LayerNormalization(name=f"ln1_{i}")(x)
        h = L.LayerNormalization(name=f"ln2_{i}")(x) if prenorm else x
        h = L.Dense(16, activation="relu", name=f"ff1_{i}")(h)
        h = L.Dense(width, name=f"ff2_{i}")(h)
        x = add(i, 2, x, h)
        if not prenorm:
            x = L.LayerNormalization(name=f"ln2_{i}")(x)
    if prenorm:
        x = L.LayerNormalization(name="final_ln")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(x))


def analyse(model):
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype)
    return graph_lib.analyse(model, spec)


# -- placement ---------------------------------------------------------------------------


def test_resnet_points_sit_where_the_stream_leaves_each_residual_block():
    graph = analyse(resnet())
    assert [r.merge for r in graph.residuals] == ["res0_add", "res1_add"]
    assert [r.point for r in graph.residuals] == ["res0_out", "res1_out"]
    # The branch and the projection shortcut are the residual block's region.
    region = {graph.nodes[i].layer.name for i in graph.residuals[1].region}
    assert region == {"res1_a", "res1_bn_a", "res1_relu_a", "res1_b", "res1_bn_b",
                      "res1_proj", "res1_proj_bn"}
    assert graph.points("stream") == ["stem_relu", "res0_out", "res1_out"]
    assert graph.points("blocks") == ["stem_relu", "res0_relu_a", "res0_bn_b",
                                      "res1_relu_a", "res1_bn_b", "res1_proj_bn"]


def test_preactivation_resnet_points_are_the_sums_and_the_final_activation():
    graph = analyse(preactivation_resnet())
    # b0_out is read by the next block's BN and by the next sum: it is the stream. The
    # last sum is read by the final BN-ReLU alone: the stream leaves after it.
    assert graph.points("stream") == ["stem", "b0_out", "post_relu"]


@pytest.mark.parametrize("add_layers", [True, False], ids=["Add layers", "+ ops"])
def test_post_norm_transformer_points_follow_each_layer_normalisation(add_layers):
    model = encoder(blocks=2, add_layers=add_layers)
    graph = analyse(model)
    # One point per transformer block, after its second normalisation (LightOn's
    # "macro" placement); one per residual merge with at="residuals".
    assert graph.points("stream") == ["embed", "ln2_0", "ln2_1"]
    assert graph.points("residuals") == ["embed", "ln1_0", "ln2_0", "ln1_1", "ln2_1"]
    assert graph.points("blocks") == ["embed", "mha_0", "ff1_0", "ff2_0", "mha_1",
                                      "ff1_1", "ff2_1"]
    regions = [sorted(graph.nodes[i].layer.name for i in r.region)
               for r in graph.residuals]
    assert regions == [["mha_0"], ["ff1_0", "ff2_0"], ["mha_1"], ["ff1_1", "ff2_1"]]


def test_pre_norm_transformer_points_are_the_sums():
    graph = analyse(encoder(blocks=2, prenorm=True))
    assert graph.points("stream") == ["embed", "add2_0", "final_ln"]
    assert graph.points("residuals") == ["embed", "add1_0", "add2_0", "add1_1", "final_ln"]
    regions = [sorted(graph.nodes[i].layer.name for i in r.region)
               for r in graph.residuals]
    assert regions[0] == ["ln1_0", "mha_0"]
    assert regions[1] == ["ff1_0", "ff2_0", "ln2_0"]


def test_pre_norm_sums_that_no_layer_returns_keep_branch_points_and_warn():
    graph = analyse(encoder(blocks=2, prenorm=True, add_layers=False))
    # Each sum but the last is read by the next block's norm and by the next sum: no
    # layer returns the stream. The last one is read by the final norm alone.
    assert [r.point for r in graph.residuals] == [None, None, None, "final_ln"]
    with pytest.warns(UserWarning, match="no layer's output.*keras.layers.Add"):
        points = graph.points("stream")
    assert points == ["embed", "mha_0", "ff1_0", "ff2_0", "mha_1", "final_ln"]


def test_an_attention_residual_keeps_its_point_unless_another_residual_follows():
    inputs = keras.Input((4, 3))
    x = L.Dense(8, name="embed")(inputs)
    h = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.LayerNormalization(name="ln")(L.Add(name="add")([x, h]))
    x = L.Dense(8, activation="relu", name="after")(x)  # no residual follows
    x = L.GlobalAveragePooling1D(name="pool")(x)
    graph = analyse(keras.Model(inputs, L.Dense(3, name="head")(x)))
    # "after"'s block ends at the pooling.
    assert graph.points("stream") == graph.points("residuals") == ["embed", "ln", "pool"]


def test_chains_and_additions_without_a_skip_keep_a_point_per_block():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="tanh"),
                              L.Dense(4, activation="tanh"), L.Dense(3)])
    graph = analyse(model)
    assert graph.residuals == []
    assert graph.points("stream") == graph.points("blocks")
    # Two towers on two inputs, summed: the paths never split, so no residual.
    a, b = keras.Input((3,)), keras.Input((2,))
    h = L.Add(name="sum")([L.Dense(4, name="ta")(a), L.Dense(4, name="tb")(b)])
    model = keras.Model([a, b], L.Dense(2, name="out")(L.Dense(4, name="mid")(h)))
    graph = graph_lib.analyse(model, [tf.TensorSpec((None, 3)), tf.TensorSpec((None, 2))])
    assert graph.residuals == []
    assert graph.points("stream") == ["ta", "tb", "mid"]
    # A tensor added to itself: one path, nothing skipped.
    inputs = keras.Input((3,))
    h = L.Dense(4, name="d")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Add(name="twice")([h, h])))
    assert analyse(model).residuals == []
    # A position table added in a layer's call is not a residual merge either.
    inputs = keras.Input((4, 3))
    h = L.Dense(8, name="embed")(inputs)
    h = h + np.ones((1, 4, 8), "float32")
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(8, name="mid")(h)))
    graph = analyse(model)
    assert graph.residuals == [] and graph.points("stream") == ["embed", "mid"]


def test_a_residual_whose_sum_is_the_output_gets_no_point():
    inputs = keras.Input((5,))
    h = L.Dense(3, name="d1")(inputs)
    out = L.Add(name="sum")([h, L.Dense(3, name="d2")(h)])
    graph = analyse(keras.Model(inputs, out))
    # d2 is on the branch and "sum" is the output: the loss gradient arrives there
    # (and through the skip at d1, an output block).
    assert [r.point for r in graph.residuals] == ["sum"]
    assert graph.points("stream") == graph.points("blocks") == []


@pytest.mark.parametrize("method", ["dfa", "drtp", "sg", "cdni", "local_losses"])
def test_point_methods_default_to_the_stream_and_take_at_blocks(method):
    model = credit.wrap(encoder(blocks=1))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  method={"name": method, "seed": 0})
    assert list(model.method.points) == ["embed", "ln2_0"]
    assert model.method.get_config()["at"] is None
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  method={"name": method, "seed": 0, "at": "blocks"})
    assert list(model.method.points) == ["embed", "mha_0", "ff1_0", "ff2_0"]
    config = model.method.get_config()
    assert config["at"] == "blocks"
    assert credit.get(config).at == "blocks"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  method={"name": method, "seed": 0, "at": "stream"})
    assert list(model.method.points) == ["embed", "ln2_0"]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  method={"name": method, "seed": 0, "at": "residuals"})
    assert list(model.method.points) == ["embed", "ln1_0", "ln2_0"]


def test_summary_shows_the_stream_points():
    model = credit.wrap(encoder(blocks=1))
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    table = credit.summary(model).set_index("layer")
    assert table.loc["ln2_0", "signal"].startswith("point: e B_p")
    for name in ("ln1_0", "ff1_0", "query", "attention_output"):
        assert table.loc[name, "signal"] == "true gradient from point ln2_0"


def test_a_bad_placement_names_the_argument():
    with pytest.raises(ValueError, match="at must be None or 'stream'.*got 3.5"):
        credit.get({"name": "dfa", "at": 3.5})
    model = credit.wrap(encoder(blocks=1))
    with pytest.raises(graph_lib.GraphError, match="no layer named 'streams'"):
        model.compile(loss="sparse_categorical_crossentropy",
                      method={"name": "dfa", "at": "streams"})


# -- DFA at the stream points against numpy ---------------------------------------------


def residual_mlp():
    """d1 -> [d2 branch] -> Add -> tanh -> head: one residual block and a stem."""
    inputs = keras.Input((5,))
    h1 = L.Dense(6, activation="tanh", name="d1")(inputs)
    h2 = L.Dense(6, activation="tanh", name="d2")(h1)
    s = L.Activation("tanh", name="out")(L.Add(name="add")([h1, h2]))
    return credit.Model(inputs, L.Dense(3, activation="softmax", name="head")(s))


def test_dfa_at_the_stream_points_matches_numpy():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 5)).astype("float32")
    y = rng.integers(0, 3, size=10)
    model = residual_mlp()
    model.compile(loss="sparse_categorical_crossentropy", method={"name": "dfa", "seed": 2})
    assert list(model.method.points) == ["d1", "out"]
    b = {k: v.numpy().astype("float64") for k, v in model.method.feedback_matrices.items()}
    w1, b1, w2, b2, w3, b3 = [w.astype("float64") for w in model.get_weights()]
    x64 = x.astype("float64")
    h1 = np.tanh(x64 @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    s = np.tanh(h1 + h2)
    a = s @ w3 + b3
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(3)[y]) / len(x)
    # The stream point's signal e B_out crosses the block's own tanh and its branch by
    # true backprop; d1's own point cuts what arrives there from above.
    g_sum = (e @ b["out"]) * (1 - s**2)
    g2 = g_sum * (1 - h2**2)
    g1 = (e @ b["d1"]) * (1 - h1**2)
    want = [x64.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), s.T @ e, e.sum(0)]
    got = credit.compute_gradients(model, tf.constant(x), tf.constant(y),
                                   method=model.method).gradients
    assert_grads_equal(got, want, atol=1e-6, rtol=1e-5)


# -- DFA trains a post-norm encoder at its default points --------------------------------


def _digits_encoder(method, seed, epochs):
    from types import SimpleNamespace

    from credit import data
    from experiments.runner.models import build_model

    ds = data.load("digits", seed=0)
    x, xt = (a.reshape(-1, 8, 8).astype("float32") for a in (ds.x_train, ds.x_test))
    view = SimpleNamespace(x_train=x, x_test=xt, y_train=ds.y_train, y_test=ds.y_test,
                           num_classes=10, task="classification", name="digits")
    keras.utils.set_random_seed(seed)
    model = build_model({"type": "transformer", "dim": 32, "heads": 2, "layers": 2,
                         "ff": 64, "dropout": 0.0, "output_activation": None}, view)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], method=method)
    return model, (x, ds.y_train), (xt, ds.y_test)


def test_digits_encoder_default_points_are_on_the_stream():
    model, _, _ = _digits_encoder({"name": "dfa", "seed": 0}, seed=0, epochs=0)
    graph = model.method.graph
    norms = [n for n, layer in graph.layers.items()
             if isinstance(layer, L.LayerNormalization)]
    # After the positional encoding, then after each block's second normalisation.
    assert len(norms) == 4
    points = list(model.method.points)
    assert type(graph.point_layer(points[0])).__name__ == "PositionalEncoding"
    assert points[1:] == graph.order(norms)[1::2]


@pytest.mark.slow
def test_dfa_trains_a_post_norm_encoder_on_digits_at_its_default_points():
    """About 60 s. Measured (results/zoo/dfa_stream_points.txt, 10 epochs, 3 seeds):
    backprop 0.94-0.96; DFA 0.80-0.91 at the default points, 0.21-0.48 at "blocks"."""
    model, (x, y), (xt, yt) = _digits_encoder({"name": "dfa", "seed": 0}, seed=0, epochs=10)
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    accuracy = model.evaluate(xt, yt, verbose=0)[1]
    assert accuracy > 0.7, accuracy  # chance is 0.1
