"""Forward gradients: a directional derivative in forward mode, times its direction."""

import keras
import numpy as np
from keras import ops

from credit import _keras_compat as compat
from credit import backends
from credit import graph as graph_lib
from credit._tensorflow import tf
from credit.methods import _synthesizers as sg
from credit.registry import register
from credit.signal import PLACEMENTS, ErrorSignal, hidden_points, output_units


@register
class ForwardGradient(ErrorSignal):
    """Forward gradients (Baydin, Pearlmutter, Syme, Wood & Torr 2022, "Gradients
    without Backpropagation", arXiv:2202.08587).

    Rule: draw a tangent ``v ~ N(0, I)`` over all trainable variables, compute the
    directional derivative ``dL/dθ · v`` in forward mode (one forward pass under
    :func:`credit.backends.jvp`: TensorFlow's ``ForwardAccumulator`` or ``jax.jvp``;
    no backward pass), and use ``(dL/dθ · v) v``
    as the gradient. Since ``E[v v^T] = I``, the estimate is unbiased:
    ``E[(∇L · v) v] = ∇L``. With ``tangents=K`` the step averages K such estimates
    (K forward passes), which divides the variance by K.

    With ``perturb="activities"`` (Ren, Kornblith, Liao & Hinton 2023, "Scaling
    Forward Gradient With Local Losses", ICLR; code: google-research's
    ``local_forward_gradient``) the tangents perturb the **pre-activations** instead:
    every weighted layer's ``z = x W + b`` (the output of its Dense or convolution op,
    before its activation), with ``v_z ~ N(0, I)`` drawn per example and unit. One
    forward pass carries all of them; each example's directional derivative
    ``d_i = sum_z ∇_{z_i}L · v_{z,i}`` is read at the model output (its forward-mode
    tangent there, dotted with the loss gradient at the logits: the loss's own local
    derivative, as the authors' JVP of per-example losses gives it). The activity
    gradient estimate ``ĝ_{z,i} = d_i v_{z,i}`` is unbiased (``E[v v^T] = I``), and each
    layer turns it into its weight gradient locally, through its own op alone:
    ``x^T ĝ_z`` and ``sum_i ĝ_{z,i}`` for a Dense layer (convolutions: the adjoint of
    the convolution in its kernel). Its variance grows with the number of activities
    per example instead of the number of weights, so it is much lower than weight
    perturbation's on the same model (Ren et al.'s argument; measured in the tests).
    Every layer with trainable weights must be a Dense, EinsumDense or convolution
    layer called once per forward pass (others are refused, named), and examples must
    not interact (no batch normalisation: it is refused, having weights and no
    pre-activation). The gradients of weight penalties (``model.losses``) are not
    included. Each layer's local product reads its input ``x``: the step records the
    forward pass on a tape for them, so it keeps the layers' inputs as backprop does
    (no backward pass crosses a layer, but the activation memory is not saved).

    With ``local=True`` (activities only) the model is cut into blocks as by
    ``local_losses``: a point at every hidden block output (or ``at=``), each with a
    linear head (one Dense layer to the model's output units on the flattened, and
    for spatial outputs average-pooled, block output; see ``credit.methods.local_losses
    .LocalHead``) trained on the model's compiled loss of its prediction (Ren et al.'s
    local greedy losses, in their simplest, per-block form: no patch- or group-wise
    copies). Nothing crosses a point forwards in the tangents (the layers above read a
    stop-gradient copy, which carries no tangent), so a layer's estimate uses the
    directional derivative of the one loss its activities reach: its block's head's
    (the first point at or after its block), or the model's loss above the last point.
    Fewer activities per loss: less variance. The heads train on their exact local
    gradient with their own optimizer (``optimizer``, ``learning_rate``), and are saved
    with the model. Every point must lie in a block (``credit.summary``).

    The tangents are drawn fresh at every step by a counter-based generator keyed by
    the method's seed and its step counter, both variables on ``method.state`` (see
    :meth:`draw_tangents`): they are saved with the model, so a resumed run draws the
    tangents it would have drawn; every replica under ``tf.distribute`` draws the same
    ones, an XLA-compiled step the same as a plain one, and the JAX backend the same
    as TensorFlow (the hash is written in ``keras.ops``).

    Args:
        seed: seed of the tangents (None: drawn from numpy's global state).
        tangents: number K of tangents averaged per step.
        perturb: ``"weights"`` (Baydin et al.: tangents on every trainable variable)
            or ``"activities"`` (Ren et al.: tangents on every weighted layer's
            pre-activation, weight gradients formed locally).
        local: with ``perturb="activities"``, a local loss through a linear head at
            every point (see above).
        at: the points of ``local=True``: ``"stream"`` (default, also None),
            ``"residuals"``, ``"blocks"``, or layer names and block indices.
        optimizer: the heads' optimizer (``local=True``), a Keras name or config.
        learning_rate: the heads' learning rate (None: the optimizer's default).

    Attributes:
        step: steps taken, a variable on ``state`` (None before binding).
        perturbed: with ``perturb="activities"``, the layers whose pre-activations are
            perturbed (names, after binding).
        owners: with ``local=True``, dict from perturbed layer to the point whose local
            loss trains it (None: the model's loss).
        heads: with ``local=True``, dict from point to its head (after binding).

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="fg")    # doctest: +SKIP
        >>> model.compile(optimizer="sgd", loss="mse",
        ...               method={"name": "fg", "tangents": 8})       # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method={"name": "fg", "perturb": "activities"})  # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method={"name": "fg", "perturb": "activities",
        ...                       "local": True})                  # doctest: +SKIP
    """

    name = "forward_gradient"
    aliases = ("fg",)
    computes_gradients = True
    point_rule = None
    transport_rule = "none (forward-mode directional derivative)"

    def __init__(self, seed=None, tangents=1, perturb="weights", local=False, at=None,
                 optimizer="adam", learning_rate=None):
        if seed is not None and not sg.is_int(seed):
            raise ValueError(f"seed must be None or an integer; got {seed!r}.")
        super().__init__(seed=seed)
        if not sg.is_int(tangents) or tangents < 1:
            raise ValueError("tangents must be a positive integer (the number of random "
                             f"directions averaged per step); got {tangents!r}.")
        self.tangents = int(tangents)
        if perturb not in PERTURB:
            raise ValueError(f"perturb must be one of {', '.join(map(repr, PERTURB))} (what "
                             "the tangents perturb: every trainable variable, or every "
                             f"weighted layer's pre-activation); got {perturb!r}.")
        self.perturb = perturb
        self.local = sg.boolean("local", local)
        if self.local and perturb != "activities":
            raise ValueError(f"local=True perturbs activities under local losses; got "
                             f"perturb={perturb!r}. Pass perturb='activities' with it.")
        self.at = at if isinstance(at, str) and at in PLACEMENTS else sg.indices("at", at)
        self.optimizer, self.learning_rate = sg.optimizer_arguments(optimizer,
                                                                    learning_rate)
        self.perturbed = ()
        self.owners = {}
        self._rolled = None

    @property
    def step(self):
        """Steps taken, a variable on ``state`` (None before binding)."""
        return sg.state_attribute(self, "step")

    def build(self, graph):
        self._rolled = rolled_loop_error(graph)
        if self.perturb == "activities":
            self.perturbed = perturbed_layers(graph)
        if self.local:
            self._build_heads(graph)
            return
        with compat.init_scope():
            own_counters(self)

    def _build_heads(self, graph):
        from credit.graph import GraphError
        from credit.methods import local_losses

        points = list(hidden_points(graph, self.at, "at"))
        outputs = [p for p in points if graph.is_output(p)]
        if outputs:
            raise ValueError(f"at={self.at!r} names the model output {outputs[0]!r}; its "
                             "layers train on the model's own loss. Choose hidden blocks.")
        def index(name):
            block = graph.block_of(name)
            return None if block is None else block.index

        blocks = {p: index(p) for p in points}
        loose = [p for p, b in blocks.items() if b is None]
        if loose:
            raise GraphError(
                f"forward_gradient(local=True) assigns each layer to the loss of the "
                f"first point at or after its block; point {loose[0]!r} lies in no block. "
                "Name block outputs in at= (see credit.summary).")
        units = output_units(graph, "forward_gradient(local=True)")
        self._output_shape = tuple(graph.output_shapes[0])
        self._activation = local_losses._output_activation(graph)
        self.owners = {}
        for name in self.perturbed:
            block = index(name)
            later = [p for p in points if block is not None and blocks[p] >= block]
            self.owners[name] = later[0] if later else None
        with compat.init_scope():
            heads = [local_losses.LocalHead(graph.point_shape(p), units, name=f"head_{i}",
                                            seed=sg.synthesizer_seed(self, i))
                     for i, p in enumerate(points)]
            sg.own_synthesizers(self, heads)
        self.points = points

    @property
    def heads(self):
        """Dict from point to its head (``local=True``, after binding), else None."""
        layers = sg.state_attribute(self, "synthesizer_layers")
        return None if layers is None else dict(zip(self.points, layers))

    def transport(self, layer, kernels):
        return None

    def layer_rule(self, name):
        """The rule layer ``name`` trains with, for :func:`credit.summary`."""
        if self.perturb == "activities":
            where = ""
            if self.local:
                owner = self.owners.get(name)
                where = (f" of the local loss at {owner!r}" if owner is not None
                         else " of the model's loss")
            return ("x^T (d v_z): pre-activation tangent v_z times the per-example "
                    f"forward-mode directional derivative d{where}, through the layer's "
                    "own op")
        return "(dL/dθ · v) v: forward-mode directional derivative, no backward pass"

    def signals(self, trace):
        raise_no_signals(self)

    def update(self, trace, signals):
        return {}

    # -- the estimate ------------------------------------------------------------------

    def draw_tangents(self, variables, k, step=None):
        """The ``k``-th tangent of step ``step`` (default: the current one): one
        standard normal tensor per variable.

        Drawn by a counter-based hash of (seed, step, k, variable, entry) and the
        Box-Muller transform (:func:`standard_normal`): plain integer and float ops
        (``keras.ops``), which give the same numbers on every device, under XLA and on
        both backends (TensorFlow's stateless generators do not: their XLA kernels draw
        other numbers, and JAX's draw others again).
        """
        step = self.step if step is None else step
        seed = self.state.seed_variable
        out = []
        for i, v in enumerate(variables):
            key = mix(seed, step, k * len(variables) + i)
            out.append(ops.cast(standard_normal(tuple(v.shape), key), v.dtype))
        return out

    def directional_derivative(self, model, x, y, sample_weight, tangents, loss_fn=None,
                               training=True):
        """``(dL/dθ · v, loss, y_pred)`` in forward mode for tangents ``v`` (one per
        ``model.trainable_variables`` entry), by :func:`credit.backends.jvp`; ``L``
        carries the loss scale of a mixed-precision optimizer, as the gradients the
        optimizer unscales do."""
        from credit import model as engine

        if self._rolled and not backends.is_jax() and not tf.executing_eagerly():
            from credit.graph import GraphError
            raise GraphError(self._rolled)

        def forward():
            y_pred = model(x, training=training)
            loss = engine.compute_loss(model, x, y, y_pred, sample_weight, training,
                                       loss_fn)
            return engine._scale(model, loss), (loss, y_pred)

        _, jvp, (loss, y_pred) = backends.jvp(forward, model.trainable_variables,
                                              tangents, has_aux=True)
        return jvp, loss, y_pred

    def compute_gradients(self, model, x, y=None, sample_weight=None, *, loss_fn=None,
                          training=True):
        """The step's gradients ``mean_k (∇L · v_k) v_k``, aligned with
        ``model.trainable_variables``; advances the step counter. Called by
        :func:`credit.compute_gradients` in place of its backward pass (on JAX, by the
        step, with the model's variables mapped to the step's values)."""
        from credit import model as engine

        engine.bind(self, model, inputs=x)
        if self.perturb == "activities":
            return self._activity_gradients(model, x, y, sample_weight, loss_fn, training)
        variables = model.trainable_variables
        total = [ops.zeros(tuple(v.shape), v.dtype) for v in variables]
        loss = y_pred = None
        for k in range(self.tangents):
            v = self.draw_tangents(variables, k)
            jvp, loss_k, y_pred_k = self.directional_derivative(
                model, x, y, sample_weight, v, loss_fn, training)
            if k == 0:
                loss, y_pred = loss_k, y_pred_k
            total = [t + ops.cast(jvp, t.dtype) * d for t, d in zip(total, v)]
        gradients = [t / self.tangents for t in total]
        with backends.after(gradients):
            self.step.assign_add(1)
        return engine.Gradients(gradients, loss, y_pred, {})


    # -- activity perturbation (Ren et al.) --------------------------------------------

    def draw_activity_tangents(self, shapes, k, step=None):
        """The ``k``-th activity tangents of step ``step`` (default: the current one):
        one standard normal tensor per perturbed layer, of the ``shapes`` given (tuples,
        batch first, whose entries may be scalar tensors), from the same counter-based
        hash as :meth:`draw_tangents` (a stream of its own)."""
        step = self.step if step is None else step
        seed = self.state.seed_variable
        return [normal_like(shape, mix(seed, step, k, _ACTIVITY_STREAM, i))
                for i, shape in enumerate(shapes)]

    def activity_estimate(self, model, x, y, sample_weight, tangents=None, k=0,
                          loss_fn=None, training=True):
        """One activity-perturbed estimate: ``(gradients, loss, y_pred)``.

        ``tangents``: one per perturbed layer (``self.perturbed``), shaped like its
        pre-activation; default the ``k``-th draw of this step. With ``local=True`` the
        heads' exact gradients are left in ``self.head_gradients`` (``(gradient,
        variable)`` pairs) for the step to apply.

        One forward pass in forward mode (:func:`credit.backends.jvp`) carries the
        tangents to the logits (and the heads' logits); the loss's own derivative
        there comes from the loss alone, on cut copies of the logits
        (:func:`credit.backends.value_and_gradients`); each layer's weight gradient is
        the derivative of ``<z(x), ĝ_z>`` in its own weights, its input ``x`` held.
        """
        from credit import model as engine

        graph = self.graph
        layers = [graph.layers[name] for name in self.perturbed]
        batch = ops.shape(keras.tree.flatten(x)[0])[0]
        shapes = [(batch,) + tuple(graph.point_shape(name)) for name in self.perturbed]
        if tangents is None:
            tangents = self.draw_activity_tangents(shapes, k)
        zeros = [ops.zeros(shape, "float32") for shape in shapes]

        def forward(*zeros_):
            z, inputs = {}, {}
            with _Perturbed(layers, zeros_, z, inputs):
                if self.local:
                    # The forward pass cut at the points: the layers above a point read
                    # a stop-gradient copy, which carries no tangent.
                    cut = _Cut(self.plan)
                    with graph_lib.Hooks(self.plan.hooked, cut):
                        y_pred = model(x, training=training)
                else:
                    y_pred = model(x, training=training)
            logits = _output_logits(y_pred)
            loss, errors = _loss_and_errors(
                logits, lambda c: engine.compute_loss(
                    model, x, y, _with_logits(y_pred, c), sample_weight, training,
                    loss_fn), model)
            heads = (self._heads(model, cut.outputs, x, y, sample_weight, training)
                     if self.local else {})
            head_logits = [logit for logit, _, _ in heads.values()]
            aux = (loss, errors, y_pred, [z[id(layer)] for layer in layers],
                   [inputs[id(layer)] for layer in layers],
                   [(e, g) for _, e, g in heads.values()])
            return (logits, head_logits), aux

        (_, _), (dlogits, dheads), aux = backends.jvp(forward, tensors=zeros,
                                                       tensor_tangents=tangents,
                                                       has_aux=True)
        loss, errors, y_pred, pres, inputs, heads = aux
        d = {None: _directional(errors, dlogits, batch)}
        if self.local:
            self.head_gradients = []
            for p, dhead, (e, grads) in zip(self.heads, dheads, heads):
                d[p] = _directional([e], [dhead], batch)
                self.head_gradients += list(zip(grads,
                                                self.heads[p].trainable_variables))
        variables = model.trainable_variables
        where = {id(v): i for i, v in enumerate(variables)}
        gradients = [None] * len(variables)
        for name, layer, v, pre, x_in in zip(self.perturbed, layers, tangents, pres,
                                             inputs):
            d_layer = d[self.owners.get(name)]
            estimate = ops.reshape(d_layer, (batch,) + (1,) * (len(v.shape) - 1)) * v
            own = layer.trainable_weights
            local = _local_gradients(layer, x_in, ops.cast(estimate, pre.dtype))
            for w, g in zip(own, local):
                gradients[where[id(w)]] = ops.cast(g, w.dtype)
        return gradients, loss, y_pred

    def _heads(self, model, outputs, x, y, sample_weight, training):
        """``{point: (head logits, error at them, head weight gradients)}``: each head on
        its point's output (``outputs``; the head's logits carry the tangents), the
        local derivative of its loss at its logits, and its exact weight gradients (the
        model's compiled loss of the head's prediction, regularisation left out)."""
        from credit import model as engine

        if not compat.has_compiled_loss(model):
            raise ValueError(
                f"forward_gradient(local=True) applies the model's compiled loss to its "
                f"heads, and model {model.name!r} was compiled without one (a loss_fn "
                "given to compute_gradients does not reach the heads). Compile the "
                "model with a loss.")

        def head_loss(logits):
            shaped = ops.reshape(logits, (ops.shape(logits)[0],) + self._output_shape)
            prediction = shaped if self._activation is None else self._activation(shaped)
            loss = engine.compute_loss(model, x, y, prediction, sample_weight, training)
            return ops.cast(loss, "float32") - ops.stop_gradient(
                ops.cast(engine._regularization(model), "float32"))

        out = {}
        for p, head in self.heads.items():
            h = ops.cast(outputs[p], "float32")
            logits, _ = head(h)
            _, errors = _loss_and_errors([ops.stop_gradient(logits)],
                                         lambda c: head_loss(c[0]), model)
            cut = ops.stop_gradient(h)
            _, grads, _ = backends.value_and_gradients(
                lambda: head_loss(head(cut)[0]), head.trainable_variables)
            out[p] = (logits, errors[0], grads)
        return out

    def _activity_gradients(self, model, x, y, sample_weight, loss_fn, training):
        from credit import model as engine

        total = loss = y_pred = None
        heads = []
        for k in range(self.tangents):
            gradients, loss_k, y_pred_k = self.activity_estimate(
                model, x, y, sample_weight, k=k, loss_fn=loss_fn, training=training)
            if k == 0:
                total, loss, y_pred = gradients, loss_k, y_pred_k
                # The heads' gradients are exact: the same for every tangent.
                heads = [(g, v) for g, v in getattr(self, "head_gradients", [])
                         if g is not None] if self.local else []
            else:
                total = [t + g for t, g in zip(total, gradients)]
        gradients = [t / self.tangents for t in total]
        with backends.after(gradients):
            if heads:
                self.state.synthesizer_optimizer.apply([g for g, _ in heads],
                                                       [v for _, v in heads])
            self.step.assign_add(1)
        return engine.Gradients(gradients, loss, y_pred, {})


