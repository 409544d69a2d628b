"""experiments.recurrent: a tiny run of the whole pipeline, its files, resuming, flags.

The tiny run trains four models (about 30 s): those tests are marked slow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from credit import data  # noqa: E402
from experiments import recurrent  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
ARGS = ["--quick", "--steps", "12", "--tasks", "copy,text", "--methods", "bptt", "cdni",
        "--truncations", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("recurrent")
    summary = recurrent.main(ARGS + ["--out", str(out)])
    return out / "recurrent_quick", summary


@pytest.mark.slow
def test_tiny_run_writes_summary_tables_figures_and_run_folders(tiny):
    folder, summary = tiny
    table = pd.read_csv(folder / "summary.csv")
    assert list(table.columns) == ["task", "method", "truncation", "seed",
                                   "max_length_solved", "bpc"]
    assert sorted(zip(table["task"], table["method"])) == [
        ("copy", "bptt"), ("copy", "cdni"), ("text", "bptt"), ("text", "cdni")]
    copy, text = table[table["task"] == "copy"], table[table["task"] == "text"]
    assert copy["bpc"].isna().all() and (copy["max_length_solved"] >= 0).all()
    assert text["max_length_solved"].isna().all() and (text["bpc"] > 0).all()
    assert (table["truncation"] == 2).all() and (table["seed"] == 0).all()
    runs_table = pd.read_csv(folder / "runs.csv")
    assert len(runs_table) == 4 and (runs_table["seconds"] > 0).all()
    assert runs_table.loc[runs_table["method"] == "cdni", "sg_loss"].notna().all()
    assert runs_table.loc[runs_table["method"] == "bptt", "sg_loss"].isna().all()
    for name in ("summary.md", "runs.md", "copy.md", "copy.csv", "text.md", "text.csv"):
        assert (folder / name).is_file(), name
    assert "cdni_minus_bptt" in (folder / "copy.md").read_text()
    for name in ("horizon.png", "curriculum_copy.png"):
        assert (folder / name).read_bytes()[:8] == PNG, name
    runs = sorted(r for r in (folder / "runs").iterdir() if not r.name.startswith("."))
    assert len(runs) == 4 and all((r / "done").is_file() for r in runs)
    config = json.loads((runs[0] / "config.json").read_text())
    assert recurrent.run_key(config) == runs[0].name
    assert not list(folder.rglob(".*.tmp"))


@pytest.mark.slow
def test_a_second_run_reads_the_finished_runs_back(tiny, monkeypatch):
    folder, summary = tiny

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(recurrent, "train_copy", no_training)
    monkeypatch.setattr(recurrent, "train_text", no_training)
    again = recurrent.main(ARGS + ["--out", str(folder.parent)])
    pd.testing.assert_frame_equal(again, summary)


def test_an_interrupted_run_is_trained_again_from_scratch(tmp_path):
    settings = dataclasses.replace(recurrent.QUICK, steps=4)
    config = recurrent.run_config("copy", "bptt", 2, 0, settings)
    runs = tmp_path / "runs"
    folder = runs / recurrent.run_key(config)
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("left by a killed run")     # and no done marker
    result = recurrent.run_one(config, runs, log=lambda line: None)
    assert (folder / "done").is_file() and not (folder / "stale.txt").exists()
    assert result["steps"] >= 4 and result["task"] == "copy"
    assert not (runs / ".claims" / folder.name).exists()          # the claim is released


def test_copy_error_scores_each_sequence_once():
    """The error helper reads predictions back per row and masks the padding."""
    batch = data.copy_task(length=2, n=3, bits=2, seed=0)
    windows = data.tbptt_sequence_windows(batch, window=2, batch_size=3, align=True)

    class Perfect:
        def predict(self, inputs, batch_size, verbose, callbacks):
            return np.where(windows.targets > 0.5, 30.0, -30.0)

    assert recurrent.copy_error(Perfect(), windows) < 1e-9

    class Coin:
        def predict(self, inputs, batch_size, verbose, callbacks):
            return np.zeros_like(windows.targets)

    assert recurrent.copy_error(Coin(), windows) == pytest.approx(2 * 2)   # 2 vectors x 2 bits


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "ptb"], ["--tasks", "ptb", "copy"]),
    (["--methods", "dfa"], ["--methods", "dfa", "bptt"]),
    (["--truncations", "0"], ["--truncations", "0", ">= 1"]),
    (["--truncations", "two"], ["--truncations", "two"]),
    (["--seeds", "-1"], ["--seeds", "-1"]),
])
def test_bad_flags_fail_before_training(argv, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        recurrent.main(argv + ["--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


# ---------------------------------------------------------------------------
# The horizon run: dni_aux, --horizon, the curriculum's threshold


def test_dni_aux_is_dni_through_time_with_the_auxiliary_task():
    settings = dataclasses.replace(recurrent.QUICK, aux_weight=0.5)
    spec = recurrent.method_spec("dni_aux", settings, 3)
    plain = recurrent.method_spec("dni", settings, 3)
    assert spec == {**plain, "aux_weight": 0.5}
    assert plain["name"] == "dni_through_time" and "aux_weight" not in plain
    model = recurrent.build_model("copy", 2, settings, seed=3)
    recurrent._compile(model, "copy", "dni_aux", settings, 3)
    assert model.method.aux_weight == 0.5 and not model.method.conditioned
    assert list(model.method.aux_heads) == ["lstm"]
    with pytest.raises(ValueError, match="method='dfa' is not one of bptt, dni, cdni, dni_aux"):
        recurrent.method_spec("dfa", settings, 0)


def test_horizon_flag_selects_the_horizon_grid(tmp_path):
    args, settings, tasks, methods, truncations, seeds, out = recurrent.parse_args(
        ["--horizon", "--out", str(tmp_path)])
    assert settings == recurrent.HORIZON and settings.chunk_steps == 50
    assert (tasks, methods, truncations, seeds) == (
        ["copy"], ["bptt", "dni", "cdni", "dni_aux"], [2, 3, 5], [0, 1, 2])
    assert out == tmp_path / "recurrent" / "horizon"
    # Other flags override the preset's choices.
    _, settings, tasks, methods, truncations, seeds, _ = recurrent.parse_args(
        ["--horizon", "--steps", "7", "--methods", "dni_aux", "--truncations", "3",
         "--seeds", "4", "--out", str(tmp_path)])
    assert (settings.steps, settings.chunk_steps) == (7, 50)
    assert (tasks, methods, truncations, seeds) == (["copy"], ["dni_aux"], [3], [4])
    # Without it, the default run is the committed one: three methods, the old settings.
    _, settings, tasks, methods, truncations, _, out = recurrent.parse_args(
        ["--out", str(tmp_path)])
    assert settings == recurrent.Settings() and methods == ["bptt", "dni", "cdni"]
    assert tasks == ["copy", "repeat_copy", "text"] and out == tmp_path / "recurrent"


def test_quick_and_horizon_together_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        recurrent.main(["--quick", "--horizon", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--quick and --horizon" in err and "--horizon --steps 100" in err


def test_new_settings_at_their_defaults_keep_the_committed_run_hashes():
    """The committed run's folders are named by the hash of their config; threshold and
    aux_weight at their defaults are left out of the config, so the names still match."""
    folders = sorted(pathlib.Path(__file__).parents[1].glob("results/recurrent/runs/*/"))
    assert folders
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        settings = recurrent.Settings(**{**config["settings"], "hidden_units": tuple(
            config["settings"]["hidden_units"])})
        again = recurrent.run_config(config["task"], config["method"], config["truncation"],
                                     config["seed"], settings)
        assert recurrent.run_key(again) == folder.name
        assert json.loads(json.dumps(again)) == config
    changed = recurrent.run_config("copy", "dni_aux", 2, 0, dataclasses.replace(
        recurrent.Settings(), threshold=0.5, aux_weight=0.1))["settings"]
    assert (changed["threshold"], changed["aux_weight"]) == (0.5, 0.1)


def test_the_threshold_decides_when_a_length_is_solved():
    """With a threshold above any error every check solves a length (at the default
    0.15 bits, 4 steps of training solve none): the length is the check's count + 1."""
    lenient = dataclasses.replace(recurrent.QUICK, steps=4, chunk_steps=2, threshold=1e6)
    result, curve = recurrent.train_copy("copy", "bptt", 2, 0, lenient)
    assert len(curve) == 2 and curve["solved"].all() and list(curve["length"]) == [1, 2]
    assert (curve["error"] > recurrent.Settings().threshold).all()
    assert result["max_length_solved"] == 2 and result["last_length"] == 3


