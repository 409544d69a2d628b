"""Synthesizers and local-loss heads sized for large models: parameter counts against
hand-written formulas, the budget error raised before anything is built, the point cap,
the size table, and every variable moving on a small ResNet."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import credit  # noqa: E402
from credit.methods import _synthesizers as sg  # noqa: E402
from credit.methods import local_losses as ll  # noqa: E402
from credit.methods import synthetic_gradients as sgm  # noqa: E402

L = keras.layers


def cnn(channels=12, classes=3):
    """Conv(channels) -> Conv(5) -> Conv(3) -> pool -> Dense: points "wide" (wider
    than the tests' bounds), "narrow" and "gap" (a dense boundary)."""
    return credit.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(channels, 3, padding="same", activation="relu", name="wide"),
        L.Conv2D(5, 3, padding="same", activation="relu", name="narrow"),
        L.Conv2D(3, 3, padding="same", activation="relu", name="top"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(classes, activation="softmax", name="out")])


def compiled(model, method):
    model.compile("adam", "sparse_categorical_crossentropy", method=method)
    credit.summary(model)  # binds the method
    return method


def n_weights(layer):
    return sum(int(np.prod(v.shape)) for v in layer.weights)


# -- synthesizer sizes ------------------------------------------------------------------


@pytest.mark.parametrize("conditioned", [False, True])
def test_default_bottleneck_synthesizer_counts_match_the_formula(conditioned):
    c, w, k, cond = 12, 8, 3, 3 if conditioned else 0
    method = compiled(cnn(c), credit.methods.SyntheticGradients(
        seed=0, conditioned=conditioned, width=w, kernel_size=k))
    wide, narrow = method.synthesizers["wide"], method.synthesizers["narrow"]
    # Wider than the bound: 1x1 down to w, depthwise kxk, 1x1 back up (zeros).
    assert [type(l) for l in wide.stack] == [L.Conv2D, L.DepthwiseConv2D, L.Conv2D]
    assert [l.kernel_size for l in (wide.stack[0], wide.stack[2])] == [(1, 1), (1, 1)]
    formula = ((c + cond) * w + w) + (k * k * w + w) + (w * c + c)
    assert n_weights(wide) == formula
    assert not np.any(wide.stack[-1].kernel.numpy())  # first signals are zero
    # Within the bound: DNI's form, one kxk convolution at the block's channels.
    assert [type(l) for l in narrow.stack] == [L.Conv2D]
    assert n_weights(narrow) == k * k * (5 + cond) * 5 + 5
    # The library's estimate (made before building) and the table agree.
    sizes = method.point_parameters()
    assert list(sizes) == ["wide", "narrow", "gap"]
    assert sizes["wide"] == formula and sizes["narrow"] == k * k * (5 + cond) * 5 + 5
    assert sizes["gap"] == (3 + cond) * 3 + 3  # dense boundary: h A + y B + c
    assert sizes["wide"] == sg.synthesizer_parameters(
        (6, 6, c), kind="linear", condition_units=cond, kernel_size=k, width=w)


def test_mlp_bottleneck_uses_separable_convolutions_capped_at_width():
    c, w, k = 12, 8, 3
    method = compiled(cnn(c), credit.methods.SyntheticGradients(
        seed=0, synthesizer="mlp", hidden_filters=(16, 4), width=w, kernel_size=k))
    wide = method.synthesizers["wide"]
    assert [type(l) for l in wide.stack] == [L.Conv2D, L.SeparableConv2D,
                                             L.SeparableConv2D, L.Conv2D]
    assert [l.filters for l in wide.stack] == [w, w, 4, c]  # 16 capped at 8
    formula = ((c * w + w) + (k * k * w + w * w + w) + (k * k * w + w * 4 + 4)
               + (4 * c + c))
    assert n_weights(wide) == formula == method.point_parameters()["wide"]


