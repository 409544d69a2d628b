"""Forward-Forward: layer-local goodness objectives on positive and negative data."""

import numpy as np
from keras import ops

from credit import _keras_compat as compat
from credit import backends
from credit.graph import GraphError
from credit.methods import _synthesizers as sg
from credit.methods.forward_gradient import (_u32, hash32, mix, own_counters,
                                             raise_no_signals)
from credit.methods.pepita import dense_chain
from credit.registry import register
from credit.signal import ErrorSignal, output_units

NEGATIVES = ("random", "hardest")
NORMALIZATIONS = ("rms", "l2")
HEADS = ("model", "neutral")
#: Added to the norm before dividing (as the reference implementations do).
EPSILON = 1e-8


@register
class ForwardForward(ErrorSignal):
    """Forward-Forward (Hinton 2022, "The Forward-Forward Algorithm: Some Preliminary
    Investigations", arXiv:2212.13345), the supervised variant with the label in the
    input.

    Rule, on a chain of Dense blocks (hidden blocks ``l = 1 .. L-1``, output block L):

    - **positive and negative data**: ``x⁺`` is ``x`` (flattened) with its first
      ``n_classes`` features replaced by the one-hot true label, ``x⁻`` the same with a
      wrong label: uniformly random among the wrong ones (``negatives="random"``), or
      the wrong label of highest goodness under the current weights
      (``negatives="hardest"``, one extra pass per class);
    - **forward passes**: ``h_0 = x``, ``h_l = f_l(n(h_{l-1}))`` where ``f_l`` runs
      block l's own Keras layers (its Dense layer and the activation after it) and
      ``n`` length-normalises each example (no learned parameters): ``n(h) = h / (|h|
      / sqrt(d) + eps)`` (``normalization="rms"``, unit root mean square) or ``h /
      (|h| + eps)`` (``"l2"``, unit length);
    - **goodness** of a hidden layer: ``g_l = sum_j h_{l,j}^2``;
    - **per-layer loss**: ``L_l = mean over the batch of softplus(θ_l - g_l⁺) +
      softplus(g_l⁻ - θ_l)``, with ``θ_l`` the threshold (default: half the
      layer's number of units);
    - **no gradient crosses layers**: each block's input is behind a stop-gradient, so
      hidden layer l's weights get ``dL_l/dW_l`` and nothing else;
    - **output layer** (the softmax head): trained on the model's compiled loss with
      the gradient stopped at its input, on the model's own forward pass of ``x`` as
      given (``head="model"``) or on the normalised last hidden layer of a pass with
      the neutral label ``1/n_classes`` in every label feature (``head="neutral"``,
      the paper's alternative to prediction by goodness).

    What could be checked, and where: the paper's abstract gives the goodness as the
    sum of squared activities; descriptions of it (not its full text, which was not
    at hand) give the logistic ``P(positive) = sigmoid(g - θ)``, the one-hot label
    written over MNIST's first 10 pixels, the normalisation by the length of the
    activity vector between layers and the softmax head on the normalised activities
    of all hidden layers but the first. Two public implementations were read:
    loeweX/Forward-Forward (``src/ff_model.py``, ``src/ff_mnist.py``) uses this
    goodness with ``θ`` = the number of units and binary cross-entropy with logits
    ``g - θ`` averaged over the 2 N positive and negative examples (so its loss is
    half of ``L_l`` here), normalises every layer's input (the first's too) to unit
    root mean square, draws the wrong label uniformly among the others and gives the
    neutral sample ``1/n_classes`` per label feature; mpezeshki/pytorch_forward_forward
    (``main.py``) uses the mean of the squares with ``θ = 2`` and this softplus form,
    normalises to unit length and writes ``max(x)`` as the label value. Differences
    here: a Dense chain's output layer reads the last hidden layer only (not all but
    the first); ``"hardest"`` takes the wrong label of highest goodness,
    deterministically, an option in the spirit of the paper's hard negatives whose
    exact recipe could not be checked.

    What ``fit`` and ``model.evaluate`` report: the loss and metrics of the output
    layer on the pass it trains on. With ``head="model"`` (default) that is the
    model's own forward pass, the one ``model.evaluate`` and ``model.predict`` run, so
    the training metrics and ``evaluate`` mean the same thing: a softmax head, trained
    alongside, on the hidden layers that FF trains, read in the model's plain pass (no
    normalisation between layers unless the model has it, and the data's own values
    in the label features). With ``head="neutral"`` the training metrics are the
    paper's softmax head on the neutral pass, which ``model.evaluate`` does not run:
    use :meth:`predict` (``by="softmax"``). Prediction by goodness, the paper's main
    classifier: :meth:`predict` (``by="goodness"``). ``fit`` also logs ``ff_loss``,
    the sum of the per-layer losses. Sample weights weigh each example's terms in
    the hidden layers' losses (and the head's loss, as Keras does); regularisation
    terms do not enter the hidden layers' losses.

    Supported models: chains of Dense blocks with a classification output of
    ``n_classes >= 2`` units, at least one hidden block and at least ``n_classes``
    input features; a model with another layer that has weights, a layer that draws
    random numbers in training, or a branch gets a GraphError naming the first layer
    that does not fit.

    Args:
        seed: seed of the random wrong labels (None: drawn from numpy's global state).
        threshold: ``θ``, the goodness threshold of every hidden layer; None (default):
            half of each layer's number of units. loeweX's code takes the number of
            units, which a tanh layer never reaches (each ``h_j^2 < 1``); with
            ``"rms"`` inputs and Glorot initialisation a ReLU or tanh layer starts
            near ``0.4``-``0.5`` of its units, so half is reachable for both (on sklearn
            digits, 64-64-64-10, Adam 3e-3, 10 epochs: accuracy by goodness 0.94 with ReLU
            and 0.95 with tanh at half, 0.92 and 0.05 at the full number of units).
            With ``"l2"`` inputs a unit's pre-activation starts ``sqrt(inputs)`` times
            smaller, so the goodness starts far below it: give a threshold that fits
            (``threshold=2.0`` reached 0.80 on the digits run above; mpezeshki's code
            asks for a mean square of 2, ``2 x units`` here, over 1000 full-batch
            epochs).
        negatives: ``"random"`` or ``"hardest"``.
        normalization: ``"rms"`` (default, as loeweX's code) or ``"l2"`` (the paper's
            division by the length). They differ by the constant ``sqrt(d)``, which
            decides where the goodness starts: with unit-RMS inputs and Keras's Glorot
            initialisation the pre-activations are of order one from the first step.
        head: ``"model"`` or ``"neutral"``.

    Attributes:
        step: steps taken, a variable on ``state`` (None before binding); the wrong
            labels of a step are a function of the seed and the step.
        n_classes: the number of classes (the output's units), after binding.

    Example:
        >>> model = credit.Sequential([keras.Input((64,)),        # doctest: +SKIP
        ...     keras.layers.Dense(128, activation="relu"),
        ...     keras.layers.Dense(128, activation="relu"),
        ...     keras.layers.Dense(10, activation="softmax")])
        >>> model.compile("adam", "sparse_categorical_crossentropy",
        ...               metrics=["accuracy"], method="ff")
        >>> model.fit(x, y, epochs=10)
        >>> model.method.predict(x_test)      # by goodness over the labels
    """

    name = "forward_forward"
    aliases = ("ff",)
    computes_gradients = True
    dense_chains_only = True
    log_names = ("ff_loss",)
    point_rule = "softplus(θ - g⁺) + softplus(g⁻ - θ), g = sum of squared activities"

    def __init__(self, seed=None, threshold=None, negatives="random", normalization="rms",
                 head="model"):
        if seed is not None and not sg.is_int(seed):
            raise ValueError(f"seed must be None or an integer; got {seed!r}.")
        super().__init__(seed=seed)
        if threshold is not None and (not sg.is_real(threshold)
                                      or not np.isfinite(threshold)):
            raise ValueError(
                f"threshold must be None (half of each layer's units) or a finite "
                f"number, the goodness that separates positive from negative data; got "
                f"{threshold!r} of type {type(threshold).__name__}. Pass e.g. "
                "threshold=2.0.")
        for arg, value, valid in (("negatives", negatives, NEGATIVES),
                                  ("normalization", normalization, NORMALIZATIONS),
                                  ("head", head, HEADS)):
            if value not in valid:
                raise ValueError(f"{arg} must be one of {', '.join(map(repr, valid))}; "
                                 f"got {value!r}.")
        self.threshold = None if threshold is None else float(threshold)
        self.negatives = negatives
        self.normalization = normalization
        self.head = head
        self.n_classes = None
        self._blocks = None

    @property
    def step(self):
        """Steps taken, a variable on ``state`` (None before binding)."""
        return sg.state_attribute(self, "step")

    def build(self, graph):
        dense = dense_chain(graph, "Forward-Forward")
        if len(graph.blocks) < 2:
            raise GraphError(
                f"Forward-Forward trains hidden layers by their goodness; model "
                f"{graph.model.name!r} has no hidden Dense layer before its output layer "
                f"{dense[-1].name!r}. Add one, or use another method.")
        n = output_units(graph, "Forward-Forward")
        d_in = int(dense[0].kernel.shape[0])
        if n < 2:
            raise GraphError(
                f"Forward-Forward embeds the class label in the input, so it needs a "
                f"classification output of at least 2 units; the output layer "
                f"{dense[-1].name!r} has {n}. Use another method for regression.")
        if n > d_in:
            raise GraphError(
                f"Forward-Forward writes the one-hot label over the first {n} input "
                f"features, but layer {dense[0].name!r} reads only {d_in}. Use another "
                "method, or more input features.")
        self.n_classes = n
        self._d_in = d_in
        self._blocks = [tuple(b.layers) for b in graph.blocks]
        with compat.init_scope():
            own_counters(self)

    def transport(self, layer, kernels):
        return None

    def layer_rule(self, name):
        """The rule layer ``name`` trains with, for :func:`credit.summary`."""
        if self._blocks and self._blocks[-1][0].name == name:
            where = ("the model's own pass" if self.head == "model"
                     else "the neutral-label pass")
            return (f"softmax head: the model's loss on {where}, input gradient stopped "
                    "(no backward pass below)")
        return ("goodness: softplus(θ - g⁺) + softplus(g⁻ - θ), g = sum h², on "
                "normalised inputs (no gradient from other layers)")

    def signals(self, trace):
        raise_no_signals(self)

    def update(self, trace, signals):
        return {}

    # -- the passes ----------------------------------------------------------------------

    def normalize(self, h):
        """``h`` divided by its length per example (``"l2"``) or by its root mean square
        (``"rms"``), plus a small epsilon."""
        h = ops.convert_to_tensor(h)
        norm = ops.sqrt(ops.sum(ops.square(h), axis=-1, keepdims=True))
        if self.normalization == "rms":
            norm = norm / np.sqrt(float(h.shape[-1]))
        return h / (norm + EPSILON)

    def embed(self, x, labels):
        """``x`` with its first ``n_classes`` features replaced by ``labels``: a
        ``(batch, n_classes)`` array (one-hot, or the neutral ``1/n_classes``), or class
        indices (made one-hot)."""
        x = ops.convert_to_tensor(x)
        labels = ops.convert_to_tensor(labels)
        if len(labels.shape) == 1:
            labels = ops.one_hot(ops.cast(labels, "int32"), self.n_classes)
        labels = ops.cast(labels, x.dtype)
        return ops.concatenate([labels, x[:, self.n_classes:]], axis=1)

    def neutral(self, x):
        """``x`` with the neutral label ``1/n_classes`` in every label feature."""
        x = ops.convert_to_tensor(x)
        fill = ops.full((ops.shape(x)[0], self.n_classes), 1.0 / self.n_classes, x.dtype)
        return self.embed(x, fill)

    def activities(self, x, training=False):
        """The hidden layers' outputs ``h_1 .. h_{L-1}`` of FF's pass on ``x`` (already
        label-embedded), and the output layer's input ``n(h_{L-1})``.

        Each block runs on the normalised output of the block below, behind a
        stop-gradient: ``h_l`` is connected to block l's weights only.
        """
        h = ops.convert_to_tensor(x)
        hidden = []
        for layers in self._blocks[:-1]:
            h = ops.stop_gradient(self.normalize(h))
            for layer in layers:
                h = layer(h, training=training)
            hidden.append(h)
        return hidden, ops.stop_gradient(self.normalize(h))

    def goodness(self, h):
        """``sum_j h_j^2`` per example."""
        return ops.sum(ops.square(ops.cast(h, "float32")), axis=-1)

    def thresholds(self):
        """``θ_l`` of every hidden layer (a list of floats)."""
        return [self.threshold if self.threshold is not None
                else float(layers[0].kernel.shape[-1]) / 2 for layers in self._blocks[:-1]]

    def goodness_by_label(self, x, training=False):
        """Summed goodness of FF's pass with each label embedded: a ``(batch,
        n_classes)`` tensor.

        Sums over the hidden layers but the first (the paper's choice: the first layer's
        goodness reads the label feature most directly); over the one hidden layer of a
        model with one.
        """
        self._require_bound()
        x = _flat(x, self._d_in)
        columns = []
        for c in range(self.n_classes):
            labels = ops.full((ops.shape(x)[0],), c, "int32")
            hidden, _ = self.activities(self.embed(x, labels), training=training)
            used = hidden[1:] if len(hidden) > 1 else hidden
            columns.append(sum(self.goodness(h) for h in used))
        return ops.stack(columns, axis=1)

    def predict(self, x, by="goodness", batch_size=256):
        """Class predictions of the trained model, as numpy integers.

        Args:
            x: inputs, as for the model.
            by: ``"goodness"`` (the label whose embedding gives the highest summed
                goodness, :meth:`goodness_by_label`) or ``"softmax"`` (the output layer on
                the neutral-label pass; the output layer is trained on that pass only
                with ``head="neutral"``).
            batch_size: examples per pass.
        """
        self._require_bound()
        if by not in ("goodness", "softmax"):
            raise ValueError(f"by must be 'goodness' or 'softmax'; got {by!r}.")
        if by == "softmax" and self.head != "neutral":
            raise ValueError(
                "by='softmax' runs the output layer on the neutral-label pass, which it "
                f"is trained on only with head='neutral'; this method has head="
                f"{self.head!r}, so its output layer reads the model's own pass: use "
                "model.predict(x) for it, or train with head='neutral'.")
        x = np.asarray(x)
        out = []
        for start in range(0, len(x), batch_size):
            chunk = ops.convert_to_tensor(x[start:start + batch_size])
            if by == "goodness":
                scores = self.goodness_by_label(chunk)
            else:
                scores = self.head_output(_flat(chunk, self._d_in))
            out.append(ops.convert_to_numpy(ops.argmax(scores, axis=-1)))
        return np.concatenate(out) if out else np.zeros((0,), "int64")

    def head_output(self, x, training=False):
        """The output layer on FF's pass of ``x`` with the neutral label."""
        _, h = self.activities(self.neutral(x), training=training)
        for layer in self._blocks[-1]:
            h = layer(h, training=training)
        return h

    # -- the step ------------------------------------------------------------------------

    def wrong_labels(self, labels, step=None):
        """A uniformly random wrong label per example, from the seed and the step (the
        same on TensorFlow and JAX: a counter-based hash in ``keras.ops``)."""
        step = self.step if step is None else step
        key = mix(self.state.seed_variable, step, 0xFF)
        counter = ops.cast(ops.arange(ops.shape(labels)[0], dtype="int32"), "uint32")
        bits = hash32(ops.bitwise_xor(hash32(ops.add(counter, key)), key))
        shift = ops.cast(ops.mod(bits, _u32(self.n_classes - 1)), "int32") + 1
        return ops.mod(ops.cast(labels, "int32") + shift, self.n_classes)

    def hardest_labels(self, x, labels, training=False):
        """The wrong label of highest summed goodness per example."""
        scores = self.goodness_by_label(x, training=training)
        scores = ops.where(ops.one_hot(labels, self.n_classes) > 0,
                           ops.cast(-np.inf, scores.dtype), scores)
        return ops.cast(ops.argmax(scores, axis=-1), "int32")

    def layer_losses(self, positive, negative, sample_weight=None):
        """``L_l`` of every hidden layer from its positive and negative outputs (lists).

        With ``sample_weight`` (one weight per example; trailing axes of size one, as
        ``(batch, 1)``, are averaged away) each example's term is weighted and the sum
        divided by the batch size, as Keras's default loss reduction does.
        """
        batch = ops.cast(ops.shape(positive[0])[0] * sg.replicas(), "float32")
        weight = None
        if sample_weight is not None:
            weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            weight = ops.mean(ops.reshape(weight, (ops.shape(weight)[0], -1)), axis=1)
        losses = []
        for h_pos, h_neg, theta in zip(positive, negative, self.thresholds()):
            per_example = (ops.softplus(theta - self.goodness(h_pos))
                           + ops.softplus(self.goodness(h_neg) - theta))
            if weight is not None:
                per_example = per_example * weight
            losses.append(ops.sum(per_example) / batch)
        return losses

    def compute_gradients(self, model, x, y=None, sample_weight=None, *, loss_fn=None,
                          training=True):
        """Forward-Forward's updates for one batch, aligned with
        ``model.trainable_variables``; advances the step counter.

        Called by :func:`credit.compute_gradients` in place of its backward pass (on
        JAX, by the step, with the model's variables mapped to the step's values). The
        hidden layers' gradients and the output layer's are those of two scalar
        objectives (:func:`credit.backends.value_and_gradients`).
        """
        from credit import model as engine

        engine.bind(self, model, inputs=x)
        if y is None or isinstance(y, (dict, list, tuple)):
            raise ValueError(
                f"Forward-Forward needs the class labels y of the batch (one tensor); "
                f"got {type(y).__name__}. Pass y to fit (or to compute_gradients).")
        labels = self.class_indices(y)
        flat_x = _flat(x, self._d_in)
        if self.negatives == "random":
            wrong = self.wrong_labels(labels)
        else:
            wrong = ops.stop_gradient(self.hardest_labels(flat_x, labels, training))
        hidden = [v for layers in self._blocks[:-1] for layer in layers
                  for v in layer.trainable_variables]
        out_vars = [v for layer in self._blocks[-1] for v in layer.trainable_variables]

        def ff_objective():
            positive, _ = self.activities(self.embed(flat_x, labels), training)
            negative, _ = self.activities(self.embed(flat_x, wrong), training)
            ff_loss = sum(self.layer_losses(positive, negative, sample_weight))
            return engine._scale(model, ff_loss), ff_loss

        def head_objective():
            if self.head == "model":
                y_pred = model(x, training=training)
            else:
                y_pred = self.head_output(flat_x, training)
            loss = engine.compute_loss(model, x, y, y_pred, sample_weight, training,
                                       loss_fn)
            return engine._scale(model, loss), (loss, y_pred)

        # The layer losses reach only their own layer (stop-gradients between layers);
        # of the head's loss only the output layer's own weight gradient is asked for
        # (with head="model" it would reach the hidden layers too).
        _, hidden_grads, _, ff_loss = backends.value_and_gradients(ff_objective, hidden,
                                                                   has_aux=True)
        _, out_grads, _, (loss, y_pred) = backends.value_and_gradients(
            head_objective, out_vars, has_aux=True)
        found = dict(zip(map(id, hidden), hidden_grads))
        found.update(zip(map(id, out_vars), out_grads))
        gradients = []
        for v in model.trainable_variables:
            g = found.get(id(v))
            gradients.append(None if g is None else ops.cast(g, v.dtype))
        with backends.after(gradients):
            self.step.assign_add(1)
        return engine.Gradients(gradients, loss, y_pred, {"ff_loss": ff_loss})

    def class_indices(self, y):
        """``y`` as int32 class indices: one index per example, or one-hot rows."""
        y = ops.convert_to_tensor(y)
        try:
            rank = len(y.shape)
        except ValueError:  # a traced tensor of unknown rank
            rank = None
        if rank is not None and rank >= 2 and y.shape[-1] == self.n_classes:
            return ops.cast(ops.argmax(ops.reshape(y, (-1, self.n_classes)), axis=-1),
                            "int32")
        return ops.cast(ops.reshape(y, (-1,)), "int32")

    def _require_bound(self):
        if self._blocks is None:
            raise ValueError("this Forward-Forward method is not bound to a model yet: "
                             "compile a credit model with it (or train one step) first.")


def _flat(x, units):
    """``x`` as ``(batch, units)``, with a static last axis."""
    x = ops.convert_to_tensor(x)
    return ops.reshape(x, (-1, units))
