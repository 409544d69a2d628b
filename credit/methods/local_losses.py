"""Local losses: each block learns from a loss of its own, through an auxiliary head."""

import keras
import numpy as np
from keras import ops

from credit import _keras_compat as compat
from credit import backends
from credit.methods import _synthesizers as sg
from credit.registry import register
from credit.signal import PLACEMENTS, ErrorSignal, output_units

LOSSES = ("pred", "sim", "predsim")
HEADS = ("linear", "mlp", "dgl")
_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_POOL = {1: keras.layers.AveragePooling1D, 2: keras.layers.AveragePooling2D,
         3: keras.layers.AveragePooling3D}
#: The arguments before the sizing options (see ``LocalLosses.from_config``).
_SAVED_BEFORE_SIZING = ("seed", "loss", "head", "at", "beta", "hidden_units",
                        "max_features", "optimizer", "learning_rate")


class LocalHead(keras.layers.Layer):
    """An auxiliary head on a block output ``h``: a prediction and/or similarity features.

    Prediction (``loss`` "pred" or "predsim"): ``"linear"`` is one Dense layer to the
    model's output units on the flattened ``h``; on a spatial ``h`` (channels last) it
    is average-pooled first, with the pool doubled axis by axis until at most
    ``max_features`` values remain (as Nøkland & Eidnes 2019 size their decoder).
    ``"mlp"`` adds hidden ReLU Dense layers; ``"dgl"`` (Belilovsky et al.'s auxiliary
    net for convolutional blocks) a 3x3 ReLU convolution with ``h``'s channels (on a
    map with more channels than ``width``: a 1x1 one down to ``width`` channels), then
    an average pool to at most 2 per spatial axis. Every layer starts from seeded Glorot
    weights. (Nøkland & Eidnes zero their decoder's weights, which makes the first
    step's local signals zero; here every block learns from the first step.)

    Similarity (``loss`` "sim" or "predsim"): the features whose cosine similarity
    matrix is matched to the labels': ``h`` itself on a dense block; on a spatial block
    a 3x3 convolution of ``h`` (no bias; sized as the ``"dgl"`` one), then the
    standard deviation over the spatial axes per channel (when there are more than 3
    channels and more than one position; else the flattened map), as in the authors'
    code.

    Args:
        shape: ``h``'s shape without the batch axis.
        units: values the prediction has per example (the model output's size).
        kind: ``"linear"``, ``"mlp"`` or ``"dgl"``.
        predict, similarity: which parts to build.
        hidden_units: widths of an ``"mlp"`` head's hidden layers.
        max_features: the pooling bound of spatial blocks.
        seed: seed of the random initial weights.
        width: the bound on the channels of the head's convolutions (None: none).
    """

    def __init__(self, shape, units, kind="linear", predict=True, similarity=False,
                 hidden_units=(), max_features=4096, seed=None, width=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.shape = tuple(int(s) for s in shape)
        rng = np.random.default_rng(seed)

        def init():
            return keras.initializers.GlorotUniform(seed=int(rng.integers(0, 2**31 - 1)))

        # The sublayers take the head's dtype (float32 by default), not the global
        # policy: under mixed precision the heads compute in float32, as synthesizers do.
        rank = len(self.shape) - 1
        self.spatial = 1 <= rank <= 3
        channels = self.shape[-1]
        self.predictor, self.similar = [], []
        self.similarity = bool(similarity)
        shape = (None,) + self.shape
        filters, kernel = _conv_size(channels, width)
        if predict:
            if self.spatial and kind == "dgl":
                self.predictor.append(_CONV[rank](
                    filters, kernel, padding="same", activation="relu",
                    kernel_initializer=init(), dtype=self.dtype_policy, name="aux_conv"))
                pool = tuple(max(1, -(-d // 2)) for d in self.shape[:-1])
                self.predictor.append(_POOL[rank](pool, padding="same",
                                                  dtype=self.dtype_policy, name="aux_pool"))
            elif self.spatial:
                pool = _pool_size(self.shape, max_features)
                if any(p > 1 for p in pool):
                    self.predictor.append(_POOL[rank](pool, padding="same",
                                                      dtype=self.dtype_policy, name="pool"))
            self.predictor.append(keras.layers.Flatten(dtype=self.dtype_policy,
                                                       name="flatten"))
            if kind == "mlp":
                self.predictor += [
                    keras.layers.Dense(u, activation="relu", name=f"dense_{i}",
                                       kernel_initializer=init(), dtype=self.dtype_policy)
                    for i, u in enumerate(hidden_units)]
            self.predictor.append(keras.layers.Dense(
                units, kernel_initializer=init(), dtype=self.dtype_policy, name="decoder"))
            _build(self.predictor, shape)
        if similarity and self.spatial:
            self.similar.append(_CONV[rank](filters, kernel, padding="same", use_bias=False,
                                            kernel_initializer=init(),
                                            dtype=self.dtype_policy, name="sim_conv"))
            _build(self.similar, shape)
        self.built = True

    def call(self, h):
        """``(prediction or None, similarity features or None)``; the prediction is the
        decoder's linear output, ``(batch, units)``."""
        prediction = features = None
        if self.predictor:
            prediction = h
            for layer in self.predictor:
                prediction = layer(prediction)
        if self.similarity:
            features = h
            for layer in self.similar:
                features = layer(features)
            features = _similarity_features(features)
        return prediction, features


def _conv_size(channels, width):
    """``(filters, kernel size)`` of a head's convolution on a map of ``channels``: a
    3x3 one at the block's channels, or, on a map wider than ``width``, a 1x1 one down
    to ``width`` channels (DGL's auxiliary nets for ImageNet use 1x1 convolutions)."""
    if width is not None and channels > width:
        return width, 1
    return channels, 3


def head_parameters(shape, units, kind="linear", predict=True, similarity=False,
                    hidden_units=(), max_features=4096, width=None):
    """The number of weights of a :class:`LocalHead` of these arguments, computed from
    the shapes without building it."""
    shape = tuple(int(s) for s in shape)
    rank = len(shape) - 1
    spatial = 1 <= rank <= 3
    channels = shape[-1]
    filters, kernel = _conv_size(channels, width)
    taps = kernel ** rank if spatial else 0
    total = 0
    if predict:
        if spatial and kind == "dgl":
            total += taps * channels * filters + filters
            features = filters * int(np.prod([-(-d // max(1, -(-d // 2)))
                                              for d in shape[:-1]]))
        elif spatial:
            pool = _pool_size(shape, max_features)
            features = channels * int(np.prod([-(-d // p)
                                               for d, p in zip(shape[:-1], pool)]))
        else:
            features = int(np.prod(shape))
        for u in (hidden_units if kind == "mlp" else ()):
            total += features * u + u
            features = u
        total += features * units + units
    if similarity and spatial:
        total += taps * channels * filters
    return total


def _build(layers, shape):
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)


def _pool_size(shape, max_features):
    """Average-pool sizes that bring a spatial map down to ``max_features`` values,
    doubling one axis at a time (Nøkland & Eidnes's rule for their decoder's input)."""
    dims, channels = list(shape[:-1]), shape[-1]
    pool = [1] * len(dims)

    def features():
        return channels * int(np.prod([-(-d // p) for d, p in zip(dims, pool)]))

    axis = 0
    while features() > max_features and any(p < d for p, d in zip(pool, dims)):
        if pool[axis] < dims[axis]:
            pool[axis] *= 2
        axis = (axis + 1) % len(dims)
    return tuple(min(p, d) for p, d in zip(pool, dims))


def _similarity_features(h):
    """``h`` as one row per example for the similarity matrix (see :class:`LocalHead`)."""
    if len(h.shape) > 2 and h.shape[-1] > 3 and int(np.prod(h.shape[1:-1])) > 1:
        flat = ops.reshape(h, (ops.shape(h)[0], -1, h.shape[-1]))
        return ops.std(flat, axis=1)
    return ops.reshape(h, (ops.shape(h)[0], -1))


def similarity_matrix(x):
    """The adjusted cosine similarity of the rows of ``x``: each row centred on its own
    mean and scaled to unit norm (``1e-8`` added to the norm), ``R = x_n x_n^T``,
    clipped to [-1, 1]."""
    xc = x - ops.mean(x, axis=1, keepdims=True)
    xn = xc / (1e-8 + ops.sqrt(ops.sum(ops.square(xc), axis=1, keepdims=True)))
    return ops.clip(ops.matmul(xn, ops.transpose(xn)), -1.0, 1.0)


@register
class LocalLosses(ErrorSignal):
    """Local losses: supervised local error signals (Nøkland & Eidnes 2019, "Training
    Neural Networks with Local Error Signals", ICML; Belilovsky, Eickenberg & Oyallon
    2020, "Decoupled Greedy Learning of CNNs", ICML).

    Rule: a feedback point at every hidden block output ``h_p`` (on a residual model,
    where the stream leaves each residual block; or at ``at=``), each
    with an auxiliary head ``A_p``. The signal at the point is the gradient of a local
    loss through the head, ``delta_p = d L_p(A_p(h_p), y) / d h_p``; the backward pass
    is cut at every point, so nothing crosses below a point (each block learns from its
    own loss only), and the output block trains on the model's own loss.

    Local losses (``loss``):

    - ``"pred"``: the model's compiled loss on the head's prediction (the head ends in
      the model output's own softmax or sigmoid, if it has one);
    - ``"sim"``: similarity matching, ``mean((S(f(h_p)) - S(onehot(y)))^2)``, with ``S``
      the adjusted cosine similarity matrix of the batch (:func:`similarity_matrix`);
    - ``"predsim"``: ``(1 - beta) pred + beta sim``, ``beta = 0.99`` by default as in
      the authors' code (anokland/local-loss, ``--beta``).

    The heads train too, on the same local losses, with their own optimizer; they and
    their optimizer live on ``method.state`` and are saved with the model.

    Args:
        seed: seed of the heads' initial weights (None: from numpy's global state).
        loss: ``"pred"``, ``"sim"`` or ``"predsim"``.
        head: ``"linear"``, ``"mlp"`` or ``"dgl"`` (see :class:`LocalHead`).
        at: layer names or block indices of the points, or ``"stream"`` (one where
            the residual stream leaves each residual block, one at every other hidden
            block), ``"residuals"`` (after every residual merge), ``"blocks"`` (every
            hidden block) or ``"stages"`` (one where each stage begins: the first
            stream point after the spatial size shrinks, at most ``stage_points``). None (the default):
            ``"stream"`` on a model with at most ``max_points`` stream points,
            ``"stages"`` on a larger one.
        beta: the weight of the similarity loss in ``"predsim"``.
        hidden_units: widths of an ``"mlp"`` head's hidden layers.
        max_features: spatial block outputs are average-pooled to at most this many
            values before a ``"linear"``/``"mlp"`` head (4096, the authors' default).
        optimizer: the heads' optimizer, a Keras name or config dict.
        learning_rate: the heads' learning rate (None: the optimizer's default).
        width: the bound on the channels of the heads' convolutions (``"dgl"`` heads
            and the similarity loss's): on a block with more channels, a 1x1
            convolution down to ``width`` channels replaces the 3x3 one at the block's
            channels. None: no bound.
        max_points: with ``at=None``, a model with at most this many stream points
            gets a head at each; a larger one gets them where its stages begin
            (``stage_points``). None: every stream point, whatever the model's size.
        stage_points: the most stage starts that get a head (``at="stages"``, or
            ``at=None`` on a model with more than ``max_points`` stream points),
            evenly spaced among them (3: Decoupled Greedy Learning splits VGGs on
            ImageNet into K=4 groups, 3 auxiliary nets, and ResNet-152 into K=2).
            None: ``max_points`` evenly spaced stream points instead (the placement
            of the version before this option).
        max_parameters: the most weights the heads may have in all, checked from the
            shapes before anything is built (None: twice the model's parameters, and
            at least 10 million).

    A config saved before the sizing options existed (every other key present, no
    ``width``) loads with the sizes it was saved with: ``width=None``,
    ``max_points=None``, no budget; one saved with ``max_points`` but before
    ``stage_points`` loads with ``stage_points=None``.

    Attributes:
        heads: dict from point (layer name) to its :class:`LocalHead`, after binding.
        optimizer_instance: the heads' Keras optimizer, after binding.

    Logs:
        ``local_loss``: the mean of the heads' local losses in the step.

    Example:
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method="local_losses")                      # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method={"name": "dgl", "head": "dgl"})     # doctest: +SKIP
    """

    name = "local_losses"
    aliases = ("dgl", "local")
    log_names = ("local_loss",)
    point_rule = "d L_p(A_p(h_p), y) / d h_p (local loss through an auxiliary head)"

    def __init__(self, seed=None, loss="pred", head="linear", at=None, beta=0.99,
                 hidden_units=(1024,), max_features=4096, optimizer="adam",
                 learning_rate=None, width=128, max_points=16, max_parameters=None,
                 stage_points=sg.STAGE_POINTS):
        if seed is not None and not sg.is_int(seed):
            raise ValueError(f"seed must be None or an integer; got {seed!r}.")
        super().__init__(seed=seed)
        sg.check_sizing(self, width=width, max_points=max_points,
                        max_parameters=max_parameters, stage_points=stage_points)
        self.loss = sg.choice("loss", loss, LOSSES)
        self.head = sg.choice("head", head, HEADS)
        # "stream", "residuals" and "blocks" name a placement (see credit.signal.hidden_points).
        self.at = at if isinstance(at, str) and at in PLACEMENTS + ("stages",) \
            else sg.indices("at", at)
        if not sg.is_real(beta) or not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta must be a number in [0, 1] (the weight of the "
                             f"similarity loss in 'predsim'); got {beta!r}.")
        self.beta = float(beta)
        self.hidden_units = sg.sizes("hidden_units", hidden_units)
        if not sg.is_int(max_features) or max_features < 1:
            raise ValueError(f"max_features must be a positive integer; got "
                             f"{max_features!r}.")
        self.max_features = int(max_features)
        self.optimizer, self.learning_rate = sg.optimizer_arguments(optimizer,
                                                                    learning_rate)
        with compat.init_scope():
            sg.make_optimizer(self.optimizer, self.learning_rate)  # fail now
        self._pending = None
        self.point_placement = None

    @classmethod
    def from_config(cls, config):
        """Build a method from :meth:`get_config`'s output; a config saved before the
        sizing options existed loads with the sizes it had (see the class)."""
        return super().from_config(sg.legacy_config(config, _SAVED_BEFORE_SIZING))

    # -- state -----------------------------------------------------------------------

    @property
    def heads(self):
        """Dict from point (layer name) to its head, read from ``state`` (None before
        binding)."""
        layers = sg.state_attribute(self, "synthesizer_layers")
        return None if layers is None else dict(zip(self.points, layers))

    @property
    def optimizer_instance(self):
        """The heads' Keras optimizer, on ``state`` (None before binding)."""
        return sg.state_attribute(self, "synthesizer_optimizer")

    def point_parameters(self):
        """Dict from point to the number of weights of its head (after binding)."""
        return sg.point_parameters(self, self.points)

    def build(self, graph):
        points, placement = sg.place_points(graph, self.at, self.max_points,
                                            self.stage_points)
        outputs = [p for p in points if graph.is_output(p)]
        if outputs:
            raise ValueError(f"at={list(self.at)!r} names the model output {outputs[0]!r}; "
                             "the output block trains on the model's own loss. Choose "
                             "hidden blocks.")
        units = output_units(graph, "local_losses")
        self._output_shape = tuple(graph.output_shapes[0])
        self._activation = _output_activation(graph)
        predict = self.loss in ("pred", "predsim")
        similarity = self.loss in ("sim", "predsim")
        kwargs = dict(kind=self.head, predict=predict, similarity=similarity,
                      hidden_units=self.hidden_units, max_features=self.max_features,
                      width=self.width)
        # Sized from the shapes before any weight exists (a clear error, not an
        # out-of-memory kill).
        sg.check_budget(self, graph, {p: head_parameters(graph.point_shape(p), units,
                                                         **kwargs) for p in points},
                        "heads")
        with compat.init_scope():
            heads = [LocalHead(graph.point_shape(p), units, name=f"head_{i}",
                               seed=sg.synthesizer_seed(self, i), **kwargs)
                     for i, p in enumerate(points)]
            sg.own_synthesizers(self, heads)
        self.points = list(points)
        self.point_placement = placement

    def transport(self, layer, kernels):
        return None

    # -- the local losses ----------------------------------------------------------------

    def prediction(self, head_output):
        """The head's decoder output in the model output's form: reshaped to it, through
        its final softmax or sigmoid."""
        out = ops.reshape(head_output, (ops.shape(head_output)[0],) + self._output_shape)
        return out if self._activation is None else self._activation(out)

    def local_loss(self, point, h, trace):
        """The local loss of ``point`` given its output ``h`` (float32), a scalar.

        Under ``tf.distribute`` it is divided by the number of replicas (the compiled
        loss already is), as the model's loss: the replicas' gradients then sum to the
        gradient of the global mean.
        """
        from credit import model as engine

        prediction, features = self.heads[point](h)
        loss = 0.0
        if self.loss in ("pred", "predsim"):
            model = trace.graph.model
            if not compat.has_compiled_loss(model):
                raise ValueError(
                    f"local_losses with loss={self.loss!r} applies the model's compiled "
                    f"loss to its heads, and model {model.name!r} was compiled without "
                    "one (a loss_fn given to compute_gradients does not reach the heads). "
                    "Compile the model with a loss, or use loss='sim'.")
            pred = engine.compute_loss(model, trace.x, trace.y,
                                       self.prediction(prediction),
                                       trace.sample_weight, trace.training)
            # The compiled loss adds the model's regularisation, a constant here.
            pred = ops.cast(pred, "float32") - ops.stop_gradient(_regularization(model))
            loss = pred if self.loss == "pred" else (1.0 - self.beta) * pred
        if self.loss in ("sim", "predsim"):
            labels = ops.cast(trace.labels(), "float32")
            labels = ops.reshape(labels, (ops.shape(labels)[0], -1))
            sim = ops.mean(ops.square(similarity_matrix(features)
                                      - similarity_matrix(labels)))
            sim = sim / ops.cast(sg.replicas(), sim.dtype)
            loss = sim if self.loss == "sim" else loss + self.beta * sim
        return loss

    def signals(self, trace):
        heads = self.heads
        inputs = [ops.stop_gradient(trace.outputs[p]) for p in self.points]

        def total_loss(*hs):
            losses = [self.local_loss(p, ops.cast(h, "float32"), trace)
                      for p, h in zip(self.points, hs)]
            total = losses[0]
            for loss in losses[1:]:
                total = total + loss
            return total

        variables = [v for p in self.points for v in heads[p].trainable_variables]
        # One gradient for the signals (at the points' outputs) and the heads' weights.
        total, head_grads, point_grads = backends.value_and_gradients(
            total_loss, variables, inputs)
        deltas = {p: ops.zeros_like(h) if g is None else ops.cast(g, h.dtype)
                  for p, h, g in zip(self.points, inputs, point_grads)}
        self._pending = {"trace": trace, "variables": variables,
                         "gradients": head_grads, "loss": total / len(self.points)}
        return deltas

    def update(self, trace, signals):
        pending = sg.take_pending(self, trace)
        pairs = [(g, v) for g, v in zip(pending["gradients"], pending["variables"])
                 if g is not None]
        if pairs:
            self.state.synthesizer_optimizer.apply([g for g, _ in pairs],
                                                   [v for _, v in pairs])
        self.state.step.assign_add(1)
        return {"local_loss": pending["loss"]}


def _regularization(model):
    """The model's regularisation losses as the compiled loss adds them (float32)."""
    total = ops.zeros((), "float32")
    for loss in model.losses:
        total = total + ops.cast(compat.aggregate_additional_loss(model, loss), "float32")
    return total


def _output_activation(graph):
    """The model output's final softmax or sigmoid as a function (None if it has none).

    Read where the graph found it: a Softmax or Activation layer, a layer's activation,
    or an op (``ops.softmax`` at the end of a layer's call or between layers), whose
    name the graph keeps in ``output_squashing``.
    """
    kind, name = graph.output_logits[0] if graph.output_logits else ("output", None)
    if kind == "output":
        return None
    if kind in ("input", "activation"):
        layer = graph.layers[name]
        if isinstance(layer, keras.layers.Softmax):
            axis = layer.axis
            return lambda t: keras.activations.softmax(t, axis=axis)
        return keras.activations.get(layer.activation)
    # An op: the squashing's name ("softmax", "sigmoid") is all there is to apply.
    squashing = graph.output_squashing[0] if graph.output_squashing else None
    return None if squashing is None else keras.activations.get(squashing)
