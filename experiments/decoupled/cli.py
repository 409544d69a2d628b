"""Command line of ``python -m experiments.decoupled`` (the runner's convention:
``--quick``, ``--out DIR``, ``--seeds``)."""

import argparse
import dataclasses
import sys
import time

from experiments.runner import cli

from experiments.decoupled.experiment import QUICK, Settings, run


def _ints(values):
    return [int(v) for v in cli.names(values)]


def parser():
    """The argparse parser of ``python -m experiments.decoupled``."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.decoupled",
        description="Decoupled execution, measured: a wide MLP split into K stages, one "
                    "process each, trained with locked backprop, GPipe, DFA, DNI and "
                    "DGL (local losses); "
                    "measured on this machine for K = 2 against one process, then "
                    "projected for K devices by a simulator fed with the measured "
                    "times. Writes DIR/decoupled/decoupled.md and csv files.")
    defaults = Settings()
    p.add_argument("--width", type=cli.positive_int, default=None,
                   help=f"hidden units per layer (default {defaults.width}; quick "
                        f"{QUICK['width']})")
    p.add_argument("--depth", type=cli.positive_int, default=None,
                   help=f"hidden layers (default {defaults.depth}, so that K = 8 stages fit "
                        f"its {defaults.depth + 1} blocks; quick {QUICK['depth']})")
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help=f"epochs per run (default {defaults.epochs}; quick {QUICK['epochs']})")
    p.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help=f"batch size (default {defaults.batch_size}; quick "
                        f"{QUICK['batch_size']})")
    p.add_argument("--micro-batches", nargs="+", default=None, metavar="M",
                   help="GPipe's micro-batches per batch: the first is measured, all are "
                        "simulated (default 4 8; quick 4)")
    p.add_argument("--window", type=cli.positive_int, default=None,
                   help=f"batches a DFA or DNI stage may run ahead in the decoupled runs "
                        f"(default {defaults.window})")
    p.add_argument("--simulate", nargs="+", default=None, metavar="K",
                   help="numbers of devices to simulate (default 2 4 8; quick 2 4)")
    p.add_argument("--conditioned", action="store_true",
                   help="DNI's synthesizers also see the label (cDNI)")
    cli.add_common(p, seeds_default="0 1 2; quick 0",
                   quick_help="smoke run: MLP 256x4 on 1,024 images, 2 epochs, one seed "
                              "(about 2 minutes)", out_name="decoupled")
    return p


def parse_args(argv=None):
    """Parse and check the command line; exit with a message naming a bad flag.

    Returns:
        ``(settings, out)``: a :class:`~experiments.decoupled.experiment.Settings` and the
        output root.
    """
    p = parser()
    args = p.parse_args(argv)
    settings = Settings(**(QUICK if args.quick else {}))
    for name in ("width", "depth", "epochs", "batch_size", "window"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    settings.conditioned = bool(args.conditioned)
    if args.seeds is not None:
        settings.seeds = tuple(cli.seeds(args.seeds, p))

    def fail(flag, value, rule, example):
        p.error(f"{flag}: got {value}; {rule}. Pass for example {flag} {example}.")

    if args.micro_batches is not None:
        try:
            settings.micro_batches = tuple(_ints(args.micro_batches))
        except ValueError:
            fail("--micro-batches", " ".join(args.micro_batches), "it takes integers", "4 8")
    bad = [m for m in settings.micro_batches if m < 2 or settings.batch_size % m]
    if not settings.micro_batches or bad:
        fail("--micro-batches", " ".join(map(str, settings.micro_batches)),
             f"each must be >= 2 and divide the batch size {settings.batch_size}", "4 8")
    if args.simulate is not None:
        try:
            settings.simulate_stages = tuple(_ints(args.simulate))
        except ValueError:
            fail("--simulate", " ".join(args.simulate), "it takes integers", "2 4 8")
    blocks = settings.depth + 1
    bad = [k for k in settings.simulate_stages if not 2 <= k <= blocks]
    if not settings.simulate_stages or bad:
        fail("--simulate", " ".join(map(str, settings.simulate_stages)),
             f"each K must be from 2 to the model's {blocks} blocks (depth + 1)",
             " ".join(str(k) for k in (2, 4, 8) if k <= blocks) or "2")
    if settings.depth < 1:
        fail("--depth", settings.depth, "the model needs a hidden layer to split", 8)
    return dataclasses.replace(settings), cli.check_out(p, args.out)


def main(argv=None):
    """Run the experiment from the command line; returns ``(measured, simulated,
    check)`` tables."""
    settings, out = parse_args(argv)
    begin = time.perf_counter()
    print(f"MLP 784-{settings.width}x{settings.depth}-10, batch {settings.batch_size}, "
          f"{settings.epochs} epochs, seeds {list(settings.seeds)}", flush=True)
    summary, simulated, check = run(settings, out, log=lambda s: print(s, flush=True))
    from credit import results

    print(results.to_markdown(summary[["run", "epoch_seconds", "speedup_vs_bp_2cores",
                                       "speedup_vs_bp_1core", "test_accuracy"]],
                              floatfmt=".3f"))
    print(results.to_markdown(simulated[["schedule", "K", "epoch_seconds", "speedup"]],
                              floatfmt=".2f"))
    print(f"wrote {out / 'decoupled'} in {time.perf_counter() - begin:.0f} s")
    return summary, simulated, check


if __name__ == "__main__":
    main(sys.argv[1:])
