"""The experiment runner (experiments.runner) and the main job (experiments.compare).

Tiny runs (a few hundred digits, 1-2 epochs, small models) into tmp_path. Numbers are
checked against values computed independently of the runner: the recorded validation
and test metrics against the trained model's own predictions, split sizes against
counts by hand, parameter counts against the architecture's formula, TensorBoard's
scalars against history.csv.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import credit  # noqa: E402
from credit import results  # noqa: E402
from experiments import compare  # noqa: E402
from experiments.runner import (cli, configs, data as data_lib, folders, models,  # noqa: E402
                                sweep, tables, training, tuning)
from experiments.runner.files import write_atomic  # noqa: E402

KICKBACK_NOTE = "not applicable: kickback needs a model with one scalar output per example"

TINY = {"epochs": 2, "n_train": 200, "n_test": 100, "batch_size": 50,
        "model": {"type": "mlp", "hidden": [16], "activation": "tanh"},
        "n_align": 64}


def tiny(method, dataset="digits", seed=0, **overrides):
    return {"method": method, "dataset": dataset, "seed": seed, **TINY, **overrides}


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the runs actually trained (not skipped as finished or not applicable)."""
    calls = []
    train = training.train

    def counting(config, folder, *args, **kwargs):
        calls.append((config["method"], folder.name))
        return train(config, folder, *args, **kwargs)

    monkeypatch.setattr(training, "train", counting)
    return calls


def run_folders(path):
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def leftovers(path):
    """Temporary files of atomic writes, and claims, left behind."""
    return [p.name for p in path.rglob(".*") if p.name not in (".claims", ".lock")]


# ---------------------------------------------------------------------------
# Configs and hashes


def test_run_id_is_a_stable_hash_of_the_completed_config():
    config = {"method": "dfa", "dataset": "digits", "seed": 0, "epochs": 3}
    explicit = {**configs.DEFAULTS, **config, "method": "direct_feedback_alignment",
                "learning_rate": 0.001}
    key = configs.run_id(config)
    assert len(key) == 12 and all(c in "0123456789abcdef" for c in key)
    assert configs.run_id(explicit) == key  # aliases and omitted defaults hash alike
    assert configs.run_id(dict(reversed(list(config.items())))) == key  # key order
    assert configs.run_id({**config, "seed": 1}) != key
    assert configs.run_id({**config, "learning_rate": 1e-2}) != key
    assert configs.run_id({**config, "val_fraction": 0.2}) != key
    # Pinned: changing the defaults or the hashing renames every existing run folder.
    assert key == configs.hashlib.sha256(
        configs.canonical_json(configs.complete(config)).encode()).hexdigest()[:12]
    assert key == "73a6d65d1ca0"
    assert configs.complete(config)["model"] == {
        "type": "mlp", "hidden": [256, 256], "activation": "tanh",
        "output_activation": None, "batch_norm": False}


def test_grid_orders_by_dataset_seed_method():
    grid = configs.grid(["backprop", "fa"], ["digits", "diabetes"], [0, 1], epochs=2)
    assert [(c["dataset"], c["seed"], c["method"]) for c in grid] == [
        ("digits", 0, "backprop"), ("digits", 0, "fa"), ("digits", 1, "backprop"),
        ("digits", 1, "fa"), ("diabetes", 0, "backprop"), ("diabetes", 0, "fa"),
        ("diabetes", 1, "backprop"), ("diabetes", 1, "fa")]
    assert all(c["epochs"] == 2 for c in grid)


def test_compare_defaults_cover_every_registered_method():
    configs_ = compare.configs_from_args(compare.parser().parse_args([]))
    every = credit.available(dense_chains=True)  # PEPITA and FF too: the MLP is a chain
    assert {"pepita", "forward_forward"} <= set(every)
    assert {c["method"] for c in configs_} == set(every)
    assert [d for d in dict.fromkeys(c["dataset"] for c in configs_)] == ["mnist", "digits", "diabetes"]
    assert sorted({c["seed"] for c in configs_}) == [0, 1, 2]
    assert len(configs_) == 3 * 3 * len(every)
    mnist = next(c for c in configs_ if c["dataset"] == "mnist")
    assert mnist["model"]["hidden"] == [256, 256] and mnist["epochs"] == 20

    quick = compare.configs_from_args(compare.parser().parse_args(["--quick"]))
    assert sorted({c["seed"] for c in quick}) == [0]
    assert {c["n_train"] for c in quick if c["dataset"] == "mnist"} == {2000}

    picked = compare.configs_from_args(compare.parser().parse_args(
        ["--methods", "bp", "dfa", "--datasets", "digits", "--seeds", "0,4", "--epochs", "7",
         "--patience", "3"]))
    assert [(c["method"], c["seed"], c["epochs"], c["patience"]) for c in picked] == [
        ("bp", 0, 7, 3), ("dfa", 0, 7, 3), ("bp", 4, 7, 3), ("dfa", 4, 7, 3)]
    p = compare.parser()
    for argv, seeds in ((["--seeds", "7"], [7]), (["--seeds", "2", "5"], [2, 5]),
                        (["--seeds", "0,1", "3"], [0, 1, 3])):
        assert cli.seeds(p.parse_args(argv).seeds, p) == seeds


def test_compare_zoo_runs_every_method_on_every_model():
    """No method is left out for a model: the engine's build decides, per run."""
    args = compare.parser().parse_args(["--models", "resnet,transformer", "--quick"])
    plan = compare.configs_from_args(args)
    pairs = {(c["model"]["type"], c["method"]) for c in plan}
    assert pairs == {(m, method) for m in ("resnet", "transformer")
                     for method in credit.available(dense_chains=True)}
    resnet = next(c for c in plan if c["model"]["type"] == "resnet")
    assert resnet["model"]["depth"] == 8  # quick: ResNet-8
    every = compare.configs_from_args(compare.parser().parse_args(["--models", "all"]))
    assert {c["model"]["type"] for c in every} == set(models.MODELS)


def test_compare_sets_the_local_and_forward_methods_own_hyperparameters():
    plan = compare.configs_from_args(compare.parser().parse_args(
        ["--methods", "bp,fg,pepita,ff,dgl,f3", "--datasets", "digits", "--quick"]))
    by = {configs.complete(c)["method"]: configs.complete(c) for c in plan}
    assert by["backprop"]["learning_rate"] == 1e-3 and by["backprop"]["method_config"] == {}
    for method, settings in compare.METHOD_SETTINGS.items():
        assert by[method]["learning_rate"] == settings["learning_rate"]
        assert by[method]["method_config"] == settings.get("method_config", {})
    assert by["forward_gradient"]["method_config"] == {"tangents": 4}
    # A config's own method_config entries win over the per-method ones.
    merged = compare.with_method_settings({"method": "fg", "method_config": {"seed": 3,
                                                                           "tangents": 2}})
    assert merged["method_config"] == {"tangents": 2, "seed": 3}
    # Tuning replaces the per-method value like any other.
    args = compare.parser().parse_args(["--methods", "fg", "--datasets", "digits",
                                        "--quick", "--tune", "lr"])
    plan = compare.plan_from_args(args)
    assert plan.configs[0]["learning_rate"] == 3e-3
    assert tuning.grid_for(plan.grids, "forward_gradient")["learning_rate"] == \
        tuning.DEFAULT_GRIDS["learning_rate"]


