"""Backpropagation: the true gradient, the reference every other method is measured by."""

from credit.registry import register
from credit.signal import ErrorSignal


@register
class Backprop(ErrorSignal):
    """Backpropagation (Rumelhart, Hinton & Williams 1986): ``delta_k = g_{k+1} W_{k+1}^T``.

    In the synthetic-gradient view of Czarnecki et al. 2017 it is the exact synthetic
    gradient. Training takes Keras's own fast path (one ``tape.gradient`` over all
    variables), so it trains any Keras model, branches included; ``blockwise=True``
    forces the blockwise engine instead, which gives the same numbers on a chain.

    Args:
        seed: unused; kept so that every method takes one.
        blockwise: compute the update block by block through the credit engine.

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="backprop")  # doctest: +SKIP
    """

    name = "backprop"
    aliases = ("bp", "backpropagation")

    def __init__(self, seed=None, blockwise=False):
        super().__init__(seed=seed)
        self.blockwise = bool(blockwise)

    @property
    def exact(self):
        return not self.blockwise

    def signals(self, trace):
        n = len(trace.blocks)
        deltas = [None] * n
        if n > 1:
            deltas[n - 2] = trace.loss_gradient(n - 2)
        for k in range(n - 3, -1, -1):
            deltas[k] = trace.input_gradient(k + 1, deltas[k + 1])
        return deltas
