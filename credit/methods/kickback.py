"""Kickback: a scalar error times a one-step, all-ones backward pass."""

from keras import ops

from credit.graph import GraphError
from credit.registry import register
from credit.signal import ErrorSignal, output_units


@register
class Kickback(ErrorSignal):
    """Kickback (Balduzzi, Vanchinathan & Buhmann 2015, "Kickback cuts Backprop's
    red-tape: Biologically plausible credit assignment in neural networks", AAAI).

    For chains of blocks with one scalar output. The block under the output gets the
    true signal ``e W_N^T``; below it, ``delta_k = e * (1 * phi'(a_{k+1})) W_{k+1}^T``:
    one VJP of block k+1 applied to a vector of ones, times the scalar error
    ``e = dL/da_N``. No signal travels more than one block: removes backward locking.

    Args:
        seed: unused; kept so that every method takes one.

    Raises:
        ValueError: at build, for a model whose output is not one scalar per example.
        credit.graph.GraphError: at build, for a model that is not a chain of blocks
            (branches, residual connections, merges).

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="kickback")  # doctest: +SKIP
    """

    name = "kickback"
    aliases = ("kb",)
    point_rule = "e x (one-block backward pass of ones)"

    def __init__(self, seed=None):
        super().__init__(seed=seed)

    def build(self, graph):
        units = output_units(graph, "kickback")
        if units != 1:
            raise ValueError(
                f"kickback needs a model with one scalar output per example (a "
                f"regression with Dense(1) on top, say); this model's output has shape "
                f"{graph.output_shapes[0]}. Use 'dfa' or 'fa' for multi-output models.")
        if not graph.is_chain():
            raise GraphError(
                f"kickback is defined for chains of blocks, and model "
                f"{graph.model.name!r} is not one (it has branches, merges or residual "
                f"connections; its blocks: {graph.blocks}). Use 'dfa', 'fa' or "
                "'sg', which train any architecture.")
        self.points = [b.point for b in graph.hidden_blocks]

    def transport(self, layer, kernels):
        return None

    def signals(self, trace):
        points = trace.points
        if not points:
            return {}
        e = trace.output_error()
        deltas = {points[-1]: trace.gradient({}, [points[-1]])[points[-1]]}
        for k in range(len(points) - 2, -1, -1):
            above = trace.outputs[points[k + 1]]
            v = trace.vjp(points[k + 1], ops.ones_like(above))[points[k]]
            e_k = ops.reshape(ops.cast(e, v.dtype), (-1,) + (1,) * (len(v.shape) - 1))
            deltas[points[k]] = e_k * v
        return deltas

    def update(self, trace, signals):
        return {}