def test_dense_chain_methods_are_not_applicable_beyond_the_mlp():
    # PEPITA and Forward-Forward on a CNN: recorded as not applicable with the reason,
    # never a failed run.
    for method in ("pepita", "forward_forward"):
        config = configs.complete({"method": method, "dataset": "digits", "seed": 0,
                                   "epochs": 1, "model": {"type": "cnn", "filters": [4],
                                                          "dense": [8]}})
        reason = training.applicability(config)
        assert reason is not None and "chains of Dense layers only" in reason
        assert "conv2d" in reason
        config["model"] = {"type": "mlp", "hidden": [8], "activation": "tanh"}
        assert training.applicability(configs.complete(config)) is None


# ---------------------------------------------------------------------------
# Validation split, views, batch order


def test_validation_split_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val = data_lib.split_validation(y, 0.2, seed=3, stratify=True)
    assert np.bincount(y[val]).tolist() == [10, 6, 3, 1]  # round(0.2 * count) per class
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 100
    again, _ = data_lib.split_validation(y, 0.2, seed=3, stratify=True)
    other, _ = data_lib.split_validation(y, 0.2, seed=4, stratify=True)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    _, val = data_lib.split_validation(np.zeros(50), 0.1, seed=0, stratify=False)
    assert len(val) == 5
    with pytest.raises(ValueError, match="val_fraction=0.99 leaves 0 training"):
        data_lib.split_validation(np.zeros(3), 0.99, seed=0, stratify=False)


def test_load_data_carves_validation_from_training_and_keeps_the_test_split():
    config = configs.complete(tiny("backprop", n_train=None, n_test=None))
    splits = data_lib.load_data(config)
    full = credit.data.load("digits", seed=0)
    assert len(splits.x_val) == sum(round(0.1 * c) for c in np.bincount(full.y_train))
    assert len(splits.x_train) + len(splits.x_val) == len(full.x_train) == 1437
    np.testing.assert_array_equal(splits.x_test, full.x_test)  # untouched
    rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in rows for r in splits.x_val)
    assert not {r.tobytes() for r in splits.x_val} & {r.tobytes() for r in splits.x_train}


@pytest.mark.parametrize("model, shape, view", [
    ("cnn", (8, 8, 1), "image: 8x8x1"),
    ("lstm", (8, 8), "sequence: 8 steps of 8 features (rows of the image)"),
    ("mlp", (64,), "vector"),
])
def test_views_of_digits(model, shape, view):
    config = configs.complete(tiny("backprop", model={"type": model}))
    splits = data_lib.load_data(config)
    flat = data_lib.load_data(configs.complete(tiny("backprop")))
    assert splits.x_train.shape[1:] == shape and splits.view == view
    # The same examples, in the same order: row r of image i is features 8r..8r+7.
    np.testing.assert_array_equal(splits.x_train.reshape(len(splits.x_train), -1),
                                  flat.x_train)


def test_batch_order_does_not_depend_on_the_method():
    x = np.arange(20, dtype="float32")[:, None]
    y = np.arange(20)

    def epochs(draw):
        keras.utils.set_random_seed(5)
        if draw:  # a method drawing random numbers before training
            tf.random.normal((7,))
            np.random.normal(size=3)
        ds = data_lib.batches(x, y, 8, seed=5)
        return [np.concatenate([b[1].numpy() for b in ds]).tolist() for _ in range(2)]

    plain, drawn = epochs(False), epochs(True)
    assert plain == drawn
    assert plain[0] != plain[1]  # reshuffled every epoch
    assert sorted(plain[0]) == list(range(20))


# ---------------------------------------------------------------------------
# One run, end to end


def _check_metrics(model, data, config, folder):
    """after_fit hook: the last epoch's recorded metrics, recomputed from the model."""
    p_val, p_test = model.predict(data.x_val, verbose=0), model.predict(data.x_test, verbose=0)
    write_atomic(pathlib.Path(folder) / "check.json", json.dumps({
        "val_accuracy": float(np.mean(p_val.argmax(1) == data.y_val)),
        "test_accuracy": float(np.mean(p_test.argmax(1) == data.y_test)),
        "test_loss": float(np.mean(-np.log(p_test[np.arange(len(p_test)), data.y_test])))}))


def test_run_records_validation_and_test_metrics_of_the_trained_model(tmp_path):
    out = sweep.run_sweep([tiny("backprop", epochs=2)], tmp_path, verbose=0, isolate=False,
                          after_fit=_check_metrics)
    folder = out[0].folder
    assert sorted(p.name for p in folder.iterdir()) == ["check.json", "config.json", "done",
                                                         "history.csv"]
    history = pd.read_csv(folder / "history.csv")
    assert list(history.columns) == [
        "epoch", "step", "wall_time", "loss", "accuracy", "val_loss", "val_accuracy",
        "test_loss", "test_accuracy", "alignment_0", "alignment_1"]
    config = json.loads((folder / "config.json").read_text())
    # 200 subsampled training digits: 10% per class held out (by hand: 20), 100 test.
    assert (config["train_examples"], config["val_examples"], config["test_examples"]) == (
        200 - config["val_examples"], 20, 100)
    assert history["step"].tolist() == [math.ceil(180 / 50), 2 * math.ceil(180 / 50)]
    check = json.loads((folder / "check.json").read_text())
    last = history.iloc[-1]
    assert last["val_accuracy"] == pytest.approx(check["val_accuracy"], abs=1e-6)
    assert last["test_accuracy"] == pytest.approx(check["test_accuracy"], abs=1e-6)
    assert last["test_loss"] == pytest.approx(check["test_loss"], rel=1e-4)
    assert history["alignment_0"].tolist() == pytest.approx([1.0, 1.0])  # backprop
    assert config["status"] == "done" and config["data_view"] == "vector"
    assert config["architecture"] == "64-16-10" and config["model_name"] == "mlp"


