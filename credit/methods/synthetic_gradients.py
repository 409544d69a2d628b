"""Synthetic gradients (DNI) and their label-conditioned form (cDNI): learned error signals."""

import numbers

import keras
import numpy as np
import tensorflow as tf

from credit import transports
from credit.registry import register
from credit.signal import ErrorSignal, hidden_points, output_units

SYNTHESIZERS = ("linear", "mlp")
TARGETS = ("bootstrap", "true")
_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}


@register
class SyntheticGradients(ErrorSignal):
    """Synthetic gradients / decoupled neural interfaces (Jaderberg et al. 2016,
    "Decoupled Neural Interfaces using Synthetic Gradients", ICML 2017), as analysed by
    Czarnecki et al. 2017, "Understanding Synthetic Gradients and Decoupled Neural
    Interfaces" (ICML).

    A learned synthesizer ``M_p`` sits at each chosen layer output ("module boundary",
    a feedback point) and predicts the gradient there: ``delta_p = M_p(h_p)``, or
    ``M_p(h_p, y)`` for cDNI (``conditioned=True``), where ``y`` is the label one-hot
    (classification) or the regression target. Between boundaries the signal flows down
    by true backprop (through residual connections, attention, recurrent layers alike);
    the output block gets the true loss gradient unless the output itself is a
    boundary. Removes update and backward locking between the boundaries.

    Each synthesizer is trained, with its own optimizer, by mean squared error onto a
    stop-gradient target: the true gradient ``dL/dh_k`` (``target="true"``, the paper's
    analysis), or DNI's bootstrap (``target="bootstrap"``): the next boundary's
    synthetic signal carried down to ``h_k`` by true backprop; the topmost boundary gets
    the true gradient (in a branching model: the signals of every boundary above,
    carried down). The last layer of every synthesizer is zero-initialised, so the first
    signals are zero.

    Synthesizers predict the per-example gradient, ``batch_size * dL/dh_k`` (the loss
    averages over the batch), so they do not depend on the batch size; the signal is
    their output divided by the batch size, and ``sg_loss`` is measured in those
    per-example units.

    Args:
        seed: seed of the synthesizers' initial weights and of the stochastic updates
            (None: drawn from numpy's global state, so ``keras.utils.set_random_seed``
            still makes runs reproducible).
        synthesizer: ``"linear"``: ``h A + y B + c`` (the form analysed by Czarnecki et
            al.); ``"mlp"``: ``hidden_units`` ReLU layers, then a linear layer. On a
            boundary with spatial or time axes the synthesizer is made of same-padding
            convolutions instead (``kernel_size`` on the outputs of convolutions, 1 --
            position-wise -- on others, such as sequences of an RNN or a transformer),
            with ``hidden_filters`` hidden layers for ``"mlp"``, and the label is
            broadcast over those axes as extra channels.
        conditioned: the synthesizers also see the label (cDNI). Integer class labels
            are one-hot encoded with as many classes as the output block has units;
            a target shaped like the output (one-hot labels, regression targets) is
            used as it is.
        target: ``"bootstrap"`` or ``"true"``, see above.
        at: layer names, or block indices (negative ones count from the end), whose
            outputs carry a synthesizer. Default: every hidden block's output. It may
            include the output block (``-1``): the synthesizer then replaces the loss
            gradient at the model output (the
            linear-regression setting of the paper's convergence theorem; for a softmax
            or sigmoid output this is the gradient with respect to the probabilities,
            badly scaled near 0 and 1: prefer a logits output with from_logits=True).
        update_probability: each block is updated with this probability per step (DNI's
            stochastic updates); a block not updated gets a zero signal. With a momentum
            optimizer (Adam, SGD with momentum) its momentum still moves it; with 0
            nothing moves at all. The synthesizers are trained every step.
        warmup_steps: for this many steps the blocks get backprop's gradient while the
            synthesizers learn from their targets; then the synthetic signals take over.
        hidden_units: widths of the hidden layers of an ``"mlp"`` synthesizer on a dense
            boundary (DNI used two hidden layers of 1024 units).
        hidden_filters: channels of the hidden convolutions of an ``"mlp"`` synthesizer
            on a convolutional boundary.
        kernel_size: kernel size of the convolutional synthesizers.
        activation: activation of the hidden layers of an ``"mlp"`` synthesizer.
        optimizer: the synthesizers' optimizer: a Keras name (``"adam"``, ``"sgd"``)
            or a config dict (``keras.optimizers.serialize(...)``).
        learning_rate: the synthesizers' learning rate (None: the optimizer's own, or
            the one in its config dict). Synthesizers must track a moving target, so
            the default, 0.01, is larger than Adam's usual 0.001.

    Attributes:
        synthesizers: dict from point (layer name) to its :class:`Synthesizer` (a Keras
            layer), after the method is bound to a model.
        optimizer_instance: the synthesizers' Keras optimizer, after binding.

    Logs:
        ``sg_loss``: the synthesizers' mean regression loss of the step.

    Example:
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method="cdni")                              # doctest: +SKIP
        >>> model.compile(optimizer="sgd", loss="mse", method=credit.get(
        ...     {"name": "sg", "synthesizer": "mlp", "hidden_units": [256, 256],
        ...      "update_probability": 0.5}))                         # doctest: +SKIP
        >>> model.fit(x, y).history["sg_loss"]                        # doctest: +SKIP
    """

    name = "synthetic_gradients"
    aliases = ("sg", "dni")
    log_names = ("sg_loss",)

    def __init__(self, seed=None, synthesizer="linear", conditioned=False,
                 target="bootstrap", at=None, update_probability=1.0, warmup_steps=0,
                 hidden_units=(1024, 1024), hidden_filters=(128, 128), kernel_size=5,
                 activation="relu", optimizer="adam", learning_rate=0.01):
        super().__init__(seed=seed)
        if seed is not None and not _is_int(seed):
            raise ValueError(f"seed must be None or an integer; got {seed!r}.")
        self.synthesizer = _choice("synthesizer", synthesizer, SYNTHESIZERS)
        if not isinstance(conditioned, (bool, np.bool_)):
            raise ValueError(f"conditioned must be True or False; got {conditioned!r}.")
        self.conditioned = bool(conditioned)
        self.target = _choice("target", target, TARGETS)
        self.at = _indices("at", at)
        if (isinstance(update_probability, (bool, np.bool_))
                or not isinstance(update_probability, numbers.Real)
                or not 0.0 <= float(update_probability) <= 1.0):
            raise ValueError("update_probability must be a number in [0, 1] (the chance "
                             "that a boundary's layers are updated in a step); got "
                             f"{update_probability!r}.")
        self.update_probability = float(update_probability)
        if not _is_int(warmup_steps) or warmup_steps < 0:
            raise ValueError("warmup_steps must be a non-negative integer (steps of "
                             f"backprop while the synthesizers learn); got {warmup_steps!r}.")
        self.warmup_steps = int(warmup_steps)
        self.hidden_units = _sizes("hidden_units", hidden_units)
        self.hidden_filters = _sizes("hidden_filters", hidden_filters)
        if _is_int(kernel_size) and kernel_size > 0:
            self.kernel_size = int(kernel_size)
        elif (isinstance(kernel_size, (list, tuple)) and kernel_size
              and all(_is_int(s) and s > 0 for s in kernel_size)):
            self.kernel_size = tuple(int(s) for s in kernel_size)
        else:
            raise ValueError("kernel_size must be a positive integer or a tuple of them "
                             f"(one per spatial axis); got {kernel_size!r}.")
        try:
            keras.activations.get(activation)
        except (ValueError, TypeError) as err:
            raise ValueError(f"activation {activation!r} is not a Keras activation: "
                             f"{err}") from None
        self.activation = activation
        if isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer = keras.optimizers.serialize(optimizer)
        if not isinstance(optimizer, (str, dict)):
            raise ValueError("optimizer must be a Keras optimizer name (e.g. 'adam', "
                             "'sgd') or a config dict from keras.optimizers.serialize; "
                             f"got {optimizer!r} of type {type(optimizer).__name__}.")
        self.optimizer = optimizer
        if learning_rate is not None and (
                isinstance(learning_rate, (bool, np.bool_))
                or not isinstance(learning_rate, numbers.Real) or not learning_rate > 0):
            raise ValueError("learning_rate must be None (the optimizer's default) or a "
                             f"positive number; got {learning_rate!r}.")
        self.learning_rate = None if learning_rate is None else float(learning_rate)
        with tf.init_scope():
            self._make_optimizer()  # fail now, not at compile, on a bad optimizer
        self.synthesizers = None
        self.optimizer_instance = None
        self.boundaries = None
        self._step = None
        self._seed_variable = None
        self._pending = None
        self._masked_output = None

    # -- state -----------------------------------------------------------------------

    def _make_optimizer(self):
        try:
            optimizer = keras.optimizers.get(self.optimizer)
        except (ValueError, TypeError) as err:
            raise ValueError(f"optimizer {self.optimizer!r} is not a Keras optimizer: "
                             f"{err}") from None
        if self.learning_rate is not None:
            optimizer.learning_rate = self.learning_rate
        return optimizer

    def build(self, graph):
        boundaries = hidden_points(graph, self.at, "at")
        if not boundaries:
            raise ValueError(
                "the model has no hidden block, so there is no hidden output for a "
                "synthesizer; pass at=[-1] to put one at the model output.")
        self.points = list(boundaries)
        self._masked_output = None
        if self.update_probability < 1.0 and not any(graph.is_output(p) for p in boundaries):
            # Stochastic updates reach the output block too: give it a (non-synthetic)
            # point whose signal is the true output gradient, masked.
            output = graph.blocks[-1].point if graph.blocks else None
            if output is None or not graph.is_output(output):
                raise ValueError(
                    "update_probability < 1 masks the output block's update too, which "
                    "needs the model output to be a layer's output; this model's output "
                    "is computed after its last layer. Use update_probability=1.")
            self._masked_output = output
            self.points.append(output)
        n_cond = output_units(graph, "cDNI") if self.conditioned else 0
        base = int(self.seed_for(len(boundaries), 0xD41).integers(0, 2**31 - 1))
        with tf.init_scope():
            synthesizers = {}
            for i, name in enumerate(boundaries):
                shape = graph.point_shape(name)
                conv_layer = _conv_layer(graph, name)
                synthesizers[name] = Synthesizer(
                    shape, kind=self.synthesizer, condition_units=n_cond,
                    hidden_units=self.hidden_units, hidden_filters=self.hidden_filters,
                    kernel_size=self.kernel_size if conv_layer is not None else 1,
                    activation=self.activation,
                    data_format=getattr(conv_layer, "data_format", "channels_last"),
                    seed=int(self.seed_for(i, 0x5E).integers(0, 2**31 - 1)),
                    name=f"synthesizer_{i}")
            optimizer = self._make_optimizer()
            variables = [v for s in synthesizers.values() for v in s.trainable_variables]
            optimizer.build(variables)
            self.state.synthesizer_layers = list(synthesizers.values())
            self.state.synthesizer_optimizer = optimizer
            self._step = self.state.add_weight(shape=(), dtype="int64", name="step",
                                               initializer="zeros", trainable=False,
                                               aggregation="only_first_replica")
            self._seed_variable = self.state.add_weight(
                shape=(), dtype="int64", name="seed", trainable=False,
                initializer=keras.initializers.Constant(base),
                aggregation="only_first_replica")
        self.synthesizers = synthesizers
        self.optimizer_instance = optimizer
        self.boundaries = tuple(boundaries)

    def transport(self, layer, kernels):
        return None

    @property
    def point_rule(self):
        return "M_p(h_p, y) (learned synthesizer, cDNI)" if self.conditioned else \
            "M_p(h_p) (learned synthesizer)"

    @property
    def step(self):
        """Training steps taken (the synthesizers' update count), a variable."""
        return self._step

    # -- signals ---------------------------------------------------------------------

    def synthetic_signal(self, name, trace):
        """The synthetic signal ``delta_p = M_p(h_p[, y]) / batch_size`` at point ``name``.

        ``batch_size`` is the global batch (all replicas under ``tf.distribute``), as in
        the loss. The synthesizers are trained through this value (its gradient with
        respect to the synthesizer's weights), so a subclass may override it, e.g. with
        an oracle.
        """
        h = tf.cast(tf.stop_gradient(trace.outputs[name]), "float32")
        condition = trace.labels() if self.conditioned else None
        if condition is not None:
            condition = tf.cast(condition, "float32")
        return self.synthesizers[name](h, condition) / _global_batch(h)

    def signals(self, trace):
        names = trace.points
        tape = tf.GradientTape()
        with tape:
            predictions = {p: self.synthetic_signal(p, trace) for p in self.boundaries}
        hidden = [p for p in self.boundaries if trace.stops[p] is not None]
        outputs = [p for p in self.boundaries if trace.stops[p] is None]

        truth = None
        if self.target == "true" or self.warmup_steps > 0:
            truth = trace.loss_gradients()
        if self.target == "bootstrap":
            # The synthetic chain: every boundary's prediction carried down by true
            # backprop to the boundaries below it; the top ones get the loss gradient.
            chain = dict(predictions)
            if self._masked_output is not None:
                chain[self._masked_output] = trace.output_gradient()
            targets = trace.gradient(chain, hidden) if hidden else {}
            for p in outputs:
                targets[p] = trace.output_gradient()
        else:
            targets = {p: truth[p] for p in self.boundaries}
        self._pending = {"trace": trace, "tape": tape, "predictions": predictions,
                         "targets": targets}

        deltas = dict(predictions)
        if self._masked_output is not None:
            deltas[self._masked_output] = trace.output_gradient()
        if self.warmup_steps > 0:
            warm = tf.convert_to_tensor(self._step) < self.warmup_steps
            deltas = {p: tf.where(warm, tf.cast(truth[p], d.dtype), d)
                      for p, d in deltas.items()}
        if self.update_probability == 0.0:
            return {p: tf.zeros_like(trace.outputs[p]) for p in names}
        if self.update_probability < 1.0:
            seed = tf.stack([tf.convert_to_tensor(self._seed_variable),
                             tf.convert_to_tensor(self._step)])
            draws = tf.random.stateless_uniform([len(names)], seed=seed)
            for i, p in enumerate(names):
                deltas[p] = tf.cast(draws[i] < self.update_probability,
                                    deltas[p].dtype) * deltas[p]
        return deltas

    # -- training the synthesizers ---------------------------------------------------

    def update(self, trace, signals):
        pending = self._pending
        if pending is None or pending["trace"] is not trace:
            self.signals(trace)
            pending = self._pending
        self._pending = None
        tape, predictions = pending["tape"], pending["predictions"]
        with tape:
            losses = []
            for p in self.boundaries:
                prediction = predictions[p]
                batch = _global_batch(prediction)
                target = tf.cast(tf.stop_gradient(pending["targets"][p]), prediction.dtype)
                losses.append(tf.reduce_mean(tf.square(batch * (prediction - target))))
            loss = tf.add_n(losses) / len(losses)
            # Under tf.distribute the optimizer sums the replicas' gradients: scale so
            # that the sum is the gradient of the global mean, as for the model's loss.
            scaled = loss / tf.cast(_replicas(), loss.dtype)
        variables = [v for s in self.synthesizers.values() for v in s.trainable_variables]
        pairs = [(g, v) for g, v in zip(tape.gradient(scaled, variables), variables)
                 if g is not None]
        if pairs:  # (an overridden synthetic_signal may not depend on the synthesizers)
            self.optimizer_instance.apply([g for g, _ in pairs], [v for _, v in pairs])
        self._step.assign_add(1)
        return {"sg_loss": loss}