def _output_logits(y_pred):
    """The tensors each model output's loss is read at: its Keras logits (kept on a
    softmax/sigmoid output by TensorFlow's backend), else the output itself."""
    found = []
    for out in keras.tree.flatten(y_pred):
        if out is None or "float" not in keras.backend.standardize_dtype(out.dtype):
            continue
        logits = compat.keras_logits(out)
        found.append(out if logits is None else logits)
    return found


def _with_logits(y_pred, tensors):
    """``y_pred`` with each float output read at ``tensors`` (one per
    :func:`_output_logits` entry): an output with Keras logits becomes a cut copy that
    keeps ``tensors[j]`` as its logits, an output without them ``tensors[j]`` itself."""
    flat = keras.tree.flatten(y_pred)
    it = iter(tensors)
    out = []
    for t in flat:
        if t is None or "float" not in keras.backend.standardize_dtype(t.dtype):
            out.append(t)
            continue
        c = next(it)
        if compat.keras_logits(t) is not None:
            copy = ops.stop_gradient(t)
            compat.set_keras_logits(copy, c)
            c = copy
        mask = compat.get_mask(t)
        if mask is not None:
            compat.set_mask(c, mask)
        out.append(c)
    return keras.tree.pack_sequence_as(y_pred, out)


def _loss_and_errors(logits, loss_of, model):
    """``(loss, [dL/dlogits])``: the loss ``loss_of(copies)`` of cut copies of
    ``logits`` and its own, local derivative at them (the loss scale of a
    mixed-precision optimizer included in the derivative)."""
    from credit import model as engine

    cut = [ops.stop_gradient(t) for t in logits]

    def objective(*c):
        loss = loss_of(list(c))
        return engine._scale(model, loss), loss

    _, _, errors, loss = backends.value_and_gradients(objective, [], cut, has_aux=True)
    return loss, [ops.zeros_like(t) if e is None else e for t, e in zip(cut, errors)]


