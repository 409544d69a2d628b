"""The main job: every credit-assignment method on the same tasks, side by side.

Runs methods x data sets x seeds with :mod:`experiments.sweep`, then prints and writes
an accuracy table and a convergence table (``credit.results``) and learning curves.

Defaults: every registered method (``credit.available()``) on the MNIST sample, sklearn
digits and the diabetes regression, 3 seeds. A method that does not apply is listed with
``n/a (not applicable: ...)`` (kickback needs one scalar output, so it runs on diabetes
only, next to all the others).

Models, all trained with Adam (learning rate 1e-3) and tanh hidden units:

    mnist     MLP 784-256-256-10, softmax, batch 64, 20 epochs   target: test acc 0.90
    digits    MLP 64-64-64-10, softmax, batch 32, 40 epochs      target: test acc 0.90
    diabetes  MLP 10-32-32-1, linear, MSE, batch 32, 50 epochs   target: test MSE 0.65
              (targets standardised with the training statistics)

Other data sets of ``credit.data`` get an MLP with hidden layers [64, 64] (classification:
target 0.9) or [32, 32] (regression: target 0.5).

Usage:
    python -m experiments.compare                   # full: 3 seeds, about 15 minutes
    python -m experiments.compare --quick           # 1 seed, few epochs, < 3 minutes
    python -m experiments.compare --methods bp,dfa --datasets digits --seeds 5 --epochs 10
    python -m experiments.compare --seeds 0,3,7     # explicit seeds (a list)
    python -m experiments.compare --seeds 7,        # just seed 7 (a one-element list)

Flags:
    --methods   comma- or space-separated names or aliases, or "all" (default).
    --datasets  comma- or space-separated names from credit.data.available(), or "all"
                for the default three (mnist, digits, diabetes).
    --seeds     a count N (seeds 0 .. N-1) or a comma-separated list of seeds; a
                single seed s is written "s," (default 3; --quick: 1).
    --epochs    epochs for every data set (default: per data set, above).
    --out DIR   output root (default results/).
    --quick     1 seed, few epochs, MNIST subsampled to 2,000 training images: a smoke
                run of the whole pipeline. Explicit --seeds / --epochs still win.

Output, under ``DIR/compare/`` (``DIR/compare_quick/`` with --quick, so that a quick run
never overwrites the full tables):

    runs/<hash>/        one folder per run (config.json, history.csv, done), see
                        experiments.sweep; re-running skips finished runs and resumes
                        interrupted ones
    accuracy.md, .csv   final and best test accuracy (test MSE for regression),
                        mean ± std over seeds
    convergence.md, .csv  epochs / steps / seconds to the target, seeds that reached
                        it, area under the training-loss curve
    curves_accuracy.png test accuracy per epoch (classification data sets)
    curves_loss.png     test loss per epoch (regression data sets)
    alignment.png       cosine of the first hidden layer's update with backprop's

The tables only include the runs of this invocation (a runs/ folder may hold more).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

import credit  # noqa: E402
from credit import data as data_lib  # noqa: E402
from credit import results  # noqa: E402
from experiments import sweep  # noqa: E402

DEFAULT_DATASETS = ("mnist", "digits", "diabetes")
DEFAULT_SEEDS = 3
QUICK_SEEDS = 1


def _mlp(hidden):
    return {"type": "mlp", "hidden": list(hidden), "activation": "tanh"}


#: Per data set: the run settings, the quick settings and the convergence target.
SETTINGS = {
    "mnist": {"run": {"model": _mlp([256, 256]), "batch_size": 64, "epochs": 20},
              "quick": {"epochs": 5, "n_train": 2000}, "target": 0.9},
    "digits": {"run": {"model": _mlp([64, 64]), "batch_size": 32, "epochs": 40},
               "quick": {"epochs": 8}, "target": 0.9},
    "diabetes": {"run": {"model": _mlp([32, 32]), "batch_size": 32, "epochs": 50},
                 "quick": {"epochs": 15}, "target": 0.65},
}
GENERIC = {
    "classification": {"run": {"model": _mlp([64, 64]), "batch_size": 32, "epochs": 20},
                       "quick": {"epochs": 5, "n_train": 2000}, "target": 0.9},
    "regression": {"run": {"model": _mlp([32, 32]), "batch_size": 32, "epochs": 30},
                   "quick": {"epochs": 10, "n_train": 2000}, "target": 0.5},
}
COMMON = {"optimizer": "adam", "learning_rate": 1e-3, "n_align": 256}

#: How the config keys are called on the command line, for error messages.
FLAGS = {"method": "--methods", "dataset": "--datasets", "seed": "--seeds",
         "epochs": "--epochs"}


# ---------------------------------------------------------------------------
# Command line


def _names(values):
    names = []
    for value in values:
        names += [v.strip() for v in value.split(",") if v.strip()]
    return names


def _seeds(text):
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
            if not seeds:
                raise ValueError
        else:
            count = int(text)
            if count <= 0:
                raise argparse.ArgumentTypeError(
                    f"a seed count must be >= 1, got {text!r}; pass e.g. --seeds 3 "
                    "(seeds 0, 1, 2) or a list such as --seeds 0,1,2")
            seeds = list(range(count))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count (e.g. 3) or a comma-separated list of seeds (e.g. 0,1,2; "
            f"one seed: 7,), got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}; e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat in {text!r}; list each seed once")
    return seeds


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}; "
                                         "e.g. --epochs 10")
    return value


def parser():
    """The argparse parser of ``python -m experiments.compare``."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description="Train every credit-assignment method on the same tasks and compare "
                    "test accuracy and convergence.",
        epilog="Example: python -m experiments.compare --quick --out /tmp/results")
    p.add_argument("--methods", nargs="+", default=["all"], metavar="NAME",
                   help="methods (names or aliases, comma- or space-separated) or 'all' "
                        f"(default; now {', '.join(credit.available())})")
    p.add_argument("--datasets", nargs="+", default=["all"], metavar="NAME",
                   help="data sets from credit.data.available(), or 'all' (default: "
                        f"{', '.join(DEFAULT_DATASETS)})")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help=f"a count N (seeds 0..N-1) or a list 0,3,7 (one seed: 7,); "
                        f"default {DEFAULT_SEEDS}, with --quick {QUICK_SEEDS}")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs for every data set (default: per data set)")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="output root (default results/); files go to DIR/compare/ "
                        "(DIR/compare_quick/ with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="1 seed, few epochs, subsampled MNIST: under 3 minutes")
    return p


