"""Run records -> pandas tables of accuracy, convergence and paired statistics; plots.

The experiment runner writes one folder per run::

    <out>/runs/<hash>/config.json   # "method", "dataset", "model", "seed", ... (+ "status")
    <out>/runs/<hash>/history.csv   # one row per epoch: epoch, step, wall_time, loss, ...
    <out>/runs/<hash>/done          # marker, written last
    <out>/runs/<hash>/diverged      # optional marker

In ``history.csv``, ``val_*`` columns hold the metrics on the **validation** split (carved
from the training data; the best epoch and the hyperparameter choice read it) and
``test_*`` columns the metrics on the **test** split (recorded, never selected on);
``step`` and ``wall_time`` are cumulative (optimizer steps and seconds since the start
of training, at the end of the epoch).

*Runs written before the validation split existed* (their ``config.json`` has no
``val_fraction``) evaluated the test split under the name ``val_*``: :func:`load_runs`
renames those columns ``test_*``, so that every table shows the split it says; such runs
have no validation metric and no best epoch.

Statistics (:func:`mean_ci`, :func:`paired_differences`): means over seeds with a
95% Student-t confidence interval, and the difference of each method to a baseline
(backprop) on the same seed -- same initial weights where the models match, same
validation split, same batches in the same order -- with its own t-interval; a
difference whose interval excludes zero is marked ``significant``.

Typical use:

    >>> df = load_runs("results/compare")                       # doctest: +SKIP
    >>> print(to_markdown(accuracy_table(df)))                  # doctest: +SKIP
    >>> print(to_markdown(convergence_table(df, target=0.9)))   # doctest: +SKIP
    >>> plot_curves(df, "results/curves.png")                   # doctest: +SKIP

Tables are plain DataFrames with numeric columns; :func:`to_markdown` is the
separate formatting step.
"""

import json
import logging
import math
import os
import pathlib

import numpy as np
import pandas as pd

__all__ = [
    "RUN_COLUMNS",
    "load_runs",
    "run_table",
    "mean_ci",
    "mean_std",
    "paired_differences",
    "accuracy_table",
    "convergence_table",
    "to_markdown",
    "plot_curves",
]

logger = logging.getLogger(__name__)

#: Columns that identify a run, first in every frame returned by :func:`load_runs`.
RUN_COLUMNS = ["method", "dataset", "model", "seed", "run", "status"]
_HISTORY_COLUMNS = ["epoch", "step", "wall_time", "loss"]
_STATUSES = ("done", "diverged", "incomplete", "not_applicable")


# ---------------------------------------------------------------------------
# Loading


