"""Tests of credit.results against hand-computed numbers.

The runs folder built by ``runs_dir``:

digits (classification), epochs 1-3, steps 10/20/30:
    backprop seed 0: loss 1.0 0.5 0.3, val_accuracy 0.80 0.90 0.88, wall_time 1 2 3
    backprop seed 1: loss 1.2 0.6 0.2, val_accuracy 0.70 0.85 0.94, wall_time 1.5 3 4.5
    dfa seed 0:      loss 2.0 1.5 1.0, val_accuracy 0.50 0.60 0.70
    dfa seed 1:      diverged (marker file), loss 2.0 NaN
    dfa seed 2:      diverged ("status" in config.json), empty history
    fa seed 0:       incomplete (no done marker)
diabetes (regression):
    backprop seed 0: loss 1.0 0.8 0.6, val_loss 0.8 0.6 0.7
    backprop seed 1: loss 0.9 0.7 0.5, val_loss 0.9 0.5 0.4
"""

import json
import math

import pandas as pd
import pytest

from credit import results

EPOCHS = {"epoch": [1, 2, 3], "step": [10, 20, 30]}


def write_run(root, name, config, history, done=True, diverged=False):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if history is None:
        (folder / "history.csv").write_text("")
    else:
        pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    if diverged:
        (folder / "diverged").write_text("")
    if done:
        (folder / "done").write_text("")


def config(method, dataset, seed, **extra):
    return {"method": method, "dataset": dataset, "model": "mlp", "seed": seed, **extra}


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    cls = dict(EPOCHS)
    write_run(root, "a01", config("backprop", "digits", 0, lr=0.01, hidden=[32]), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [1.0, 0.5, 0.3], "accuracy": [0.7, 0.85, 0.9],
        "val_loss": [0.9, 0.6, 0.5], "val_accuracy": [0.80, 0.90, 0.88]})
    write_run(root, "a02", config("backprop", "digits", 1, lr=0.01, hidden=[32]), {
        **cls, "wall_time": [1.5, 3.0, 4.5], "loss": [1.2, 0.6, 0.2], "accuracy": [0.6, 0.8, 0.95],
        "val_loss": [1.0, 0.7, 0.3], "val_accuracy": [0.70, 0.85, 0.94]})
    write_run(root, "b01", config("dfa", "digits", 0), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [2.0, 1.5, 1.0], "accuracy": [0.4, 0.5, 0.6],
        "val_loss": [2.0, 1.6, 1.2], "val_accuracy": [0.50, 0.60, 0.70]})
    write_run(root, "b02", config("dfa", "digits", 1), {
        "epoch": [1, 2], "step": [10, 20], "wall_time": [1.0, 2.0], "loss": [2.0, math.nan],
        "accuracy": [0.4, math.nan], "val_loss": [2.0, math.nan], "val_accuracy": [0.55, math.nan]},
        diverged=True)
    write_run(root, "b03", config("dfa", "digits", 2, status="diverged"), None)
    write_run(root, "c01", config("fa", "digits", 0), {
        "epoch": [1], "step": [10], "wall_time": [1.0], "loss": [1.0], "accuracy": [0.5],
        "val_loss": [1.0], "val_accuracy": [0.5]}, done=False)
    write_run(root, "d01", config("backprop", "diabetes", 0), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [1.0, 0.8, 0.6], "mse": [1.0, 0.8, 0.6],
        "val_loss": [0.8, 0.6, 0.7], "val_mse": [0.8, 0.6, 0.7]})
    write_run(root, "d02", config("backprop", "diabetes", 1), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [0.9, 0.7, 0.5], "mse": [0.9, 0.7, 0.5],
        "val_loss": [0.9, 0.5, 0.4], "val_mse": [0.9, 0.5, 0.4]})
    (root / "not_a_run").mkdir()
    (root / "notes.txt").write_text("ignored")
    return root


@pytest.fixture
def df(runs_dir):
    return results.load_runs(runs_dir)


def row(table, method, dataset):
    rows = table[(table["method"] == method) & (table["dataset"] == dataset)]
    assert len(rows) == 1
    return rows.iloc[0]


# --- load_runs -------------------------------------------------------------------


def test_load_runs_tidy_frame(df):
    assert list(df.columns[:6]) == ["method", "dataset", "model", "seed", "run", "status"]
    for column in ["epoch", "step", "wall_time", "loss", "accuracy", "val_loss",
                   "val_accuracy", "mse", "val_mse", "lr", "hidden"]:
        assert column in df.columns
    # 3+3 backprop digits, 3 dfa, 2 diverged dfa, 1 empty-history dfa, 3+3 diabetes; no fa
    assert len(df) == 18
    assert sorted(df["run"].unique()) == ["a01", "a02", "b01", "b02", "b03", "d01", "d02"]
    status = df.groupby("run")["status"].first().to_dict()
    assert status == {"a01": "done", "a02": "done", "b01": "done", "b02": "diverged",
                      "b03": "diverged", "d01": "done", "d02": "done"}
    empty = df[df["run"] == "b03"]
    assert len(empty) == 1 and math.isnan(empty["epoch"].iloc[0])
    a01 = df[df["run"] == "a01"]
    assert a01["val_accuracy"].tolist() == [0.80, 0.90, 0.88]
    assert a01["epoch"].tolist() == [1, 2, 3]
    assert a01["lr"].iloc[0] == 0.01 and a01["hidden"].iloc[0] == "[32]"
    assert set(df["seed"]) == {0, 1, 2}