def _directional(errors, tangents, batch):
    """Per example, the loss's derivative at its logits dotted with their forward-mode
    tangents: ``d_i``, a ``(batch,)`` tensor."""
    d = ops.zeros((batch,), "float32")
    for e, t in zip(errors, tangents):
        d = d + ops.sum(ops.reshape(ops.cast(e, "float32") * ops.cast(t, "float32"),
                                    (batch, -1)), axis=1)
    return d


def _local_gradients(layer, x, estimate):
    """The gradient of ``<z(x), estimate>`` in the layer's own trainable weights, with
    ``z`` its pre-activation on ``x`` (its input in the step's pass, held): ``x^T
    estimate`` and ``sum estimate`` for a Dense layer, the convolutions' adjoints.

    ``z`` is the layer's own ``call`` with its activation replaced by the identity (not
    ``__call__``, which would add an activity penalty to the model's losses again),
    under the autocast of its dtype policy as in the step's pass.
    """
    def objective():
        original = layer.__dict__.get("activation", _MISSING)
        object.__setattr__(layer, "activation", keras.activations.linear)
        autocast = (compat.autocast_scope(layer.compute_dtype)
                    if layer.compute_dtype != layer.variable_dtype else None)
        try:
            if autocast is not None:
                with autocast:
                    z = layer.call(x)
            else:
                z = layer.call(x)
        finally:
            if original is _MISSING:
                layer.__dict__.pop("activation", None)
            else:
                object.__setattr__(layer, "activation", original)
        return ops.sum(z * ops.cast(estimate, z.dtype))

    _, grads, _ = backends.value_and_gradients(objective, layer.trainable_weights)
    return [ops.zeros(w.shape, w.dtype) if g is None else g
            for w, g in zip(layer.trainable_weights, grads)]


