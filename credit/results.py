"""Run records -> pandas tables of accuracy and convergence, and plots.

The experiment runner writes one folder per run::

    <out>/<hash>/config.json   # "method", "dataset", "model", "seed", ... (+ optional "status")
    <out>/<hash>/history.csv   # one row per epoch: epoch, step, wall_time, loss, ...
    <out>/<hash>/done          # marker, written last
    <out>/<hash>/diverged      # optional marker

In ``history.csv``, ``val_*`` columns hold the held-out **test** metrics, ``step``
and ``wall_time`` are cumulative (optimizer steps and seconds since the start
of training, at the end of the epoch).

Typical use:

    >>> df = load_runs("runs")                                  # doctest: +SKIP
    >>> print(to_markdown(accuracy_table(df)))                  # doctest: +SKIP
    >>> print(to_markdown(convergence_table(df, target=0.9)))   # doctest: +SKIP
    >>> plot_curves(df, "results/curves.png")                   # doctest: +SKIP

Tables are plain DataFrames with numeric columns; :func:`to_markdown` is the
separate formatting step.
"""

import json
import math
import os
import pathlib

import numpy as np
import pandas as pd

__all__ = [
    "RUN_COLUMNS",
    "load_runs",
    "accuracy_table",
    "convergence_table",
    "to_markdown",
    "plot_curves",
]

#: Columns that identify a run, first in every frame returned by :func:`load_runs`.
RUN_COLUMNS = ["method", "dataset", "model", "seed", "run", "status"]
_HISTORY_COLUMNS = ["epoch", "step", "wall_time", "loss"]
_STATUSES = ("done", "diverged", "incomplete")


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
    if (folder / "diverged").exists() or config.get("status") == "diverged":
        status = "diverged"
    elif (folder / "done").exists():
        status = "done"
    else:
        status = "incomplete"
    history_path = folder / "history.csv"
    history = pd.DataFrame()
    if history_path.exists() and history_path.stat().st_size > 0:
        history = pd.read_csv(history_path)
    return config, status, history


def load_runs(path, include_incomplete=False):
    """Load every run under ``path`` into one tidy DataFrame.

    A run is a sub-folder holding a ``config.json``; other entries are ignored.
    Its status is ``"diverged"`` if it has a ``diverged`` marker or
    ``config["status"] == "diverged"``, else ``"done"`` if it has a ``done``
    marker, else ``"incomplete"`` (still running or killed).

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
        row with NaN history values, so that it is counted. If the folder
        exists but holds no runs, the frame is empty with columns
        ``RUN_COLUMNS + ["epoch", "step", "wall_time", "loss"]``.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a folder.
        ValueError: If a ``config.json`` lacks method, dataset, model or seed.

    Example:
        >>> df = load_runs("runs")  # doctest: +SKIP
        >>> df.groupby(["method", "dataset"]).run.nunique()  # doctest: +SKIP
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"No runs folder at {os.fspath(path)!r}; pass the output folder of the "
            "experiment runner (one sub-folder per run, each with config.json)."
        )
    frames = []
    for folder in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        config, status, history = _read_run(folder)
        if status == "incomplete" and not include_incomplete:
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
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RUN_COLUMNS + _HISTORY_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["method", "dataset", "model", "seed", "run", "epoch"], kind="stable")
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------
# Tables


def _check_columns(df, columns, where):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where} needs the column(s) {missing}, but the frame has {list(df.columns)}; "
            "pass the output of load_runs()."
        )


def _classification_datasets(df):
    """Names of the data sets whose rows have test accuracy values."""
    if "val_accuracy" not in df.columns:
        return set()
    return set(df.loc[df["val_accuracy"].notna(), "dataset"])


def _higher_is_better(metric):
    return any(word in metric for word in ("acc", "alignment", "cos"))


def _runs(df):
    """Yield (method, dataset, run, status, rows sorted by epoch)."""
    for (method, dataset, run), rows in df.groupby(["method", "dataset", "run"], sort=True):
        yield method, dataset, run, rows["status"].iloc[0], rows.sort_values("epoch", kind="stable")


def _std(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _mean(values):
    return float(np.mean(values)) if len(values) else math.nan


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


def accuracy_table(df):
    """Final and best test metric per method and data set, over seeds.

    For a classification data set (one whose rows have ``val_accuracy``
    values) the metric is the test accuracy ``val_accuracy``: *final* is its
    value at the last epoch that has one, *best* its maximum over epochs. For
    a regression data set the metric is the test loss ``val_loss``: *final* as
    above, *best* its minimum.

    Means and standard deviations (``ddof=1``; NaN with one run) are over the
    runs (seeds) that did not diverge. Diverged runs are only counted, in
    ``diverged``.

    Args:
        df: Output of :func:`load_runs`.

    Returns:
        One row per (method, dataset), sorted by dataset then method, with
        columns ``method, dataset, metric, final_mean, final_std, best_mean,
        best_std, n, diverged``: ``metric`` names the column used, ``n`` the
        number of runs averaged, ``diverged`` the number of diverged runs.

    Example:
        >>> table = accuracy_table(load_runs("runs"))  # doctest: +SKIP
        >>> print(to_markdown(table))  # doctest: +SKIP
    """
    _check_columns(df, ["method", "dataset", "run", "status", "epoch"], "accuracy_table")
    classification = _classification_datasets(df)
    cells = {}
    for method, dataset, _, status, rows in _runs(df):
        metric = "val_accuracy" if dataset in classification else "val_loss"
        cell = cells.setdefault((dataset, method), {"metric": metric, "final": [], "best": [], "diverged": 0})
        if status == "diverged":
            cell["diverged"] += 1
            continue
        values = rows[metric].dropna() if metric in rows else pd.Series(dtype=float)
        if len(values) == 0:
            continue
        cell["final"].append(float(values.iloc[-1]))
        cell["best"].append(float(values.max() if metric == "val_accuracy" else values.min()))
    records = [
        {
            "method": method,
            "dataset": dataset,
            "metric": c["metric"],
            "final_mean": _mean(c["final"]),
            "final_std": _std(c["final"]),
            "best_mean": _mean(c["best"]),
            "best_std": _std(c["best"]),
            "n": len(c["final"]),
            "diverged": c["diverged"],
        }
        for (dataset, method), c in sorted(cells.items())
    ]
    columns = ["method", "dataset", "metric", "final_mean", "final_std", "best_mean", "best_std", "n", "diverged"]
    return pd.DataFrame(records, columns=columns).astype({"n": "int64", "diverged": "int64"})


def convergence_table(df, target, metric=None):
    """Epochs, steps and seconds to first reach a target, per method and data set.

    Conventions:

    - *Metric and direction.* With ``metric=None`` each data set uses
      ``val_accuracy`` (test accuracy) if it is a classification data set and
      ``val_loss`` (test loss) otherwise, so filter ``df`` to one kind of data
      set when ``target`` only makes sense for one. A metric whose name contains
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
        m = metric or ("val_accuracy" if dataset in classification else "val_loss")
        cell = cells.setdefault(
            (dataset, method), {"metric": m, "epochs": [], "steps": [], "seconds": [], "auc": [], "n": 0, "diverged": 0}
        )
        if status == "diverged":
            cell["diverged"] += 1
            continue
        cell["n"] += 1
        values = rows[m] if m in rows else pd.Series(np.nan, index=rows.index)
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

    Each pair of columns ``<name>_mean`` and ``<name>_std`` becomes one column
    ``<name>`` shown as ``"0.912 ± 0.004"`` (just ``"0.912"`` when the std is
    NaN, e.g. a single seed). Integers are shown as integers, other floats with
    ``floatfmt``, NaN as ``missing``. Numeric columns are right-aligned. A
    non-default index is written as leading columns.

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
    for name in table.columns:
        name = str(name)
        if name.endswith("_std") and f"{name[:-4]}_mean" in table.columns:
            continue
        if name.endswith("_mean") and f"{name[:-5]}_std" in table.columns:
            base = name[:-5]

            def cell(row, base=base):
                mean = _format_cell(row[f"{base}_mean"], floatfmt, missing)
                std = row[f"{base}_std"]
                if mean == missing or std is None or (isinstance(std, float) and math.isnan(std)):
                    return mean
                return f"{mean} ± {_format_cell(std, floatfmt, missing)}"

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