def test_load_runs_include_incomplete(runs_dir):
    df = results.load_runs(runs_dir, include_incomplete=True)
    fa = df[df["method"] == "fa"]
    assert len(fa) == 1 and fa["status"].iloc[0] == "incomplete" and fa["run"].iloc[0] == "c01"


def test_load_runs_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        results.load_runs(missing)


def test_load_runs_empty_folder(tmp_path):
    df = results.load_runs(tmp_path)
    assert len(df) == 0
    assert list(df.columns) == results.RUN_COLUMNS + ["epoch", "step", "wall_time", "loss"]


def test_load_runs_config_without_method(tmp_path):
    write_run(tmp_path, "x", {"dataset": "digits", "model": "mlp", "seed": 0}, None)
    with pytest.raises(ValueError, match="method"):
        results.load_runs(tmp_path)


# --- accuracy_table ----------------------------------------------------------------


def test_accuracy_table(df):
    table = results.accuracy_table(df)
    assert list(table.columns) == ["method", "dataset", "metric", "final_mean", "final_std",
                                   "best_mean", "best_std", "n", "diverged"]
    assert list(zip(table["dataset"], table["method"])) == [
        ("diabetes", "backprop"), ("digits", "backprop"), ("digits", "dfa")]
    for column in ["final_mean", "final_std", "best_mean", "best_std", "n", "diverged"]:
        assert pd.api.types.is_numeric_dtype(table[column])

    bp = row(table, "backprop", "digits")
    assert bp["metric"] == "val_accuracy"
    assert bp["final_mean"] == pytest.approx((0.88 + 0.94) / 2)       # 0.91
    assert bp["final_std"] == pytest.approx(0.03 * math.sqrt(2))      # deviations ±0.03, ddof=1
    assert bp["best_mean"] == pytest.approx((0.90 + 0.94) / 2)        # 0.92
    assert bp["best_std"] == pytest.approx(0.02 * math.sqrt(2))
    assert bp["n"] == 2 and bp["diverged"] == 0

    dfa = row(table, "dfa", "digits")
    assert dfa["final_mean"] == pytest.approx(0.70) and dfa["best_mean"] == pytest.approx(0.70)
    assert math.isnan(dfa["final_std"]) and math.isnan(dfa["best_std"])  # one seed
    assert dfa["n"] == 1 and dfa["diverged"] == 2

    reg = row(table, "backprop", "diabetes")
    assert reg["metric"] == "val_loss"
    assert reg["final_mean"] == pytest.approx((0.7 + 0.4) / 2)        # 0.55
    assert reg["final_std"] == pytest.approx(0.15 * math.sqrt(2))
    assert reg["best_mean"] == pytest.approx((0.6 + 0.4) / 2)         # min val_loss
    assert reg["best_std"] == pytest.approx(0.1 * math.sqrt(2))
    assert reg["n"] == 2 and reg["diverged"] == 0


def test_accuracy_table_final_skips_trailing_nan():
    df = pd.DataFrame({
        "method": "m", "dataset": "d", "model": "mlp", "seed": 0, "run": "r", "status": "done",
        "epoch": [1, 2, 3], "step": [1, 2, 3], "wall_time": [1.0, 2.0, 3.0], "loss": [1.0, 0.9, 0.8],
        "val_accuracy": [0.5, 0.6, math.nan], "val_loss": [1.0, 0.9, math.nan]})
    t = results.accuracy_table(df)
    assert t["final_mean"].iloc[0] == pytest.approx(0.6) and t["n"].iloc[0] == 1


# --- convergence_table ----------------------------------------------------------------


def test_convergence_table_classification(df):
    table = results.convergence_table(df[df["dataset"] == "digits"], target=0.9)
    assert list(table.columns) == ["method", "dataset", "metric", "target", "epochs", "steps",
                                   "seconds", "reached", "n_reached", "n", "auc_loss", "diverged"]
    bp = row(table, "backprop", "digits")
    assert bp["metric"] == "val_accuracy" and bp["target"] == 0.9
    assert bp["epochs"] == pytest.approx(2.5)        # seed 0 at epoch 2 (0.90), seed 1 at 3 (0.94)
    assert bp["steps"] == pytest.approx(25.0)        # (20 + 30) / 2
    assert bp["seconds"] == pytest.approx(3.25)      # (2.0 + 4.5) / 2
    assert bp["reached"] == "2/2" and bp["n_reached"] == 2 and bp["n"] == 2
    # trapezoid: seed 0 (1+.5)/2+(.5+.3)/2 = 1.15, seed 1 (1.2+.6)/2+(.6+.2)/2 = 1.3
    assert bp["auc_loss"] == pytest.approx((1.15 + 1.3) / 2)
    assert bp["diverged"] == 0

    dfa = row(table, "dfa", "digits")
    assert math.isnan(dfa["epochs"]) and math.isnan(dfa["steps"]) and math.isnan(dfa["seconds"])
    assert dfa["reached"] == "0/1" and dfa["n_reached"] == 0 and dfa["n"] == 1
    assert dfa["auc_loss"] == pytest.approx((2.0 + 1.5) / 2 + (1.5 + 1.0) / 2)   # 3.0
    assert dfa["diverged"] == 2


