"""The experiment runner (experiments.sweep) and the main job (experiments.compare).

Tiny runs (a few hundred digits, 1-2 epochs, small MLPs) into tmp_path.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import math  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import credit  # noqa: E402
from credit import results  # noqa: E402
from experiments import compare, sweep  # noqa: E402

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
    train = sweep._train

    def counting(config, folder, *args, **kwargs):
        calls.append((config["method"], folder.name))
        return train(config, folder, *args, **kwargs)

    monkeypatch.setattr(sweep, "_train", counting)
    return calls


def run_folders(path):
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# ---------------------------------------------------------------------------
# Configs and hashes


def test_run_id_is_a_stable_hash_of_the_completed_config():
    config = {"method": "dfa", "dataset": "digits", "seed": 0, "epochs": 3}
    explicit = {**sweep.DEFAULTS, **config, "method": "direct_feedback_alignment",
                "learning_rate": 0.001}
    key = sweep.run_id(config)
    assert len(key) == 12 and all(c in "0123456789abcdef" for c in key)
    assert sweep.run_id(explicit) == key  # aliases and omitted defaults hash alike
    assert sweep.run_id(dict(reversed(list(config.items())))) == key  # key order
    assert sweep.run_id({**config, "seed": 1}) != key
    assert sweep.run_id({**config, "learning_rate": 1e-2}) != key
    # Pinned: changing the defaults or the hashing renames every existing run folder.
    assert key == sweep.hashlib.sha256(
        sweep.canonical_json(sweep.complete(config)).encode()).hexdigest()[:12]
    assert sweep.complete(config)["model"] == {
        "type": "mlp", "hidden": [256, 256], "activation": "tanh",
        "output_activation": None, "batch_norm": False}


def test_grid_orders_by_dataset_seed_method():
    configs = sweep.grid(["backprop", "fa"], ["digits", "diabetes"], [0, 1], epochs=2)
    assert [(c["dataset"], c["seed"], c["method"]) for c in configs] == [
        ("digits", 0, "backprop"), ("digits", 0, "fa"), ("digits", 1, "backprop"),
        ("digits", 1, "fa"), ("diabetes", 0, "backprop"), ("diabetes", 0, "fa"),
        ("diabetes", 1, "backprop"), ("diabetes", 1, "fa")]
    assert all(c["epochs"] == 2 for c in configs)


def test_compare_defaults_cover_every_registered_method():
    configs = compare.configs_from_args(compare.parser().parse_args([]))
    assert {c["method"] for c in configs} == set(credit.available())
    assert [d for d in dict.fromkeys(c["dataset"] for c in configs)] == ["mnist", "digits", "diabetes"]
    assert sorted({c["seed"] for c in configs}) == [0, 1, 2]
    assert len(configs) == 3 * 3 * len(credit.available())
    mnist = next(c for c in configs if c["dataset"] == "mnist")
    assert mnist["model"]["hidden"] == [256, 256] and mnist["epochs"] == 20

    quick = compare.configs_from_args(compare.parser().parse_args(["--quick"]))
    assert sorted({c["seed"] for c in quick}) == [0]
    assert {c["n_train"] for c in quick if c["dataset"] == "mnist"} == {2000}

    picked = compare.configs_from_args(compare.parser().parse_args(
        ["--methods", "bp", "dfa", "--datasets", "digits", "--seeds", "0,4", "--epochs", "7"]))
    assert [(c["method"], c["seed"], c["epochs"]) for c in picked] == [
        ("bp", 0, 7), ("dfa", 0, 7), ("bp", 4, 7), ("dfa", 4, 7)]
    assert compare.parser().parse_args(["--seeds", "7,"]).seeds == [7]
    assert compare.parser().parse_args(["--seeds", "2"]).seeds == [0, 1]


# ---------------------------------------------------------------------------
# The main job, end to end


def test_compare_smoke_writes_its_files(tmp_path, capsys, train_calls):
    code = compare.main(["--quick", "--methods", "backprop,dfa,kickback", "--datasets",
                         "digits", "--epochs", "1", "--out", str(tmp_path)])
    assert code == 0
    folder = tmp_path / "compare_quick"
    assert sorted(p.name for p in folder.iterdir()) == [
        "accuracy.csv", "accuracy.md", "alignment.png", "convergence.csv", "convergence.md",
        "curves_accuracy.png", "runs"]
    assert [m for m, _ in train_calls] == ["backprop", "direct_feedback_alignment"]
    runs = run_folders(folder / "runs")
    assert runs == sorted(folder_name for _, folder_name in train_calls)
    for name in runs:
        run = folder / "runs" / name
        assert sorted(p.name for p in run.iterdir()) == ["config.json", "done", "history.csv"]
        config = json.loads((run / "config.json").read_text())
        assert sweep.run_id({k: v for k, v in config.items() if k not in sweep.RESERVED}) == name
        assert config["status"] == "done" and config["epochs"] == 1 and config["seed"] == 0
        assert config["architecture"] == "64-64-64-10"
        assert config["train_examples"] == 1437 and config["test_examples"] == 360
        history = pd.read_csv(run / "history.csv")
        assert list(history.columns) == [
            "epoch", "step", "wall_time", "loss", "accuracy", "val_loss", "val_accuracy",
            "alignment_0", "alignment_1", "alignment_2"]
        assert history["epoch"].tolist() == [1]
        assert history["step"].tolist() == [math.ceil(1437 / 32)]
        assert 0 <= history["val_accuracy"].iloc[0] <= 1
        assert history["alignment_2"].iloc[0] == pytest.approx(1.0)  # the output block
    backprop = next(r for r in runs if json.loads(
        (folder / "runs" / r / "config.json").read_text())["method"] == "backprop")
    assert pd.read_csv(folder / "runs" / backprop / "history.csv")[
        ["alignment_0", "alignment_1"]].values == pytest.approx(1.0)

    accuracy = pd.read_csv(folder / "accuracy.csv", keep_default_na=False)
    assert accuracy["method"].tolist() == ["backprop", "direct_feedback_alignment", "kickback"]
    assert accuracy["n"].tolist() == [1, 1, 0]
    assert accuracy["note"].tolist() == ["", "", KICKBACK_NOTE]
    markdown = (folder / "accuracy.md").read_text()
    assert f"| kickback | digits | val_accuracy | n/a ({KICKBACK_NOTE}) | n/a | 0 | 0 |" in markdown
    convergence = pd.read_csv(folder / "convergence.csv")
    assert convergence["target"].tolist() == [0.9, 0.9, 0.9]
    out = capsys.readouterr().out
    assert "3 runs (2 trained, 0 already done, 0 diverged, 1 not applicable)" in out
    assert "## Accuracy" in out and "## Convergence" in out and markdown.strip() in out

    # Running it again trains nothing and gives the same tables.
    train_calls.clear()
    assert compare.main(["--quick", "--methods", "backprop,dfa,kickback", "--datasets",
                         "digits", "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert train_calls == []
    assert (folder / "accuracy.md").read_text() == markdown
    assert "3 runs (0 trained, 2 already done" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Resuming, divergence, methods that do not apply


class _InterruptAtEpoch2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_sweep_resumes_without_repeating_runs(tmp_path, train_calls):
    configs = [tiny("backprop"), tiny("fa")]
    first_id, second_id = (sweep.run_id(c) for c in configs)

    def interrupt_second(config):
        return [_InterruptAtEpoch2()] if config["method"] == "feedback_alignment" else []

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(configs, tmp_path, verbose=0, callbacks=interrupt_second)
    assert [m for m, _ in train_calls] == ["backprop", "feedback_alignment"]
    assert (tmp_path / first_id / "done").exists()
    assert not (tmp_path / second_id / "done").exists()
    assert pd.read_csv(tmp_path / second_id / "history.csv")["epoch"].tolist() == [1]
    assert results.load_runs(tmp_path)["run"].unique().tolist() == [first_id]
    first_files = mtimes(tmp_path / first_id)

    train_calls.clear()
    resumed = sweep.run_sweep(configs, tmp_path, verbose=0)
    assert train_calls == [("feedback_alignment", second_id)]
    assert [(r.run, r.status, r.cached) for r in resumed] == [
        (first_id, "done", True), (second_id, "done", False)]
    assert mtimes(tmp_path / first_id) == first_files  # not retrained, not rewritten
    df = results.load_runs(tmp_path)
    assert len(df) == 4 and not df.duplicated(["run", "epoch"]).any()
    assert df.groupby("run")["epoch"].apply(list).to_dict() == {first_id: [1, 2],
                                                                 second_id: [1, 2]}
    assert sorted(df["status"].unique()) == ["done"]

    train_calls.clear()
    again = sweep.run_sweep(configs, tmp_path, verbose=0)
    assert train_calls == [] and [r.cached for r in again] == [True, True]
    assert leftovers(tmp_path) == []


def leftovers(path):
    """Temporary files of atomic writes left behind."""
    return [p.name for p in path.rglob(".*")]


def test_nan_run_is_recorded_as_diverged_and_the_sweep_goes_on(tmp_path, train_calls):
    relu = {"type": "mlp", "hidden": [64, 64], "activation": "relu"}
    exploding = tiny("backprop", "diabetes", learning_rate=1e8, model=relu, epochs=3)
    fine = tiny("backprop", "diabetes", model=relu)
    out = sweep.run_sweep([exploding, fine], tmp_path, verbose=0)
    assert [r.status for r in out] == ["diverged", "done"]
    assert len(train_calls) == 2
    bad = tmp_path / out[0].run
    assert sorted(p.name for p in bad.iterdir()) == ["config.json", "diverged", "done",
                                                     "history.csv"]
    assert json.loads((bad / "config.json").read_text())["status"] == "diverged"
    history = pd.read_csv(bad / "history.csv")
    assert len(history) == 1 and not np.isfinite(history["loss"].iloc[0])  # stopped early
    df = results.load_runs(tmp_path)
    assert df.groupby("run")["status"].first().to_dict() == {out[0].run: "diverged",
                                                             out[1].run: "done"}
    table = results.accuracy_table(df)
    assert table[["method", "dataset", "metric", "n", "diverged"]].values.tolist() == [
        ["backprop", "diabetes", "val_loss", 1, 1]]
    # A diverged run is finished: it is not run again.
    train_calls.clear()
    assert [r.status for r in sweep.run_sweep([exploding, fine], tmp_path, verbose=0)] == [
        "diverged", "done"]
    assert train_calls == []


def test_method_that_does_not_apply_is_skipped_with_a_note(tmp_path, train_calls):
    out = sweep.run_sweep([tiny("kickback"), tiny("backprop", epochs=1)], tmp_path, verbose=0)
    assert [(r.status, r.run, r.folder) for r in out][0] == ("not_applicable", None, None)
    assert "one scalar output" in out[0].reason
    assert [m for m, _ in train_calls] == ["backprop"]
    assert run_folders(tmp_path) == [out[1].run]  # no folder for the skipped run

    table = sweep.annotate(results.accuracy_table(results.load_runs(tmp_path)), out)
    assert table["method"].tolist() == ["backprop", "kickback"]
    assert table["note"].tolist() == ["", KICKBACK_NOTE]
    kickback = table.iloc[1]
    assert kickback["metric"] == "val_accuracy" and math.isnan(kickback["final_mean"])
    assert (kickback["n"], kickback["diverged"]) == (0, 0)
    markdown = results.to_markdown(sweep.display(table))
    assert markdown.splitlines()[-1] == (
        f"| kickback | digits | val_accuracy | n/a ({KICKBACK_NOTE}) | n/a | 0 | 0 |")


def test_kickback_runs_on_the_regression_task(tmp_path):
    out = sweep.run_sweep([tiny("kickback", "diabetes", epochs=1)], tmp_path, verbose=0)
    assert out[0].status == "done"
    history = pd.read_csv(tmp_path / out[0].run / "history.csv")
    assert {"loss", "mse", "val_loss", "val_mse"} <= set(history.columns)


@pytest.mark.slow
def test_same_config_trains_identically(tmp_path):
    config = tiny("dfa")
    a = sweep.run_sweep([config], tmp_path / "a", verbose=0)[0]
    b = sweep.run_sweep([config], tmp_path / "b", verbose=0)[0]
    columns = ["loss", "accuracy", "val_loss", "val_accuracy", "alignment_0"]
    ha = pd.read_csv(a.folder / "history.csv")[columns]
    hb = pd.read_csv(b.folder / "history.csv")[columns]
    np.testing.assert_allclose(ha.values, hb.values, rtol=1e-5)


# ---------------------------------------------------------------------------
# Bad flags and configs fail before any training


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started despite a bad flag or config")

    monkeypatch.setattr(sweep, "_train", fail)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "--methods: got 'nope'; unknown credit-assignment method 'nope'"),
    (["--methods", "bp,dfx"], "Did you mean 'dfa'?"),
    (["--methods", "all,bp"], "--methods: 'all' cannot be combined with other names"),
    (["--datasets", "mnsit"], "--datasets: unknown data set(s) 'mnsit'; choose from"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    (["--epochs", "ten"], "argument --epochs: must be an integer >= 1, got 'ten'"),
    (["--seeds", "0"], "argument --seeds: a seed count must be >= 1, got '0'"),
    (["--seeds", "1,x"], "argument --seeds: expected a count (e.g. 3) or a comma-separated list"),
    (["--seeds", "1,-2"], "argument --seeds: seeds must be >= 0, got '1,-2'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_flag_fails_before_training(argv, message, tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_configs_are_all_reported_before_training(tmp_path, no_training):
    configs = [tiny("backprop"), tiny("backprop", epochs=0), tiny("nope"),
               tiny("fa", dataset="cifar"), tiny("fa", learning_rate=-1.0),
               tiny("fa", model={"type": "mlp", "hidden": [0]}),
               tiny("dfa", method_config={"bogus": 1}), tiny("fa", status="done")]
    with pytest.raises(sweep.ConfigError) as err:
        sweep.run_sweep(configs, tmp_path / "runs", verbose=0)
    lines = str(err.value).splitlines()
    assert lines[0] == "config key 'epochs': got 0; epochs must be an integer > 0. Pass e.g. 10."
    assert lines[1].startswith("config key 'method': got 'nope'; unknown credit-assignment "
                               "method 'nope'.")
    assert lines[2].startswith("config key 'dataset': got 'cifar'; not a data set of "
                               "credit.data. Choose from ")
    assert lines[3] == ("config key 'learning_rate': got -1.0; the learning rate must be a "
                        "finite number > 0. Pass e.g. 0.001.")
    assert lines[4].startswith("config key 'model': got {'type': 'mlp', 'hidden': [0]")
    assert "'hidden' must be a list of positive integers" in lines[4]
    assert lines[5] == (
        "config key 'method_config': got {'bogus': 1}; bad config for method "
        "'direct_feedback_alignment': DirectFeedbackAlignment.__init__() got an unexpected "
        "keyword argument 'bogus'. Hyperparameters of 'direct_feedback_alignment': seed, scale, at.")
    assert lines[6] == "unknown config key 'status'; it is written by the runner; remove it."
    assert len(lines) == 7
    assert not (tmp_path / "runs").exists()


def test_write_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "a.txt"
    sweep.write_atomic(path, "old")
    sweep.write_atomic(path, "new text")
    sweep.write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert path.read_text() == "new text"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]
