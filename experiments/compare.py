"""The main job: every credit-assignment method on the same tasks, side by side.

Runs methods x data sets x models x seeds with :mod:`experiments.runner`, then prints
and writes an accuracy table, a convergence table and learning curves.

Every run holds out a **validation split** of its training data (10%, seeded,
stratified by class). The best epoch, early stopping (``--patience``) and the tuned
hyperparameters (``--tune``) are chosen on it; the **test split** is evaluated every
epoch and reported, never chosen on. The accuracy table gives, per method, the test
metric at the best validation epoch, mean and 95% t-interval over seeds, and the
difference to backprop on the same seeds (same initial weights, validation split and
batch order) with its interval; ``*`` marks a difference whose interval excludes zero.

Defaults: every registered method (``credit.available(dense_chains=True)``: PEPITA and
Forward-Forward, which train chains of Dense layers only, included) on the MNIST sample,
sklearn digits and the diabetes regression, MLPs, 3 seeds. A method that does not apply
is listed with ``n/a (not applicable: ...)`` with the engine's reason (kickback needs one
scalar output, so it runs on diabetes only; PEPITA and Forward-Forward refuse every
model but the MLP; Forward-Forward needs classes, so not diabetes).

Per-method settings (:data:`METHOD_SETTINGS`): every method trains with Adam at 1e-3,
except the local and forward-only methods, set from a tuning run on the validation
split (see :data:`METHOD_SETTINGS`). ``--tune`` / ``--tune-grid`` tune over them as
over the others (a tuned key replaces the per-method value).

Models (``--models``; all trained with Adam):

    mlp          tanh MLPs: mnist 784-256-256-10 (batch 64, 20 epochs), digits
                 64-64-64-10 (batch 32, 40 epochs), diabetes 10-32-32-1 (batch 32,
                 50 epochs, MSE on standardised targets); other data sets [64, 64]
    cnn          two Conv2D + max-pooling stages (16, 32 filters), Dense 64; images
    resnet       ResNet-20 (widths 16, 32, 64); --quick: ResNet-8 (8, 16, 32); images
    transformer  one encoder block (dim 32, 2 heads, ff 64); sequences
    lstm, gru    one recurrent layer of 64 units (--quick: 32); sequences

Images and sequences come from the image data sets: ``mnist`` as 28x28x1 images or
read row by row as 28 steps of 28 features, ``digits`` as 8x8x1 or 8 steps of 8
(reshaped by the runner's data step, ``experiments.runner.data``); ``mnist_images``,
``digits_images``, ``sequential_mnist`` and ``cifar10`` (Keras cache) can be named with
--datasets as they are. A model that cannot read a data set (cnn on diabetes) is listed
as not applicable.

Usage:
    python -m experiments.compare                   # full: 3 seeds, about 15 minutes
    python -m experiments.compare --quick           # 1 seed, few epochs, < 3 minutes
    python -m experiments.compare --methods bp,dfa --datasets digits --seeds 0 1 --epochs 10
    python -m experiments.compare --models resnet,transformer --quick
    python -m experiments.compare --tune lr         # per-method learning rate
    python -m experiments.compare --tune-grid '{"learning_rate": [1e-3, 3e-3], "dfa": {"method_config.scale": [0.1, 1.0]}}'
    python -m experiments.compare --workers 2       # two runs at a time

Flags:
    --methods    names or aliases (space- or comma-separated), or "all" (default).
    --datasets   names from credit.data.available(), or "all" (mnist, digits, diabetes).
    --models     mlp (default), cnn, resnet, transformer, lstm, gru, or "all".
    --seeds      seeds, e.g. 0 1 2 (default) or 0,1,2; --quick: 0.
    --epochs     epochs for every data set (default: per data set, above).
    --patience   early stopping on the validation metric after N epochs without progress.
    --tune KEYS  tune these config keys per method on the validation split, with the
                 default grids (lr: 1e-4, 3e-4, 1e-3, 3e-3, 1e-2; batch_size: 32,
                 64, 128).
    --tune-grid  a grid spec (JSON text or file): {"key": [values], "<method>": {...}};
                 keys are config keys or method_config.<name>.
    --tune-seeds seeds of the tuning runs (default: the first seed).
    --workers N  train N runs at a time in worker processes; --ray [ADDRESS] as Ray tasks.
    --in-process train in this process instead of a worker process (for a debugger; a
                 crash inside TensorFlow then ends the command).
    --tensorboard  also write TensorBoard logs (every scalar of the epoch logs) to
                 runs/<hash>/tensorboard/.
    --out DIR    output root (default results/).
    --quick      1 seed, few epochs, MNIST subsampled to 2,000 training images: a smoke
                 run of the whole pipeline. Explicit --seeds / --epochs still win.

Output, under ``DIR/compare/`` (``DIR/compare_quick/`` with --quick, so that a quick run
never overwrites the full tables):

    runs/<hash>/        one folder per run (config.json, history.csv, done), see
                        experiments.runner; re-running skips finished runs and resumes
                        interrupted ones (tuning runs too)
    accuracy.md, .csv   validation metric at the best epoch, test metric there and at
                        the last epoch, mean ± 95% CI over seeds; paired difference to
                        backprop (test, at the best validation epoch), * = CI excludes 0
    convergence.md, .csv  epochs / steps / seconds until the test metric reaches the
                        target, seeds that reached it, area under the training-loss curve
    tuning.md, .csv     with --tune / --tune-grid: every grid point's validation metric,
                        and the one chosen per method
    curves_accuracy.png test accuracy per epoch (classification data sets), one panel
                        per data set and model, one line per method (mean over seeds)
    curves_loss.png     test loss per epoch (regression data sets)
    alignment.png       cosine of the first hidden layer's update with backprop's (same
                        panels)

The tables only include the runs of this invocation (a runs/ folder may hold more).

Each run trains in a worker process: a run that fails (an exception, or a crash inside
TensorFlow) is recorded as failed in its folder (``failed``, ``output.log``) and in the
tables (a ``failed`` column, the reason in place of a result), the other runs go on, and
the command exits with status 1 after writing the tables; running it again retrains the
failed runs only.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

import credit  # noqa: E402
from credit import data as data_lib  # noqa: E402
from credit import results  # noqa: E402
from experiments.runner import cli, configs, folders, sweep, tables as tables_lib, tuning  # noqa: E402
from experiments.runner.files import write_table  # noqa: E402
from experiments.runner.models import MODELS  # noqa: E402

DEFAULT_DATASETS = ("mnist", "digits", "diabetes")
DEFAULT_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
BASELINE = "backprop"


def _mlp(hidden):
    return {"type": "mlp", "hidden": list(hidden), "activation": "tanh"}


#: Per data set: the run settings, the quick settings and the convergence target.
SETTINGS = {
    "mnist": {"run": {"model": _mlp([256, 256]), "batch_size": 64, "epochs": 20},
              "quick": {"epochs": 3, "n_train": 2000}, "target": 0.9},
    "digits": {"run": {"model": _mlp([64, 64]), "batch_size": 32, "epochs": 40},
               "quick": {"epochs": 5}, "target": 0.9},
    "diabetes": {"run": {"model": _mlp([32, 32]), "batch_size": 32, "epochs": 50},
                 "quick": {"epochs": 6}, "target": 0.65},
}
GENERIC = {
    "classification": {"run": {"model": _mlp([64, 64]), "batch_size": 32, "epochs": 20},
                       "quick": {"epochs": 5, "n_train": 2000}, "target": 0.9},
    "regression": {"run": {"model": _mlp([32, 32]), "batch_size": 32, "epochs": 30},
                   "quick": {"epochs": 10, "n_train": 2000}, "target": 0.5},
}
#: Model specs of the zoo (the mlp comes from SETTINGS): full and --quick.
ZOO = {
    "cnn": ({"type": "cnn", "filters": [16, 32], "dense": [64]},
            {"type": "cnn", "filters": [8, 16], "dense": [32]}),
    "resnet": ({"type": "resnet", "depth": 20, "widths": [16, 32, 64]},
               {"type": "resnet", "depth": 8, "widths": [8, 16, 32]}),
    "transformer": ({"type": "transformer", "dim": 32, "heads": 2, "layers": 1, "ff": 64},
                    {"type": "transformer", "dim": 16, "heads": 2, "layers": 1, "ff": 32}),
    "lstm": ({"type": "lstm", "units": [64]}, {"type": "lstm", "units": [32]}),
    "gru": ({"type": "gru", "units": [64]}, {"type": "gru", "units": [32]}),
}
COMMON = {"optimizer": "adam", "learning_rate": 1e-3, "n_align": 256}
#: Per-method config values over COMMON (``method_config`` entries are merged). Chosen
#: on the validation split of ``python -m experiments.compare --quick --datasets digits
#: --tune-grid ...`` (5 epochs, seed 0, 2026-12-07; validation accuracy at the best
#: epoch, test never looked at):
#:
#: - forward_gradient: learning rate 1e-4 / 3e-4 / 3e-3 x tangents 1 / 4: 0.190 / 0.204
#:   / 0.303 with one tangent, 0.190 / 0.239 / 0.570 with four. With Adam, whose step
#:   does not shrink with the estimate's size, the noise of ``(∇L·v) v`` (variance
#:   growing with the number of weights) is averaged over more steps at a larger rate:
#:   unlike SGD, it does not need a smaller learning rate; four tangents (Flügel et al.
#:   2024) cost four forward passes a step.
#: - pepita: 3e-3 / 1e-2: 0.880 / 0.937 (1e-3: 0.803 in the default run).
#: - forward_forward: 3e-3 / 1e-2: 0.845 / 0.894 (1e-3: 0.711); threshold: the method's
#:   default, half of each layer's units, checked on digits in its docstring.
#: - local_losses: 3e-3: 0.909 (1e-3: 0.859).
#: - delayed_feedback (F³, only with ``--methods f3``: the runner shuffles its training
#:   set once, see experiments.runner.training): 1e-3 / 3e-3 / 1e-2: 0.676 / 0.754 /
#:   0.894 (1e-2 is the grid's edge). Same tuning run: forward_gradient with four
#:   tangents and ``method_config.perturb="activities"`` (Ren et al.) reached 0.831 /
#:   0.909 / 0.887 against 0.268 / 0.570 / 0.690 with the default weight perturbation;
#:   the row above keeps weight perturbation (Baydin et al.'s rule, the method's
#:   default); ``--tune-grid '{"forward_gradient": {"method_config.perturb":
#:   ["weights", "activities"]}}'`` compares both. With ``method_config.local=True``
#:   (a linear head and local loss per hidden block) in a second run: 0.754 / 0.866 /
#:   0.901, no gain over the global activity estimate on this two-hidden-layer MLP.
#:
#: Five epochs favour large rates: the full runs (40 epochs on digits) should confirm
#: them with ``--tune lr``. They did in part (results/compare/tuning.md, 2026-12-08;
#: rates chosen on MNIST / digits / diabetes): forward_gradient 3e-3 / 1e-2 / 1e-2,
#: pepita 3e-4 / 3e-3 / 3e-4, forward_forward 1e-3 / 1e-2 / n/a, local_losses 1e-2 /
#: 3e-4 / 3e-3, delayed_feedback 1e-2 / 3e-4 / 1e-2.
METHOD_SETTINGS = {
    "forward_gradient": {"learning_rate": 3e-3, "method_config": {"tangents": 4}},
    "pepita": {"learning_rate": 1e-2},
    "forward_forward": {"learning_rate": 1e-2},
    "local_losses": {"learning_rate": 3e-3},
    "delayed_feedback": {"learning_rate": 1e-2},
}

#: How the config keys are called on the command line, for error messages.
FLAGS = {"method": "--methods", "dataset": "--datasets", "seed": "--seeds",
         "epochs": "--epochs", "patience": "--patience", "model": "--models"}


# ---------------------------------------------------------------------------
# Command line


def parser():
    """The argparse parser of ``python -m experiments.compare``."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description="Train every credit-assignment method on the same tasks and compare "
                    "them: test metric at the best validation epoch with 95% confidence "
                    "intervals, paired differences to backprop, convergence.",
        epilog="Example: python -m experiments.compare --quick --out /tmp/results")
    p.add_argument("--methods", nargs="+", default=["all"], metavar="NAME",
                   help="methods (names or aliases, comma- or space-separated) or 'all' "
                        f"(default; now {', '.join(credit.available(dense_chains=True))})")
    p.add_argument("--datasets", nargs="+", default=["all"], metavar="NAME",
                   help="data sets from credit.data.available(), or 'all' (default: "
                        f"{', '.join(DEFAULT_DATASETS)})")
    p.add_argument("--models", nargs="+", default=["mlp"], metavar="NAME",
                   help=f"model types: {', '.join(MODELS)}, or 'all' (default mlp)")
    cli.add_common(p, seeds_default="0 1 2; --quick: 0",
                   quick_help="1 seed, few epochs, subsampled MNIST: under 3 minutes",
                   out_name="compare (compare_quick with --quick)")
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="epochs for every data set (default: per data set)")
    p.add_argument("--patience", type=cli.positive_int, default=None,
                   help="stop a run after N epochs without progress on the validation "
                        "metric (default: train every epoch)")
    p.add_argument("--tune", nargs="+", default=None, metavar="KEY",
                   help="tune these keys per method on the validation split with their "
                        f"default grids ({', '.join(f'{k}: {v}' for k, v in tuning.DEFAULT_GRIDS.items())}); "
                        "lr is short for learning_rate")
    p.add_argument("--tune-grid", default=None, metavar="JSON",
                   help="grid spec, JSON text or file: {\"learning_rate\": [...], "
                        "\"dfa\": {\"method_config.scale\": [...]}}")
    p.add_argument("--tune-seeds", nargs="+", default=None, metavar="S",
                   help="seeds of the tuning runs (default: the first seed)")
    cli.add_parallel(p)
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard logs to runs/<hash>/tensorboard/")
    return p


