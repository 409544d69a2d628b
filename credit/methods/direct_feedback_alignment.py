"""Direct feedback alignment: the output error sent straight to every hidden block."""

from credit.methods import _sign
from credit.registry import register
from credit.signal import (ErrorSignal, hidden_points, output_error_units, project,
                           uniform_feedback)


@register
class DirectFeedbackAlignment(ErrorSignal):
    """Direct feedback alignment (Nøkland 2016, "Direct Feedback Alignment Provides
    Learning in Deep Neural Networks", NeurIPS).

    ``delta_p = e B_p`` at each feedback point p, with ``e = dL/da_N`` the loss gradient
    at the model's logits (for softmax + cross-entropy ``(p - onehot(y)) / batch``),
    flattened per example, and ``B_p`` a fixed random matrix of shape
    ``(units of e, units of h_p)``; the result is reshaped to ``h_p``'s shape, so
    convolutional, recurrent and attention blocks work too. A model with several outputs
    has one ``e``: the errors of all its outputs, each flattened, concatenated (an output
    without a loss contributes zeros). The backward pass is cut at every point: a block's
    weights learn from its own point's signal, pushed through its own nonlinearity. The
    output blocks get the true loss gradient. Removes weight transport and backward
    locking.

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(units of e)``.
        at: where the points go. ``"stream"`` (the default, also None): on the
            residual stream, one point where it leaves each residual block (after the
            merge and the normalisation or activation that follows it; a transformer
            block's attention and feed-forward sublayers count as one block, as in
            LightOn's transformer experiments), and one at every other hidden block's
            output (a plain chain: every block). ``"residuals"``: one after every
            residual merge. ``"blocks"``: every hidden block's output, residual
            branches included. Or layer names and block indices (see
            ``credit.summary``).
            A layer called several times (a shared encoder, the layer inside a
            TimeDistributed) gets a point, and a matrix, per call: ``"name:0"``,
            ``"name:1"``, ... (naming the layer means all of its calls).

    Attributes:
        feedback_matrices: dict from point (layer name) to its non-trainable ``B_p``.

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="dfa")  # doctest: +SKIP
    """

    name = "direct_feedback_alignment"
    aliases = ("dfa",)
    point_rule = "e B_p (fixed random projection of the output error)"

    def __init__(self, seed=None, scale=None, at=None):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.at = _sign.check_at(at)

    def build(self, graph):
        d_out = output_error_units(graph)
        self.points = hidden_points(graph, self.at, "at")
        self.feedback_matrices = {}
        for i, name in enumerate(self.points):
            units = graph.point_units(name)
            value = uniform_feedback(self.seed_for(i), (d_out, units), d_out, self.scale)
            self.feedback_matrices[name] = self.add_state_variable(value, f"feedback_{i}")

    def transport(self, layer, kernels):
        return None

    def signals(self, trace):
        if not trace.points:
            # No hidden block (e.g. one Dense layer, or no weights at all): nothing to
            # project, and the output layer trains on its true gradient.
            return {}
        return project(trace.flat_output_error(), self.feedback_matrices, trace)

    def update(self, trace, signals):
        return {}