def test_early_stopping_reads_the_validation_metric(tmp_path):
    # A learning rate too small to change anything: no improvement after epoch 1.
    out = sweep.run_sweep([tiny("backprop", epochs=6, patience=2, learning_rate=1e-12)],
                          tmp_path, verbose=0, isolate=False)
    history = pd.read_csv(out[0].folder / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["val_accuracy"].nunique() == 1
    run = results.run_table(results.load_runs(tmp_path)).iloc[0]
    assert run["best_epoch"] == 1 and run["epochs"] == 3


def test_compare_smoke_writes_its_files(tmp_path, capsys, train_calls):
    argv = ["--quick", "--methods", "backprop,dfa,kickback", "--datasets", "digits",
            "--epochs", "1", "--out", str(tmp_path), "--in-process"]
    assert compare.main(argv) == 0
    folder = tmp_path / "compare_quick"
    assert sorted(p.name for p in folder.iterdir()) == [
        "accuracy.csv", "accuracy.md", "alignment.png", "convergence.csv", "convergence.md",
        "curves_accuracy.png", "runs"]
    assert [m for m, _ in train_calls] == ["backprop", "direct_feedback_alignment"]
    runs = run_folders(folder / "runs")
    assert runs == sorted(folder_name for _, folder_name in train_calls)
    for name in runs:
        config = json.loads((folder / "runs" / name / "config.json").read_text())
        assert configs.run_id({k: v for k, v in config.items()
                               if k not in configs.RESERVED}) == name
        assert config["architecture"] == "64-64-64-10"
        assert (config["train_examples"], config["val_examples"]) == (1295, 142)
        history = pd.read_csv(folder / "runs" / name / "history.csv")
        assert history["step"].tolist() == [math.ceil(1295 / 32)]

    accuracy = pd.read_csv(folder / "accuracy.csv", keep_default_na=False)
    assert accuracy["method"].tolist() == ["backprop", "direct_feedback_alignment", "kickback"]
    assert accuracy["n"].tolist() == [1, 1, 0]
    assert accuracy["note"].tolist() == ["", "", KICKBACK_NOTE]
    df = results.load_runs(folder)
    run = results.run_table(df).set_index("method")
    assert float(accuracy["test_mean"][0]) == run.loc["backprop", "test"]
    assert float(accuracy["diff_mean"][1]) == pytest.approx(
        run.loc["direct_feedback_alignment", "test"] - run.loc["backprop", "test"])
    markdown = (folder / "accuracy.md").read_text()
    assert "mean ± half-width of the 95% t-interval over seeds [0]" in markdown
    assert "| method | dataset | model | metric | val | test | test_final | best_epoch | diff |" in markdown
    assert f"| kickback | digits | mlp | accuracy | n/a | n/a ({KICKBACK_NOTE}) |" in markdown
    convergence = pd.read_csv(folder / "convergence.csv")
    assert convergence["target"].tolist() == [0.9, 0.9, 0.9]
    assert set(convergence["metric"]) == {"test_accuracy"}
    out = capsys.readouterr().out
    assert "3 runs (2 trained, 0 already done, 0 diverged, 1 not applicable, 0 failed)" in out
    assert "## Accuracy" in out and "## Convergence" in out and markdown.strip() in out

    # Running it again trains nothing and gives the same tables.
    train_calls.clear()
    assert compare.main(argv) == 0
    assert train_calls == []
    assert (folder / "accuracy.md").read_text() == markdown
    assert "3 runs (0 trained, 2 already done" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Resuming, divergence, configs that do not apply


class _InterruptAtEpoch2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def _interrupt_fa(config):
    return [_InterruptAtEpoch2()] if config["method"] == "feedback_alignment" else []


def test_interrupted_sweep_resumes_without_repeating_runs(tmp_path, train_calls):
    configs_ = [tiny("backprop"), tiny("fa")]
    first_id, second_id = (configs.run_id(c) for c in configs_)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(configs_, tmp_path, verbose=0, isolate=False, callbacks=_interrupt_fa)
    assert [m for m, _ in train_calls] == ["backprop", "feedback_alignment"]
    assert (tmp_path / first_id / "done").exists()
    assert not (tmp_path / second_id / "done").exists()
    assert not (tmp_path / ".claims" / second_id).exists()  # released on the way out
    assert pd.read_csv(tmp_path / second_id / "history.csv")["epoch"].tolist() == [1]
    assert results.load_runs(tmp_path)["run"].unique().tolist() == [first_id]
    first_files = mtimes(tmp_path / first_id)

    train_calls.clear()
    resumed = sweep.run_sweep(configs_, tmp_path, verbose=0, isolate=False)
    assert train_calls == [("feedback_alignment", second_id)]
    assert [(r.run, r.status, r.cached) for r in resumed] == [
        (first_id, "done", True), (second_id, "done", False)]
    assert mtimes(tmp_path / first_id) == first_files  # not retrained, not rewritten
    df = results.load_runs(tmp_path)
    assert len(df) == 4 and not df.duplicated(["run", "epoch"]).any()
    assert df.groupby("run")["epoch"].apply(list).to_dict() == {first_id: [1, 2],
                                                                 second_id: [1, 2]}
    train_calls.clear()
    again = sweep.run_sweep(configs_, tmp_path, verbose=0, isolate=False)
    assert train_calls == [] and [r.cached for r in again] == [True, True]
    assert leftovers(tmp_path) == []


def test_nan_run_is_recorded_as_diverged_and_the_sweep_goes_on(tmp_path, train_calls):
    relu = {"type": "mlp", "hidden": [64, 64], "activation": "relu"}
    exploding = tiny("backprop", "diabetes", learning_rate=1e8, model=relu, epochs=3)
    fine = tiny("kickback", "diabetes", model=relu, epochs=1)  # kickback applies here
    out = sweep.run_sweep([exploding, fine], tmp_path, verbose=0, isolate=False)
    assert [r.status for r in out] == ["diverged", "done"]
    assert len(train_calls) == 2
    bad = tmp_path / out[0].run
    assert sorted(p.name for p in bad.iterdir()) == ["config.json", "diverged", "done",
                                                     "history.csv"]
    assert json.loads((bad / "config.json").read_text())["status"] == "diverged"
    history = pd.read_csv(bad / "history.csv")
    assert len(history) == 1 and not np.isfinite(history["loss"].iloc[0])  # stopped early
    assert {"loss", "mse", "val_loss", "test_loss", "test_mse"} <= set(
        pd.read_csv(tmp_path / out[1].run / "history.csv").columns)
    table = results.accuracy_table(results.load_runs(tmp_path))
    assert table[["method", "metric", "n", "diverged"]].values.tolist() == [
        ["backprop", "loss", 0, 1], ["kickback", "loss", 1, 0]]
    train_calls.clear()  # a diverged run is finished: not run again
    again = sweep.run_sweep([exploding, fine], tmp_path, verbose=0, isolate=False)
    assert [r.status for r in again] == ["diverged", "done"]
    assert train_calls == []


def test_configs_that_do_not_apply_are_skipped_with_a_note(tmp_path, train_calls):
    cnn_on_diabetes = tiny("backprop", "diabetes", model={"type": "cnn"})
    out = sweep.run_sweep([tiny("kickback"), tiny("backprop", epochs=1), cnn_on_diabetes],
                          tmp_path, verbose=0, isolate=False)
    assert [(r.status, r.run, r.folder) for r in out][0] == ("not_applicable", None, None)
    assert "one scalar output" in out[0].reason
    assert out[2].status == "not_applicable"
    assert out[2].reason == ("model 'cnn' on 'diabetes': the model reads images, but data set "
                             "'diabetes' has vector inputs (10 features); use an 'mlp' for it")
    assert [m for m, _ in train_calls] == ["backprop"]
    assert run_folders(tmp_path) == [out[1].run]  # no folder for the skipped runs

    table = tables.annotate(results.accuracy_table(results.load_runs(tmp_path)), out)
    assert table["method"].tolist() == ["backprop", "backprop", "kickback"]
    assert table["note"].tolist() == [
        "not applicable: model 'cnn' on 'diabetes': the model reads images, but data set "
        "'diabetes' has vector inputs", "", KICKBACK_NOTE]
    kickback = table.iloc[2]
    assert kickback["metric"] == "accuracy" and math.isnan(kickback["test_mean"])
    assert (kickback["n"], kickback["diverged"]) == (0, 0)
    markdown = results.to_markdown(tables.display(table).drop(
        columns=["val_ci", "test_final_mean", "test_final_ci", "best_epoch_mean", "diff_mean",
                 "diff_ci", "diff_low", "diff_high", "diff_significant", "n_pairs"]))
    assert markdown.splitlines()[-1] == (
        f"| kickback | digits | mlp | accuracy | n/a | n/a ({KICKBACK_NOTE}) | 0 | 0 |")


class _Refuse(keras.callbacks.Callback):
    """Stands for an engine that refuses a model at its first step, or fails later."""

    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_train_begin(self, logs=None):
        if self.at_epoch == 0:
            raise credit.GraphError("layer 'lstm' (LSTM) cannot be cut into blocks; use "
                                    "backprop")
        if self.at_epoch == "bug":  # a plain ValueError of a bound method: not a refusal
            raise ValueError("a bug in the first step")

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch and epoch > 0:
            raise ValueError("a bug in the second epoch")


def _refuse_fa(config):
    return [_Refuse(0)] if config["method"] == "feedback_alignment" else []


def test_a_refusal_at_the_first_step_is_recorded_as_not_applicable(tmp_path, train_calls):
    configs_ = [tiny("backprop", epochs=1), tiny("fa", epochs=1)]
    out = sweep.run_sweep(configs_, tmp_path, verbose=0, isolate=False, callbacks=_refuse_fa)
    assert [r.status for r in out] == ["done", "not_applicable"]
    assert out[1].reason == ("GraphError: layer 'lstm' (LSTM) cannot be cut into blocks; "
                             "use backprop")
    record = json.loads((out[1].folder / "config.json").read_text())
    assert record["status"] == "not_applicable" and (out[1].folder / "done").exists()
    train_calls.clear()
    again = sweep.run_sweep(configs_, tmp_path, verbose=0, isolate=False)  # finished: not retried
    assert train_calls == [] and (again[1].status, again[1].cached) == ("not_applicable", True)
    assert again[1].reason == out[1].reason
    df = results.load_runs(tmp_path)
    assert df["method"].unique().tolist() == ["backprop"]  # not a result
    table = tables.annotate(results.accuracy_table(df), again)
    assert table["note"].tolist() == ["", "not applicable: GraphError: layer 'lstm' cannot "
                                          "be cut into blocks"]
    # An error after the first epoch is not a refusal: the run failed (recorded, with its
    # traceback), and the sweep goes on to the next run.
    failing = sweep.run_sweep([tiny("dfa", epochs=2), tiny("backprop", epochs=2)], tmp_path,
                              verbose=0, isolate=False,
                              callbacks=lambda c: [_Refuse(1)] if c["method"] != "backprop"
                              else [])
    assert [r.status for r in failing] == ["failed", "done"]
    assert failing[0].reason == "ValueError: a bug in the second epoch"
    failed = failing[0].folder
    assert not (failed / "done").exists()
    assert (failed / "failed").read_text().splitlines()[:2] == [
        "ValueError: a bug in the second epoch", "Traceback (most recent call last):"]
    assert json.loads((failed / "config.json").read_text())["status"] == "failed"
    # A plain ValueError at the first step of a method that is bound to the model is a
    # bug, not the engine refusing the model: failed, never "not applicable".
    bug = sweep.run_sweep([tiny("drtp", epochs=1)], tmp_path, verbose=0, isolate=False,
                          callbacks=lambda c: [_Refuse("bug")])
    assert (bug[0].status, bug[0].reason) == ("failed", "ValueError: a bug in the first step")


def test_a_finished_run_trained_under_another_plan_is_stale(tmp_path, train_calls):
    config = tiny("dfa", epochs=1)
    first = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False)[0]
    record = json.loads((first.folder / "config.json").read_text())
    now = training.check(configs.complete(config))
    assert now[0] is None and record["plan"] == now[1] and len(now[1]) == 12
    again = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False)[0]
    assert (again.cached, again.stale) == (True, False)
    # As if the run had been trained before a default of credit changed.
    write_atomic(first.folder / "config.json", json.dumps({**record, "plan": "0" * 12}))
    train_calls.clear()
    with pytest.warns(UserWarning, match=r"1 finished run\(s\) .* another plan .*"
                                         r"direct_feedback_alignment, mlp, digits, seed 0"):
        kept = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False)[0]
    assert (kept.cached, kept.stale, train_calls) == (True, True, [])
    redone = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False,
                             rerun_stale=True)[0]
    assert (redone.cached, redone.stale, redone.status) == (False, False, "done")
    assert len(train_calls) == 1
    aside = tmp_path / f"{first.run}.stale-1"
    assert json.loads((aside / "config.stale.json").read_text())["plan"] == "0" * 12
    assert not (aside / "config.json").exists()
    assert json.loads((redone.folder / "config.json").read_text())["plan"] == now[1]
    assert results.load_runs(tmp_path)["run"].unique().tolist() == [first.run]