def _settings(dataset):
    if dataset in SETTINGS:
        return SETTINGS[dataset]
    return GENERIC[data_lib.load(dataset).task]


def _all_or_names(p, flag, values, default):
    names = cli.names(values)
    if names == ["all"]:
        return list(default)
    if "all" in names:
        p.error(f"{flag}: 'all' cannot be combined with other names; pass either 'all' "
                f"or a list such as {flag} {','.join(list(default)[:2])}")
    if not names:
        p.error(f"{flag}: no name given; pass e.g. {flag} {list(default)[0]} or all")
    return names


def _model_spec(model, dataset, quick):
    if model == "mlp":
        return copy.deepcopy(_settings(dataset)["run"]["model"])
    return copy.deepcopy(ZOO[model][1 if quick else 0])


def with_method_settings(config):
    """``config`` with its method's :data:`METHOD_SETTINGS` (``method_config`` merged,
    the config's own entries win)."""
    method = configs.complete({"method": config["method"]})["method"]
    settings = METHOD_SETTINGS.get(method)
    if not settings:
        return config
    out = {**config, **{k: v for k, v in settings.items() if k != "method_config"}}
    if "method_config" in settings:
        out["method_config"] = {**settings["method_config"],
                                **config.get("method_config", {})}
    return out


class Plan:
    """What one invocation runs: the final configs and, with tuning, the grids.

    Attributes:
        configs: the final configs (before tuning: at the default hyperparameters).
        grids: the tuning grid spec (:func:`experiments.runner.tuning.parse_grid`) or
            None.
        tune_seeds: seeds of the tuning runs.
    """

    def __init__(self, configs, grids=None, tune_seeds=()):
        self.configs, self.grids, self.tune_seeds = configs, grids, list(tune_seeds)

    def tuned_keys(self):
        """The config keys the tuning grids vary (the columns of the chosen settings)."""
        if not self.grids:
            return []
        keys = []
        for grid in self.grids.values():
            keys += [k for k in grid if k not in keys]
        return keys


