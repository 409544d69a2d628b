"""Forward gradients: a directional derivative in forward mode, times its direction."""

import keras
import numpy as np
import tensorflow as tf

from credit.methods import _synthesizers as sg
from credit.registry import register
from credit.signal import ErrorSignal


@register
class ForwardGradient(ErrorSignal):
    """Forward gradients (Baydin, Pearlmutter, Syme, Wood & Torr 2022, "Gradients
    without Backpropagation", arXiv:2202.08587).

    Rule: draw a tangent ``v ~ N(0, I)`` over all trainable variables, compute the
    directional derivative ``dL/dθ · v`` in forward mode (one forward pass under
    ``tf.autodiff.ForwardAccumulator``, no backward pass), and use ``(dL/dθ · v) v``
    as the gradient. Since ``E[v v^T] = I``, the estimate is unbiased:
    ``E[(∇L · v) v] = ∇L``. With ``tangents=K`` the step averages K such estimates
    (K forward passes), which divides the variance by K.

    The tangents are drawn fresh at every step by a counter-based generator keyed by
    the method's seed and its step counter, both variables on ``method.state`` (see
    :meth:`draw_tangents`): they are saved with the model, so a resumed run draws the
    tangents it would have drawn; every replica under ``tf.distribute`` draws the same
    ones, and an XLA-compiled step the same as a plain one.

    Args:
        seed: seed of the tangents (None: drawn from numpy's global state).
        tangents: number K of tangents averaged per step.

    Attributes:
        step: steps taken, a variable on ``state`` (None before binding).

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="fg")    # doctest: +SKIP
        >>> model.compile(optimizer="sgd", loss="mse",
        ...               method={"name": "fg", "tangents": 8})       # doctest: +SKIP
    """

    name = "forward_gradient"
    aliases = ("fg",)
    computes_gradients = True
    point_rule = None
    transport_rule = "none (forward-mode directional derivative)"

    def __init__(self, seed=None, tangents=1):
        if seed is not None and not sg.is_int(seed):
            raise ValueError(f"seed must be None or an integer; got {seed!r}.")
        super().__init__(seed=seed)
        if not sg.is_int(tangents) or tangents < 1:
            raise ValueError("tangents must be a positive integer (the number of random "
                             f"directions averaged per step); got {tangents!r}.")
        self.tangents = int(tangents)

    @property
    def step(self):
        """Steps taken, a variable on ``state`` (None before binding)."""
        return sg.state_attribute(self, "step")

    def build(self, graph):
        with tf.init_scope():
            own_counters(self)

    def transport(self, layer, kernels):
        return None

    def layer_rule(self, name):
        """The rule layer ``name`` trains with, for :func:`credit.summary`."""
        return "(dL/dθ · v) v: forward-mode directional derivative, no backward pass"

    def signals(self, trace):
        raise_no_signals(self)

    def update(self, trace, signals):
        return {}

    # -- the estimate ------------------------------------------------------------------

    def draw_tangents(self, variables, k, step=None):
        """The ``k``-th tangent of step ``step`` (default: the current one): one
        standard normal tensor per variable.

        Drawn by a counter-based hash of (seed, step, k, variable, entry) and the
        Box-Muller transform (:func:`standard_normal`): plain integer and float ops,
        which give the same numbers on every device and under XLA (TensorFlow's
        stateless generators do not: their XLA kernels draw other numbers).
        """
        step = tf.convert_to_tensor(self.step if step is None else step, "int64")
        seed = tf.convert_to_tensor(self.state.seed_variable)
        out = []
        for i, v in enumerate(variables):
            key = mix(seed, step, k * len(variables) + i)
            out.append(tf.cast(standard_normal(tuple(v.shape), key), tf.as_dtype(v.dtype)))
        return out

    def directional_derivative(self, model, x, y, sample_weight, tangents, loss_fn=None,
                               training=True):
        """``(dL/dθ · v, loss, y_pred)`` in forward mode for tangents ``v`` (one per
        ``model.trainable_variables`` entry); ``L`` carries the loss scale of a
        mixed-precision optimizer, as the gradients the optimizer unscales do."""
        from credit import model as engine

        # The accumulator watches TensorFlow variables: a Keras variable's ``value``
        # (read outside an autocast scope) is the tf.Variable it holds.
        variables = [v.value for v in model.trainable_variables]
        with tf.autodiff.ForwardAccumulator(variables, tangents) as acc:
            y_pred = model(x, training=training)
            loss = engine.compute_loss(model, x, y, y_pred, sample_weight, training,
                                       loss_fn)
            scaled = engine._scale(model, loss)
        jvp = acc.jvp(scaled, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return jvp, loss, y_pred

    def compute_gradients(self, model, x, y=None, sample_weight=None, *, loss_fn=None,
                          training=True):
        """The step's gradients ``mean_k (∇L · v_k) v_k``, aligned with
        ``model.trainable_variables``; advances the step counter. Called by
        :func:`credit.compute_gradients` in place of its backward pass."""
        from credit import model as engine

        engine.bind(self, model, inputs=x)
        variables = model.trainable_variables
        total = [tf.zeros(tuple(v.shape), tf.as_dtype(v.dtype)) for v in variables]
        loss = y_pred = None
        for k in range(self.tangents):
            v = self.draw_tangents(variables, k)
            jvp, loss_k, y_pred_k = self.directional_derivative(
                model, x, y, sample_weight, v, loss_fn, training)
            if k == 0:
                loss, y_pred = loss_k, y_pred_k
            total = [t + tf.cast(jvp, t.dtype) * d for t, d in zip(total, v)]
        gradients = [t / self.tangents for t in total]
        with tf.control_dependencies(_tensors(gradients)):
            self.step.assign_add(1)
        return engine.Gradients(gradients, loss, y_pred, {})


_GOLDEN = 0x9E3779B9


def hash32(x):
    """A 32-bit integer hash (the finaliser of "lowbias32"), elementwise on uint32."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def mix(*parts):
    """A uint32 key from integers (tensors or Python ints), each folded in by a hash."""
    key = tf.constant(_GOLDEN, tf.uint32)
    for part in parts:
        part = tf.cast(tf.convert_to_tensor(part, "int64") % (2**32), tf.uint32)
        key = hash32(tf.bitwise.bitwise_xor(key, part) + tf.constant(_GOLDEN, tf.uint32))
    return key


def standard_normal(shape, key):
    """Standard normal float32 numbers of ``shape``, a function of ``key`` (uint32).

    Two uniforms per entry from the hash of (entry, key) and of (entry, hash(key)),
    24 bits each, in (0, 1); then Box-Muller.
    """
    n = int(np.prod(shape)) if shape else 1
    counter = tf.cast(tf.range(n, dtype="int64"), tf.uint32)
    key2 = hash32(key + tf.constant(_GOLDEN, tf.uint32))

    def uniform(k):
        bits = hash32(tf.bitwise.bitwise_xor(hash32(counter + k), k))
        return (tf.cast(tf.bitwise.right_shift(bits, 8), "float32") + 0.5) / 2.0**24

    u1, u2 = uniform(key), uniform(key2)
    z = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * np.pi * u2)
    return tf.reshape(z, shape)


def own_counters(method):
    """Put a step counter and a seed variable on ``method.state`` (saved with the model).

    Both are int64 scalars with ``only_first_replica`` aggregation, so that every
    replica under ``tf.distribute`` reads the same values.
    """
    state = method.state
    base = int(method.seed_for(0xF0).integers(0, 2**31 - 1))
    state.step = state.add_weight(shape=(), dtype="int64", name="step", initializer="zeros",
                                  trainable=False, aggregation="only_first_replica")
    state.seed_variable = state.add_weight(
        shape=(), dtype="int64", name="seed", trainable=False,
        initializer=keras.initializers.Constant(base), aggregation="only_first_replica")


def raise_no_signals(method):
    """The error of a gradient-computing method asked for point signals."""
    raise RuntimeError(
        f"{type(method).__name__} has no backward pass: it computes its gradients in "
        "compute_gradients, which credit.compute_gradients calls for a method with "
        "computes_gradients = True. Call credit.compute_gradients (or fit a credit "
        "model) instead of the signal path.")


def _tensors(structure):
    return [t for t in tf.nest.flatten(structure) if t is not None]
