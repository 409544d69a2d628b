"""Tests of credit.results against hand-computed numbers.

The runs folder built by ``runs_dir`` (val_* = validation split, test_* = test split):

digits (classification), epochs 1-3, steps 10/20/30:
    backprop seed 0: loss 1.0 0.5 0.3, test_accuracy 0.80 0.90 0.88, val_accuracy 0.82 0.86 0.91
                     (best validation epoch 3: test 0.88), wall_time 1 2 3
    backprop seed 1: loss 1.2 0.6 0.2, test_accuracy 0.70 0.85 0.94, val_accuracy 0.75 0.88 0.87
                     (best validation epoch 2: test 0.85), wall_time 1.5 3 4.5
    dfa seed 0:      loss 2.0 1.5 1.0, test_accuracy 0.50 0.60 0.70, val_accuracy 0.55 0.65 0.62
                     (best epoch 2: test 0.60)
    dfa seed 1:      diverged (marker file), loss 2.0 NaN
    dfa seed 2:      diverged ("status" in config.json), empty history
    fa seed 0:       incomplete (no done marker)
diabetes (regression):
    backprop seed 0: loss 1.0 0.8 0.6, test_loss 0.8 0.6 0.7, val_loss 0.85 0.7 0.65 (best 3)
    backprop seed 1: loss 0.9 0.7 0.5, test_loss 0.9 0.5 0.4, val_loss 0.95 0.45 0.5 (best 2)

Selecting on the test split instead would pick other epochs (0.90 and 0.94 for backprop
on digits), so the tables' numbers show which split chose.
"""

import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from credit import results

EPOCHS = {"epoch": [1, 2, 3], "step": [10, 20, 30]}


@pytest.fixture(autouse=True)
def _fresh_keras():
    """Overrides the conftest fixture of the same name: these tests build no Keras
    model, so the per-test Keras reset (about 0.3 s each) is skipped."""
    yield
T_975 = {1: 12.706204736174707, 2: 4.302652729749464}  # Student t quantiles, from tables


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
    return {"method": method, "dataset": dataset, "model": "mlp", "seed": seed,
            "val_fraction": 0.1, **extra}


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    cls = dict(EPOCHS)
    write_run(root, "a01", config("backprop", "digits", 0, lr=0.01, hidden=[32]), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [1.0, 0.5, 0.3], "accuracy": [0.7, 0.85, 0.9],
        "val_loss": [0.9, 0.6, 0.5], "val_accuracy": [0.82, 0.86, 0.91],
        "test_loss": [0.9, 0.6, 0.5], "test_accuracy": [0.80, 0.90, 0.88]})
    write_run(root, "a02", config("backprop", "digits", 1, lr=0.01, hidden=[32]), {
        **cls, "wall_time": [1.5, 3.0, 4.5], "loss": [1.2, 0.6, 0.2], "accuracy": [0.6, 0.8, 0.95],
        "val_loss": [1.0, 0.7, 0.3], "val_accuracy": [0.75, 0.88, 0.87],
        "test_loss": [1.0, 0.7, 0.3], "test_accuracy": [0.70, 0.85, 0.94]})
    write_run(root, "b01", config("dfa", "digits", 0), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [2.0, 1.5, 1.0], "accuracy": [0.4, 0.5, 0.6],
        "val_loss": [2.0, 1.6, 1.2], "val_accuracy": [0.55, 0.65, 0.62],
        "test_loss": [2.0, 1.6, 1.2], "test_accuracy": [0.50, 0.60, 0.70]})
    write_run(root, "b02", config("dfa", "digits", 1), {
        "epoch": [1, 2], "step": [10, 20], "wall_time": [1.0, 2.0], "loss": [2.0, math.nan],
        "accuracy": [0.4, math.nan], "val_loss": [2.0, math.nan], "val_accuracy": [0.5, math.nan],
        "test_loss": [2.0, math.nan], "test_accuracy": [0.55, math.nan]}, diverged=True)
    write_run(root, "b03", config("dfa", "digits", 2, status="diverged"), None)
    write_run(root, "c01", config("fa", "digits", 0), {
        "epoch": [1], "step": [10], "wall_time": [1.0], "loss": [1.0], "accuracy": [0.5],
        "val_loss": [1.0], "val_accuracy": [0.5], "test_loss": [1.0], "test_accuracy": [0.5]},
        done=False)
    write_run(root, "d01", config("backprop", "diabetes", 0), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [1.0, 0.8, 0.6], "mse": [1.0, 0.8, 0.6],
        "val_loss": [0.85, 0.7, 0.65], "val_mse": [0.85, 0.7, 0.65],
        "test_loss": [0.8, 0.6, 0.7], "test_mse": [0.8, 0.6, 0.7]})
    write_run(root, "d02", config("backprop", "diabetes", 1), {
        **cls, "wall_time": [1.0, 2.0, 3.0], "loss": [0.9, 0.7, 0.5], "mse": [0.9, 0.7, 0.5],
        "val_loss": [0.95, 0.45, 0.5], "val_mse": [0.95, 0.45, 0.5],
        "test_loss": [0.9, 0.5, 0.4], "test_mse": [0.9, 0.5, 0.4]})
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
                   "val_accuracy", "test_accuracy", "mse", "val_mse", "test_mse", "lr",
                   "hidden", "val_fraction"]:
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
    assert a01["val_accuracy"].tolist() == [0.82, 0.86, 0.91]
    assert a01["test_accuracy"].tolist() == [0.80, 0.90, 0.88]
    assert a01["epoch"].tolist() == [1, 2, 3]
    assert a01["lr"].iloc[0] == 0.01 and a01["hidden"].iloc[0] == "[32]"
    assert set(df["seed"]) == {0, 1, 2}