def plan_from_args(args, p=None):
    """The :class:`Plan` of parsed arguments; bad values exit with a parser error."""
    p = p or parser()
    methods = _all_or_names(p, "--methods", args.methods,
                            credit.available(dense_chains=True))
    datasets = _all_or_names(p, "--datasets", args.datasets, DEFAULT_DATASETS)
    models = _all_or_names(p, "--models", args.models, MODELS)
    bad = [d for d in datasets if d not in data_lib.available()]
    if bad:
        p.error(f"--datasets: unknown data set(s) {', '.join(map(repr, bad))}; choose from "
                f"{', '.join(data_lib.available())}")
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"--models: unknown model type(s) {', '.join(map(repr, bad))}; choose from "
                f"{', '.join(MODELS)}")
    seeds = cli.seeds(args.seeds, p) if args.seeds else list(QUICK_SEEDS if args.quick
                                                            else DEFAULT_SEEDS)
    out = []
    for dataset in datasets:
        settings = _settings(dataset)
        for model in models:
            common = {**COMMON, **settings["run"], "model": _model_spec(model, dataset, args.quick)}
            if args.quick:
                common.update(settings["quick"])
            if args.epochs is not None:
                common["epochs"] = args.epochs
            if args.patience is not None:
                common["patience"] = args.patience
            out += [with_method_settings(c)
                    for c in configs.grid(methods, [dataset], seeds, **common)]
    grids = None
    if args.tune or args.tune_grid:
        try:
            grids = tuning.parse_grid(args.tune, args.tune_grid)
        except tuning.TuneError as err:
            p.error(str(err))
    tune_seeds = cli.seeds(args.tune_seeds, p, "--tune-seeds") if args.tune_seeds else seeds[:1]
    return Plan(out, grids, tune_seeds)


