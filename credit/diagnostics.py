"""What each layer trains with, and how close a method's updates are to backprop's."""

import keras
import numpy as np
import pandas as pd

from credit import _keras_compat as compat
from credit import graph as graph_lib
from credit import recurrent_transports, transports
from credit.model import _resolve as resolve
from credit.model import bind, record
from credit.model import compute_gradients as credit_compute_gradients


def _method_for(model, method, caller):
    """The method ``caller`` describes: ``method`` resolved, or the model's own.

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: no method for a plain Keras model, or a method bound to another
            model (its graph and state are that model's).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"credit.{caller} takes a Keras model; got model={model!r} of "
                        f"type {type(model).__name__}. Pass the model, e.g. "
                        f"credit.{caller}(model, method='dfa').")
    if method is None:
        if not hasattr(model, "method"):
            raise ValueError(f"model {model.name!r} is not a credit model, so it has no "
                             "method of its own; pass one, e.g. "
                             f"credit.{caller}(model, method='dfa').")
        return model.method
    # By name or config: the model's own method if it is that one, else the one that
    # credit.compute_gradients(model, ..., method=...) uses (one per config).
    method = resolve(model, method)
    if method.model is not None and method.model is not model:
        raise ValueError(
            f"method={method!r} is bound to model {method.model.name!r}, not to "
            f"model {model.name!r}: its {'table' if caller == 'summary' else 'numbers'} "
            "would describe the other model. Pass the method's name or config instead, "
            f"e.g. credit.{caller}(model, method=method.get_config()).")
    return method


def _bound(model, method, x=None):
    if method.plan is None:
        bind(method, model, inputs=x)
    return method


def summary(model, method=None):
    """One row per layer with weights: its block and the rule it trains with.

    Nothing trains silently on backprop: the table says, for every layer that owns
    weights, where the signal at its output comes from and how the backward pass crosses
    it to its input.

    Args:
        model: a credit model (its method is used), or any Keras model with ``method``.
        method: a method or name; default ``model.method``.

    Returns:
        A DataFrame with columns ``layer``, ``type``, ``block`` (index, or None for a
        layer outside blocks, e.g. a normalisation after a residual addition),
        ``signal`` (where the signal at its output comes from), ``transport`` (how the
        backward pass crosses it to its input) and ``rule`` (the two in one phrase).

    Example:
        >>> credit.summary(model)                            # doctest: +SKIP
             layer   type  block                         signal  transport ...
        0  dense_1  Dense      0  point: e B_p (fixed random...   W (true) ...
    """
    method = _method_for(model, method, "summary")
    if method.plan is None:
        method = _bound(model, method)
    graph, plan = method.graph, method.plan
    points = list(plan.order)
    rows = []
    for name in graph.weighted:
        layer = graph.layers[name]
        block = graph.block_of(name)
        container = _is_container(graph, name)
        if getattr(method, "computes_gradients", False):
            # Forward-only rules: no signal arrives at an output, nothing crosses back.
            signal, crossing = method.layer_rule(name), "none (no backward pass)"
        elif method.exact:
            signal, crossing = "true gradient", "W (true)"
            if container and not _container_passes_down(graph, name):
                crossing = "none (its input gradient is not used)"
        elif container:
            # A layer that owns weights and also has sublayers (its own op feeds them):
            # its weights learn from what reaches its sublayers, and the backward pass
            # crosses its own op by autodiff.
            signal = _container_signal(graph, method, name, points)
            crossing = ("true (its own op)" if _container_passes_down(graph, name)
                        else "none (its input gradient is not used)")
        else:
            signal = _signal_rule(graph, method, name, points)
            crossing = _transport_rule(graph, method, plan, name, layer)
        if isinstance(layer, graph_lib.RECURRENT):
            # A recurrent layer inside a transported Bidirectional one is crossed with it.
            outer = [o for o in plan.transported.values() if o is not layer and any(
                r is layer for r in recurrent_transports.rnns(o))]
            if (id(layer) in plan.transported or outer) and not method.exact:
                crossing = ((method.transport_rule or "transport") + ", at every step "
                            "through time (input and recurrent kernels)"
                            + (f", within {outer[0].name!r}" if outer else ""))
            else:
                # A point method's per-step signals cut the backward pass through time.
                cut = getattr(method, "through_time_rule", lambda n: None)(name)
                crossing = (cut if cut else "BPTT inside") + "; " + crossing
        rule = getattr(method, "intercept_rule", None)
        if rule and name in method.intercepted:
            signal = f"{signal}, {rule}"
        rows.append({"layer": name, "type": type(layer).__name__,
                     "block": None if block is None else block.index,
                     "signal": signal, "transport": crossing,
                     "rule": f"{signal}; to its input: {crossing}"})
    table = pd.DataFrame(rows, columns=["layer", "type", "block", "signal", "transport",
                                        "rule"])
    table["block"] = table["block"].astype("Int64")
    return table


def point_summary(model, method=None):
    """One row per feedback point: where it sits and what the method adds there.

    The companion of :func:`summary` for the method's own weights: synthetic gradients'
    synthesizers and local losses' heads (one per point) can outweigh the model if
    sized carelessly; this table shows each one's size before a step is taken.

    Args:
        model: a credit model (its method is used), or any Keras model with ``method``.
        method: a method or name; default ``model.method``.

    Returns:
        A DataFrame with columns ``point`` (the layer name, ``"name:k"`` for the k-th
        call of a layer called several times), ``type`` (the layer's type), ``shape``
        (the point's shape without the batch axis), ``block`` (the index of the block
        it ends, or None) and ``parameters`` (the weights of the point's synthesizer or
        head; <NA> for a method that keeps none per point). ``table.attrs`` holds
        ``model_parameters``, ``added_parameters`` (the sum of the column) and
        ``placement`` (for synthetic gradients and local losses: the rule that chose
        the points, e.g. ``"stages: 3 of 4 stage starts (32 stream points
        > max_points=16, stage_points=3)"``; None for other methods).

    Example:
        >>> credit.point_summary(model)                      # doctest: +SKIP
                point         type      shape  block  parameters
        0  conv2_block1_out  Activation  (8, 8, 256)   <NA>  ...
    """
    method = _method_for(model, method, "point_summary")
    if method.plan is None:
        method = _bound(model, method)
    graph = method.graph
    sizes = method.point_parameters() if hasattr(method, "point_parameters") else {}
    rows = []
    for name in method.plan.order:
        block = next((b.index for b in graph.blocks if b.point == name), None)
        rows.append({"point": name, "type": type(graph.point_layer(name)).__name__,
                     "shape": tuple(graph.point_shape(name)), "block": block,
                     "parameters": sizes.get(name)})
    table = pd.DataFrame(rows, columns=["point", "type", "shape", "block", "parameters"])
    table["block"] = table["block"].astype("Int64")
    table["parameters"] = table["parameters"].astype("Int64")
    table.attrs["model_parameters"] = int(model.count_params())
    table.attrs["added_parameters"] = int(sum(sizes.values()))
    table.attrs["placement"] = getattr(method, "point_placement", None)
    return table


def _signal_rule(graph, method, name, points):
    found, loss = graph.reaches(name, points)
    rule = method.point_rule or type(method).__name__
    own = [p for p in found if graph.name_of(graph.point_layer(p)) == name]
    if found == [name]:
        return f"point: {rule}"
    if found and len(own) == len(found) == graph.calls(name) > 1:
        return f"a point per call ({', '.join(own)}): {rule}"
    others = [p for p in found if p not in own]
    parts = []
    if loss:
        parts.append("the loss")
    if others:
        parts.append("point" + ("s " if len(others) > 1 else " ") + ", ".join(others))
    text = ("true gradient from " + " and ".join(parts) if parts
            else "nothing (no path to the loss or a point)")
    if own:
        return f"point at {', '.join(own)}: {rule}; at its other calls: {text}"
    return text


def _is_container(graph, name):
    """Whether layer ``name`` owns weights and is made of units (not taken apart as a
    composite such as attention or a recurrent layer)."""
    return any(graph.name_of(node.layer) == name and not node.unit for node in graph.nodes)


def _container_units(graph, name):
    layer = graph.layers[name]
    inner = {id(sub) for sub in compat.sublayers(layer, recursive=True)}
    return [node for node in graph.nodes if node.unit and id(node.layer) in inner]


def _container_passes_down(graph, name):
    """Whether anything below the container's inputs is trained (its input gradient is
    used): a unit outside it that one of its calls consumes."""
    for node in graph.nodes:
        if graph.name_of(node.layer) == name and not node.unit:
            for t in node.input_tensors:
                if graph._producers(t)[0]:
                    return True
    return False


def _container_signal(graph, method, name, points):
    found, loss = [], False
    for node in _container_units(graph, name):
        units_found, units_loss = graph.reaches(graph.name_of(node.layer), points)
        found += [p for p in units_found if p not in found]
        loss = loss or units_loss
    parts = (["the loss"] if loss else []) + (
        ["point" + ("s " if len(found) > 1 else " ") + ", ".join(graph.order(found))]
        if found else [])
    if not parts:
        return "nothing (no path to the loss or a point)"
    return "true gradient from " + " and ".join(parts) + ", through its sublayers"


def _transport_rule(graph, method, plan, name, layer):
    if id(layer) in plan.transported:
        return method.transport_rule or "transport"
    if isinstance(layer, keras.layers.Embedding):
        return "none (integer input)"
    if not graph.needs_input_gradient(name):
        return "none (its input gradient is not used)"
    return "W (true)" if transports.supports(layer) else "true"


def _cosine(a, b):
    a = np.ravel(np.asarray(a, dtype="float64"))
    b = np.ravel(np.asarray(b, dtype="float64"))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(a @ b / (na * nb))


def _flat(tensors):
    parts = [np.ravel(t) for t in tensors if t is not None]
    return np.concatenate(parts) if parts else np.zeros(0)


def _own_trainable(layer):
    if isinstance(layer, graph_lib.RECURRENT):
        return layer.trainable_variables
    inner = {id(w) for sub in compat.sublayers(layer, recursive=True) for w in sub.weights}
    return [v for v in layer.trainable_variables if id(v) not in inner]


def alignment(model, x, y, method=None, sample_weight=None, training=False, by="layer"):
    """Per layer, how the method's update compares with backprop's, on one batch.

    Nothing is trained: the method's state is not updated. For layers whose signal is
    the true gradient (the output block under most methods) the cosines are 1.

    Args:
        model: a credit model (its method is used) or any Keras model.
        x, y: a batch.
        method: a method or name; default ``model.method``.
        sample_weight: optional weights of the batch.
        training: run the layers in training mode (dropout on) when computing both.
        by: ``"layer"`` (one row per layer with trainable weights) or ``"block"`` (one
            row per block, over all its layers' weights; the signal at its output).

    Returns:
        A DataFrame with one row per layer with trainable weights: ``layer``, ``block``,
        ``update_cosine`` (its weight gradient against backprop's), ``norm_ratio``
        (their norms' ratio), ``signal_cosine`` (at a feedback point: ``delta_p``
        against the true ``dL/dh_p``; NaN elsewhere) and ``feedback_angle`` (for a
        transported layer: the angle in degrees between its kernel ``W`` and the
        kernel ``B`` the backward pass crosses it with; NaN elsewhere).

    Example:
        >>> credit.alignment(model, x[:256], y[:256])        # doctest: +SKIP
             layer  block  update_cosine  norm_ratio  signal_cosine  feedback_angle
        0  dense_1      0           0.41        0.9            0.37             NaN
    """
    if by not in ("layer", "block"):
        raise ValueError(f"by must be 'layer' or 'block'; got {by!r}.")
    method = _method_for(model, method, "alignment")
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    y = None if y is None else keras.tree.map_structure(keras.ops.convert_to_tensor, y)
    method = _bound(model, method, x)
    plan, graph = method.plan, method.graph
    variables = model.trainable_variables
    index = {id(v): i for i, v in enumerate(variables)}

    # The method's update, without updating its state.
    if getattr(method, "computes_gradients", False):
        # A forward-only rule forms its whole update in one call, which may advance its
        # state (forward gradients' step counter): put the state back afterwards.
        state = list(method.state.weights) if method.state is not None else []
        saved = [keras.ops.convert_to_numpy(v.value) for v in state]
        method_grads = list(credit_compute_gradients(model, x, y, sample_weight,
                                                     method=method,
                                                     training=training).gradients)
        for v, value in zip(state, saved):
            v.assign(value)
        signals = {}
    else:
        trace = record(model, x, y, sample_weight, method=method, training=training)
        signals = method.signals(trace) or {}
        method_grads = trace.weight_gradients(signals)
        del trace

    # Backprop's, with the points recorded (not cut) to read the true dL/dh_p.
    true = record(model, x, y, sample_weight, method=method, training=training, cut=False,
                  use_transports=False)
    true_grads = true.weight_gradients({})
    true_signals = {p: true.true_point_gradient(p) for p in plan.order}
    del true

    if by == "block":
        rows = []
        for block in graph.blocks:
            ids = [index[id(v)] for layer in block.layers for v in _own_trainable(layer)
                   if id(v) in index]
            mine = _flat([method_grads[i] for i in ids])
            reference = _flat([true_grads[i] for i in ids])
            point = block.point
            signal_cosine = float("nan")
            if signals.get(point) is not None:
                signal_cosine = _cosine(signals[point], true_signals[point])
            norm = np.linalg.norm(reference)
            rows.append({"block": block.index, "layers": ", ".join(graph.name_of(l) for l in block.layers),
                         "update_cosine": _cosine(mine, reference),
                         "norm_ratio": float(np.linalg.norm(mine) / norm) if norm else float("nan"),
                         "signal_cosine": signal_cosine})
        return pd.DataFrame(rows, columns=["block", "layers", "update_cosine", "norm_ratio",
                                           "signal_cosine"])
    rows = []
    for name in graph.weighted:
        layer = graph.layers[name]
        own = _own_trainable(layer)
        if not own:
            continue
        ids = [index[id(v)] for v in own if id(v) in index]
        mine = _flat([method_grads[i] for i in ids])
        reference = _flat([true_grads[i] for i in ids])
        signal_cosine = float("nan")
        if name in signals and signals[name] is not None:
            signal_cosine = _cosine(signals[name], true_signals[name])
        angle = float("nan")
        if id(layer) in plan.transported:
            own_kernels = transports.kernels(layer)
            feedback = method.transport(layer, own_kernels)
            if feedback is not None:
                c = _cosine(_flat(feedback), _flat(own_kernels))
                angle = float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))
        block = graph.block_of(name)
        norm = np.linalg.norm(reference)
        rows.append({"layer": name, "block": None if block is None else block.index,
                     "update_cosine": _cosine(mine, reference),
                     "norm_ratio": float(np.linalg.norm(mine) / norm) if norm else float("nan"),
                     "signal_cosine": signal_cosine, "feedback_angle": angle})
    return pd.DataFrame(rows, columns=["layer", "block", "update_cosine", "norm_ratio",
                                       "signal_cosine", "feedback_angle"])


class AlignmentCallback(keras.callbacks.Callback):
    """Adds ``alignment_k`` (update cosine of block k with backprop's) to fit's epoch logs.

    Args:
        x, y: a fixed batch to measure on (a few hundred examples are enough).
        every: measure every ``every`` epochs (NaN in between).

    Example:
        >>> model.fit(x, y, callbacks=[credit.AlignmentCallback(x[:256], y[:256])])  # doctest: +SKIP
    """

    def __init__(self, x, y, every=1):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (measure every that many "
                             f"epochs); got {every!r}. Pass e.g. every=1.")
        self.x, self.y, self.every = x, y, int(every)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        table = alignment(self.model, self.x, self.y, by="block")
        for row in table.itertuples():
            logs[f"alignment_{row.block}"] = row.update_cosine
