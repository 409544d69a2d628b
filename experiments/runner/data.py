"""The runner's data step: load, subsample, carve the validation split, give the view.

:func:`load_data` turns a completed run config into :class:`Splits`: ``credit.data.load``
(train and test), a seeded subsample (``n_train``, ``n_test``), a seeded validation
split carved from the training examples (``val_fraction``; stratified by class for
classification), and the view of the inputs that the config's model type reads
(:func:`view`). :func:`batches` gives the training batches in a seeded order that does
not depend on the method, so runs with the same seed see the same batches.

Views, until ``credit.data`` ships image and sequence data sets of its own:

- ``image``: ``mnist`` (784 pixels) -> 28x28x1, ``digits`` (64) -> 8x8x1; inputs that
  already have 2 or 3 spatial axes are kept (a channel axis added if missing).
- ``sequence``: ``mnist`` read row by row -> 28 steps of 28 features, ``digits`` -> 8
  steps of 8; image inputs (N, H, W, C) -> H steps of W*C features; (N, T, F) inputs are
  kept; integer inputs of shape (N, T) are tokens.
- ``vector``: as loaded.

Example:
    >>> from experiments.runner.configs import complete
    >>> s = load_data(complete({"method": "bp", "dataset": "digits", "seed": 0,
    ...                         "epochs": 1, "model": {"type": "lstm"}}))
    >>> s.x_train.shape[1:], len(s.x_val), len(s.x_test), s.view
    ((8, 8), 142, 360, 'sequence: 8 steps of 8 features (rows of the image)')
"""

import dataclasses

import numpy as np
import tensorflow as tf

from credit import data as data_lib
from experiments.runner.configs import canonical_json
from experiments.runner.models import MODELS, NotApplicable

__all__ = ["IMAGE_SHAPES", "Splits", "batches", "load_data", "split_validation", "view"]

#: Image shapes of the flat image data sets of ``credit.data``.
IMAGE_SHAPES = {"mnist": (28, 28, 1), "digits": (8, 8, 1)}


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Train, validation and test arrays of one run, in the model's view.

    Attributes:
        name, task, num_classes, source: as in ``credit.data.Dataset``.
        x_train, y_train: the training split (what the model is fitted on).
        x_val, y_val: the validation split (early stopping, best epoch, tuning).
        x_test, y_test: the test split (recorded, never selected on).
        view: how the inputs were shaped for the model, in words.
    """

    name: str
    task: str
    num_classes: int | None
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    view: str = "vector"


def split_validation(y, fraction, seed, stratify):
    """Indices ``(train, val)`` of a seeded validation split of ``len(y)`` examples.

    With ``stratify``, each class gives ``round(fraction * its count)`` examples (at
    least one for a class of two or more), so the class proportions match.

    Example:
        >>> y = np.array([0] * 8 + [1] * 2)
        >>> train, val = split_validation(y, 0.5, seed=0, stratify=True)
        >>> sorted(y[val].tolist()), len(train)
        ([0, 0, 0, 0, 1], 5)
    """
    n = len(y)
    rng = np.random.default_rng([seed, 2])
    if stratify:
        val = []
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            k = int(round(fraction * len(members)))
            if k == 0 and len(members) >= 2:
                k = 1
            val.append(rng.choice(members, size=min(k, len(members) - 1), replace=False))
        val = np.concatenate(val) if val else np.array([], dtype=int)
    else:
        val = rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)
    val = np.sort(val.astype(int))
    train = np.setdiff1d(np.arange(n), val)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"val_fraction={fraction} leaves {len(train)} training and "
                         f"{len(val)} validation examples of {n}; pass a fraction that "
                         "leaves both non-empty, e.g. 0.1, or more examples (n_train).")
    return train, val


def view(kind, name, x):
    """The inputs ``x`` of data set ``name`` shaped for a model reading ``kind``.

    Returns:
        ``(x in the view, description)``.

    Raises:
        NotApplicable: the data cannot be read that way (the message says why).
    """
    shape = x.shape[1:]
    if kind == "vector":
        return x, "vector" if x.ndim == 2 else f"{'x'.join(map(str, shape))} (flattened by the model)"
    if x.ndim == 2 and name in IMAGE_SHAPES and np.prod(IMAGE_SHAPES[name]) == shape[0]:
        x = x.reshape((len(x),) + IMAGE_SHAPES[name])
    if kind == "image":
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim == 4:
            return x, f"image: {'x'.join(map(str, x.shape[1:]))}"
        raise NotApplicable(f"the model reads images, but data set {name!r} has vector "
                            f"inputs ({_size(shape)}); use an 'mlp' for it")
    if kind == "sequence":
        if x.ndim == 4:
            x = x.reshape(x.shape[:2] + (-1,))
            return x, (f"sequence: {x.shape[1]} steps of {x.shape[2]} features "
                       "(rows of the image)")
        if x.ndim == 3:
            return x, f"sequence: {x.shape[1]} steps of {x.shape[2]} features"
        if x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
            return x, f"sequence: {x.shape[1]} tokens"
        raise NotApplicable(f"the model reads sequences, but data set {name!r} has vector "
                            f"inputs ({_size(shape)}); use an 'mlp' for it")
    raise ValueError(f"unknown view {kind!r}; use 'vector', 'image' or 'sequence'")


def _size(shape):
    return f"{shape[0]} features" if len(shape) == 1 else f"shape {tuple(shape)}"


_CACHE = {}
_CACHE_SIZE = 2


def load_data(config):
    """The :class:`Splits` of a completed config.

    Cached for the last two (dataset, seed, options, view) keys, so a sweep ordered by
    data set and seed loads each once.

    Raises:
        NotApplicable: the config's model cannot read the data set.
    """
    kind = MODELS[config["model"]["type"]].inputs
    key = canonical_json([config["dataset"], config["seed"], config["data_options"],
                          config["n_train"], config["n_test"], config["val_fraction"], kind])
    if key in _CACHE:
        _CACHE[key] = _CACHE.pop(key)  # most recently used last
        return _CACHE[key]
    ds = data_lib.load(config["dataset"], seed=config["seed"], **config["data_options"])
    rng = np.random.default_rng([config["seed"], 1])
    arrays = {}
    for split, n in (("train", config["n_train"]), ("test", config["n_test"])):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if n is not None and n < len(x):
            index = np.sort(rng.choice(len(x), size=n, replace=False))
            x, y = x[index], y[index]
        arrays[split] = (x, y)
    x, y = arrays["train"]
    train, val = split_validation(y, config["val_fraction"], config["seed"],
                                  stratify=ds.task == "classification")
    x_train, description = view(kind, ds.name, x[train])
    x_val, _ = view(kind, ds.name, x[val])
    x_test, _ = view(kind, ds.name, arrays["test"][0])
    splits = Splits(name=ds.name, task=ds.task, num_classes=ds.num_classes, source=ds.source,
                    x_train=x_train, y_train=y[train], x_val=x_val, y_val=y[val],
                    x_test=x_test, y_test=arrays["test"][1], view=description)
    _CACHE[key] = splits
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return splits


def batches(x, y, batch_size, seed, ordered=False):
    """A ``tf.data`` pipeline of shuffled training batches, reshuffled every epoch.

    The order depends only on ``seed`` (and the global seed that
    ``keras.utils.set_random_seed(seed)`` sets), not on how many random numbers the
    model or the method drew: two runs with the same seed see the same batches in the
    same order, whatever their method. With ``ordered`` the examples are shuffled once
    and come in that order every epoch (F³ keys each example's stored error by its
    position in the epoch).
    """
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=not ordered)
            .batch(batch_size)
            .prefetch(2))