def configs_from_args(args, p=None):
    """The run configs of parsed arguments (without tuning)."""
    return plan_from_args(args, p).configs


# ---------------------------------------------------------------------------
# Tuning


def _group(config):
    config = configs.complete(config)
    return (config["dataset"], tables_lib.model_key(config["model"]), config["method"])


def tune(plan, runs_folder, **sweep_options):
    """Run the tuning grid of every (data set, model, method); return the final configs
    at the chosen points, the tuning table and the tuning runs' results."""
    base = {}
    for config in plan.configs:
        base.setdefault(_group(config), config)
    tune_configs, candidates = [], {}
    for group, config in base.items():
        grid = tuning.grid_for(plan.grids, config["method"])
        for point_config in tuning.expand(config, grid):
            ids = []
            for seed in plan.tune_seeds:
                c = {**point_config, "seed": seed}
                tune_configs.append(c)
                ids.append(configs.run_id(c))
            candidates.setdefault(group, []).append(
                (tuning.point_of(point_config, list(grid)), ids))
    print(f"Tuning: {len(tune_configs)} runs ({len(base)} method x data set x model "
          f"groups, seeds {plan.tune_seeds})", flush=True)
    tune_results = sweep.run_sweep(tune_configs, runs_folder, flags=FLAGS, **sweep_options)
    applicable = {_group(r.config) for r in tune_results if r.run is not None}
    candidates = {g: points for g, points in candidates.items() if g in applicable}
    runs = results.run_table(_load(runs_folder, {r.run for r in tune_results if r.run}))
    task = {d: ("classification" if m == "accuracy" else "regression")
            for d, m in zip(runs["dataset"], runs["metric"])}
    chosen, table = tuning.choose(candidates, runs, lambda g: task.get(g[0], "classification"))
    if len(table):
        table.insert(0, "method", [g[2] for g in table["group"]])
        table.insert(1, "dataset", [g[0] for g in table["group"]])
        table.insert(2, "model", [g[1] for g in table["group"]])
        table = table.drop(columns=["group"])
    final = []
    for config in plan.configs:
        point = chosen.get(_group(config))
        if point:
            for key, value in point.items():
                config = tuning.set_key(config, key, value)
        final.append(config)
    return final, table, tune_results


