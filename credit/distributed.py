"""Data-parallel training on several hosts: a custom loop around :func:`credit.compute_gradients`.

``credit.Model.fit`` trains with every method under ``tf.distribute.MirroredStrategy``
(several devices of one host). Under ``tf.distribute.MultiWorkerMirroredStrategy``
(several hosts) Keras 3's ``fit`` fails, for any Keras model, with
``ValueError: Attempt to convert a value (PerReplica ...) with an unsupported type``
(an open Keras problem: https://github.com/keras-team/keras/issues/20585). Measured
with TensorFlow 2.21 and Keras 3.15, it fails in two places of Keras's private trainer:

1. before training, ``fit`` reduces a whole ``(x, y)`` batch with one
   ``strategy.reduce`` call to build the model symbolically; the multi-worker strategy's
   collective reduce does not take a nested structure (the error above);
2. each step then reduces the scalar logs with ``strategy.reduce("MEAN", v, axis=0)``,
   which fails on a scalar ("Invalid reduction dimension 0 for input with 0
   dimensions").

Making ``credit.Model.fit`` work would mean overriding both of these pieces of Keras's
private trainer (its symbolic build and its train and test functions) in
``credit.Model``, to be redone at each Keras release. This module instead gives the
custom training loop that TensorFlow documents for this strategy, with the same
ingredients as ``fit``: the step is :func:`credit.compute_gradients` inside
``strategy.run``, followed by the model's optimizer (which sums the replicas'
gradients), and the model's compiled loss and metrics, the method's own logs (e.g.
``sg_loss``) and Keras callbacks work as in ``fit``.

Multi-host training
-------------------

Every method trains on several hosts with ``credit.distributed.fit``, a custom training
loop for ``tf.distribute.MultiWorkerMirroredStrategy`` (Keras 3's own ``fit`` does not
work under that strategy: keras-team/keras#20585). Each host runs the same script; the
environment variable ``TF_CONFIG`` tells it the cluster and its own place in it:

.. code-block:: python

    # train.py -- the same file on every host
    import credit, keras, tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # first: reads TF_CONFIG

    global_batch = 64                  # split across all replicas of all hosts
    options = tf.data.Options()        # every worker keeps its part of each batch
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)             # or FILE for file shards
    dataset = (tf.data.Dataset.from_tensor_slices((x, y))
               .shuffle(60_000, seed=0).batch(global_batch).with_options(options))

    with strategy.scope():             # the model and the method's state live here
        model = credit.Sequential([keras.Input((784,)),
                                   keras.layers.Dense(256, activation="relu"),
                                   keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy",
                      metrics=["accuracy"], method="dfa")

    history = credit.distributed.fit(
        model, dataset, strategy, epochs=5,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                credit.distributed.worker_path("checkpoints/model.keras", strategy)),
            keras.callbacks.CSVLogger(
                credit.distributed.worker_path("log.csv", strategy)),
        ])

On two hosts, ``host-a`` and ``host-b`` (any free port, the same list on both)::

    # on host-a (worker 0, the chief: it prints the progress bar and writes the files)
    export TF_CONFIG='{"cluster": {"worker": ["host-a:12345", "host-b:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python train.py

    # on host-b
    export TF_CONFIG='{"cluster": {"worker": ["host-a:12345", "host-b:12345"]},
                       "task": {"type": "worker", "index": 1}}'
    python train.py

Both wait for each other at start-up. To try it on one machine, use ``localhost`` with
two ports and start the two commands in two shells. The workers exchange gradients with
collective ops over gRPC.

What you get: every method of ``credit.available()`` (kickback needs a chain with one
scalar output, as always), with the same weights as one process trained on the same
global batches (up to float rounding: the replicas' gradients are summed in another
order); the model's compiled loss and metrics and the method's logs, averaged over all
replicas, in the progress bar (on the chief only), in ``History`` and in every
callback's ``logs``; ``validation_data``; Keras callbacks such as ``ModelCheckpoint``,
``CSVLogger``, ``EarlyStopping``, ``LearningRateScheduler``. The same function also
runs under ``MirroredStrategy`` and without a strategy, where it equals
``model.fit``.

Rules:

- Create and compile the model under ``strategy.scope()``; the method's state
  (feedback matrices, synthesizers and their optimizer) is created there too, before
  the first step.
- Give ``fit`` a ``tf.data.Dataset`` batched with the *global* batch size. With the
  ``DATA`` auto-shard policy every worker reads the whole dataset and keeps its part of
  each batch, so the global batches are those of one process; with ``FILE`` each worker
  reads its own files. Give each epoch the same number of batches on every worker.
- Callbacks run on every worker, as TensorFlow's multi-worker guide asks: saving may
  need every worker, and all workers see the same (all-reduced) logs, so a callback
  such as ``EarlyStopping`` stops them together. Only the chief should write to the
  real paths: pass file names through :func:`worker_path`, which returns the path on
  the chief and a temporary one on the other workers.
- To resume, load the last ``ModelCheckpoint`` under ``strategy.scope()`` and pass
  ``initial_epoch``: the method's state (synthesizers, feedback matrices, their
  optimizers) is saved with the model, and training continues exactly.
- Each call of ``fit`` traces its step anew: call it once for all epochs.

Not supported: ``steps_per_execution`` (one step per call), numpy arrays or an already
distributed dataset as input (use a ``tf.data.Dataset``), ``class_weight``,
``validation_split``, ``BackupAndRestore``, ``ParameterServerStrategy`` and
``TPUStrategy``, stateful recurrent models and synthetic gradients through time (their
windows must stay in order on one replica). The ``TensorBoard`` callback needs the
``tensorboard`` package, which TensorFlow 2.21 does not install; credit declares it.
"""

