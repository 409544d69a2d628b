"""Synthetic gradients (DNI) and their label-conditioned form (cDNI): learned error signals."""

import numbers

import keras
import numpy as np
import tensorflow as tf

from credit import recurrent, transports
from credit.registry import register
from credit.signal import ErrorSignal, hidden_points, output_units

SYNTHESIZERS = ("linear", "mlp")
#: Decay of the running mean square of the bootstrap targets (``normalize=True``).
NORMALIZE_DECAY = 0.99
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

    **Through time** (``through_time=True``, Jaderberg et al. §3.2): on a model with a
    stateful recurrent layer (LSTM, GRU, SimpleRNN with ``stateful=True`` and a fixed
    batch size) trained with ``fit(shuffle=False)`` over consecutive windows of a long
    sequence (truncated BPTT), a synthesizer sits on the layer's carried state ``s``
    (for an LSTM, ``h`` and ``c`` together) instead of at layer outputs. At the end of
    each window it adds ``scale * M(s_T)`` to the backward pass at the final state: an
    estimate of the gradient of all future loss, which truncation cuts off. It is
    trained by bootstrapping: at the next window's initial state ``s_0`` (the same
    values, carried), its prediction ``M(s_0)`` regresses onto the gradient that
    reaches ``s_0`` in that window's backward pass -- the window's own loss plus
    ``scale * M(s_T)`` carried back through the window -- so with ``scale < 1`` it
    learns a future gradient discounted by ``scale`` per window, as in dni-pytorch's RNN
    example. With a stateful layer ``s_0`` is the state variable read at the start of
    the step, so prediction, forward and backward pass and target are one training
    step. A row whose state was reset between two steps (a new sequence) gives no
    target; :class:`credit.recurrent.StatefulWindows` (added by ``fit(windows)`` for a
    :class:`credit.data.Windows`) resets rows where sequences begin, injects nothing at
    a sequence's end, and gives cDNI the next window's targets, which the synthesizer
    at a window's end is conditioned on. No other layer gets a synthesizer: inside a
    window every layer learns by backprop through time.

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
        through_time: synthesizers on the carried state of stateful recurrent layers
            (see above) instead of at layer outputs. ``at`` then names recurrent
            layers (default: every stateful one); ``warmup_steps`` are plain truncated
            BPTT (nothing injected) while the synthesizers learn; conditioning
            (cDNI) is on the next window's targets, flattened (integer ids one-hot).
        scale: through time only: the factor on the synthetic gradient injected at a
            window's end (None: 0.1, the factor of Jaderberg et al.'s recurrent
            experiments as dni-pytorch's RNN example reports it).
        aux_weight: through time only: weight of DNI's auxiliary task (0: off). A
            linear head on the layer's output at the window's first step predicts
            the synthetic gradient injected at the window's end (the furthest future
            gradient the window knows, per example), and the squared error, times
            ``aux_weight``, is backpropagated into the network as well as into the
            head, so the recurrent layer learns features that predict its own future
            gradient. Needs ``return_sequences=True``. Logged as ``aux_loss``.
        normalize: through time only: the synthesizer predicts the bootstrap target
            divided by its running root mean square ``sigma`` (decay 0.99, bias
            corrected, over the rows that give a target), and ``sigma * M(s)`` is
            what is injected. Keras averages a sequence loss over its time steps and
            output units, so per-example state gradients are tiny (1e-3 and below)
            and an Adam-trained synthesizer's steps would swamp them; normalised
            targets are of order 1 whatever the loss's reduction. ``sg_loss`` is then
            in units of the targets' mean square (predicting zero scores about 1).

    Attributes:
        synthesizers: dict from point (layer name) to its :class:`Synthesizer` (a Keras
            layer), after the method is bound to a model; through time, from recurrent
            layer name to the synthesizer on its state.
        optimizer_instance: the synthesizers' Keras optimizer, after binding.
        carried: through time, dict from recurrent layer name to its
            :class:`credit.recurrent.CarriedState`.

    Logs:
        ``sg_loss``: the synthesizers' mean regression loss of the step.

    Example:
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method="cdni")                              # doctest: +SKIP
        >>> model.compile(optimizer="sgd", loss="mse", method=credit.get(
        ...     {"name": "sg", "synthesizer": "mlp", "hidden_units": [256, 256],
        ...      "update_probability": 0.5}))                         # doctest: +SKIP
        >>> model.fit(x, y).history["sg_loss"]                        # doctest: +SKIP
        >>> rnn.compile("adam", loss, method={"name": "cdni", "through_time": True})
        >>> rnn.fit(credit.data.next_step_windows(ids, 5, 32))       # doctest: +SKIP
    """

    name = "synthetic_gradients"
    aliases = ("sg", "dni")
    log_names = ("sg_loss",)

    def __init__(self, seed=None, synthesizer="linear", conditioned=False,
                 target="bootstrap", at=None, update_probability=1.0, warmup_steps=0,
                 hidden_units=(1024, 1024), hidden_filters=(128, 128), kernel_size=5,
                 activation="relu", optimizer="adam", learning_rate=0.01,
                 through_time=False, scale=None, aux_weight=0.0, normalize=True):
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
        if not isinstance(through_time, (bool, np.bool_)):
            raise ValueError(f"through_time must be True or False; got {through_time!r}.")
        self.through_time = bool(through_time)
        if scale is not None and (isinstance(scale, (bool, np.bool_))
                                  or not isinstance(scale, numbers.Real) or not scale > 0):
            raise ValueError("scale must be None (0.1) or a positive number, the factor on "
                             f"the synthetic gradient injected at a window's end; got "
                             f"{scale!r}.")
        self.scale = None if scale is None else float(scale)
        if (isinstance(aux_weight, (bool, np.bool_))
                or not isinstance(aux_weight, numbers.Real) or not aux_weight >= 0):
            raise ValueError("aux_weight must be a number >= 0 (the weight of DNI's "
                             f"auxiliary task; 0 turns it off); got {aux_weight!r}.")
        self.aux_weight = float(aux_weight)
        if not isinstance(normalize, (bool, np.bool_)):
            raise ValueError(f"normalize must be True or False; got {normalize!r}.")
        self.normalize = bool(normalize)
        if not self.through_time:
            for name, value, off in (("scale", self.scale, None),
                                     ("aux_weight", self.aux_weight, 0.0),
                                     ("normalize", self.normalize, True)):
                if value != off:
                    raise ValueError(
                        f"{name}={value!r} applies to synthetic gradients through time "
                        f"only; pass through_time=True (a stateful recurrent model), or "
                        f"leave {name} out.")
        else:
            if self.target == "true":
                raise ValueError(
                    "target='true' with through_time=True: the true gradient of the future "
                    "loss is what truncated BPTT cuts off, so it cannot be a target. Use "
                    "target='bootstrap' (the default).")
            if self.update_probability != 1.0:
                raise ValueError(
                    f"update_probability={self.update_probability} with through_time=True: "
                    "stochastic updates are defined for synthetic gradients between "
                    "layers. Leave update_probability at 1.")
            if self.at is not None and not all(isinstance(a, str) for a in self.at):
                raise ValueError(
                    f"at={list(self.at)!r}: with through_time=True, at takes the names of "
                    "stateful recurrent layers, e.g. at=['lstm'] (default: all of them).")
        if self.aux_weight > 0:
            self.log_names = ("sg_loss", "aux_loss")
        with tf.init_scope():
            self._make_optimizer()  # fail now, not at compile, on a bad optimizer
        self.synthesizers = None
        self.carried = None
        self.aux_heads = None
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
        if self.through_time:
            return self._build_through_time(graph)
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
            self._add_counters(base)
        self.synthesizers = synthesizers
        self.optimizer_instance = optimizer
        self.boundaries = tuple(boundaries)

    def _add_counters(self, base):
        """The step counter and the seed of the stochastic draws, saved with the state."""
        self._step = self.state.add_weight(shape=(), dtype="int64", name="step",
                                           initializer="zeros", trainable=False,
                                           aggregation="only_first_replica")
        self._seed_variable = self.state.add_weight(
            shape=(), dtype="int64", name="seed", trainable=False,
            initializer=keras.initializers.Constant(base),
            aggregation="only_first_replica")

    def _build_through_time(self, graph):
        if _replicas() > 1:
            raise ValueError(
                "synthetic gradients through time carry each row's state from one step to "
                "the next, which a distribution strategy splitting the batch over "
                f"{_replicas()} replicas does not keep in order; train on one device.")
        names = recurrent.stateful_layers(graph, None if self.at is None else list(self.at))
        self.points = []
        self.intercepted = list(names)
        self._masked_output = None
        n_cond = output_units(graph, "cDNI through time") if self.conditioned else 0
        base = int(self.seed_for(len(names), 0xD41).integers(0, 2**31 - 1))
        with tf.init_scope():
            synthesizers, carried, heads = {}, {}, {}
            for i, name in enumerate(names):
                layer = graph.layers[name]
                units = sum(recurrent.state_units(layer))
                synthesizers[name] = Synthesizer(
                    (units,), kind=self.synthesizer, condition_units=n_cond,
                    hidden_units=self.hidden_units, activation=self.activation,
                    seed=int(self.seed_for(i, 0x5E).integers(0, 2**31 - 1)),
                    name=f"synthesizer_{i}")
                carried[name] = recurrent.CarriedState(layer, name=f"carried_{i}")
                if self.aux_weight > 0:
                    if not getattr(layer, "return_sequences", False):
                        raise ValueError(
                            f"aux_weight={self.aux_weight} reads the output of layer "
                            f"{name!r} at the window's first step, but it has "
                            "return_sequences=False. Give it return_sequences=True, or "
                            "pass aux_weight=0.")
                    features = int(graph.point_shape(name)[-1])
                    head = keras.layers.Dense(units, kernel_initializer="zeros",
                                              dtype="float32", name=f"aux_head_{i}")
                    head.build((None, features))
                    heads[name] = head
            batch = recurrent.state_batch(graph.layers[names[0]])
            optimizer = self._make_optimizer()
            variables = [v for s in synthesizers.values() for v in s.trainable_variables]
            variables += [v for h in heads.values() for v in h.trainable_variables]
            optimizer.build(variables)
            self.state.synthesizer_layers = list(synthesizers.values())
            self.state.carried_states = list(carried.values())
            self.state.aux_heads = list(heads.values())
            self.state.synthesizer_optimizer = optimizer
            self._add_counters(base)
            # What the next window brings, set before each step by StatefulWindows.
            self._continues = self.state.add_weight(
                shape=(batch,), name="continues", trainable=False, initializer="ones")
            # Running mean square of each layer's targets and its number of updates.
            self._moments = {name: (
                self.state.add_weight(shape=(), name=f"target_power_{i}",
                                      trainable=False, initializer="zeros"),
                self.state.add_weight(shape=(), name=f"target_updates_{i}",
                                      trainable=False, initializer="zeros"))
                for i, name in enumerate(names)}
            self._next_condition = self.state.add_weight(
                shape=(batch, max(n_cond, 1)), name="next_condition", trainable=False,
                initializer="zeros")
            self._lookahead_step = self.state.add_weight(
                shape=(), dtype="int64", name="lookahead_step", trainable=False,
                initializer=keras.initializers.Constant(-1))
        self.synthesizers = synthesizers
        self.carried = carried
        self.aux_heads = heads
        self.optimizer_instance = optimizer
        self.boundaries = tuple(names)

    def set_lookahead(self, continues=None, next_targets=None):
        """Tell the method what follows the next step's window (through time only).

        Called before each batch by :class:`credit.recurrent.StatefulWindows`.

        Args:
            continues: ``(batch,)`` 1 for rows whose state carries on into the window
                after this one, 0 for rows where a new sequence begins there (nothing
                is injected at their end). None: all 1.
            next_targets: the targets of the window after this one (cDNI conditions
                the synthesizer at this window's end on them). None: zeros.
        """
        if not self.through_time or self.plan is None:
            raise ValueError("set_lookahead is for synthetic gradients through time, "
                             "after the method is bound to a model (compile it first).")
        batch = int(self._continues.shape[0])
        if continues is None:
            continues = np.ones(batch, "float32")
        continues = np.asarray(continues, "float32").reshape(-1)
        if continues.shape != (batch,):
            raise ValueError(f"continues must have one value per row ({batch}); got shape "
                             f"{continues.shape}.")
        self._continues.assign(continues)
        if self.conditioned:
            if next_targets is None:
                value = np.zeros(tuple(self._next_condition.shape), "float32")
            else:
                value = recurrent.encode_targets(next_targets, self.graph.output_shapes[0])
            self._next_condition.assign(value)
        self._lookahead_step.assign(self._step)

    def transport(self, layer, kernels):
        return None

    def intercept(self, layer, call, args, kwargs, records):
        output = recurrent.run_window(layer, call, args, kwargs, records)
        if self.aux_weight > 0:
            # The auxiliary task reads the first output step; slice it here, in the
            # forward pass, so that the step's tape sees it.
            window = records[layer.name]
            window.first = window.output[:, 0]
        return output

    @property
    def intercept_rule(self):
        if not self.through_time:
            return None
        return ("plus " + ("scale * " if self.scale != 1.0 else "")
                + ("M(s_T, y_next)" if self.conditioned else "M(s_T)")
                + " at each window's final state (synthetic gradient through time)")

    @property
    def point_rule(self):
        if self.through_time:
            return None
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

    def target_scale(self, name):
        """``sigma``: the running RMS of layer ``name``'s bootstrap targets, per example
        (1 without ``normalize``; 0 before the first target)."""
        if not self.normalize:
            return tf.constant(1.0)
        power, updates = (tf.convert_to_tensor(v) for v in self._moments[name])
        corrected = power / tf.maximum(1.0 - tf.pow(NORMALIZE_DECAY, updates), 1e-12)
        return tf.where(updates > 0, tf.sqrt(corrected), 0.0)

    def future_gradient(self, name, trace):
        """The gradient injected at the final state of layer ``name``'s window.

        ``scale * sigma * M(s_T[, y_next]) / batch_size`` (0 for rows that do not go
        on; ``sigma`` from :meth:`target_scale`), one tensor per part of the state, in
        the loss's units. An oracle subclass may return the true gradient of the
        future loss instead.
        """
        window = trace.records[name]
        final = tf.concat([tf.cast(tf.stop_gradient(s), "float32") for s in window.final], -1)
        condition = self._next_condition_value() if self.conditioned else None
        predicted = self.synthesizers[name](final, condition)
        scale = 0.1 if self.scale is None else self.scale
        delta = scale * self.target_scale(name) * predicted / _global_batch(final)
        delta = delta * tf.convert_to_tensor(self._continues)[:, None]
        return self._split(delta, window.final)

    def _next_condition_value(self):
        check = tf.debugging.assert_equal(
            tf.convert_to_tensor(self._lookahead_step), tf.convert_to_tensor(self._step),
            message="cDNI through time conditions the synthesizer at a window's end on "
                    "the next window's targets, which were not given for this step: fit "
                    "on a credit.data.Windows (model.fit(windows)) or add the callback "
                    "credit.recurrent.StatefulWindows(windows).")
        with tf.control_dependencies([check]):
            return tf.identity(tf.convert_to_tensor(self._next_condition))

    @staticmethod
    def _split(value, like):
        sizes = [int(s.shape[-1]) for s in like]
        return [tf.cast(part, s.dtype) for part, s in zip(tf.split(value, sizes, -1), like)]

    def _signals_through_time(self, trace):
        tape = tf.GradientTape()
        pending = {"trace": trace, "tape": tape, "layers": {}}
        condition = None
        if self.conditioned:
            condition = tf.cast(recurrent.encode_targets(
                trace.y, self.graph.output_shapes[0]), "float32")
        windows = {name: trace.records[name] for name in self.boundaries}
        futures = {name: self.future_gradient(name, trace) for name in self.boundaries}
        carried_back = {name: None for name in self.boundaries}
        injected = futures
        if self.warmup_steps > 0:
            warm = tf.convert_to_tensor(self._step) < self.warmup_steps
            injected = {name: [tf.where(warm, tf.zeros_like(f), f) for f in future]
                        for name, future in futures.items()}
            finals = [s for name in self.boundaries for s in windows[name].final]
            initials = [s for name in self.boundaries for s in windows[name].initial]

            def back():
                grads = trace.tape.gradient(
                    finals, initials,
                    output_gradients=[f for name in self.boundaries for f in futures[name]],
                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return [tf.cast(g, "float32") for g in grads]

            # Nothing is injected while warming up, so the bootstrap targets need the
            # synthetic gradients carried back separately (through every layer).
            grads = tf.cond(warm, back, lambda: [tf.zeros_like(s, "float32") for s in initials])
            for name in self.boundaries:
                parts = len(windows[name].initial)
                carried_back[name] = tf.concat(grads[:parts], -1)
                grads = grads[parts:]
        for name in self.boundaries:
            window = windows[name]
            initial = tf.concat([tf.cast(s, "float32") for s in window.initial], -1)
            with tape:
                # The previous window's synthesizer, at this window's initial state.
                prediction = self.synthesizers[name](tf.stop_gradient(initial), condition)
            for s, g in zip(window.final, injected[name]):
                trace.add_target(s, g)
            sources = [trace.add_source(s) for s in window.initial]
            entry = {"prediction": prediction, "sources": sources,
                     "extra": carried_back[name],
                     "rows": self.carried[name].carried_rows(window.initial)}
            if self.aux_weight > 0:
                entry["aux"] = self._auxiliary(name, window, futures[name], trace)
            pending["layers"][name] = entry
        self._pending = pending
        return {}

    def _auxiliary(self, name, window, future, trace):
        """DNI's auxiliary task: predict the window's final synthetic gradient from its
        first output step; its gradient is injected there and kept for the head."""
        first = window.first
        features = tf.cast(tf.stop_gradient(first), "float32")
        sigma = self.target_scale(name)
        target = tf.stop_gradient(
            tf.concat([tf.cast(f, "float32") for f in future], -1) * _global_batch(features)
            / tf.where(sigma > 0, sigma, 1.0))
        head = self.aux_heads[name]
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_mean(tf.square(head(features) - target))
            weighted = self.aux_weight * loss
        grads = tape.gradient(weighted, [features] + head.trainable_variables)
        trace.add_target(first, tf.cast(grads[0], first.dtype))
        return {"loss": loss, "grads": grads[1:], "variables": head.trainable_variables}

    def _update_moments(self, name, target, rows):
        """Fold this step's targets into the running mean square; return ``sigma``."""
        power, updates = self._moments[name]
        count = tf.reduce_sum(rows)
        mean_square = tf.reduce_sum(rows * tf.reduce_mean(tf.square(target), -1)) / \
            tf.maximum(count, 1.0)
        given = tf.cast(count > 0, "float32")
        power.assign(tf.convert_to_tensor(power) + given * (1.0 - NORMALIZE_DECAY) * (
            mean_square - tf.convert_to_tensor(power)))
        updates.assign_add(given)
        sigma = self.target_scale(name)
        return tf.where(sigma > 0, sigma, 1.0)

    def _update_through_time(self, trace):
        pending = self._pending
        if pending is None or pending["trace"] is not trace:
            raise RuntimeError("synthetic gradients through time update a step after its "
                               "signals; call compute_gradients, not update alone.")
        self._pending = None
        tape = pending["tape"]
        losses, aux_losses, pairs = [], [], []
        with tape:
            for name in self.boundaries:
                entry = pending["layers"][name]
                arriving = tf.concat(
                    [tf.cast(trace.source_gradients[i], "float32") for i in entry["sources"]],
                    -1)
                if entry["extra"] is not None:
                    arriving = arriving + entry["extra"]
                prediction = entry["prediction"]
                # Per-example units, as the synthesizer predicts them.
                target = tf.stop_gradient(arriving * _global_batch(prediction))
                rows = entry["rows"]
                if self.normalize:
                    target = target / self._update_moments(name, target, rows)
                per_row = tf.reduce_mean(tf.square(prediction - target), axis=-1)
                losses.append(tf.reduce_sum(rows * per_row) / tf.maximum(tf.reduce_sum(rows), 1.0))
                if "aux" in entry:
                    aux_losses.append(entry["aux"]["loss"])
            loss = tf.add_n(losses) / len(losses)
            scaled = loss / tf.cast(_replicas(), loss.dtype)
        variables = [v for s in self.synthesizers.values() for v in s.trainable_variables]
        pairs += [(g, v) for g, v in zip(tape.gradient(scaled, variables), variables)
                  if g is not None]
        for name in self.boundaries:
            aux = pending["layers"][name].get("aux")
            if aux is not None:
                pairs += [(g / tf.cast(_replicas(), g.dtype), v)
                          for g, v in zip(aux["grads"], aux["variables"]) if g is not None]
        if pairs:
            self.optimizer_instance.apply([g for g, _ in pairs], [v for _, v in pairs])
        for name in self.boundaries:
            self.carried[name].remember(trace.records[name].final)
        self._step.assign_add(1)
        logs = {"sg_loss": loss}
        if aux_losses:
            logs["aux_loss"] = tf.add_n(aux_losses) / len(aux_losses)
        return logs

    def signals(self, trace):
        if self.through_time:
            return self._signals_through_time(trace)
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
                chain[self._masked_output] = trace.output_gradient(self._masked_output)
            targets = trace.gradient(chain, hidden) if hidden else {}
            for p in outputs:
                targets[p] = trace.output_gradient(p)
        else:
            targets = {p: truth[p] for p in self.boundaries}
        self._pending = {"trace": trace, "tape": tape, "predictions": predictions,
                         "targets": targets}

        deltas = dict(predictions)
        if self._masked_output is not None:
            deltas[self._masked_output] = trace.output_gradient(self._masked_output)
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
        if self.through_time:
            return self._update_through_time(trace)
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
