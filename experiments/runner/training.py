"""One run: build, compile, fit with the runner's callbacks, write the run folder.

:func:`train` fits a completed config into an (empty) run folder and writes:

- ``config.json``: the config plus bookkeeping keys (``status`` "running", then
  "done" or "diverged"; ``architecture``, ``model_name``, ``data_source``,
  ``data_view``, ``train_examples``, ``val_examples``, ``test_examples``,
  ``seconds``, ``host``, ``pid``; ``alignment``: "measured", or "unavailable: why"
  when the engine cannot measure it on the model);
- ``history.csv``: one row per epoch, rewritten (atomically) after every epoch:
  ``epoch`` (from 1), ``step`` (optimizer steps, cumulative), ``wall_time``
  (training seconds, cumulative, without the evaluations and the alignment
  measurement), ``loss`` and the training metrics and method extras (``sg_loss``),
  ``val_*`` (the **validation** split), ``test_*`` (the **test** split),
  ``alignment_k`` (cosine of block k's update with backprop's);
- ``diverged`` when the training loss became NaN or infinite (the run stops);
- ``done``, last.

If the engine refuses the model at its first training step (a ``ValueError`` such as
``CutError``, or ``NotImplementedError``, before any epoch ends), the run is recorded as
not applicable: ``config.json`` gets ``status`` "not_applicable" and the ``reason``,
then ``done``; tables show it like a refusal at compile time.

A run whose training raises (or whose process dies, see
:mod:`experiments.runner.isolation`) is recorded by :func:`record_failure`: ``failed``
(the reason on its first line, then the traceback or the last output), and
``config.json`` with ``status`` "failed" and the ``reason``; no ``done``, so it is not a
result and the next sweep trains it again.

The callbacks run in this order, so that a user callback (``keras.callbacks.TensorBoard``)
sees every scalar: TerminateOnNaN, the clock, the alignment measurement, the test
evaluation, the user's callbacks, early stopping, the history writer.

Example:
    >>> status = train(complete(config), folder)                     # doctest: +SKIP
"""

import hashlib
import math
import os
import pathlib
import re
import socket
import time


import pandas as pd

import credit
import keras
from experiments.runner import configs as configs_lib
from experiments.runner import data as data_lib
from experiments.runner import folders
from experiments.runner import models as models_lib
from experiments.runner.files import read_json, write_atomic, write_csv, write_json

__all__ = ["REFUSALS", "applicability", "compiled_model", "record_failure", "selection",
           "train"]

#: Errors with which the engine refuses a model: at compile time they make a config not
#: applicable; at the first training step (before any epoch ends) too.
REFUSALS = (ValueError, NotImplementedError)


def selection(task):
    """``(validation column, mode)`` that the best epoch and tuning read for a task:
    ``("val_accuracy", "max")`` for classification, ``("val_loss", "min")`` otherwise."""
    return ("val_accuracy", "max") if task == "classification" else ("val_loss", "min")


def _loss_and_metrics(config, data):
    if data.task == "classification":
        return config["loss"] or "sparse_categorical_crossentropy", ["accuracy"]
    return config["loss"] or "mse", ["mse"]


def _method(config, data=None):
    method = {"name": config["method"], "seed": config["seed"], **config["method_config"]}
    if _ordered(config) and "examples" not in method and data is not None:
        # F³ keeps one stored error per training example (see batches(ordered=True)).
        method["examples"] = int(len(data.x_train))
    return method


def _ordered(config):
    """Whether the config's method needs the examples in one order every epoch."""
    return bool(getattr(credit.get(config["method"]), "ordered_only", False))


def compiled_model(config, data):
    """The config's model, built for ``data`` and compiled with its method."""
    model = models_lib.build_model(config["model"], data)
    loss, metrics = _loss_and_metrics(config, data)
    model.compile(optimizer=configs_lib.optimizer(config), loss=loss, metrics=metrics,
                  method=_method(config, data))
    return model


def applicability(config):
    """None if the config can be trained, else the reason it does not apply (a string):
    the model cannot read the data set, or the method's build rejects the model
    (``ValueError``, e.g. credit's ``CutError`` or kickback's scalar-output check).

    Raises:
        ConfigError: the model spec cannot be built for other reasons.
    """
    return check(config)[0]


def check(config):
    """``(reason, plan)``: :func:`applicability`'s reason (None if the config can be
    trained) and the :func:`plan_fingerprint` the run would train with (None where the
    config does not apply or the model is built at its first step).

    Raises:
        ConfigError: the model spec cannot be built for other reasons.
    """
    try:
        data = data_lib.load_data(config)
    except models_lib.NotApplicable as err:
        return f"model {config['model']['type']!r} on {config['dataset']!r}: {err}", None
    # Only the name space: a garbage collection per check would cost more than the
    # check itself in a long sweep (train() collects once per run).
    keras.backend.clear_session(free_memory=False)
    try:
        model = models_lib.build_model(config["model"], data)
    except models_lib.NotApplicable as err:
        return str(err), None
    except Exception as err:
        raise configs_lib.ConfigError(
            f"the model spec {config['model']!r} could not be built for data set "
            f"{config['dataset']!r}: {err}") from err
    loss, metrics = _loss_and_metrics(config, data)
    try:
        model.compile(optimizer=configs_lib.optimizer(config), loss=loss, metrics=metrics,
                      method=_method(config, data))
    except REFUSALS as err:  # the method's build rejected the model (or CutError)
        return str(err), None
    return None, plan_fingerprint(model)


