"""The experiment runner: run configs -> one folder per run, resumable.

A **run config** is a plain, JSON-serialisable dict. Only ``method``, ``dataset``,
``seed`` and ``epochs`` are required; :data:`DEFAULTS` fills in the rest::

    {"method": "dfa", "dataset": "digits", "seed": 0, "epochs": 20,
     "model": {"type": "mlp", "hidden": [64, 64], "activation": "tanh"},
     "batch_size": 32, "optimizer": "adam", "learning_rate": 0.001}

Keys (all but the first four optional):

- ``method``: a name from ``credit.available()`` or an alias (stored canonical).
- ``dataset``: a name from ``credit.data.available()``.
- ``seed``: seeds Keras/NumPy/Python (``keras.utils.set_random_seed``), the method
  (``credit.get({"name": method, "seed": seed, **method_config})``), the data split
  and the subsample.
- ``epochs``: passes over the (subsampled) training set.
- ``model``: a model spec, built by :func:`build_model` (see :data:`MODELS`).
- ``method_config``: other hyperparameters of the method, e.g. ``{"at": [1]}``.
- ``batch_size``, ``optimizer`` (a Keras optimizer name), ``learning_rate``,
  ``optimizer_options`` (other keyword arguments of the optimizer).
- ``loss``: a Keras loss; None means sparse categorical cross-entropy for
  classification, mean squared error for regression.
- ``data_options``: keyword arguments of ``credit.data.load`` (e.g. ``n_train`` of a
  synthetic task).
- ``n_train``, ``n_test``: use at most this many examples (a seeded random subset);
  None uses all.
- ``n_align``: size of the fixed training batch (the first ``n_align`` training
  examples) on which ``credit.AlignmentCallback`` measures ``alignment_k`` every epoch;
  0 turns it off.
- ``tag``: free-form (a string, number or dict); only changes the hash, to keep
  otherwise identical runs apart.

Each run gets the folder ``<out>/<run_id(config)>``: the first 12 hex digits of the
SHA-256 of the canonical JSON of the completed config (DomainBed style), holding

- ``config.json``: the config plus bookkeeping keys (:data:`RESERVED`): ``status``
  ("running", "done" or "diverged"), ``architecture``, ``data_source``,
  ``train_examples``, ``test_examples``, ``seconds``;
- ``history.csv``: one row per epoch: ``epoch`` (from 1), ``step`` (optimizer steps,
  cumulative), ``wall_time`` (training seconds, cumulative, excluding the per-epoch
  test evaluation and alignment measurement), ``loss``, ``accuracy`` or ``mse``, the
  method's extras (e.g. ``sg_loss``), ``val_*`` (computed on the **test** split, passed
  as ``validation_data``), ``alignment_k`` (cosine of block k's update with backprop's);
- ``diverged``: a marker, when the training loss became NaN or infinite
  (``keras.callbacks.TerminateOnNaN`` stops the run);
- ``done``: a marker, written last.

Every file is written atomically (a temporary file in the same folder, then
``os.replace``). A sweep skips folders that have ``done``; a folder without it (an
interrupted run) is deleted and run again from scratch, so re-running the same sweep
resumes it. A method that does not apply to a model (kickback on a ten-class task: its
``build`` raises ValueError) is skipped with a note and gets no folder. Two sweeps must
not write into the same folder at the same time.

For other experiments: :func:`register_model` adds model types (the built-in ``mlp``
covers linear, deep linear, tanh/ReLU and batch-normalised MLPs:
``{"type": "mlp", "hidden": [100] * 10, "activation": "linear"}``); ``method_config``
places synthesizers (``{"at": [3]}``); ``run_sweep(..., callbacks=fn(config) -> list)``
adds Keras callbacks; ``run_sweep(..., after_fit=fn(model, dataset, config, folder))``
writes extra files of a run (weights, representations) before its ``done`` marker;
:func:`annotate` and :func:`display` put the not-applicable runs into the tables.

Example:
    >>> configs = grid(methods=["backprop", "dfa"], datasets=["digits"], seeds=[0, 1],
    ...                epochs=5)                                        # doctest: +SKIP
    >>> runs = run_sweep(configs, "results/demo/runs")                  # doctest: +SKIP
    >>> df = credit.results.load_runs("results/demo/runs")              # doctest: +SKIP
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import copy  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import numbers  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import credit  # noqa: E402
import keras  # noqa: E402
from credit import data as data_lib  # noqa: E402
from credit import registry  # noqa: E402
from credit import results as results_lib  # noqa: E402

__all__ = [
    "DEFAULTS",
    "MODELS",
    "RESERVED",
    "ConfigError",
    "RunResult",
    "annotate",
    "build_model",
    "canonical_json",
    "complete",
    "display",
    "grid",
    "load_data",
    "register_model",
    "run_id",
    "run_sweep",
    "validate",
    "write_atomic",
]

REQUIRED = ("method", "dataset", "seed", "epochs")

#: Values of the optional config keys.
DEFAULTS = {
    "model": {"type": "mlp", "hidden": [256, 256], "activation": "tanh"},
    "method_config": {},
    "batch_size": 64,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "optimizer_options": {},
    "loss": None,
    "data_options": {},
    "n_train": None,
    "n_test": None,
    "n_align": 256,
    "tag": None,
}

#: Keys the runner adds to ``config.json``; a config must not use them.
RESERVED = ("status", "run", "architecture", "data_source", "train_examples",
            "test_examples", "seconds")

_STATUS_DONE, _STATUS_DIVERGED, _STATUS_NA = "done", "diverged", "not_applicable"


class ConfigError(ValueError):
    """A sweep's configs are invalid; raised before any training. One line per problem."""