@pytest.mark.parametrize("shape, kwargs", [
    ((9, 7), {"kernel_size": 3, "width": 4}),                       # Conv1D map
    ((9, 7), {"kernel_size": 3, "width": 4, "kind": "mlp", "hidden_filters": (5, 2)}),
    ((7, 5, 5), {"kernel_size": 3, "width": 4, "data_format": "channels_first",
                 "condition_units": 2}),
    ((3, 3, 3, 6), {"kernel_size": 2, "width": 4, "kind": "mlp", "hidden_filters": (3,)}),
    ((5, 5, 6), {"kernel_size": (3, 1), "width": None, "kind": "mlp",
                 "hidden_filters": (4,)}),
    ((10,), {"kind": "mlp", "hidden_units": (7, 3), "condition_units": 4}),
])
def test_estimate_equals_the_built_synthesizer(shape, kwargs):
    built = sg.Synthesizer(shape, seed=0, **kwargs)
    assert n_weights(built) == sg.synthesizer_parameters(shape, **kwargs)


def test_old_sizing_is_one_option_away():
    c, k = 12, 3
    method = compiled(cnn(c), credit.methods.SyntheticGradients(
        seed=0, width=None, kernel_size=k))
    [conv] = method.synthesizers["wide"].stack
    assert conv.kernel_size == (k, k) and conv.filters == c
    assert method.point_parameters()["wide"] == k * k * c * c + c


# -- the budget, checked before building ------------------------------------------------


def test_budget_error_names_points_and_estimate_before_building(monkeypatch):
    built = []
    monkeypatch.setattr(sgm, "Synthesizer",
                        lambda *a, **k: built.append(a) or sg.Synthesizer(*a, **k))
    method = credit.methods.SyntheticGradients(seed=0, width=None, kernel_size=3,
                                               max_parameters=1000)
    with pytest.raises(ValueError) as err:
        compiled(cnn(12), method)
    message = str(err.value)
    total = (9 * 12 * 12 + 12) + (9 * 5 * 5 + 5) + (3 * 3 + 3)
    for words in ["'wide' 1,308", "'narrow' 230", "'gap' 12", f"{total:,}",
                  "max_parameters=1000", "width=", "max_points="]:
        assert words in message
    assert built == []  # nothing was built
    # Under the budget, the same request builds.
    method = credit.methods.SyntheticGradients(seed=0, width=None, kernel_size=3,
                                               max_parameters=total)
    compiled(cnn(12), method)
    assert len(built) == 3


def test_default_budget_is_twice_the_model_with_a_floor():
    model = cnn(12)
    assert sg.parameter_budget(None, model) == sg.BUDGET_FLOOR
    assert sg.parameter_budget(123, model) == 123

    class Big:
        def count_params(self):
            return 30_000_000

    assert sg.parameter_budget(None, Big()) == 60_000_000


