"""One stage of a split model and its share of the training step, for every schedule.

A :class:`Stage` holds a run of the model's layers (the same Keras layer objects, run as
layers), its own optimizer over their weights, and its share of the method's state: the
DFA feedback matrices of the points inside it, or the DNI synthesizer at its top. The
method's state comes from the credit method bound to the whole model
(``credit.model.bind``), so a stage uses exactly the matrices and synthesizers that
``credit.compute_gradients`` would use on the unsplit model, and the same formulas:

- backprop: the stage's vector-Jacobian product with the gradient from the stage above
  (the loss gradient in the last stage), for its weights and its input;
- DFA (Nøkland 2016): the backward pass is cut at every point; each point gets
  ``e B_p``, with ``e`` the loss gradient at the logits, read in the last stage through
  credit's layer hooks as credit's engine reads it;
- DNI (Jaderberg et al. 2016): the stage's output gets ``M(h[, y]) / batch`` from its
  synthesizer; true backprop inside the stage; its input gradient is the bootstrap
  target of the synthesizer below; the synthesizer learns by the mean squared error of
  ``SyntheticGradients.update`` (per example, averaged over the model's boundaries);
- DGL, local losses (Belilovsky et al. 2020; Nøkland & Eidnes 2019): the stage's
  output gets the gradient of its auxiliary head's local loss (``LocalLosses.
  local_loss``: the loss on the head's prediction, similarity matching, or both);
  true backprop inside the stage; the stage's input is cut (nothing crosses a
  boundary); the head learns from the same loss with a copy of the method's head
  optimizer.

Each piece runs as a ``tf.function``. The forward pass is called under an eager
``tf.GradientTape``, which keeps the function's intermediate results for a later
``tape.gradient``: the backward pass runs as a compiled function too, when the signal
arrives, without recomputing the forward pass.

Every piece adds its wall-clock duration to :attr:`Stage.timings` (seconds per call),
which the runner reports and the simulator reads.
"""

import collections
import contextlib
import time

import keras
import numpy as np
import tensorflow as tf

from credit import _keras_compat as compat
from credit import graph as graph_lib
from credit.methods.local_losses import similarity_matrix
from credit.signal import flat
from experiments.decoupled.split import SCHEDULES, check_schedule


def make_optimizer(config):
    """A fresh Keras optimizer from a name, a ``keras.optimizers.serialize`` dict or an
    instance (whose config is copied)."""
    if isinstance(config, keras.optimizers.Optimizer):
        config = keras.optimizers.serialize(config)
    if isinstance(config, dict):
        return keras.optimizers.deserialize(config)
    return keras.optimizers.get(config)


class Forward:
    """What a stage's forward pass leaves for its backward pass.

    Attributes:
        step, micro: the batch (and micro-batch) it belongs to.
        tape: the eager tape the forward function was called under.
        x, y: the stage's input (a watched tensor) and the batch labels.
        outputs: the forward function's outputs (``h``, ``points``, and in the last
            stage ``loss``, ``correct``, ``e``).
        h: the stage output as a numpy array (what is sent to the stage above).
    """

    __slots__ = ("step", "micro", "tape", "x", "y", "outputs", "h")

    def __init__(self, step, micro, tape, x, y, outputs, h):
        self.step, self.micro, self.tape = step, micro, tape
        self.x, self.y, self.outputs, self.h = x, y, outputs, h

    @property
    def loss(self):
        """The batch loss (last stage only)."""
        return float(self.outputs["loss"])

    @property
    def correct(self):
        """The number of correct predictions in the batch (last stage only)."""
        return float(self.outputs["correct"])

    @property
    def e(self):
        """The output error ``e`` (last stage under DFA) as a numpy array."""
        return self.outputs["e"].numpy()


class Pending:
    """A DNI stage's synthesizer prediction, kept until its bootstrap target arrives."""

    __slots__ = ("step", "tape", "prediction")

    def __init__(self, step, tape, prediction):
        self.step, self.tape, self.prediction = step, tape, prediction