@dataclasses.dataclass
class RunResult:
    """What :func:`run_sweep` did with one config.

    Attributes:
        config: the completed, canonical config.
        run: its hash (the folder name), or None when not applicable.
        folder: the run folder (a :class:`pathlib.Path`), or None when not applicable.
        status: "done", "diverged" or "not_applicable".
        cached: True if the run was finished by an earlier sweep and not retrained.
        reason: why the method does not apply (status "not_applicable"), else None.
    """

    config: dict
    run: str | None
    folder: pathlib.Path | None
    status: str
    cached: bool = False
    reason: str | None = None


# ---------------------------------------------------------------------------
# Files


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_atomic(path, content):
    """Write ``content`` (str or bytes) to ``path`` atomically.

    The content goes to a temporary file in the same folder, which is flushed, synced
    and then renamed over ``path`` with ``os.replace``: readers see the old file or the
    new one, never a partial one.
    """
    path = pathlib.Path(path)
    mode = "wb" if isinstance(content, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, mode) as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_table(table, folder, name, floatfmt=".3f"):
    """Write ``table`` as ``<name>.csv`` and ``<name>.md`` (markdown) in ``folder``, atomically."""
    folder = pathlib.Path(folder)
    write_atomic(folder / f"{name}.csv", table.to_csv(index=False))
    write_atomic(folder / f"{name}.md",
                 results_lib.to_markdown(table, floatfmt=floatfmt) + "\n")


def _write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{value!r} of type {type(value).__name__} is not JSON-serialisable")


# ---------------------------------------------------------------------------
# Configs


