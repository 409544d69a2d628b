"""The :class:`Dataset` container and the argument checks shared by the loaders."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set split into train and test arrays.

    Attributes:
        name: Name of the data set, as given to :func:`load`.
        x_train: Training inputs, float32.
        y_train: Training targets: int64 class labels of shape ``(n,)`` for
            classification, float32 of shape ``(n, d)`` for regression.
        x_test: Test inputs, float32.
        y_test: Test targets, same convention as ``y_train``.
        task: ``"classification"`` or ``"regression"``.
        num_classes: Number of classes, or ``None`` for regression.
        source: Where the data came from (file, package, or generator).

    Example:
        >>> from credit.data import load
        >>> ds = load("linear2d", seed=1)
        >>> ds.task, ds.num_classes, ds.y_train.shape
        ('regression', None, (1000, 1))
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_classes: int | None
    source: str

    def __repr__(self):
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, "
            f"num_classes={self.num_classes}, x_train={self.x_train.shape}, "
            f"y_train={self.y_train.shape}, x_test={self.x_test.shape}, "
            f"y_test={self.y_test.shape}, source={self.source!r})"
        )


# ---------------------------------------------------------------------------
# Argument checks


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(
            f"seed must be a non-negative integer, got {seed!r}; "
            "pass for example seed=0."
        )
    return int(seed)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r}; "
            f"pass an integer >= {minimum}."
        )
    return int(value)


def _check_noise(noise):
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating, np.integer)) or not (
        np.isfinite(noise) and noise >= 0
    ):
        raise ValueError(
            f"noise must be a finite number >= 0, got {noise!r}; "
            "pass for example noise=0.1 (or noise=0 for noiseless targets)."
        )
    return float(noise)


def _check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value < 1:
        raise ValueError(
            f"{name} must be a number strictly between 0 and 1, got {value!r}; "
            f"pass for example {name}=0.2."
        )
    return float(value)


def _stratified_split(x, y, test_size, seed):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed, shuffle=True)

