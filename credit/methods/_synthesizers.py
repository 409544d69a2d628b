"""What synthetic gradients between layers and through time share.

:class:`credit.methods.SyntheticGradients` (synthesizers at feedback points) and
:class:`credit.methods.SyntheticGradientsThroughTime` (synthesizers on a stateful RNN's
carried state) are siblings; this module holds their common mechanics:

- :class:`Synthesizer`: the Keras layer ``M(h[, y])``;
- :func:`own_synthesizers`: put the synthesizers, their optimizer, the step counter and
  the seed of the stochastic draws on the method's state (saved with the model);
- :func:`train_synthesizers`: one optimizer step on the synthesizers' regression loss;
- :func:`global_batch`: per-example units of a signal (targets and predictions);
- argument checks that name the argument, the value and the fix.
"""

import numbers

import keras
import numpy as np
from keras import ops

from credit import _keras_compat as compat
from credit import backends
from credit._tensorflow import tf
from credit.signal import hidden_points

SYNTHESIZERS = ("linear", "mlp")
_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_DEPTHWISE = {1: keras.layers.DepthwiseConv1D, 2: keras.layers.DepthwiseConv2D}
_SEPARABLE = {1: keras.layers.SeparableConv1D, 2: keras.layers.SeparableConv2D}


class Synthesizer(keras.layers.Layer):
    """A synthetic-gradient model ``M(h[, y])``: its output is shaped like ``h``.

    Dense boundaries: ``concat(flatten(h), y)`` through Dense layers (``"linear"``: one
    layer, i.e. ``h A + y B + c``). Convolutional boundaries: ``concat(h, y broadcast
    over the spatial axes)`` on the channel axis, through same-padding convolutions:
    at the boundary's own channels (``"linear"``: one convolution; ``"mlp"``:
    ``hidden_filters`` hidden ones first), or, when ``width`` is set and the boundary
    has more channels than ``width``, through a bottleneck: a 1x1 convolution down to
    ``width`` channels, then ``kernel_size`` convolutions on them (``"linear"``: one
    depthwise convolution, and no activation anywhere, so the synthesizer stays linear
    in ``h`` and ``y``; ``"mlp"``: one separable convolution per ``hidden_filters``,
    each capped at ``width``, with the activation), then a 1x1 convolution back up to
    the boundary's channels (with 3 spatial axes, where Keras has no depthwise
    convolution, full convolutions at ``width``). The last layer is
    zero-initialised. Built on creation; owned by the method's state.

    Args:
        shape: the shape of ``h`` without the batch axis.
        kind: ``"linear"`` or ``"mlp"``.
        condition_units: units of the condition ``y`` (0: none).
        hidden_units: hidden Dense widths of an ``"mlp"`` on a dense boundary.
        hidden_filters: hidden convolution channels of an ``"mlp"`` on a spatial one.
        kernel_size: kernel size of the convolutions.
        activation: activation of the hidden layers.
        data_format: ``"channels_last"`` or ``"channels_first"`` (spatial boundaries).
        seed: seed of the hidden layers' initial weights.
        width: the bound on a convolutional synthesizer's channels (None: none, every
            convolution at the boundary's channels or ``hidden_filters``).
    """

    def __init__(self, shape, kind="linear", condition_units=0, hidden_units=(),
                 hidden_filters=(), kernel_size=5, activation="relu",
                 data_format="channels_last", seed=None, width=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.shape = tuple(int(s) for s in shape)
        self.condition_units = int(condition_units)
        self.convolutional = 2 <= len(self.shape) <= 4
        self.data_format = data_format
        rng = np.random.default_rng(seed)

        def init():
            return keras.initializers.GlorotUniform(seed=int(rng.integers(0, 2**31 - 1)))

        zeros = keras.initializers.Zeros()
        plan = synthesizer_plan(self.shape, kind, self.condition_units, hidden_units,
                                hidden_filters, kernel_size, data_format, width)
        self.bottleneck = plan["bottleneck"]
        self.stack = []
        for i, (layer_kind, size, kernel, hidden) in enumerate(plan["layers"]):
            last = i == len(plan["layers"]) - 1
            common = dict(kernel_initializer=zeros if last else init(), dtype="float32")
            if last:
                common.update(bias_initializer=zeros)
            # Hidden layers of an "mlp" take the activation; a linear synthesizer's
            # bottleneck (reduce, convolution, expand) stays linear.
            act = activation if hidden and kind == "mlp" else None
            if self.convolutional:
                first = plan["bottleneck"] and i == 0
                name = ("conv_out" if last else "conv_reduce" if first
                        else f"conv_{i - int(plan['bottleneck'])}")
                rank = plan["rank"]
                if layer_kind == "depthwise":
                    self.stack.append(_DEPTHWISE[rank](
                        kernel, padding="same", activation=act, data_format=data_format,
                        depthwise_initializer=common.pop("kernel_initializer"), name=name,
                        **common))
                elif layer_kind == "separable":
                    self.stack.append(_SEPARABLE[rank](
                        size, kernel, padding="same", activation=act,
                        data_format=data_format,
                        depthwise_initializer=common.pop("kernel_initializer"),
                        pointwise_initializer=init(), name=name, **common))
                else:
                    self.stack.append(_CONV[rank](
                        size, kernel, padding="same", activation=act,
                        data_format=data_format, name=name, **common))
            else:
                self.stack.append(keras.layers.Dense(
                    size, activation=act, name="dense_out" if last else f"dense_{i}",
                    **common))
        shape = (None,) + plan["input_shape"]
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, h, condition=None):
        shape = ops.shape(h)
        if self.convolutional:
            x = h
            if condition is not None:
                axis = -1 if self.data_format == "channels_last" else 1
                cond_shape = [1] * len(h.shape)
                cond_shape[0], cond_shape[axis] = -1, self.condition_units
                target_shape = list(shape)
                target_shape[axis] = self.condition_units
                c = ops.broadcast_to(ops.reshape(condition, cond_shape), target_shape)
                x = ops.concatenate([h, c], axis=axis)
        else:
            x = ops.reshape(h, (shape[0], -1))
            if condition is not None:
                x = ops.concatenate([x, condition], axis=-1)
        for layer in self.stack:
            x = layer(x)
        return ops.reshape(x, shape)