import os
import tempfile
import warnings

import keras
import numpy as np

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit import model as model_lib

__all__ = ["evaluate", "fit", "is_chief", "worker_path"]


def fit(model, dataset, strategy=None, epochs=1, *, steps_per_epoch=None, callbacks=None,
        verbose="auto", initial_epoch=0, validation_data=None, validation_steps=None,
        validation_freq=1, method=None):
    """Train ``model`` on ``dataset`` with its credit-assignment method under ``strategy``.

    A custom training loop with the contract of ``keras.Model.fit``, for strategies under
    which Keras's ``fit`` does not work, above all
    ``tf.distribute.MultiWorkerMirroredStrategy`` (keras-team/keras#20585: Keras 3's
    ``fit`` reduces a nested batch and scalar logs in ways the multi-worker strategy
    rejects). Each step runs :func:`credit.compute_gradients` on every replica inside
    ``strategy.run``, applies the model's optimizer (which sums the replicas'
    gradients: the loss is already divided by the number of replicas, as in Keras), and
    updates the model's loss tracker and compiled metrics and the method's logs (e.g.
    ``sg_loss``); the logs that callbacks receive are averaged over all replicas.

    Under the default strategy and ``MirroredStrategy`` it gives the same weights as
    ``model.fit`` on the same dataset.

    Args:
        model: a compiled Keras model (a credit model, or any Keras model with
            ``method=``), created and compiled under ``strategy.scope()``.
        dataset: a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``
            batches of the global batch size (all replicas of all workers together).
        strategy: the ``tf.distribute.Strategy``; default the one the model was created
            under.
        epochs: index of the last epoch (as in Keras: with ``initial_epoch``, the number
            of epochs trained is ``epochs - initial_epoch``).
        steps_per_epoch: batches per epoch. Default: the whole dataset each epoch (its
            length if known). When given, one iterator runs on from epoch to epoch, as
            in Keras; training stops with a warning if it runs out.
        callbacks: a list of ``keras.callbacks.Callback`` (or a ``CallbackList``). They
            run on every worker; write files through :func:`worker_path`.
        verbose: ``"auto"`` or 1 (progress bar), 2 (one line per epoch), 0 (silent).
            Only the chief prints.
        initial_epoch: the epoch to start at (to resume).
        validation_data: a ``tf.data.Dataset`` evaluated at the end of an epoch, logged
            with a ``val_`` prefix.
        validation_steps: batches of ``validation_data`` per evaluation (default all).
        validation_freq: evaluate every this many epochs.
        method: switch the method first (a name, config or ``credit.ErrorSignal``); for
            a credit model it stays switched, as with ``credit.Model.fit``. Needed for a
            plain Keras model.

    Returns:
        The ``keras.callbacks.History`` of the run (also ``model.history``).

    Raises:
        TypeError: ``dataset`` is not a ``tf.data.Dataset``.
        ValueError: the model is not compiled, or was not created (or compiled) under
            ``strategy``'s scope.

    Example:
        >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()  # doctest: +SKIP
        >>> with strategy.scope():
        ...     model = credit.Sequential([keras.Input((784,)),
        ...                                keras.layers.Dense(256, activation="relu"),
        ...                                keras.layers.Dense(10, activation="softmax")])
        ...     model.compile("adam", "sparse_categorical_crossentropy",
        ...                   metrics=["accuracy"], method="sg")
        >>> dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
        >>> history = credit.distributed.fit(
        ...     model, dataset, strategy, epochs=5,
        ...     callbacks=[keras.callbacks.CSVLogger(
        ...         credit.distributed.worker_path("log.csv", strategy))])
        >>> history.history["sg_loss"]
    """
    strategy = _check(model, dataset, strategy, "fit")
    if validation_data is not None:
        _check_dataset(validation_data, "validation_data")
    method = _method(model, method)
    trackers = _prepare(model, method, strategy, dataset.element_spec)
    train_step = _train_function(model, method, strategy, trackers)
    test_step = None
    chief = is_chief(strategy)
    distributed = strategy.experimental_distribute_dataset(dataset)
    steps = steps_per_epoch if steps_per_epoch is not None else _length(dataset)
    verbose = verbose if chief else 0
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, model=model,
            verbose=verbose, epochs=epochs, steps=steps)
    history = next((c for c in callbacks.callbacks
                    if isinstance(c, keras.callbacks.History)), None)

    model.stop_training = False
    callbacks.on_train_begin()
    iterator = iter(distributed) if steps_per_epoch is not None else None
    logs, epoch_logs = {}, {}
    for epoch in range(initial_epoch, epochs):
        _reset(model, trackers)
        callbacks.on_epoch_begin(epoch)
        if steps_per_epoch is None:
            iterator = iter(distributed)
        ran_out = False
        step = 0
        while steps is None or step < steps:
            try:
                data = next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                ran_out = steps_per_epoch is not None or step == 0
                break
            callbacks.on_train_batch_begin(step)
            logs = train_step(data)
            callbacks.on_train_batch_end(step, logs)
            step += 1
            if model.stop_training:
                break
        if ran_out:
            warnings.warn(
                f"credit.distributed.fit: the dataset ran out of data at epoch {epoch} "
                f"after {step} steps{' of ' + str(steps) if steps else ''}; training "
                "stops. With steps_per_epoch, give a dataset of at least steps_per_epoch "
                "* epochs batches (e.g. dataset.repeat()).", stacklevel=2)
            if step == 0:
                break
        epoch_logs = _results(model, trackers)
        if validation_data is not None and (epoch + 1) % validation_freq == 0:
            if test_step is None:
                test_step = _test_function(model, strategy)
            val_logs = _run_test(model, strategy, test_step, validation_data,
                                 validation_steps, callbacks)
            epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training or ran_out:
            break
    callbacks.on_train_end(epoch_logs or _pythonify(logs))
    return history if history is not None else getattr(model, "history", None)