def test_local_heads_budget_error_before_building(monkeypatch):
    monkeypatch.setattr(ll, "LocalHead", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(ValueError, match=r"heads of LocalLosses would add .* 'wide'"):
        compiled(cnn(12), credit.methods.LocalLosses(seed=0, head="dgl",
                                                     max_parameters=10))


@pytest.mark.parametrize("kwargs, words", [
    ({"width": 0}, ["width", "0", "positive integer"]),
    ({"max_points": 2.5}, ["max_points", "2.5"]),
    ({"max_parameters": -1}, ["max_parameters", "-1"]),
])
def test_bad_sizing_arguments_are_named(kwargs, words):
    for cls in (credit.methods.SyntheticGradients, credit.methods.LocalLosses):
        with pytest.raises(ValueError) as err:
            cls(**kwargs)
        assert all(w in str(err.value) for w in words)


# -- local-loss heads --------------------------------------------------------------------


def test_dgl_head_on_a_wide_map_is_a_1x1_convolution_down_to_width():
    c, w, classes = 12, 6, 3
    method = compiled(cnn(c, classes), credit.methods.LocalLosses(
        seed=0, head="dgl", loss="predsim", width=w))
    head = method.heads["wide"]
    conv, pool = head.predictor[0], head.predictor[1]
    assert conv.kernel_size == (1, 1) and conv.filters == w
    assert isinstance(pool, L.AveragePooling2D) and pool.pool_size == (3, 3)
    assert head.similar[0].kernel_size == (1, 1) and head.similar[0].filters == w
    # conv (c*w + w), pool 6x6 -> 2x2, decoder (4 w -> classes), sim conv (c*w)
    formula = (c * w + w) + (4 * w * classes + classes) + c * w
    assert n_weights(head) == formula == method.point_parameters()["wide"]
    narrow = method.heads["narrow"]  # 5 channels, within the bound: 3x3 at 5 (as before)
    assert narrow.predictor[0].kernel_size == (3, 3) and narrow.predictor[0].filters == 5
    assert n_weights(narrow) == ll.head_parameters(
        (6, 6, 5), classes, kind="dgl", predict=True, similarity=True, width=w)


@pytest.mark.parametrize("kwargs", [
    {}, {"kind": "mlp", "hidden_units": (7,), "max_features": 20},
    {"kind": "dgl", "similarity": True, "width": 3},
    {"kind": "linear", "predict": False, "similarity": True},
])
def test_head_estimate_equals_the_built_head(kwargs):
    for shape in [(9, 7, 5), (11, 6), (8,)]:
        head = ll.LocalHead(shape, 4, seed=0, **kwargs)
        assert n_weights(head) == ll.head_parameters(shape, 4, **kwargs)


# -- placement ------------------------------------------------------------------------


def test_cap_points_splits_like_dgl():
    assert sg.cap_points(list("abc"), 3) == list("abc")
    assert sg.cap_points(list("abc"), None) == list("abc")
    # 5 hidden points + the output = 6 segments, in 3 groups of 2: points 1 and 3.
    assert sg.cap_points(list("abcde"), 2) == ["b", "d"]
    points = sg.cap_points(list(range(53)), 16)
    assert len(points) == 16 and points[0] == 3 and points[-1] == 50
    assert np.all(np.diff(points) >= 3)


def chain(depth=6):
    layers = [keras.Input((8,))]
    layers += [L.Dense(6, activation="tanh", name=f"d{i}") for i in range(depth)]
    return credit.Sequential(layers + [L.Dense(3, activation="softmax", name="out")])


def test_max_points_caps_the_default_points_only():
    # stage_points=None: max_points evenly spaced stream points (the older placement).
    method = compiled(chain(), credit.methods.SyntheticGradients(
        seed=0, max_points=2, stage_points=None))
    assert list(method.synthesizers) == ["d2", "d4"]  # 7 segments in 3 groups
    method = compiled(chain(), credit.methods.LocalLosses(seed=0, max_points=3,
                                                          stage_points=None))
    assert list(method.heads) == ["d1", "d3", "d5"]  # 7 segments in 4 groups
    named = compiled(chain(), credit.methods.SyntheticGradients(
        seed=0, max_points=1, at=["d0", "d2", "d4"]))
    assert list(named.synthesizers) == ["d0", "d2", "d4"]


def test_point_summary_reports_each_points_size():
    model = cnn(12)
    method = compiled(model, credit.methods.SyntheticGradients(seed=0, width=8,
                                                               kernel_size=3))
    table = credit.point_summary(model)
    assert list(table["point"]) == ["wide", "narrow", "gap"]
    assert list(table["parameters"]) == [(12 * 8 + 8) + (9 * 8 + 8) + (8 * 12 + 12),
                                         9 * 5 * 5 + 5, 3 * 3 + 3]
    assert table["shape"][0] == (6, 6, 12) and list(table["block"]) == [0, 1, 2]
    assert table.attrs["added_parameters"] == sum(method.point_parameters().values())
    assert table.attrs["model_parameters"] == model.count_params()
    dfa = credit.point_summary(cnn(12), method="dfa")
    assert dfa["parameters"].isna().all() and list(dfa["point"]) == ["wide", "narrow",
                                                                     "gap"]


# -- the first step's graph ------------------------------------------------------------


def test_traced_step_has_one_control_edge_per_op_not_per_pair():
    """The update of the synthesizers waits for every gradient and the optimizer's
    writes for every op of that update: through one barrier each, not an edge per
    pair (which made TensorFlow's graph optimizer take minutes on a large model)."""
    import tensorflow as tf

    model = chain(3)
    model.compile("adam", "sparse_categorical_crossentropy",
                  method=credit.methods.SyntheticGradients(seed=0))
    x, y = tf.zeros((4, 8)), tf.zeros((4,), "int64")
    ops = tf.function(model.train_step).get_concrete_function((x, y)).graph.get_operations()
    edges = sum(len(op.control_inputs) for op in ops)
    assert edges <= len(ops)  # 2,474 edges on 724 ops with an edge per pair
    assert max(len(op.control_inputs) for op in ops if op.type != "NoOp") <= 16


# -- every variable moves --------------------------------------------------------------


def small_resnet(blocks=3):
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    for i in range(blocks):
        y = L.Conv2D(8, 3, padding="same", name=f"b{i}_conv1")(x)
        y = L.BatchNormalization(name=f"b{i}_bn1")(y)
        y = L.Activation("relu", name=f"b{i}_relu1")(y)
        y = L.Conv2D(8, 3, padding="same", name=f"b{i}_conv2")(y)
        y = L.BatchNormalization(name=f"b{i}_bn2")(y)
        x = L.Activation("relu", name=f"b{i}_out")(L.Add(name=f"b{i}_add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return credit.Model(inputs, L.Dense(4, activation="softmax", name="out")(x))


def moved_in_four_steps(method):
    model = small_resnet()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 4, size=8)
    model.compile("adam", "sparse_categorical_crossentropy", method=method)
    start = {v.path: v.numpy().copy() for v in model.trainable_variables}
    for _ in range(4):
        model.train_on_batch(x, y)
    moved = {v.path for v in model.trainable_variables
             if not np.array_equal(start[v.path], v.numpy())}
    return moved, set(start)


@pytest.mark.slow  # 100 s for the three; test_stage_points_move_every_layer_within_four_steps stays fast
@pytest.mark.parametrize("method", [
    {"name": "sg", "width": 4, "max_points": 3},
    # max_points=3: on the residual stream this ResNet has more boundaries, and DNI's
    # bootstrap reaches one more point down per step (see SyntheticGradients).
    {"name": "cdni", "width": 4, "synthesizer": "mlp", "hidden_filters": [4], "max_points": 3},
    {"name": "local_losses", "head": "dgl", "width": 4, "max_points": 3},
])
def test_every_variable_moves_within_four_steps_on_a_small_resnet(method):
    moved_bp, every = moved_in_four_steps("backprop")
    assert moved_bp == every  # backprop moves them all ...
    method = credit.get(method)
    moved, _ = moved_in_four_steps(method)
    assert moved == moved_bp  # ... and so does the method, with bounded synthesizers
    assert len(method.point_parameters()) == (3 if method.max_points == 3 else 7)


def test_offtheshelf_table_ratios_and_unmoved_against_plain_keras():
    from experiments import offtheshelf

    keras_run = {"model": "M", "method": "keras", "points": 0, "added": 0,
                 "model_parameters": 100, "first_step_s": 1.0, "step_s": 2.0,
                 "peak_rss_mb": 10.0, "first_moved": {"a": 1, "b": 1, "c": 1}}
    sg_run = dict(keras_run, method="sg", points=2, added=50, step_s=3.0,
                  peak_rss_mb=15.0, first_moved={"a": 1, "b": 6})
    rows = offtheshelf.table([keras_run, sg_run]).splitlines()
    assert rows[3] == ("| M | sg | 2 | 50 (0.500x) | 1.0 | 3.0 (1.50x) | 15.0 (1.50x) | "
                       "2 of 3 | never |")
    assert rows[2].endswith("| 0 of 3 | 1 |")


# -- placement on large models: where the stages begin ---------------------------------


def staged():
    """A chain of 10 hidden blocks in 5 stages of spatial size (16x16, 8x8 -- its
    second block ends in a zero padding to 10x10 --, 4x4, 2x2, 1x1), channels changing
    within stages too; a global pooling ends the last block."""
    keras.utils.set_random_seed(0)
    conv = L.Conv2D
    return credit.Sequential([
        keras.Input((16, 16, 2)),
        conv(3, 3, padding="same", activation="relu", name="s0a"),
        conv(5, 3, padding="same", activation="relu", name="s0b"),
        conv(4, 3, strides=2, padding="same", activation="relu", name="s1a"),
        conv(4, 3, padding="same", activation="relu", name="s1b"),
        L.ZeroPadding2D(1, name="s1b_pad"),
        conv(5, 3, strides=2, activation="relu", name="s2a"),            # 10 -> 4
        conv(5, 3, padding="same", activation="relu", name="s2b"),
        conv(6, 3, strides=2, padding="same", activation="relu", name="s3a"),
        conv(6, 3, padding="same", activation="relu", name="s3b"),
        conv(7, 3, strides=2, padding="same", activation="relu", name="s4a"),
        conv(7, 1, activation="relu", name="s4b"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(3, activation="softmax", name="out")])


STREAM = ["s0a", "s0b", "s1a", "s1b_pad", "s2a", "s2b", "s3a", "s3b", "s4a", "gap"]


def test_stage_sizes_and_starts_of_the_stand_in():
    method = compiled(staged(), credit.methods.SyntheticGradients(seed=0, width=4))
    graph = method.graph
    assert sg.hidden_points(graph, None) == STREAM
    assert [sg.stage_size(graph, p) for p in STREAM] == [256, 256, 64, 100, 16, 16, 4, 4,
                                                         1, 0]
    # A padding grows the map (no new stage); the last point's stage is the output's.
    assert sg.stage_starts(graph, STREAM) == ["s1a", "s2a", "s3a", "s4a"]


def test_a_small_model_keeps_every_stream_point():
    model = staged()
    method = compiled(model, credit.methods.SyntheticGradients(seed=0, width=4))
    assert list(method.synthesizers) == STREAM  # 10 <= max_points=16: as before
    assert credit.point_summary(model).attrs["placement"] == "stream: all 10 stream points"


@pytest.mark.parametrize("cls", [credit.methods.SyntheticGradients,
                                 credit.methods.LocalLosses])
def test_a_large_model_gets_points_where_its_stages_begin(cls):
    def points(**kwargs):
        model = staged()
        method = compiled(model, cls(seed=0, width=4, **kwargs))
        return method.point_parameters(), credit.point_summary(model).attrs["placement"]

    # 10 stream points > max_points=8: 4 stage starts, 3 kept (5 segments in 4 groups).
    found, placement = points(max_points=8)
    assert list(found) == ["s2a", "s3a", "s4a"]
    assert placement == ("stages: 3 of 4 stage starts (10 stream points > max_points=8, "
                         "stage_points=3)")
    assert list(points(max_points=8, stage_points=4)[0]) == ["s1a", "s2a", "s3a", "s4a"]
    assert list(points(max_points=8, stage_points=1)[0]) == ["s3a"]
    assert list(points(at="stages")[0]) == ["s2a", "s3a", "s4a"]  # whatever max_points
    # stage_points=None: max_points evenly spaced stream points (11 segments, 9 groups).
    found, placement = points(max_points=8, stage_points=None)
    assert list(found) == ["s0b", "s1a", "s1b_pad", "s2a", "s3a", "s3b", "s4a", "gap"]
    assert placement.startswith("evenly spaced: 8 of 10 stream points")


def test_a_long_chain_of_one_size_gets_stage_points_evenly_spaced():
    method = compiled(chain(20), credit.methods.SyntheticGradients(seed=0))
    # 20 points + the output = 21 segments in 4 groups: the last of each of the first 3.
    assert list(method.synthesizers) == ["d5", "d10", "d15"]
    assert method.point_placement.startswith("evenly spaced: 3 of 20 stream points, all "
                                             "of one spatial size")


def first_moved(method, steps=4):
    """Layer name -> the step after which all its weights had moved (None: not yet)."""
    model = staged()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 2)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model.compile("adam", "sparse_categorical_crossentropy", method=method)
    start = {v.path: v.numpy().copy() for v in model.trainable_variables}
    moved = {}
    for step in range(1, steps + 1):
        model.train_on_batch(x, y)
        for v in model.trainable_variables:
            if v.path not in moved and not np.array_equal(start[v.path], v.numpy()):
                moved[v.path] = step
    layers = {}
    for path in start:
        layer = path.split("/")[-2]
        step = moved.get(path)
        layers[layer] = None if step is None or layers.get(layer, 0) is None \
            else max(step, layers.get(layer, 0))
    return layers


LAYERS = ["s0a", "s0b", "s1a", "s1b", "s2a", "s2b", "s3a", "s3b", "s4a", "s4b", "out"]


@pytest.mark.parametrize("name", [
    "sg", pytest.param("cdni", marks=pytest.mark.slow),
    pytest.param("local_losses", marks=pytest.mark.slow),
    pytest.param("backprop", marks=pytest.mark.slow)])
def test_stage_points_move_every_layer_within_four_steps(name):
    found = first_moved(credit.get({"name": name, "width": 4, "max_points": 8}
                                   if name != "backprop" else name))
    if name in ("local_losses", "backprop"):  # every head learns from the first step
        assert found == dict.fromkeys(LAYERS, 1)
    else:
        # Points after s2a, s3a, s4a. Step 1: the top synthesizer learns the loss
        # gradient (its signal was zero); step 2 its signal moves the layers below it,
        # and the next synthesizer learns from it; and so on down: one point a step.
        assert found == dict(zip(LAYERS, [4, 4, 4, 4, 4, 3, 3, 2, 2, 1, 1]))


@pytest.mark.slow
def test_a_synthesizer_at_every_stream_point_leaves_the_lowest_layers_unmoved():
    """Why the cap: with a synthesizer at each of the 10 stream points, the signal
    needs a step per point to come down (the layers below the 4th point from the top
    have not moved after 4 steps)."""
    found = first_moved(credit.get({"name": "sg", "width": 4}))
    assert found == dict(zip(LAYERS, [None] * 7 + [4, 3, 2, 1]))


# -- configs saved before the sizing options -------------------------------------------

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("key", ["sg", "local"])
def test_a_model_saved_before_the_sizing_options_loads_with_its_old_architecture(key):
    """tests/data/legacy_*.keras were saved by the version before width/max_points
    (tests/scripts/legacy_sizing_models.py, run on commit 23010df): 18 hidden blocks
    and a 65-channel one, which the current defaults would size differently."""
    saved = np.load(os.path.join(DATA, f"legacy_{key}.npz"))
    model = keras.saving.load_model(os.path.join(DATA, f"legacy_{key}.keras"))
    method = model.method
    config = method.get_config()
    assert (config["width"], config["max_points"], config["stage_points"]) == (None,
                                                                               None, None)
    assert config["max_parameters"] == sg.NO_BUDGET
    assert list(method.point_parameters()) == list(saved["points"])
    assert len(saved["points"]) == 18
    weights = [w for s in method.state.synthesizer_layers for w in s.weights]
    assert len(weights) == len([k for k in saved.files if k.startswith("w")])
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(w.numpy(), saved[f"w{i}"])
    if key == "sg":  # the wide block kept its full-width 1x1 synthesizer
        [conv] = method.synthesizers["wide"].stack
        assert conv.filters == 65 and conv.kernel_size == (1, 1)
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), saved["prediction"],
                               rtol=1e-6, atol=1e-7)


