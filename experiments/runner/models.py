"""The model zoo of the sweeps: model specs -> credit models, and what data each fits.

A model spec is a dict with a ``type`` and that type's options (defaults below, filled
in by :func:`experiments.runner.configs.complete`). Each type declares the kind of input
it reads, and the runner's data step gives it that **view** of the data set
(:func:`experiments.runner.data.view`):

========== ========= ============================================================
type       input     model
========== ========= ============================================================
mlp        vector    Dense hidden layers (inputs flattened first)
cnn        image     Conv2D + MaxPooling2D stages, a Dense head
resnet     image     CIFAR-style ResNet (He et al. 2016): a 3x3 stem, 3 stages of n
                     residual blocks (two 3x3 convolutions with batch normalisation,
                     identity or 1x1-projection shortcut), global average pooling;
                     depth = 6n + 2 (20 is ResNet-20)
transformer sequence a small encoder classifier: a Dense step projection (or an
                     Embedding of integer tokens), fixed sinusoidal positions, encoder
                     blocks (MultiHeadAttention, residual add, LayerNormalization,
                     feed-forward block, residual add, LayerNormalization), average
                     pooling over steps
lstm, gru  sequence stacked recurrent layers (an Embedding first for integer tokens)
========== ========= ============================================================

Every model ends in a Dense layer with ``num_classes`` softmax units (classification)
or one linear unit per target (regression). A model that cannot read a data set (a CNN
on the ten features of ``diabetes``) raises :class:`NotApplicable`; the sweep records
the pair as not applicable with that reason, like a method that does not apply.

Example:
    >>> register_model("tiny", defaults={"units": 8}, inputs="vector")(
    ...     lambda spec, data: None) is not None                       # doctest: +SKIP
"""

import dataclasses

import numpy as np

import credit
import keras

__all__ = ["MODELS", "ModelType", "NotApplicable", "PositionalEncoding", "architecture",
           "build_model", "output_activation", "output_units", "register_model"]


class NotApplicable(ValueError):
    """A model cannot read a data set (or a method cannot train a model)."""


@dataclasses.dataclass
class ModelType:
    """A registered model type.

    Attributes:
        build: ``fn(spec, data) -> uncompiled credit model``; ``data`` is the runner's
            :class:`experiments.runner.data.Splits`, already in this type's view.
        defaults: the spec's default options.
        inputs: the view it reads: "vector", "image" or "sequence".
        check: optional ``fn(spec) -> list of problems`` (strings), run before training.
    """

    build: callable
    defaults: dict
    inputs: str = "vector"
    check: callable = None


#: Model types by name.
MODELS = {}


def register_model(name, defaults=None, inputs="vector", check=None):
    """Register a model builder ``fn(spec, data) -> credit model`` under ``name``.

    The builder gets the completed spec (``defaults`` updated with the config's
    ``model`` dict) and the data (:class:`experiments.runner.data.Splits`, in the
    view ``inputs``), and returns an uncompiled ``credit.Sequential`` or
    ``credit.Model`` with a ``keras.Input``. ``check(spec)`` returns a list of problems
    (strings), reported before any training.

    Example:
        >>> @register_model("linear", defaults={"depth": 1})          # doctest: +SKIP
        ... def linear(spec, data): ...
    """
    if inputs not in ("vector", "image", "sequence"):
        raise ValueError(f"inputs must be 'vector', 'image' or 'sequence', got {inputs!r}")

    def decorate(fn):
        MODELS[name] = ModelType(fn, dict(defaults or {}), inputs, check)
        return fn

    return decorate


def build_model(spec, data):
    """Build the (uncompiled) credit model of ``spec`` for ``data`` (in its view)."""
    return MODELS[spec["type"]].build(spec, data)


def output_units(data):
    """Units of the output layer: the classes, or the regression targets."""
    if data.task == "classification":
        return int(data.num_classes)
    return int(np.prod(data.y_train.shape[1:])) if data.y_train.ndim > 1 else 1


def output_activation(spec, data):
    """The spec's ``output_activation``, else softmax (classification) or linear."""
    if spec.get("output_activation") is not None:
        return spec["output_activation"]
    return "softmax" if data.task == "classification" else None


def _head(spec, data):
    return keras.layers.Dense(output_units(data), activation=output_activation(spec, data),
                              name="head")


def architecture(model, spec):
    """A short description of a built model: layer sizes for an MLP
    (``"64-64-64-10"``), else the type, its size option and the parameter count."""
    if spec["type"] == "mlp":
        sizes = [str(int(np.prod(model.inputs[0].shape[1:])))]
        sizes += [str(layer.units) for layer in model.layers
                  if isinstance(layer, keras.layers.Dense)]
        return "-".join(sizes)
    size = {"resnet": f"-{spec.get('depth')}"}.get(spec["type"], "")
    return f"{spec['type']}{size} ({model.count_params()} parameters)"


# ---------------------------------------------------------------------------
# Checks


