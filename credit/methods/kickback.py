"""Kickback: a scalar error times a one-step, all-ones backward pass."""

import tensorflow as tf

from credit.registry import register
from credit.signal import ErrorSignal


@register
class Kickback(ErrorSignal):
    """Kickback (Balduzzi, Vanchinathan & Buhmann 2015, "Kickback cuts Backprop's
    red-tape: Biologically plausible credit assignment in neural networks", AAAI).

    For models with one scalar output. The block under the output gets the true
    signal ``e W_N^T``; below it, ``delta_k = e * (1 * phi'(a_{k+1})) W_{k+1}^T``: one
    VJP of block k+1 applied to a vector of ones, times the scalar error ``e = dL/da_N``.
    No signal travels more than one block: removes backward locking.

    Args:
        seed: unused; kept so that every method takes one.

    Raises:
        ValueError: at build, for a model whose output is not one scalar per example.

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="kickback")  # doctest: +SKIP
    """

    name = "kickback"
    aliases = ("kb",)

    def __init__(self, seed=None):
        super().__init__(seed=seed)

    def build(self, blocks):
        if blocks[-1].units != 1:
            raise ValueError(
                f"kickback needs a model with one scalar output per example (a "
                f"regression with Dense(1) on top, say); this model's output has shape "
                f"{blocks[-1].output_shape}. Use 'dfa' or 'fa' for multi-output models.")

    def signals(self, trace):
        n = len(trace.blocks)
        deltas = [None] * n
        if n < 2:
            return deltas
        e = trace.output_error()
        deltas[n - 2] = trace.loss_gradient(n - 2)
        for k in range(n - 3, -1, -1):
            ones = tf.ones_like(trace.outputs[k + 1])
            v = trace.input_gradient(k + 1, ones)
            e_k = tf.reshape(e, [-1] + [1] * (len(v.shape) - 1))
            deltas[k] = e_k * v
        return deltas
