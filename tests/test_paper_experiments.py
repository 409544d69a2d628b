"""The paper's experiments (Czarnecki et al. 2017): experiments.linear_models and
experiments.representations, in their smoke modes, plus their numeric helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import credit  # noqa: E402
from experiments import linear_models, representations  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG, f"{path} is not a PNG"


def assert_finite(table, columns):
    values = table[list(columns)].to_numpy(dtype=float)
    assert np.all(np.isfinite(values)), table[list(columns)]


# ---------------------------------------------------------------------------
# linear_models


@pytest.fixture(scope="module")
def linear_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("linear")
    keras.utils.set_random_seed(1234)
    runs, history = linear_models.main(["--quick", "--out", str(out)])
    return out / "linear_models", runs, history


def test_linear_models_quick_writes_its_files(linear_quick):
    folder, _, _ = linear_quick
    for name in ("runs.csv", "runs.md", "summary.csv", "summary.md", "history.csv"):
        assert (folder / name).is_file(), name
    assert_png(folder / "curves.png")
    assert_png(folder / "distance.png")
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))

    runs = pd.read_csv(folder / "runs.csv")
    # quick: one task (mse_2d) x two models x three methods x one seed
    assert len(runs) == 6
    assert set(runs["model"]) == {"linear", "deep_linear"}
    assert set(runs["method"]) == {"backprop", "dni", "cdni"}
    assert set(runs["task"]) == {"mse_2d"} and set(runs["seed"]) == {0}
    assert not runs["diverged"].any()
    assert_finite(runs, ["train_loss", "excess_loss", "test_loss", "rel_dist_optimum",
                         "rel_dist_backprop", "seconds"])
    assert (runs.loc[runs["method"] == "backprop", "rel_dist_backprop"] == 0).all()

    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 6
    assert {"task", "model", "method", "n", "diverged", "excess_loss_mean",
            "rel_dist_optimum_mean", "rel_dist_backprop_mean"} <= set(summary.columns)
    assert_finite(summary, ["train_loss_mean", "rel_dist_optimum_mean"])
    markdown = (folder / "summary.md").read_text()
    assert markdown.startswith("| task | model | method |")
    assert markdown.count("\n") == 2 + 6

    history = pd.read_csv(folder / "history.csv")
    epochs = linear_models.TRAINING["linear"]["quick_epochs"]
    linear = history[(history["model"] == "linear") & (history["method"] == "cdni")]
    assert list(linear["epoch"]) == list(range(epochs + 1))  # epoch 0 = initial weights
    assert_finite(history, ["train_loss", "excess_loss", "rel_dist_optimum"])


def test_linear_regression_with_conditioned_sg_reaches_least_squares(linear_quick):
    """The paper's theorem: a linear model trained through a linear synthesizer at its
    output, conditioned on the target, converges to the least-squares solution."""
    _, runs, _ = linear_quick
    row = runs[(runs["model"] == "linear") & (runs["method"] == "cdni")].iloc[0]
    assert row["rel_dist_optimum"] < 0.01, row
    assert row["excess_loss"] < 1e-4 * max(1.0, row["optimum_loss"]), row
    backprop = runs[(runs["model"] == "linear") & (runs["method"] == "backprop")].iloc[0]
    assert backprop["rel_dist_optimum"] < 1e-3, backprop
    # Without the target, a synthesizer at the output cannot know the error: no fit.
    dni = runs[(runs["model"] == "linear") & (runs["method"] == "dni")].iloc[0]
    assert dni["rel_dist_optimum"] > 0.1, dni


def test_linear_models_log_loss_path(tmp_path):
    runs, history = linear_models.main(["--tasks", "log_2d", "--models", "linear",
                                        "--epochs", "2", "--seeds", "3",
                                        "--out", str(tmp_path)])
    assert len(runs) == 3 and set(runs["task"]) == {"log_2d"}
    assert_finite(runs, ["train_loss", "test_loss", "test_accuracy", "rel_dist_optimum"])
    assert runs["test_accuracy"].between(0, 1).all()
    assert set(history["epoch"]) == {0, 1, 2}
    assert (tmp_path / "linear_models" / "summary.md").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "-1"], ["--seeds", "-1", "--seeds 0 1 2"]),
    (["--seeds", "0", "0"], ["--seeds", "0 0", "once"]),
    (["--epochs", "0"], ["--epochs", "0", ">= 1"]),
    (["--tasks", "mse_3d"], ["--tasks", "'mse_3d'", "mse_2d"]),
    (["--models", "deep"], ["--models", "'deep'", "deep_linear"]),
    (["--methods", "dfa"], ["--methods", "'dfa'", "cdni"]),
    (["--epochs", "many"], ["--epochs", "many"]),
])
def test_linear_models_bad_flag_fails_before_training(argv, words, monkeypatch, capsys):
    monkeypatch.setattr(linear_models, "run", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_info:
        linear_models.main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    for word in words:
        assert word in message, (word, message)


def test_end_to_end_map_is_the_affine_map_of_the_deep_model():
    model = linear_models.build_model("deep_linear", 5)
    for layer in model.layers:  # non-zero biases, so that they are carried through
        layer.bias.assign(np.random.default_rng(0).normal(size=layer.bias.shape))
    theta = linear_models.end_to_end_map(model)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")
    expected = np.asarray(model(x))[:, 0]
    np.testing.assert_allclose(x @ theta[:-1] + theta[-1], expected, rtol=1e-4, atol=1e-4)


def test_reference_solutions_are_stationary_points():
    for task in ("mse_2d", "log_100d"):
        p = linear_models.make_problem(task, seed=0)
        a = np.c_[p.x_train, np.ones(len(p.x_train))].astype(np.float64)
        z, y = a @ p.theta_star, p.y_train[:, 0].astype(np.float64)
        residual = 2 * (z - y) if p.loss == "mse" else 1 / (1 + np.exp(-z)) - y
        assert np.abs(a.T @ residual / len(y)).max() < 1e-8, task


def test_linear_method_specs():
    assert linear_models.method_spec("backprop", "linear", 0) == "backprop"
    output = linear_models.method_spec("cdni", "linear", 3)
    assert output["at"] == [0] and output["conditioned"] and output["target"] == "true"
    hidden = linear_models.method_spec("dni", "deep_linear", 3)
    assert hidden["at"] is None and not hidden["conditioned"]
    assert hidden["target"] == "bootstrap" and hidden["synthesizer"] == "linear"
    assert credit.get(hidden).seed == 3


# ---------------------------------------------------------------------------
# representations


@pytest.fixture(scope="module")
def representations_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("representations")
    keras.utils.set_random_seed(1234)
    tables = representations.main(["--quick", "--out", str(out)])
    return out / "representations", tables


def test_representations_quick_writes_its_files(representations_quick):
    folder, (runs, accuracy, layers) = representations_quick
    for name in ("runs.csv", "runs.md", "accuracy.csv", "accuracy.md", "layers.csv",
                 "layers.md", "layers_by_seed.csv", "history.csv"):
        assert (folder / name).is_file(), name
    for name in ("rdms.png", "layers.png", "curves.png"):
        assert_png(folder / name)

    depth = representations.QUICK["depth"]
    runs = pd.read_csv(folder / "runs.csv")
    assert list(runs["method"]) == ["backprop", "sg"] and set(runs["seed"]) == {0}
    assert_finite(runs, ["test_accuracy", "test_loss", "train_loss"])
    assert runs["test_accuracy"].between(0, 1).all()

    accuracy = pd.read_csv(folder / "accuracy.csv")
    assert list(accuracy["method"]) == ["backprop", "sg"]
    assert_finite(accuracy, ["test_accuracy_mean"])

    layers = pd.read_csv(folder / "layers.csv")
    assert list(layers["layer"]) == list(range(1, depth + 1))
    assert list(layers["sg_module"]) == [i == depth // 2 for i in range(1, depth + 1)]
    assert_finite(layers, ["sim_sg_vs_bp_mean", "class_bp_mean", "class_sg_mean",
                           "dead_bp_mean", "dead_sg_mean", "zero_bp_mean", "zero_sg_mean",
                           "alignment_sg_mean"])
    assert layers["sim_sg_vs_bp_mean"].between(-1, 1).all()
    assert layers[["dead_bp_mean", "dead_sg_mean"]].stack().between(0, 1).all()
    for column in ("sim_bp_vs_bp_mean", "sim_sg_vs_bp_other_mean", "sim_sg_vs_sg_mean"):
        assert layers[column].isna().all()  # one seed: no other seed to compare with
    # Above the synthesizer every block gets backprop's own update.
    above = layers[layers["layer"] > depth // 2]
    np.testing.assert_allclose(above["alignment_sg_mean"], 1.0, atol=1e-5)

    history = pd.read_csv(folder / "history.csv")
    assert {"loss", "accuracy", "test_loss", "test_accuracy"} <= set(history.columns)
    assert not any(c.startswith("val_") for c in history.columns)  # no validation split
    # The reported test accuracy is the last epoch's, the mean over one seed is that run.
    for method in ("backprop", "sg"):
        last = history[history["method"] == method].iloc[-1]
        run = runs[runs["method"] == method].iloc[0]
        assert run["test_accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-6)
        assert accuracy.loc[accuracy["method"] == method, "test_accuracy_mean"].iloc[0] == (
            pytest.approx(run["test_accuracy"]))
    assert "sg_loss" in history.columns


def test_representations_bad_flag_fails_before_training(monkeypatch, capsys):
    monkeypatch.setattr(representations, "run", lambda *a, **k: pytest.fail("trained"))
    for argv, words in ((["--depth", "5"], ["--depth", "5", "from 6 to 50", "--depth 8"]),
                        (["--depth", "51"], ["--depth", "51"]),
                        (["--sg", "fa"], ["--sg", "'fa'", "cdni or dni"]),
                        (["--per-class", "1"], ["--per-class", "1"]),
                        (["--seeds", "1", "1"], ["--seeds", "1 1", "distinct"]),
                        (["--epochs", "0"], ["--epochs", "0"])):
        with pytest.raises(SystemExit) as exit_info:
            representations.main(argv)
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        for word in words:
            assert word in message, (word, message)


def test_rdm_and_similarity():
    h = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.1], [3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    d = representations.rdm(h)
    assert d.shape == (4, 4) and np.allclose(np.diag(d), 0) and np.allclose(d, d.T)
    assert d[0, 1] < 1e-3  # almost perfectly correlated
    assert d[0, 2] > 1.5  # anti-correlated
    assert d[0, 3] == 1.0  # no variance: no correlation
    assert representations.rdm_similarity(d, d) == pytest.approx(1.0)
    assert representations.rdm_similarity(d, 2 * d + 1) == pytest.approx(1.0)  # ranks


def test_layer_table_compares_across_seeds():
    settings = representations.Settings(depth=6, seeds=(0, 1), per_class=3)
    rng = np.random.default_rng(0)

    def fake(method, seed):
        rdms = [representations.rdm(rng.normal(size=(30, 5))) for _ in range(6)]
        return {"method": method, "seed": seed, "rdms": rdms, "dead": [0.0] * 6,
                "zero": [0.5] * 6, "alignment": [0.3] * 7}

    results = [fake(m, s) for s in (0, 1) for m in representations.METHODS]
    by = {(r["method"], r["seed"]): r["rdms"] for r in results}
    table = representations.layer_table(results, settings)
    assert len(table) == 12 and list(table["layer"][:6]) == [1, 2, 3, 4, 5, 6]
    row = table[(table["seed"] == 0) & (table["layer"] == 2)].iloc[0]
    similarity = representations.rdm_similarity
    assert row["sim_sg_vs_bp"] == similarity(by["sg", 0][1], by["backprop", 0][1])
    assert row["sim_sg_vs_bp_other"] == similarity(by["sg", 0][1], by["backprop", 1][1])
    assert row["sim_bp_vs_bp"] == similarity(by["backprop", 0][1], by["backprop", 1][1])
    assert row["sim_sg_vs_sg"] == similarity(by["sg", 0][1], by["sg", 1][1])
    assert list(table["sg_module"][:6]) == [False, False, True, False, False, False]
    summary = representations.summarize_layers(table)
    assert len(summary) == 6 and "sim_bp_vs_bp_std" in summary.columns


def test_dead_and_zero_fractions_and_stimuli():
    h = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 3.0, 0.0]])
    assert list(representations.dead_units(h)) == [True, False, False, True]
    assert representations.zero_fraction(h) == 5 / 8
    y = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    index = representations.stimuli(y, 2)
    assert list(y[index]) == [0, 0, 1, 1, 2, 2]
    assert list(index) == [1, 3, 2, 5, 0, 4]
    with pytest.raises(ValueError, match="--per-class 3"):
        representations.stimuli(y, 4)


def test_activity_in_batches_matches_the_whole_batch():
    keras.utils.set_random_seed(2)
    model = representations.build_model(6, 16)
    x = np.random.default_rng(0).uniform(size=(50, 784)).astype("float32")
    for layer in model.layers:  # make some units dead, some only sometimes zero
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.beta.assign(np.linspace(-3.0, 0.5, 16).astype("float32"))
    hidden = representations.hidden_outputs(model, x)
    dead, zero = representations.activity(model, x, batch_size=7)
    assert dead == pytest.approx([representations.dead_units(h).mean() for h in hidden])
    assert zero == pytest.approx([representations.zero_fraction(h) for h in hidden])
    assert 0 < dead[0] < 1 and 0 < zero[0] < 1


def test_representations_methods_start_from_the_same_weights():
    settings = representations.Settings(depth=6, width=8)
    weights = []
    for method in representations.METHODS:
        keras.backend.clear_session()
        keras.utils.set_random_seed(5)
        model = representations.build_model(settings.depth, settings.width)
        model.compile("adam", "sparse_categorical_crossentropy",
                      method=credit.get(representations.method_spec(method, settings, 5)))
        weights.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    spec = representations.method_spec("sg", settings, 5)
    assert spec["at"] == [2] and spec["conditioned"]  # after hidden layer 3 of 6


def test_scripts_share_the_command_line_convention(tmp_path):
    """--seeds and list flags take space- or comma-separated values in every script."""
    args = linear_models.parse_args(["--seeds", "0,2", "5", "--tasks", "mse_2d,log_2d",
                                     "--methods", "backprop", "cdni", "--out", str(tmp_path)])
    assert args.seeds == [0, 2, 5] and args.tasks == ["mse_2d", "log_2d"]
    assert args.methods == ["backprop", "cdni"]
    settings, out = representations.parse_args(["--seeds", "3,4", "--out", str(tmp_path)])
    assert settings.seeds == (3, 4) and out == tmp_path
    (tmp_path / "file").write_text("")
    for main in (linear_models.main, representations.main):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "file")])