def _positive_ints(spec, key, example, allow_empty=False):
    value = spec.get(key)
    ok = isinstance(value, list) and (allow_empty or value) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    return [] if ok else [f"{key!r} must be a list of positive integers, got {value!r}; "
                          f"e.g. {example}"]


def _positive_int(spec, key, example):
    value = spec.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return []
    return [f"{key!r} must be a positive integer, got {value!r}; e.g. {example}"]


def _activation(spec, key):
    value = spec.get(key)
    if key == "output_activation" and value is None:
        return []
    try:
        keras.activations.get(value)
    except (ValueError, TypeError):
        return [f"{key!r} must be a Keras activation name, got {value!r}; e.g. 'tanh' or 'relu'"]
    return []


def _unknown(spec, name):
    known = {"type", *MODELS[name].defaults}
    unknown = sorted(set(spec) - known)
    if unknown:
        return [f"unknown key(s) {unknown}; a {name!r} spec takes "
                f"{', '.join(sorted(known - {'type'}))}"]
    return []


def _check(name, ints=(), int_lists=(), activations=("output_activation",), extra=None):
    def check(spec):
        problems = []
        for key, example in ints:
            problems += _positive_int(spec, key, example)
        for key, example in int_lists:
            problems += _positive_ints(spec, key, example)
        for key in activations:
            problems += _activation(spec, key)
        if extra is not None:
            problems += extra(spec)
        return problems + _unknown(spec, name)
    return check


def _bool(key):
    def check(spec):
        if not isinstance(spec.get(key), bool):
            return [f"{key!r} must be true or false, got {spec.get(key)!r}"]
        return []
    return check


# ---------------------------------------------------------------------------
# MLP


def _check_mlp(spec):
    problems = []
    hidden = spec.get("hidden")
    if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        problems.append(f"'hidden' must be a list of positive integers (layer sizes), got "
                        f"{hidden!r}; e.g. [256, 256]")
    problems += _activation(spec, "activation") + _activation(spec, "output_activation")
    problems += _bool("batch_norm")(spec)
    unknown = sorted(set(spec) - {"type", "hidden", "activation", "output_activation",
                                  "batch_norm"})
    if unknown:
        problems.append(f"unknown key(s) {unknown}; an 'mlp' spec takes hidden, activation, "
                        "output_activation, batch_norm")
    return problems


@register_model("mlp", defaults={"hidden": [256, 256], "activation": "tanh",
                                 "output_activation": None, "batch_norm": False},
                inputs="vector", check=_check_mlp)
def mlp(spec, data):
    """A multilayer perceptron: Dense hidden layers, then the output layer.

    Spec: ``hidden`` (sizes), ``activation`` of the hidden layers, ``batch_norm``
    (Dense -> BatchNormalization -> activation), ``output_activation`` (None: softmax
    for classification, linear for regression). Inputs with more than one axis are
    flattened first.
    """
    layers = [keras.Input(data.x_train.shape[1:])]
    if len(data.x_train.shape) > 2:
        layers.append(keras.layers.Flatten())
    for units in spec["hidden"]:
        if spec["batch_norm"]:
            layers += [keras.layers.Dense(units), keras.layers.BatchNormalization(),
                       keras.layers.Activation(spec["activation"])]
        else:
            layers.append(keras.layers.Dense(units, activation=spec["activation"]))
    layers.append(keras.layers.Dense(output_units(data),
                                     activation=output_activation(spec, data)))
    return credit.Sequential(layers)


# ---------------------------------------------------------------------------
# CNN


@register_model("cnn", defaults={"filters": [16, 32], "kernel_size": 3, "dense": [64],
                                 "activation": "relu", "output_activation": None},
                inputs="image",
                check=_check("cnn", ints=[("kernel_size", 3)],
                             int_lists=[("filters", "[16, 32]")],
                             activations=("activation", "output_activation"),
                             extra=lambda s: _positive_ints(s, "dense", "[64]", True)))
def cnn(spec, data):
    """Conv2D ('same' padding) + 2x2 max pooling per entry of ``filters`` (pooling
    only while the image is at least 2x2), then Flatten, Dense ``dense`` layers, head."""
    shape = data.x_train.shape[1:]
    layers = [keras.Input(shape)]
    size = min(shape[0], shape[1])
    for filters in spec["filters"]:
        layers.append(keras.layers.Conv2D(filters, spec["kernel_size"], padding="same",
                                          activation=spec["activation"]))
        if size >= 2:
            layers.append(keras.layers.MaxPooling2D(2))
            size //= 2
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(u, activation=spec["activation"]) for u in spec["dense"]]
    layers.append(_head(spec, data))
    return credit.Sequential(layers)


# ---------------------------------------------------------------------------
# ResNet


def _check_depth(spec):
    depth = spec.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        return [f"'depth' must be 6n + 2 for a whole n >= 1 (8, 14, 20, 32, 44, 56, 110), "
                f"got {depth!r}; e.g. 20 for ResNet-20"]
    widths = spec.get("widths")
    if not (isinstance(widths, list) and len(widths) == 3):
        return [f"'widths' must list the filters of the 3 stages, got {widths!r}; "
                "e.g. [16, 32, 64]"]
    return []


