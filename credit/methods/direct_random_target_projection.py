"""Direct random target projection: the target, not the error, sent to every hidden block."""

import numpy as np
import tensorflow as tf

from credit.graph import size_of
from credit.methods import _sign
from credit.registry import register
from credit.signal import ErrorSignal, hidden_points, project, require_one_output


@register
class DirectRandomTargetProjection(ErrorSignal):
    """Direct random target projection, DRTP (Frenkel, Lefebvre & Bol 2021, "Learning
    Without Feedback: Fixed Random Learning Signals Allow for Feedforward Training of
    Deep Neural Networks", Frontiers in Neuroscience 15:629892).

    ``delta_p = y B_p`` at each feedback point p, with ``y`` the target of the batch as
    a ``(batch, units of the output)`` matrix -- integer class labels one-hot encoded,
    a target shaped like the output (one-hot labels, a regression target) used as it
    is -- and ``B_p`` a fixed random matrix of shape ``(units of the output, units of
    h_p)``; the result is reshaped to ``h_p``'s shape. The signal does not depend on the
    network's output, so a block can update as soon as its own forward pass is done: no
    backward locking, and no wait for the error. A block's weights learn from its own
    point's signal, pushed through its own nonlinearity; the output block gets the true
    loss gradient.

    Sample weights (``sample_weight``, ``class_weight``, the masks of
    ``credit.data.Windows``) weight each example's target as the loss weights its
    example: ``delta_p = (w * y) B_p``, ``w`` broadcast over the target's entries (a
    weight per time step weighs that step's target), normalised as the loss's reduction
    normalises them (``"mean_with_sample_weight"``: times ``count / sum(w)``). An example
    of weight 0 sends no signal, as it adds nothing to the loss.

    As in the authors' code (``function.py``, ``labels.mm(B)``), the signal is not
    divided by the batch size, while the loss (and so the output block's gradient) is
    a mean over the batch: the hidden blocks' gradients are sums over the batch and
    grow with it. Choose the learning rate accordingly.

    ``B_p`` is initialised as in the authors' code, ``torch.nn.init.kaiming_uniform_``
    with its defaults on a tensor of shape ``(units of y, units of h_p)``: uniform in
    ``±sqrt(6 / fan_in)`` where PyTorch's ``fan_in`` is that tensor's ``size(1)``
    times the sizes of the dimensions after it, i.e. the number of units at the point
    (``units`` of a Dense block; channels x height x width of a convolutional one).

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale`` (default ``sqrt(6 / units of
            h_p)``, see above).
        at: where the points go: ``"stream"`` (the default, also None: one point where
            the residual stream leaves each residual block, one at every other hidden
            block's output), ``"residuals"`` (after every residual merge),
            ``"blocks"`` (every hidden block's output, residual
            branches included), or layer names and block indices (see
            ``credit.summary``). The authors' convolutional
            blocks put the point after the activation, before max-pooling; credit's
            default is the block's output (after pooling): pass the activation layer's
            name to follow them.
            A layer called several times (a shared encoder, the layer inside a
            TimeDistributed) gets a point, and a matrix, per call: ``"name:0"``,
            ``"name:1"``, ... (naming the layer means all of its calls).

    Attributes:
        feedback_matrices: dict from point (layer name) to its non-trainable ``B_p``.

    Example:
        >>> model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
        ...               method="drtp")                              # doctest: +SKIP
    """

    name = "direct_random_target_projection"
    aliases = ("drtp",)
    point_rule = "y B_p (fixed random projection of the target)"

    def __init__(self, seed=None, scale=None, at=None):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.at = _sign.check_at(at)

    def build(self, graph):
        require_one_output(graph, "direct random target projection (it projects the "
                           "target of one output)")
        d_y = size_of(graph.output_shapes[0])
        self.points = hidden_points(graph, self.at, "at")
        self.feedback_matrices = {}
        for i, name in enumerate(self.points):
            units = graph.point_units(name)
            bound = np.sqrt(6.0 / units) if self.scale is None else self.scale
            value = self.seed_for(i).uniform(-bound, bound, size=(d_y, units))
            self.feedback_matrices[name] = self.add_state_variable(value, f"feedback_{i}")

    def transport(self, layer, kernels):
        return None

    def signals(self, trace):
        if not trace.points:
            # No hidden block (e.g. one Dense layer, or no weights at all): nothing to
            # project, and the output layer trains on its true gradient.
            return {}
        return project(_weighted(trace), self.feedback_matrices, trace)

    def update(self, trace, signals):
        return {}


def _weighted(trace):
    """The targets ``(batch, units)``, each entry times the weight the loss gives it."""
    y = trace.labels()
    w = trace.sample_weight
    if w is None:
        return y
    w = tf.cast(tf.convert_to_tensor(w), y.dtype)
    batch = tf.shape(y)[0]
    out_shape = [int(d) for d in trace.graph.output_shapes[0]]
    rank = len(out_shape) + 1
    # As Keras's losses do (squeeze_or_expand_to_same_rank): drop trailing unit axes
    # beyond the output's rank, append unit axes up to it.
    while w.shape.rank > rank and w.shape[-1] == 1:
        w = tf.squeeze(w, -1)
    if w.shape.rank > rank:
        raise ValueError(
            f"sample_weight of shape {tuple(w.shape)} has more axes than the model output "
            f"(batch, {', '.join(map(str, out_shape))}); pass one weight per example, or "
            "per example and time step.")
    w = tf.reshape(w, tf.concat([tf.shape(w), tf.ones([rank - w.shape.rank], "int32")], 0))
    w = tf.broadcast_to(w, tf.concat([[batch], out_shape], 0))
    if _reduction(trace.graph.model) == "mean_with_sample_weight":
        # The loss divides by the sum of the weights, not by their count (the ratio is
        # the same over the broadcast weights).
        w = w * tf.math.divide_no_nan(tf.cast(tf.size(w), w.dtype), tf.reduce_sum(w))
    return y * tf.reshape(w, tf.shape(y))


def _reduction(model):
    loss = getattr(model, "loss", None)
    return getattr(loss, "reduction", None)
