"""Signals per time step for the point methods (DFA, DRTP) on sequence models.

On a model with a per-step output (a recurrent layer with ``return_sequences=True``
under the output layers, and a loss at every step), ``through_time`` chooses how a
point method's signal meets time:

- ``"eprop"`` (the default where it applies): each step's error ``e_t`` (DRTP: the
  target ``y_t``) is projected to that step's hidden state, ``delta_t = e_t B_p``, with
  one fixed random ``B_p`` of shape ``(units of e per step, units of h_p per step)``
  shared by all steps, and the recurrent layers below the points run with their
  backward pass through time cut as e-prop cuts it: every path across the recurrent
  kernel is dropped, the cell's elementwise paths are kept (an LSTM's carry, a GRU's
  ``z_t * h_{t-1}``; a SimpleRNN has none). This is "random e-prop" (Bellec et al.
  2020, "A solution to the learning dilemma for recurrent networks of spiking
  neurons", Nat. Commun. 11:3625): learning signal ``L_t = B e_t``, weight update
  ``sum_t L_t e^t`` with eligibility traces ``e^t``.
- ``"per_step"``: the same signals, with every state a cell reads cut (an LSTM's carry
  too): each step's signal reaches that step's weights only.
- ``"bptt"``: the whole sequence at once, as on any other point: ``delta = e B_p`` with
  ``e`` the whole sequence's error flattened and ``B_p`` of shape ``(T x units of e per
  step, T x units of h_p per step)``, and Keras backpropagates through time inside the
  recurrent layer.

``None`` (the default) is ``"eprop"`` where it applies (below) and ``"bptt"`` elsewhere.
"""

import warnings

from credit._tensorflow import tf
from credit import recurrent_transports
from credit.graph import RECURRENT, GraphError, size_of

#: The values of ``through_time``.
THROUGH_TIME = ("eprop", "per_step", "bptt")


def check_through_time(value):
    """``value`` if it is a valid ``through_time`` (None or one of THROUGH_TIME)."""
    if value is None or (isinstance(value, str) and value in THROUGH_TIME):
        return value
    raise ValueError(
        f"through_time must be None (per step, as e-prop, where the model has a "
        f"per-step output; the whole sequence elsewhere), 'eprop', 'per_step' or "
        f"'bptt'; got {value!r} of type {type(value).__name__}. Pass e.g. "
        "through_time='eprop'.")


class Resolved:
    """What ``through_time`` means on one model.

    Attributes:
        mode: ``"eprop"``, ``"per_step"`` or ``"bptt"`` (None: not resolved yet).
        steps: the number of time steps T (None for ``"bptt"``).
        layers: the recurrent layers whose backward pass through time is cut (names).
    """

    def __init__(self, mode, steps=None, layers=()):
        self.mode, self.steps, self.layers = mode, steps, tuple(layers)

    @property
    def per_step(self):
        return self.mode in ("eprop", "per_step")


def resolve(graph, points, through_time):
    """Resolve ``through_time`` on ``graph`` with the method's ``points``.

    It applies where every model output has a time axis of one length T (its first axis
    after the batch), every point's output has that time axis too, and the points are
    fed by at least one recurrent layer with ``return_sequences=True`` whose signal
    comes from the points only (not straight from the loss); every such recurrent
    layer must be one that the cut covers.

    Raises:
        GraphError: ``through_time`` is ``"eprop"`` or ``"per_step"`` and does not apply;
            the message says why and what to change.
    """
    if through_time == "bptt":
        return Resolved("bptt")
    mode = through_time or "eprop"
    problem, steps, layers, uncovered = _applicable(graph, points, mode)
    if problem is None:
        return Resolved(mode, steps, layers)
    if through_time is None:
        if uncovered:
            # A sequence model that looks per step, but a layer the cut cannot take:
            # say so rather than fall back silently.
            warnings.warn(f"signals per step (e-prop) do not apply: {problem}; the whole "
                          "sequence is used (through_time='bptt').", UserWarning,
                          stacklevel=4)
        return Resolved("bptt")
    raise GraphError(
        f"through_time={through_time!r} does not apply to model {graph.model.name!r}: "
        f"{problem}. Per-step signals need a recurrent layer with return_sequences=True "
        "under the points and a loss at every step (an output of shape (batch, T, ...)); "
        "use through_time='bptt' (the whole sequence at once) otherwise.")


