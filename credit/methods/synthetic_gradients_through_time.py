"""Synthetic gradients through time (DNI's recurrent case) and their conditioned form:
a learned estimate of the future gradient at the truncation points of truncated BPTT."""

import keras
import numpy as np

from credit._tensorflow import tf
from credit import recurrent
from credit.methods import _synthesizers as sg
from credit.methods._synthesizers import Synthesizer
from credit.registry import register
from credit.signal import ErrorSignal, output_units

#: Decay of the running mean square of the bootstrap targets (``normalize=True``).
NORMALIZE_DECAY = 0.99
#: Arguments of synthetic gradients between layers that older configs with
#: ``through_time=True`` carry; they never applied through time.
_BETWEEN_LAYERS_ONLY = ("hidden_filters", "kernel_size")


def _missing_lookahead(step=None):
    when = "this training step" if step is None else f"training step {step}"
    return (f"cDNI through time (conditioned=True) conditions the synthesizer at each "
            f"window's end on the next window's targets, which were not given for "
            f"{when}. Fit on a credit.data.Windows (model.fit(windows)), or "
            "with arrays pass callbacks=[credit.recurrent.StatefulWindows(windows)], or "
            "call model.method.set_lookahead(continues=..., next_targets=...) before each "
            "batch (e.g. from your callback's on_train_batch_begin); or compile with "
            "conditioned=False ('dni_through_time').")


