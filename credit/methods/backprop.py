"""Backpropagation: the true gradient."""

import numpy as np

from credit.registry import register
from credit.signal import ErrorSignal, hidden_points


@register
class Backprop(ErrorSignal):
    """Backpropagation (Rumelhart, Hinton & Williams 1986, "Learning representations by
    back-propagating errors", Nature): every layer gets the true gradient ``dL/dh``.

    By default training runs Keras's own train step (the fast path), so a credit model
    trained with backprop is a Keras model trained by Keras. With ``blockwise=True`` the
    credit engine cuts the backward pass at every hidden block's output and injects the
    true gradient there, carried across the cuts: the same numbers by another route,
    which checks the engine.

    Args:
        seed: unused; kept so that every method takes one.
        blockwise: train through credit's engine, with a point at every hidden block.

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="backprop")  # doctest: +SKIP
    """

    name = "backprop"
    aliases = ("bp", "backpropagation")
    point_rule = "true gradient (carried across the cut)"

    def __init__(self, seed=None, blockwise=False):
        super().__init__(seed=seed)
        if not isinstance(blockwise, (bool, np.bool_)):
            raise ValueError(f"blockwise must be True or False; got {blockwise!r} of type "
                             f"{type(blockwise).__name__}. Pass blockwise=True to train "
                             "through credit's engine.")
        self.blockwise = bool(blockwise)

    @property
    def exact(self):
        return not self.blockwise

    def build(self, graph):
        if self.blockwise:
            # Every block, residual branches included: the engine's check cuts and
            # carries the gradient at as many points as it can.
            self.points = hidden_points(graph, "blocks")

    def transport(self, layer, kernels):
        return None

    def signals(self, trace):
        return trace.loss_gradients() if self.blockwise else {}

    def update(self, trace, signals):
        return {}
