"""Run configs: defaults, canonical form, hashes, grids and checks.

A **run config** is a plain, JSON-serialisable dict. Only ``method``, ``dataset``,
``seed`` and ``epochs`` are required; :data:`DEFAULTS` fills in the rest::

    {"method": "dfa", "dataset": "digits", "seed": 0, "epochs": 20,
     "model": {"type": "mlp", "hidden": [64, 64], "activation": "tanh"},
     "batch_size": 32, "optimizer": "adam", "learning_rate": 0.001}

Keys (all but the first four optional):

- ``method``: a name from ``credit.available()`` or an alias (stored canonical).
- ``dataset``: a name from ``credit.data.available()``.
- ``seed``: seeds Keras/NumPy/Python (``keras.utils.set_random_seed``), the method
  (``credit.get({"name": method, "seed": seed, **method_config})``), the data split,
  the subsample, the validation split and the order of the training batches. Two runs
  with the same seed and data differ only in what their configs say (method, learning
  rate...): same initial weights where the models match, same validation split, same
  batches in the same order -- the basis of the paired comparisons.
- ``epochs``: the most passes over the training split.
- ``model``: a model spec, built by :func:`experiments.runner.models.build_model`.
- ``method_config``: other hyperparameters of the method, e.g. ``{"at": [1]}``.
- ``batch_size``, ``optimizer`` (a Keras optimizer name), ``learning_rate``,
  ``optimizer_options`` (other keyword arguments of the optimizer). A Kolen-Pollack
  run without ``weight_decay`` among them gets
  :data:`KOLEN_POLLACK_WEIGHT_DECAY`: its feedback matrices converge to the weights
  only under weight decay (Akrout et al. 2019); without it the method is feedback
  alignment with a drifting ``B``. Pass ``{"weight_decay": 0}`` to run it without.
- ``loss``: a Keras loss; None means sparse categorical cross-entropy for
  classification, mean squared error for regression.
- ``data_options``: keyword arguments of ``credit.data.load``.
- ``n_train``, ``n_test``: use at most this many examples (a seeded random subset);
  None uses all. The validation split is carved from the ``n_train`` examples.
- ``val_fraction``: the fraction of the training examples held out as the
  **validation split** (seeded; stratified by class for classification). Early
  stopping, the best epoch and hyperparameter tuning read the validation split only;
  the test split is evaluated every epoch and recorded, never selected on.
- ``patience``: early stopping: stop when the validation metric has not improved for
  this many epochs; None trains every epoch.
- ``n_align``: size of the fixed training batch on which ``credit.AlignmentCallback``
  measures ``alignment_k`` every epoch; 0 turns it off.
- ``tag``: free-form; only changes the hash, to keep otherwise identical runs apart.

Example:
    >>> config = complete({"method": "dfa", "dataset": "digits", "seed": 0, "epochs": 3})
    >>> config["method"], config["val_fraction"], len(run_id(config))
    ('direct_feedback_alignment', 0.1, 12)
"""

import copy
import hashlib
import json
import math
import numbers

import numpy as np

import credit
import keras
from credit import data as data_lib
from credit import registry
from experiments.runner import models as models_lib
from experiments.runner.files import json_default

__all__ = ["DEFAULTS", "KOLEN_POLLACK_WEIGHT_DECAY", "REQUIRED", "RESERVED", "ConfigError", "canonical_json", "complete",
           "config_problems", "grid", "optimizer", "run_id", "where"]

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
    "val_fraction": 0.1,
    "patience": None,
    "n_align": 256,
    "tag": None,
}

#: The weight decay of a Kolen-Pollack run whose ``optimizer_options`` name none.
#: In Keras's convention each step multiplies W, and so B, by
#: ``1 - learning_rate * weight_decay``, so ``B - W`` shrinks by ``e`` every
#: ``1 / (learning_rate * weight_decay)`` steps: 1000 steps at the default learning
#: rate of 1e-3 (about the length of a 20-epoch digits run), 100 at 1e-2. Measured on
#: digits, MLP 256-256 tanh, Adam 1e-3, 10 epochs, seed 0: test accuracy 0.956 with
#: and without it; ``||B - W|| / ||W||`` 1.36 against 1.43 (3.0: 0.950, 1.15;
#: 10.0: 0.919, 0.43 -- a decay strong enough to align B in so few steps costs W).
KOLEN_POLLACK_WEIGHT_DECAY = 1.0

#: Keys the runner adds to ``config.json``; a config must not use them.
RESERVED = ("status", "run", "architecture", "model_name", "data_source", "data_view",
            "train_examples", "val_examples", "test_examples", "seconds", "host", "pid",
            "alignment", "reason", "plan")


class ConfigError(ValueError):
    """A sweep's configs are invalid; raised before any training. One line per problem."""