def synthesizer_plan(shape, kind="linear", condition_units=0, hidden_units=(),
                     hidden_filters=(), kernel_size=5, data_format="channels_last",
                     width=None):
    """The layers a :class:`Synthesizer` of these arguments has, without building it.

    Returns:
        A dict: ``layers``, one ``(type, filters or units, kernel size or None,
        hidden)`` per layer in order, ``type`` one of ``"conv"``, ``"depthwise"``,
        ``"separable"`` (Keras's layers of those names) and ``"dense"``; ``rank``
        (spatial axes; 0 for a dense boundary); ``input_shape`` (what the first layer
        sees, without the batch axis); ``bottleneck`` (whether the width bound
        applies).
    """
    shape = tuple(int(s) for s in shape)
    condition_units = int(condition_units)
    if 2 <= len(shape) <= 4:
        rank = len(shape) - 1
        axis = -1 if data_format == "channels_last" else 0
        channels = shape[axis]
        spatial = list(shape)
        spatial[axis] = channels + condition_units
        kernel = kernel_size
        bottleneck = width is not None and channels > width
        if bottleneck:
            # Keras has depthwise and separable convolutions in 1 and 2 spatial axes.
            separable = rank <= 2
            if kind == "mlp":
                mid = [("separable" if separable else "conv", min(int(f), width), kernel,
                        True) for f in hidden_filters]
            else:
                mid = [("depthwise", width, kernel, True) if separable
                       else ("conv", width, kernel, True)]
            layers = ([("conv", width, 1, False)] + mid + [("conv", channels, 1, False)])
        else:
            hidden = list(hidden_filters) if kind == "mlp" else []
            layers = ([("conv", int(f), kernel, True) for f in hidden]
                      + [("conv", channels, kernel, False)])
        return {"layers": layers, "rank": rank, "input_shape": tuple(spatial),
                "bottleneck": bottleneck}
    units = int(np.prod(shape))
    hidden = list(hidden_units) if kind == "mlp" else []
    return {"layers": [("dense", int(u), None, True) for u in hidden]
            + [("dense", units, None, False)],
            "rank": 0, "input_shape": (units + condition_units,), "bottleneck": False}