def test_only_a_complete_saved_config_is_read_as_an_old_one():
    old = {"name": "synthetic_gradients", "seed": 4, "synthesizer": "linear",
           "conditioned": False, "target": "bootstrap", "at": None,
           "update_probability": 1.0, "warmup_steps": 0, "hidden_units": [8],
           "hidden_filters": [128, 128], "kernel_size": 5, "activation": "relu",
           "optimizer": "adam", "learning_rate": 0.01}
    method = credit.get(old)
    assert (method.width, method.max_points, method.max_parameters,
            method.stage_points) == (None, None, sg.NO_BUDGET, None)
    # Saved with max_points but before stage_points: max_points evenly spaced points.
    method = credit.get({**old, "width": 64, "max_points": 16, "max_parameters": None})
    assert (method.width, method.max_points, method.max_parameters,
            method.stage_points) == (64, 16, None, None)
    # Written by hand: today's defaults.
    for config in [{"name": "sg"}, {"name": "sg", "max_points": 3},
                   {k: v for k, v in old.items() if k != "kernel_size"}]:
        method = credit.get(config)
        assert (method.width, method.stage_points) == (64, sg.STAGE_POINTS)
    assert credit.get({"name": "local_losses"}).width == 128
    local = credit.get({"name": "local_losses", "seed": 0, "loss": "pred",
                        "head": "linear", "at": None, "beta": 0.99, "hidden_units": [4],
                        "max_features": 4096, "optimizer": "adam",
                        "learning_rate": None})
    assert (local.width, local.max_points, local.stage_points) == (None, None, None)