def canonical_json(config):
    """The canonical JSON text of a config: sorted keys, no spaces."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)


def run_id(config):
    """A short stable hash of a config: the folder name of its run.

    The first 12 hex digits of the SHA-256 of :func:`canonical_json` of
    :func:`complete` ``(config)``, so omitted defaults and method aliases give the same
    id as their explicit, canonical forms.
    """
    return hashlib.sha256(canonical_json(complete(config)).encode()).hexdigest()[:12]


def _canonical_method(name):
    if not isinstance(name, str):
        return name
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return registry.aliases().get(key, name)


def complete(config):
    """Return a copy of ``config`` with defaults filled in and canonical values.

    Method names become canonical (``"dfa"`` -> ``"direct_feedback_alignment"``),
    model specs get their defaults (see :func:`register_model`), tuples become lists
    and whole-valued numbers stay ints, so equal configs hash equally. Bad values are
    left as they are for :func:`validate` to report.
    """
    if not isinstance(config, dict):
        return config
    out = copy.deepcopy(DEFAULTS)
    out.update(copy.deepcopy(config))
    out["method"] = _canonical_method(out.get("method"))
    if isinstance(out.get("learning_rate"), numbers.Real) and not isinstance(out["learning_rate"], bool):
        out["learning_rate"] = float(out["learning_rate"])
    model = out.get("model")
    if isinstance(model, dict) and model.get("type") in MODELS:
        out["model"] = {"type": model["type"], **MODELS[model["type"]].defaults, **model}
    return json.loads(json.dumps(out, default=_json_default))


def grid(methods, datasets, seeds, **common):
    """The configs of methods x datasets x seeds, ordered by data set, seed, method.

    Args:
        methods, datasets, seeds: lists of names / seeds.
        **common: other config keys, the same for every run.

    Example:
        >>> len(grid(["backprop", "fa"], ["digits"], [0, 1, 2], epochs=5))
        6
    """
    return [{"method": m, "dataset": d, "seed": s, **common}
            for d in datasets for s in seeds for m in methods]


# ---------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class ModelType:
    build: callable
    defaults: dict
    check: callable = None


#: Model types by name: ``MODELS[type].build(spec, dataset)`` -> a credit model.
MODELS = {}


def register_model(name, defaults=None, check=None):
    """Register a model builder ``fn(spec, dataset) -> credit model`` under ``name``.

    The builder gets the completed spec (``defaults`` updated with the config's
    ``model`` dict) and the :class:`credit.data.Dataset`, and returns an uncompiled
    ``credit.Sequential`` or ``credit.Model`` with a ``keras.Input``. ``check(spec)``
    returns a list of problems (strings), reported before any training.

    Example:
        >>> @register_model("linear", defaults={"depth": 1})          # doctest: +SKIP
        ... def linear(spec, ds): ...
    """

    def decorate(fn):
        MODELS[name] = ModelType(fn, dict(defaults or {}), check)
        return fn

    return decorate


def _check_mlp(spec):
    problems = []
    hidden = spec.get("hidden")
    if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        problems.append(f"'hidden' must be a list of positive integers (layer sizes), got "
                        f"{hidden!r}; e.g. [256, 256]")
    for key in ("activation", "output_activation"):
        value = spec.get(key)
        if key == "output_activation" and value is None:
            continue
        try:
            keras.activations.get(value)
        except (ValueError, TypeError):
            problems.append(f"{key!r} must be a Keras activation name, got {value!r}; "
                            "e.g. 'tanh' or 'relu'")
    if not isinstance(spec.get("batch_norm"), bool):
        problems.append(f"'batch_norm' must be true or false, got {spec.get('batch_norm')!r}")
    unknown = sorted(set(spec) - {"type", "hidden", "activation", "output_activation",
                                  "batch_norm"})
    if unknown:
        problems.append(f"unknown key(s) {unknown}; an 'mlp' spec takes hidden, activation, "
                        "output_activation, batch_norm")
    return problems


@register_model("mlp", defaults={"hidden": [256, 256], "activation": "tanh",
                                 "output_activation": None, "batch_norm": False},
                check=_check_mlp)
def mlp(spec, dataset):
    """A multilayer perceptron: Dense hidden layers, then the output layer.

    Spec: ``hidden`` (sizes), ``activation`` of the hidden layers, ``batch_norm``
    (Dense -> BatchNormalization -> activation), ``output_activation`` (None: softmax
    for classification, linear for regression). Inputs with more than one axis are
    flattened first. The output has ``num_classes`` units, or as many as the targets.
    """
    layers = [keras.Input(dataset.x_train.shape[1:])]
    if len(dataset.x_train.shape) > 2:
        layers.append(keras.layers.Flatten())
    for units in spec["hidden"]:
        if spec["batch_norm"]:
            layers += [keras.layers.Dense(units), keras.layers.BatchNormalization(),
                       keras.layers.Activation(spec["activation"])]
        else:
            layers.append(keras.layers.Dense(units, activation=spec["activation"]))
    layers.append(keras.layers.Dense(_output_units(dataset),
                                     activation=_output_activation(spec, dataset)))
    return credit.Sequential(layers)


def _output_units(dataset):
    if dataset.task == "classification":
        return int(dataset.num_classes)
    return int(np.prod(dataset.y_train.shape[1:])) if dataset.y_train.ndim > 1 else 1


def _output_activation(spec, dataset):
    if spec.get("output_activation") is not None:
        return spec["output_activation"]
    return "softmax" if dataset.task == "classification" else None


def build_model(spec, dataset):
    """Build the (uncompiled) credit model of ``spec`` for ``dataset``."""
    return MODELS[spec["type"]].build(spec, dataset)


def _architecture(model):
    sizes = [str(int(np.prod(model.inputs[0].shape[1:])))]
    sizes += [str(layer.units) for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return "-".join(sizes)


# ---------------------------------------------------------------------------
# Data


_DATA_CACHE = {}
_DATA_CACHE_SIZE = 2


def load_data(config):
    """The data set of a (completed) config: ``credit.data.load`` + seeded subsample.

    Cached for the last two (dataset, seed, options) keys, so a sweep ordered by data set
    and seed loads each once.
    """
    key = canonical_json([config["dataset"], config["seed"], config["data_options"],
                          config["n_train"], config["n_test"]])
    if key in _DATA_CACHE:
        _DATA_CACHE[key] = _DATA_CACHE.pop(key)  # most recently used last
        return _DATA_CACHE[key]
    ds = data_lib.load(config["dataset"], seed=config["seed"], **config["data_options"])
    rng = np.random.default_rng([config["seed"], 1])
    replace = {}
    for split, n in (("train", config["n_train"]), ("test", config["n_test"])):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if n is not None and n < len(x):
            index = np.sort(rng.choice(len(x), size=n, replace=False))
            replace[f"x_{split}"], replace[f"y_{split}"] = x[index], y[index]
    if replace:
        ds = dataclasses.replace(ds, **replace)
    _DATA_CACHE[key] = ds
    while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
        _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
    return ds


# ---------------------------------------------------------------------------
# Validation


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _where(key, config, flags):
    if flags and key in flags:
        return flags[key]
    return f"config key {key!r}"


def _config_problems(config, flags):
    """Problems of one completed config, as (key, message) pairs."""
    if not isinstance(config, dict):
        return [(None, f"a run config must be a dict, got {config!r}")]
    problems = []

    def add(key, value, problem, fix):
        problems.append((key, f"{_where(key, config, flags)}: got {value!r}; {problem}. {fix}".rstrip()))

    for key in REQUIRED:
        if key not in config:
            problems.append((key, f"{_where(key, config, flags)} is missing; every run config "
                                  f"needs {', '.join(REQUIRED)}."))
    unknown = sorted(set(config) - set(REQUIRED) - set(DEFAULTS))
    for key in unknown:
        fix = ("it is written by the runner; remove it" if key in RESERVED else
               f"valid keys: {', '.join(REQUIRED + tuple(DEFAULTS))}")
        problems.append((key, f"unknown config key {key!r}; {fix}."))
    if problems:
        return problems

    method_config = config["method_config"]
    if not isinstance(method_config, dict):
        add("method_config", method_config, "must be a dict of method hyperparameters",
            "Pass e.g. {} or {\"scale\": 0.1}.")
        method_config = {}
    if not isinstance(config["method"], str):
        add("method", config["method"], "a method is given by its name",
            f"Choose from {', '.join(credit.available())}.")
    else:
        try:
            credit.get(config["method"])
        except (ValueError, TypeError) as err:
            add("method", config["method"], str(err).rstrip("."), "")
        else:
            try:
                credit.get({"name": config["method"], **method_config, "seed": 0})
            except (ValueError, TypeError) as err:
                valid = list(credit.get(config["method"]).get_config())[1:]
                add("method_config", method_config, str(err).rstrip("."),
                    f"Hyperparameters of {config['method']!r}: {', '.join(valid)}.")
    if config["dataset"] not in data_lib.available():
        add("dataset", config["dataset"], "not a data set of credit.data",
            f"Choose from {', '.join(data_lib.available())}.")
    if not _is_int(config["seed"]) or config["seed"] < 0:
        add("seed", config["seed"], "a seed must be an integer >= 0", "Pass e.g. 0.")
    for key in ("epochs", "batch_size"):
        if not _is_int(config[key]) or config[key] <= 0:
            add(key, config[key], f"{key} must be an integer > 0", "Pass e.g. 10.")
    lr = config["learning_rate"]
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        add("learning_rate", lr, "the learning rate must be a finite number > 0",
            "Pass e.g. 0.001.")
    for key in ("n_train", "n_test"):
        value = config[key]
        if value is not None and (not _is_int(value) or value <= 0):
            add(key, value, f"{key} must be None (all examples) or an integer > 0",
                "Pass e.g. 1000.")
    if not _is_int(config["n_align"]) or config["n_align"] < 0:
        add("n_align", config["n_align"],
            "must be an integer >= 0 (0 turns the alignment measurement off)", "Pass e.g. 256.")
    for key in ("optimizer_options", "data_options"):
        if not isinstance(config[key], dict):
            add(key, config[key], "must be a dict of keyword arguments", "Pass e.g. {}.")
    if isinstance(config["optimizer_options"], dict) and "learning_rate" in config["optimizer_options"]:
        add("optimizer_options", config["optimizer_options"],
            "the learning rate has its own key", "Use the 'learning_rate' key instead.")
    else:
        try:
            _optimizer(config)
        except (ValueError, TypeError) as err:
            add("optimizer", config["optimizer"], f"not a usable Keras optimizer ({err})",
                "Pass e.g. 'adam' or 'sgd', and valid optimizer_options.")
    if config["loss"] is not None:
        try:
            keras.losses.get(config["loss"])
        except (ValueError, TypeError):
            add("loss", config["loss"], "not a Keras loss", "Pass e.g. 'mse', or None.")
    model = config["model"]
    if not isinstance(model, dict) or model.get("type") not in MODELS:
        add("model", model, "a model spec must be a dict with a registered 'type'",
            f"Use one of the types {sorted(MODELS)}, e.g. {{\"type\": \"mlp\", \"hidden\": [64]}}.")
    elif MODELS[model["type"]].check is not None:
        for problem in MODELS[model["type"]].check(model):
            add("model", model, problem, "Fix the model spec.")
    return problems


def _optimizer(config):
    optimizer = keras.optimizers.get(config["optimizer"])
    options = {**optimizer.get_config(), **config["optimizer_options"],
               "learning_rate": config["learning_rate"]}
    return type(optimizer).from_config(options)


def _loss_and_metrics(config, dataset):
    if dataset.task == "classification":
        return config["loss"] or "sparse_categorical_crossentropy", ["accuracy"]
    return config["loss"] or "mse", ["mse"]


def _compiled_model(config, dataset):
    model = build_model(config["model"], dataset)
    loss, metrics = _loss_and_metrics(config, dataset)
    model.compile(optimizer=_optimizer(config), loss=loss, metrics=metrics,
                  method=_method(config))
    return model


def _method(config):
    return {"name": config["method"], "seed": config["seed"], **config["method_config"]}


def _applicability(config, dataset):
    """None if the method applies to the config's model, else the reason (a string)."""
    try:
        model = build_model(config["model"], dataset)
    except Exception as err:
        raise ConfigError(f"the model spec {config['model']!r} could not be built for data "
                          f"set {config['dataset']!r}: {err}") from err
    loss, metrics = _loss_and_metrics(config, dataset)
    try:
        model.compile(optimizer=_optimizer(config), loss=loss, metrics=metrics,
                      method=_method(config))
    except ValueError as err:  # the method's build rejected the model (or CutError)
        return str(err)
    return None


