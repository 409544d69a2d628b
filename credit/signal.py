"""The error-signal interface: what every credit-assignment method implements.

A model is cut into blocks (see :mod:`credit.blocks`). A training step records a
:class:`Trace` of the forward pass, block by block; a method (an :class:`ErrorSignal`)
reads the trace and returns one signal ``delta_k`` per block, shaped like the block's
output ``h_k``, used in place of ``dL/dh_k``. The engine (:func:`credit.compute_gradients`)
turns the signals into weight gradients, one vector-Jacobian product per block.
"""

import abc
import inspect

import keras
import numpy as np
import tensorflow as tf


class MethodState(keras.layers.Layer):
    """Holds a method's variables and sub-objects so that Keras saves them with the model.

    It is never called. The model keeps it in an untracked attribute, so its variables
    are not among ``model.weights`` (the model's optimizer never sees them), while
    ``model.save`` still writes them and ``keras.models.load_model`` restores them.
    """

    def call(self, inputs):  # pragma: no cover - never called
        raise RuntimeError("MethodState only holds variables; it is not a layer to call.")


class Trace:
    """The record of one forward pass, block by block, with a persistent tape.

    Attributes:
        blocks: the model's blocks (:class:`credit.blocks.Block`).
        inputs: ``h_{k-1}`` per block: the block input, a stop-gradient copy, watched.
        pre_activations: ``a_k`` per block: the output of the block's linear op.
        outputs: ``h_k`` per block; ``outputs[-1]`` is the model output.
        x, y, sample_weight: the batch.
        loss: the compiled loss of the batch (regularisation included), a scalar.
        tape: the persistent ``tf.GradientTape`` on which all of the above were recorded.
        training: whether the forward pass ran in training mode.

    The helper methods return the vector-Jacobian products that methods are made of.
    """

    def __init__(self, blocks, inputs, pre_activations, outputs, x, y, sample_weight,
                 loss, tape, training=True):
        self.blocks = blocks
        self.inputs = inputs
        self.pre_activations = pre_activations
        self.outputs = outputs
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.loss = loss
        self.tape = tape
        self.training = training
        self._output_error = None

    def __len__(self):
        return len(self.blocks)

    @property
    def y_pred(self):
        """The model output ``h_N``."""
        return self.outputs[-1]

    def output_error(self):
        """``e = dL/da_N``: the loss gradient at the output block's pre-activation.

        With the loss's batch reduction included; for softmax + cross-entropy it is
        ``(p - onehot(y)) / batch``. Computed once per step.
        """
        if self._output_error is None:
            self._output_error = self.tape.gradient(self.loss, self.pre_activations[-1])
        return self._output_error

    def loss_gradient(self, k=None):
        """The true gradient ``dL/dh_k`` of block k's output (default: the model output).

        For a hidden block this is one backward pass through the blocks above k.
        """
        n = len(self.blocks)
        k = n - 1 if k is None else k
        if k < n - 1:
            # The blocks are separated by stop-gradients: carry the signal down one
            # block at a time.
            delta = self.tape.gradient(self.loss, self.inputs[n - 1])
            for j in range(n - 2, k, -1):
                delta = self.input_gradient(j, delta)
            return delta
        grad = self.tape.gradient(self.loss, self.outputs[-1])
        if grad is None:
            raise ValueError(
                "dL/dh_N at the model output is not defined here: Keras computes this "
                "loss from the output layer's logits (a softmax or sigmoid output), so "
                "no gradient reaches its probabilities. Use the pre-activation error "
                "(trace.output_error()), or make the model output logits and compile "
                "the loss with from_logits=True.")
        return grad

    def activation_gradient(self, k, delta):
        """``g_k``: the signal ``delta`` on ``h_k`` carried back to ``a_k``.

        This is the VJP of block k's nonlinear part (activation, normalisation, pooling,
        dropout: everything after the linear op).
        """
        return self.tape.gradient(self.outputs[k], self.pre_activations[k],
                                  output_gradients=delta)

    def input_gradient(self, k, delta):
        """The VJP of the whole block k with respect to its input ``h_{k-1}``."""
        return self.tape.gradient(self.outputs[k], self.inputs[k], output_gradients=delta)

    def linear_input_gradient(self, k, g, kernel):
        """The VJP of block k's linear op, with ``kernel`` in place of its own, at ``g``.

        For a Dense block this is ``g @ kernel.T``; for a convolution, the transposed
        convolution. The VJP of a linear op does not depend on where it is taken.
        """
        return self.blocks[k].linear_input_vjp(self.inputs[k], g, kernel)