@register
class SyntheticGradientsThroughTime(ErrorSignal):
    """Synthetic gradients through time (Jaderberg et al. 2016, "Decoupled Neural
    Interfaces using Synthetic Gradients", ICML 2017, §3.2): DNI at the truncation
    points of truncated backpropagation through time.

    On a model with a stateful recurrent layer (LSTM, GRU, SimpleRNN with
    ``stateful=True`` and a fixed batch size) trained with ``fit(shuffle=False)`` over
    consecutive windows of a long sequence (truncated BPTT), a synthesizer sits on the
    layer's carried state ``s`` (for an LSTM, ``h`` and ``c`` together). At the end of
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
    at a window's end is conditioned on (:meth:`set_lookahead`). No other layer gets a
    synthesizer: inside a window every layer learns by backprop through time.

    Synthesizers predict per-example gradients (``batch_size`` times the gradient of the
    batch-mean loss), as :class:`credit.methods.SyntheticGradients` does between layers.

    Args:
        seed: seed of the synthesizers' initial weights (None: drawn from numpy's
            global state, so ``keras.utils.set_random_seed`` still makes runs
            reproducible).
        synthesizer: ``"linear"``: ``s A + y B + c``; ``"mlp"``: ``hidden_units`` ReLU
            layers, then a linear layer.
        conditioned: the synthesizers also see the next window's targets, flattened
            (integer ids one-hot) (cDNI through time).
        at: names of stateful recurrent layers that get a synthesizer (default: every
            stateful one).
        warmup_steps: for this many steps nothing is injected (plain truncated BPTT)
            while the synthesizers learn from their targets.
        hidden_units: widths of the hidden layers of an ``"mlp"`` synthesizer.
        activation: activation of the hidden layers of an ``"mlp"`` synthesizer.
        optimizer: the synthesizers' optimizer: a Keras name (``"adam"``, ``"sgd"``)
            or a config dict (``keras.optimizers.serialize(...)``).
        learning_rate: the synthesizers' learning rate (None: the optimizer's own).
        scale: the factor on the synthetic gradient injected at a window's end (0.1, the
            factor of Jaderberg et al.'s recurrent experiments as dni-pytorch's RNN
            example reports it; None, as older configs have it, means 0.1).
        aux_weight: weight of DNI's auxiliary task (0: off). A linear head on the
            layer's output at the window's first step predicts the synthetic gradient
            injected at the window's end (the furthest future gradient the window knows,
            per example), and the squared error, times ``aux_weight``, is
            backpropagated into the network as well as into the head, so the recurrent
            layer learns features that predict its own future gradient. Needs
            ``return_sequences=True``. Logged as ``aux_loss``.
        normalize: the synthesizer predicts the bootstrap target divided by its running
            root mean square ``sigma`` (decay 0.99, bias corrected, over the rows that
            give a target), and ``sigma * M(s)`` is what is injected. Keras averages a
            sequence loss over its time steps and output units, so per-example state
            gradients are tiny (1e-3 and below) and an Adam-trained synthesizer's steps
            would swamp them; normalised targets are of order 1 whatever the loss's
            reduction. ``sg_loss`` is then in units of the targets' mean square
            (predicting zero scores about 1).

    Attributes (after the method is bound to a model):
        synthesizers: dict from recurrent layer name to the :class:`Synthesizer` on its
            state.
        carried: dict from recurrent layer name to its
            :class:`credit.recurrent.CarriedState`.
        aux_heads: dict from recurrent layer name to its auxiliary head (empty without
            ``aux_weight``).
        optimizer_instance: the synthesizers' (and heads') Keras optimizer.
        step: training steps taken, a variable.

    All of them live on ``method.state`` (a Keras layer saved with the model), with the
    running moments of the targets and the lookahead of the next window.

    Logs:
        ``sg_loss``: the synthesizers' mean regression loss of the step; ``aux_loss``
        with ``aux_weight > 0``.

    Example:
        >>> rnn.compile("adam", loss, method="cdni_through_time")    # doctest: +SKIP
        >>> rnn.fit(credit.data.next_step_windows(ids, 5, 32))       # doctest: +SKIP
    """

    name = "synthetic_gradients_through_time"
    aliases = ("sg_through_time", "dni_through_time")
    log_names = ("sg_loss",)
    #: Trains only models with a stateful recurrent layer: ``credit.available()`` lists
    #: it with ``stateful=True``.
    stateful_only = True

    def __init__(self, seed=None, synthesizer="linear", conditioned=False, at=None,
                 warmup_steps=0, hidden_units=(1024, 1024), activation="relu",
                 optimizer="adam", learning_rate=0.01, scale=0.1, aux_weight=0.0,
                 normalize=True):
        super().__init__(seed=seed)
        sg.check_common(self, seed=seed, synthesizer=synthesizer, conditioned=conditioned,
                        warmup_steps=warmup_steps, hidden_units=hidden_units,
                        activation=activation, optimizer=optimizer,
                        learning_rate=learning_rate)
        self.at = sg.indices("at", at)
        if self.at is not None and not all(isinstance(a, str) for a in self.at):
            raise ValueError(
                f"at={list(self.at)!r}: synthetic gradients through time take the names "
                "of stateful recurrent layers, e.g. at=['lstm'] (default: all of them).")
        if scale is None:
            scale = 0.1
        if not sg.is_real(scale) or not scale > 0:
            raise ValueError("scale must be a positive number, the factor on the synthetic "
                             f"gradient injected at a window's end (default 0.1); got "
                             f"{scale!r}.")
        self.scale = float(scale)
        if not sg.is_real(aux_weight) or not aux_weight >= 0:
            raise ValueError("aux_weight must be a number >= 0 (the weight of DNI's "
                             f"auxiliary task; 0 turns it off); got {aux_weight!r}.")
        self.aux_weight = float(aux_weight)
        self.normalize = sg.boolean("normalize", normalize)
        if self.aux_weight > 0:
            self.log_names = ("sg_loss", "aux_loss")
        self.boundaries = None
        self._pending = None

    @classmethod
    def from_config(cls, config):
        """Build a method from :meth:`get_config`'s output, or from the config of older
        versions: ``synthetic_gradients`` with ``through_time=True``."""
        config = dict(config)   # ("name" is popped by ErrorSignal.from_config)
        through_time = config.pop("through_time", True)
        if through_time is not True and through_time is not np.True_:
            raise ValueError(
                f"through_time={through_time!r}: this is synthetic gradients through time; "
                "for synthetic gradients between layers use the method "
                "'synthetic_gradients' (or 'cdni').")
        target = config.pop("target", "bootstrap")
        if target != "bootstrap":
            raise ValueError(
                f"target={target!r} with through_time=True: the true gradient of the future "
                "loss is what truncated BPTT cuts off, so it cannot be a target. Use "
                "target='bootstrap' (the default).")
        probability = config.pop("update_probability", 1.0)
        if probability != 1.0:
            raise ValueError(
                f"update_probability={probability} with through_time=True: stochastic "
                "updates are defined for synthetic gradients between layers. Leave "
                "update_probability at 1.")
        for key in _BETWEEN_LAYERS_ONLY:
            config.pop(key, None)
        return super().from_config(config)

    # -- state -----------------------------------------------------------------------

    @property
    def synthesizers(self):
        """Dict from recurrent layer name to the synthesizer on its state, read from
        ``state`` (empty before binding)."""
        layers = sg.state_attribute(self, "synthesizer_layers")
        return {} if layers is None else dict(zip(self.boundaries, layers))

    @property
    def carried(self):
        """Dict from recurrent layer name to its :class:`credit.recurrent.CarriedState`."""
        layers = sg.state_attribute(self, "carried_states")
        return {} if layers is None else dict(zip(self.boundaries, layers))

    @property
    def aux_heads(self):
        """Dict from recurrent layer name to its auxiliary head (empty without
        ``aux_weight``)."""
        heads = sg.state_attribute(self, "aux_heads")
        return None if heads is None else dict(zip(self.boundaries, heads))

    @property
    def optimizer_instance(self):
        """The Keras optimizer of the synthesizers and heads, on ``state``."""
        return sg.state_attribute(self, "synthesizer_optimizer")

    @property
    def step(self):
        """Training steps taken (the synthesizers' update count), a variable."""
        return sg.state_attribute(self, "step")

    def build(self, graph):
        if sg.replicas() > 1:
            raise ValueError(
                "synthetic gradients through time carry each row's state from one step to "
                "the next, which a distribution strategy splitting the batch over "
                f"{sg.replicas()} replicas does not keep in order; train on one device.")
        names = recurrent.stateful_layers(graph, None if self.at is None else list(self.at))
        self.points = []
        self.intercepted = list(names)
        n_cond = output_units(graph, "cDNI through time") if self.conditioned else 0
        state = self.state
        with tf.init_scope():
            synthesizers, carried, heads = [], [], []
            for i, name in enumerate(names):
                layer = graph.layers[name]
                units = sum(recurrent.state_units(layer))
                synthesizers.append(Synthesizer(
                    (units,), kind=self.synthesizer, condition_units=n_cond,
                    hidden_units=self.hidden_units, activation=self.activation,
                    seed=sg.synthesizer_seed(self, i), name=f"synthesizer_{i}"))
                carried.append(recurrent.CarriedState(layer, name=f"carried_{i}"))
                if self.aux_weight > 0:
                    heads.append(self._aux_head(graph, name, units, i))
            sg.own_synthesizers(self, synthesizers,
                                [v for h in heads for v in h.trainable_variables])
            state.carried_states = carried
            state.aux_heads = heads
            batch = recurrent.state_batch(graph.layers[names[0]])
            # What the next window brings, set before each step by set_lookahead.
            state.continues = state.add_weight(
                shape=(batch,), name="continues", trainable=False, initializer="ones")
            # Running mean square of each layer's targets and its number of updates.
            power, updates = [], []
            for i in range(len(names)):
                power.append(state.add_weight(shape=(), name=f"target_power_{i}",
                                              trainable=False, initializer="zeros"))
                updates.append(state.add_weight(shape=(), name=f"target_updates_{i}",
                                                trainable=False, initializer="zeros"))
            state.target_power, state.target_updates = power, updates
            state.next_condition = state.add_weight(
                shape=(batch, max(n_cond, 1)), name="next_condition", trainable=False,
                initializer="zeros")
            # The step that set_lookahead was last called for (-1: never).
            state.lookahead_step = state.add_weight(
                shape=(), dtype="int64", name="lookahead_step", trainable=False,
                initializer=keras.initializers.Constant(-1))
        self.boundaries = tuple(names)

    def _aux_head(self, graph, name, units, i):
        layer = graph.layers[name]
        if not layer.return_sequences:  # a keras.layers.RNN (stateful_layers checked)
            raise ValueError(
                f"aux_weight={self.aux_weight} reads the output of layer {name!r} at the "
                "window's first step, but it has return_sequences=False. Give it "
                "return_sequences=True, or pass aux_weight=0.")
        head = keras.layers.Dense(units, kernel_initializer="zeros", dtype="float32",
                                  name=f"aux_head_{i}")
        head.build((None, int(graph.point_shape(name)[-1])))
        return head

    # -- the next window -------------------------------------------------------------

    def set_lookahead(self, continues=None, next_targets=None):
        """Tell the method what follows the next step's window.

        Called before each batch by :class:`credit.recurrent.StatefulWindows`; call it
        yourself (e.g. from a callback's ``on_train_batch_begin``) when feeding windows
        another way. It holds for the next training step only.

        Args:
            continues: ``(batch,)`` 1 for rows whose state carries on into the window
                after this one, 0 for rows where a new sequence begins there (nothing
                is injected at their end). None: all 1.
            next_targets: the targets of the window after this one (cDNI conditions
                the synthesizer at this window's end on them). None: zeros.
        """
        if self.plan is None:
            raise ValueError("set_lookahead needs the method bound to a model (compile "
                             "the model first).")
        state = self.state
        batch = int(state.continues.shape[0])
        if continues is None:
            continues = np.ones(batch, "float32")
        continues = np.asarray(continues, "float32").reshape(-1)
        if continues.shape != (batch,):
            raise ValueError(f"continues must have one value per row ({batch}); got shape "
                             f"{continues.shape}.")
        state.continues.assign(continues)
        if self.conditioned:
            if next_targets is None:
                value = np.zeros(tuple(state.next_condition.shape), "float32")
            else:
                value = recurrent.encode_targets(next_targets, self.graph.output_shapes[0])
            state.next_condition.assign(value)
        state.lookahead_step.assign(self.step)

    def check_lookahead(self):
        """Raise a ValueError if cDNI's next-window targets are missing for the next step.

        The training step checks too, but inside a traced graph that check can only
        raise TensorFlow's InvalidArgumentError; ``credit.Model.fit`` calls this before
        each batch so that the error names what is missing.
        """
        if not self.conditioned or self.plan is None:
            return
        step = int(keras.ops.convert_to_numpy(self.step))
        if int(keras.ops.convert_to_numpy(self.state.lookahead_step)) != step:
            raise ValueError(_missing_lookahead(step))

    # -- the layer's call ------------------------------------------------------------

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
        return ("plus " + ("scale * " if self.scale != 1.0 else "")
                + ("M(s_T, y_next)" if self.conditioned else "M(s_T)")
                + " at each window's final state (synthetic gradient through time)")

    # -- signals ---------------------------------------------------------------------

    def target_scale(self, name):
        """``sigma``: the running RMS of layer ``name``'s bootstrap targets, per example
        (1 without ``normalize``; 0 before the first target)."""
        if not self.normalize:
            return tf.constant(1.0)
        i = self.boundaries.index(name)
        power = tf.convert_to_tensor(self.state.target_power[i])
        updates = tf.convert_to_tensor(self.state.target_updates[i])
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
        condition = self._next_condition() if self.conditioned else None
        predicted = self.synthesizers[name](final, condition)
        delta = self.scale * self.target_scale(name) * predicted / sg.global_batch(final)
        return _split(delta * self._continues()[:, None], window.final)

    def _continues(self):
        """``continues`` as set by :meth:`set_lookahead` for this step, else all 1: a
        lookahead holds for one step only (the last window of a fit on windows sets 0s,
        which must not silence the synthesizer in later training without them)."""
        state = self.state
        given = tf.equal(tf.convert_to_tensor(state.lookahead_step),
                         tf.convert_to_tensor(self.step))
        continues = tf.convert_to_tensor(state.continues)
        return tf.where(given, continues, tf.ones_like(continues))

    def _next_condition(self):
        lookahead = tf.convert_to_tensor(self.state.lookahead_step)
        step = tf.convert_to_tensor(self.step)
        if tf.executing_eagerly():
            if int(lookahead) != int(step):
                raise ValueError(_missing_lookahead(int(step)))
            return tf.convert_to_tensor(self.state.next_condition)
        # In a traced step (fit calls check_lookahead before, with a clearer error).
        check = tf.debugging.assert_equal(lookahead, step,
                                          message=_missing_lookahead())
        with tf.control_dependencies([check]):
            return tf.identity(tf.convert_to_tensor(self.state.next_condition))

    def signals(self, trace):
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
            warm = tf.convert_to_tensor(self.step) < self.warmup_steps
            injected = {name: [tf.where(warm, tf.zeros_like(f), f) for f in future]
                        for name, future in futures.items()}
            carried_back = self._carry_back(trace, windows, futures, warm)
        carried = self.carried
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
                     "rows": carried[name].carried_rows(window.initial)}
            if self.aux_weight > 0:
                entry["aux"] = self._auxiliary(name, window, futures[name], trace)
            pending["layers"][name] = entry
        self._pending = pending
        return {}

    def _carry_back(self, trace, windows, futures, warm):
        """While warming up nothing is injected, so the bootstrap targets need the
        synthetic gradients carried back separately (through every layer): a dict from
        layer name to the gradient at its initial state (zeros once warm-up is over)."""
        finals = [s for name in self.boundaries for s in windows[name].final]
        initials = [s for name in self.boundaries for s in windows[name].initial]

        def back():
            grads = trace.tape.gradient(
                finals, initials,
                output_gradients=[f for name in self.boundaries for f in futures[name]],
                unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return [tf.cast(g, "float32") for g in grads]

        grads = tf.cond(warm, back, lambda: [tf.zeros_like(s, "float32") for s in initials])
        carried_back = {}
        for name in self.boundaries:
            parts = len(windows[name].initial)
            carried_back[name] = tf.concat(grads[:parts], -1)
            grads = grads[parts:]
        return carried_back

    def _auxiliary(self, name, window, future, trace):
        """DNI's auxiliary task: predict the window's final synthetic gradient from its
        first output step; its gradient is injected there and kept for the head."""
        first = window.first
        features = tf.cast(tf.stop_gradient(first), "float32")
        sigma = self.target_scale(name)
        target = tf.stop_gradient(
            tf.concat([tf.cast(f, "float32") for f in future], -1)
            * sg.global_batch(features) / tf.where(sigma > 0, sigma, 1.0))
        head = self.aux_heads[name]
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_mean(tf.square(head(features) - target))
            weighted = self.aux_weight * loss
        grads = tape.gradient(weighted, [features] + head.trainable_variables)
        trace.add_target(first, tf.cast(grads[0], first.dtype))
        return {"loss": loss, "grads": grads[1:], "variables": head.trainable_variables}

    # -- training the synthesizers ---------------------------------------------------

    def _update_moments(self, name, target, rows):
        """Fold this step's targets into the running mean square; return ``sigma``."""
        i = self.boundaries.index(name)
        power, updates = self.state.target_power[i], self.state.target_updates[i]
        count = tf.reduce_sum(rows)
        mean_square = tf.reduce_sum(rows * tf.reduce_mean(tf.square(target), -1)) / \
            tf.maximum(count, 1.0)
        given = tf.cast(count > 0, "float32")
        power.assign(tf.convert_to_tensor(power) + given * (1.0 - NORMALIZE_DECAY) * (
            mean_square - tf.convert_to_tensor(power)))
        updates.assign_add(given)
        sigma = self.target_scale(name)
        return tf.where(sigma > 0, sigma, 1.0)

    def update(self, trace, signals):
        pending = self._pending
        if pending is None or pending["trace"] is not trace:
            raise RuntimeError("synthetic gradients through time update a step after its "
                               "signals; call compute_gradients, not update alone.")
        self._pending = None
        tape = pending["tape"]
        losses, aux_losses, aux_pairs = [], [], []
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
                target = tf.stop_gradient(arriving * sg.global_batch(prediction))
                rows = entry["rows"]
                if self.normalize:
                    target = target / self._update_moments(name, target, rows)
                per_row = tf.reduce_mean(tf.square(prediction - target), axis=-1)
                losses.append(tf.reduce_sum(rows * per_row)
                              / tf.maximum(tf.reduce_sum(rows), 1.0))
                if "aux" in entry:
                    aux_losses.append(entry["aux"]["loss"])
                    aux_pairs += zip(entry["aux"]["grads"], entry["aux"]["variables"])
            loss = tf.add_n(losses) / len(losses)
        sg.train_synthesizers(self, tape, loss, aux_pairs)
        carried = self.carried
        for name in self.boundaries:
            carried[name].remember(trace.records[name].final)
        logs = {"sg_loss": loss}
        if aux_losses:
            logs["aux_loss"] = tf.add_n(aux_losses) / len(aux_losses)
        return logs


register(SyntheticGradientsThroughTime, name="cdni_through_time",
         aliases=("conditioned_dni_through_time",), defaults={"conditioned": True})


def _split(value, like):
    sizes = [int(s.shape[-1]) for s in like]
    return [tf.cast(part, s.dtype) for part, s in zip(tf.split(value, sizes, -1), like)]