def _applicable(graph, points, mode):
    """``(problem or None, T or None, recurrent layer names, uncovered)``: ``uncovered``
    says that the only problem is a recurrent layer that the cut does not cover."""
    shapes = [tuple(s) for s in graph.output_shapes]
    if any(len(s) < 2 for s in shapes) or len({s[0] for s in shapes}) != 1 \
            or shapes[0][0] is None:
        return (f"its output{'s have' if len(shapes) > 1 else ' has'} shape "
                f"{', '.join(str(s) for s in shapes)} (without the batch axis), not one "
                "time axis of a known length followed by the values of each step",
                None, (), False)
    steps = shapes[0][0]
    if not points:
        return "it has no feedback point", steps, (), False
    for p in points:
        shape = tuple(graph.point_shape(p))
        if len(shape) < 2 or shape[0] != steps:
            return (f"point {p!r} has shape {shape}, not {steps} steps of values "
                    "(the output's time axis)"), steps, (), False
    layers, problems, uncovered = [], [], True
    seen = set()
    for node in graph.units:
        layer = node.layer
        name = graph.name_of(layer)
        if not isinstance(layer, RECURRENT) or name in seen:
            continue
        seen.add(name)
        found, loss = graph.reaches(name, points)
        if not found or loss:
            continue  # fed by the loss (an output block) or by nothing: left as it is
        if not getattr(layer, "return_sequences", False):
            problems.append(f"recurrent layer {name!r} has return_sequences=False")
            uncovered = False
            continue
        reason = recurrent_transports.cut_refusal(layer, mode)
        if reason is not None:
            problems.append(f"recurrent layer {name!r} cannot be cut as {mode!r}: {reason}")
            continue
        layers.append(name)
    if problems:
        return "; ".join(problems), steps, layers, uncovered
    if not layers:
        return ("no recurrent layer (SimpleRNN, GRU, LSTM) lies under its points", steps,
                (), False)
    return None, steps, layers, False


def step_units(shape, steps):
    """Values per step of a ``(steps, ...)`` shape."""
    return size_of(shape) // steps


def per_step(t, steps):
    """``t`` reshaped to ``(batch, steps, values per step)``."""
    return tf.reshape(t, (tf.shape(t)[0], steps, -1))


def errors(trace, steps):
    """The output errors per step: ``(batch, T, units of e per step)``, the outputs'
    errors at each step concatenated (as DFA's ``e`` concatenates outputs)."""
    found = [per_step(e, steps) for e in trace.output_errors()]
    if len(found) == 1:
        return found[0]
    if len({e.dtype for e in found}) > 1:
        found = [tf.cast(e, "float32") for e in found]
    return tf.concat(found, axis=2)


def project(v, matrices, trace):
    """``v_t B_p`` at every step t and point p, reshaped to ``h_p``.

    Args:
        v: a ``(batch, T, d)`` tensor (the errors or the targets per step).
        matrices: dict from point to its ``(d, units of h_p per step)`` matrix.
        trace: the step's trace.
    """
    deltas = {}
    for name in trace.points:
        h = trace.outputs[name]
        delta = tf.einsum("btd,du->btu", v, tf.cast(matrices[name], v.dtype))
        deltas[name] = tf.reshape(delta, tf.shape(h))
    return deltas


def cut_rule(resolved, name, graph):
    """What :func:`credit.summary` says of recurrent layer ``name`` (None: not cut); the
    forward and backward layers of a cut Bidirectional layer are cut with it."""
    within = ""
    if name not in resolved.layers:
        outer = [n for n in resolved.layers
                 if any(r is not graph.layers[n] and graph.name_of(r) == name
                        for r in recurrent_transports.rnns(graph.layers[n]))]
        if not outer:
            return None
        within = f", within {outer[0]!r}"
    if resolved.mode == "eprop":
        return ("no BPTT across the recurrent kernel (e-prop: only the cell's "
                f"elementwise paths through time{within})")
    return f"no BPTT (every state cut at every step{within})"


def intercept(resolved, layer, call, args, kwargs):
    """Run a call of a cut recurrent layer (a point method's ``intercept``)."""
    with recurrent_transports.cut_through_time(layer, resolved.mode):
        return call(*args, **kwargs)


def matrix_shapes(graph, resolved, points, units_of_e):
    """The shape of each point's matrix: ``(units of e, units of h_p)`` for the whole
    sequence, per step under a per-step mode."""
    if not resolved.per_step:
        return {p: (units_of_e, graph.point_units(p)) for p in points}
    if units_of_e % resolved.steps:
        raise GraphError(f"the output error has {units_of_e} values, not a multiple of "
                         f"the {resolved.steps} steps.")
    return {p: (units_of_e // resolved.steps,
                step_units(graph.point_shape(p), resolved.steps)) for p in points}