def plan_fingerprint(model):
    """A short hash of what the model's method does on it, or None if it is not bound.

    It covers every weighted layer's rule as :func:`credit.summary` states it (where the
    signal at its output comes from, how the backward pass crosses it), the layers' types
    and the method's whole config, defaults included. A run records it in
    ``config.json`` (``plan``); a finished run whose recorded plan differs from the one
    credit makes for the same config now was trained under other defaults (feedback
    points, a method's options), and :func:`experiments.runner.sweep.run_sweep` says so
    instead of reading it as the result of the current code. Layer names are replaced by
    their position, so that Keras's automatic names (``dense_3``) do not matter.

    Example:
        >>> plan_fingerprint(model)                          # doctest: +SKIP
        '3f9a0c1b2d4e'
    """
    method = getattr(model, "method", None)
    if method is None or method.plan is None:
        return None
    table = credit.summary(model)
    # Every layer's name (points are often parameter-free layers: "activation_4"), by
    # position in the model; whole names only, longest first.
    names = list(credit.graph.unique_names(model).values())
    position = {name: i for i, name in enumerate(names)}
    pattern = re.compile("|".join(
        rf"(?<![\w/#]){re.escape(n)}(?![\w/#])" for n in sorted(names, key=len, reverse=True)))

    def positional(text):
        return pattern.sub(lambda m: f"<layer {position[m.group(0)]}>", str(text))

    # Not the seed: it draws the random matrices, not the plan (and the sweep checks one
    # config per group of seeds).
    config = {k: v for k, v in method.get_config().items() if k not in ("name", "seed")}
    rules = [[positional(v) for v in row]
             for row in table[["type", "block", "signal", "transport"]].itertuples(index=False)]
    text = configs_lib.canonical_json({"method": type(method).__name__,
                                       "config": config,  # names here are the user's
                                       "rules": rules})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
# Callbacks


class _Clock(keras.callbacks.Callback):
    """Cumulative training seconds, without the validation pass."""

    def __init__(self):
        super().__init__()
        self.wall_time = 0.0
        self.validating = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.begin, self.validating = time.perf_counter(), 0.0

    def on_test_begin(self, logs=None):
        self.test_begin = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validating += time.perf_counter() - self.test_begin

    def on_epoch_end(self, epoch, logs=None):
        self.wall_time += time.perf_counter() - self.begin - self.validating


def _finite_loss(logs):
    return math.isfinite(float((logs or {}).get("loss", math.nan)))


class _Alignment(credit.AlignmentCallback):
    """``alignment_k`` in the logs, skipped once the loss is not finite.

    A diagnostic: if the engine cannot measure it on this model (a ``ValueError``
    such as ``CutError``), the run goes on without it and ``unavailable`` says why.
    """

    unavailable = None

    def on_epoch_end(self, epoch, logs=None):
        if self.unavailable is None and _finite_loss(logs):
            try:
                super().on_epoch_end(epoch, logs)
            except (*REFUSALS, TypeError) as err:
                self.unavailable = f"{type(err).__name__}: {err}"


