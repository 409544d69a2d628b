"""Direct feedback alignment: the output error sent straight to every hidden block."""

import tensorflow as tf

from credit.registry import register
from credit.signal import ErrorSignal, uniform_feedback


@register
class DirectFeedbackAlignment(ErrorSignal):
    """Direct feedback alignment (Nøkland 2016, "Direct Feedback Alignment Provides
    Learning in Deep Neural Networks", NeurIPS).

    ``delta_k = e B_k``, with ``e = dL/da_N`` the loss gradient at the output layer's
    pre-activation (the logits; for softmax + cross-entropy ``(p - onehot(y)) / batch``)
    and ``B_k`` a fixed random matrix of shape ``(d_out, units of h_k)``. The result is
    reshaped to ``h_k``'s shape, so convolutional blocks work too. Removes weight
    transport and backward locking: every hidden block's signal is ready as soon as
    the output error is.

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(d_out)``.

    Attributes:
        feedback_matrices: aligned with the blocks; None for the last block, else a
            non-trainable variable of shape ``(d_out, units of h_k)``.

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="dfa")  # doctest: +SKIP
    """

    name = "direct_feedback_alignment"
    aliases = ("dfa",)

    def __init__(self, seed=None, scale=None):
        super().__init__(seed=seed)
        self.scale = scale
        self.feedback_matrices = None

    def build(self, blocks):
        d_out = blocks[-1].units
        self.feedback_matrices = []
        for block in blocks[:-1]:
            value = uniform_feedback(self.seed_for(block.index), (d_out, block.units),
                                     d_out, self.scale)
            self.feedback_matrices.append(
                self.add_state_variable(value, f"feedback_{block.index}"))
        self.feedback_matrices.append(None)

    def signals(self, trace):
        e = trace.output_error()
        e = tf.reshape(e, (tf.shape(e)[0], -1))
        deltas = []
        for k, h in enumerate(trace.outputs[:-1]):
            delta = tf.matmul(e, self.feedback_matrices[k])
            deltas.append(tf.reshape(delta, tf.shape(h)))
        return deltas + [None]