def test_plan_fingerprint_sees_the_points_and_not_keras_names():
    config = configs.complete(tiny("dfa", model={"type": "mlp", "hidden": [16, 16]}))
    data, spec = data_lib.load_data(config), config["model"]

    def fingerprint(method, extra_layers=0):
        keras.backend.clear_session()
        for _ in range(extra_layers):  # shifts Keras's automatic names (dense_3, ...)
            keras.layers.Dense(1)
        model = models.build_model(spec, data)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method=method)
        return training.plan_fingerprint(model)

    dfa = fingerprint({"name": "dfa", "seed": 0})
    assert fingerprint({"name": "dfa", "seed": 0}, extra_layers=5) == dfa
    assert fingerprint({"name": "dfa", "seed": 1}) == dfa  # the sweep checks one seed
    # Points on parameter-free layers are named in the rules too (SG on a ResNet:
    # "true gradient from point activation_4"): Keras's names must not matter there.
    resnet = configs.complete(tiny("sg", model={"type": "resnet", "depth": 8}))
    rdata = data_lib.load_data(resnet)
    plans = set()
    for extra in (0, 3):
        keras.backend.clear_session()
        for _ in range(extra):
            keras.layers.Activation("relu")
        model = models.build_model(resnet["model"], rdata)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                      method={"name": "sg", "seed": 0})
        assert "point activation" in " ".join(credit.summary(model)["signal"])
        plans.add(training.plan_fingerprint(model))
    assert len(plans) == 1
    assert fingerprint({"name": "dfa", "seed": 0, "at": [0]}) != dfa  # other points
    assert fingerprint({"name": "dfa", "seed": 0, "scale": 0.5}) != dfa  # other option
    assert fingerprint({"name": "fa", "seed": 0}) != dfa
    assert training.plan_fingerprint(keras.Sequential([keras.layers.Dense(1)])) is None