def _settings(dataset):
    if dataset in SETTINGS:
        return SETTINGS[dataset]
    return GENERIC[data_lib.load(dataset).task]


def configs_from_args(args, p=None):
    """The run configs of parsed arguments; bad names exit with a parser error."""
    p = p or parser()
    methods = _names(args.methods)
    if methods == ["all"]:
        methods = credit.available()
    elif "all" in methods:
        p.error("--methods: 'all' cannot be combined with other names; pass either 'all' "
                "or a list such as --methods backprop,dfa")
    datasets = _names(args.datasets)
    if datasets == ["all"]:
        datasets = list(DEFAULT_DATASETS)
    elif "all" in datasets:
        p.error("--datasets: 'all' cannot be combined with other names; pass either 'all' "
                "or a list such as --datasets mnist,digits")
    if not methods:
        p.error("--methods: no method given; pass e.g. --methods backprop,dfa or all")
    if not datasets:
        p.error("--datasets: no data set given; pass e.g. --datasets digits or all")
    bad = [d for d in datasets if d not in data_lib.available()]
    if bad:
        p.error(f"--datasets: unknown data set(s) {', '.join(map(repr, bad))}; choose from "
                f"{', '.join(data_lib.available())}")
    seeds = args.seeds or list(range(QUICK_SEEDS if args.quick else DEFAULT_SEEDS))
    configs = []
    for dataset in datasets:
        settings = _settings(dataset)
        common = {**COMMON, **settings["run"]}
        if args.quick:
            common.update(settings["quick"])
        if args.epochs is not None:
            common["epochs"] = args.epochs
        configs += sweep.grid(methods, [dataset], seeds, **common)
    return configs


# ---------------------------------------------------------------------------
# Tables and figures