class ErrorSignal(abc.ABC):
    """Abstract base of every credit-assignment method.

    A method produces, for each block k of a model, the signal ``delta_k`` that the
    block uses in place of the true gradient ``dL/dh_k``. Subclasses implement
    :meth:`signals`; they may create state (feedback matrices, synthesizers) in
    :meth:`build` and update it in :meth:`update`.

    Hyperparameters are the keyword arguments of the subclass's ``__init__``, stored
    on the instance under the same names: :meth:`get_config` reads them from there.

    Class attributes:
        name: the canonical registry name.
        aliases: other names accepted by :func:`credit.get`.
        exact: True only for backprop: the engine may then skip the blockwise path
            and take one plain ``tape.gradient(loss, variables)``.
        log_names: names of the extra values :meth:`update` returns (logged by fit).

    Example:
        >>> class Zero(credit.ErrorSignal):          # doctest: +SKIP
        ...     name = "zero"
        ...     def signals(self, trace):
        ...         return [tf.zeros_like(h) for h in trace.outputs[:-1]] + [None]
    """

    name = None
    aliases = ()
    exact = False
    log_names = ()

    def __init__(self, seed=None):
        self.seed = seed
        self.blocks = None
        self.state = None
        self.model = None
        self._drawn_seed = None  # the base seed drawn when seed=None (see seed_for)

    # -- what subclasses implement ---------------------------------------------------

    @abc.abstractmethod
    def signals(self, trace):
        """Return a list with one signal per block, aligned with ``trace.blocks``.

        Entry k is a tensor shaped like ``trace.outputs[k]``, used as ``dL/dh_k``. The
        last entry may be None: the output block then gets the true loss gradient.
        """

    def build(self, blocks):
        """Create the method's state for these blocks (once per model).

        Variables go on ``self.state`` (a :class:`MethodState`), e.g.
        ``self.state.add_weight(...)``, so they are saved with the model. Each block
        has ``input_shape`` and ``output_shape`` (without the batch axis).
        """

    def update(self, trace, signals):
        """Update the method's own state after the signals of a step; return logs.

        Called once per training step, inside the traced train function. Returns a
        dict of scalar tensors named as in ``log_names``.
        """
        return {}

    # -- configuration ---------------------------------------------------------------

    def get_config(self):
        """The method's name and hyperparameters; ``credit.get(config)`` rebuilds it."""
        params = inspect.signature(type(self).__init__).parameters
        config = {"name": self.name}
        for p in list(params)[1:]:
            if params[p].kind in (params[p].VAR_POSITIONAL, params[p].VAR_KEYWORD):
                continue
            value = getattr(self, p)
            if isinstance(value, tuple):
                value = list(value)
            config[p] = value
        return config

    @classmethod
    def from_config(cls, config):
        """Build a method from :meth:`get_config`'s output."""
        config = dict(config)
        config.pop("name", None)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # -- helpers for subclasses ------------------------------------------------------

    def seed_for(self, *keys):
        """A numpy Generator derived from the method's seed and ``keys`` (e.g. a block index).

        With ``seed=None`` the base seed is drawn once from numpy's global generator,
        so ``keras.utils.set_random_seed`` still makes runs reproducible.
        """
        if self.seed is None:
            if self._drawn_seed is None:
                self._drawn_seed = int(np.random.randint(0, 2**31 - 1))
            base = self._drawn_seed
        else:
            base = int(self.seed)
        return np.random.default_rng([base, *[int(k) for k in keys]])

    def add_state_variable(self, value, name, trainable=False):
        """Add a non-trainable variable holding ``value`` (a numpy array) to the state."""
        value = np.asarray(value, dtype="float32")
        with tf.init_scope():
            return self.state.add_weight(
                shape=value.shape, initializer=keras.initializers.Constant(value),
                trainable=trainable, name=name)


def uniform_feedback(rng, shape, fan_in, scale=None):
    """A fixed random feedback matrix, uniform in ``±scale``.

    The default scale is ``1/sqrt(fan_in)`` (Nøkland 2016), where ``fan_in`` is the
    number of terms the backward product sums over, so a signal keeps its size.
    """
    scale = 1.0 / np.sqrt(fan_in) if scale is None else float(scale)
    return rng.uniform(-scale, scale, size=shape).astype("float32")