register(SyntheticGradients, name="cdni", aliases=("conditioned_dni",),
         defaults={"conditioned": True})


class Synthesizer(keras.layers.Layer):
    """A synthetic-gradient model ``M(h[, y])``: its output is shaped like ``h``.

    Dense boundaries: ``concat(flatten(h), y)`` through Dense layers (``"linear"``: one
    layer, i.e. ``h A + y B + c``). Convolutional boundaries: ``concat(h, y broadcast
    over the spatial axes)`` on the channel axis, through same-padding convolutions.
    The last layer is zero-initialised. Built on creation; owned by the method's state.
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


def _conv_layer(graph, name):
    """The convolution whose output map a point carries (its block's head), or None."""
    layer = graph.layers[name]
    if isinstance(layer, transports.TYPES) and not isinstance(
            layer, (keras.layers.Dense, keras.layers.EinsumDense)):
        return layer
    block = graph.block_of(name)
    if block is not None and block.point == name and isinstance(block.head, transports.TYPES) \
            and not isinstance(block.head, (keras.layers.Dense, keras.layers.EinsumDense)):
        return block.head
    return None


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _global_batch(h):
    return tf.cast(tf.shape(h)[0] * _replicas(), h.dtype)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _choice(name, value, choices):
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; "
                         f"got {value!r}.")
    return value.strip().lower()


def _indices(name, value):
    if value is None:
        return None
    if _is_int(value) or isinstance(value, str):
        value = (value,)
    if (not isinstance(value, (list, tuple)) or not value
            or not all(_is_int(v) or isinstance(v, str) for v in value)):
        raise ValueError(f"{name} must be None (every hidden block) or a non-empty list of "
                         f"layer names or block indices, e.g. ['dense_1'] or [0, 2, -1]; "
                         f"got {value!r}.")
    return tuple(v if isinstance(v, str) else int(v) for v in value)


def _sizes(name, value):
    if _is_int(value):
        value = (value,)
    if (not isinstance(value, (list, tuple)) or not value
            or not all(_is_int(v) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a non-empty list of positive layer sizes, e.g. "
                         f"[1024, 1024]; got {value!r}.")
    return tuple(int(v) for v in value)