def test_load_runs_include_incomplete(runs_dir):
    df = results.load_runs(runs_dir, include_incomplete=True)
    fa = df[df["method"] == "fa"]
    assert len(fa) == 1 and fa["status"].iloc[0] == "incomplete" and fa["run"].iloc[0] == "c01"


def test_load_runs_finds_the_runs_below_the_out_folder(runs_dir, caplog):
    """``compare --out DIR`` writes DIR/compare/runs/<hash>: any folder above finds them."""
    expected = results.load_runs(runs_dir)
    out = runs_dir.parent / "out"
    shutil.copytree(runs_dir, out / "compare" / "runs")
    with caplog.at_level(logging.INFO, logger="credit.results"):
        for path in (out / "compare", out):
            pd.testing.assert_frame_equal(results.load_runs(path), expected)
    runs = out / "compare" / "runs"
    assert caplog.messages == [
        f"load_runs: 8 runs in {runs}: 5 done, 2 diverged, 1 incomplete (skipped)"] * 2


def test_load_runs_skips_hidden_folders(runs_dir):
    write_run(runs_dir.parent / ".claims", "x", config("fa", "digits", 0), None)
    assert sorted(results.load_runs(runs_dir.parent)["run"].unique()) == [
        "a01", "a02", "b01", "b02", "b03", "d01", "d02"]


def test_load_runs_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        results.load_runs(missing)


def test_load_runs_empty_folder_says_so(tmp_path, caplog):
    (tmp_path / "compare" / "runs").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="credit.results"):
        df = results.load_runs(tmp_path)
    assert len(df) == 0
    assert list(df.columns) == results.RUN_COLUMNS + ["epoch", "step", "wall_time", "loss"]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert f"no runs under {tmp_path}" in caplog.messages[0]


def test_load_runs_config_without_method(tmp_path):
    write_run(tmp_path, "x", {"dataset": "digits", "model": "mlp", "seed": 0}, None)
    with pytest.raises(ValueError, match="method"):
        results.load_runs(tmp_path)


def test_load_runs_renames_the_test_split_of_runs_without_validation(tmp_path):
    """Runs written before the validation split evaluated the test split as val_*."""
    legacy = {"method": "backprop", "dataset": "digits", "model": "mlp", "seed": 0}
    write_run(tmp_path, "old", legacy, {**EPOCHS, "wall_time": [1.0, 2.0, 3.0],
                                        "loss": [1.0, 0.5, 0.3], "val_loss": [0.9, 0.6, 0.5],
                                        "val_accuracy": [0.8, 0.9, 0.85]})
    df = results.load_runs(tmp_path)
    assert "val_accuracy" not in df.columns
    assert df["test_accuracy"].tolist() == [0.8, 0.9, 0.85]
    run = results.run_table(df).iloc[0]
    assert run["test_final"] == 0.85 and math.isnan(run["test"]) and math.isnan(run["best_epoch"])


# --- run_table and statistics ----------------------------------------------------------