@pytest.mark.slow
def test_same_config_trains_identically(tmp_path):
    config = tiny("dfa")
    a = sweep.run_sweep([config], tmp_path / "a", verbose=0, isolate=False)[0]
    b = sweep.run_sweep([config], tmp_path / "b", verbose=0, isolate=False)[0]
    columns = ["loss", "accuracy", "val_loss", "val_accuracy", "test_accuracy", "alignment_0"]
    ha = pd.read_csv(a.folder / "history.csv")[columns]
    hb = pd.read_csv(b.folder / "history.csv")[columns]
    np.testing.assert_allclose(ha.values, hb.values, rtol=1e-5)


# ---------------------------------------------------------------------------
# Bad flags and configs fail before any training


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started despite a bad flag or config")

    monkeypatch.setattr(training, "train", fail)


BAD_FLAGS = [
    (["--methods", "nope"], "--methods: got 'nope'; unknown credit-assignment method 'nope'"),
    (["--methods", "bp,dfx"], "Did you mean 'dfa'?"),
    (["--methods", "all,bp"], "--methods: 'all' cannot be combined with other names"),
    (["--datasets", "mnsit"], "--datasets: unknown data set(s) 'mnsit'; choose from"),
    (["--models", "vgg"], "--models: unknown model type(s) 'vgg'; choose from mlp, cnn"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    (["--epochs", "ten"], "argument --epochs: must be an integer >= 1, got 'ten'"),
    (["--workers", "0"], "argument --workers: must be an integer >= 1, got '0'"),
    (["--seeds", "1,x"], "--seeds: got 1,x; seeds are integers >= 0. Pass for example "
                         "--seeds 0 1 2 (or --seeds 0,1,2)."),
    (["--seeds", "1", "-2"], "--seeds: got 1 -2; seeds must be distinct integers >= 0"),
    (["--seeds", "1,1"], "--seeds: got 1,1; seeds must be distinct integers >= 0, each given once"),
    (["--tune", "momentum"], "--tune: cannot tune 'momentum'; tune a config key"),
    (["--tune", "patience"], "--tune: 'patience' has no default grid"),
    (["--tune-grid", "{\"learning_rate\": 0.1}"], "the values of 'learning_rate' must be a "
                                                  "non-empty list, got 0.1"),
    (["--tune-grid", "{\"dfx\": {\"learning_rate\": [1]}}"], "'dfx' is neither a config key "
                                                             "nor a method"),
    (["--tune-grid", "grid.json"], "--tune-grid: 'grid.json' is neither JSON text nor a file"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
]


def test_bad_flags_fail_before_training(tmp_path, capsys, no_training):
    for argv, message in BAD_FLAGS:
        with pytest.raises(SystemExit) as exit_info:
            compare.main(argv + ["--out", str(tmp_path)])
        assert exit_info.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
        assert list(tmp_path.iterdir()) == [], argv


def test_bad_configs_are_all_reported_before_training(tmp_path, no_training):
    configs_ = [tiny("backprop"), tiny("backprop", epochs=0), tiny("nope"),
                tiny("fa", dataset="cifar"), tiny("fa", learning_rate=-1.0),
                tiny("fa", model={"type": "mlp", "hidden": [0]}),
                tiny("dfa", method_config={"bogus": 1}), tiny("fa", status="done"),
                tiny("fa", val_fraction=1.0), tiny("fa", patience=0),
                tiny("fa", model={"type": "resnet", "depth": 9})]
    with pytest.raises(configs.ConfigError) as err:
        sweep.run_sweep(configs_, tmp_path / "runs", verbose=0, isolate=False)
    lines = str(err.value).splitlines()
    assert lines[0] == "config key 'epochs': got 0; epochs must be an integer > 0. Pass e.g. 10."
    assert lines[1].startswith("config key 'method': got 'nope'; unknown credit-assignment")
    assert lines[2].startswith("config key 'dataset': got 'cifar'; not a data set of "
                               "credit.data. Choose from")
    assert lines[3] == ("config key 'learning_rate': got -1.0; the learning rate must be a "
                        "finite number > 0. Pass e.g. 0.001.")
    assert "'hidden' must be a list of positive integers" in lines[4]
    assert lines[5] == (
        "config key 'method_config': got {'bogus': 1}; bad config for method "
        "'direct_feedback_alignment': unknown hyperparameter(s) bogus=1. Its "
        "hyperparameters: seed, scale, at, through_time.")
    assert lines[6] == "unknown config key 'status'; it is written by the runner; remove it."
    assert lines[7] == ("config key 'val_fraction': got 1.0; the validation fraction must be a "
                        "number strictly between 0 and 1 (every run is selected on a "
                        "validation split). Pass e.g. 0.1.")
    assert lines[8] == ("config key 'patience': got 0; must be None (no early stopping) or an "
                        "integer > 0. Pass e.g. 5.")
    assert "'depth' must be 6n + 2 for a whole n >= 1 (8, 14, 20, 32, 44, 56, 110), got 9" in lines[9]
    assert len(lines) == 10
    assert not (tmp_path / "runs").exists()


def test_write_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(path, "old")
    write_atomic(path, "new text")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert path.read_text() == "new text"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


# ---------------------------------------------------------------------------
# Tuning on the validation split


def test_tuning_grid_specs():
    grids = tuning.parse_grid(["lr"], '{"batch_size": [16], "dfa": {"learning_rate": [0.1]},'
                                      ' "sg": {"method_config.synthesizer": ["mlp"]}}')
    assert tuning.grid_for(grids, "backprop") == {
        "learning_rate": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "batch_size": [16]}
    assert tuning.grid_for(grids, "direct_feedback_alignment") == {"learning_rate": [0.1],
                                                                   "batch_size": [16]}
    sg = tuning.grid_for(grids, "dni")
    assert sg["method_config.synthesizer"] == ["mlp"]
    points = tuning.expand({"method": "sg", "method_config": {"at": [0]}}, sg)
    assert len(points) == 5 and points[0]["method_config"] == {"at": [0], "synthesizer": "mlp"}
    assert [p["learning_rate"] for p in points] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]


def test_tuning_chooses_on_validation_never_on_test():
    runs = pd.DataFrame({
        "run": ["a", "b", "c", "d"], "status": ["done", "done", "done", "diverged"],
        "val": [0.80, 0.90, 0.85, math.nan], "test": [0.95, 0.70, 0.99, math.nan]})
    candidates = {("digits", "mlp", "fa"): [({"learning_rate": 0.1}, ["a"]),
                                           ({"learning_rate": 0.2}, ["b"]),
                                           ({"learning_rate": 0.3}, ["c", "d"])]}
    chosen, table = tuning.choose(candidates, runs, lambda g: "classification")
    assert chosen == {("digits", "mlp", "fa"): {"learning_rate": 0.2}}  # best val, worst test
    assert table["chosen"].tolist() == [False, True, False]
    assert table["diverged"].tolist() == [0, 0, 1] and math.isnan(table["val_mean"][2])
    chosen, _ = tuning.choose(candidates, runs, lambda g: "regression")  # lower is better
    assert chosen[("digits", "mlp", "fa")] == {"learning_rate": 0.1}


def test_compare_tunes_each_method_then_runs_its_seeds(tmp_path, train_calls):
    grid = '{"learning_rate": [1e-9, 0.003], "dfa": {"learning_rate": [0.003, 1e-9]}}'
    argv = ["--quick", "--methods", "bp,dfa", "--datasets", "digits", "--epochs", "1",
            "--tune-grid", grid, "--out", str(tmp_path), "--in-process"]
    assert compare.main(argv) == 0
    folder = tmp_path / "compare_quick"
    assert len(train_calls) == 4  # 2 methods x 2 points x seed 0; the final seed 0 is cached
    tuned = pd.read_csv(folder / "tuning.csv")
    assert tuned[["method", "learning_rate", "chosen"]].values.tolist() == [
        ["backprop", 1e-9, False], ["backprop", 0.003, True],
        ["direct_feedback_alignment", 0.003, True], ["direct_feedback_alignment", 1e-9, False]]
    runs = results.run_table(results.load_runs(folder), keep=["learning_rate"])
    for row in tuned.itertuples():
        run = runs[(runs["method"] == row.method) & (runs["learning_rate"] == row.learning_rate)]
        assert row.val_mean == pytest.approx(run["val"].iloc[0])
    accuracy = pd.read_csv(folder / "accuracy.csv")
    assert accuracy["learning_rate"].tolist() == [0.003, 0.003]
    assert "| learning_rate |" in (folder / "accuracy.md").read_text()
    train_calls.clear()  # tuning resumes like any sweep
    assert compare.main(argv) == 0 and train_calls == []


# ---------------------------------------------------------------------------
# The model zoo (trained with backprop: the engine that trains them with every method
# is not in yet; a method whose build refuses a model is recorded as not applicable)


def _resnet_parameters(depth, widths, channels, classes):
    """Parameters of a CIFAR ResNet with bias-free convolutions and batch normalisation
    (4 numbers per channel), counted from the architecture."""
    n, total, previous = (depth - 2) // 6, 9 * channels * widths[0] + 4 * widths[0], widths[0]
    for stage, f in enumerate(widths):
        for block in range(n):
            c_in = previous if block == 0 else f
            total += 9 * c_in * f + 4 * f + 9 * f * f + 4 * f
            if block == 0 and (stage > 0 or c_in != f):
                total += c_in * f + 4 * f  # 1x1 projection shortcut
        previous = f
    return total + widths[-1] * classes + classes


def test_resnet_matches_its_architecture():
    splits = data_lib.load_data(configs.complete(tiny("backprop", model={"type": "resnet"})))
    for depth, widths in ((8, [8, 16, 32]), (20, [16, 32, 64])):
        model = models.build_model({"type": "resnet", "depth": depth, "widths": widths,
                                    "output_activation": None}, splits)
        assert model.count_params() == _resnet_parameters(depth, widths, 1, 10)
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
        assert sum(l.kernel_size == (3, 3) for l in convs) == depth - 1  # + the Dense head
        assert sum(isinstance(l, keras.layers.Add) for l in model.layers) == 3 * (depth - 2) // 6


@pytest.mark.parametrize("spec", [
    {"type": "cnn", "filters": [4, 8], "dense": [16]},
    {"type": "resnet", "depth": 8, "widths": [4, 8, 8]},
    {"type": "transformer", "dim": 8, "heads": 2, "layers": 1, "ff": 16},
    {"type": "gru", "units": [8]},
])
def test_zoo_model_trains_with_backprop_and_records_true_metrics(spec, tmp_path):
    config = tiny("backprop", model=spec, epochs=1, n_align=16, n_train=120)
    out = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False, after_fit=_check_metrics)
    assert out[0].status == "done"
    history = pd.read_csv(out[0].folder / "history.csv")
    check = json.loads((out[0].folder / "check.json").read_text())
    assert history["test_accuracy"].iloc[-1] == pytest.approx(check["test_accuracy"], abs=1e-6)
    assert history["val_accuracy"].iloc[-1] == pytest.approx(check["val_accuracy"], abs=1e-6)
    recorded = json.loads((out[0].folder / "config.json").read_text())
    assert recorded["architecture"].startswith(spec["type"])
    # The alignment diagnostic: measured where the engine can, else the run says why.
    if recorded["alignment"] == "measured":
        assert history["alignment_0"].tolist() == pytest.approx([1.0])
    else:
        assert recorded["alignment"].startswith("unavailable: ")
        assert not any(c.startswith("alignment_") for c in history.columns)
    if spec["type"] == "transformer":
        model = models.build_model(configs.complete(config)["model"],
                                   data_lib.load_data(configs.complete(config)))
        kinds = {type(l).__name__ for l in model.layers}
        assert {"MultiHeadAttention", "LayerNormalization", "Add", "Dense",
                "GlobalAveragePooling1D", "PositionalEncoding"} <= kinds