# ---------------------------------------------------------------------------
# Tables and figures


def _load(runs_folder, ran):
    df = results.load_runs(runs_folder)
    return df[df["run"].isin(ran)].reset_index(drop=True)


ACCURACY_CAPTION = (
    "Accuracy (classification) or loss (regression: MSE on standardised targets), mean "
    "± half-width of the 95% t-interval over seeds {seeds}. val: validation split, at "
    "each run's best validation epoch (the split that chose the epoch{tuned}); test: test "
    "split at that epoch; test_final: test split at the last epoch; diff: test minus "
    "{baseline}'s on the same seeds (paired), * where its interval excludes 0 (accuracy: "
    "> 0 favours the method; loss: < 0 does).")


def tables(run_results, folder, tuned_keys=(), tuning_table=None):
    """Write the tables and figures of a sweep's runs under ``folder``.

    Only the runs in ``run_results`` count (``folder/runs`` may hold others). Returns
    ``(accuracy markdown, convergence markdown, paths of the figures written)``.
    """
    folder = pathlib.Path(folder)
    df = _load(folder / "runs", {r.run for r in run_results if r.run is not None})
    for key in tuned_keys:  # a tuned method hyperparameter gets a column of its own
        if key.startswith("method_config.") and "method_config" in df.columns:
            name = key[len("method_config."):]
            df[key] = [json.loads(v).get(name) if isinstance(v, str) else None
                       for v in df["method_config"]]
    keep = [k for k in tuned_keys if k in df.columns]
    accuracy = tables_lib.annotate(results.accuracy_table(df, baseline=BASELINE, keep=keep),
                                   run_results)
    parts = []
    for (dataset, model), rows in df.groupby(["dataset", "model"], sort=True):
        part = results.convergence_table(rows, target=_settings(dataset)["target"])
        part.insert(2, "model", model)
        parts.append(part)
    convergence = (pd.concat(parts, ignore_index=True) if parts
                   else results.convergence_table(df, target=0.0).assign(model=[]))
    convergence = tables_lib.annotate(convergence, run_results)

    seeds = sorted({r.config["seed"] for r in run_results})
    tuned = f"; and the tuned {', '.join(tuned_keys)}" if tuned_keys else ""
    caption = ACCURACY_CAPTION.format(seeds=seeds, tuned=tuned, baseline=BASELINE)
    shown = tables_lib.display(accuracy, "test_mean").drop(columns=["diff_low",
                                                                    "diff_high", "n_pairs"])
    shown = shown.rename(columns={"best_epoch_mean": "best_epoch"})
    for key in keep:  # settings, not measurements: 0.0003, not 0.000
        shown[key] = shown[key].map(_setting)
    accuracy_md = write_table(accuracy, folder, "accuracy", caption=caption,
                              markdown_table=shown).read_text()
    conv_caption = ("First epoch (and optimizer step, training seconds) at which the test "
                    "metric reaches the target, mean over the seeds that reached it; "
                    "auc_loss: area under the training-loss curve.")
    conv_shown = tables_lib.display(convergence, "epochs").drop(columns=["n_reached", "n"])
    convergence_md = write_table(convergence, folder, "convergence", caption=conv_caption,
                                 markdown_table=conv_shown).read_text()
    if tuning_table is not None and len(tuning_table):
        write_table(tuning_table, folder, "tuning", floatfmt=".4g", caption=(
            "Tuning on the validation split: each grid point's validation metric at the "
            "best epoch, mean over tuning seeds; chosen: the point used for the seeds "
            "of the accuracy table."), markdown_table=tables_lib.display(tuning_table))
    figures = _figures(df, folder)
    return accuracy_md, convergence_md, figures