# -- the off-the-shelf rows of experiments.bench ------------------------------------------


def test_bench_offtheshelf_defaults_and_time_bound(tmp_path):
    from experiments import bench, offtheshelf

    full = bench.parse_args([])
    assert full.offtheshelf == ["ResNet50", "MobileNetV2"] and full.minutes is None
    methods = full.offtheshelf_methods
    assert methods[:2] == ["keras", "backprop"] and "synthetic_gradients" in methods
    assert "pepita" not in methods  # trains chains of Dense layers only
    assert bench.parse_args(["--quick"]).offtheshelf == []
    assert bench.parse_args(["--models", "a"]).offtheshelf == []
    assert bench.parse_args(["--models", "a", "--offtheshelf", "MobileNetV2"]
                            ).offtheshelf == ["MobileNetV2"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--offtheshelf", "NoSuchNet"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--minutes", "0"])

    keras_run = {"model": "M", "method": "keras", "points": 0, "added": 0,
                 "model_parameters": 100, "first_step_s": 1.0, "step_s": 2.0,
                 "peak_rss_mb": 10.0, "first_moved": {"a": 1}}
    path = tmp_path / "offtheshelf.jsonl"
    path.write_text(json.dumps(keras_run) + "\n"
                    + json.dumps({"model": "M", "method": "kickback", "status": "n/a",
                                  "note": "needs a scalar output"}) + "\n")
    reused = offtheshelf.read_records(str(path))
    # Past the deadline: what was not reused is not run (no child process is started).
    records = bench.offtheshelf_rows(["M"], ["keras", "kickback", "sg"], reused,
                                     deadline=0.0, log=lambda s: None)
    assert [r["method"] for r in records] == ["keras", "kickback", "sg"]
    assert records[0]["reused"] and records[2]["status"] == "not run"
    # A record's alias is its method's row: "dni" stands for synthetic_gradients.
    again = bench.offtheshelf_rows(["M"], ["synthetic_gradients"],
                                   [dict(keras_run, method="dni")], deadline=0.0,
                                   log=lambda s: None)
    assert again[0]["reused"] and again[0]["method"] == "synthetic_gradients"
    args = bench.parse_args(["--offtheshelf-records", str(path)])
    lines = bench.offtheshelf_report(records, args)
    table = "\n".join(lines)
    assert "| M | keras | 0 | 0 (0.000x) | 1.0 | 2.0 (1.00x) | 10.0 (1.00x) | 0 of 1 | 1 |" \
        in table
    assert "| M | kickback | n/a: needs a scalar output |" in table
    assert "| M | sg | not run: time bound (--minutes) |" in table
    assert "not measured in this run: keras, kickback" in table


def test_offtheshelf_peak_rss_reads_this_programs_own_peak():
    import resource

    from experiments import offtheshelf

    with open("/proc/self/status") as f:
        rss = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
    peak = offtheshelf.peak_rss_kib(resource)  # VmHWM: this program's own peak
    assert peak >= rss > 0
    # (ru_maxrss also keeps the peak from before exec: a large parent's RSS at the fork.)
