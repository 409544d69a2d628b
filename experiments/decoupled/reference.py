"""The unsplit model trained in one process with credit's own step: the reference.

:func:`train_in_process` is what a user of credit writes in a custom loop:
``credit.compute_gradients`` and the optimizer in one ``tf.function``, over the same
seeded batches as the decoupled runner. The decoupled stages, run in lock-step, must end
with its weights; it is also the one-process speed baseline.
"""

import time

import keras
import numpy as np
import tensorflow as tf

import credit
from credit import _keras_compat as compat
from credit import model as model_lib
from experiments.decoupled.schedules import batches
from experiments.decoupled.stage import make_optimizer


def loss_object():
    """The loss of every run: sparse categorical cross-entropy, mean over the batch."""
    return keras.losses.SparseCategoricalCrossentropy()


def resolve_method(method, model):
    """A credit method from a name or config, bound to ``model`` (backprop needs none)."""
    method = method if isinstance(method, credit.ErrorSignal) else credit.get(method)
    if not method.exact:
        model_lib.bind(method, model)
    return method


def train_in_process(model, method, x, y, *, batch_size, epochs=1, seed=0,
                     optimizer="adam", loss=None, epoch_offset=0, steps=None,
                     clock=time.perf_counter):
    """Train ``model`` with ``method`` by ``credit.compute_gradients`` in one process.

    Args:
        model: a built Keras model (a credit model or not).
        method: a credit method, name or config (bound to ``model`` here).
        x, y: training data (numpy arrays).
        batch_size, epochs, seed: the batches are :func:`~experiments.decoupled.
            schedules.batches` ``(len(x), batch_size, seed, epoch)``.
        optimizer: a Keras optimizer name, config dict or instance (a copy is used).
        loss: default :func:`loss_object`.
        epoch_offset: number of the first epoch (for the batch order).
        steps: stop after this many steps (default: whole epochs).
        clock: the clock of the epoch times.

    Returns:
        ``(epochs, method)``: a list of dicts per epoch (``start``, ``end``, ``cpu``,
        ``loss``, ``accuracy`` on the training batches) and the bound method.

    Example:
        >>> logs, _ = train_in_process(model, "dfa", x, y, batch_size=128)  # doctest: +SKIP
    """
    loss = loss_object() if loss is None else loss
    method = method if isinstance(method, credit.ErrorSignal) else credit.get(method)
    if method.name == "local_losses" and not compat.has_compiled_loss(model):
        # Local losses apply the model's compiled loss to their heads (a loss_fn does
        # not reach them): the same loss, compiled before the method is bound.
        model.compile(loss=loss)
    method = resolve_method(method, model)
    optimizer = make_optimizer(optimizer)
    variables = model.trainable_variables
    optimizer.build(variables)
    signature = [tf.TensorSpec((None,) + tuple(x.shape[1:]), tf.float32),
                 tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=signature)
    def step(xb, yb):
        out = credit.compute_gradients(model, xb, yb, method=method, loss_fn=loss)
        optimizer.apply(out.gradients, variables)
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out.y_pred, axis=-1), yb),
                                     tf.float32))
        return out.loss, hits

    logs, taken = [], 0
    for epoch in range(epochs):
        start, cpu = clock(), time.process_time()
        losses, hits, seen = [], 0.0, 0
        for index in batches(len(x), batch_size, seed, epoch_offset + epoch):
            if steps is not None and taken >= steps:
                break
            value, hit = step(x[index], y[index].astype("int64"))
            losses.append(float(value))
            hits += float(hit)
            seen += len(index)
            taken += 1
        logs.append({"start": start, "end": clock(), "cpu": time.process_time() - cpu,
                     "loss": float(np.mean(losses)) if losses else float("nan"),
                     "accuracy": hits / seen if seen else float("nan")})
    return logs, method


def evaluate(model, x, y, batch_size=1000):
    """Accuracy of ``model`` on ``(x, y)`` (inference mode).

    Example:
        >>> evaluate(model, x_test, y_test)                          # doctest: +SKIP
        0.92
    """
    hits = 0
    for i in range(0, len(x), batch_size):
        p = model(x[i:i + batch_size], training=False)
        hits += int(np.sum(np.argmax(np.asarray(p), axis=-1) == y[i:i + batch_size]))
    return hits / len(x)
