"""Tabular data: scikit-learn's diabetes regression."""

import numpy as np

from credit.data._base import Dataset, _check_fraction, _check_seed


def diabetes(seed=0, test_size=0.2):
    """Load scikit-learn's diabetes regression, standardised with train statistics.

    Inputs and the target are each shifted and scaled by the mean and standard
    deviation of the training split only, so the test split is never seen when
    fitting the scaling. The target is in units of its training standard
    deviation.

    Args:
        seed: Seed of the train/test split.
        test_size: Fraction of the 442 patients held out for test.

    Returns:
        A :class:`Dataset` with float32 inputs of shape ``(n, 10)`` and float32
        targets of shape ``(n, 1)``.

    Example:
        >>> ds = diabetes(seed=0)
        >>> ds.x_train.shape, ds.y_train.shape
        ((353, 10), (353, 1))
    """
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    test_size = _check_fraction("test_size", test_size)
    x, y = load_diabetes(return_X_y=True, scaled=False)
    y = y.reshape(-1, 1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed)
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = y_train.mean(axis=0), y_train.std(axis=0)
    return Dataset(
        name="diabetes",
        x_train=((x_train - x_mean) / x_std).astype(np.float32),
        y_train=((y_train - y_mean) / y_std).astype(np.float32),
        x_test=((x_test - x_mean) / x_std).astype(np.float32),
        y_test=((y_test - y_mean) / y_std).astype(np.float32),
        task="regression",
        num_classes=None,
        source="sklearn.datasets.load_diabetes (standardised with train statistics)",
    )