def _config_value(value):
    """Scalars stay as they are; lists and dicts become JSON strings."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True)


def _read_run(folder):
    """Return (config dict, status, history DataFrame) of one run folder."""
    config_path = folder / "config.json"
    with open(config_path) as f:
        config = json.load(f)
    missing = [k for k in ("method", "dataset", "model", "seed") if k not in config]
    if missing:
        raise ValueError(
            f"{config_path} lacks the key(s) {missing}; every run's config.json "
            "needs 'method', 'dataset', 'model' and 'seed'."
        )
    if config.get("status") == "not_applicable":  # refused by the engine: not a result
        status = "not_applicable"
    elif (folder / "diverged").exists() or config.get("status") == "diverged":
        status = "diverged"
    elif (folder / "done").exists():
        status = "done"
    else:
        status = "incomplete"
    history_path = folder / "history.csv"
    history = pd.DataFrame()
    if history_path.exists() and history_path.stat().st_size > 0:
        history = pd.read_csv(history_path)
    if "val_fraction" not in config and not any(c.startswith("test_") for c in history):
        # Written before the validation split: its val_* columns are the test split.
        history = history.rename(columns={c: "test_" + c[4:] for c in history
                                          if c.startswith("val_")})
    return config, status, history


def _run_folders(root):
    """Run folders (holding config.json) under ``root``: its sub-folders, else any
    folder below it (hidden folders skipped), grouped by parent."""
    direct = sorted(p for p in root.iterdir() if (p / "config.json").is_file())
    if direct:
        return direct
    found = []
    for path in sorted(root.rglob("config.json")):
        folder = path.parent
        if folder == root or any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        found.append(folder)
    return found


def load_runs(path, include_incomplete=False):
    """Load every run under ``path`` into one tidy DataFrame.

    ``path`` may be the folder of the run folders (``OUT/compare/runs``) or any folder
    above it (``OUT/compare``, as ``python -m experiments.compare --out`` names it, or
    ``OUT``): when ``path`` has no run sub-folder, every folder below it that holds a
    ``config.json`` is a run. What was found is logged (logger ``credit.results``,
    level INFO), and a warning is logged when nothing was.

    A run's status is ``"diverged"`` if it has a ``diverged`` marker or
    ``config["status"] == "diverged"``, else ``"done"`` if it has a ``done``
    marker, else ``"incomplete"`` (still running or killed). A run whose
    ``config["status"]`` is ``"not_applicable"`` (the engine refused the model) is
    counted in the log line and left out.

    Args:
        path: Output folder of the experiment runner.
        include_incomplete: If False (default), incomplete runs are skipped.

    Returns:
        One row per run and epoch, sorted by method, dataset, model, seed, run
        and epoch. Columns: ``method, dataset, model, seed, run, status`` (``run``
        is the folder name), then every column of ``history.csv``, then any
        other scalar config keys (lists and dicts as JSON strings; a config key
        that clashes with a history column is renamed ``config_<key>``). A
        selected run whose history is missing or empty still appears, as one
        row with NaN history values, so that it is counted. With no runs, the
        frame is empty with columns ``RUN_COLUMNS + ["epoch", "step", "wall_time",
        "loss"]``.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a folder.
        ValueError: If a ``config.json`` lacks method, dataset, model or seed.

    Example:
        >>> df = load_runs("results/compare")  # doctest: +SKIP
        >>> df.groupby(["method", "dataset"]).run.nunique()  # doctest: +SKIP
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"No runs folder at {os.fspath(path)!r}; pass the output folder of the "
            "experiment runner (one sub-folder per run, each with config.json)."
        )
    frames, counts = [], {}
    for folder in _run_folders(root):
        config, status, history = _read_run(folder)
        count = counts.setdefault(folder.parent, dict.fromkeys(_STATUSES, 0))
        count[status] += 1
        if status == "not_applicable" or (status == "incomplete" and not include_incomplete):
            continue
        frame = history.copy() if len(history) else pd.DataFrame({c: [np.nan] for c in _HISTORY_COLUMNS})
        ident = {
            "method": config["method"],
            "dataset": config["dataset"],
            "model": _config_value(config["model"]),
            "seed": config["seed"],
            "run": folder.name,
            "status": status,
        }
        frame = frame.drop(columns=[c for c in ident if c in frame.columns])
        for key in reversed(list(ident)):
            frame.insert(0, key, ident[key])
        for key, value in config.items():
            if key in ident or key == "status":
                continue
            column = key if key not in frame.columns else f"config_{key}"
            frame[column] = _config_value(value)
        frames.append(frame)
    if not counts:
        logger.warning("load_runs: no runs under %s (a run is a folder holding "
                       "config.json; pass the --out folder of an experiment, or its runs/ "
                       "folder)", os.fspath(root))
    for parent, count in counts.items():
        skipped = "" if include_incomplete or not count["incomplete"] else " (skipped)"
        refused = (f", {count['not_applicable']} not applicable (skipped)"
                   if count["not_applicable"] else "")
        logger.info("load_runs: %d runs in %s: %d done, %d diverged, %d incomplete%s%s",
                    sum(count.values()), os.fspath(parent), count["done"], count["diverged"],
                    count["incomplete"], skipped, refused)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RUN_COLUMNS + _HISTORY_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["method", "dataset", "model", "seed", "run", "epoch"], kind="stable")
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------
# Statistics


def _check_columns(df, columns, where):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where} needs the column(s) {missing}, but the frame has {list(df.columns)}; "
            "pass the output of load_runs()."
        )


