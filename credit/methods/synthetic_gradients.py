"""Synthetic gradients (DNI) and their label-conditioned form (cDNI): learned error signals
at feedback points. Through time, on a stateful RNN's carried state: see
:mod:`credit.methods.synthetic_gradients_through_time`."""

import keras
import numpy as np
from keras import ops

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit import backends, transports
from credit.methods import _synthesizers as sg
from credit.methods._synthesizers import Synthesizer  # noqa: F401  (its former home)
from credit.registry import register
from credit.signal import PLACEMENTS, ErrorSignal, output_units

SYNTHESIZERS = sg.SYNTHESIZERS
TARGETS = ("bootstrap", "true")
#: Arguments of older versions that belong to synthetic gradients through time.
_THROUGH_TIME_ONLY = {"scale": None, "aux_weight": 0.0, "normalize": True}
#: The arguments before the sizing options: a config holding all of them was saved by
#: ``get_config`` (see :func:`credit.methods._synthesizers.legacy_config`).
_SAVED_BEFORE_SIZING = ("seed", "synthesizer", "conditioned", "target", "at",
                        "update_probability", "warmup_steps", "hidden_units",
                        "hidden_filters", "kernel_size", "activation", "optimizer",
                        "learning_rate")


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

    For a stateful recurrent layer's carried state (truncated BPTT, Jaderberg et al.
    §3.2) use :class:`credit.methods.SyntheticGradientsThroughTime`
    (``"synthetic_gradients_through_time"``, ``"cdni_through_time"``). As a shorthand
    kept from older versions, a config with ``through_time=True``
    (``{"name": "cdni", "through_time": True}``) resolves to that class.

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
            outputs carry a synthesizer; or ``"stream"`` (one where the residual
            stream leaves each residual block, one at every other hidden block's
            output), ``"residuals"`` (after every residual merge), ``"blocks"`` (every
            hidden block's output, residual branches included) or ``"stages"`` (one
            where each stage begins: the first stream point after the spatial size
            shrinks, at most ``stage_points``). None (the default): ``"stream"`` on a
            model with at most ``max_points`` stream points, ``"stages"`` on a larger
            one. ``at`` may include the output block (``-1``): the synthesizer then
            replaces the loss gradient at the model output (the linear-regression
            setting of the paper's convergence theorem; for a softmax or sigmoid
            output this is the gradient with respect to the probabilities, badly
            scaled near 0 and 1: prefer a logits output with from_logits=True).
        update_probability: each block is updated with this probability per step (DNI's
            stochastic updates); a block not updated gets a zero signal. With a momentum
            optimizer (Adam, SGD with momentum) its momentum still moves it; with 0
            nothing moves at all. The synthesizers are trained every step. The draws
            come from each backend's own generator (TensorFlow's and JAX's differ).
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
        width: the bound on a convolutional synthesizer's channels. A boundary with
            at most ``width`` channels gets DNI's synthesizer at its own channels; a
            wider one a bottleneck: a 1x1 convolution down to ``width`` channels,
            a depthwise ``kernel_size`` convolution on them (``"mlp"``: separable
            ones, ``hidden_filters`` capped at ``width``), a 1x1 convolution back up
            (see :class:`Synthesizer`). Its
            weights then grow with the channels ``C`` as ``2 C width``, not as
            ``kernel_size**2 C**2``. None: no bound (the sizes before this option).
        max_points: with ``at=None``, a model with at most this many stream points
            gets a synthesizer at each; a larger one gets them where its stages begin
            (``stage_points``). None: every stream point, whatever the model's size.
        stage_points: the most stage starts that get a synthesizer (``at="stages"``, or
            ``at=None`` on a model with more than ``max_points`` stream points),
            evenly spaced among them; a model whose stream points all have one spatial
            size gets this many evenly spaced stream points. 3, as DNI's CIFAR-10 CNN has 3 synthesizers
            (one after each pooling block) and Decoupled Greedy Learning splits VGGs on
            ImageNet into 4 groups (3 auxiliary nets): DNI's bootstrapped targets
            reach one point further down per step (the last layer of every
            synthesizer starts at zero), so with 3 points in a row every layer has a
            signal by the 4th step. None: ``max_points`` evenly spaced stream points
            instead (the placement of the version before this option).
        max_parameters: the most weights the synthesizers may have in all; checked
            from the shapes before anything is built, with an error naming the
            largest synthesizers. None: twice the model's own parameters, and at
            least 10 million.

    A config saved before the sizing options existed (every other key present, no
    ``width``) loads with the sizes it was saved with: ``width=None``,
    ``max_points=None``, no budget; one saved with ``max_points`` but before
    ``stage_points`` loads with ``stage_points=None``.

    Attributes:
        synthesizers: dict from point (layer name) to its :class:`Synthesizer` (a Keras
            layer), after the method is bound to a model.
        optimizer_instance: the synthesizers' Keras optimizer, after binding.
        step: training steps taken, a variable, after binding.

    The synthesizers, their optimizer and the counters live on ``method.state`` (a Keras
    layer saved with the model); these attributes read them from there.

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

    def __new__(cls, *args, **kwargs):
        if "through_time" in kwargs:
            raise TypeError(
                f"through_time={kwargs['through_time']!r}: {cls.__name__} puts synthesizers "
                "between layers only. For a stateful recurrent layer's carried state use "
                "credit.methods.SyntheticGradientsThroughTime(...) (names "
                "'synthetic_gradients_through_time', 'cdni_through_time'); a config dict "
                "{'name': 'sg', 'through_time': True, ...} still resolves to it.")
        return super().__new__(cls)

    def __init__(self, seed=None, synthesizer="linear", conditioned=False,
                 target="bootstrap", at=None, update_probability=1.0, warmup_steps=0,
                 hidden_units=(1024, 1024), hidden_filters=(128, 128), kernel_size=5,
                 activation="relu", optimizer="adam", learning_rate=0.01, width=64,
                 max_points=16, max_parameters=None, stage_points=sg.STAGE_POINTS):
        super().__init__(seed=seed)
        sg.check_sizing(self, width=width, max_points=max_points,
                        max_parameters=max_parameters, stage_points=stage_points)
        sg.check_common(self, seed=seed, synthesizer=synthesizer, conditioned=conditioned,
                        warmup_steps=warmup_steps, hidden_units=hidden_units,
                        activation=activation, optimizer=optimizer,
                        learning_rate=learning_rate)
        self.target = sg.choice("target", target, TARGETS)
        # "stream", "residuals" and "blocks" name a placement (see credit.signal.hidden_points).
        self.at = at if isinstance(at, str) and at in PLACEMENTS + ("stages",) \
            else sg.indices("at", at)
        if not sg.is_real(update_probability) or not 0.0 <= float(update_probability) <= 1.0:
            raise ValueError("update_probability must be a number in [0, 1] (the chance "
                             "that a boundary's layers are updated in a step); got "
                             f"{update_probability!r}.")
        self.update_probability = float(update_probability)
        self.hidden_filters = sg.sizes("hidden_filters", hidden_filters)
        if sg.is_int(kernel_size) and kernel_size > 0:
            self.kernel_size = int(kernel_size)
        elif (isinstance(kernel_size, (list, tuple)) and kernel_size
              and all(sg.is_int(s) and s > 0 for s in kernel_size)):
            self.kernel_size = tuple(int(s) for s in kernel_size)
        else:
            raise ValueError("kernel_size must be a positive integer or a tuple of them "
                             f"(one per spatial axis); got {kernel_size!r}.")
        self.boundaries = None
        self._pending = None
        self._masked_output = None
        self.point_placement = None

    @classmethod
    def from_config(cls, config):
        """Build a method from :meth:`get_config`'s output.

        A shorthand kept from older versions: with ``through_time=True`` (e.g.
        ``{"name": "cdni", "through_time": True}``) the config is one of
        :class:`credit.methods.SyntheticGradientsThroughTime`, which is returned.
        Configs saved by older versions (with ``through_time=False`` and the
        through-time arguments at their defaults) load as they are; those saved
        before the sizing options load with the sizes they had (see the class).
        """
        config = dict(config)   # ("name" is popped by ErrorSignal.from_config)
        through_time = config.pop("through_time", False)
        if not through_time:
            config = sg.legacy_config(config, _SAVED_BEFORE_SIZING)
        if not isinstance(through_time, (bool, np.bool_)):
            raise ValueError(f"through_time must be True or False; got {through_time!r}.")
        if through_time:
            from credit.methods.synthetic_gradients_through_time import (
                SyntheticGradientsThroughTime)
            return SyntheticGradientsThroughTime.from_config(config)
        for key, default in _THROUGH_TIME_ONLY.items():
            if key not in config:
                continue
            value = config.pop(key)
            if value != default:
                raise ValueError(
                    f"{key}={value!r} applies to synthetic gradients through time only: "
                    "use the method 'synthetic_gradients_through_time' (or "
                    "'cdni_through_time') on a stateful recurrent model, or leave "
                    f"{key} out.")
        return super().from_config(config)

    # -- state -----------------------------------------------------------------------

    @property
    def synthesizers(self):
        """Dict from point (layer name) to its synthesizer, read from ``state`` (empty
        before binding)."""
        layers = sg.state_attribute(self, "synthesizer_layers")
        return {} if layers is None else dict(zip(self.boundaries, layers))

    @property
    def optimizer_instance(self):
        """The synthesizers' Keras optimizer, on ``state`` (None before binding)."""
        return sg.state_attribute(self, "synthesizer_optimizer")

    @property
    def step(self):
        """Training steps taken (the synthesizers' update count), a variable."""
        return sg.state_attribute(self, "step")

    def synthesizer_kwargs(self, graph, name, condition_units):
        """The :class:`Synthesizer` arguments of point ``name`` (shape and sizes)."""
        conv_layer = _conv_layer(graph, name)
        return dict(kind=self.synthesizer, condition_units=condition_units,
                    hidden_units=self.hidden_units, hidden_filters=self.hidden_filters,
                    kernel_size=self.kernel_size if conv_layer is not None else 1,
                    data_format=getattr(conv_layer, "data_format", "channels_last"),
                    width=self.width)

    def point_parameters(self):
        """Dict from point to the number of weights of its synthesizer (after binding)."""
        return sg.point_parameters(self, self.boundaries or ())

    def build(self, graph):
        boundaries, placement = sg.place_points(graph, self.at, self.max_points,
                                                self.stage_points)
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
        kwargs = {p: self.synthesizer_kwargs(graph, p, n_cond) for p in boundaries}
        # Sized from the shapes alone, before any weight exists: a request that cannot
        # fit fails here with a message, not later with an out-of-memory kill.
        sg.check_budget(self, graph, {p: sg.synthesizer_parameters(
            graph.point_shape(p), **kwargs[p]) for p in boundaries}, "synthesizers")
        with compat.init_scope():
            synthesizers = [
                Synthesizer(graph.point_shape(name), activation=self.activation,
                            seed=sg.synthesizer_seed(self, i), name=f"synthesizer_{i}",
                            **kwargs[name])
                for i, name in enumerate(boundaries)]
            sg.own_synthesizers(self, synthesizers)
        self.boundaries = tuple(boundaries)
        self.point_placement = placement

    def transport(self, layer, kernels):
        return None

    @property
    def point_rule(self):
        return "M_p(h_p, y) (learned synthesizer, cDNI)" if self.conditioned else \
            "M_p(h_p) (learned synthesizer)"

    # -- signals ---------------------------------------------------------------------

    def synthetic_signal(self, name, trace):
        """The synthetic signal ``delta_p = M_p(h_p[, y]) / batch_size`` at point ``name``.

        ``batch_size`` is the global batch (all replicas under ``tf.distribute``), as in
        the loss. The synthesizers are trained through this value (its gradient with
        respect to the synthesizer's weights), so a subclass may override it, e.g. with
        an oracle. It is called once in :meth:`signals` and again, under the gradient
        of the synthesizers' loss, in :meth:`update`: it must give the same value both
        times (read only the trace and the synthesizers).
        """
        h = ops.cast(ops.stop_gradient(trace.outputs[name]), "float32")
        condition = trace.labels() if self.conditioned else None
        if condition is not None:
            condition = ops.cast(condition, "float32")
        return self.synthesizers[name](h, condition) / sg.global_batch(h)

    def signals(self, trace):
        names = trace.points
        tape = None
        if backends.is_jax():
            predictions = {p: self.synthetic_signal(p, trace) for p in self.boundaries}
        else:
            # On TensorFlow one tape spans signals and update: the synthesizers run
            # once per step (recomputing them in update cost SG 8% of its speed on
            # the bench's CNN). On JAX update recomputes them under jax's gradient,
            # and XLA shares the repeated computation inside the jitted step.
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
        self._pending = {"trace": trace, "targets": targets, "tape": tape,
                         "predictions": predictions}

        deltas = dict(predictions)
        if self._masked_output is not None:
            deltas[self._masked_output] = trace.output_gradient(self._masked_output)
        step = self.step.value  # (on JAX: the value of this step)
        if self.warmup_steps > 0:
            warm = step < self.warmup_steps
            deltas = {p: ops.where(warm, ops.cast(truth[p], d.dtype), d)
                      for p, d in deltas.items()}
        if self.update_probability == 0.0:
            return {p: ops.zeros_like(trace.outputs[p]) for p in names}
        if self.update_probability < 1.0:
            draws = self._draws(len(names), step)
            for i, p in enumerate(names):
                deltas[p] = ops.cast(draws[i] < self.update_probability,
                                     deltas[p].dtype) * deltas[p]
        return deltas

    def _draws(self, n, step):
        """``n`` uniform draws in [0, 1) of this step, a function of the seed variable
        and the step counter (each backend's stateless generator: TensorFlow's and
        JAX's draws differ, each is reproducible)."""
        if backends.is_jax():
            return backends.stateless_uniform((n,), self.state.seed_variable, step, 0,
                                              0.0, 1.0)
        seed = tf.stack([tf.convert_to_tensor(self.state.seed_variable), step])
        return tf.random.stateless_uniform([n], seed=seed)

    # -- training the synthesizers ---------------------------------------------------

    def update(self, trace, signals):
        pending = sg.take_pending(self, trace)
        targets = {p: ops.stop_gradient(t) for p, t in pending["targets"].items()}

        def synthesizer_loss(predictions=None):
            # The mean squared error in per-example units; on JAX the predictions
            # again, now under the gradient (the same values as in signals).
            losses = []
            for p in self.boundaries:
                prediction = (self.synthetic_signal(p, trace) if predictions is None
                              else predictions[p])
                batch = sg.global_batch(prediction)
                target = ops.cast(targets[p], prediction.dtype)
                losses.append(ops.mean(ops.square(batch * (prediction - target))))
            total = losses[0]
            for extra in losses[1:]:
                total = total + extra
            return total / len(losses)

        tape = pending["tape"]
        if tape is not None:  # TensorFlow: the tape of signals' predictions
            with tape:
                loss = synthesizer_loss(pending["predictions"])
            sg.train_synthesizers(self, tape, loss)
            return {"sg_loss": loss}
        return {"sg_loss": sg.train_on_loss(self, synthesizer_loss)}


register(SyntheticGradients, name="cdni", aliases=("conditioned_dni",),
         defaults={"conditioned": True})


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