def test_recurrent_models_read_the_rows_as_steps():
    config = configs.complete(tiny("backprop", model={"type": "lstm", "units": [8, 4]}))
    splits = data_lib.load_data(config)
    model = models.build_model(config["model"], splits)
    lstms = [l for l in model.layers if isinstance(l, keras.layers.LSTM)]
    assert [(l.units, l.return_sequences) for l in lstms] == [(8, True), (4, False)]
    assert model.inputs[0].shape[1:] == (8, 8)
    assert model.count_params() == (4 * (8 * 8 + 8 * 8 + 8) + 4 * (8 * 4 + 4 * 4 + 4)
                                    + 4 * 10 + 10)  # LSTM: 4 gates of (x W + h U + b)
    assert model(splits.x_train[:3]).shape == (3, 10)


# ---------------------------------------------------------------------------
# TensorBoard sees every scalar of the epoch logs


def _tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing import event_accumulator

    values = {}
    for split in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(str(log_dir / split),
                                                 size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            values[(split, tag)] = [float(tf.make_ndarray(e.tensor_proto))
                                    for e in acc.Tensors(tag)]
    return values


def test_tensorboard_logs_credit_scalars(tmp_path):
    config = tiny("sg", epochs=2)
    out = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False,
                          callbacks=compare.TensorBoardLogs(tmp_path))
    history = pd.read_csv(out[0].folder / "history.csv")
    scalars = _tensorboard_scalars(out[0].folder / "tensorboard")
    for column in ("loss", "sg_loss", "alignment_0", "test_accuracy"):
        assert scalars[("train", f"epoch_{column}")] == pytest.approx(
            history[column].tolist(), rel=1e-5), column
    assert scalars[("validation", "epoch_accuracy")] == pytest.approx(
        history["val_accuracy"].tolist(), rel=1e-5)


