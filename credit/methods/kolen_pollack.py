"""Kolen-Pollack: learned feedback matrices that receive the same updates as the weights."""

import numbers
import warnings

import keras
import numpy as np

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit import backends, transports
from credit.methods import _sign
from credit.registry import register
from credit.signal import ErrorSignal, random_kernels, transported_layers


@register
class KolenPollack(ErrorSignal):
    """Kolen-Pollack learning (Kolen & Pollack 1994, "Backpropagation without weight
    transport", ICNN), as used by Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019,
    "Deep Learning without Weight Transport" (NeurIPS).

    The backward pass crosses every weighted layer's linear op with a feedback matrix
    ``B`` shaped like the kernel ``W`` (as feedback alignment does), and ``B`` learns:
    after each step it receives exactly the update ``W`` receives -- the same gradient
    (the layer's own local weight gradient, which needs no weight transport), through
    an optimizer of the same class and configuration as the model's -- and the same
    weight decay. With ``W_{t+1} = W_t + dW_t - lambda W_t`` and
    ``B_{t+1} = B_t + dW_t - lambda B_t`` (Akrout et al.'s rule: "forward and backward
    weights undergo identical adjustments and apply identical weight-decay factors"),
    ``B - W`` shrinks by ``(1 - lambda)`` per step, so ``B`` converges to ``W`` and the
    backward pass to backprop's. Removes weight transport.

    The optimizer: a fresh copy of the model's optimizer (its class and ``get_config``;
    the inner optimizer of a ``LossScaleOptimizer``), with its own state (e.g. Adam's
    moments of ``B``), saved with the model. At every step it takes the model
    optimizer's current learning rate (schedules and callbacks that change it
    included). The gradients are the model's as its optimizer receives them: under
    mixed precision they are unscaled by the model's loss scale, and ``B`` is not
    updated on a step whose gradients are not finite (the model's optimizer skips that
    step too). Without a model optimizer (a custom loop calling
    ``credit.compute_gradients`` on an uncompiled model) it is
    ``keras.optimizers.SGD(learning_rate)``.

    Weight decay, in Keras's convention (each step multiplies a variable by
    ``1 - learning_rate * weight_decay``): ``W``'s decay is the model optimizer's
    ``weight_decay``, which credit does not touch. ``B``'s decay is

    - ``weight_decay=None`` (default): the same as ``W``'s, i.e. the model optimizer's
      ``weight_decay``; none if the model's optimizer has none (as in the authors' code,
      whose decay factor defaults to 1: no decay) or if there is no model optimizer.
      To make ``B`` converge to ``W``, give the model's optimizer a weight decay, e.g.
      ``keras.optimizers.SGD(0.1, weight_decay=1e-2)`` or
      ``keras.optimizers.AdamW(1e-3, weight_decay=1e-2)``: with none, ``B - W`` keeps
      its initial value (both get the same updates), the method is feedback alignment
      with a drifting ``B`` (a deep network without normalisation can diverge), and a
      ``UserWarning`` says so when the method is bound.
    - ``weight_decay=x``: ``x`` for ``B``. ``B`` converges to ``W`` only if the model's
      optimizer decays ``W`` by the same ``x``; a warning says so when they differ. Use
      it in a custom loop whose own optimizer decays ``W``.

    Weight decay excluded from some variables with the model optimizer's
    ``exclude_from_weight_decay`` is not carried over; ``global_clipnorm`` clips ``B``'s
    gradients by their own global norm (those of the transported kernels only).
    A layer whose kernel is not trained (frozen, or LoRA-adapted) keeps its ``B``
    fixed, as feedback alignment.

    Args:
        seed: seed of the initial feedback matrices (None: drawn from numpy's global
            state).
        scale: the initial matrices are uniform in ``±scale``; default ``1/sqrt(d)``,
            d the number of terms each backward sum has, as feedback alignment's: with
            the same seed, ``B`` starts as feedback alignment's ``B``.
        layers: names of the layers to cross with feedback matrices (default: every
            Dense, EinsumDense and convolution whose input gradient is used, and every
            recurrent layer: its input and recurrent kernels, at every step).
        weight_decay: ``B``'s weight decay, see above (None: the model optimizer's).
        learning_rate: the learning rate of the SGD used when the model has no
            optimizer; unused otherwise.

    Attributes:
        feedback_matrices: dict from layer name to its ``B`` (a variable shaped like the
            kernel; a (depthwise, pointwise) pair for separable convolutions).
        optimizer_instance: the optimizer that updates the feedback matrices.

    Example:
        >>> model.compile(optimizer=keras.optimizers.SGD(0.05, weight_decay=0.01),
        ...               loss="mse", method="kp")                    # doctest: +SKIP
        >>> model.fit(x, y, epochs=20)                               # doctest: +SKIP
        >>> model.method.misalignment()                              # doctest: +SKIP
        {'dense_1': 0.0123, 'dense_2': 0.0098}
    """

    name = "kolen_pollack"
    aliases = ("kp",)
    transport_rule = "B (learned: the same updates and weight decay as W)"

    def __init__(self, seed=None, scale=None, layers=None, weight_decay=None,
                 learning_rate=0.01):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.layers = _sign.check_layers(layers)
        if weight_decay is not None and (
                isinstance(weight_decay, (bool, np.bool_))
                or not isinstance(weight_decay, numbers.Real)
                or not np.isfinite(weight_decay) or weight_decay < 0):
            raise ValueError("weight_decay must be None (the model optimizer's) or a "
                             f"non-negative number; got {weight_decay!r}.")
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        if (isinstance(learning_rate, (bool, np.bool_))
                or not isinstance(learning_rate, numbers.Real) or not learning_rate > 0):
            raise ValueError("learning_rate must be a positive number (the SGD learning "
                             "rate used when the model has no optimizer); got "
                             f"{learning_rate!r}.")
        self.learning_rate = float(learning_rate)
        self.optimizer_instance = None
        self._pairs = None
        self._source = None

    # -- state -----------------------------------------------------------------------

    def build(self, graph):
        self.transported = transported_layers(graph, self.layers)
        # Initialised exactly as feedback alignment's B (same seed, same matrices).
        self.feedback_matrices = random_kernels(self, graph, self.scale, trainable=True)
        pairs = []
        for name in self.transported:
            matrices = self.feedback_matrices[name]
            for j, matrix in enumerate(matrices if isinstance(matrices, tuple) else
                                       (matrices,)):
                pairs.append((graph.layers[name], j, matrix))
        self._pairs = pairs
        self._make_optimizer(graph.model)

    def _make_optimizer(self, model):
        source = getattr(model, "optimizer", None)
        inner = _inner(source)
        if inner is None:
            optimizer = keras.optimizers.SGD(
                learning_rate=self.learning_rate, weight_decay=self.weight_decay or None,
                name="kolen_pollack_optimizer")
        else:
            config = dict(inner.get_config())
            config["name"] = "kolen_pollack_optimizer"
            # The learning rate is copied from the model's optimizer at every step.
            config["learning_rate"] = float(keras.ops.convert_to_numpy(inner.learning_rate))
            if self.weight_decay is not None:
                model_decay = config.get("weight_decay") or 0.0
                if model_decay != self.weight_decay:
                    warnings.warn(
                        f"kolen_pollack: weight_decay={self.weight_decay} for the feedback "
                        f"matrices, but the model's optimizer decays the weights by "
                        f"{model_decay}; B converges to W only when the two are equal. "
                        "Leave weight_decay=None to use the model optimizer's.",
                        stacklevel=3)
                config["weight_decay"] = self.weight_decay or None
            try:
                optimizer = type(inner).from_config(config)
            except Exception as err:  # noqa: BLE001 - any failure: say what and why
                raise ValueError(
                    f"kolen_pollack updates its feedback matrices with a copy of the "
                    f"model's optimizer, but {type(inner).__name__} could not be rebuilt "
                    f"from its get_config() ({type(err).__name__}: {err}). Use a Keras "
                    "optimizer, or one whose from_config(get_config()) works.") from None
        if self.weight_decay is None and not optimizer.weight_decay:
            _warn_no_decay(inner)
        with compat.init_scope():
            optimizer.build([matrix for _, _, matrix in self._pairs])
        self.state.kp_optimizer = optimizer
        self.optimizer_instance = optimizer
        self._source = source

    def transport(self, layer, kernels):
        matrices = self.feedback_matrices[self.graph.name_of(layer)]
        return matrices if isinstance(matrices, tuple) else (matrices,)

    def signals(self, trace):
        return {}

    # -- learning B ------------------------------------------------------------------

    def update(self, trace, signals):
        source = getattr(self.model, "optimizer", None)
        if source is not self._source:
            # The model was compiled again with this instance: copy its new optimizer
            # (B's optimizer state starts afresh).
            with compat.init_scope():
                self._make_optimizer(self.model)
        index = {id(v): i for i, v in enumerate(trace.variables)}
        grads, matrices = [], []
        for layer, j, matrix in self._pairs:
            kernel = transports.kernels(layer)[j]
            i = index.get(id(kernel))
            if i is None or trace.gradients[i] is None:
                continue  # a kernel that is not trained: B stays fixed
            grad = trace.gradients[i]
            if not backends.is_jax() and isinstance(grad, tf.IndexedSlices):
                grad = tf.convert_to_tensor(grad)
            grads.append(keras.ops.cast(grad, matrix.dtype))
            matrices.append(matrix)
        if not matrices:
            return {}
        optimizer = self.optimizer_instance
        inner = _inner(source)
        if inner is not None:
            optimizer.learning_rate = keras.ops.cast(inner.learning_rate, "float32")
        if isinstance(source, keras.optimizers.LossScaleOptimizer):
            # (TensorFlow only: the JAX step refuses loss scaling.)
            scale = source.dynamic_scale if source.built else source.initial_scale
            grads = [g / tf.cast(scale, g.dtype) for g in grads]
            finite = source.check_finite([g for g in trace.gradients if g is not None])

            def apply():
                optimizer.apply(grads, matrices)
                return tf.constant(True)

            tf.cond(finite, apply, lambda: tf.constant(False))
        else:
            optimizer.apply(grads, matrices)
        return {}

    def misalignment(self):
        """``||B - W|| / ||W||`` of every transported kernel, now (Frobenius norms).

        A dict from layer name to a float (a pair for separable convolutions).
        """
        if self._pairs is None:
            raise ValueError("the method is not bound to a model yet: compile the model "
                             "with it (or take a training step) first.")
        out = {}
        for layer, j, matrix in self._pairs:
            w = keras.ops.convert_to_numpy(transports.kernels(layer)[j]).astype("float64")
            b = matrix.numpy().astype("float64")
            out.setdefault(self.graph.name_of(layer), []).append(
                float(np.linalg.norm(b - w) / max(np.linalg.norm(w), 1e-30)))
        return {n: v[0] if len(v) == 1 else tuple(v) for n, v in out.items()}


def _warn_no_decay(optimizer):
    """Say that B will not converge to W: nothing decays it (Akrout et al.'s rule)."""
    if optimizer is None:
        where = ("the model has no optimizer, so the feedback matrices are updated by "
                 "SGD without weight decay")
        fix = ("pass weight_decay to the method, e.g. method={'name': 'kolen_pollack', "
               "'weight_decay': 1e-2}, and decay your weights by the same amount")
    else:
        name = type(optimizer).__name__
        where = (f"the model's optimizer {name} has no weight decay "
                 f"(weight_decay={optimizer.weight_decay!r}), so neither W nor B is decayed")
        fix = ("give the optimizer a weight decay, e.g. "
               "keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-2) or "
               f"keras.optimizers.{name}(..., weight_decay=1e-2)")
    warnings.warn(
        f"kolen_pollack: {where}. B - W then never shrinks (both get the same updates): "
        "this is feedback alignment with a drifting B, which can diverge on deep models. "
        f"B converges to W only under weight decay; {fix}.", UserWarning, stacklevel=4)


def _inner(optimizer):
    """The optimizer that updates the weights (inside a LossScaleOptimizer), or None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer
