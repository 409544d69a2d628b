"""Direct random target projection: the target, not the error, sent to every hidden block."""

import numpy as np
from keras import ops

from credit._tensorflow import tf
from credit.graph import size_of
from credit.methods import _per_step, _sign
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
        through_time: on a sequence model with a loss at every step, how the signal
            meets time (as for DFA, see ``DirectFeedbackAlignment``). ``"eprop"`` (the
            default there, also None): each step's target ``y_t`` (one-hot classes or
            the step's target values, weighted as the loss weighs that step) is
            projected to that step's hidden state, ``delta_t = y_t B_p``, one ``B_p``
            of shape ``(units of the output per step, units of h_p per step)``
            (uniform in ``±sqrt(6 / units of h_p per step)``) shared by the steps, and
            the recurrent layers under the points drop every path through time that
            crosses their recurrent kernel (a SimpleRNN: no backward pass through time;
            an LSTM keeps its carry through the forget gate; a GRU its ``z_t *
            h_{t-1}``). ``"per_step"``: every state cut. ``"bptt"``: the whole
            sequence's target flattened, ``B_p`` over all steps, and Keras's backprop
            through time inside the recurrent layers. None is ``"eprop"`` where it
            applies and ``"bptt"`` elsewhere.

    Attributes:
        feedback_matrices: dict from point (layer name) to its non-trainable ``B_p``.
        through_time_mode: what ``through_time`` resolved to on the model
            (``"eprop"``, ``"per_step"`` or ``"bptt"``; None before binding).

    Example:
        >>> model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
        ...               method="drtp")                              # doctest: +SKIP
    """

    name = "direct_random_target_projection"
    aliases = ("drtp",)
    point_rule = "y B_p (fixed random projection of the target)"

    def __init__(self, seed=None, scale=None, at=None, through_time=None):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.at = _sign.check_at(at)
        self.through_time = _per_step.check_through_time(through_time)
        self._time = _per_step.Resolved(None)  # resolved on the model in build

    @property
    def through_time_mode(self):
        return self._time.mode

    def build(self, graph):
        require_one_output(graph, "direct random target projection (it projects the "
                           "target of one output)")
        d_y = size_of(graph.output_shapes[0])
        self.points = hidden_points(graph, self.at, "at")
        self._time = _per_step.resolve(graph, self.points, self.through_time)
        self.intercepted = self._time.layers
        self.point_rule = type(self).point_rule
        if self._time.per_step:
            self.point_rule = ("y_t B_p at every step t (fixed random projection of "
                               f"each step's target; {self._time.mode})")
        shapes = _per_step.matrix_shapes(graph, self._time, self.points, d_y)
        self.feedback_matrices = {}
        for i, name in enumerate(self.points):
            shape = shapes[name]
            bound = np.sqrt(6.0 / shape[1]) if self.scale is None else self.scale
            value = self.seed_for(i).uniform(-bound, bound, size=shape)
            self.feedback_matrices[name] = self.add_state_variable(value, f"feedback_{i}")

    def intercept(self, layer, call, args, kwargs, records):
        return _per_step.intercept(self._time, layer, call, args, kwargs)

    def through_time_rule(self, name):
        """What the backward pass does through time inside recurrent layer ``name``
        (None: Keras's backprop through time)."""
        return _per_step.cut_rule(self._time, name, self.graph)

    def transport(self, layer, kernels):
        return None

    def signals(self, trace):
        if not trace.points:
            # No hidden block (e.g. one Dense layer, or no weights at all): nothing to
            # project, and the output layer trains on its true gradient.
            return {}
        if self._time.per_step:
            steps = self._time.steps
            y = _weighted(trace, _step_labels(trace, steps))
            return _per_step.project(_per_step.per_step(y, steps), self.feedback_matrices,
                                     trace)
        return project(_weighted(trace), self.feedback_matrices, trace)

    def update(self, trace, signals):
        return {}


def _step_labels(trace, steps):
    """The targets as ``(batch, T x units per step)``: integer classes per step
    (``(batch, T)`` or ``(batch, T, 1)``) one-hot encoded, a target shaped like the
    output used as it is."""
    units = trace.output_units
    y = trace.y
    if y is not None and not isinstance(y, (dict, list, tuple)):
        y = tf.convert_to_tensor(y)
        per = units // steps
        if per > 1 and y.shape.rank in (2, 3) and tuple(y.shape[1:2]) == (steps,) \
                and (y.shape.rank == 2 or y.shape[2] == 1):
            labels = tf.cast(tf.reshape(y, (-1, steps)), "int32")
            onehot = tf.one_hot(labels, per, dtype=trace.y_pred.dtype)
            return tf.reshape(onehot, (-1, units))
    return trace.labels()


def _weighted(trace, y=None):
    """The targets ``(batch, units)`` (``y``, or the trace's labels), each entry times
    the weight the loss gives it."""
    y = trace.labels() if y is None else y
    w = trace.sample_weight
    if w is None:
        return y
    w = ops.cast(ops.convert_to_tensor(w), y.dtype)
    batch = ops.shape(y)[0]
    out_shape = [int(d) for d in trace.graph.output_shapes[0]]
    rank = len(out_shape) + 1
    # As Keras's losses do (squeeze_or_expand_to_same_rank): drop trailing unit axes
    # beyond the output's rank, append unit axes up to it.
    while len(w.shape) > rank and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    if len(w.shape) > rank:
        raise ValueError(
            f"sample_weight of shape {tuple(w.shape)} has more axes than the model output "
            f"(batch, {', '.join(map(str, out_shape))}); pass one weight per example, or "
            "per example and time step.")
    w = ops.reshape(w, tuple(ops.shape(w)) + (1,) * (rank - len(w.shape)))
    w = ops.broadcast_to(w, (batch, *out_shape))
    if _reduction(trace.graph.model) == "mean_with_sample_weight":
        # The loss divides by the sum of the weights, not by their count (the ratio is
        # the same over the broadcast weights).
        w = w * ops.divide_no_nan(ops.cast(ops.size(w), w.dtype), ops.sum(w))
    return y * ops.reshape(w, ops.shape(y))


def _reduction(model):
    loss = getattr(model, "loss", None)
    return getattr(loss, "reduction", None)