def synthesizer_parameters(shape, **kwargs):
    """The number of weights of a :class:`Synthesizer` of these arguments (the same
    keyword arguments as :func:`synthesizer_plan`), computed without building it."""
    plan = synthesizer_plan(shape, **kwargs)
    rank = plan["rank"]
    last = kwargs.get("data_format", "channels_last") == "channels_last"
    channel_axis = -1 if last else 0
    fan_in = plan["input_shape"][channel_axis] if rank else plan["input_shape"][0]
    total = 0
    for kind, size, kernel, _ in plan["layers"]:
        taps = 1
        if rank:
            kernel = (kernel,) * rank if isinstance(kernel, int) else tuple(kernel)
            taps = int(np.prod(kernel))
        if kind == "depthwise":  # one filter per channel, and a bias
            total += taps * fan_in + fan_in
        elif kind == "separable":  # depthwise (no bias), then pointwise with a bias
            total += taps * fan_in + fan_in * size + size
        else:
            total += taps * fan_in * size + size
        fan_in = size
    return total


def check_budget(method, graph, counts, what):
    """Raise before anything is built if the method's own weights exceed its budget.

    Args:
        method: a method with ``max_parameters`` (None: the default budget).
        graph: the model's graph (its model's parameters set the default budget).
        counts: dict from point to the parameters the method would add there.
        what: what is being sized, e.g. ``"synthesizers"`` (for the message).
    """
    total = sum(counts.values())
    budget = parameter_budget(method.max_parameters, graph.model)
    if total <= budget:
        return
    default = (f": {BUDGET_RATIO}x the model's parameters, at least {BUDGET_FLOOR:,}"
               if method.max_parameters is None else "")
    largest = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    listing = ", ".join(f"{p!r} {n:,}" for p, n in largest)
    raise ValueError(
        f"the {what} of {type(method).__name__} would add {total:,} parameters at "
        f"{len(counts)} points (largest: {listing}), over the budget of {budget:,} "
        f"(max_parameters={method.max_parameters!r}"
        f"{default}; model {graph.model.name!r} has "
        f"{graph.model.count_params():,}). Nothing was built. "
        "Make them smaller (a smaller width=, synthesizer='linear' or head='linear'), "
        "use fewer points (max_points=, or at=[...] naming fewer layers), or raise "
        "max_parameters.")


#: The default budget: this many times the model's own parameters ...
BUDGET_RATIO = 2
#: ... and never less than this (small models may carry wide synthesizers).
BUDGET_FLOOR = 10_000_000


def parameter_budget(max_parameters, model):
    """``max_parameters`` as a number: None gives the default,
    ``max(BUDGET_RATIO * model parameters, BUDGET_FLOOR)``."""
    if max_parameters is None:
        return max(BUDGET_RATIO * int(model.count_params()), BUDGET_FLOOR)
    return int(max_parameters)