#: The kinds of logits (``credit``'s ``Graph.output_logits``) a stage reads at a layer.
_RECORDED = ("input", "activation", "returned", "output")


class _LogitsRecorder:
    """Reads the logits (the input of the output's softmax) as the layer runs, through
    credit's layer hooks, where credit's engine reads the output error."""

    def __init__(self, kind):
        self.kind = kind
        self.logits = None

    def on_call(self, layer, original, args, kwargs):
        if self.kind == "input":
            self.logits = args[0]
        output = original(*args, **kwargs)
        if self.kind == "returned":  # a softmax/sigmoid op ends the layer's call
            self.logits = compat.keras_logits(output)
        return output

    def on_activation(self, layer, original, a):
        if self.kind == "activation":
            self.logits = a
        return original(a)


class Stage:
    """Stage ``index`` of ``split`` under ``schedule``, over the layers of ``model``.

    Args:
        model: the whole model (its layers are run; only this stage's are trained here).
        split: the :class:`~experiments.decoupled.split.Split`.
        index: the stage, 0 to K-1.
        schedule: ``"locked"``, ``"gpipe"``, ``"dfa"``, ``"dni"`` or ``"dgl"``.
        method: the credit method bound to ``model`` (DFA, synthetic gradients or local
            losses), whose feedback matrices, synthesizers or heads this stage uses;
            None for backprop.
        optimizer: the stage's optimizer (a name, config dict or instance; a fresh copy
            is made). Elementwise optimizers (SGD, Adam, ...) applied per stage equal one
            optimizer over the whole model.
        loss: the loss (a ``keras.losses.Loss``), read by the last stage.
        clock: the clock of :attr:`timings`.

    Example:
        >>> stage = Stage(model, split, 0, "dni", method=sg, optimizer="adam",
        ...               loss=keras.losses.SparseCategoricalCrossentropy())  # doctest: +SKIP
        >>> fwd = stage.forward(x, y)                                          # doctest: +SKIP
        >>> gx, grads, pending = stage.synthetic_backward(fwd)                 # doctest: +SKIP
    """

    def __init__(self, model, split, index, schedule, method=None, optimizer="adam",
                 loss=None, clock=time.perf_counter):
        self.schedule = check_schedule(schedule)
        if not 0 <= index < split.stages:
            raise ValueError(f"index={index!r}: a stage of a {split.stages}-stage split is "
                             f"numbered 0 to {split.stages - 1}.")
        self.index, self.count = int(index), split.stages
        self.first, self.last = index == 0, index == split.stages - 1
        names = split.stage_layers(index)
        self.layers = [model.get_layer(name) for name in names]
        self.variables = [v for layer in self.layers for v in layer.trainable_variables]
        self.clock = clock
        self.timings = collections.defaultdict(list)
        kind = SCHEDULES[schedule]
        if kind != "backprop" and (method is None or method.name != kind):
            raise ValueError(f"schedule={schedule!r} trains with {kind}; pass method= the "
                             f"{kind} method bound to the model (got {method!r}).")
        self.method = method
        # The stage input needs no gradient in the first stage (data), under DFA (the
        # backward pass is cut at every block) and DGL (nothing crosses a boundary).
        self.cut_input = self.first or schedule in ("dfa", "dgl")
        self.points = ()
        if schedule == "dfa":
            self.points = tuple(p for p in method.points if p in names)
            self.feedback = [method.feedback_matrices[p] for p in self.points]
            self.point_shapes = [tuple(method.graph.point_shape(p)) for p in self.points]
        self.synthesizer = None
        if schedule == "dni" and not self.last:
            top = names[-1]
            if top not in method.synthesizers:
                raise ValueError(f"stage {index} ends at {top!r}, which has no synthesizer; "
                                 f"the method's boundaries are {list(method.boundaries)}: "
                                 "bind the method with at= the split's boundaries.")
            self.synthesizer = method.synthesizers[top]
            self.synth_variables = list(self.synthesizer.trainable_variables)
            self.synth_optimizer = make_optimizer(method.optimizer_instance)
            self.synth_optimizer.build(self.synth_variables)
            self.boundaries = len(method.boundaries)
            self.condition_units = (int(np.prod(method.graph.output_shapes[0]))
                                    if method.conditioned else 0)
            self._predict = tf.function(self._predict_fn, reduce_retracing=True)
            self._synth_loss = tf.function(self._synth_loss_fn, reduce_retracing=True)
            self._synth_apply = tf.function(self._synth_apply_fn)
        self.loss_fn = loss
        self.head = None
        if schedule == "dgl" and not self.last:
            top = names[-1]
            heads = method.heads
            if top not in heads:
                raise ValueError(f"stage {index} ends at {top!r}, which has no local head; "
                                 f"the method's points are {list(heads)}: bind the method "
                                 "with at= the split's boundaries.")
            if loss is None and method.loss in ("pred", "predsim"):
                raise ValueError(f"a dgl stage with loss={method.loss!r} applies the model's "
                                 "loss to its head's prediction: pass loss=, e.g. "
                                 "keras.losses.SparseCategoricalCrossentropy().")
            self.head = heads[top]
            self.head_variables = list(self.head.trainable_variables)
            self.head_optimizer = make_optimizer(method.optimizer_instance)
            self.head_optimizer.build(self.head_variables)
            self.units = int(np.prod(method.graph.output_shapes[0]))
            self._local = tf.function(self._local_fn, reduce_retracing=True)
            self._head_apply = tf.function(self._head_apply_fn)
        if self.last and loss is None:
            raise ValueError("the last stage computes the loss: pass loss=, e.g. "
                             "keras.losses.SparseCategoricalCrossentropy().")
        self._logits = None
        if self.last and schedule == "dfa":
            kind_, name = method.graph.logits
            if kind_ not in _RECORDED:
                # The stage runs the model's layers, not the ops between them: a softmax
                # applied between layers (or logits credit cannot read) is not here.
                where = f" ({name})" if kind_ == "unreachable" else ""
                raise ValueError(
                    f"model {model.name!r}: its output error is read at logits of kind "
                    f"{kind_!r}{where}, which a stage of layers cannot read; the stage "
                    f"runner reads the logits at a layer ({', '.join(_RECORDED)}). End "
                    "the model with a layer whose activation is the softmax/sigmoid, or "
                    "a Softmax/Activation layer.")
            layer = model.get_layer(name) if name is not None else None
            self._logits = (kind_, layer)
        self.optimizer = make_optimizer(optimizer)
        self.optimizer.build(self.variables)
        input_shape = tuple(model.get_layer(names[0]).input.shape[1:])
        signature = [tf.TensorSpec((None,) + input_shape, tf.float32),
                     tf.TensorSpec((None,), tf.int64)]
        self._forward = tf.function(self._forward_fn, input_signature=signature)
        self._apply = tf.function(self._apply_fn)
        self._accumulate = tf.function(self._accumulate_fn)
        if schedule == "dfa":
            self._project = tf.function(self._project_fn, reduce_retracing=True)

    # -- compiled pieces ---------------------------------------------------------------

    def _forward_fn(self, x, y):
        h = tf.stop_gradient(x) if self.cut_input else x
        points = []
        recorder, hooks = None, contextlib.nullcontext()
        if self._logits is not None and self._logits[1] is not None:
            recorder = _LogitsRecorder(self._logits[0])
            hooks = graph_lib.Hooks([self._logits[1]], recorder)
        with hooks:
            for layer in self.layers:
                h = layer(h, training=True)
                if layer.name in self.points:
                    points.append(h)
                    h = tf.stop_gradient(h)
        out = {"h": h, "points": tuple(points)}
        if self.last:
            loss = self.loss_fn(y, h)
            out["loss"] = loss
            hit = tf.equal(tf.argmax(h, axis=-1), y)
            out["correct"] = tf.stop_gradient(tf.reduce_sum(tf.cast(hit, tf.float32)))
            if self._logits is not None:
                logits = h if recorder is None or recorder.logits is None else recorder.logits
                out["e"] = tf.stop_gradient(tf.gradients(loss, logits)[0])
        return out

    def _apply_fn(self, grads):
        self.optimizer.apply(grads, self.variables)

    def _local_fn(self, h, y):
        # LocalLosses.local_loss for this stage's head, with the stage's loss object in
        # place of the model's compiled loss (the same loss, mean over the batch).
        method = self.method
        h = tf.cast(tf.stop_gradient(h), "float32")
        with tf.GradientTape() as tape:
            tape.watch(h)
            prediction, features = self.head(h)
            loss = 0.0
            if method.loss in ("pred", "predsim"):
                pred = tf.cast(self.loss_fn(y, method.prediction(prediction)), "float32")
                loss = pred if method.loss == "pred" else (1.0 - method.beta) * pred
            if method.loss in ("sim", "predsim"):
                labels = tf.one_hot(tf.cast(y, "int32"), self.units, dtype="float32")
                sim = tf.reduce_mean(tf.square(similarity_matrix(features)
                                               - similarity_matrix(labels)))
                loss = sim if method.loss == "sim" else loss + method.beta * sim
        grads = tape.gradient(loss, [h] + self.head_variables)
        return loss, grads[0], grads[1:]

    def _head_apply_fn(self, grads):
        pairs = [(g, v) for g, v in zip(grads, self.head_variables) if g is not None]
        self.head_optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])

    @staticmethod
    def _accumulate_fn(total, grads):
        return [a + g for a, g in zip(total, grads)]

    def _project_fn(self, e):
        v = flat(e)
        return [tf.reshape(tf.matmul(v, tf.cast(b, v.dtype)), (-1,) + shape)
                for b, shape in zip(self.feedback, self.point_shapes)]

    def _predict_fn(self, h, y):
        # DNI's signal M(h[, y]) / batch, as SyntheticGradients.synthetic_signal makes it.
        h = tf.cast(tf.stop_gradient(h), "float32")
        condition = None
        if self.condition_units:
            condition = tf.one_hot(tf.cast(y, "int32"), self.condition_units, dtype="float32")
        return self.synthesizer(h, condition) / tf.cast(tf.shape(h)[0], h.dtype)

    def _synth_loss_fn(self, prediction, target):
        # SyntheticGradients.update's loss: mean squared error per example, averaged over
        # the model's boundaries (each stage holds one of them).
        batch = tf.cast(tf.shape(prediction)[0], prediction.dtype)
        target = tf.stop_gradient(tf.cast(target, prediction.dtype))
        return tf.reduce_mean(tf.square(batch * (prediction - target))) / self.boundaries

    def _synth_apply_fn(self, grads):
        self.synth_optimizer.apply(grads, self.synth_variables)

    # -- the pieces a schedule calls ---------------------------------------------------

    def _log(self, piece, start):
        self.timings[piece].append(self.clock() - start)

    def forward(self, x, y, step=0, micro=0):
        """Run the stage's layers on ``x`` (a numpy array) under a tape.

        Returns:
            A :class:`Forward`; its ``h`` is the output to send on (None in the last
            stage), ``e`` the output error (last stage, DFA).
        """
        start = self.clock()
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.convert_to_tensor(y, tf.int64)
        tape = tf.GradientTape()
        with tape:
            if not self.cut_input:
                tape.watch(x)
            outputs = self._forward(x, y)
        h = None if self.last else outputs["h"].numpy()
        self._log("forward", start)
        return Forward(step, micro, tape, x, y, outputs, h)

    def backward(self, fwd, g=None, scale=1.0):
        """Backprop through the stage: the gradient ``g`` at its output (the loss
        gradient times ``scale`` in the last stage) to its weights and its input.

        Returns:
            ``(gx, grads)``: the input gradient as a numpy array (None in the first
            stage) and the weight gradients, aligned with :attr:`variables`.
        """
        start = self.clock()
        sources = list(self.variables) + ([] if self.cut_input else [fwd.x])
        if self.last:
            target = fwd.outputs["loss"]
            seed = tf.constant(scale, target.dtype)
        else:
            if g is None:
                raise ValueError(f"stage {self.index} is not the last: backward needs the "
                                 "gradient g from the stage above.")
            target = fwd.outputs["h"]
            seed = tf.convert_to_tensor(g, target.dtype)
        grads = fwd.tape.gradient(target, sources, output_gradients=seed)
        gx = None if self.cut_input else grads.pop().numpy()
        self._log("backward", start)
        return gx, grads

    def apply(self, grads):
        """Apply weight gradients with the stage's optimizer."""
        start = self.clock()
        self._apply(grads)
        self._log("apply", start)

    def accumulate(self, total, grads):
        """``total + grads`` (``grads`` when ``total`` is None): GPipe's accumulation."""
        if total is None:
            return grads
        start = self.clock()
        total = self._accumulate(total, grads)
        self._log("accumulate", start)
        return total

    def dfa_update(self, fwd, e):
        """DFA's step for the batch of ``fwd``: every point in the stage gets ``e B_p``
        (the last stage's output layer the true loss gradient); apply the update."""
        start = self.clock()
        signals = self._project(tf.convert_to_tensor(e, tf.float32))
        targets, seeds = list(fwd.outputs["points"]), list(signals)
        if self.last:
            targets.insert(0, fwd.outputs["loss"])
            seeds.insert(0, tf.constant(1.0, fwd.outputs["loss"].dtype))
        grads = fwd.tape.gradient(targets, self.variables, output_gradients=seeds)
        self._log("backward", start)
        self.apply(grads)

    def synthetic_backward(self, fwd):
        """DNI's step for the batch of ``fwd`` (not in the last stage): the synthesizer's
        signal at the stage output, backprop through the stage.

        Returns:
            ``(gx, grads, pending)``: the input gradient (the bootstrap target of the
            synthesizer below; None in the first stage), the weight gradients, and the
            prediction to train the synthesizer with when its target arrives.
        """
        start = self.clock()
        tape = tf.GradientTape()  # watches the synthesizer's variables as they are read
        with tape:
            prediction = self._predict(fwd.outputs["h"], fwd.y)
        self._log("synthesize", start)
        gx, grads = self.backward(fwd, prediction)
        return gx, grads, Pending(fwd.step, tape, prediction)

    def train_synthesizer(self, pending, target):
        """Regress the synthesizer's prediction for ``pending`` onto ``target`` (the
        gradient the stage above sent back) and apply the synthesizer's optimizer."""
        start = self.clock()
        with pending.tape:
            loss = self._synth_loss(pending.prediction, tf.convert_to_tensor(target))
        grads = pending.tape.gradient(loss, self.synth_variables)
        self._synth_apply(grads)
        self._log("synth_train", start)
        return float(loss)

    def local_update(self, fwd):
        """DGL's step for the batch of ``fwd``: the head's local loss gives the signal at
        the stage output (the last stage: the model's loss), backprop through the stage,
        and the stage's and the head's updates. Returns the local loss (the batch loss
        in the last stage)."""
        if self.last:
            _, grads = self.backward(fwd)
            self.apply(grads)
            return fwd.loss
        start = self.clock()
        loss, g, head_grads = self._local(fwd.outputs["h"], fwd.y)
        self._head_apply(head_grads)
        self._log("local", start)
        _, grads = self.backward(fwd, g)
        self.apply(grads)
        return float(loss)

    # -- state ---------------------------------------------------------------------------

    def get_weights(self):
        """The stage's layer weights: a dict from layer name to its list of arrays."""
        return {layer.name: layer.get_weights() for layer in self.layers}

    def state(self):
        """The stage's method state as arrays: synthesizer (DNI) or head (DGL) weights,
        else empty."""
        owner = self.synthesizer if self.synthesizer is not None else self.head
        if owner is None:
            return {}
        return {self.layers[-1].name: owner.get_weights()}

    def reset_timings(self):
        """Forget the piece times recorded so far."""
        self.timings = collections.defaultdict(list)
