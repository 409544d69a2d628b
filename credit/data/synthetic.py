"""Synthetic tasks of Czarnecki et al. 2017: linear regression and classification
by a random linear teacher, regression onto a random tanh MLP teacher."""

import numpy as np

from credit.data._base import Dataset, _check_int, _check_noise, _check_seed


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