def cap_points(points, max_points):
    """At most ``max_points`` of ``points`` (in order), evenly spaced.

    As Decoupled Greedy Learning splits a network into ``K`` groups of consecutive
    blocks of (nearly) equal length with an auxiliary net at the end of each, the model
    is read as ``len(points) + 1`` segments (the last one ends at the output, which
    trains on the model's loss) cut into ``max_points + 1`` groups; the point kept for
    each group but the last is the last one in it.
    """
    n = len(points)
    if max_points is None or n <= max_points:
        return list(points)
    keep = sorted({-(-(j + 1) * (n + 1) // (max_points + 1)) - 1
                   for j in range(max_points)})
    return [points[i] for i in keep]


#: Points a large model gets by default (see :func:`place_points`): DNI's CIFAR-10 CNN
#: has a synthesizer after each of its 3 blocks, each block ending in a pooling;
#: Decoupled Greedy Learning splits VGG-13/19 on ImageNet into K=4 groups (3 auxiliary
#: nets) and ResNet-152 into K=2. Under DNI's bootstrapped targets a synthetic signal
#: reaches one point further down per step, so with 3 points in a row every layer has
#: a signal by the 4th step.
STAGE_POINTS = 3
#: Configs saved before ``max_parameters`` existed had no budget.
NO_BUDGET = 2**63 - 1


def stage_size(graph, point):
    """A point's spatial size: the product of a map's spatial axes (its shape without
    the channel axis), 0 for a point without spatial axes (a vector: after a global
    pooling or a flatten), None where a spatial axis has no fixed size."""
    shape = tuple(graph.point_shape(point))
    if len(shape) < 2:
        return 0
    block = graph.block_of(point)
    head = block.head if block is not None and block.point == point else None
    first = getattr(head, "data_format", "channels_last") == "channels_first"
    spatial = shape[1:] if first else shape[:-1]
    if any(d is None for d in spatial):
        return None
    return int(np.prod(spatial))


def stage_starts(graph, points):
    """The points (of ``points``, in order) where a stage of the model begins: those
    whose :func:`stage_size` is smaller than that of every point before them (the
    output of a strided convolution, a pooling, a global pooling; a zero padding,
    which grows the map, starts none). The first and the last point are never one
    (the last one's stage is the output's)."""
    sizes = [stage_size(graph, p) for p in points]
    starts = []
    for i in range(1, len(points) - 1):
        before = [s for s in sizes[:i] if s is not None]
        if sizes[i] is not None and before and sizes[i] < min(before):
            starts.append(points[i])
    return starts


def place_points(graph, at, max_points, stage_points, argument="at"):
    """The points of synthetic gradients or local losses, and how they were chosen.

    - ``at`` names points (layer names, block indices, or ``"stream"``,
      ``"residuals"``, ``"blocks"``): those, as they are.
    - ``at="stages"``: :func:`stage_starts` of the stream points (one where each
      stage after the first begins, as DNI put a synthesizer after each pooling
      block), at most ``stage_points`` of them (evenly spaced, :func:`cap_points`);
      a model whose stream points all have one spatial size gets ``stage_points``
      evenly spaced ones.
    - ``at=None``: a model with at most ``max_points`` stream points (or
      ``max_points=None``) gets every one of them; a larger one gets ``at="stages"``'s
      points, or, with ``stage_points=None``, ``max_points`` evenly spaced stream points.

    Returns:
        ``(points, description)``; the description says which rule chose them (what
        :func:`credit.point_summary` reports as ``attrs["placement"]``).
    """
    if at is None or at == "stages":
        stream = hidden_points(graph, None, argument)
        if at is None and (max_points is None or len(stream) <= max_points):
            return stream, f"stream: all {len(stream)} stream points"
        reason = ("at='stages'" if at == "stages" else
                  f"{len(stream)} stream points > max_points={max_points}")
        if at is None and stage_points is None:
            return (cap_points(stream, max_points),
                    f"evenly spaced: {max_points} of {len(stream)} stream points "
                    f"({reason}, stage_points=None)")
        starts = stage_starts(graph, stream)
        if not starts:
            points = cap_points(stream, stage_points)
            return points, (f"evenly spaced: {len(points)} of {len(stream)} stream "
                            f"points, all of one spatial size ({reason})")
        points = cap_points(starts, stage_points)
        return points, (f"stages: {len(points)} of {len(starts)} stage starts "
                        f"({reason}, stage_points={stage_points})")
    points = hidden_points(graph, at, argument)
    return points, f"at={at!r}"


def legacy_config(config, saved_keys):
    """A config saved before the sizing options existed, read as it was meant.

    A config that holds every key in ``saved_keys`` (all the arguments the method had
    before ``width``) is one ``get_config`` wrote; the sizing keys it lacks take the
    values that give the sizes and points of the version that saved it: ``width=None``,
    ``max_points=None`` and no budget (saved before any of them existed), or
    ``stage_points=None`` (saved with ``max_points`` but before ``stage_points``:
    ``max_points`` evenly spaced points). A config written by hand (lacking any of
    ``saved_keys``) gets the current defaults.
    """
    config = dict(config)
    if not set(saved_keys) <= set(config):
        return config
    legacy = {"width": None, "max_points": None, "max_parameters": NO_BUDGET,
              "stage_points": None}
    for key, value in legacy.items():
        config.setdefault(key, value)
    return config


# --------------------------------------------------------------------------------------
# State


def synthesizer_seed(method, i):
    """The seed of the ``i``-th synthesizer's initial weights."""
    return int(method.seed_for(i, 0x5E).integers(0, 2**31 - 1))


def own_synthesizers(method, synthesizers, extra_variables=()):
    """Give ``method.state`` the synthesizers, their optimizer and the counters.

    Call inside ``compat.init_scope()`` in the method's ``build``. The state (a Keras
    layer saved with the model) tracks, under fixed attribute names,
    ``synthesizer_layers`` (the list ``synthesizers``), ``synthesizer_optimizer`` (built
    on their variables and ``extra_variables``), ``step`` (steps taken, an integer
    variable: int64 on TensorFlow, int32 on JAX, see
    :func:`credit.backends.counter_dtype`) and ``seed_variable`` (the seed of the step's
    stochastic draws). On JAX the optimizer's variables ride with the state's
    (:func:`credit.backends.jax.state_variables`: it is an attribute of the state).

    Returns:
        The optimizer.
    """
    state = method.state
    optimizer = make_optimizer(method.optimizer, method.learning_rate)
    variables = [v for s in synthesizers for v in s.trainable_variables]
    optimizer.build(variables + list(extra_variables))
    state.synthesizer_layers = list(synthesizers)
    state.synthesizer_optimizer = optimizer
    base = int(method.seed_for(len(synthesizers), 0xD41).integers(0, 2**31 - 1))
    counter = backends.counter_dtype()
    state.step = state.add_weight(shape=(), dtype=counter, name="step",
                                  initializer="zeros", trainable=False,
                                  aggregation="only_first_replica")
    state.seed_variable = state.add_weight(
        shape=(), dtype=counter, name="seed", trainable=False,
        initializer=keras.initializers.Constant(base), aggregation="only_first_replica")
    return optimizer


def state_attribute(method, name):
    """``method.state.<name>``, or None before the method is bound."""
    return getattr(method.state, name, None) if method.state is not None else None


def synthesizer_variables(method):
    """The trainable variables of the synthesizers (or heads) on ``method.state``."""
    return [v for s in method.state.synthesizer_layers for v in s.trainable_variables]


def train_synthesizers(method, tape, loss, extra_pairs=()):
    """One step of the synthesizers' optimizer on ``loss`` (recorded on ``tape``;
    TensorFlow only: synthetic gradients, and through time).

    Under ``tf.distribute`` the optimizer sums the replicas' gradients, so the loss is
    divided by the number of replicas: the sum is then the gradient of the global mean,
    as for the model's loss. ``extra_pairs``: ``(gradient, variable)`` pairs (already
    per replica) applied in the same step. Increments the step counter.
    """
    with tape:
        scaled = loss / tf.cast(replicas(), loss.dtype)
    variables = synthesizer_variables(method)
    pairs = [(g, v) for g, v in zip(tape.gradient(scaled, variables), variables)
             if g is not None]
    pairs += [(g / tf.cast(replicas(), g.dtype), v) for g, v in extra_pairs if g is not None]
    apply_gradients(method, pairs)


def train_on_loss(method, loss_fn):
    """One step of the synthesizers' optimizer on the scalar ``loss_fn()``, on either
    backend (:func:`credit.backends.value_and_gradients`); returns the loss.

    ``loss_fn`` computes the loss from the synthesizers (it is run again here, under
    the gradient: on JAX a tape cannot span ``signals`` and ``update``). Under
    ``tf.distribute`` the gradients are divided by the number of replicas (see
    :func:`train_synthesizers`). Increments the step counter.

    Example:
        >>> loss = train_on_loss(method, lambda: ops.mean(ops.square(
        ...     method.synthesizers["dense"](h))))                 # doctest: +SKIP
    """
    variables = synthesizer_variables(method)
    loss, grads, _ = backends.value_and_gradients(loss_fn, variables)
    n = replicas()
    pairs = [(g if n == 1 else g / ops.cast(n, g.dtype), v)
             for g, v in zip(grads, variables) if g is not None]
    apply_gradients(method, pairs)
    return loss


def apply_gradients(method, pairs):
    """Apply ``(gradient, variable)`` pairs with the method's synthesizer optimizer
    (nothing if there are none: an overridden signal may not depend on the
    synthesizers) and increment the step counter."""
    if pairs:
        method.state.synthesizer_optimizer.apply([g for g, _ in pairs],
                                                 [v for _, v in pairs])
    method.state.step.assign_add(1)


def replicas():
    """Replicas in sync under the current distribution strategy (TensorFlow's
    ``tf.distribute``); 1 on JAX, whose step sees the global batch (a data-parallel
    mesh shards arrays, it does not split the step)."""
    if backends.is_jax():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_batch(h):
    """The global batch size (all replicas), in ``h``'s dtype.

    Synthesizers predict per-example gradients, ``global_batch * dL/dh`` (the loss
    averages over the batch), so that they do not depend on the batch size.
    """
    if backends.is_jax():
        return ops.cast(ops.shape(h)[0], h.dtype)
    return tf.cast(tf.shape(h)[0] * replicas(), h.dtype)


# --------------------------------------------------------------------------------------
# Argument checks


def make_optimizer(optimizer, learning_rate):
    """A fresh Keras optimizer from a name or config dict, with ``learning_rate`` set."""
    try:
        made = keras.optimizers.get(optimizer)
    except (ValueError, TypeError) as err:
        raise ValueError(f"optimizer {optimizer!r} is not a Keras optimizer: "
                         f"{err}") from None
    if learning_rate is not None:
        made.learning_rate = learning_rate
    return made


def take_pending(method, trace):
    """What ``method.signals(trace)`` left in ``method._pending`` for its ``update``
    (the synthesizers' or heads' tape and targets), taken once; ``signals`` is run first
    if it was not run on this trace (an ``update`` called on its own)."""
    pending = method._pending
    if pending is None or pending["trace"] is not trace:
        method.signals(trace)
        pending = method._pending
    method._pending = None
    return pending


def optimizer_arguments(optimizer, learning_rate):
    """``(optimizer, learning_rate)`` checked and stored as configs: the optimizer as a
    name or a ``keras.optimizers.serialize`` dict, the learning rate as None or a float."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = keras.optimizers.serialize(optimizer)
    if not isinstance(optimizer, (str, dict)):
        raise ValueError("optimizer must be a Keras optimizer name (e.g. 'adam', "
                         "'sgd') or a config dict from keras.optimizers.serialize; "
                         f"got {optimizer!r} of type {type(optimizer).__name__}.")
    if learning_rate is not None and (not is_real(learning_rate) or not learning_rate > 0):
        raise ValueError("learning_rate must be None (the optimizer's default) or a "
                         f"positive number; got {learning_rate!r}.")
    return optimizer, None if learning_rate is None else float(learning_rate)


def check_common(method, *, seed, synthesizer, conditioned, warmup_steps, hidden_units,
                 activation, optimizer, learning_rate):
    """Check the arguments both synthetic-gradient methods take; set them on ``method``."""
    if seed is not None and not is_int(seed):
        raise ValueError(f"seed must be None or an integer; got {seed!r}.")
    method.synthesizer = choice("synthesizer", synthesizer, SYNTHESIZERS)
    method.conditioned = boolean("conditioned", conditioned)
    if not is_int(warmup_steps) or warmup_steps < 0:
        raise ValueError("warmup_steps must be a non-negative integer (steps of "
                         f"backprop while the synthesizers learn); got {warmup_steps!r}.")
    method.warmup_steps = int(warmup_steps)
    method.hidden_units = sizes("hidden_units", hidden_units)
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as err:
        raise ValueError(f"activation {activation!r} is not a Keras activation: "
                         f"{err}") from None
    method.activation = activation
    method.optimizer, method.learning_rate = optimizer_arguments(optimizer, learning_rate)
    with compat.init_scope():
        make_optimizer(method.optimizer, method.learning_rate)  # fail now, not at compile


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def boolean(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def choice(name, value, choices):
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; "
                         f"got {value!r}.")
    return value.strip().lower()


def indices(name, value):
    """None, or a tuple of layer names and block indices."""
    if value is None:
        return None
    if is_int(value) or isinstance(value, str):
        value = (value,)
    if (not isinstance(value, (list, tuple)) or not value
            or not all(is_int(v) or isinstance(v, str) for v in value)):
        raise ValueError(f"{name} must be None (every hidden block) or a non-empty list of "
                         f"layer names or block indices, e.g. ['dense_1'] or [0, 2, -1]; "
                         f"got {value!r}.")
    return tuple(v if isinstance(v, str) else int(v) for v in value)


def optional_count(name, value, meaning, example):
    """None or a positive integer (``meaning`` and ``example`` go in the message)."""
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be None ({meaning}) or a positive integer, e.g. "
                         f"{name}={example}; got {value!r}.")
    return int(value)


def check_sizing(method, *, width, max_points, max_parameters, stage_points):
    """Check and set the sizing arguments both point methods with their own nets take."""
    method.width = optional_count("width", width, "no bound: every convolution at the "
                                  "block's own channels", 64)
    method.max_points = optional_count("max_points", max_points,
                                       "every stream point, whatever the model's size", 16)
    method.stage_points = optional_count(
        "stage_points", stage_points, "a large model gets max_points evenly spaced "
        "points instead of its stage starts", STAGE_POINTS)
    method.max_parameters = optional_count(
        "max_parameters", max_parameters,
        f"{BUDGET_RATIO}x the model's parameters, at least {BUDGET_FLOOR:,}", 50_000_000)


def point_parameters(method, points):
    """Dict from point to the number of weights of its synthesizer or head."""
    layers = state_attribute(method, "synthesizer_layers")
    if layers is None:
        return {}
    return {p: int(sum(int(np.prod(v.shape)) for v in layer.weights))
            for p, layer in zip(points, layers)}


def sizes(name, value):
    """A non-empty tuple of positive layer sizes."""
    if is_int(value):
        value = (value,)
    if (not isinstance(value, (list, tuple)) or not value
            or not all(is_int(v) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a non-empty list of positive layer sizes, e.g. "
                         f"[1024, 1024]; got {value!r}.")
    return tuple(int(v) for v in value)