def validate(configs, flags=None):
    """Check a whole sweep before any training; return the completed configs.

    Checks every key of every config (method names via ``credit.get``, data set names
    via ``credit.data.available()``, epochs > 0, ...), then loads each data set once and
    builds each (method, model, data set) once to find the methods that do not apply.

    Args:
        configs: a list of run configs.
        flags: optional ``{config key: name shown in messages}``, e.g.
            ``{"epochs": "--epochs"}`` for a command line; default "config key 'epochs'".

    Returns:
        ``(completed configs without duplicates, {run_id: reason})`` for the runs whose
        method does not apply.

    Raises:
        ConfigError: listing every problem, one per line, each naming the flag or key,
            the value received and the fix.
    """
    if isinstance(configs, dict) or not isinstance(configs, (list, tuple)):
        raise ConfigError(f"configs must be a list of dicts, got {type(configs).__name__}; "
                          "wrap a single config in a list.")
    if not configs:
        raise ConfigError("the sweep has no runs: pass at least one config (method, "
                          "dataset, seed, epochs).")
    messages = []
    completed, seen = [], set()
    for config in configs:
        try:
            config = complete(config)
        except TypeError as err:
            messages.append(f"a run config must be JSON-serialisable: {err}.")
            continue
        for _, message in _config_problems(config, flags):
            if message not in messages:
                messages.append(message)
        if not messages:
            key = run_id(config)
            if key not in seen:
                seen.add(key)
                completed.append(config)
    if messages:
        raise ConfigError("\n".join(messages))

    not_applicable, checked = {}, {}
    # In reverse, so that the data sets of the first runs are the last loaded (cached).
    for config in reversed(completed):
        key = canonical_json({k: config[k] for k in ("method", "method_config", "dataset",
                                                     "data_options", "model", "loss")})
        if key not in checked:
            try:
                dataset = load_data(config)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{_where('dataset', config, flags)}: could not load "
                                  f"{config['dataset']!r} with data_options "
                                  f"{config['data_options']!r}: {err}") from err
            keras.backend.clear_session()
            checked[key] = _applicability(config, dataset)
        if checked[key] is not None:
            not_applicable[run_id(config)] = checked[key]
    return completed, not_applicable