def evaluate(model, dataset, strategy=None, *, steps=None, callbacks=None, verbose="auto"):
    """The model's compiled loss and metrics on ``dataset``, under ``strategy``.

    The counterpart of ``keras.Model.evaluate`` (which fails under
    ``MultiWorkerMirroredStrategy`` for the reasons given in :func:`fit`), averaged over
    all replicas of all workers. The model runs in inference mode; the method plays no
    part.

    Args:
        model, strategy: as in :func:`fit`.
        dataset: a ``tf.data.Dataset`` of global batches.
        steps: batches to evaluate (default all).
        callbacks: Keras callbacks (their ``on_test_*`` hooks run).
        verbose: progress bar on the chief (``"auto"`` or 1), or 0.

    Returns:
        A dict from metric name to float, as ``model.evaluate(..., return_dict=True)``.

    Example:
        >>> credit.distributed.evaluate(model, test_dataset, strategy)  # doctest: +SKIP
        {'loss': 0.31, 'accuracy': 0.91}
    """
    strategy = _check(model, dataset, strategy, "evaluate")
    _prepare(model, None, strategy, dataset.element_spec)
    verbose = verbose if is_chief(strategy) else 0
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=1,
            steps=steps if steps is not None else _length(dataset))
    return _run_test(model, strategy, _test_function(model, strategy), dataset, steps,
                     callbacks)