def plot_curves(df, path, metric=None, band="minmax", include_diverged=False):
    """Plot learning curves: one subplot per data set, one line per method.

    Each line is the mean over seeds of ``metric`` at each epoch, with a shaded
    band (min to max over seeds, or mean ± std). Data sets without any value of
    ``metric`` are left out. Uses matplotlib's Agg canvas directly, so it never
    opens a window nor changes the pyplot backend.

    Args:
        df: Output of :func:`load_runs`.
        path: PNG file to write; missing parent folders are created.
        metric: History column to plot. None means ``"val_accuracy"`` if the
            frame has any test accuracy values, else ``"val_loss"``.
        band: ``"minmax"`` or ``"std"``.
        include_diverged: If False (default), diverged runs are left out.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ValueError: If ``band`` is unknown or no run has a value of ``metric``.

    Example:
        >>> plot_curves(load_runs("runs"), "results/mnist_curves.png")  # doctest: +SKIP
        PosixPath('results/mnist_curves.png')
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}.")
    if metric is None:
        has_acc = "val_accuracy" in df.columns and df["val_accuracy"].notna().any()
        metric = "val_accuracy" if has_acc else "val_loss"
    if not include_diverged:
        df = df[df["status"] != "diverged"]
    if metric not in df.columns or not df[metric].notna().any():
        raise ValueError(
            f"No run has values of metric={metric!r}; choose a history column such as "
            f"{[c for c in df.columns if c not in RUN_COLUMNS]}."
        )
    data = df.dropna(subset=[metric, "epoch"])
    datasets = sorted(data["dataset"].unique())
    fig = Figure(figsize=(4.5 * len(datasets), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        for method, rows in data[data["dataset"] == dataset].groupby("method", sort=True):
            stats = rows.groupby("epoch")[metric].agg(["mean", "min", "max", "std"])
            line = ax.plot(stats.index, stats["mean"], label=method)[0]
            if band == "minmax":
                low, high = stats["min"], stats["max"]
            else:
                std = stats["std"].fillna(0.0)
                low, high = stats["mean"] - std, stats["mean"] + std
            ax.fill_between(stats.index, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