@register_model("resnet", defaults={"depth": 20, "widths": [16, 32, 64],
                                    "output_activation": None},
                inputs="image",
                check=_check("resnet", int_lists=[("widths", "[16, 32, 64]")],
                             extra=_check_depth))
def resnet(spec, data):
    """A CIFAR-style ResNet of ``depth`` = 6n + 2 layers (He et al. 2016, section 4.2).

    A 3x3 convolution of ``widths[0]`` filters, then 3 stages of n residual blocks with
    ``widths[0..2]`` filters (the first block of stages 2 and 3 halves the resolution
    with stride 2 and a 1x1 projection shortcut), global average pooling, the head.
    Each block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU. Convolutions have no
    bias (batch normalisation follows). The shortcuts that change shape are 1x1
    projections (the paper's option B; its CIFAR table uses zero-padding, option A), so
    ResNet-20 on 32x32x3 images has 274,042 parameters with the batch-normalisation
    statistics, against the paper's 0.27M.
    """
    n = (spec["depth"] - 2) // 6
    inputs = keras.Input(data.x_train.shape[1:])

    def conv(x, filters, strides=1, kernel=3):
        x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same",
                                use_bias=False, kernel_initializer="he_normal")(x)
        return keras.layers.BatchNormalization()(x)

    x = keras.layers.Activation("relu")(conv(inputs, spec["widths"][0]))
    for stage, filters in enumerate(spec["widths"]):
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = conv(x, filters, strides, kernel=1)
            h = keras.layers.Activation("relu")(conv(x, filters, strides))
            h = conv(h, filters)
            x = keras.layers.Activation("relu")(keras.layers.Add()([h, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return credit.Model(inputs, _head(spec, data)(x), name=f"resnet{spec['depth']}")


# ---------------------------------------------------------------------------
# Sequences


@keras.saving.register_keras_serializable("experiments")
class PositionalEncoding(keras.layers.Layer):
    """Adds the fixed sinusoidal position table of Vaswani et al. 2017 (no weights)."""

    def build(self, input_shape):
        steps, dim = int(input_shape[-2]), int(input_shape[-1])
        position = np.arange(steps)[:, None]
        rate = np.exp(-np.log(10000.0) * (2 * (np.arange(dim) // 2)) / dim)[None, :]
        angle = position * rate
        table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
        self.table = keras.ops.convert_to_tensor(table[None].astype("float32"))

    def call(self, x):
        return x + keras.ops.cast(self.table, x.dtype)


def _sequence_input(spec, data, key="dim"):
    """The input layer and the first (embedding or projection) tensor."""
    shape = data.x_train.shape[1:]
    if data.x_train.ndim == 2:  # integer tokens
        vocab = int(max(data.x_train.max(), data.x_test.max())) + 1
        inputs = keras.Input(shape, dtype="int32")
        return inputs, keras.layers.Embedding(vocab, spec[key])(inputs)
    inputs = keras.Input(shape)
    if key == "dim":
        return inputs, keras.layers.Dense(spec[key], name="step_projection")(inputs)
    return inputs, inputs


@register_model("transformer", defaults={"dim": 32, "heads": 2, "layers": 1, "ff": 64,
                                         "dropout": 0.0, "output_activation": None},
                inputs="sequence",
                check=_check("transformer", ints=[("dim", 32), ("heads", 2), ("layers", 1),
                                                  ("ff", 64)]))
def transformer(spec, data):
    """A small encoder classifier over the steps of a sequence (post-norm blocks)."""
    inputs, x = _sequence_input(spec, data)
    x = PositionalEncoding()(x)
    for _ in range(spec["layers"]):
        attention = keras.layers.MultiHeadAttention(
            spec["heads"], spec["dim"] // spec["heads"] or 1, dropout=spec["dropout"])(x, x)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attention]))
        h = keras.layers.Dense(spec["ff"], activation="relu")(x)
        h = keras.layers.Dense(spec["dim"])(h)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, h]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return credit.Model(inputs, _head(spec, data)(x), name="transformer")


def _recurrent(layer_class):
    def build(spec, data):
        inputs, x = _sequence_input(spec, data, key="embed")
        for i, units in enumerate(spec["units"]):
            x = layer_class(units, return_sequences=i < len(spec["units"]) - 1)(x)
        return credit.Model(inputs, _head(spec, data)(x), name=layer_class.__name__.lower())
    build.__doc__ = (f"Stacked {layer_class.__name__} layers of ``units``; the last returns "
                     "its final state. Integer tokens are embedded in ``embed`` dimensions.")
    return build


for _name, _class in (("lstm", keras.layers.LSTM), ("gru", keras.layers.GRU)):
    register_model(_name, defaults={"units": [64], "embed": 32, "output_activation": None},
                   inputs="sequence",
                   check=_check(_name, ints=[("embed", 32)], int_lists=[("units", "[64]")]))(
        _recurrent(_class))