class _TestMetrics(keras.callbacks.Callback):
    """Evaluates the test split at the end of every epoch: ``test_*`` in the logs."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not _finite_loss(logs):
            return
        values = self.model.evaluate(self.x, self.y, batch_size=max(self.batch_size, 256),
                                     verbose=0, return_dict=True)
        for name, value in values.items():
            logs[f"test_{name}"] = float(value)


def _rank(name):
    """Column order: loss, training metrics, val_*, test_*, alignment_*."""
    return (name.startswith("alignment_"), name.startswith("test_"), name.startswith("val_"),
            name not in ("loss", "val_loss", "test_loss"))


class _Recorder(keras.callbacks.Callback):
    """Writes history.csv after every epoch."""

    def __init__(self, folder, clock):
        super().__init__()
        self.folder = pathlib.Path(folder)
        self.clock = clock
        self.rows = []
        self.diverged = False

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not _finite_loss(logs):
            self.diverged = True
        row = {"epoch": epoch + 1, "step": int(self.model.optimizer.iterations.numpy()),
               "wall_time": self.clock.wall_time}
        for name in sorted(logs, key=_rank):  # stable: Keras's order within each group
            if name == "learning_rate":
                continue
            row[name] = float(logs[name])
        self.rows.append(row)
        write_csv(pd.DataFrame(self.rows), self.folder / "history.csv")


# ---------------------------------------------------------------------------
# One run


def _refusal(err, model):
    """Whether ``err``, raised by a run's first training step, is the engine refusing
    the model (not applicable) rather than a failure: credit's ``GraphError`` (a point,
    transport or layer the method cannot handle, named), ``NotImplementedError``, or any
    ``ValueError`` while the method was being bound to the model (its ``build``
    rejected it). Any other ``ValueError`` of a bound method is a failure: tabling it
    as "not applicable" would hide a bug."""
    if isinstance(err, (credit.GraphError, NotImplementedError)):
        return True
    method = getattr(model, "method", None)
    return method is None or method.plan is None


def record_failure(folder, config, reason, details=""):
    """Record a failed run in its folder (created if missing).

    Writes ``failed`` (``reason`` on the first line, then ``details``: a traceback or
    the run's last output) and ``config.json`` with ``status`` "failed" and the
    ``reason`` (keeping what the run had written there). No ``done`` marker: the run is
    not a result, and the next sweep on the folder trains it again.

    Args:
        folder: the run folder.
        config: the run's completed config (used when config.json was not written yet).
        reason: one line: the exception, or how the run's process died.
        details: more lines for the ``failed`` file.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        record = read_json(folder / "config.json")
    except (OSError, ValueError):
        record = dict(config)
    record.update(status=folders.STATUS_FAILED, reason=reason)
    write_json(folder / "config.json", record)
    text = reason.rstrip("\n") + "\n" + (details.rstrip("\n") + "\n" if details else "")
    write_atomic(folder / folders.FAILED, text)


def train(config, folder, callbacks=(), after_fit=None):
    """Train one completed config into ``folder`` (which exists and is empty).

    Args:
        config: a completed config (:func:`experiments.runner.configs.complete`).
        folder: the run folder.
        callbacks: extra Keras callbacks (they see ``val_*``, ``test_*``,
            ``alignment_k`` and the method's extras in the epoch logs).
        after_fit: optional ``fn(model, data, config, folder)`` called after training,
            before ``done`` is written.

    Returns:
        "done" or "diverged".
    """
    folder = pathlib.Path(folder)
    begin = time.perf_counter()
    data = data_lib.load_data(config)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config["seed"])
    model = compiled_model(config, data)
    record = {**config, "status": "running",
              "architecture": models_lib.architecture(model, config["model"]),
              "model_name": config["model"]["type"], "data_source": data.source,
              "data_view": data.view, "train_examples": int(len(data.x_train)),
              "val_examples": int(len(data.x_val)), "test_examples": int(len(data.x_test)),
              "host": socket.gethostname(), "pid": os.getpid(),
              "plan": plan_fingerprint(model)}
    write_json(folder / "config.json", record)
    clock = _Clock()
    recorder = _Recorder(folder, clock)
    chain = [keras.callbacks.TerminateOnNaN(), clock]
    alignment = None
    if config["n_align"] > 0:
        n = min(config["n_align"], len(data.x_train))
        alignment = _Alignment(data.x_train[:n], data.y_train[:n])
        chain.append(alignment)
    chain.append(_TestMetrics(data.x_test, data.y_test, config["batch_size"]))
    chain += list(callbacks)
    if config["patience"] is not None:
        monitor, mode = selection(data.task)
        chain.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                   patience=config["patience"]))
    chain.append(recorder)
    try:
        model.fit(data_lib.batches(data.x_train, data.y_train, config["batch_size"],
                                   config["seed"], ordered=_ordered(config)),
                  epochs=config["epochs"], validation_data=(data.x_val, data.y_val),
                  callbacks=chain, shuffle=False, verbose=0)  # batches() shuffles
    except REFUSALS as err:
        if recorder.rows or not _refusal(err, model):
            raise  # it trained, or an error of a bound method: a failure, not a refusal
        # The engine refused the model at its first step (a method that builds lazily,
        # or credit's GraphError naming what it cannot do): recorded, like a refusal at
        # compile time, as not applicable.
        record.update(status=folders.STATUS_NA, reason=f"{type(err).__name__}: {err}",
                      seconds=round(time.perf_counter() - begin, 3))
        write_json(folder / "config.json", record)
        write_atomic(folder / "done", "")
        return folders.STATUS_NA
    status = folders.STATUS_DIVERGED if recorder.diverged else folders.STATUS_DONE
    if after_fit is not None:
        after_fit(model, data, config, folder)
    record.update(status=status, seconds=round(time.perf_counter() - begin, 3),
                  plan=plan_fingerprint(model))  # bound by now, also when built lazily
    if alignment is not None:
        record["alignment"] = ("measured" if alignment.unavailable is None else
                               f"unavailable: {alignment.unavailable}")
    write_json(folder / "config.json", record)
    if status == folders.STATUS_DIVERGED:
        write_atomic(folder / "diverged", "")
    write_atomic(folder / "done", "")
    return status