#: What forward gradients' tangents perturb.
PERTURB = ("weights", "activities")
_ACTIVITY_STREAM = 0xAC71
_PERTURBABLE = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D,
                keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Conv1DTranspose,
                keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
                keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
                keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def perturbed_layers(graph):
    """The layers whose pre-activations ``perturb="activities"`` perturbs: every layer
    with trainable weights, in the graph's order.

    Raises:
        GraphError: a layer with trainable weights that is not a Dense, EinsumDense or
            convolution layer (it has no pre-activation to perturb), a layer called
            more than once, or a trainable variable outside those layers, named.
    """
    from credit.graph import GraphError

    names = []
    covered = set()
    for name in graph.weighted:
        layer = graph.layers[name]
        if not layer.trainable_weights:
            continue
        if not isinstance(layer, _PERTURBABLE):
            raise GraphError(
                f"forward_gradient(perturb='activities') perturbs the pre-activation of "
                f"Dense, EinsumDense and convolution layers; layer {name!r} "
                f"({type(layer).__name__}) has trainable weights and no such "
                "pre-activation. Use perturb='weights', or freeze the layer "
                "(layer.trainable = False).")
        try:
            graph.point_shape(name)
        except Exception as err:  # a layer called several times, or inside a loop
            raise GraphError(
                f"forward_gradient(perturb='activities') needs each perturbed layer "
                f"called once per forward pass; layer {name!r}: {err}") from None
        names.append(name)
        covered.update(id(w) for w in layer.trainable_weights)
    missing = [v for v in graph.model.trainable_variables if id(v) not in covered]
    if missing:
        raise GraphError(
            f"forward_gradient(perturb='activities') forms each layer's weight gradient "
            f"from its own pre-activation; the trainable variable {missing[0].path!r} "
            "belongs to no Dense, EinsumDense or convolution layer. Use "
            "perturb='weights'.")
    return tuple(names)