def tables(run_results, folder):
    """Write the tables and figures of a sweep's runs under ``folder``.

    Only the runs in ``run_results`` count (``folder/runs`` may hold others). Returns
    ``(accuracy markdown, convergence markdown, paths of the figures written)``.
    """
    folder = pathlib.Path(folder)
    ran = {r.run for r in run_results if r.run is not None}
    df = results.load_runs(folder / "runs")
    df = df[df["run"].isin(ran)].reset_index(drop=True)

    accuracy = sweep.annotate(results.accuracy_table(df), run_results)
    # One target per data set (accuracy for classification, test MSE for regression).
    parts = [results.convergence_table(df[df["dataset"] == dataset],
                                       target=_settings(dataset)["target"])
             for dataset in sorted(df["dataset"].unique())]
    convergence = (pd.concat(parts, ignore_index=True) if parts
                   else results.convergence_table(df, target=0.0))
    convergence = sweep.annotate(convergence, run_results)

    sweep.write_atomic(folder / "accuracy.csv", accuracy.to_csv(index=False))
    sweep.write_atomic(folder / "convergence.csv", convergence.to_csv(index=False))
    accuracy_md = results.to_markdown(sweep.display(accuracy, "final_mean"))
    convergence_md = results.to_markdown(
        sweep.display(convergence.drop(columns=["n_reached", "n"]), "epochs"))
    seeds = sorted({r.config["seed"] for r in run_results})
    accuracy_md = (f"Test accuracy (classification) or test MSE (regression): final and best "
                   f"over epochs, mean ± std over seeds {seeds}.\n\n{accuracy_md}\n")
    convergence_md = ("First epoch (and optimizer step, training seconds) at which the test "
                      "metric reaches the target, mean over the seeds that reached it; "
                      "auc_loss: area under the training-loss curve.\n\n"
                      f"{convergence_md}\n")
    sweep.write_atomic(folder / "accuracy.md", accuracy_md)
    sweep.write_atomic(folder / "convergence.md", convergence_md)
    figures = _figures(df, folder)
    return accuracy_md, convergence_md, figures


def _figures(df, folder):
    written = []
    if not len(df):
        return written
    kinds = {"curves_accuracy.png": ("val_accuracy", df),
             "curves_loss.png": ("val_loss", df[df["dataset"].isin(_regression(df))]),
             "alignment.png": ("alignment_0", df)}
    for name, (metric, frame) in kinds.items():
        if metric in frame.columns and frame[metric].notna().any():
            written.append(results.plot_curves(frame, folder / name, metric=metric))
    return written


def _regression(df):
    if "val_accuracy" not in df.columns:
        return set(df["dataset"])
    has_acc = df.groupby("dataset")["val_accuracy"].apply(lambda s: s.notna().any())
    return set(has_acc[~has_acc].index)


# ---------------------------------------------------------------------------
# Main


def main(argv=None):
    """Run the comparison; returns the exit code (2 for bad flags, via argparse)."""
    p = parser()
    args = p.parse_args(argv)
    configs = configs_from_args(args, p)
    folder = pathlib.Path(args.out) / ("compare_quick" if args.quick else "compare")
    start = time.perf_counter()
    try:
        # Validates every config (and finds the methods that do not apply) first.
        run_results = sweep.run_sweep(configs, folder / "runs", flags=FLAGS)
    except sweep.ConfigError as err:
        p.error(str(err))
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished runs are kept in {folder / 'runs'}; run the same "
              "command again to resume.", file=sys.stderr)
        return 130
    accuracy_md, convergence_md, figures = tables(run_results, folder)
    trained = sum(not r.cached and r.run is not None for r in run_results)
    print(f"\n{len(run_results)} runs ({trained} trained, "
          f"{sum(r.cached for r in run_results)} already done, "
          f"{sum(r.status == 'diverged' for r in run_results)} diverged, "
          f"{sum(r.status == 'not_applicable' for r in run_results)} not applicable) "
          f"in {time.perf_counter() - start:.0f} s\n")
    print("## Accuracy\n")
    print(accuracy_md)
    print("## Convergence\n")
    print(convergence_md)
    print(f"Written under {folder}/: accuracy.md, accuracy.csv, convergence.md, "
          f"convergence.csv{''.join(', ' + f.name for f in figures)}, runs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
