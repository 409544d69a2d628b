"""Synthetic gradients on linear and deep linear models (Czarnecki et al. 2017, sec. 3).

Czarnecki, Swirszcz, Jaderberg, Osindero, Vinyals, Kavukcuoglu 2017, "Understanding
Synthetic Gradients and Decoupled Neural Interfaces" (ICML), train a linear model and
a deep linear model (10 hidden layers) with mean squared error and with log loss on
artificial 2-D and 100-D data, with backprop and with synthetic gradients (SG), and
find that SG reaches the same solution. Their theorem: linear regression trained
through a linear synthesizer at the output, conditioned on the target and trained on
the true gradient, converges to the least-squares solution.

This script runs that grid: 4 tasks x 2 models x 3 methods x seeds.

Tasks (``credit.data``; 1,000 train / 200 test examples, inputs N(0, I)):
    ``mse_2d``, ``mse_100d``: ``linear2d``, ``linear100d`` (y = x w* + 0.1 noise), MSE.
    ``log_2d``, ``log_100d``: ``linear_classification2d`` / ``100d`` with two classes
    and label noise 0.5 (so that the log-loss minimiser is finite), log loss of one
    logit (``BinaryCrossentropy(from_logits=True)``).
Models (all activations linear, one output unit):
    ``linear``: one Dense layer.
    ``deep_linear``: 10 hidden Dense layers of 32 units, then the output layer.
Methods:
    ``backprop``.
    ``dni``: a linear synthesizer (``h A + c``) -- on the deep model at every hidden
    block, trained on bootstrapped targets; on the linear model (no hidden block) at
    the output block, trained on the true gradient.
    ``cdni``: the same, conditioned on the target (``h A + y B + c``). On the linear
    model with MSE this is the paper's convergence case.

Every run starts from the same weights for all methods (``keras.utils.set_random_seed``
before building the model); the data and the synthesizers are seeded by the same seed.
The reference solution of each task is computed in float64: least squares
(``numpy.linalg.lstsq``) for MSE, the log-loss minimiser (Newton's method) for log loss,
both with an intercept. A model's **end-to-end map** is the product of its layers'
kernels (and the biases carried through), the affine map x -> output it computes.

Outputs, under ``<out>/linear_models/``:
    ``runs.csv`` / ``runs.md``: one row per run: final training and test loss, excess
    training loss over the reference solution, relative distance of the end-to-end map
    to the reference solution and to the backprop run with the same seed.
    ``summary.csv`` / ``summary.md``: the same, mean and std over seeds.
    ``history.csv``: per epoch (epoch 0 = initial weights) and run: training loss
    (exact, full training set, at the end of the epoch), excess loss, distance to the
    reference solution, the synthesizers' ``sg_loss``.
    ``curves.png``: excess training loss per epoch; ``distance.png``: distance of the
    end-to-end map to the reference solution per epoch (rows: models, columns: tasks,
    log scale, mean over seeds with a min-max band).

Usage:
    python -m experiments.linear_models                  # full run, ~10 min CPU on 2 cores
    python -m experiments.linear_models --quick          # smoke run, < 1 min
    python -m experiments.linear_models --seeds 0 --tasks mse_2d --models linear
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import credit  # noqa: E402
from credit import data as data_lib  # noqa: E402
from credit import results as results_lib  # noqa: E402
from experiments.runner import cli  # noqa: E402
from experiments.runner.files import write_atomic, write_table  # noqa: E402

__all__ = [
    "TASKS", "MODELS", "METHODS", "TRAINING", "Problem", "make_problem", "build_model",
    "method_spec", "end_to_end_map", "train_run", "run", "summarize", "write_outputs",
    "main",
]

#: task -> (credit.data name, loss): "mse" (regression) or "log" (binary log loss).
TASKS = {
    "mse_2d": ("linear2d", "mse"),
    "mse_100d": ("linear100d", "mse"),
    "log_2d": ("linear_classification2d", "log"),
    "log_100d": ("linear_classification100d", "log"),
}
#: model -> number of hidden layers.
MODELS = {"linear": 0, "deep_linear": 10}
METHODS = ("backprop", "dni", "cdni")
WIDTH = 32  # units of each hidden layer of the deep linear model
LABEL_NOISE = 0.5  # noise of the classification teacher's scores: non-separable data
BATCH_SIZE = 50
#: Training of each model: optimizer, learning rate per loss (decayed to 0 by a cosine
#: over the run; the log loss is flatter, so the linear model takes larger steps on
#: it), epochs of a full and of a quick run.
TRAINING = {
    "linear": {"optimizer": "sgd", "learning_rate": {"mse": 0.1, "log": 0.4},
               "epochs": 60, "quick_epochs": 30},
    "deep_linear": {"optimizer": "adam", "learning_rate": {"mse": 3e-4, "log": 3e-4},
                    "epochs": 150, "quick_epochs": 3},
}
#: The synthesizers' own optimizer, at a constant learning rate, for every model.
SG_OPTIMIZER, SG_LEARNING_RATE = "adam", 0.01
QUICK_TASKS = ("mse_2d",)
DEFAULT_SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------
# Problems and their reference solutions


@dataclasses.dataclass
class Problem:
    """One task for one seed, with its reference solution.

    Attributes:
        task: a key of :data:`TASKS`.
        loss: ``"mse"`` or ``"log"``.
        seed: the data seed.
        x_train, y_train, x_test, y_test: float32 arrays; targets of shape (n, 1)
            (0/1 labels for log loss).
        theta_star: the reference solution in float64, ``[w (d values), b]``.
        loss_star: its training loss.
    """

    task: str
    loss: str
    seed: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    theta_star: np.ndarray
    loss_star: float


def _augment(x):
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def affine_loss(theta, x, y, loss):
    """The loss of the affine map ``x -> x w + b`` (``theta = [w, b]``), in float64.

    Args:
        theta: ``[w (d values), b]``.
        x: inputs, shape (n, d).
        y: targets, shape (n, 1) or (n,); 0/1 labels for ``loss="log"``.
        loss: ``"mse"`` (mean squared error) or ``"log"`` (mean binary log loss of the
            logit ``x w + b``).

    Returns:
        The mean loss, a float.
    """
    z = _augment(x) @ np.asarray(theta, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if loss == "mse":
        return float(np.mean((z - y) ** 2))
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def least_squares(x, y):
    """The least-squares solution ``[w, b]`` of ``y ~ x w + b``, in float64."""
    solution, *_ = np.linalg.lstsq(_augment(x), np.asarray(y, np.float64).reshape(-1),
                                   rcond=None)
    return solution


def logistic_minimiser(x, y, iterations=100):
    """The minimiser ``[w, b]`` of the mean log loss of the logit ``x w + b``.

    Newton's method with a backtracking line search, from zero, in float64. The data
    must not be linearly separable (else the minimiser is at infinity).
    """
    a, y = _augment(x), np.asarray(y, np.float64).reshape(-1)
    theta = np.zeros(a.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a @ theta)))
        gradient = a.T @ (p - y) / len(y)
        if np.linalg.norm(gradient) < 1e-13:
            break
        hessian = (a.T * (p * (1 - p))) @ a / len(y)
        step = np.linalg.solve(hessian, gradient)
        f0, t = affine_loss(theta, x, y, "log"), 1.0
        while affine_loss(theta - t * step, x, y, "log") > f0 - 1e-4 * t * gradient @ step:
            t /= 2
            if t < 1e-12:
                break
        theta = theta - t * step
    return theta


def make_problem(task, seed):
    """Load a task's data for a seed and compute its reference solution.

    Args:
        task: a key of :data:`TASKS`.
        seed: seed of the data (teacher, inputs, noise).

    Returns:
        A :class:`Problem`.
    """
    name, loss = TASKS[task]
    options = {"noise": LABEL_NOISE} if loss == "log" else {}
    ds = data_lib.load(name, seed=seed, **options)

    def targets(y):
        return np.asarray(y, dtype=np.float32).reshape(len(y), 1)

    if loss == "mse":
        theta = least_squares(ds.x_train, ds.y_train)
    else:
        theta = logistic_minimiser(ds.x_train, ds.y_train)
    return Problem(task, loss, seed, ds.x_train, targets(ds.y_train), ds.x_test,
                   targets(ds.y_test), theta, affine_loss(theta, ds.x_train, ds.y_train, loss))


# ---------------------------------------------------------------------------
# Models and methods


def build_model(model, input_dim):
    """A linear or deep linear ``credit.Sequential`` with one linear output unit.

    Args:
        model: a key of :data:`MODELS`.
        input_dim: number of inputs.

    Returns:
        An uncompiled model: ``MODELS[model]`` Dense layers of :data:`WIDTH` units and
        a Dense(1) output, all without activation.
    """
    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(WIDTH, name=f"hidden_{i + 1}") for i in range(MODELS[model])]
    layers.append(keras.layers.Dense(1, name="output"))
    return credit.Sequential(layers, name=model)


def method_spec(method, model, seed):
    """The ``credit.get`` argument of a method of this experiment.

    Args:
        method: ``"backprop"``, ``"dni"`` or ``"cdni"``.
        model: a key of :data:`MODELS`: a deep model gets a synthesizer at every hidden
            block (bootstrapped targets), the linear model one at its output block (true
            gradient as target, the setting of the paper's convergence theorem).
        seed: the synthesizers' seed.

    Returns:
        ``"backprop"`` or a config dict of ``credit.methods.SyntheticGradients``.
    """
    if method == "backprop":
        return "backprop"
    deep = MODELS[model] > 0
    return {"name": "synthetic_gradients", "synthesizer": "linear",
            "conditioned": method == "cdni",
            "at": None if deep else [0],
            "target": "bootstrap" if deep else "true",
            "optimizer": SG_OPTIMIZER, "learning_rate": SG_LEARNING_RATE, "seed": seed}


def end_to_end_map(model):
    """The affine map ``x -> x W + b`` that a chain of linear Dense layers computes.

    ``W`` is the product of the kernels; ``b`` carries each bias through the layers
    above it: ``b = (...(b_1 W_2 + b_2) W_3 + ...) + b_N``.

    Args:
        model: a model whose layers are Dense layers without activation.

    Returns:
        ``theta = [W (d values), b]``, float64, for a single output unit.
    """
    kernel = bias = None
    for layer in model.layers:
        if layer.activation is not keras.activations.linear:
            raise ValueError(f"layer {layer.name!r} has activation {layer.activation!r}; "
                             "end_to_end_map needs linear layers.")
        k = np.asarray(layer.kernel.numpy(), np.float64)
        b = np.asarray(layer.bias.numpy(), np.float64)
        if kernel is None:
            kernel, bias = k, b
        else:
            kernel, bias = kernel @ k, bias @ k + b
    return np.concatenate([kernel[:, 0], bias[:1]])


def _relative(theta, reference):
    return float(np.linalg.norm(theta - reference) / np.linalg.norm(reference))


class _Probe(keras.callbacks.Callback):
    """Records the exact training loss and the end-to-end map after every epoch."""

    def __init__(self, problem, labels):
        super().__init__()
        self.problem, self.labels, self.rows = problem, labels, []

    def _record(self, epoch, logs):
        p = self.problem
        theta = end_to_end_map(self.model)
        finite = bool(np.all(np.isfinite(theta)))
        train_loss = affine_loss(theta, p.x_train, p.y_train, p.loss) if finite else math.nan
        self.rows.append({
            **self.labels, "epoch": epoch,
            "train_loss": train_loss,
            "excess_loss": train_loss - p.loss_star,
            "rel_dist_optimum": _relative(theta, p.theta_star) if finite else math.nan,
            "sg_loss": float((logs or {}).get("sg_loss", math.nan)),
        })
        self.theta = theta

    def on_train_begin(self, logs=None):
        self._record(0, None)

    def on_epoch_end(self, epoch, logs=None):
        self._record(epoch + 1, logs)


def train_run(problem, model, method, seed, epochs):
    """Train one model on one problem with one method.

    Args:
        problem: a :class:`Problem`.
        model: a key of :data:`MODELS`.
        method: one of :data:`METHODS`.
        seed: seeds the initial weights (``keras.utils.set_random_seed``), the batch
            order and the synthesizers.
        epochs: passes over the training set.

    Returns:
        ``(theta, history rows, seconds)``: the final end-to-end map (see
        :func:`end_to_end_map`; NaN if training diverged), a list of dicts, one per
        epoch (epoch 0 is the initial model), and the training time.
    """
    training = TRAINING[model]
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    net = build_model(model, problem.x_train.shape[1])
    steps = epochs * math.ceil(len(problem.x_train) / BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(
        training["learning_rate"][problem.loss], steps)
    optimizer = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[
        training["optimizer"]](learning_rate=schedule)
    loss = ("mse" if problem.loss == "mse"
            else keras.losses.BinaryCrossentropy(from_logits=True))
    net.compile(optimizer=optimizer, loss=loss,
                method=credit.get(method_spec(method, model, seed)))
    labels = {"task": problem.task, "model": model, "method": method, "seed": seed}
    probe = _Probe(problem, labels)
    begin = time.perf_counter()
    net.fit(problem.x_train, problem.y_train, batch_size=BATCH_SIZE, epochs=epochs,
            shuffle=True, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN(), probe])
    theta = probe.theta
    if net.stop_training:  # TerminateOnNaN: the loss became NaN or infinite
        theta = np.full_like(theta, np.nan)
    return theta, probe.rows, time.perf_counter() - begin


# ---------------------------------------------------------------------------
# The grid


def run(tasks, models, methods, seeds, epochs=None, quick=False, log=print):
    """Run every task x model x method x seed; return the per-run and per-epoch tables.

    Args:
        tasks, models, methods, seeds: lists of keys of :data:`TASKS`, :data:`MODELS`,
            :data:`METHODS`, and integer seeds.
        epochs: passes over the training set for every model; None uses
            ``TRAINING[model]["epochs"]`` (``"quick_epochs"`` when ``quick``).
        quick: use the quick epochs.
        log: called with one progress line per run (None: silent).

    Returns:
        ``(runs, history)``: DataFrames with one row per run and one row per run x
        epoch.
    """
    methods = sorted(methods, key=METHODS.index)  # backprop first: the others compare to it
    total = len(tasks) * len(models) * len(methods) * len(seeds)
    rows, history, count = [], [], 0
    for seed in seeds:
        for task in tasks:
            problem = make_problem(task, seed)
            for model in models:
                n_epochs = epochs or TRAINING[model]["quick_epochs" if quick else "epochs"]
                backprop_theta = None
                for method in methods:
                    theta, curve, seconds = train_run(problem, model, method, seed, n_epochs)
                    history += curve
                    if method == "backprop":
                        backprop_theta = theta
                    row = _final_row(problem, model, method, seed, n_epochs, theta,
                                     backprop_theta, seconds)
                    rows.append(row)
                    count += 1
                    if log is not None:
                        log(f"[{count}/{total}] {task} {model} {method} seed {seed}: "
                            f"train loss {row['train_loss']:.5g} (optimum "
                            f"{row['optimum_loss']:.5g}), distance to optimum "
                            f"{row['rel_dist_optimum']:.3g}, {seconds:.1f} s")
    return pd.DataFrame(rows), pd.DataFrame(history)


def _final_row(problem, model, method, seed, epochs, theta, backprop_theta, seconds):
    p = problem
    finite = bool(np.all(np.isfinite(theta)))
    nan = math.nan
    train_loss = affine_loss(theta, p.x_train, p.y_train, p.loss) if finite else nan
    row = {
        "task": p.task, "model": model, "method": method, "seed": seed, "epochs": epochs,
        "diverged": not finite,
        "train_loss": train_loss,
        "optimum_loss": p.loss_star,
        "excess_loss": train_loss - p.loss_star,
        "test_loss": affine_loss(theta, p.x_test, p.y_test, p.loss) if finite else nan,
        "test_accuracy": nan,
        "rel_dist_optimum": _relative(theta, p.theta_star) if finite else nan,
        "rel_dist_backprop": nan,
        "seconds": seconds,
    }
    if p.loss == "log" and finite:
        logits = _augment(p.x_test) @ theta
        row["test_accuracy"] = float(np.mean((logits > 0) == (p.y_test[:, 0] > 0.5)))
    if finite and backprop_theta is not None and np.all(np.isfinite(backprop_theta)):
        row["rel_dist_backprop"] = _relative(theta, backprop_theta)
    return row


SUMMARY_COLUMNS = ("train_loss", "excess_loss", "test_loss", "test_accuracy",
                   "rel_dist_optimum", "rel_dist_backprop")


def summarize(runs):
    """Mean and std over seeds of each task x model x method.

    Args:
        runs: the per-run table of :func:`run`.

    Returns:
        A DataFrame: task, model, method, ``n`` (seeds), ``diverged`` (count), and
        ``<column>_mean`` / ``<column>_std`` for the loss and distance columns (over the
        runs that did not diverge; std NaN for a single seed).
    """
    keys = ["task", "model", "method"]
    counts = runs.groupby(keys, sort=False)["diverged"].agg(n="size", diverged="sum")
    stats = results_lib.mean_std(runs[~runs["diverged"]], keys, SUMMARY_COLUMNS)
    return counts.reset_index().merge(stats.drop(columns="n"), on=keys, how="left")


# ---------------------------------------------------------------------------
# Files


def plot_grid(history, column, path, ylabel, floor=1e-12):
    """Per-epoch curves: rows = models, columns = tasks, one line per method.

    Each line is the mean over seeds of ``column`` (clipped below at ``floor``, log
    scale), with a min-max band over seeds. Written atomically as PNG.

    Args:
        history: the per-epoch table of :func:`run`.
        column: the column to plot, e.g. ``"excess_loss"``.
        path: the PNG file.
        ylabel: the y axis label.
        floor: values below it are shown at it (log scale).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [t for t in TASKS if t in set(history["task"])]
    models = [m for m in MODELS if m in set(history["model"])]
    fig = Figure(figsize=(3.6 * len(tasks), 2.9 * len(models)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(tasks), squeeze=False)
    colors = {"backprop": "black", "dni": "tab:orange", "cdni": "tab:blue"}
    for i, model in enumerate(models):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            rows = history[(history["model"] == model) & (history["task"] == task)]
            for method in [m for m in METHODS if m in set(rows["method"])]:
                values = rows[rows["method"] == method].copy()
                values[column] = values[column].clip(lower=floor)
                stats = values.groupby("epoch")[column].agg(["mean", "min", "max"])
                ax.plot(stats.index, stats["mean"], label=method, color=colors[method])
                ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2,
                                color=colors[method], linewidth=0)
            ax.set_yscale("log")
            ax.set_title(f"{model}, {task}", fontsize="medium")
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel(ylabel)
            ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_atomic(path, buffer.getvalue())


def write_outputs(runs, history, folder):
    """Write the tables (CSV + markdown) and figures (PNG) into ``folder``.

    Args:
        runs, history: the tables of :func:`run`.
        folder: the output folder (created if missing).

    Returns:
        The list of paths written.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shown = runs.drop(columns=["optimum_loss"])
    write_table(shown, folder, "runs", floatfmt=".3g")
    write_table(summarize(runs), folder, "summary", floatfmt=".3g")
    buffer = io.StringIO()
    history.to_csv(buffer, index=False)
    write_atomic(folder / "history.csv", buffer.getvalue())
    plot_grid(history, "excess_loss", folder / "curves.png",
              "train loss - optimum")
    plot_grid(history, "rel_dist_optimum", folder / "distance.png",
              "|map - optimum| / |optimum|")
    return [folder / n for n in ("runs.csv", "runs.md", "summary.csv", "summary.md",
                                 "history.csv", "curves.png", "distance.png")]


# ---------------------------------------------------------------------------
# Command line


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.linear_models",
        description="Synthetic gradients vs backprop on linear and deep linear models "
                    "(Czarnecki et al. 2017); writes tables and figures under "
                    "<out>/linear_models/.")
    cli.add_common(parser, seeds_default="0 1 2; quick: 0",
                   quick_help=f"smoke run: seed 0, tasks {', '.join(QUICK_TASKS)}, few epochs",
                   out_name="linear_models")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for every model (default: linear "
                             f"{TRAINING['linear']['epochs']}, deep_linear "
                             f"{TRAINING['deep_linear']['epochs']}; fewer with --quick)")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help=f"subset of {', '.join(TASKS)} (default: all; quick: "
                             f"{', '.join(QUICK_TASKS)})")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"subset of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"subset of {', '.join(METHODS)} (default: all)")
    return parser


def _check_names(parser, flag, values, valid):
    for value in values:
        if value not in valid:
            parser.error(f"{flag}: got {value!r}, which is not one of {', '.join(valid)}. "
                         f"Pass for example {flag} {' '.join(list(valid)[:2])}.")
    if len(set(values)) != len(values):
        parser.error(f"{flag}: got {' '.join(values)}, which names a value twice; "
                     "give each once.")


def parse_args(argv=None):
    """Parse and check the command line; exit with a message naming a bad flag.

    Returns:
        The argparse namespace with every default filled in.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else list(DEFAULT_SEEDS)
    else:
        args.seeds = cli.seeds(args.seeds, parser)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: got {args.epochs}; it must be an integer >= 1. "
                     "Pass for example --epochs 20, or leave it out for the defaults.")
    args.tasks = cli.names(args.tasks) or list(QUICK_TASKS if args.quick else TASKS)
    args.models = cli.names(args.models) or list(MODELS)
    args.methods = cli.names(args.methods) or list(METHODS)
    _check_names(parser, "--tasks", args.tasks, TASKS)
    _check_names(parser, "--models", args.models, MODELS)
    _check_names(parser, "--methods", args.methods, METHODS)
    cli.check_out(parser, args.out)
    return args


def main(argv=None):
    """Run the experiment from the command line (see the module docstring).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        ``(runs, history)``: the DataFrames written.
    """
    args = parse_args(argv)
    folder = pathlib.Path(args.out) / "linear_models"
    begin = time.perf_counter()
    runs, history = run(args.tasks, args.models, args.methods, args.seeds,
                        epochs=args.epochs, quick=args.quick,
                        log=lambda line: print(line, flush=True))
    write_outputs(runs, history, folder)
    summary = summarize(runs)
    columns = ["task", "model", "method", "n", "excess_loss_mean", "rel_dist_optimum_mean",
               "rel_dist_backprop_mean"]
    print(results_lib.to_markdown(summary[columns], floatfmt=".3g"))
    print(f"wrote {folder} in {time.perf_counter() - begin:.0f} s")
    return runs, history


if __name__ == "__main__":
    main(sys.argv[1:])