class _Cut:
    """The hooks' recorder of a forward pass cut at the method's points (the JAX and
    TensorFlow twin of :func:`credit.model.record` with ``cut=True``, without a tape):
    each point's output is kept in ``outputs`` and the layers above read a
    stop-gradient copy of it."""

    def __init__(self, plan):
        self.plan = plan
        self.outputs = {}
        self.calls = {}

    def on_call(self, layer, original, args, kwargs):
        output = original(*args, **kwargs)
        key = id(layer)
        if key in self.plan.points:
            k = self.calls.get(key, 0)
            self.calls[key] = k + 1
            name = self.plan.points[key].get(k)
            if name is not None:
                self.outputs[name] = output
                output = ops.stop_gradient(output)
        return output

    def on_activation(self, layer, original, a):
        return original(a)

    def on_regularizer(self, layer, original, output):
        return original(output)


class _Perturbed:
    """Context manager: each layer's activation applied to ``z + zero``, with ``zero``
    a tensor the forward pass carries the activity tangent on; ``z`` (the
    pre-activation) is recorded in ``records`` and the layer's input in ``inputs``, by
    layer id. The layers' own ``call`` runs; only the instance's ``activation`` and
    ``call`` attributes are wrapped, and restored."""

    def __init__(self, layers, zeros, records, inputs):
        self.layers, self.zeros, self.records, self.inputs = layers, zeros, records, inputs
        self.saved = []

    def __enter__(self):
        for layer, zero in zip(self.layers, self.zeros):
            saved = {name: layer.__dict__.get(name, _MISSING)
                     for name in ("activation", "call")}
            self.saved.append((layer, saved))
            object.__setattr__(layer, "activation",
                               self._wrap(layer, layer.activation, zero))
            object.__setattr__(layer, "call", self._wrap_call(layer, layer.call))
        return self

    def _wrap_call(self, layer, original):
        inputs = self.inputs

        def call(*args, **kwargs):
            inputs[id(layer)] = args[0] if args else kwargs.get("inputs")
            return original(*args, **kwargs)

        return call

    def _wrap(self, layer, original, zero):
        records = self.records

        def activation(a):
            if id(layer) in records:
                from credit.graph import GraphError
                raise GraphError(
                    f"forward_gradient(perturb='activities'): layer {layer.name!r} was "
                    "called twice in one forward pass; a shared layer has one "
                    "pre-activation per call. Use perturb='weights'.")
            records[id(layer)] = a
            return original(a + ops.cast(ops.reshape(zero, ops.shape(a)), a.dtype))

        return activation

    def __exit__(self, *exc):
        for layer, saved in reversed(self.saved):
            for name, value in saved.items():
                if value is _MISSING:
                    layer.__dict__.pop(name, None)
                else:
                    object.__setattr__(layer, name, value)
        return False


