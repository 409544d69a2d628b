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
import tensorflow as tf

SYNTHESIZERS = ("linear", "mlp")
_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}


class Synthesizer(keras.layers.Layer):
    """A synthetic-gradient model ``M(h[, y])``: its output is shaped like ``h``.

    Dense boundaries: ``concat(flatten(h), y)`` through Dense layers (``"linear"``: one
    layer, i.e. ``h A + y B + c``). Convolutional boundaries: ``concat(h, y broadcast
    over the spatial axes)`` on the channel axis, through same-padding convolutions.
    The last layer is zero-initialised. Built on creation; owned by the method's state.

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
    """

    def __init__(self, shape, kind="linear", condition_units=0, hidden_units=(),
                 hidden_filters=(), kernel_size=5, activation="relu",
                 data_format="channels_last", seed=None, **kwargs):
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
        if self.convolutional:
            rank = len(self.shape) - 1
            axis = -1 if data_format == "channels_last" else 0
            channels = self.shape[axis]
            hidden = self.hidden = hidden_filters if kind == "mlp" else ()
            conv = _CONV[rank]
            self.stack = [conv(f, kernel_size, padding="same", activation=activation,
                               data_format=data_format, kernel_initializer=init(),
                               dtype="float32", name=f"conv_{i}")
                          for i, f in enumerate(hidden)]
            self.stack.append(conv(channels, kernel_size, padding="same",
                                   data_format=data_format, kernel_initializer=zeros,
                                   bias_initializer=zeros, dtype="float32",
                                   name="conv_out"))
            spatial = list(self.shape)
            spatial[axis] = channels + self.condition_units
            shape = (None,) + tuple(spatial)
        else:
            units = int(np.prod(self.shape))
            hidden = hidden_units if kind == "mlp" else ()
            self.stack = [keras.layers.Dense(u, activation=activation, name=f"dense_{i}",
                                             kernel_initializer=init(), dtype="float32")
                          for i, u in enumerate(hidden)]
            self.stack.append(keras.layers.Dense(units, kernel_initializer=zeros,
                                                 bias_initializer=zeros, dtype="float32",
                                                 name="dense_out"))
            shape = (None, units + self.condition_units)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, h, condition=None):
        batch = tf.shape(h)[0]
        if self.convolutional:
            x = h
            if condition is not None:
                axis = -1 if self.data_format == "channels_last" else 1
                cond_shape = [1] * len(h.shape)
                cond_shape[0], cond_shape[axis] = -1, self.condition_units
                target_shape = tf.unstack(tf.shape(h))
                target_shape[axis] = self.condition_units
                c = tf.broadcast_to(tf.reshape(condition, cond_shape), tf.stack(target_shape))
                x = tf.concat([h, c], axis=axis)
        else:
            x = tf.reshape(h, (batch, -1))
            if condition is not None:
                x = tf.concat([x, condition], axis=-1)
        for layer in self.stack:
            x = layer(x)
        return tf.reshape(x, tf.shape(h))


# --------------------------------------------------------------------------------------
# State


def synthesizer_seed(method, i):
    """The seed of the ``i``-th synthesizer's initial weights."""
    return int(method.seed_for(i, 0x5E).integers(0, 2**31 - 1))


def own_synthesizers(method, synthesizers, extra_variables=()):
    """Give ``method.state`` the synthesizers, their optimizer and the counters.

    Call inside ``tf.init_scope()`` in the method's ``build``. The state (a Keras layer
    saved with the model) tracks, under fixed attribute names, ``synthesizer_layers``
    (the list ``synthesizers``), ``synthesizer_optimizer`` (built on their variables and
    ``extra_variables``), ``step`` (steps taken, an int64 variable) and
    ``seed_variable`` (the seed of the step's stochastic draws).

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
    state.step = state.add_weight(shape=(), dtype="int64", name="step",
                                  initializer="zeros", trainable=False,
                                  aggregation="only_first_replica")
    state.seed_variable = state.add_weight(
        shape=(), dtype="int64", name="seed", trainable=False,
        initializer=keras.initializers.Constant(base), aggregation="only_first_replica")
    return optimizer


def state_attribute(method, name):
    """``method.state.<name>``, or None before the method is bound."""
    return getattr(method.state, name, None) if method.state is not None else None


def train_synthesizers(method, tape, loss, extra_pairs=()):
    """One step of the synthesizers' optimizer on ``loss`` (recorded on ``tape``).

    Under ``tf.distribute`` the optimizer sums the replicas' gradients, so the loss is
    divided by the number of replicas: the sum is then the gradient of the global mean,
    as for the model's loss. ``extra_pairs``: ``(gradient, variable)`` pairs (already
    per replica) applied in the same step. Increments the step counter.
    """
    with tape:
        scaled = loss / tf.cast(replicas(), loss.dtype)
    variables = [v for s in method.state.synthesizer_layers for v in s.trainable_variables]
    pairs = [(g, v) for g, v in zip(tape.gradient(scaled, variables), variables)
             if g is not None]
    pairs += [(g / tf.cast(replicas(), g.dtype), v) for g, v in extra_pairs if g is not None]
    if pairs:  # (an overridden signal may not depend on the synthesizers)
        method.state.synthesizer_optimizer.apply([g for g, _ in pairs],
                                                 [v for _, v in pairs])
    method.state.step.assign_add(1)


def replicas():
    """Replicas in sync under the current distribution strategy."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_batch(h):
    """The global batch size (all replicas), in ``h``'s dtype.

    Synthesizers predict per-example gradients, ``global_batch * dL/dh`` (the loss
    averages over the batch), so that they do not depend on the batch size.
    """
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
    with tf.init_scope():
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


def sizes(name, value):
    """A non-empty tuple of positive layer sizes."""
    if is_int(value):
        value = (value,)
    if (not isinstance(value, (list, tuple)) or not value
            or not all(is_int(v) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a non-empty list of positive layer sizes, e.g. "
                         f"[1024, 1024]; got {value!r}.")
    return tuple(int(v) for v in value)
