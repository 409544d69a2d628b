"""Decoupled execution, measured: a model split into stages, one process each.

Synthetic gradients (Jaderberg et al. 2016, "Decoupled Neural Interfaces using
Synthetic Gradients", ICML 2017) and direct feedback alignment (Nøkland 2016, NeurIPS)
remove the locks that keep a layer waiting for the rest of the network; this package
runs them that way and measures what it buys. A chain model (by default the MLP
784-1024x8-10 of :func:`build_mlp`) is cut into K stages of whole blocks, balanced by
parameter count (:func:`split_model`); each stage runs in its own process with its own
TensorFlow threads (:class:`Workers`), and the stages pass numpy arrays through queues.
Schedules (:mod:`~experiments.decoupled.schedules`):

- ``locked``: backprop, forward through all stages, then backward through all;
- ``gpipe``: backprop with M micro-batches in a pipeline, one update per batch
  (Huang et al. 2019, "GPipe"): the fair baseline;
- ``dfa``: a stage updates as soon as the output error e, broadcast by the last stage,
  arrives;
- ``dni``: a stage updates from its synthesizer as soon as its forward pass is done;
  the stage above sends back the synthesizer's bootstrap target when it has it;
- ``dgl``: local losses (decoupled greedy learning): a stage updates from its auxiliary
  head's loss as soon as its forward pass is done; nothing is sent down.

The per-stage math is credit's: the stages run the model's Keras layers, and take their
feedback matrices, synthesizers and heads from the credit method bound to the whole model. In
lock-step (``window=1``) the stages end with the weights that ``credit.compute_gradients``
gives on the unsplit model (tests check it); a larger window lets stages run ahead.

:func:`~experiments.decoupled.simulator.simulate` plays the schedules on K devices
from measured per-stage piece times and message times.

Modules: ``split`` (blocks, partition, method per schedule), ``stage`` (one stage's
pieces), ``schedules`` (what a stage does per batch; the single-thread driver),
``workers`` and ``server`` (processes and their commands), ``runner`` (the
coordinator's calls), ``reference`` (the unsplit model with credit's step),
``simulator``, ``experiment`` and ``cli`` (``python -m experiments.decoupled``).

Example:
    >>> from experiments.decoupled import Workers, run_decoupled       # doctest: +SKIP
    >>> spec = {"width": 1024, "depth": 8, "input_dim": 784, "classes": 10, "seed": 0}
    >>> with Workers(2, threads=1) as workers:                          # doctest: +SKIP
    ...     result = run_decoupled(workers, spec, x, y, schedule="dni", batch_size=128,
    ...                            epochs=1, window=2)
    >>> result.epoch_seconds                                            # doctest: +SKIP
"""

from experiments.decoupled.runner import (RunResult, piece_times, profile, run_decoupled,
                                          run_fused, transfer_times)
from experiments.decoupled.simulator import Simulation, simulate
from experiments.decoupled.split import (SCHEDULES, Split, build_mlp, method_config,
                                         partition, split_model)
from experiments.decoupled.stage import Stage
from experiments.decoupled.workers import Workers, WorkerError

__all__ = ["SCHEDULES", "RunResult", "Simulation", "Split", "Stage", "WorkerError",
           "Workers", "build_mlp", "method_config", "partition", "piece_times", "profile",
           "run_decoupled", "run_fused", "simulate", "split_model", "transfer_times"]