# ---------------------------------------------------------------------------
# One run


class _Recorder(keras.callbacks.Callback):
    """Writes history.csv after every epoch; measures training time and alignment."""

    def __init__(self, folder, alignment=None):
        super().__init__()
        self.folder = pathlib.Path(folder)
        self.alignment = alignment
        self.rows = []
        self.diverged = False

    def set_model(self, model):
        super().set_model(model)
        if self.alignment is not None:
            self.alignment.set_model(model)

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.excluded = 0.0

    def on_test_begin(self, logs=None):
        self.test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.excluded += time.perf_counter() - self.test_start

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        wall_time = time.perf_counter() - self.start - self.excluded
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            self.diverged = True
        if self.alignment is not None and not self.diverged:  # NaN weights: no alignment
            begin = time.perf_counter()
            self.alignment.on_epoch_end(epoch, logs)
            self.excluded += time.perf_counter() - begin
        row = {"epoch": epoch + 1, "step": int(self.model.optimizer.iterations.numpy()),
               "wall_time": wall_time}
        # Columns: loss, training metrics and method extras, val_loss, val_*, alignment_*.
        def rank(name):
            return (name.startswith("alignment_"), name.startswith("val_"),
                    name not in ("loss", "val_loss"))

        for name in sorted(logs, key=rank):  # stable: Keras's order within each group
            row[name] = float(logs[name])
        self.rows.append(row)
        buffer = io.StringIO()
        pd.DataFrame(self.rows).to_csv(buffer, index=False)
        write_atomic(self.folder / "history.csv", buffer.getvalue())