def _std(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _mean(values):
    return float(np.mean(values)) if len(values) else math.nan


def mean_ci(values, confidence=0.95):
    """Mean and half-width of the Student-t confidence interval of the mean.

    The interval is ``mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the
    sample standard deviation (``ddof=1``). NaNs are dropped; with fewer than two
    values the half-width is NaN (no interval).

    Args:
        values: numbers (a list, array or Series).
        confidence: the coverage of the interval, in (0, 1).

    Returns:
        ``(mean, half_width)``.

    Example:
        >>> m, h = mean_ci([0.90, 0.92, 0.94])
        >>> round(m, 3), round(h, 4)            # t(0.975, 2) = 4.303, s = 0.02
        (0.92, 0.0497)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}; e.g. 0.95.")
    from scipy import stats

    values = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan
    t = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    return mean, t * float(values.std(ddof=1)) / math.sqrt(n)


def mean_std(table, keys, columns):
    """Mean and standard deviation of ``columns`` per group of ``keys``.

    NaNs are dropped per column; the std has ``ddof=1`` and is NaN for one value.

    Args:
        table: a DataFrame with one row per run (or per run x layer, ...).
        keys: the columns to group by, in the order groups first appear.
        columns: the numeric columns to summarise.

    Returns:
        A DataFrame: the keys, ``n`` (rows in the group), and ``<column>_mean``,
        ``<column>_std`` for each column.

    Example:
        >>> t = pd.DataFrame({"method": ["bp", "bp"], "acc": [0.9, 0.8]})
        >>> mean_std(t, ["method"], ["acc"]).round(3).to_dict("records")
        [{'method': 'bp', 'n': 2, 'acc_mean': 0.85, 'acc_std': 0.071}]
    """
    out = []
    for key, group in table.groupby(list(keys), sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["n"] = len(group)
        for column in columns:
            values = group[column].dropna().to_numpy(dtype=float)
            row[f"{column}_mean"] = _mean(values)
            row[f"{column}_std"] = _std(values)
        out.append(row)
    return pd.DataFrame(out)


def _classification_datasets(df):
    """Names of the data sets whose rows have accuracy values (test or validation)."""
    found = set()
    for column in ("test_accuracy", "val_accuracy"):
        if column in df.columns:
            found |= set(df.loc[df[column].notna(), "dataset"])
    return found


def _higher_is_better(metric):
    return any(word in metric for word in ("acc", "alignment", "cos"))


def _runs(df):
    """Yield (method, dataset, run, status, rows sorted by epoch)."""
    for (method, dataset, run), rows in df.groupby(["method", "dataset", "run"], sort=True):
        yield method, dataset, run, rows["status"].iloc[0], rows.sort_values("epoch", kind="stable")


def _column(rows, name):
    return rows[name] if name in rows else pd.Series(np.nan, index=rows.index)


def run_table(df, keep=()):
    """One row per run: its best epoch on the validation split and its test metric there.

    For a classification data set (rows with accuracy values) the metric is accuracy,
    else the loss. The **best epoch** is the first epoch with the highest validation
    accuracy (classification) or the lowest validation loss; ``val`` is the validation
    metric there and ``test`` the test metric at that same epoch (the test split is
    read, never used to choose). ``test_final`` is the test metric at the last epoch
    that has one. Runs without validation values (written before the validation
    split) have NaN ``best_epoch``, ``val`` and ``test``.

    Args:
        df: Output of :func:`load_runs`.
        keep: other columns to carry over (their value at the run's first row), e.g.
            ``["learning_rate"]``.

    Returns:
        Columns ``method, dataset, model, seed, run, status, metric, epochs,
        best_epoch, val, test, test_final, seconds`` and the ``keep`` columns; ``metric``
        is "accuracy" or "loss", ``epochs`` the epochs trained, ``seconds`` the training
        seconds (``wall_time`` at the last epoch). Diverged runs keep NaN numbers.

    Example:
        >>> runs = run_table(load_runs("results/compare"), keep=["learning_rate"])  # doctest: +SKIP
    """
    _check_columns(df, ["method", "dataset", "run", "status", "epoch"], "run_table")
    classification = _classification_datasets(df)
    records = []
    for method, dataset, run, status, rows in _runs(df):
        metric = "accuracy" if dataset in classification else "loss"
        record = {"method": method, "dataset": dataset,
                  "model": rows["model"].iloc[0] if "model" in rows else None,
                  "seed": rows["seed"].iloc[0] if "seed" in rows else None,
                  "run": run, "status": status, "metric": metric,
                  "epochs": float(rows["epoch"].max()) if rows["epoch"].notna().any() else math.nan,
                  "best_epoch": math.nan, "val": math.nan, "test": math.nan,
                  "test_final": math.nan, "seconds": math.nan}
        if status != "diverged":
            val, test = _column(rows, f"val_{metric}"), _column(rows, f"test_{metric}")
            if val.notna().any():
                best = val.idxmax() if metric == "accuracy" else val.idxmin()  # first best
                record.update(best_epoch=float(rows.at[best, "epoch"]), val=float(val[best]),
                              test=float(test[best]))
            if test.notna().any():
                record["test_final"] = float(test.dropna().iloc[-1])
            if "wall_time" in rows and rows["wall_time"].notna().any():
                record["seconds"] = float(rows["wall_time"].dropna().iloc[-1])
        for column in keep:
            record[column] = rows[column].iloc[0] if column in rows else None
        records.append(record)
    columns = ["method", "dataset", "model", "seed", "run", "status", "metric", "epochs",
               "best_epoch", "val", "test", "test_final", "seconds", *keep]
    return pd.DataFrame(records, columns=columns)


def paired_differences(runs, baseline="backprop", value="test", by=("dataset", "model"),
                       confidence=0.95):
    """Per method and group, the difference to ``baseline`` on the same seed, with a
    t-interval.

    For each group of ``by`` and each method other than ``baseline``, the runs are
    paired with the baseline's run of the same seed (same initial weights where the
    models match, same validation split and batch order); the differences
    ``method - baseline`` of ``value`` get a mean and a Student-t interval
    (:func:`mean_ci`). A pair with a NaN (a diverged run) is left out. A difference is
    ``significant`` when its interval excludes zero (never with fewer than two pairs).
    For accuracy a positive difference favours the method; for a loss a negative one.

    Args:
        runs: Output of :func:`run_table` with one run per (method, group, seed):
            filter tuning runs out first.
        baseline: the method every other is compared with.
        value: the column compared (default ``"test"``: test metric at the best
            validation epoch).
        by: the columns that define a group.
        confidence: coverage of the intervals.

    Returns:
        Columns ``method, <by...>, n_pairs, diff_mean, diff_ci, diff_low, diff_high,
        diff_significant``; no rows for the baseline or for groups without it.

    Raises:
        ValueError: if a (method, group, seed) has more than one run.

    Example:
        >>> runs = pd.DataFrame({"method": ["bp", "bp", "fa", "fa"], "dataset": "d",
        ...                      "model": "m", "seed": [0, 1, 0, 1],
        ...                      "test": [0.9, 0.8, 0.85, 0.76]})
        >>> d = paired_differences(runs, baseline="bp").iloc[0]
        >>> round(float(d["diff_mean"]), 3), int(d["n_pairs"])
        (-0.045, 2)
    """
    by = list(by)
    _check_columns(runs, ["method", "seed", value, *by], "paired_differences")
    duplicated = runs.duplicated(["method", *by, "seed"], keep=False)
    if duplicated.any():
        example = runs.loc[duplicated, ["method", *by, "seed"]].iloc[0].to_dict()
        raise ValueError(
            f"paired_differences needs one run per method, group and seed, but {example} "
            "has several (a tuning grid?); filter the runs to one setting per method first.")
    records = []
    for key, group in runs.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        base = group[group["method"] == baseline].set_index("seed")[value]
        if base.empty:
            continue
        for method, rows in group[group["method"] != baseline].groupby("method", sort=True):
            rows = rows.set_index("seed")[value]
            common = rows.index.intersection(base.index)
            diffs = (rows[common] - base[common]).dropna()
            mean, half = mean_ci(diffs, confidence)
            significant = bool(math.isfinite(half) and (mean - half > 0 or mean + half < 0))
            records.append({"method": method, **dict(zip(by, key)), "n_pairs": len(diffs),
                            "diff_mean": mean, "diff_ci": half, "diff_low": mean - half,
                            "diff_high": mean + half, "diff_significant": significant})
    columns = ["method", *by, "n_pairs", "diff_mean", "diff_ci", "diff_low", "diff_high",
               "diff_significant"]
    return pd.DataFrame(records, columns=columns).astype({"n_pairs": "int64",
                                                          "diff_significant": bool})


def accuracy_table(df, baseline="backprop", confidence=0.95, keep=()):
    """Validation and test metric per method, data set and model: mean and 95% CI over
    seeds, and the paired difference to ``baseline``.

    Per run (:func:`run_table`): the best epoch on the validation split, the test
    metric at that epoch, and the test metric at the last epoch. Per (dataset, model,
    method), over the seeds that did not diverge: ``val`` (validation metric at the
    best epoch), ``test`` (test metric at the best validation epoch, the headline
    number), ``test_final`` (test metric at the last epoch), each as ``<x>_mean`` and
    ``<x>_ci`` (half-width of the t-interval, :func:`mean_ci`); ``best_epoch_mean``;
    and ``diff`` (:func:`paired_differences` of ``test`` to ``baseline``, same seeds),
    as ``diff_mean``, ``diff_ci``, ``diff_low``, ``diff_high``, ``diff_significant``.
    Accuracy for classification data sets, the loss otherwise (``metric``).

    Args:
        df: Output of :func:`load_runs`, one setting per method (filter tuning runs
            out first).
        baseline: the method of the paired differences (absent: NaN differences).
        confidence: coverage of the intervals.
        keep: config columns to show per row (e.g. the tuned ``learning_rate``); their
            distinct values are joined with ``/``.

    Returns:
        One row per (method, dataset, model), sorted by dataset, model, method, with
        columns ``method, dataset, model, metric, <keep>, val_mean, val_ci, test_mean,
        test_ci, test_final_mean, test_final_ci, best_epoch_mean, diff_mean, diff_ci,
        diff_low, diff_high, diff_significant, n, n_pairs, diverged`` (``n``: runs
        averaged; ``diverged``: diverged runs, left out of every number).

    Example:
        >>> table = accuracy_table(load_runs("results/compare"))  # doctest: +SKIP
        >>> print(to_markdown(table))  # doctest: +SKIP
    """
    _check_columns(df, ["method", "dataset", "run", "status", "epoch"], "accuracy_table")
    runs = run_table(df, keep=keep)
    if "model" not in df.columns:
        runs["model"] = ""
    keys = ["dataset", "model", "method"]
    records = []
    for key, group in runs.groupby(keys, sort=True, dropna=False):
        record = dict(zip(keys, key))
        record["metric"] = group["metric"].iloc[0]
        for column in keep:
            values = [str(v) for v in dict.fromkeys(group[column]) if v is not None]
            record[column] = "/".join(values) if len(values) != 1 else group[column].iloc[0]
        ok = group[group["status"] != "diverged"]
        for column in ("val", "test", "test_final"):
            record[f"{column}_mean"], record[f"{column}_ci"] = mean_ci(ok[column], confidence)
        record["best_epoch_mean"] = _mean(ok["best_epoch"].dropna())
        record["n"] = int((ok["test"].notna() | ok["test_final"].notna()).sum())
        record["diverged"] = int((group["status"] == "diverged").sum())
        records.append(record)
    table = pd.DataFrame(records)
    diff_columns = ["n_pairs", "diff_mean", "diff_ci", "diff_low", "diff_high",
                    "diff_significant"]
    if len(table):
        pairs = paired_differences(runs[runs["status"] != "diverged"], baseline, "test",
                                   by=("dataset", "model"), confidence=confidence)
        table = table.merge(pairs, on=["method", "dataset", "model"], how="left")
        table["n_pairs"] = table["n_pairs"].fillna(0).astype("int64")
        table["diff_significant"] = table["diff_significant"].astype("boolean").fillna(False).astype(bool)
    columns = ["method", "dataset", "model", "metric", *keep, "val_mean", "val_ci",
               "test_mean", "test_ci", "test_final_mean", "test_final_ci", "best_epoch_mean",
               *diff_columns[1:], "n", "n_pairs", "diverged"]
    if not len(table):
        return pd.DataFrame(columns=columns)
    return table[columns].astype({"n": "int64", "n_pairs": "int64", "diverged": "int64"})


def convergence_table(df, target, metric=None):
    """Epochs, steps and seconds to first reach a target, per method and data set.

    Conventions:

    - *Metric and direction.* With ``metric=None`` each data set uses
      ``test_accuracy`` (test accuracy) if it is a classification data set and
      ``test_loss`` (test loss) otherwise, so filter ``df`` to one kind of data
      set when ``target`` only makes sense for one. Convergence is a measurement,
      not a choice, so it reads the test split. A metric whose name contains
      "acc", "alignment" or "cos" reaches the target when ``value >= target``;
      any other metric (losses, mse, ...) when ``value <= target``.
    - *Time to target.* For each run, the first row (in epoch order) that
      reaches the target gives ``epoch``, ``step`` and ``wall_time`` as written
      in ``history.csv`` (so if epochs are counted from 1, reaching the target
      after the first epoch is 1 epoch). ``epochs``, ``steps`` and ``seconds``
      are means over the runs that reached it; NaN when none did.
    - *Area under the loss curve.* ``auc_loss`` is the trapezoid integral of
      the training ``loss`` over ``epoch`` (rows with NaN loss dropped; 0 for a
      single epoch), averaged over runs with a finite value. Lower means faster
      and better training.
    - *Diverged runs* are left out of every number and counted in ``diverged``.

    Args:
        df: Output of :func:`load_runs`.
        target: Value to reach, e.g. 0.9 for 90% accuracy.
        metric: History column to compare with ``target``, or None (see above).

    Returns:
        One row per (method, dataset), sorted by dataset then method, with
        columns ``method, dataset, metric, target, epochs, steps, seconds,
        reached, n_reached, n, auc_loss, diverged``: ``reached`` is the string
        ``"k/n"`` and ``n_reached`` / ``n`` the same counts as integers (``n`` =
        runs that did not diverge).

    Raises:
        ValueError: If ``metric`` is not a column of ``df``.

    Example:
        >>> table = convergence_table(load_runs("runs"), target=0.9)  # doctest: +SKIP
        >>> table[["method", "dataset", "epochs", "reached"]]  # doctest: +SKIP
    """
    _check_columns(df, ["method", "dataset", "run", "status", "epoch", "step", "wall_time", "loss"], "convergence_table")
    if metric is not None and metric not in df.columns:
        raise ValueError(
            f"metric={metric!r} is not a column of the frame; choose one of {list(df.columns)}."
        )
    target = float(target)
    classification = _classification_datasets(df)
    cells = {}
    for method, dataset, _, status, rows in _runs(df):
        m = metric or ("test_accuracy" if dataset in classification else "test_loss")
        cell = cells.setdefault(
            (dataset, method), {"metric": m, "epochs": [], "steps": [], "seconds": [], "auc": [], "n": 0, "diverged": 0}
        )
        if status == "diverged":
            cell["diverged"] += 1
            continue
        cell["n"] += 1
        values = _column(rows, m)
        hit = values >= target if _higher_is_better(m) else values <= target
        if hit.any():
            first = rows[hit].iloc[0]
            cell["epochs"].append(float(first["epoch"]))
            cell["steps"].append(float(first["step"]))
            cell["seconds"].append(float(first["wall_time"]))
        curve = rows[["epoch", "loss"]].dropna()
        auc = float(np.trapezoid(curve["loss"], curve["epoch"])) if len(curve) else math.nan
        if math.isfinite(auc):
            cell["auc"].append(auc)
    records = [
        {
            "method": method,
            "dataset": dataset,
            "metric": c["metric"],
            "target": target,
            "epochs": _mean(c["epochs"]),
            "steps": _mean(c["steps"]),
            "seconds": _mean(c["seconds"]),
            "reached": f"{len(c['epochs'])}/{c['n']}",
            "n_reached": len(c["epochs"]),
            "n": c["n"],
            "auc_loss": _mean(c["auc"]),
            "diverged": c["diverged"],
        }
        for (dataset, method), c in sorted(cells.items())
    ]
    columns = [
        "method", "dataset", "metric", "target", "epochs", "steps", "seconds",
        "reached", "n_reached", "n", "auc_loss", "diverged",
    ]
    return pd.DataFrame(records, columns=columns).astype({"n_reached": "int64", "n": "int64", "diverged": "int64"})


# ---------------------------------------------------------------------------
# Formatting


def _format_cell(value, floatfmt, missing):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|")


def to_markdown(table, floatfmt=".3f", missing="n/a"):
    """Format a table as a GitHub markdown table.

    Each pair of columns ``<name>_mean`` and ``<name>_std`` (or ``<name>_ci``, the
    half-width of a confidence interval) becomes one column ``<name>`` shown as
    ``"0.912 ± 0.004"`` (just ``"0.912"`` when the spread is NaN, e.g. a single
    seed); a boolean ``<name>_significant`` column adds ``" *"`` to the cells where it
    is true, and ``<name>_low`` / ``<name>_high`` are not shown. Integers are shown as
    integers, other floats with ``floatfmt``, NaN as ``missing``. Numeric columns are
    right-aligned. A non-default index is written as leading columns.

    Args:
        table: A DataFrame, e.g. from :func:`accuracy_table`.
        floatfmt: Format spec for floats, as in ``format(x, floatfmt)``.
        missing: Text for NaN / None.

    Returns:
        The markdown text, one line per row, without a trailing newline.

    Example:
        >>> t = pd.DataFrame({"method": ["dfa"], "acc_mean": [0.9123], "acc_std": [0.0041], "n": [3]})
        >>> print(to_markdown(t))
        | method | acc | n |
        | --- | ---: | ---: |
        | dfa | 0.912 ± 0.004 | 3 |
    """
    if not isinstance(table.index, pd.RangeIndex):
        table = table.reset_index()
    columns = []  # (header, function row -> text, right-aligned)
    names = [str(c) for c in table.columns]

    def spread_of(base):
        for suffix in ("_std", "_ci"):
            if f"{base}_mean" in names and f"{base}{suffix}" in names:
                return f"{base}{suffix}"
        return None

    for name in names:
        base, _, suffix = name.rpartition("_")
        if suffix in ("std", "ci") and spread_of(base) == name:
            continue
        if suffix in ("low", "high", "significant") and spread_of(base):
            continue
        if suffix == "mean" and spread_of(base):
            spread, flag = spread_of(base), f"{base}_significant"

            def cell(row, base=base, spread=spread, flag=flag):
                mean = _format_cell(row[f"{base}_mean"], floatfmt, missing)
                std = row[spread]
                mark = " *" if row.get(flag) is True or row.get(flag) is np.True_ else ""
                if mean == missing or std is None or (isinstance(std, float) and math.isnan(std)):
                    return mean + (mark if mean != missing else "")
                return f"{mean} ± {_format_cell(std, floatfmt, missing)}{mark}"

            columns.append((base, cell, True))
        else:
            numeric = pd.api.types.is_numeric_dtype(table[name]) and not pd.api.types.is_bool_dtype(table[name])
            columns.append((name, lambda row, name=name: _format_cell(row[name], floatfmt, missing), numeric))
    lines = [
        "| " + " | ".join(header for header, _, _ in columns) + " |",
        "| " + " | ".join("---:" if right else "---" for _, _, right in columns) + " |",
    ]
    for row in table.to_dict("records"):  # keeps each column's type, unlike iterrows
        lines.append("| " + " | ".join(cell(row) for _, cell, _ in columns) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Plots


def _model_label(value):
    """A short name for a ``model`` value: a JSON model spec gives its ``type`` (and
    ``depth``, as in ``resnet-20``); other values are shown as they are."""
    try:
        spec = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return str(value)
    if not isinstance(spec, dict) or "type" not in spec:
        return str(value)
    return f"{spec['type']}-{spec['depth']}" if "depth" in spec else str(spec["type"])


def _panels(data):
    """``[(title, rows)]``: one panel per data set, or per (data set, model) when the
    frame has a ``model`` column."""
    if "model" not in data.columns or data["model"].isna().all():
        return [(dataset, rows) for dataset, rows in data.groupby("dataset", sort=True)]
    data = data.assign(_model=data["model"].map(_model_label))
    # Two specs of one type on one data set (two MLP sizes, say) keep their full specs.
    specs = data.groupby(["dataset", "_model"])["model"].nunique()
    panels = []
    for (dataset, label), rows in data.groupby(["dataset", "_model"], sort=True):
        if specs[(dataset, label)] == 1:
            panels.append((f"{dataset} · {label}", rows))
        else:
            panels += [(f"{dataset} · {spec}", part) for spec, part in
                       rows.groupby("model", sort=True)]
    return panels


def _curve_stats(runs, metric):
    """Mean, min, max and std over runs of ``metric`` at every x (``epoch``) value.

    Runs logged at different x values (a curriculum checked every so many steps, runs
    of different lengths) are first interpolated linearly onto the union of their x
    values, each within its own range: averaging by x alone would average a different
    subset of runs at neighbouring points, and the mean would zigzag between them.
    Runs logged at the same x values give exactly their mean at each x.
    """
    if "run" not in runs.columns:
        return runs.groupby("epoch")[metric].agg(["mean", "min", "max", "std"])
    curves = {run: rows.groupby("epoch")[metric].mean()
              for run, rows in runs.groupby("run", sort=True)}
    grid = sorted(set().union(*(c.index for c in curves.values())))
    table = pd.DataFrame({run: c.reindex(grid).interpolate(method="index",
                                                             limit_area="inside")
                          for run, c in curves.items()}, index=grid)
    return pd.DataFrame({"mean": table.mean(axis=1), "min": table.min(axis=1),
                         "max": table.max(axis=1), "std": table.std(axis=1)})


def plot_curves(df, path, metric=None, band="minmax", include_diverged=False,
                xlabel="epoch", columns=4):
    """Plot learning curves: one panel per data set and model, one line per method.

    Each line is the mean over seeds of ``metric`` at each epoch, with a shaded
    band (min to max over seeds, or mean ± std). Runs logged at different x values are
    interpolated onto the union of their x values first (each within its own range),
    so that every point of a line averages the same runs where they overlap. A frame with a ``model`` column (as
    :func:`load_runs` gives) gets one panel per (data set, model) that has values of
    ``metric``, titled ``"<data set> · <model type>"``; without it, one panel per data
    set. Panels are laid out ``columns`` to a row; a method has the same colour in
    every panel, and one legend lists them. Uses matplotlib's Agg canvas directly, so it
    never opens a window nor changes the pyplot backend.

    Args:
        df: Output of :func:`load_runs`.
        path: PNG file to write; missing parent folders are created.
        metric: History column to plot. None means ``"test_accuracy"`` if the
            frame has any test accuracy values, else ``"test_loss"``.
        band: ``"minmax"`` or ``"std"``.
        include_diverged: If False (default), diverged runs are left out.
        xlabel: Label of the x axis (the ``epoch`` column may count other units, such
            as training steps).
        columns: Panels per row (an integer >= 1).

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ValueError: If ``band`` or ``columns`` is invalid, or no run has a value of
            ``metric``.

    Example:
        >>> plot_curves(load_runs("runs"), "results/mnist_curves.png")  # doctest: +SKIP
        PosixPath('results/mnist_curves.png')
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}.")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1 (panels per row), got "
                         f"{columns!r}; e.g. 4.")
    if metric is None:
        has_acc = "test_accuracy" in df.columns and df["test_accuracy"].notna().any()
        metric = "test_accuracy" if has_acc else "test_loss"
    if not include_diverged:
        df = df[df["status"] != "diverged"]
    if metric not in df.columns or not df[metric].notna().any():
        raise ValueError(
            f"No run has values of metric={metric!r}; choose a history column such as "
            f"{[c for c in df.columns if c not in RUN_COLUMNS]}."
        )
    data = df.dropna(subset=[metric, "epoch"])
    panels = _panels(data)
    methods = sorted(data["method"].unique())
    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    n_cols = min(columns, len(panels))
    n_rows = -(-len(panels) // n_cols)
    legend_width = 2.6 if len(methods) > 1 else 0.0  # inches, for the shared legend
    fig = Figure(figsize=(4.5 * n_cols + legend_width, 3.5 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    # Accuracies share one scale, so panels compare at a glance; losses and other
    # metrics keep each panel's own (data sets differ in scale).
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey="accuracy" in metric)
    for ax, (title, rows) in zip(axes.flat, panels):
        for method, runs in rows.groupby("method", sort=True):
            stats = _curve_stats(runs, metric)
            ax.plot(stats.index, stats["mean"], label=method, color=colours[method])
            if band == "minmax":
                low, high = stats["min"], stats["max"]
            else:
                std = stats["std"].fillna(0.0)
                low, high = stats["mean"] - std, stats["mean"] + std
            ax.fill_between(stats.index, low, high, color=colours[method], alpha=0.15,
                            linewidth=0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes.flat[:len(panels)]:
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps: whole
        ax.yaxis.set_tick_params(labelleft=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    if len(methods) > 1:
        handles = [Line2D([], [], color=colours[m], label=m) for m in methods]
        fig.legend(handles=handles, loc="outside right upper", fontsize="small",
                   title="method")
    else:
        axes.flat[0].legend(fontsize="small")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