def _finished_run(runs, method, truncation, seed, longest, curve):
    config = recurrent.run_config("copy", method, truncation, seed, recurrent.QUICK)
    folder = runs / recurrent.run_key(config)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"max_length_solved": longest}))
    pd.DataFrame(curve, columns=["step", "length", "error"]).to_csv(folder / "curve.csv")
    (folder / "done").write_text("")
    return config


def test_interval_table_against_scipy(tmp_path):
    """Longest lengths and errors at BPTT's first unsolved length, with t-intervals of
    the means and of the paired differences, against scipy's t quantile."""
    from scipy import stats

    runs = tmp_path / "runs"
    bptt = {0: 1, 1: 2, 2: 1}                      # seed -> longest solved
    dni = {0: 2, 1: 2, 2: 3}
    dni_error = {0: [(50, 2, 4.0), (100, 2, 0.1), (150, 3, 6.0)],      # at length 2: 0.1
                 1: [(50, 3, 5.0), (100, 3, 2.0)],                      # at length 3: 2.0
                 2: [(50, 2, 0.1), (100, 3, 0.1), (150, 4, 9.0)]}       # at length 2: 0.1
    bptt_error = {0: [(50, 2, 3.0), (100, 2, 5.0)], 1: [(50, 3, 7.0)],
                  2: [(50, 2, 6.0)]}
    configs = []
    for seed in range(3):
        configs.append(_finished_run(runs, "bptt", 2, seed, bptt[seed], bptt_error[seed]))
        configs.append(_finished_run(runs, "dni", 2, seed, dni[seed], dni_error[seed]))
    summary = pd.DataFrame({"task": "copy", "method": ["bptt", "dni"] * 3, "truncation": 2,
                            "seed": [0, 0, 1, 1, 2, 2],
                            "max_length_solved": [1, 2, 2, 2, 1, 3], "bpc": np.nan})
    errors = recurrent.reference_errors(tmp_path, configs)
    errors = errors.sort_values(["seed", "method"])
    assert list(errors["reference_length"]) == [2, 2, 3, 3, 2, 2]
    np.testing.assert_allclose(errors["reference_error"], [3.0, 0.1, 7.0, 2.0, 6.0, 0.1])
    table = recurrent.interval_table(summary, errors, "copy").set_index("method")
    t = stats.t.ppf(0.975, 2)

    def mean_ci(values):
        values = np.asarray(values, float)
        return values.mean(), t * values.std(ddof=1) / np.sqrt(3)

    for method, longest, error in (("bptt", [1, 2, 1], [3.0, 7.0, 6.0]),
                                   ("dni", [2, 2, 3], [0.1, 2.0, 0.1])):
        row = table.loc[method]
        np.testing.assert_allclose([row["longest_mean"], row["longest_ci"]], mean_ci(longest))
        np.testing.assert_allclose([row["error_mean"], row["error_ci"]], mean_ci(error))
        assert row["n"] == 3 and row["reference_length"] == "2/3"
    row = table.loc["dni"]
    np.testing.assert_allclose([row["diff_mean"], row["diff_ci"]], mean_ci([1, 0, 2]))
    np.testing.assert_allclose([row["error_diff_mean"], row["error_diff_ci"]],
                               mean_ci([-2.9, -5.0, -5.9]))
    assert not row["diff_significant"] and row["error_diff_significant"]
    assert np.isnan(table.loc["bptt", "diff_mean"])