_MISSING = object()


_GOLDEN = 0x9E3779B9


def _u32(value):
    """A uint32 constant."""
    return ops.convert_to_tensor(np.asarray(value, dtype=np.uint32))


def _as_u32(part):
    """An integer (Python, or an int32/int64 tensor) as uint32: its value modulo 2**32."""
    if isinstance(part, (int, np.integer)):
        return _u32(int(part) % 2**32)
    part = ops.convert_to_tensor(part)
    if keras.backend.standardize_dtype(part.dtype) == "int64":
        part = ops.mod(part, ops.convert_to_tensor(2**32, "int64"))
    return ops.cast(part, "uint32")  # int32 (JAX): the same bits


def hash32(x):
    """A 32-bit integer hash (the finaliser of "lowbias32"), elementwise on uint32.

    Plain integer ops (``keras.ops``), so the same numbers on every backend and device.
    """
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(0x846CA68B))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def mix(*parts):
    """A uint32 key from integers (tensors or Python ints), each folded in by a hash."""
    key = _u32(_GOLDEN)
    for part in parts:
        key = hash32(ops.add(ops.bitwise_xor(key, _as_u32(part)), _u32(_GOLDEN)))
    return key


def standard_normal(shape, key):
    """Standard normal float32 numbers of ``shape``, a function of ``key`` (uint32).

    Two uniforms per entry from the hash of (entry, key) and of (entry, hash(key)),
    24 bits each, in (0, 1); then Box-Muller. The same numbers on TensorFlow and JAX
    (up to the last bit of ``log`` and ``cos``).

    Example:
        >>> v = standard_normal((3, 4), mix(7, 0))                 # doctest: +SKIP
    """
    n = int(np.prod(shape)) if shape else 1
    return ops.reshape(_box_muller(n, key), shape)