def _setting(value):
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return format(value, "g") if isinstance(value, float) else str(value)


def _figures(df, folder):
    written = []
    if not len(df):
        return written
    kinds = {"curves_accuracy.png": ("test_accuracy", df),
             "curves_loss.png": ("test_loss", df[df["dataset"].isin(_regression(df))]),
             "alignment.png": ("alignment_0", df)}
    for name, (metric, frame) in kinds.items():
        if metric in frame.columns and frame[metric].notna().any():
            written.append(results.plot_curves(frame, folder / name, metric=metric))
    return written


def _regression(df):
    if "test_accuracy" not in df.columns:
        return set(df["dataset"])
    has_acc = df.groupby("dataset")["test_accuracy"].apply(lambda s: s.notna().any())
    return set(has_acc[~has_acc].index)


class TensorBoardLogs:
    """Picklable ``callbacks`` hook: a TensorBoard callback logging into each run folder."""

    def __init__(self, runs_folder):
        self.runs_folder = str(runs_folder)

    def __call__(self, config):
        import keras

        log_dir = pathlib.Path(self.runs_folder) / configs.run_id(config) / "tensorboard"
        return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False)]


# ---------------------------------------------------------------------------
# Main


def main(argv=None):
    """Run the comparison; returns the exit code (2 for bad flags, via argparse)."""
    p = parser()
    args = p.parse_args(argv)
    plan = plan_from_args(args, p)
    out = cli.check_out(p, args.out)
    folder = out / ("compare_quick" if args.quick else "compare")
    runs_folder = folder / "runs"
    if args.in_process and (args.workers > 1 or args.ray is not None):
        p.error("--in-process trains one run at a time in this process; drop it, or drop "
                "--workers / --ray")
    options = {"workers": args.workers, "ray": args.ray, "isolate": not args.in_process,
               "rerun_stale": args.rerun_stale,
               "callbacks": TensorBoardLogs(runs_folder) if args.tensorboard else None}
    start = time.perf_counter()
    tuning_table, run_results, tune_results = None, [], []
    try:
        final = plan.configs
        if plan.grids:
            final, tuning_table, tune_results = tune(plan, runs_folder, **options)
        # Validates every config (and finds the ones that do not apply) first.
        run_results = sweep.run_sweep(final, runs_folder, flags=FLAGS, **options)
    except configs.ConfigError as err:
        p.error(str(err))
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished runs are kept in {runs_folder}; run the same "
              "command again to resume.", file=sys.stderr)
        return 130
    accuracy_md, convergence_md, figures = tables(run_results, folder, plan.tuned_keys(),
                                                  tuning_table)
    trained = sum(not r.cached and r.status in (folders.STATUS_DONE, folders.STATUS_DIVERGED)
                  for r in run_results)
    failed = [r for r in (tune_results if plan.grids else []) + run_results
              if r.status == folders.STATUS_FAILED]
    failed = list({r.run: r for r in failed}.values())
    print(f"\n{len(run_results)} runs ({trained} trained, "
          f"{sum(r.cached for r in run_results)} already done, "
          f"{sum(r.status == folders.STATUS_DIVERGED for r in run_results)} diverged, "
          f"{sum(r.status == folders.STATUS_NA for r in run_results)} not applicable, "
          f"{len(failed)} failed) in {time.perf_counter() - start:.0f} s\n")
    print("## Accuracy\n")
    print(accuracy_md)
    print("## Convergence\n")
    print(convergence_md)
    extra = "".join(", " + f.name for f in figures)
    if tuning_table is not None:
        extra = ", tuning.md, tuning.csv" + extra
    print(f"Written under {folder}/: accuracy.md, accuracy.csv, convergence.md, "
          f"convergence.csv{extra}, runs/")
    if failed:
        print(f"\n{len(failed)} run(s) failed; they are not in the tables' numbers. Run the "
              "same command again to train them again:", file=sys.stderr)
        for r in failed:
            c = r.config
            print(f"  {r.folder}: {c['method']} on {c['dataset']} "
                  f"({tables_lib.short_model(tables_lib.model_key(c['model']))}), seed "
                  f"{c['seed']}: {r.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