def canonical_json(config):
    """The canonical JSON text of a config: sorted keys, no spaces."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=json_default)


def run_id(config):
    """A short stable hash of a config: the folder name of its run.

    The first 12 hex digits of the SHA-256 of :func:`canonical_json` of
    :func:`complete` ``(config)``, so omitted defaults and method aliases give the same
    id as their explicit, canonical forms.

    Example:
        >>> a = run_id({"method": "dfa", "dataset": "digits", "seed": 0, "epochs": 3})
        >>> a == run_id({"method": "direct_feedback_alignment", "dataset": "digits",
        ...              "seed": 0, "epochs": 3, "learning_rate": 0.001})
        True
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
    model specs get their type's defaults, tuples become lists and whole-valued numbers
    stay ints, so equal configs hash equally. Bad values are left as they are for
    :func:`config_problems` to report.
    """
    if not isinstance(config, dict):
        return config
    out = copy.deepcopy(DEFAULTS)
    out.update(copy.deepcopy(config))
    out["method"] = _canonical_method(out.get("method"))
    options = out.get("optimizer_options")
    if out["method"] == "kolen_pollack" and isinstance(options, dict) \
            and "weight_decay" not in options:
        out["optimizer_options"] = {**options, "weight_decay": KOLEN_POLLACK_WEIGHT_DECAY}
    for key in ("learning_rate", "val_fraction"):
        if isinstance(out.get(key), numbers.Real) and not isinstance(out[key], bool):
            out[key] = float(out[key])
    model = out.get("model")
    if isinstance(model, dict) and model.get("type") in models_lib.MODELS:
        out["model"] = {"type": model["type"],
                        **models_lib.MODELS[model["type"]].defaults, **model}
    return json.loads(json.dumps(out, default=json_default))


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


def optimizer(config):
    """The Keras optimizer of a completed config."""
    opt = keras.optimizers.get(config["optimizer"])
    options = {**opt.get_config(), **config["optimizer_options"],
               "learning_rate": config["learning_rate"]}
    return type(opt).from_config(options)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def where(key, flags):
    """How a config key is named in messages: its flag, or "config key 'key'"."""
    if flags and key in flags:
        return flags[key]
    return f"config key {key!r}"


def config_problems(config, flags=None):
    """Problems of one completed config, as a list of (key, message) pairs.

    Each message names the flag or key, the value received and the fix.
    """
    if not isinstance(config, dict):
        return [(None, f"a run config must be a dict, got {config!r}")]
    problems = []

    def add(key, value, problem, fix):
        problems.append((key, f"{where(key, flags)}: got {value!r}; {problem}. {fix}".rstrip()))

    for key in REQUIRED:
        if key not in config:
            problems.append((key, f"{where(key, flags)} is missing; every run config "
                                  f"needs {', '.join(REQUIRED)}."))
    for key in sorted(set(config) - set(REQUIRED) - set(DEFAULTS)):
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
                # credit.get lists them itself for an unknown hyperparameter.
                fix = "" if "Its hyperparameters:" in str(err) else \
                    f"Hyperparameters of {config['method']!r}: {', '.join(valid)}."
                add("method_config", method_config, str(err).rstrip("."), fix)
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
    fraction = config["val_fraction"]
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 < fraction < 1:
        add("val_fraction", fraction, "the validation fraction must be a number strictly "
            "between 0 and 1 (every run is selected on a validation split)", "Pass e.g. 0.1.")
    patience = config["patience"]
    if patience is not None and (not _is_int(patience) or patience <= 0):
        add("patience", patience, "must be None (no early stopping) or an integer > 0",
            "Pass e.g. 5.")
    if not _is_int(config["n_align"]) or config["n_align"] < 0:
        add("n_align", config["n_align"],
            "must be an integer >= 0 (0 turns the alignment measurement off)", "Pass e.g. 256.")
    for key in ("optimizer_options", "data_options"):
        if not isinstance(config[key], dict):
            add(key, config[key], "must be a dict of keyword arguments", "Pass e.g. {}.")
    if isinstance(config["optimizer_options"], dict) and "learning_rate" in config["optimizer_options"]:
        add("optimizer_options", config["optimizer_options"],
            "the learning rate has its own key", "Use the 'learning_rate' key instead.")
    elif isinstance(config["optimizer_options"], dict) and not any(
            k == "learning_rate" for k, _ in problems):
        try:
            optimizer(config)
        except (ValueError, TypeError) as err:
            add("optimizer", config["optimizer"], f"not a usable Keras optimizer ({err})",
                "Pass e.g. 'adam' or 'sgd', and valid optimizer_options.")
    if config["loss"] is not None:
        try:
            keras.losses.get(config["loss"])
        except (ValueError, TypeError):
            add("loss", config["loss"], "not a Keras loss", "Pass e.g. 'mse', or None.")
    model = config["model"]
    if not isinstance(model, dict) or model.get("type") not in models_lib.MODELS:
        add("model", model, "a model spec must be a dict with a registered 'type'",
            f"Use one of the types {sorted(models_lib.MODELS)}, e.g. "
            "{\"type\": \"mlp\", \"hidden\": [64]}.")
    elif models_lib.MODELS[model["type"]].check is not None:
        for problem in models_lib.MODELS[model["type"]].check(model):
            add("model", model, problem, "Fix the model spec.")
    return problems