# ---------------------------------------------------------------------------
# Parallel runs: claims, workers, killed workers


def test_claims_are_exclusive_and_stale_when_the_owner_is_dead(tmp_path):
    claim = folders.try_claim(tmp_path, "run1")
    assert claim is not None and claim.stolen is None
    assert folders.try_claim(tmp_path, "run1") is None  # held by this live process
    owner = json.loads(claim.path.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == folders.socket.gethostname()
    claim.release()
    assert not claim.path.exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / folders.CLAIMS / "run2"
    path.write_text(json.dumps({"host": folders.socket.gethostname(), "pid": dead.pid,
                                "start": None}))
    taken = folders.try_claim(tmp_path, "run2")
    assert taken is not None and taken.stolen["pid"] == dead.pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"host": "elsewhere", "pid": dead.pid, "start": None}))
    assert folders.try_claim(tmp_path, "run2") is None  # cannot check another host


class _Mark:
    """after_fit hook: one file per training, named by run and process."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __call__(self, model, data, config, folder):
        name = f"{pathlib.Path(folder).name}.{os.getpid()}.{uuid.uuid4().hex}"
        write_atomic(pathlib.Path(self.folder) / name, "")


def _sweep_process(configs_, out, marks):
    sweep.run_sweep(configs_, out, verbose=0, isolate=False, after_fit=_Mark(marks), poll=0.2)


def _trained(marks):
    """Run ids trained, one entry per training."""
    return sorted(p.name.split(".")[0] for p in marks.iterdir())


@pytest.mark.slow  # 35 s: two sweeps in subprocesses
def test_two_concurrent_sweeps_train_every_run_exactly_once(tmp_path):
    configs_ = [tiny(m, seed=s, epochs=1, n_train=100, n_align=0)
                for m in ("backprop", "fa") for s in (0, 1)]
    marks = tmp_path / "marks"
    marks.mkdir()
    other = multiprocessing.get_context("spawn").Process(
        target=_sweep_process, args=(configs_, tmp_path / "runs", marks))
    other.start()
    mine = sweep.run_sweep(configs_, tmp_path / "runs", verbose=0, isolate=False,
                           after_fit=_Mark(marks), poll=0.2)
    other.join(120)
    assert other.exitcode == 0
    assert _trained(marks) == sorted(configs.run_id(c) for c in configs_)  # once, none lost
    assert [r.run for r in mine] == [configs.run_id(c) for c in configs_]
    assert all(r.status == "done" for r in mine)
    assert leftovers(tmp_path / "runs") == []
    assert [p.name for p in (tmp_path / "runs" / folders.CLAIMS).iterdir()] == [".lock"]


@pytest.mark.slow  # 40 s; test_a_run_that_crashes_is_recorded_as_failed_and_the_sweep_goes_on
# trains in worker processes too
def test_workers_train_in_their_own_processes(tmp_path):
    configs_ = [tiny(m, epochs=1, n_train=100, n_align=0) for m in ("backprop", "fa")]
    marks = tmp_path / "marks"
    marks.mkdir()
    out = sweep.run_sweep(configs_, tmp_path / "runs", verbose=0, workers=2,
                          after_fit=_Mark(marks))
    assert [(r.run, r.status, r.cached) for r in out] == [
        (configs.run_id(c), "done", False) for c in configs_]
    assert _trained(marks) == sorted(r.run for r in out)
    pids = {p.name.split(".")[1] for p in marks.iterdir()}
    assert str(os.getpid()) not in pids


@pytest.mark.slow
def test_workers_give_the_numbers_of_one_process(tmp_path):
    configs_ = [tiny(m, epochs=2) for m in ("backprop", "dfa")]
    pool = sweep.run_sweep(configs_, tmp_path / "pool", verbose=0, workers=2)
    serial = sweep.run_sweep(configs_, tmp_path / "serial", verbose=0, isolate=False)
    for a, b in zip(pool, serial):
        ha, hb = (pd.read_csv(r.folder / "history.csv") for r in (a, b))
        columns = ["loss", "val_accuracy", "test_accuracy", "alignment_0"]
        np.testing.assert_allclose(ha[columns], hb[columns], rtol=1e-5)


class _Die(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        os._exit(3)  # a worker killed mid-run: no cleanup at all


def _die(config):
    return [_Die()]


def _killed_process(configs_, out):
    sweep.run_sweep(configs_, out, verbose=0, isolate=False, callbacks=_die)


def test_a_killed_workers_run_is_redone(tmp_path, train_calls):
    config = tiny("backprop", epochs=2, n_train=100, n_align=0)
    key = configs.run_id(config)
    worker = multiprocessing.get_context("spawn").Process(target=_killed_process,
                                                           args=([config], tmp_path))
    worker.start()
    worker.join(120)
    assert worker.exitcode == 3
    claim = tmp_path / folders.CLAIMS / key
    assert json.loads(claim.read_text())["pid"] == worker.pid  # left behind
    assert json.loads((tmp_path / key / "config.json").read_text())["status"] == "running"
    assert not (tmp_path / key / "done").exists()
    assert results.load_runs(tmp_path).empty  # an incomplete run is not a result

    out = sweep.run_sweep([config], tmp_path, verbose=0, isolate=False)
    assert (out[0].status, out[0].redone, out[0].cached) == ("done", True, False)
    assert train_calls == [("backprop", key)]
    assert pd.read_csv(tmp_path / key / "history.csv")["epoch"].tolist() == [1, 2]
    assert not claim.exists()


class _DoubleFree(keras.callbacks.Callback):
    """Stands for a fault inside TensorFlow: the heap is corrupted and glibc aborts."""

    def on_epoch_end(self, epoch, logs=None):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        pointer = libc.malloc(64)
        libc.free(pointer)
        libc.free(pointer)  # glibc: "free(): double free detected in tcache 2", abort


def _faults(config):
    return [_DoubleFree()] if config["method"] == "feedback_alignment" else []


def test_a_run_that_crashes_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    # Two worker processes start: the first dies in the first run, a second trains the
    # other (a Python exception in a run: test_compare_records_a_failed_run_and_exits_1).
    configs_ = [tiny(m, epochs=1, n_train=100, n_align=0) for m in ("fa", "backprop")]
    out = sweep.run_sweep(configs_, tmp_path, verbose=0, callbacks=_faults)
    assert [r.status for r in out] == ["failed", "done"]
    assert out[0].reason == ("the run's process was killed by signal 6 (SIGABRT); its last "
                             "output: free(): double free detected in tcache 2")
    crashed, done = out[0].folder, out[1].folder
    assert not (crashed / "done").exists()
    assert (crashed / "failed").read_text().splitlines()[0] == out[0].reason
    record = json.loads((crashed / "config.json").read_text())
    assert (record["status"], record["reason"]) == ("failed", out[0].reason)
    assert "double free detected" in (crashed / "output.log").read_text()
    # The crash took its worker down; a new one trained the other run.
    pids = [json.loads((f / "config.json").read_text())["pid"] for f in (crashed, done)]
    assert pids[0] != pids[1] and os.getpid() not in pids
    assert (done / "done").exists()
    assert [p.name for p in (tmp_path / folders.CLAIMS).iterdir()] == [".lock"]
    assert leftovers(tmp_path) == []

    df = results.load_runs(tmp_path)  # a failed run is not a result
    assert df["method"].unique().tolist() == ["backprop"]
    table = tables.annotate(results.accuracy_table(df), out)
    assert table[["method", "n", "failed"]].values.tolist() == [
        ["backprop", 1, 0], ["feedback_alignment", 0, 1]]
    assert table["note"].tolist() == ["", f"failed: {out[0].reason}"]
    assert tables.display(table)["test_mean"].iloc[1] == f"n/a (failed: {out[0].reason})"


def test_compare_records_a_failed_run_and_exits_1(tmp_path, capsys, monkeypatch):
    train = training.train

    def dfa_fails(config, folder, *args, **kwargs):
        if config["method"] == "direct_feedback_alignment":
            raise RuntimeError("a bug in DFA")
        return train(config, folder, *args, **kwargs)

    monkeypatch.setattr(training, "train", dfa_fails)
    argv = ["--quick", "--methods", "bp,dfa", "--datasets", "digits", "--epochs", "1",
            "--out", str(tmp_path), "--in-process"]
    assert compare.main(argv) == 1
    captured = capsys.readouterr()
    assert "2 runs (1 trained, 0 already done, 0 diverged, 0 not applicable, 1 failed)" in (
        captured.out)
    assert "1 run(s) failed" in captured.err
    failed = json.loads(next((tmp_path / "compare_quick" / "runs").glob("*/failed")).parent
                        .joinpath("config.json").read_text())
    assert failed["method"] == "direct_feedback_alignment" and failed["status"] == "failed"
    assert "direct_feedback_alignment on digits (mlp), seed 0: RuntimeError: a bug in DFA" in (
        captured.err)
    accuracy = pd.read_csv(tmp_path / "compare_quick" / "accuracy.csv", keep_default_na=False)
    assert accuracy[["method", "n", "failed", "note"]].values.tolist() == [
        ["backprop", 1, 0, ""], ["direct_feedback_alignment", 0, 1,
                                 "failed: RuntimeError: a bug in DFA"]]
    markdown = (tmp_path / "compare_quick" / "accuracy.md").read_text()
    assert "| n/a (failed: RuntimeError: a bug in DFA) |" in markdown


@pytest.mark.slow
def test_ray_tasks_run_the_sweep(tmp_path):
    ray = pytest.importorskip("ray")
    # Three runs on two CPUs: one Ray worker is reused for a second task.
    configs_ = [tiny(m, epochs=1, n_train=100, n_align=0) for m in ("backprop", "fa", "dfa")]
    try:
        out = sweep.run_sweep(configs_, tmp_path, verbose=0, ray="local")
    finally:
        ray.shutdown()
    assert [r.status for r in out] == ["done"] * 3
    assert all((tmp_path / r.run / "done").exists() for r in out)
    again = sweep.run_sweep(configs_, tmp_path, verbose=0)
    assert [r.cached for r in again] == [True] * 3


# ---------------------------------------------------------------------------
# The oneDNN reproduction script: a crashed try makes it exit 1


def test_onednn_repro_exits_1_when_a_try_crashes(monkeypatch, capsys):
    from experiments import repro_onednn

    outcomes = iter([
        subprocess.CompletedProcess([], -6, "", "I0000 start-up log\nmunmap_chunk(): invalid "
                                                "pointer\n"),
        subprocess.CompletedProcess([], 0, "ok: 1 epochs in 3.0 s, oneDNN custom operations "
                                           "on\n", ""),
    ])
    seen = []

    def run(command, env, **kwargs):
        seen.append((command[-6:-4], env["TF_ENABLE_ONEDNN_OPTS"]))
        return next(outcomes)

    monkeypatch.setattr(repro_onednn.subprocess, "run", run)
    assert repro_onednn.main(["--cases", "conv_28", "--tries", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("conv_28 try 1: crashed (SIGABRT) after ")
    assert out[1].endswith(" -- munmap_chunk(): invalid pointer")
    assert out[2].endswith(" -- ok: 1 epochs in 3.0 s, oneDNN custom operations on")
    assert out[3] == "1 crashed"
    assert seen == [(["--child", "conv_28"], "1")] * 2  # oneDNN forced on in the tries