def test_run_table_selects_the_epoch_on_the_validation_split(df):
    runs = results.run_table(df, keep=["lr"]).set_index("run")
    assert list(runs.columns) == ["method", "dataset", "model", "seed", "status", "metric",
                                  "epochs", "best_epoch", "val", "test", "test_final",
                                  "seconds", "lr"]
    expected = {  # run: best epoch, val there, test there, test at the last epoch
        "a01": (3, 0.91, 0.88, 0.88), "a02": (2, 0.88, 0.85, 0.94),
        "b01": (2, 0.65, 0.60, 0.70), "d01": (3, 0.65, 0.7, 0.7), "d02": (2, 0.45, 0.5, 0.4)}
    for run, values in expected.items():
        assert tuple(runs.loc[run, ["best_epoch", "val", "test", "test_final"]]) == values, run
    assert runs.loc["a02", "seconds"] == 4.5 and runs.loc["a02", "lr"] == 0.01
    assert runs.loc["d01", "metric"] == "loss" and runs.loc["a01", "metric"] == "accuracy"
    for run in ("b02", "b03"):  # diverged: counted, no numbers
        assert runs.loc[run, "status"] == "diverged" and math.isnan(runs.loc[run, "test"])


def test_mean_ci_is_the_student_t_interval():
    mean, half = results.mean_ci([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(T_975[2] * 0.02 / math.sqrt(3))     # s = 0.02
    mean, half = results.mean_ci([1.0, 2.0, math.nan], confidence=0.95)
    assert mean == 1.5 and half == pytest.approx(T_975[1] * math.sqrt(0.5) / math.sqrt(2))
    assert results.mean_ci([0.5])[0] == 0.5 and math.isnan(results.mean_ci([0.5])[1])
    assert all(math.isnan(v) for v in results.mean_ci([]))
    with pytest.raises(ValueError, match="confidence must be in"):
        results.mean_ci([1.0, 2.0], confidence=95)


def _paired_frame():
    seeds = [0, 1, 2]
    return pd.DataFrame({
        "method": ["bp"] * 3 + ["fa"] * 3 + ["dfa"] * 3,
        "dataset": "d", "model": "m", "seed": seeds * 3,
        "test": [0.90, 0.91, 0.92,        # bp
                 0.85, 0.87, 0.86,        # fa: diffs -0.05 -0.04 -0.06
                 0.91, 0.89, 0.94]})      # dfa: diffs 0.01 -0.02 0.02


def test_paired_differences_against_hand_computed_intervals():
    pairs = results.paired_differences(_paired_frame(), baseline="bp").set_index("method")
    assert list(pairs.index) == ["dfa", "fa"]
    fa = pairs.loc["fa"]
    half = T_975[2] * 0.01 / math.sqrt(3)                             # s of the diffs = 0.01
    assert fa["n_pairs"] == 3 and fa["diff_mean"] == pytest.approx(-0.05)
    assert fa["diff_ci"] == pytest.approx(half)
    assert (fa["diff_low"], fa["diff_high"]) == pytest.approx((-0.05 - half, -0.05 + half))
    assert fa["diff_significant"]                                     # (-0.075, -0.025)
    dfa = pairs.loc["dfa"]
    s = math.sqrt(((0.01 - 1 / 300) ** 2 + (-0.02 - 1 / 300) ** 2 + (0.02 - 1 / 300) ** 2) / 2)
    assert dfa["diff_mean"] == pytest.approx(1 / 300)
    assert dfa["diff_ci"] == pytest.approx(T_975[2] * s / math.sqrt(3))
    assert not dfa["diff_significant"]                                # straddles 0


def test_paired_differences_pair_by_seed_and_refuse_duplicates():
    frame = _paired_frame()
    frame = frame[~((frame["method"] == "fa") & (frame["seed"] == 0))]   # fa lacks seed 0
    fa = results.paired_differences(frame, baseline="bp").set_index("method").loc["fa"]
    assert fa["n_pairs"] == 2 and fa["diff_mean"] == pytest.approx(-0.05)  # seeds 1, 2
    twice = pd.concat([_paired_frame(), _paired_frame().iloc[[3]]])
    with pytest.raises(ValueError, match="one run per method, group and seed"):
        results.paired_differences(twice, baseline="bp")


# --- accuracy_table ----------------------------------------------------------------


def test_accuracy_table(df):
    table = results.accuracy_table(df)
    assert list(table.columns) == [
        "method", "dataset", "model", "metric", "val_mean", "val_ci", "test_mean", "test_ci",
        "test_final_mean", "test_final_ci", "best_epoch_mean", "diff_mean", "diff_ci",
        "diff_low", "diff_high", "diff_significant", "n", "n_pairs", "diverged"]
    assert list(zip(table["dataset"], table["method"])) == [
        ("diabetes", "backprop"), ("digits", "backprop"), ("digits", "dfa")]

    bp = row(table, "backprop", "digits")
    assert bp["metric"] == "accuracy"
    assert bp["val_mean"] == pytest.approx((0.91 + 0.88) / 2)
    assert bp["test_mean"] == pytest.approx((0.88 + 0.85) / 2)        # at the best val epochs
    # Two seeds: half-width t(0.975, 1) * s / sqrt(2) with s = |a - b| / sqrt(2).
    assert bp["test_ci"] == pytest.approx(T_975[1] * 0.03 / 2)
    assert bp["test_final_mean"] == pytest.approx((0.88 + 0.94) / 2)
    assert bp["test_final_ci"] == pytest.approx(T_975[1] * 0.06 / 2)
    assert bp["best_epoch_mean"] == 2.5
    assert math.isnan(bp["diff_mean"]) and bp["n_pairs"] == 0        # the baseline itself
    assert bp["n"] == 2 and bp["diverged"] == 0

    dfa = row(table, "dfa", "digits")
    assert dfa["test_mean"] == pytest.approx(0.60) and math.isnan(dfa["test_ci"])  # one seed
    assert dfa["diff_mean"] == pytest.approx(0.60 - 0.88)             # seed 0 only
    assert dfa["n_pairs"] == 1 and not dfa["diff_significant"] and math.isnan(dfa["diff_ci"])
    assert dfa["n"] == 1 and dfa["diverged"] == 2

    reg = row(table, "backprop", "diabetes")
    assert reg["metric"] == "loss"
    assert reg["val_mean"] == pytest.approx((0.65 + 0.45) / 2)        # lowest val loss
    assert reg["test_mean"] == pytest.approx((0.7 + 0.5) / 2)
    assert reg["test_final_mean"] == pytest.approx((0.7 + 0.4) / 2)


def test_accuracy_table_final_skips_trailing_nan():
    df = pd.DataFrame({
        "method": "m", "dataset": "d", "model": "mlp", "seed": 0, "run": "r", "status": "done",
        "epoch": [1, 2, 3], "step": [1, 2, 3], "wall_time": [1.0, 2.0, 3.0], "loss": [1.0, 0.9, 0.8],
        "val_accuracy": [0.5, 0.7, math.nan], "test_accuracy": [0.5, 0.6, math.nan]})
    t = results.accuracy_table(df).iloc[0]
    assert t["test_final_mean"] == pytest.approx(0.6) and t["test_mean"] == pytest.approx(0.6)
    assert t["n"] == 1


# --- convergence_table ----------------------------------------------------------------


def test_convergence_table_classification(df):
    table = results.convergence_table(df[df["dataset"] == "digits"], target=0.9)
    assert list(table.columns) == ["method", "dataset", "metric", "target", "epochs", "steps",
                                   "seconds", "reached", "n_reached", "n", "auc_loss", "diverged"]
    bp = row(table, "backprop", "digits")
    assert bp["metric"] == "test_accuracy" and bp["target"] == 0.9
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


def test_convergence_table_regression_uses_the_test_loss(df):
    table = results.convergence_table(df[df["dataset"] == "diabetes"], target=0.6)
    reg = row(table, "backprop", "diabetes")
    assert reg["metric"] == "test_loss"
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
    table = results.accuracy_table(df[df["dataset"] == "digits"])
    shown = table.drop(columns=["model", "test_final_mean", "test_final_ci",
                                "best_epoch_mean", "n_pairs"])
    assert results.to_markdown(shown) == (
        "| method | dataset | metric | val | test | diff | n | diverged |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| backprop | digits | accuracy | 0.895 ± 0.191 | 0.865 ± 0.191 | n/a | 2 | 0 |\n"
        "| dfa | digits | accuracy | 0.650 | 0.600 | -0.280 | 1 | 2 |"
    )


def test_to_markdown_marks_significant_differences():
    pairs = results.paired_differences(_paired_frame(), baseline="bp")
    assert results.to_markdown(pairs[["method", "diff_mean", "diff_ci", "diff_low",
                                      "diff_high", "diff_significant"]]) == (
        "| method | diff |\n"
        "| --- | ---: |\n"
        "| dfa | 0.003 ± 0.052 |\n"
        "| fa | -0.050 ± 0.025 * |"
    )


# --- plot_curves ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric, band, panels", [
    (None, "minmax", 1),          # test_accuracy: the classification data set only
    ("val_loss", "std", 2),       # both data sets
    ("loss", "minmax", 2),
])
def test_plot_curves_writes_png(df, tmp_path, metric, band, panels):
    path = tmp_path / "figs" / "curves.png"
    out = results.plot_curves(df, path, metric=metric, band=band)
    assert out == path
    content = path.read_bytes()
    assert content.startswith(b"\x89PNG\r\n\x1a\n") and content[12:16] == b"IHDR"
    width, height = int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")
    # 4.5 x 3.5 inches per panel at 100 dpi, and 2.6 inches for the legend of the methods
    assert (width, height) == (450 * panels + 260, 350)


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures that plot_curves saves."""
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig

    def record(self, *args, **kwargs):
        saved.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def test_plot_curves_draws_one_panel_per_model_and_data_set(tmp_path, figures):
    cnn, resnet = {"type": "cnn", "filters": [8]}, {"type": "resnet", "depth": 8}
    root = tmp_path / "runs"
    curves = {}  # (dataset, model type, method) -> test accuracy per epoch, per seed
    for d, dataset in enumerate(("digits", "mnist")):
        for m, model in enumerate((cnn, resnet)):
            for k, method in enumerate(("backprop", "dfa")):
                if (dataset, method) == ("mnist", "dfa") and model is cnn:
                    continue  # a panel may lack a method
                for seed in (0, 1):
                    acc = [0.1 * (1 + d + m + k) + 0.01 * seed * e for e in (1, 2, 3)]
                    curves.setdefault((dataset, model["type"], method), []).append(acc)
                    write_run(root, f"{dataset}{m}{k}{seed}",
                              config(method, dataset, seed, model=model),
                              {**EPOCHS, "loss": [1.0, 0.5, 0.2], "test_accuracy": acc})
    results.plot_curves(results.load_runs(root), tmp_path / "curves.png", columns=3)
    fig = figures[-1]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        "digits · cnn", "digits · resnet-8", "mnist · cnn", "mnist · resnet-8"]
    assert len(fig.axes) == 6  # 3 to a row, 2 rows: 2 hidden
    for ax in panels:
        dataset, model = ax.get_title().split(" · ")
        lines = {line.get_label(): line for line in ax.get_lines()}
        methods = sorted(m for d, t, m in curves if (d, t) == (dataset, model.split("-")[0]))
        assert sorted(lines) == methods
        for method, line in lines.items():
            expected = np.mean(curves[(dataset, model.split("-")[0], method)], axis=0)
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    colours = {(line.get_label(), line.get_color()) for ax in panels for line in ax.get_lines()}
    assert len(colours) == 2  # one colour per method, the same in every panel
    legend, = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["backprop", "dfa"]


def test_plot_curves_averages_runs_logged_at_different_steps_without_zigzag(tmp_path,
                                                                            figures):
    # Two seeds checked at interleaved steps (as the recurrent curriculum logs): each
    # rises linearly, seed 1 above seed 0. Averaging by x alone would alternate between
    # the two seeds' values; the runs interpolated onto a common grid give their mean.
    root = tmp_path / "runs"
    steps = {0: [0, 20, 40, 60], 1: [10, 30, 50]}
    for seed, xs in steps.items():
        acc = [0.5 + 0.2 * seed + 0.005 * x for x in xs]
        write_run(root, f"r{seed}", config("dfa", "digits", seed),
                  {"epoch": xs, "loss": [1.0] * len(xs), "test_accuracy": acc})
    results.plot_curves(results.load_runs(root), tmp_path / "curves.png")
    line, = figures[-1].axes[0].get_lines()
    x, y = line.get_xdata(), line.get_ydata()
    np.testing.assert_array_equal(x, [0, 10, 20, 30, 40, 50, 60])
    # Where both runs exist (10..50) the mean is 0.6 + 0.005 x; outside, the one run.
    expected = [0.5, 0.65, 0.7, 0.75, 0.8, 0.85, 0.8]
    np.testing.assert_allclose(y, expected, atol=1e-12)
    assert np.all(np.diff(y[1:-1]) > 0)  # no zigzag where the runs overlap


def test_plot_curves_errors(df, tmp_path):
    with pytest.raises(ValueError, match="band"):
        results.plot_curves(df, tmp_path / "x.png", band="iqr")
    with pytest.raises(ValueError, match="top5"):
        results.plot_curves(df, tmp_path / "x.png", metric="top5")
    with pytest.raises(ValueError, match="columns must be an integer >= 1"):
        results.plot_curves(df, tmp_path / "x.png", columns=0)