def normal_like(shape, key):
    """As :func:`standard_normal`, for a ``shape`` whose entries may be known only when
    the step runs (e.g. the batch size first): the same numbers for equal sizes."""
    n = 1
    for d in shape:
        n = n * d
    return ops.reshape(_box_muller(n, key), shape)


def _box_muller(n, key):
    counter = ops.cast(ops.arange(n, dtype="int32"), "uint32")
    key2 = hash32(ops.add(key, _u32(_GOLDEN)))

    def uniform(k):
        bits = hash32(ops.bitwise_xor(hash32(ops.add(counter, k)), k))
        return (ops.cast(ops.right_shift(bits, _u32(8)), "float32") + 0.5) / 2.0**24

    u1, u2 = uniform(key), uniform(key2)
    return ops.sqrt(-2.0 * ops.log(u1)) * ops.cos(2.0 * np.pi * u2)


def own_counters(method):
    """Put a step counter and a seed variable on ``method.state`` (saved with the model).

    Both are int64 scalars (int32 on JAX: :func:`credit.backends.counter_dtype`) with ``only_first_replica`` aggregation, so that every
    replica under ``tf.distribute`` reads the same values.
    """
    state = method.state
    base = int(method.seed_for(0xF0).integers(0, 2**31 - 1))
    dtype = backends.counter_dtype()
    state.step = state.add_weight(shape=(), dtype=dtype, name="step", initializer="zeros",
                                  trainable=False, aggregation="only_first_replica")
    state.seed_variable = state.add_weight(
        shape=(), dtype=dtype, name="seed", trainable=False,
        initializer=keras.initializers.Constant(base), aggregation="only_first_replica")