def test_convergence_table_never_reached(df):
    table = results.convergence_table(df[df["dataset"] == "digits"], target=0.95)
    bp = row(table, "backprop", "digits")
    assert bp["reached"] == "0/2" and bp["n_reached"] == 0
    assert math.isnan(bp["epochs"]) and math.isnan(bp["steps"]) and math.isnan(bp["seconds"])
    assert bp["auc_loss"] == pytest.approx(1.225)  # unaffected by the target


def test_convergence_table_regression_uses_test_loss(df):
    table = results.convergence_table(df[df["dataset"] == "diabetes"], target=0.6)
    reg = row(table, "backprop", "diabetes")
    assert reg["metric"] == "val_loss"
    assert reg["epochs"] == pytest.approx(2.0)   # seed 0: 0.6 <= 0.6 at 2; seed 1: 0.5 at 2
    assert reg["reached"] == "2/2"
    # trapezoid: (1+.8)/2+(.8+.6)/2 = 1.6 and (.9+.7)/2+(.7+.5)/2 = 1.4
    assert reg["auc_loss"] == pytest.approx(1.5)


def test_convergence_table_explicit_loss_metric(df):
    table = results.convergence_table(df, target=0.5, metric="loss")
    bp = row(table, "backprop", "digits")
    assert bp["metric"] == "loss"
    assert bp["epochs"] == pytest.approx(2.5)    # seed 0: 0.5 at 2; seed 1: 0.2 at 3
    assert bp["seconds"] == pytest.approx((2.0 + 4.5) / 2)
    reg = row(table, "backprop", "diabetes")   # seed 0 ends at 0.6; seed 1 reaches 0.5 at 3
    assert reg["reached"] == "1/2" and reg["epochs"] == pytest.approx(3.0)


def test_convergence_table_unknown_metric(df):
    with pytest.raises(ValueError, match="top5"):
        results.convergence_table(df, target=0.9, metric="top5")


# --- to_markdown --------------------------------------------------------------------------


def test_to_markdown_hand_made():
    table = pd.DataFrame({
        "method": ["backprop", "dfa"],
        "acc_mean": [0.9123, 0.7],
        "acc_std": [0.0041, math.nan],
        "n": [3, 1],
        "epochs": [2.5, math.nan],
        "reached": ["3/3", "0/1"],
    })
    assert results.to_markdown(table) == (
        "| method | acc | n | epochs | reached |\n"
        "| --- | ---: | ---: | ---: | --- |\n"
        "| backprop | 0.912 ± 0.004 | 3 | 2.500 | 3/3 |\n"
        "| dfa | 0.700 | 1 | n/a | 0/1 |"
    )
    assert results.to_markdown(table, floatfmt=".1f", missing="-").splitlines()[3] == (
        "| dfa | 0.7 | 1 | - | 0/1 |")


def test_to_markdown_all_numeric_keeps_ints():
    table = pd.DataFrame({"x_mean": [0.5], "x_std": [0.25], "n": [4]})
    assert results.to_markdown(table).splitlines()[2] == "| 0.500 ± 0.250 | 4 |"


def test_to_markdown_accuracy_table(df):
    text = results.to_markdown(results.accuracy_table(df[df["dataset"] == "digits"]))
    assert text == (
        "| method | dataset | metric | final | best | n | diverged |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: |\n"
        "| backprop | digits | val_accuracy | 0.910 ± 0.042 | 0.920 ± 0.028 | 2 | 0 |\n"
        "| dfa | digits | val_accuracy | 0.700 | 0.700 | 1 | 2 |"
    )


# --- plot_curves ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric, band", [(None, "minmax"), ("val_loss", "std"), ("loss", "minmax")])
def test_plot_curves_writes_png(df, tmp_path, metric, band):
    path = tmp_path / "figs" / "curves.png"
    out = results.plot_curves(df, path, metric=metric, band=band)
    assert out == path
    content = path.read_bytes()
    assert len(content) > 1000 and content.startswith(b"\x89PNG")


def test_plot_curves_errors(df, tmp_path):
    with pytest.raises(ValueError, match="band"):
        results.plot_curves(df, tmp_path / "x.png", band="iqr")
    with pytest.raises(ValueError, match="top5"):
        results.plot_curves(df, tmp_path / "x.png", metric="top5")