def test_tables_only_reads_the_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("--tables-only trained a run")

    monkeypatch.setattr(recurrent, "train_copy", no_training)
    runs = tmp_path / "recurrent" / "horizon" / "runs"
    config = recurrent.run_config("copy", "bptt", 2, 1, recurrent.HORIZON)
    folder = runs / recurrent.run_key(config)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(
        {"max_length_solved": 2, "last_length": 3, "steps": 2500, "task": "copy",
         "method": "bptt", "truncation": 2, "seed": 1, "seconds": 9.0}))
    pd.DataFrame({"step": [50, 100], "length": [2, 3], "error": [0.1, 4.0],
                  "solved": [True, False], "loss": 0.1, "sg_loss": np.nan}).to_csv(
        folder / "curve.csv", index=False)
    (folder / "done").write_text("")
    summary = recurrent.main(["--horizon", "--tables-only", "--out", str(tmp_path)])
    assert summary[["method", "truncation", "seed", "max_length_solved"]].values.tolist() \
        == [["bptt", 2, 1, 2]]
    table = pd.read_csv(tmp_path / "recurrent" / "horizon" / "copy_intervals.csv")
    assert table[["T", "method", "n", "longest_mean", "error_mean"]].values.tolist() == [
        [2, "bptt", 1, 2.0, 4.0]]
    figure = tmp_path / "recurrent" / "horizon" / "copy_reference_error.png"
    assert figure.read_bytes()[:8] == PNG
    assert len([r for r in runs.iterdir() if not r.name.startswith(".")]) == 1