def _train(config, folder, callbacks=(), after_fit=None):
    """Train one run into ``folder`` (which exists and is empty); return its status."""
    begin = time.perf_counter()
    dataset = load_data(config)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config["seed"])
    model = _compiled_model(config, dataset)
    record = {**config, "status": "running", "architecture": _architecture(model),
              "data_source": dataset.source, "train_examples": int(len(dataset.x_train)),
              "test_examples": int(len(dataset.x_test))}
    _write_json(folder / "config.json", record)
    alignment = None
    if config["n_align"] > 0:
        n = min(config["n_align"], len(dataset.x_train))
        alignment = credit.AlignmentCallback(dataset.x_train[:n], dataset.y_train[:n])
    recorder = _Recorder(folder, alignment)
    model.fit(dataset.x_train, dataset.y_train, epochs=config["epochs"],
              batch_size=config["batch_size"], validation_data=(dataset.x_test, dataset.y_test),
              callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks, recorder],
              shuffle=True, verbose=0)
    status = _STATUS_DIVERGED if recorder.diverged else _STATUS_DONE
    if after_fit is not None:
        after_fit(model, dataset, config, folder)
    record.update(status=status, seconds=round(time.perf_counter() - begin, 3))
    _write_json(folder / "config.json", record)
    if status == _STATUS_DIVERGED:
        write_atomic(folder / "diverged", "")
    write_atomic(folder / "done", "")
    return status


def _finished_status(folder):
    if (folder / "diverged").exists():
        return _STATUS_DIVERGED
    try:
        with open(folder / "config.json") as f:
            return json.load(f).get("status", _STATUS_DONE)
    except (OSError, ValueError):
        return _STATUS_DONE


# ---------------------------------------------------------------------------
# The sweep