def is_chief(strategy=None):
    """Whether this process is the chief (it prints and writes the real files).

    True without a strategy, under ``MirroredStrategy``, and on worker 0 (or the
    ``"chief"`` task) of a multi-worker cluster.
    """
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def worker_path(path, strategy=None):
    """``path`` on the chief; on any other worker, the same file name in a temporary
    directory of its own.

    Every worker must run the callbacks that save (saving reads variables that all
    workers take part in), but only the chief's files are wanted, and workers that share
    a file system must not write the same file. A Keras name template
    (``"ckpt/{epoch:02d}.keras"``) is kept.

    Example:
        >>> keras.callbacks.ModelCheckpoint(
        ...     credit.distributed.worker_path("ckpt/model.keras", strategy))  # doctest: +SKIP
    """
    strategy = strategy or tf.distribute.get_strategy()
    if is_chief(strategy):
        return path
    resolver = getattr(strategy, "cluster_resolver", None)
    task = (f"{resolver.task_type}_{resolver.task_id}" if resolver is not None
            and resolver.task_type is not None else "worker")
    directory = os.path.join(tempfile.gettempdir(), f"credit_{task}_{os.getpid()}")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, os.path.basename(os.fspath(path)))


# --------------------------------------------------------------------------------------
# Checks and set-up


def _check_dataset(dataset, argument):
    if isinstance(dataset, tf.distribute.DistributedDataset):
        raise TypeError(
            f"{argument} is already distributed; pass the tf.data.Dataset itself (batched "
            "with the global batch size): credit.distributed distributes it.")
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"{argument} must be a tf.data.Dataset of (x, y) or (x, y, sample_weight) "
            f"batches of the global batch size; got {type(dataset).__name__}. For arrays: "
            "tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch_size).")


def _check(model, dataset, strategy, what):
    _check_dataset(dataset, "dataset")
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"model {model.name!r} is not compiled: call model.compile(optimizer, loss, "
            f"...) under strategy.scope() before credit.distributed.{what}.")
    if strategy is None:
        strategy = model.distribute_strategy
    outside = [v.path for v in list(model.weights) + [model.optimizer.iterations]
               if not strategy.extended.variable_created_in_scope(v.value)]
    if outside:
        raise ValueError(
            f"model {model.name!r} has variables that were not created under the scope "
            f"of the {type(strategy).__name__} given ({', '.join(outside[:3])}"
            f"{', ...' if len(outside) > 3 else ''}). Create and compile the model inside "
            "`with strategy.scope():`.")
    return strategy


def _method(model, method):
    if isinstance(model, model_lib.Model):
        if method is not None:
            model._set_method(method)  # switches, and stays switched (as Model.fit)
        return model.method
    if method is None:
        raise ValueError(
            f"model {model.name!r} is not a credit model: pass method=..., e.g. "
            "credit.distributed.fit(model, dataset, strategy, method='dfa'), or build it "
            "with credit.Model / credit.Sequential / credit.wrap.")
    return model_lib._resolve(model, method)


def _zeros(spec):
    if spec is None:
        return None
    if not isinstance(spec, tf.TensorSpec):
        raise TypeError(
            f"credit.distributed takes datasets of dense tensors; got an element of type "
            f"{type(spec).__name__}.")
    return tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)