def rolled_loop_error(graph):
    """The refusal of a recurrent layer that runs its steps in a ``tf.while_loop``, or
    None.

    In a traced step TensorFlow's ``ForwardAccumulator`` cannot follow a variable read
    inside a while loop (it fails with "Tried to take gradients ... of a variable without
    handle data"), so a rolled RNN is refused when the step is traced, naming the layer;
    eagerly (``run_eagerly=True``) the loop runs in Python and goes through, and so does
    an unrolled layer (``unroll=True``).
    """
    for name, layer in graph.layers.items():
        inner = [layer.forward_layer, layer.backward_layer] if isinstance(
            layer, keras.layers.Bidirectional) else [layer]
        for rnn in inner:
            if isinstance(rnn, keras.layers.RNN) and not rnn.unroll:
                return (f"forward_gradient computes its directional derivative in forward "
                        f"mode, which TensorFlow cannot carry through the while loop of "
                        f"the recurrent layer {name!r} ({type(rnn).__name__}, "
                        f"unroll=False) in a traced step. Build it with unroll=True (the "
                        f"steps run in Python; fine for short sequences), train with "
                        f"run_eagerly=True, or use another method.")
    return None


def raise_no_signals(method):
    """The error of a gradient-computing method asked for point signals."""
    raise RuntimeError(
        f"{type(method).__name__} has no backward pass: it computes its gradients in "
        "compute_gradients, which credit.compute_gradients calls for a method with "
        "computes_gradients = True. Call credit.compute_gradients (or fit a credit "
        "model) instead of the signal path.")

