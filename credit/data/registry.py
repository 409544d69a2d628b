"""Data sets by name: :func:`load` and :func:`available`."""

import dataclasses
import difflib
import inspect

from credit.data.images import cifar10, digits, mnist, sequential_mnist
from credit.data.synthetic import linear_classification, linear_regression, teacher_regression
from credit.data.tabular import diabetes


# name -> (loader, keyword arguments fixed by the name)
_LOADERS = {
    "mnist": (mnist, {}),
    "mnist_images": (mnist, {"flatten": False}),
    "sequential_mnist": (sequential_mnist, {}),
    "digits": (digits, {}),
    "digits_images": (digits, {"flatten": False}),
    "cifar10": (cifar10, {}),
    "diabetes": (diabetes, {}),
    "linear2d": (linear_regression, {"dim": 2}),
    "linear100d": (linear_regression, {"dim": 100}),
    "linear_regression": (linear_regression, {}),
    "linear_classification2d": (linear_classification, {"dim": 2}),
    "linear_classification100d": (linear_classification, {"dim": 100}),
    "linear_classification": (linear_classification, {}),
    "teacher": (teacher_regression, {}),
}


def available():
    """Return the names accepted by :func:`load`, sorted.

    Returns:
        A sorted list of strings.

    Example:
        >>> "mnist" in available()
        True
    """
    return sorted(_LOADERS)


def load(name, seed=0, **kwargs):
    """Load a data set by name.

    Args:
        name: One of :func:`available`.
        seed: Seed of every random thing in the data set (split, shuffle,
            teacher, noise).
        **kwargs: Options of the loader, e.g. ``n_train``, ``n_test``,
            ``noise`` for synthetic tasks or ``flatten`` for images. See the
            loader functions for each name.

    Returns:
        A :class:`Dataset`. Its ``name`` is the name given here.

    Raises:
        ValueError: If the name is unknown (the message lists the valid names
            and suggests the closest), an option is not accepted by the
            loader, or an option has a bad value.
        FileNotFoundError: For ``"cifar10"`` when it is not in the Keras
            cache (the message says where to put it and what to use instead).

    Example:
        >>> ds = load("linear100d", seed=3, n_train=64, n_test=16)
        >>> ds.x_train.shape
        (64, 100)
    """
    if name not in _LOADERS:
        close = difflib.get_close_matches(str(name), available(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown data set {name!r}.{hint} Valid names: {', '.join(available())}."
        )
    loader, fixed = _LOADERS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p != "seed"]
    for key, value in kwargs.items():
        if key in fixed:
            raise ValueError(
                f"Data set {name!r} fixes {key}={fixed[key]!r}, got {key}={value!r}; "
                f"use load({loader.__name__!r}, {key}={value!r}) instead."
            )
        if key not in accepted:
            options = [p for p in accepted if p not in fixed]
            raise ValueError(
                f"Data set {name!r} does not accept the option {key}={value!r}; "
                f"valid options: {', '.join(options) or 'none'}."
            )
    ds = loader(seed=seed, **fixed, **kwargs)
    return dataclasses.replace(ds, name=name)