def _prepare(model, method, strategy, element_spec):
    """Create every variable the step uses before it is traced, under the strategy.

    Variables made while a step is first traced inside ``strategy.run`` are not
    reliably initialised under ``MirroredStrategy``; Keras's ``fit`` builds the same
    state ahead for the same reason.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
        tf.nest.map_structure(_zeros, element_spec))
    with strategy.scope():
        if method is not None and not method.exact:
            model_lib.bind(method, model, inputs=x)  # builds the model and the method
        y_pred = model(x, training=False)  # (builds the model if it is not built)
        if isinstance(model, model_lib.Model):
            model._sync_state()
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # The compiled loss and metrics make their variables when first used: use them
        # once, then clear them.
        if y is not None:
            model.compute_loss(x, y, y_pred, sample_weight, training=False)
            model.compute_metrics(x, y, y_pred, sample_weight)
        model.reset_metrics()
        names = method.log_names if method is not None else ()
        trackers = {}
        for name in names:
            trackers[name] = keras.metrics.Mean(name=name)
    return trackers


def _length(dataset):
    n = int(dataset.cardinality())
    return n if n >= 0 else None


def _loss_tracker(model):
    return next((m for m in model.metrics if m.name == "loss"), None)


def _batch_size(x):
    return tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0]


def _reset(model, trackers):
    model.reset_metrics()
    for tracker in trackers.values():
        tracker.reset_state()


def _pythonify(logs):
    out = {}
    for name, value in (logs or {}).items():
        if isinstance(value, dict):
            out.update(_pythonify(value))
            continue
        value = np.asarray(keras.ops.convert_to_numpy(value))
        out[name] = float(value) if value.size == 1 else value
    return out


def _results(model, trackers):
    """The epoch's logs: the metrics read across all replicas (eagerly, on every worker)."""
    logs = dict(model.get_metrics_result())
    for name, tracker in trackers.items():
        logs[name] = tracker.result()
    return _pythonify(logs)


# --------------------------------------------------------------------------------------
# The steps


def _reduce(strategy, per_replica):
    return {k: strategy.reduce("MEAN", v, axis=None) for k, v in per_replica.items()}


def _train_function(model, method, strategy, trackers):
    loss_tracker = _loss_tracker(model)

    def replica_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        out = model_lib.compute_gradients(model, x, y, sample_weight, method=method)
        variables = model.trainable_variables
        if variables:
            model.optimizer.apply_gradients(zip(out.gradients, variables))
        if loss_tracker is not None:
            # The loss is divided by the number of replicas (for the gradient sum);
            # the tracker averages the replicas' own losses, as Keras's train_step.
            loss_tracker.update_state(compat.unscale_loss_for_distribution(out.loss),
                                      sample_weight=_batch_size(x))
        logs = dict(model.compute_metrics(x, y, out.y_pred, sample_weight))
        for name, value in out.logs.items():
            if name not in trackers:
                raise ValueError(
                    f"{type(method).__name__}.update returned a log {name!r} that is not "
                    f"in its log_names {tuple(trackers)}; add it to log_names.")
            trackers[name].update_state(value)
        for name, tracker in trackers.items():
            logs[name] = tracker.result()
        return logs

    @tf.function(reduce_retracing=True, autograph=False)  # as Keras's fit
    def train_step(data):
        return _reduce(strategy, strategy.run(replica_step, args=(data,)))

    return train_step


def _test_function(model, strategy):
    loss_tracker = _loss_tracker(model)

    def replica_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = model(x, training=False)
        loss = model_lib.compute_loss(model, x, y, y_pred, sample_weight, training=False)
        if loss_tracker is not None:
            loss_tracker.update_state(compat.unscale_loss_for_distribution(loss),
                                      sample_weight=_batch_size(x))
        return dict(model.compute_metrics(x, y, y_pred, sample_weight))

    @tf.function(reduce_retracing=True, autograph=False)  # as Keras's fit
    def test_step(data):
        return _reduce(strategy, strategy.run(replica_step, args=(data,)))

    return test_step


def _run_test(model, strategy, test_step, dataset, steps, callbacks):
    model.reset_metrics()
    callbacks.on_test_begin()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    logs = {}
    step = 0
    while steps is None or step < steps:
        try:
            data = next(iterator)
        except (StopIteration, tf.errors.OutOfRangeError):
            break
        callbacks.on_test_batch_begin(step)
        logs = test_step(data)
        callbacks.on_test_batch_end(step, logs)
        step += 1
    results = _pythonify(model.get_metrics_result())
    callbacks.on_test_end(results)
    return results

