"""Feedback alignment: the backward pass through fixed random matrices."""

import numpy as np

from credit.registry import register
from credit.signal import ErrorSignal, uniform_feedback


@register
class FeedbackAlignment(ErrorSignal):
    """Feedback alignment (Lillicrap et al. 2016, "Random synaptic feedback weights
    support error backpropagation for deep learning", Nature Communications).

    ``delta_k = g_{k+1} B_{k+1}^T`` with ``B_{k+1}`` fixed, random, shaped like block
    k+1's kernel: the backward pass uses block k+1's true nonlinearity, normalisation and
    pooling derivatives, with its kernel replaced by ``B_{k+1}`` in the linear op only.
    Removes weight transport.

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(d)``, d the
            number of terms each backward sum has (units of a Dense layer; filters x
            kernel size of a convolution).

    Attributes:
        feedback_matrices: aligned with the blocks; None for the first block, else a
            non-trainable variable shaped like the block's kernel.

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="fa")  # doctest: +SKIP
        >>> model.method.feedback_matrices[1].shape                  # doctest: +SKIP
    """

    name = "feedback_alignment"
    aliases = ("fa",)

    def __init__(self, seed=None, scale=None):
        super().__init__(seed=seed)
        self.scale = scale
        self.feedback_matrices = None

    def build(self, blocks):
        self.feedback_matrices = [None]
        for block in blocks[1:]:
            shape = tuple(block.kernel.shape)
            fan_in = int(np.prod(shape)) // int(shape[-2])
            value = uniform_feedback(self.seed_for(block.index), shape, fan_in, self.scale)
            self.feedback_matrices.append(
                self.add_state_variable(value, f"feedback_{block.index}"))

    def signals(self, trace):
        n = len(trace.blocks)
        deltas = [None] * n
        for k in range(n - 2, -1, -1):
            if k + 1 == n - 1:
                g = trace.output_error()
            else:
                g = trace.activation_gradient(k + 1, deltas[k + 1])
            deltas[k] = trace.linear_input_gradient(k + 1, g, self.feedback_matrices[k + 1])
        return deltas