def run_sweep(configs, out, *, flags=None, verbose=1, callbacks=None, after_fit=None):
    """Run every config into ``out/<run_id>/``, skipping finished runs.

    Validates the whole sweep first (:func:`validate`); nothing is trained if any
    config is bad. Then, for each config in order: a folder with ``done`` is skipped
    (``cached``); a folder without it is deleted and the run trained from scratch; a run
    whose loss becomes NaN or infinite stops and is recorded as diverged, and the sweep
    goes on; a method that does not apply is skipped with a note (no folder).

    Args:
        configs: a list of run configs (see the module docstring).
        out: the folder of the run folders; created if missing.
        flags: names of the config keys in error messages (see :func:`validate`).
        verbose: 1 shows a progress bar over runs (``keras.utils.Progbar``), 0 nothing.
        callbacks: optional ``fn(config) -> list of keras callbacks`` added to each fit.
        after_fit: optional ``fn(model, dataset, config, folder)`` called after training,
            before ``done`` is written: extra files of the run go here (write them with
            :func:`write_atomic`).

    Returns:
        One :class:`RunResult` per distinct config, in order.

    Raises:
        ConfigError: if a config is invalid (before any training).
    """
    completed, not_applicable = validate(configs, flags)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bar = keras.utils.Progbar(len(completed), unit_name="run", verbose=verbose)
    results = []
    for i, config in enumerate(completed):
        key = run_id(config)
        if key in not_applicable:
            results.append(RunResult(config, None, None, _STATUS_NA, reason=not_applicable[key]))
        else:
            folder = out / key
            if (folder / "done").exists():
                results.append(RunResult(config, key, folder, _finished_status(folder), cached=True))
            else:
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir()
                try:
                    status = _train(config, folder, callbacks(config) if callbacks else (), after_fit)
                except Exception as err:
                    err.add_note(f"while training run {key} ({folder}) with config "
                                 f"{canonical_json(config)}")
                    raise
                results.append(RunResult(config, key, folder, status))
        bar.update(i + 1)
    return results


# ---------------------------------------------------------------------------
# Tables


def _short_reason(reason):
    first = reason.split(";")[0].split(". ")[0]
    if " (" in first:
        first = first[:first.index(" (")]
    return first.strip().rstrip(".")


def annotate(table, results):
    """Add the not-applicable runs of a sweep to a table from ``credit.results``.

    Every (method, dataset) pair that was skipped because the method does not apply and
    has no row gets one, with NaN numbers, zero counts and the reason in a ``note``
    column (the other rows get ""). Use :func:`display` for the markdown view.

    Args:
        table: ``credit.results.accuracy_table`` or ``convergence_table`` output.
        results: the :class:`RunResult` list of :func:`run_sweep`.

    Returns:
        A new table, sorted by dataset then method.
    """
    table = table.copy()
    table["note"] = ""
    reasons = {}
    for r in results:
        if r.status == _STATUS_NA:
            reasons.setdefault((r.config["method"], r.config["dataset"]), _short_reason(r.reason))
    rows = []
    for (method, dataset), reason in reasons.items():
        mask = (table["method"] == method) & (table["dataset"] == dataset)
        note = f"not applicable: {reason}"
        if mask.any():
            table.loc[mask, "note"] = note
            continue
        row = {c: math.nan for c in table.columns}
        row.update(method=method, dataset=dataset, note=note)
        same = table[table["dataset"] == dataset]
        for column in ("metric", "target"):  # per data set, not per method
            if column in same and len(same):
                row[column] = same[column].iloc[0]
        for c in ("n", "n_reached", "diverged"):
            if c in table.columns:
                row[c] = 0
        if "reached" in table.columns:
            row["reached"] = "0/0"
        rows.append(row)
    if rows:
        extra = pd.DataFrame(rows, columns=table.columns)
        table = pd.concat([table, extra], ignore_index=True) if len(table) else extra
        for c in ("n", "n_reached", "diverged"):
            if c in table.columns:
                table[c] = table[c].astype("int64")
    return table.sort_values(["dataset", "method"], kind="stable").reset_index(drop=True)


def display(table, value_column="final_mean"):
    """A copy for markdown: skipped rows show ``n/a (not applicable: ...)`` in
    ``value_column``, and the ``note`` column is dropped."""
    if "note" not in table.columns:
        return table
    shown = table.copy()
    skipped = shown["note"].str.startswith("not applicable") & shown[value_column].isna()
    if skipped.any():
        shown[value_column] = shown[value_column].astype(object)
        shown.loc[skipped, value_column] = "n/a (" + shown.loc[skipped, "note"] + ")"
    return shown.drop(columns=["note"])
